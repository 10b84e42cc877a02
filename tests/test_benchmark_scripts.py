"""benchmark/paper.sh, benchmark/ablations.sh (dry run, Slurm files, local runner) and benchmark/plot.py.

The shell scripts are exercised with a stub in place of python (--python STUB) that records its arguments, so the
commands are checked as they would really be executed, without training anything.
"""

import csv
import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import load_script

ENVS = ["halfcheetah", "hopper", "walker2d"]
DATASETS = ["random", "medium", "medium-replay", "medium-expert"]
SEEDS = [0, 1, 2, 3]
TASKS = [f"{e}-{d}-v2" for e, d in itertools.product(ENVS, DATASETS)]
GYM_IDS = {"halfcheetah": "HalfCheetah-v4", "hopper": "Hopper-v4", "walker2d": "Walker2d-v4"}


def bash(repo_root, script, *args, env_extra=None, cwd=None):
    """Run a benchmark script with a clean environment (no ENVS/SEEDS/... defaults leaking in from outside)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"ENVS", "DATASETS", "SEEDS", "METHODS", "STUDIES", "PYTHON", "OUT_DIR", "CKPT_DIR", "WORKERS"}
    }
    env.update(env_extra or {})
    return subprocess.run(
        ["bash", str(repo_root / "benchmark" / script), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or repo_root,
        timeout=60,
    )


def dry_run_stages(output):
    """{stage: [command, ...]} from --dry-run's output ('# stage K (...): N commands' headers)."""
    stages, current = {}, None
    for line in output.splitlines():
        header = re.match(r"# stage (\d+) \(.*\): (\d+) commands$", line)
        if header:
            current = int(header.group(1))
            stages[current] = []
        elif line.strip():
            stages[current].append(line)
    return stages


def flag(command, name):
    match = re.search(rf"--{name} (\S+)", command)
    return match.group(1) if match else None


def args_seen_by_python(command):
    """What the stub logs for a command line: its arguments after the shell's quote removal, space-joined."""
    return " ".join(shlex.split(command)[1:])


@pytest.fixture
def stub_python(tmp_path):
    """An executable that appends its arguments to a log, one line per call, and its path and log."""
    log = tmp_path / "stub_calls.log"
    stub = tmp_path / "stub_python.sh"
    stub.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n')
    stub.chmod(0o755)
    return stub, log


# ---------------------------------------------------------------------------------------------------------------
# paper.sh
# ---------------------------------------------------------------------------------------------------------------
def test_paper_dry_run_prints_the_full_grid(repo_root):
    result = bash(repo_root, "paper.sh", "--dry-run")
    assert result.returncode == 0, result.stderr
    stages = dry_run_stages(result.stdout)
    commands = [c for stage in sorted(stages) for c in stages[stage]]
    # 12 downloads; 48 CQL pretrainings + 48 AWAC + 48 BCQ-ft + 12 SAC (per env); 48 ours + 48 SAC-ft
    assert {k: len(v) for k, v in stages.items()} == {0: 12, 1: 156, 2: 96}
    assert len(commands) == 264

    def pick(pattern):
        return [c for c in commands if re.search(pattern, c)]

    grid = {(t, str(s)) for t, s in itertools.product(TASKS, SEEDS)}
    pretrain = pick(r"^python cql_pretrain\.py ")
    ours = pick(r"balanced_finetune\.py .*--sampling balanced")
    sac_ft = pick(r"balanced_finetune\.py .*--sampling uniform")
    awac, bcq, sac = pick(r"^python awac\.py "), pick(r"^python bcq_ft\.py "), pick(r"^python sac\.py ")
    for group in (pretrain, ours, sac_ft, awac, bcq):
        assert {(flag(c, "env-id"), flag(c, "seed")) for c in group} == grid and len(group) == 48
    assert {(flag(c, "env-id"), flag(c, "seed")) for c in sac} == {(g, str(s)) for g in GYM_IDS.values() for s in SEEDS}
    assert all(flag(c, "n-ensemble") == "5" for c in pretrain + ours + awac + bcq)
    assert all(flag(c, "n-ensemble") == "1" for c in sac_ft)
    assert all(flag(c, "total-timesteps") == "250000" for c in sac)
    assert all(flag(c, "offline-steps") == "1000000" and flag(c, "online-steps") == "250000" for c in awac + bcq)
    assert {(flag(c, "env-id"), flag(c, "awac-lambda")) for c in awac if flag(c, "awac-lambda") != "1.0"} == {
        ("walker2d-medium-expert-v2", "0.3333")
    }
    # every fine-tune reads the checkpoint its own task/seed pretraining writes, and ours and SAC-ft share it
    written = {(flag(c, "env-id"), flag(c, "seed")): flag(c, "checkpoint") for c in pretrain}
    for c in ours + sac_ft:
        assert flag(c, "cql-checkpoint") == written[(flag(c, "env-id"), flag(c, "seed"))]
    assert len({flag(c, "checkpoint") for c in ours + sac_ft}) == 96  # no two runs write the same file
    assert len({flag(c, "run-dir") for c in commands if "--run-dir" in c}) == 252  # nor log to the same run
    # pretraining comes before any fine-tune; downloads before everything
    assert max(commands.index(c) for c in pretrain) < min(commands.index(c) for c in ours + sac_ft)
    assert all(c.startswith("python -c 'import cql_pretrain; cql_pretrain.download_d4rl_file(") for c in stages[0])
    assert stages[0][TASKS.index("walker2d-medium-expert-v2")].endswith('("walker2d-medium-expert-v2")\'')


def test_paper_subsets_options_and_errors(repo_root, tmp_path):
    result = bash(
        repo_root,
        "paper.sh",
        "--dry-run",
        "--envs",
        "hopper",
        "--datasets",
        "medium,random",
        "--seeds",
        "3",
        "--methods",
        "ours",
        "--python",
        "/opt/py",
        "--out-dir",
        tmp_path / "r",
        "--checkpoint-dir",
        tmp_path / "c",
    )
    assert result.returncode == 0, result.stderr
    stages = dry_run_stages(result.stdout)
    assert {k: len(v) for k, v in stages.items()} == {0: 2, 1: 2, 2: 2}
    assert all(c.startswith("/opt/py ") for s in stages.values() for c in s)
    assert f"--cql-checkpoint {tmp_path}/c/cql_hopper-medium-v2_seed3.pt" in stages[2][0]
    assert f"--run-dir {tmp_path}/r/hopper-medium-v2__ours__seed3" in stages[2][0]
    # SEEDS from the environment is the default; --skip-pretrain reuses checkpoints
    result = bash(
        repo_root,
        "paper.sh",
        "--dry-run",
        "--envs",
        "walker2d",
        "--datasets",
        "medium",
        "--methods",
        "sac-ft",
        "--skip-pretrain",
        env_extra={"SEEDS": "7 8"},
    )
    stages = dry_run_stages(result.stdout)
    assert sorted(stages) == [0, 2] and [flag(c, "seed") for c in stages[2]] == ["7", "8"]
    for bad_args, message in [
        (["--methods", "ours,ppo"], "unknown method 'ppo'"),
        (["--envs", "ant"], "unknown env"),
        (["--workers", "0"], "--workers"),
        (["--frobnicate"], "unknown option"),
        (["--slurm"], "--slurm needs a value"),
        (["--envs", "--seeds", "1"], "--envs needs a value"),
    ]:
        result = bash(repo_root, "paper.sh", "--dry-run", *bad_args)
        assert result.returncode != 0 and message in result.stderr, (bad_args, result.stderr)


def test_paper_slurm_files_dispatch_the_right_command(repo_root, tmp_path, stub_python):
    stub, log = stub_python
    options = [
        "--envs",
        "hopper,walker2d",
        "--datasets",
        "medium",
        "--seeds",
        "0,1",
        "--python",
        stub,
        "--out-dir",
        tmp_path / "runs",
    ]
    stages = dry_run_stages(bash(repo_root, "paper.sh", "--dry-run", *options).stdout)
    sbatch = tmp_path / "slurm" / "paper.sbatch"
    result = bash(repo_root, "paper.sh", "--slurm", sbatch, *options)
    assert result.returncode == 0, result.stderr
    files = {1: sbatch, 2: tmp_path / "slurm" / "paper_stage2.sbatch"}
    submit = tmp_path / "slurm" / "paper_submit.sh"
    for path in [*files.values(), submit]:
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0, path
    for stage, path in files.items():
        text = path.read_text()
        assert text.startswith("#!/bin/bash\n")
        n = len(stages[stage])
        assert re.search(rf"^#SBATCH --array=0-{n - 1}$", text, re.M), text
        commands_file = re.search(r'sed -n "\$\(\(SLURM_ARRAY_TASK_ID\+1\)\)p" (\S+)\)$', text, re.M).group(1)
        assert open(commands_file).read().splitlines() == stages[stage]
        # execute the array task's script as Slurm would, for the first and the last task id
        for task_id in (0, n - 1):
            log.unlink(missing_ok=True)
            run = subprocess.run(
                ["bash", str(path)],
                env=dict(os.environ, SLURM_ARRAY_TASK_ID=str(task_id), SLURM_ARRAY_JOB_ID="7"),
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert run.returncode == 0, run.stderr
            expected = stages[stage][task_id]
            assert run.stdout.splitlines()[0] == f"+ {expected}"  # printed before it runs
            assert log.read_text().strip() == args_seen_by_python(expected)  # the stub got exactly its arguments
    submit_text = submit.read_text()
    assert all(c in submit_text for c in stages[0])  # downloads run on the login node before submission
    assert f"sbatch --parsable {files[1]}" in submit_text
    assert f"sbatch --parsable --dependency=afterok:$jid1 {files[2]}" in submit_text


def test_paper_slurm_task_requeues_itself_after_sigterm(repo_root, tmp_path):
    """Slurm's SIGTERM before the time limit (--signal=B:TERM@120) reaches the batch shell: it passes it on, the job
    (a stub that, like the scripts, stops with exit status 75) ends, the task asks scontrol to requeue it, and the
    requeued task runs the same command with --resume."""
    log, ready = tmp_path / "calls.log", tmp_path / "ready"
    job = tmp_path / "job.sh"
    job.write_text(f"""#!/usr/bin/env bash
echo "job $*" >> {log}
if [[ " $* " == *" --resume "* ]]; then exit 0; fi
trap 'echo "job got SIGTERM" >> {log}; exit 75' TERM
touch {ready}
while true; do sleep 0.05; done
""")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/usr/bin/env bash\necho "scontrol $*" >> {log}\n')
    for path in (job, bin_dir / "scontrol"):
        path.chmod(0o755)
    sbatch = tmp_path / "slurm" / "paper.sbatch"
    result = bash(
        repo_root,
        "paper.sh",
        "--slurm",
        sbatch,
        "--envs",
        "hopper",
        "--datasets",
        "medium",
        "--seeds",
        "0",
        "--methods",
        "sac",
        "--python",
        job,
        "--out-dir",
        tmp_path / "runs",
    )
    assert result.returncode == 0, result.stderr
    text = sbatch.read_text()
    assert "#SBATCH --signal=B:TERM@120\n" in text and "#SBATCH --requeue\n" in text
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_JOB_ID="7", PATH=f"{bin_dir}:{os.environ['PATH']}")
    task = subprocess.Popen(["bash", str(sbatch)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.05)
    task.send_signal(signal.SIGTERM)  # to the batch shell only, as --signal=B: does
    task.communicate(timeout=30)
    assert task.returncode == 75
    calls = log.read_text().splitlines()
    assert calls[1:] == ["job got SIGTERM", "scontrol requeue 7_0"], calls
    requeued = subprocess.run(["bash", str(sbatch)], env=env, capture_output=True, text=True, timeout=30)
    assert requeued.returncode == 0, requeued.stderr
    assert log.read_text().splitlines()[-1] == f"{calls[0]} --resume"


def test_paper_local_run_prints_then_runs_each_stage_in_order(repo_root, tmp_path, stub_python):
    stub, log = stub_python
    result = bash(
        repo_root,
        "paper.sh",
        "--workers",
        "3",
        "--envs",
        "hopper",
        "--datasets",
        "medium,random",
        "--seeds",
        "0,1",
        "--python",
        stub,
        "--out-dir",
        tmp_path / "runs",
    )
    assert result.returncode == 0, result.stderr
    stages = dry_run_stages(
        bash(
            repo_root,
            "paper.sh",
            "--dry-run",
            "--envs",
            "hopper",
            "--datasets",
            "medium,random",
            "--seeds",
            "0,1",
            "--python",
            stub,
            "--out-dir",
            tmp_path / "runs",
        ).stdout
    )
    printed = [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert sorted(printed) == sorted(c for s in stages.values() for c in s)
    calls = log.read_text().splitlines()
    strip = {stage: {args_seen_by_python(c) for c in cmds} for stage, cmds in stages.items()}
    assert sorted(calls) == sorted(c for s in strip.values() for c in s)
    position = {call: i for i, call in enumerate(calls)}
    for earlier, later in [(0, 1), (1, 2)]:  # a stage starts only after the previous one has finished
        assert max(position[c] for c in strip[earlier]) < min(position[c] for c in strip[later])
    assert len(list((tmp_path / "runs" / "logs").glob("*.log"))) == sum(len(s) for s in stages.values())
    # a failing stage stops the run before the next stage
    failing = tmp_path / "failing.sh"
    failing.write_text("#!/usr/bin/env bash\n[[ $1 == cql_pretrain.py ]] && exit 3\nexit 0\n")
    failing.chmod(0o755)
    result = bash(
        repo_root,
        "paper.sh",
        "--envs",
        "hopper",
        "--datasets",
        "medium",
        "--seeds",
        "0",
        "--methods",
        "ours",
        "--python",
        failing,
        "--out-dir",
        tmp_path / "runs2",
    )
    assert result.returncode != 0 and "stage 1 had failures" in result.stderr
    assert "FAILED: hopper-medium-v2__cql-pretrain__seed0" in result.stdout
    assert "balanced_finetune.py" not in result.stdout


MINARI_DATASETS = ["simple", "medium", "expert"]  # Minari's MuJoCo levels (random, medium-replay, medium-expert: none)
MINARI_TASKS = [f"mujoco/{e}/{d}-v0" for e, d in itertools.product(ENVS, MINARI_DATASETS)]


def test_paper_minari_suite_dry_run(repo_root):
    result = bash(repo_root, "paper.sh", "--suite", "minari", "--dry-run")
    assert result.returncode == 0, result.stderr
    stages = dry_run_stages(result.stdout)
    # 9 downloads; 36 CQL + 36 AWAC + 36 BCQ-ft + 12 SAC; 36 ours + 36 SAC-ft
    assert {k: len(v) for k, v in stages.items()} == {0: 9, 1: 120, 2: 72}
    commands = [c for stage in sorted(stages) for c in stages[stage]]
    grid = {(t, str(s)) for t, s in itertools.product(MINARI_TASKS, SEEDS)}
    by_script = {
        name: [c for c in commands if c.startswith(f"python {name}.py ")] for name in ("cql_pretrain", "awac", "bcq_ft", "sac")
    }
    ours = [c for c in commands if re.search(r"balanced_finetune\.py .*--sampling balanced", c)]
    sac_ft = [c for c in commands if re.search(r"balanced_finetune\.py .*--sampling uniform", c)]
    for group in (by_script["cql_pretrain"], by_script["awac"], by_script["bcq_ft"], ours, sac_ft):
        assert {(flag(c, "env-id"), flag(c, "seed")) for c in group} == grid and len(group) == 36
    # SAC from scratch runs in the env of the first dataset (-v5, its reference scores), named per env
    assert {(flag(c, "env-id"), flag(c, "run-dir")) for c in by_script["sac"]} == {
        (f"mujoco/{e}/simple-v0", f"runs/mujoco-{e}__sac__seed{s}") for e in ENVS for s in SEEDS
    }
    assert all(flag(c, "awac-lambda") == "1.0" for c in by_script["awac"])  # no walker2d-medium-expert here
    # one file name per task: '/' of the id is '-' in run, checkpoint and log names
    for c in commands:
        for name in ("run-dir", "checkpoint", "cql-checkpoint"):
            if flag(c, name):
                assert flag(c, name).count("/") == 1, c
    assert {flag(c, "run-dir") for c in ours} == {
        f"runs/mujoco-{e}-{d}-v0__ours__seed{s}" for e in ENVS for d in MINARI_DATASETS for s in SEEDS
    }
    written = {(flag(c, "env-id"), flag(c, "seed")): flag(c, "checkpoint") for c in by_script["cql_pretrain"]}
    assert written[("mujoco/hopper/medium-v0", "2")] == "checkpoints/cql_mujoco-hopper-medium-v0_seed2.pt"
    for c in ours + sac_ft:
        assert flag(c, "cql-checkpoint") == written[(flag(c, "env-id"), flag(c, "seed"))]
    assert len({flag(c, "run-dir") for c in commands if "--run-dir" in c}) == 192
    assert stages[0] == [f"python -c 'import cql_pretrain; cql_pretrain.minari_dataset(\"{t}\")'" for t in MINARI_TASKS]
    # SUITE from the environment, a subset, and the paper's datasets that have no Minari counterpart
    result = bash(
        repo_root, "paper.sh", "--dry-run", "--datasets", "expert", "--methods", "sac", env_extra={"SUITE": "minari"}
    )
    stages = dry_run_stages(result.stdout)
    assert [flag(c, "env-id") for c in stages[1]][:1] == ["mujoco/halfcheetah/expert-v0"] and len(stages[0]) == 3
    for bad_args, message in [
        (["--datasets", "random"], "the nearest is 'simple'"),
        (["--datasets", "medium,medium-replay"], "'medium-replay' has no Minari counterpart"),
        (["--datasets", "medium-expert"], "'medium-expert' has no Minari counterpart"),
    ]:
        result = bash(repo_root, "paper.sh", "--dry-run", "--suite", "minari", *bad_args)
        assert result.returncode != 0 and message in result.stderr, (bad_args, result.stderr)
    result = bash(repo_root, "paper.sh", "--dry-run", "--suite", "d4rl5")
    assert result.returncode != 0 and "unknown suite 'd4rl5'" in result.stderr


def test_paper_minari_suite_runs_locally_and_ablations_take_it(repo_root, tmp_path, stub_python):
    stub, log = stub_python
    options = [
        "--suite",
        "minari",
        "--envs",
        "hopper",
        "--datasets",
        "medium",
        "--seeds",
        "0",
        "--python",
        stub,
        "--out-dir",
        tmp_path / "runs",
    ]
    result = bash(repo_root, "paper.sh", "--workers", "2", *options)
    assert result.returncode == 0, result.stdout + result.stderr
    stages = dry_run_stages(bash(repo_root, "paper.sh", "--dry-run", *options).stdout)
    assert sorted(log.read_text().splitlines()) == sorted(args_seen_by_python(c) for s in stages.values() for c in s)
    logs = sorted(p.name for p in (tmp_path / "runs" / "logs").iterdir())  # one flat log file per job
    assert len(logs) == 7 and "mujoco-hopper-medium-v0__ours__seed0.log" in logs  # download, cql, awac, bcq, sac, ours, sac-ft
    result = bash(
        repo_root, "ablations.sh", "--dry-run", "--suite", "minari", "--envs", "walker2d", "--seeds", "1", "--studies", "fig1c"
    )
    stages = dry_run_stages(result.stdout)
    assert {k: len(v) for k, v in stages.items()} == {0: 3, 1: 3, 2: 6, 3: 3}
    fqe = [c for c in stages[2] if " fqe.py " in c]
    assert {flag(c, "env-id") for c in fqe} == {f"mujoco/walker2d/{d}-v0" for d in MINARI_DATASETS}
    assert {flag(c, "checkpoint") for c in fqe} == {
        f"checkpoints/fqe_mujoco-walker2d-{d}-v0_seed1.pt" for d in MINARI_DATASETS
    }


# ---------------------------------------------------------------------------------------------------------------
# ablations.sh
# ---------------------------------------------------------------------------------------------------------------
def test_ablations_dry_run_and_slurm(repo_root, tmp_path):
    result = bash(repo_root, "ablations.sh", "--dry-run")
    assert result.returncode == 0, result.stderr
    stages = dry_run_stages(result.stdout)
    # 6 distinct fine-tune arms per task and seed (balanced-N5-cql is shared by all three studies): 5 start from
    # CQL critics (stage 2, with FQE), 1 from FQE critics (stage 3)
    assert {k: len(v) for k, v in stages.items()} == {0: 12, 1: 48, 2: 5 * 48 + 48, 3: 48}
    arms = {}
    for c in stages[2] + stages[3]:
        if "balanced_finetune.py" in c:
            key = (flag(c, "sampling"), flag(c, "n-ensemble"), flag(c, "q-init"))
            arms.setdefault(key, set()).add((flag(c, "env-id"), flag(c, "seed")))
    grid = {(t, str(s)) for t, s in itertools.product(TASKS, SEEDS)}
    assert arms == {
        key: grid
        for key in [
            ("balanced", "5", "cql"),
            ("uniform", "5", "cql"),
            ("online-only", "5", "cql"),
            ("balanced", "1", "cql"),
            ("balanced", "2", "cql"),
            ("balanced", "5", "fqe"),
        ]
    }
    fqe_written = {(flag(c, "env-id"), flag(c, "seed")): flag(c, "checkpoint") for c in stages[2] if " fqe.py " in c}
    cql_written = {(flag(c, "env-id"), flag(c, "seed")): flag(c, "checkpoint") for c in stages[1]}
    assert len(fqe_written) == 48
    for c in stages[2]:
        if " fqe.py " in c:
            assert flag(c, "policy-checkpoint") == cql_written[(flag(c, "env-id"), flag(c, "seed"))]
    for c in stages[3]:  # the FQE-initialised arm reads the critic its FQE run (one stage earlier) writes
        assert flag(c, "q-init") == "fqe"
        assert flag(c, "fqe-checkpoint") == fqe_written[(flag(c, "env-id"), flag(c, "seed"))]
    # subsets, reuse of paper.sh's checkpoints, Slurm files for three chained stages
    options = ["--studies", "fig4d", "--envs", "walker2d", "--datasets", "random", "--seeds", "0", "--skip-pretrain"]
    stages = dry_run_stages(bash(repo_root, "ablations.sh", "--dry-run", *options).stdout)
    assert {k: len(v) for k, v in stages.items()} == {0: 1, 2: 3}
    sbatch = tmp_path / "abl.sbatch"
    assert bash(repo_root, "ablations.sh", "--slurm", sbatch, "--envs", "hopper", "--seeds", "0").returncode == 0
    expected = {sbatch: 4, tmp_path / "abl_stage2.sbatch": 4 * 6, tmp_path / "abl_stage3.sbatch": 4}
    for path, n in expected.items():
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
        assert f"#SBATCH --array=0-{n - 1}\n" in path.read_text()
    submit = (tmp_path / "abl_submit.sh").read_text()
    assert "--dependency=afterok:$jid1" in submit and "--dependency=afterok:$jid2" in submit
    result = bash(repo_root, "ablations.sh", "--dry-run", "--studies", "fig9")
    assert result.returncode != 0 and "unknown study 'fig9'" in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# plot.py
# ---------------------------------------------------------------------------------------------------------------
def write_runs(root):
    """2 methods x 2 seeds on one task (+ negative offline steps), one seed evaluated on a different schedule.

    Returns {method: [(steps, values) per seed]} of the online (step >= 0) points."""
    from torch.utils.tensorboard import SummaryWriter

    rng = np.random.default_rng(0)
    logged = {}
    for method, schedules in {
        "ours": [range(0, 5001, 1000)] * 2,
        "awac": [range(0, 5001, 1000), range(0, 6001, 1500)],
    }.items():
        logged[method] = []
        for seed, steps in enumerate(schedules):
            steps = np.array(steps)
            values = rng.uniform(0, 100, size=len(steps)).astype(np.float32)
            writer = SummaryWriter(str(root / f"hopper-medium-v2__{method}__seed{seed}"))
            writer.add_scalar("eval/normalized_score", 999.0, -1000)  # offline phase: dropped by default
            for step, value in zip(steps, values):
                writer.add_scalar("eval/normalized_score", float(value), int(step))
                if method == "ours":
                    writer.add_scalar("balanced/offline_fraction", 0.5, int(step))
                    writer.add_scalar("balanced/auroc", 0.7, int(step))
            writer.close()
            logged[method].append((steps, values.astype(np.float64)))
    # a pretraining run the plot must leave out
    writer = SummaryWriter(str(root / "hopper-medium-v2__cql-pretrain__seed0"))
    writer.add_scalar("eval/normalized_score", 1.0, 0)
    writer.close()
    return logged


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_plot_writes_figures_and_exact_aggregates(repo_root, tmp_path):
    logged = write_runs(tmp_path / "runs")
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            str(repo_root / "benchmark" / "plot.py"),
            str(tmp_path / "runs"),
            "--exclude",
            "*cql-pretrain*",
            "--out-dir",
            str(out),
            "--summary",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for stem in ("fig3_score", "fig4a_offline_fraction", "fig4b_auroc"):
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    rows = [r for r in read_csv(out / "curves.csv") if r["tag"] == "eval/normalized_score"]
    assert {r["method"] for r in rows} == {"ours", "awac"}  # the pretraining run was excluded
    assert all(r["task"] == "hopper-medium-v2" and int(r["step"]) >= 0 for r in rows)

    # same schedule: exact alignment; np.std (ddof=0) over the 2 seeds
    ours = [r for r in rows if r["method"] == "ours"]
    values = np.stack([v for _, v in logged["ours"]])
    assert [int(r["step"]) for r in ours] == list(range(0, 5001, 1000))
    np.testing.assert_allclose([float(r["mean"]) for r in ours], values.mean(0), rtol=1e-5)
    np.testing.assert_allclose([float(r["std"]) for r in ours], values.std(0), rtol=1e-5, atol=1e-4)
    assert all(r["n_seeds"] == "2" for r in ours)

    # different schedules: union of steps within the range both cover (0..5000), each seed interpolated linearly
    awac = [r for r in rows if r["method"] == "awac"]
    grid = np.array([0, 1000, 1500, 2000, 3000, 4000, 4500, 5000])
    assert [int(r["step"]) for r in awac] == grid.tolist()
    per_seed = np.stack([np.interp(grid, s, v) for s, v in logged["awac"]])
    np.testing.assert_allclose([float(r["mean"]) for r in awac], per_seed.mean(0), rtol=1e-5)
    np.testing.assert_allclose([float(r["std"]) for r in awac], per_seed.std(0), rtol=1e-5, atol=1e-4)

    # final score: the last grid point per seed, mean ± std over seeds, in summary.csv and the printed table
    summary = {r["method"]: r for r in read_csv(out / "summary.csv")}
    final = values[:, -1]
    assert summary["ours"]["final_step"] == "5000" and summary["ours"]["n_seeds"] == "2"
    np.testing.assert_allclose(float(summary["ours"]["mean"]), final.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(summary["ours"]["std"]), final.std(), rtol=1e-5, atol=1e-4)
    assert (
        f"| hopper-medium-v2 | Ours (balanced replay + Q-ensemble) | 5000 | {final.mean():.1f} ± {final.std():.1f} | 2 |"
        in result.stdout
    )


def test_plot_explicit_method_globs(repo_root, tmp_path, capsys):
    logged = write_runs(tmp_path / "runs")
    plot = load_script("benchmark/plot")
    out = tmp_path / "out"
    plot.main(
        [
            f"--method=Ours, seed 0 only={tmp_path}/runs/*__ours__seed0",
            f"--method=AWAC (N=5)={tmp_path}/runs/*awac*",
            "--figures",
            "fig3",
            "--formats",
            "png",
            "--include-offline",
            "--out-dir",
            str(out),
        ]
    )
    rows = read_csv(out / "curves.csv")
    assert {r["method"] for r in rows} == {"Ours, seed 0 only", "AWAC (N=5)"}  # a name may hold "="
    ours = [r for r in rows if r["method"] == "Ours, seed 0 only"]
    assert [float(r["mean"]) for r in ours] == pytest.approx([999.0, *logged["ours"][0][1]], rel=1e-5)
    assert ours[0]["step"] == "-1000" and all(r["std"] == "0" and r["n_seeds"] == "1" for r in ours)
    assert (out / "fig3_score.png").exists() and not (out / "fig3_score.pdf").exists()
    assert "no run logs" not in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no run with TensorBoard event files matches"):
        plot.main([f"--method=X={tmp_path}/nothing*", "--out-dir", str(out)])
    with pytest.raises(SystemExit, match="NAME=GLOB"):
        plot.main(["--method", "no-equals-sign", "--out-dir", str(out)])
