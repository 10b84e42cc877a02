"""benchmark/make_datasets.py (D4RL recipes at CPU scale) and benchmark/evidence.py (the restartable campaign)."""

import hashlib
import os
import sys
from pathlib import Path

import h5py

# on a fresh machine matplotlib's first import builds its font cache by running fc-list through subprocess.run: done
# here, before the tests that replace subprocess.run reach matplotlib through --report
import matplotlib.font_manager  # noqa: F401
import numpy as np
import pytest

from conftest import load_script


def load(name):
    return load_script(f"benchmark/{name}")


make_datasets = load("make_datasets")
evidence = load("evidence")


# ---------------------------------------------------------------------------------
# make_datasets.py
# ---------------------------------------------------------------------------------
def rows_of(returns):
    return [
        {"step": 5000 * (i + 1), "eval_return": r, "normalized_score": 0.0, "path": f"s{i}"} for i, r in enumerate(returns)
    ]


def test_medium_is_the_first_snapshot_at_a_third_of_the_expert_reference():
    low, high = make_datasets.REF_RETURNS["hopper"]
    third = low + (high - low) / 3  # 1064.6: normalized score 33.3
    rows = rows_of([200.0, third - 1.0, third + 0.5, 900.0, 3000.0, 2500.0])
    chosen = make_datasets.choose_policies("hopper", rows, finished=False)
    assert chosen["medium"]["step"] == 15000 and "expert" not in chosen  # the best is known only at the end
    chosen = make_datasets.choose_policies("hopper", rows, finished=True)
    assert chosen["medium"]["step"] == 15000 and chosen["expert"]["step"] == 25000
    assert make_datasets.choose_policies("hopper", rows_of([10.0, 20.0]), finished=False) == {}


def write_part(path, n, seed, last_terminal):
    rng = np.random.default_rng(seed)
    arrays = {
        "observations": rng.normal(size=(n, 3)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "next_observations": rng.normal(size=(n, 3)).astype(np.float32),
        "terminals": np.zeros(n, dtype=bool),
        "timeouts": np.zeros(n, dtype=bool),
    }
    arrays["terminals"][3] = True
    arrays["terminals"][-1] = last_terminal
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f[key] = value
    return arrays


def test_medium_expert_concatenates_and_closes_the_cut_episodes(tmp_path):
    medium = write_part(tmp_path / "m.hdf5", 10, 0, last_terminal=False)
    expert = write_part(tmp_path / "e.hdf5", 7, 1, last_terminal=True)
    make_datasets.concatenate([tmp_path / "m.hdf5", tmp_path / "e.hdf5"], tmp_path / "me.hdf5", {"env_id": "X"})
    out = make_datasets.read(tmp_path / "me.hdf5")
    for key in ("observations", "actions", "rewards", "next_observations", "terminals"):
        np.testing.assert_array_equal(out[key], np.concatenate([medium[key], expert[key]]))
    # the medium rollout's unfinished episode ends at row 9 as a time-limit end; the expert's ends in a terminal
    assert list(np.flatnonzero(out["timeouts"])) == [9]
    assert list(np.flatnonzero(out["terminals"])) == [3, 13, 16]
    returns = make_datasets.episode_returns(out["rewards"], out["terminals"], out["timeouts"])
    r = out["rewards"].astype(np.float64)
    np.testing.assert_allclose(returns, [r[:4].sum(), r[4:10].sum(), r[10:14].sum(), r[14:17].sum()])


def test_stats_row_counts_episodes_and_scores(tmp_path):
    n = 2000
    with h5py.File(tmp_path / "d.hdf5", "w") as f:
        rewards = np.ones(n, dtype=np.float32)
        timeouts = np.zeros(n, dtype=bool)
        timeouts[999] = timeouts[1999] = True
        for key, value in {
            "observations": np.zeros((n, 11)),
            "actions": np.zeros((n, 3)),
            "rewards": rewards,
            "next_observations": np.zeros((n, 11)),
            "terminals": np.zeros(n, dtype=bool),
            "timeouts": timeouts,
        }.items():
            f[key] = value
    row = make_datasets.stats_row("hopper", "medium", tmp_path / "d.hdf5")
    low, high = make_datasets.REF_RETURNS["hopper"]
    assert (row["transitions"], row["episodes"], row["mean_return"]) == (2000, 2, 1000.0)
    assert row["mean_normalized_score"] == round(100 * (1000 - low) / (high - low), 1)
    assert row["imitates"] == "hopper-medium-v2" and row["d4rl_transitions"] == 1_000_000


# ---------------------------------------------------------------------------------
# evidence.py: the job list and the restartable runner
# ---------------------------------------------------------------------------------
def test_campaign_arms_share_every_setting(tmp_path):
    all_jobs = evidence.jobs(tmp_path)
    names = [job.name for job in all_jobs]
    assert len(names) == len(set(names))
    finetune = [job for job in all_jobs if "balanced_finetune.py" in job.command]
    for job in finetune:  # full runs 50k steps, the first-epoch probes 3 epochs; the rest is the same
        value = lambda flag, job=job: job.command[job.command.index(flag) + 1]
        probe = job.name.startswith(("depth", "diag_", "alpha", "walker_diag_"))
        assert value("--online-steps") == ("3000" if probe else "50000") and value("--eval-episodes") == "10", job.name
    probes = [job for job in finetune if job.name.startswith("depth")]
    assert len(probes) == len(evidence.DEPTHS) * len(evidence.PROBE_ARMS) * len(evidence.SEEDS)
    for job in probes:  # a probe differs from its arm's full run in --online-steps and its files only
        steps = int(job.name.removeprefix("depth").split("k_")[0]) * 1000
        assert evidence.depth_checkpoint(tmp_path, steps).as_posix() in " ".join(job.command)
    for every_arm in ("medium-replay", "medium-expert"):  # every arm of every claim on every Hopper dataset
        for arm in (
            "balanced-N5",
            "sac-ft",
            "uniform-N5",
            "online-only-N5",
            "awac-N5",
            "bcq-ft-N1",
            *evidence.ARMS_ADDED_LAST,
        ):
            assert {f"{every_arm}_{arm}_s{s}" for s in evidence.SEEDS} <= set(names)
        fqe_init = next(job for job in all_jobs if job.name == f"{every_arm}_fqe-init-N5_s1")
        own_fqe = tmp_path / "pretrained" / f"fqe_hopper-{every_arm}_N5.pt"
        assert fqe_init.deps == [f"cql_{every_arm}", f"fqe_{every_arm}"] and str(own_fqe) in fqe_init.command
    chain = [job for job in all_jobs if job.name.startswith("cql_medium_") and job.name.endswith("k")]
    assert [job.name for job in chain] == ["cql_medium_60k", "cql_medium_100k", "cql_medium_150k"]
    for job, previous in zip(chain, ["cql_medium", "cql_medium_60k", "cql_medium_100k"]):
        assert job.deps == [previous] and job.init_from == next(j.checkpoint for j in all_jobs if j.name == previous)
    independent = {"balanced-N5": range(1, 8), "sac-ft": range(1, 8), "awac-N5": range(1, 6), "bcq-ft-N1": range(1, 6)}
    for arm in [*evidence.FINETUNE_ARMS, "awac-N5", "bcq-ft-N1"]:
        seeds = independent.get(arm, evidence.SEEDS)
        assert {n for n in names if n.startswith(f"medium_{arm}_s")} == {f"medium_{arm}_s{s}" for s in seeds}
    for job in all_jobs:  # one width for every actor and critic
        if "--hidden-dim" in job.command and "balanced_finetune.py" not in job.command:
            assert job.command[job.command.index("--hidden-dim") + 1] == "128", job.name
    cql = next(job for job in all_jobs if job.name == "cql_medium")
    shared = [job for job in finetune if job.name.startswith("medium_") and int(job.name.split("_s")[-1]) <= 3]
    assert all(cql.checkpoint.as_posix() in " ".join(job.command) for job in shared)
    by_name = {job.name: job for job in all_jobs}

    def swap(command, pairs, seed=None):  # the command with these parts replaced (and --seed's value set to seed)
        command = [dict(pairs).get(part, part) for part in command]
        if seed is not None:
            command[command.index("--seed") + 1] = seed
        return command

    for d in evidence.DATASETS:  # independent pretraining: seeds 2 and 3 differ from the shared run in seed and files
        base = by_name[f"cql_{d}"]
        for seed in (2, 3):
            job = by_name[f"cql_{d}_seed{seed}"]
            files = [(str(job.checkpoint), str(base.checkpoint)), (str(job.run_dir), str(base.run_dir))]
            assert swap(job.command, files, "1") == base.command and job.checkpoint.name == f"cql_hopper-{d}_N5_seed{seed}.pt"
            for finetune_seed in {2: (4, 5), 3: (6, 7)}[seed]:
                for arm in ("balanced-N5", "sac-ft"):  # fine-tuned from their own pretraining, else as seed 1's runs
                    run, seed1 = by_name[f"{d}_{arm}_s{finetune_seed}"], by_name[f"{d}_{arm}_s1"]
                    assert run.deps == [job.name]
                    files = [
                        (str(job.checkpoint), str(base.checkpoint)),
                        (str(run.checkpoint), str(seed1.checkpoint)),
                        (str(run.run_dir), str(seed1.run_dir)),
                    ]
                    assert swap(run.command, files, "1") == seed1.command
                    assert run.command[run.command.index("--seed") + 1] == str(finetune_seed)
    for alpha in (10, 20):  # the second axis: fresh CQL runs as the committed one but for --alpha-cql, then probes
        job, base = by_name[f"cql_medium_alpha{alpha}"], by_name["cql_medium"]
        files = [(str(job.checkpoint), str(base.checkpoint)), (str(job.run_dir), str(base.run_dir))]
        assert swap(job.command, files)[:-2] == base.command and job.command[-2:] == ["--alpha-cql", f"{alpha:.1f}"]
        for arm in ("balanced-N5", "sac-ft"):
            for seed in evidence.SEEDS:
                probe, probe30 = by_name[f"alpha{alpha}_{arm}_s{seed}"], by_name[f"depth30k_{arm}_s{seed}"]
                files = [(str(job.checkpoint), str(base.checkpoint)), (str(probe.checkpoint), str(probe30.checkpoint))]
                files.append((str(probe.run_dir), str(probe30.run_dir)))
                assert swap(probe.command, files) == probe30.command and probe.deps == [job.name]
    walker = "walker2d-medium-expert"  # every arm of the Hopper study, as on hopper-medium but for env and files
    hopper_args = ["Hopper-v4", "data/cpu_d4rl/hopper_medium.hdf5"]
    walker_args = ["Walker2d-v4", "data/cpu_d4rl/walker2d_medium_expert.hdf5"]
    for arm in ("balanced-N5", "sac-ft", "awac-N5", "bcq-ft-N1", "sac"):
        for seed in evidence.SEEDS:
            prefix = "walker2d_" if arm == "sac" else f"{walker}_"
            run = by_name[f"{prefix}{arm}_s{seed}"]
            base = by_name[f"sac_s{seed}" if arm == "sac" else f"medium_{arm}_s{seed}"]
            files = [*zip(walker_args, hopper_args), (str(run.checkpoint), str(base.checkpoint))]
            files += [(str(run.run_dir), str(base.run_dir))]
            if arm in ("balanced-N5", "sac-ft"):
                files.append((str(tmp_path / "pretrained" / f"cql_{walker}_N5.pt"), str(cql.checkpoint)))
            command = swap(run.command, files)
            if arm == "awac-N5":  # AWAC's lambda as documented for this task
                assert command[-2:] == ["--awac-lambda", "0.3333"]
                command = command[:-2]
            assert command == base.command, run.name
    walker_cql, hopper_cql = by_name[f"cql_{walker}"], by_name["cql_medium"]
    files = [*zip(walker_args, hopper_args), (str(walker_cql.checkpoint), str(hopper_cql.checkpoint))]
    assert swap(walker_cql.command, files + [(str(walker_cql.run_dir), str(hopper_cql.run_dir))]) == hopper_cql.command
    assert walker_cql.deps == ["data_walker2d"] and by_name["data_walker2d"].outputs == [Path(walker_args[1])]
    for variant, base_name in (
        ("as-is", "depth30k_balanced-N5"),
        ("frozen-critics", "diag_frozen-critics"),
        ("frozen-actor", "diag_frozen-actor"),
    ):
        for seed in evidence.SEEDS:  # Walker2d's critic-side probes: hopper-medium's but for env and files
            probe, base = by_name[f"walker_diag_{variant}_s{seed}"], by_name[f"{base_name}_s{seed}"]
            files = [*zip(walker_args, hopper_args), (str(probe.checkpoint), str(base.checkpoint))]
            files += [(str(probe.run_dir), str(base.run_dir))]
            files.append((str(tmp_path / "pretrained" / f"cql_{walker}_N5.pt"), str(cql.checkpoint)))
            assert swap(probe.command, files) == base.command and probe.deps == [f"cql_{walker}"], probe.name
    q_job = by_name["walker_diag_q_vs_mc"]
    assert set(q_job.deps) == {
        f"walker_diag_{v}_s{s}" for v in ("as-is", "frozen-critics", "frozen-actor") for s in (1, 2, 3)
    } | {f"{walker}_{arm}_s{s}" for arm in ("balanced-N5", "sac-ft") for s in (1, 2, 3)}
    policies = [q_job.command[i + 1] for i, part in enumerate(q_job.command) if part == "--policy"]
    assert len(policies) == 1 + 9 * 3 and policies[0].endswith(f"cql_{walker}_N5.pt")
    assert (
        f"frozen-actor, seed 3, step 3000={by_name['walker_diag_frozen-actor_s3'].checkpoint.with_suffix('')}_step3000.pt"
        in policies
    )
    # the queue: probes of both axes, full runs at depth, missing arms, (c)/(d) arms, CQL-based new seeds of two
    # datasets, Walker2d and its critic-side probes, the third dataset's, then AWAC's and BCQ-ft's seeds 4 and 5
    order = [job.name for job in all_jobs]
    assert (
        order.index("depth150k_sac-ft_s3")
        < order.index("alpha20_sac-ft_s3")
        < order.index("full150k_balanced-N5_s1")
        < order.index("medium-expert_bcq-ft-N1_s3")
        < order.index("medium-expert_fqe-init-N5_s3")
        < order.index("cql_medium-replay_seed2")
        < order.index("medium-replay_sac-ft_s7")
        < order.index("cql_medium_seed2")
        < order.index("medium_sac-ft_s7")
        < order.index(f"cql_{walker}")
        < order.index(f"{walker}_sac-ft_s3")
        < order.index("walker_diag_as-is_s1")
        < order.index("walker_diag_q_vs_mc")
        < order.index("cql_medium-expert_seed2")
        < order.index("medium-expert_sac-ft_s7")
        < order.index("medium-replay_awac-N5_s4")
        < order.index("medium-expert_bcq-ft-N1_s5")
    )
    deepest = evidence.depth_checkpoint(tmp_path, evidence.DEPTHS[-1])
    for arm in ("balanced-N5", "uniform-N5", "online-only-N5", "sac-ft"):  # full runs at the deepest checkpoint
        for seed in evidence.SEEDS:
            run, base = by_name[f"full150k_{arm}_s{seed}"], by_name[f"medium_{arm}_s{seed}"]
            files = [
                (str(deepest), str(cql.checkpoint)),
                (str(run.checkpoint), str(base.checkpoint)),
                (str(run.run_dir), str(base.run_dir)),
            ]
            assert swap(run.command, files) == base.command and run.deps == ["cql_medium_150k"]


def fake_jobs(tmp_path):
    """Jobs that write what they were called with; 'bad' fails, 'after_bad' depends on it."""
    record = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(' '.join(sys.argv[2:]))"
    job = lambda name, *deps, code=record, ckpt=None: evidence.Job(
        name, ["python", "-c", code, str(tmp_path / f"{name}.args")], ckpt, None, list(deps)
    )
    return [
        job("first"),
        job("second", "first", ckpt=tmp_path / "second.ckpt"),
        job("bad", code="raise SystemExit(3)"),
        job("after_bad", "bad"),
        job("third", "second"),
    ]


def test_runner_resumes_skips_and_stops_at_failures(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    monkeypatch.setattr(evidence, "jobs", lambda out: fake_jobs(tmp_path))
    monkeypatch.setattr(evidence, "POLL_SECONDS", 0.05)
    (tmp_path / "second.ckpt").write_text("interrupted")  # 'second' was interrupted: it continues with --resume
    out = tmp_path / "out"
    (out / "status").mkdir(parents=True)
    (out / "status" / "third.done").touch()  # finished in an earlier sitting: not run again
    with pytest.raises(SystemExit) as exit_info:
        evidence.run_campaign(out, workers=2, dry_run=False, only=[])
    assert exit_info.value.code == 1
    assert (tmp_path / "first.args").read_text() == ""
    assert (tmp_path / "second.args").read_text() == "--resume"
    assert not (tmp_path / "third.args").exists() and not (tmp_path / "after_bad.args").exists()
    assert {p.name for p in (out / "status").glob("*.done")} == {"first.done", "second.done", "third.done"}
    assert (out / "status" / "bad.failed").read_text().strip() == "3"  # the job marks its own failure
    printed = capsys.readouterr().out
    assert "FAILED bad (exit 3)" in printed and "2 jobs not done: bad, after_bad" in printed
    commands = (out / "commands.txt").read_text().splitlines()
    assert commands[0].startswith("# ") and any(line.endswith("--resume") for line in commands)


def test_dry_run_marks_finished_jobs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    monkeypatch.setattr(evidence, "jobs", lambda out: fake_jobs(tmp_path))
    (tmp_path / "out" / "status").mkdir(parents=True)
    (tmp_path / "out" / "status" / "first.done").touch()
    evidence.run_campaign(tmp_path / "out", workers=2, dry_run=True, only=["first", "second"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("# done: python -c") and not lines[1].startswith("#")
    assert not list((tmp_path).glob("*.args"))  # nothing ran


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_report_summary_from_finished_runs(tmp_path, monkeypatch):
    """summary.csv: final = mean of the last 3 evaluations, after_first_epoch = the score at 1000 steps, per seed then
    mean/std over the seeds that finished; unfinished seeds are left out."""
    from torch.utils.tensorboard import SummaryWriter

    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    out = tmp_path / "out"
    (out / "status").mkdir(parents=True)
    steps = list(range(0, 5001, 1000))
    curves = {
        ("balanced-N5", 1): [40, 42, 45, 50, 55, 60],
        ("balanced-N5", 2): [40, 30, 35, 52, 58, 64],
        ("balanced-N5", 3): [40, 0, 0, 0, 0, 0],
        ("sac-ft", 1): [40, 10, 20, 30, 40, 50],
    }
    for (arm, seed), scores in curves.items():
        with SummaryWriter(str(out / "runs" / f"hopper-medium__{arm}__seed{seed}")) as writer:
            for step, score in zip(steps, scores):
                writer.add_scalar("eval/normalized_score", score, step)
        if seed != 3:  # seed 3 did not finish
            (out / "status" / f"medium_{arm}_s{seed}.done").touch()
    monkeypatch.setattr(evidence, "FIGURES", {})  # the figures come from plot.py, tested on its own
    monkeypatch.setattr(evidence, "INTERVAL_RESAMPLES", 300)  # intervals.py is tested on its own
    monkeypatch.setattr(evidence, "LATE_FROM", 3000)
    calls = []
    monkeypatch.setattr(evidence.subprocess, "run", lambda command, **kw: calls.append(command))
    evidence.report(out)
    diagnose = [c for c in calls if "benchmark/diagnose.py" in c]  # the finished arms' seeds, no pretrained critics
    assert len(diagnose) == 1 and "--policy" not in diagnose[0]
    assert [c.rsplit("=", 1)[0] for c in diagnose[0] if "__seed" in c] == ["Ours (balanced, N=5)", "SAC-ft"]
    assert any(c.endswith("hopper-medium__balanced-N5__seed[12]") for c in diagnose[0])
    import csv as csv_module

    rows = {row["arm"]: row for row in csv_module.DictReader(open(out / "summary.csv"))}
    finals = [np.mean([50, 55, 60]), np.mean([52, 58, 64])]
    assert float(rows["balanced-N5"]["final_mean"]) == pytest.approx(np.mean(finals), abs=0.01)
    assert float(rows["balanced-N5"]["final_std"]) == pytest.approx(np.std(finals), abs=0.01)
    assert rows["balanced-N5"]["n_seeds"] == "2" and rows["sac-ft"]["n_seeds"] == "1"
    assert float(rows["balanced-N5"]["after_first_epoch_mean"]) == pytest.approx(36.0)
    assert float(rows["sac-ft"]["min_1k_10k_mean"]) == pytest.approx(10.0)
    assert float(rows["sac-ft"]["final_mean"]) == pytest.approx(40.0)
    table = (out / "tables.md").read_text()  # the README's table carries the same numbers
    assert f"| Ours (balanced, N=5) | 2 | {np.mean(finals):.1f} ± {np.std(finals):.1f} | 40.0 | 36.0 ± 6.0 |" in table
    assert "| SAC-ft | 1 | 40.0 ± 0.0 |" in table
    iqm = {
        (r["arm"], r["metric"]): r
        for r in csv_module.DictReader(open(out / "intervals" / "iqm.csv"))
        if r["task"] == "hopper-medium"
    }
    assert float(iqm[("balanced-N5", "late")]["iqm"]) == pytest.approx(np.mean([55, 58]))  # 2 runs: nothing trimmed
    assert iqm[("balanced-N5", "late")]["pretraining"] == "shared CQL ensemble (seed 1)"
    auc_seed1 = np.trapezoid([40, 42, 45, 50, 55, 60], steps) / 5000
    assert float(iqm[("sac-ft", "auc")]["iqm"]) == pytest.approx(np.trapezoid([40, 10, 20, 30, 40, 50], steps) / 5000)
    assert auc_seed1 != float(iqm[("sac-ft", "auc")]["iqm"])
    assert (out / "intervals" / "iqm_curves.png").exists()


def test_jobs_with_outputs_are_done_when_their_files_exist(tmp_path, monkeypatch):
    """Datasets are not committed: their jobs count as done by their files, not by a marker, and leave none."""
    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    monkeypatch.setattr(evidence, "POLL_SECONDS", 0.05)
    write = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text('x')"
    jobs = [
        evidence.Job("data", ["python", "-c", write, str(tmp_path / "d.hdf5")], outputs=[tmp_path / "d.hdf5"]),
        evidence.Job("train", ["python", "-c", write, str(tmp_path / "t.txt")], deps=["data"]),
    ]
    monkeypatch.setattr(evidence, "jobs", lambda out: jobs)
    out = tmp_path / "out"
    (out / "status").mkdir(parents=True)
    (out / "status" / "data.done").touch()  # a stale marker from another checkout: the missing file decides
    evidence.run_campaign(out, workers=1, dry_run=False, only=[])
    assert (tmp_path / "d.hdf5").exists() and (tmp_path / "t.txt").exists()
    (tmp_path / "t.txt").unlink()
    evidence.run_campaign(out, workers=1, dry_run=False, only=[])  # everything done: nothing runs again
    assert not (tmp_path / "t.txt").exists()
    assert {p.name for p in (out / "status").glob("*.done")} == {"data.done", "train.done"}


def test_report_study_folder_stands_alone(tmp_path, monkeypatch):
    """Each study folder gets commands.txt (dataset, CQL, the finished runs it plots, then the plot command; nothing
    of unfinished seeds) and the datasets.csv row of its own dataset."""
    from torch.utils.tensorboard import SummaryWriter

    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    out = Path("out")
    (tmp_path / out / "status").mkdir(parents=True)
    for arm, seed in (("balanced-N5", 1), ("balanced-N5", 2), ("sac-ft", 1), ("sac-ft", 2)):
        with SummaryWriter(str(tmp_path / out / "runs" / f"hopper-medium__{arm}__seed{seed}")) as writer:
            for step in range(0, 5001, 1000):
                writer.add_scalar("eval/normalized_score", float(step), step)
        if (arm, seed) != ("sac-ft", 2):
            (tmp_path / out / "status" / f"medium_{arm}_s{seed}.done").touch()
    (tmp_path / out / "datasets.csv").write_text("dataset,transitions\nhopper-medium,100\nhopper-medium-replay,60\n")
    calls = []
    monkeypatch.setattr(evidence.subprocess, "run", lambda command, **kw: calls.append(command))
    monkeypatch.setattr(evidence, "FIGURES", {"fig3_methods": ("fig3", ["balanced-N5", "sac-ft"])})
    evidence.report(out)
    study = tmp_path / out / "hopper-medium" / "fig3_methods"
    lines = [line for line in (study / "commands.txt").read_text().splitlines() if not line.startswith("#")]
    assert "make_datasets.py" in lines[0] and "--datasets medium" in lines[0]
    assert "cql_pretrain.py" in lines[1] and "hopper_medium.hdf5" in lines[1]
    runs = [line for line in lines if "balanced_finetune.py" in line]
    assert len(runs) == 3  # balanced-N5 seeds 1, 2 and sac-ft seed 1; sac-ft seed 2 did not finish
    assert sum("--seed 2" in line and "--n-ensemble 1" in line for line in runs) == 0
    assert "benchmark/plot.py" in lines[-1] and lines[-1].endswith(str(out / "hopper-medium" / "fig3_methods"))
    import shlex  # the plot command's labels hold spaces: quoted, so the line runs as written

    assert shlex.split(lines[-1])[1:] == calls[0][1:]
    assert all(str(tmp_path) not in line for line in lines)  # repository-relative paths only
    assert (study / "datasets.csv").read_text().splitlines() == ["dataset,transitions", "hopper-medium,100"]


def test_claim_comparisons_and_verdicts():
    """A comparison holds when the difference of means exceeds 2 standard errors (sample stds), reverses when the other
    way round, else ties; a claim is reproduced only when all its comparisons hold, not reproduced if any reverses."""
    diff, se, result = evidence.compare(np.array([10.0, 12.0, 14.0]), np.array([1.0, 2.0, 3.0]))
    assert diff == pytest.approx(10.0) and se == pytest.approx(np.sqrt(4 / 3 + 1 / 3)) and result == "holds"
    assert evidence.compare(np.array([1.0, 2.0, 3.0]), np.array([10.0, 12.0, 14.0]))[2] == "reversed"
    assert evidence.compare(np.array([1.0, 5.0, 9.0]), np.array([2.0, 4.0, 6.0]))[2] == "tie"  # diff 1, se 2.58
    assert evidence.compare(np.array([1.0]), np.array([2.0, 4.0]))[2].startswith("n/a")

    def seeds(*finals):
        return [{"final": f} for f in finals]

    def verdict(per_seed):
        rows = [r for r in evidence.claim_rows(per_seed) if r["claim"].startswith("(c)") and not r["first"]]
        return rows[0]["result"]

    n5, n2, n1 = seeds(50, 52, 54), seeds(30, 31, 32), seeds(10, 11, 12)
    assert (
        verdict({("medium", "balanced-N5"): n5, ("medium", "balanced-N2"): n2, ("medium", "balanced-N1"): n1})
        == "verdict: reproduced (2/2 comparisons run)"
    )
    assert verdict(
        {("medium", "balanced-N5"): n5, ("medium", "balanced-N2"): n2, ("medium", "balanced-N1"): seeds(29, 31, 33)}
    ).startswith("verdict: inconclusive")
    assert verdict({("medium", "balanced-N5"): n1, ("medium", "balanced-N2"): n2, ("medium", "balanced-N1"): n1}).startswith(
        "verdict: not reproduced"
    )
    assert (
        verdict({("medium", "balanced-N5"): n5, ("medium", "balanced-N2"): n2})
        == "verdict: inconclusive (1/2 comparisons run)"
    )
    assert (  # a comparison short of seeds is not counted as run
        verdict({("medium", "balanced-N5"): n5, ("medium", "balanced-N2"): n2, ("medium", "balanced-N1"): seeds(10)})
        == "verdict: inconclusive (1/2 comparisons run)"
    )


def test_smaller_drop_holds():
    """On the drop (lower is better) the claim holds when the first arm drops less; the difference stays first-second."""
    per_seed = {
        ("medium", "balanced-N5"): [{"drop": d} for d in (2.0, 3.0, 4.0)],
        ("medium", "fqe-init-N5"): [{"drop": d} for d in (30.0, 35.0, 40.0)],
    }
    row = [r for r in evidence.claim_rows(per_seed) if r["claim"].startswith("(d)")][0]
    assert row["result"] == "holds" and row["difference"] == pytest.approx(3.0 - 35.0)
    per_seed[("medium", "balanced-N5")], per_seed[("medium", "fqe-init-N5")] = (
        per_seed[("medium", "fqe-init-N5")],
        per_seed[("medium", "balanced-N5")],
    )
    assert [r for r in evidence.claim_rows(per_seed) if r["claim"].startswith("(d)")][0]["result"] == "reversed"


def test_seed_metrics_drop_and_early_mean():
    steps = np.arange(0, 12_001, 1000)
    scores = np.array([40, 10, 20, 30, 40, 40, 40, 40, 40, 40, 50, 60, 70], dtype=float)
    m = evidence.seed_metrics(steps, scores)
    assert m["drop"] == pytest.approx(40 - 10) and m["min_1k_10k"] == 10 and m["at_10k"] == 50
    assert m["early"] == pytest.approx(np.mean(scores[1:11])) and m["final"] == pytest.approx(60.0)


def test_fqe_convergence_csv(tmp_path, monkeypatch):
    """FQE's start-state estimate against its Monte-Carlo return, per evaluation; a resumed step keeps its last value."""
    from torch.utils.tensorboard import SummaryWriter

    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    out = Path("out")
    with SummaryWriter(str(tmp_path / out / "runs" / "hopper-medium__fqe__seed1")) as writer:
        for step, q, mc in ((5000, 27.0, 230.0), (10000, 60.0, 234.0), (10000, 63.5, 233.9), (15000, 101.7, 225.2)):
            writer.add_scalar("eval/q_estimate_env_starts", q, step)
            if step != 15000:
                writer.add_scalar("eval/mc_return", mc, step)
    evidence.write_fqe_convergence(out)
    rows = (tmp_path / out / "hopper-medium" / "diagnostics" / "fqe_convergence.csv").read_text().splitlines()
    assert rows == ["step,q_estimate_env_starts,mc_return", "5000,27.0,230.0", "10000,63.5,233.9"]


def test_fill_readme_replaces_only_the_study_block(tmp_path, monkeypatch, capsys):
    """The README's block between the markers becomes the score tables, one line per claim with its comparisons,
    and the Fig. 3 figure of each dataset that has one; the text around it is kept; a README without markers is
    untouched."""
    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    out = Path("out")
    (tmp_path / out / "hopper-medium" / "fig3_methods").mkdir(parents=True)
    (tmp_path / out / "hopper-medium" / "fig3_methods" / "fig3_score.png").write_bytes(b"png")
    score_tables = "**hopper-medium** (normalized)\n\n| method | seeds |\n|---|---|\n| Ours | 3 |"
    verdict = {
        "first": "",
        "second": "",
        "first_mean": "",
        "second_mean": "",
        "n_first": "",
        "n_second": "",
        "difference": "",
        "se": "",
        "result": "verdict: inconclusive (2/2 comparisons run)",
    }
    claims = [
        dict(claim="(c) N", task="hopper-medium", metric="final", **row)
        for row in (
            dict(
                first="balanced-N5",
                second="balanced-N2",
                first_mean=44.1,
                second_mean=32.3,
                n_first=3,
                n_second=3,
                difference=11.78,
                se=5.1,
                result="holds",
            ),
            dict(
                first="balanced-N2",
                second="balanced-N1",
                first_mean=32.3,
                second_mean=56.2,
                n_first=3,
                n_second=1,
                difference=np.nan,
                se=np.nan,
                result="n/a (fewer than 2 seeds)",
            ),
            verdict,
        )
    ]
    start, end = evidence.README_MARKERS
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{start}\nold numbers 12.3\n{end}\n| claim | verdict |\nafter\n")
    evidence.fill_readme(out, readme, score_tables, claims)
    text = readme.read_text()
    assert text.startswith(f"intro\n{start}\n") and text.endswith(f"{end}\n| claim | verdict |\nafter\n")
    block = text.split(start)[1].split(end)[0]
    assert "old numbers" not in block and "| Ours | 3 |" in block
    assert "![hopper-medium, Fig. 3 arms](out/hopper-medium/fig3_methods/fig3_score.png)" in block
    assert "hopper-medium-replay" not in block  # no figure there yet
    assert (
        "| (c) N (final) | hopper-medium | **inconclusive (2/2 comparisons run)** | Ours (balanced, N=5) − Ours, "
        "N=2: +11.8 ± 5.1 (3/3) → holds; Ours, N=2 − Ours, N=1: n/a (3/1) → n/a |"
    ) in block
    readme.write_text("no markers here\n")
    evidence.fill_readme(out, readme, score_tables, claims)
    assert readme.read_text() == "no markers here\n" and "left as it is" in capsys.readouterr().out


def test_a_second_sitting_never_starts_a_running_job_and_counts_it_against_workers(tmp_path, monkeypatch, capsys):
    """A job holds status/<job>.lock while it runs, even after the sitting that started it is gone: another sitting
    waits for it (it is a dependency), does not start it again, and marks nothing for it; the job marks itself."""
    import fcntl
    import subprocess
    import time

    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    monkeypatch.setattr(evidence, "POLL_SECONDS", 0.05)
    out = tmp_path / "out"
    (out / "status").mkdir(parents=True)
    record = "import sys, pathlib, time; pathlib.Path(sys.argv[1]).write_text(str(time.time()))"
    jobs = [
        evidence.Job("long", ["python", "-c", "pass", str(tmp_path / "long.args")]),
        evidence.Job("after", ["python", "-c", record, str(tmp_path / "after.args")], deps=["long"]),
        evidence.Job("free", ["python", "-c", record, str(tmp_path / "free.args")]),
    ]
    monkeypatch.setattr(evidence, "jobs", lambda out: jobs)
    # 'long' runs in another sitting: a process holding its lock, which marks it done when it ends after 1 s
    holder = subprocess.Popen(
        ["flock", str(out / "status" / "long.lock"), "sh", "-c", f"sleep 1; touch {out / 'status' / 'long.done'}"]
    )
    while not evidence.lock_is_held(out / "status" / "long.lock"):
        time.sleep(0.01)
    started = time.time()
    evidence.run_campaign(out, workers=2, dry_run=False, only=[])  # one slot is taken by 'long'
    holder.wait()
    assert not (tmp_path / "long.args").exists()  # never started here
    assert float((tmp_path / "after.args").read_text()) >= started + 0.9  # waited for 'long' to finish elsewhere
    assert (tmp_path / "free.args").exists()
    assert "start long" not in capsys.readouterr().out
    fd = os.open(out / "status" / "free.lock", os.O_RDWR)  # a finished job's lock is free again
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)


def test_a_continuation_starts_from_a_copy_of_the_finished_run(tmp_path, monkeypatch):
    """init_from: the first start copies the earlier checkpoint (left as it is) and resumes from the copy."""
    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    monkeypatch.setattr(evidence, "POLL_SECONDS", 0.05)
    (tmp_path / "short.pt").write_text("step 30000")
    record = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(' '.join(sys.argv[2:]))"
    job = evidence.Job(
        "deeper",
        ["python", "-c", record, str(tmp_path / "deeper.args")],
        tmp_path / "deeper.pt",
        init_from=tmp_path / "short.pt",
    )
    monkeypatch.setattr(evidence, "jobs", lambda out: [job])
    evidence.run_campaign(tmp_path / "out", workers=1, dry_run=False, only=[])
    assert (tmp_path / "deeper.args").read_text() == "--resume"
    assert (tmp_path / "deeper.pt").read_text() == "step 30000" and (tmp_path / "short.pt").read_text() == "step 30000"


def test_depth_report_reads_the_pre_registered_verdict(tmp_path, monkeypatch):
    """depth/: kept = score after epoch 1 / score at 0 per seed; ours' kept at the deepest depth against 30k by the
    2-SE rule, 'supported' only when it also reaches KEEP_SUPPORTED; the CQL gap is losses/cql / alpha_cql."""
    import csv as csv_module

    from torch.utils.tensorboard import SummaryWriter

    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    out = tmp_path / "out"
    (out / "status").mkdir(parents=True)
    start = {1: 40.0, 2: 50.0, 3: 60.0}
    after = {
        (30_000, "balanced-N5"): (0.2, 0.3, 0.25),
        (150_000, "balanced-N5"): (0.85, 0.9, 0.95),
        (30_000, "sac-ft"): (0.2, 0.2, 0.3),
        (150_000, "sac-ft"): (0.3, 0.1, 0.2),
    }
    for (steps, arm), fractions in after.items():
        for seed, fraction in zip(evidence.SEEDS, fractions):
            run = out / "depth" / "runs" / f"hopper-medium__{arm}__cql{steps // 1000}k__seed{seed}"
            with SummaryWriter(str(run)) as writer:
                for step, score in zip((0, 1000, 2000, 3000), (start[seed], start[seed] * fraction, 30, 35)):
                    writer.add_scalar("eval/normalized_score", score, step)
            (out / "status" / f"depth{steps // 1000}k_{arm}_s{seed}.done").touch()
    for name, steps in (("hopper-medium__cql-pretrain__seed1", 30_000), ("hopper-medium__cql-pretrain-deep__seed1", 150_000)):
        with SummaryWriter(str(out / "runs" / name)) as writer:
            for step in range(steps - 6000, steps + 1, 1000):  # gap 2.0 at 30k, 4.0 at 150k; 25k is outside the window
                outside = 100 if step <= steps - 5000 else 0
                writer.add_scalar("losses/cql", 5.0 * (2.0 if steps == 30_000 else 4.0) + outside, step)
            writer.add_scalar("eval/normalized_score", 45.0, steps)
    evidence.first_epoch_report(out)
    summary = list(csv_module.DictReader(open(out / "depth" / "depth_summary.csv")))
    ours = {int(r["cql_steps"]): r for r in summary if r["arm"] == "balanced-N5"}
    assert float(ours[30_000]["cql_gap"]) == pytest.approx(2.0) and float(ours[150_000]["cql_gap"]) == pytest.approx(4.0)
    assert float(ours[150_000]["kept_mean"]) == pytest.approx(0.9, abs=1e-3)
    assert float(ours[30_000]["after_epoch_1_mean"]) == pytest.approx(np.mean([40 * 0.2, 50 * 0.3, 60 * 0.25]), abs=0.01)
    verdict = {r["arm"]: r for r in csv_module.DictReader(open(out / "depth" / "depth_verdict.csv"))}
    assert verdict["balanced-N5"]["verdict"] == "supported" and verdict["balanced-N5"]["comparison"] == "holds"
    assert verdict["sac-ft"]["verdict"] == "(control)" and verdict["sac-ft"]["comparison"] == "tie"
    assert (out / "depth" / "first_epoch_vs_depth.png").stat().st_size > 10_000
    # the same data with ours keeping only ~55% at 150k: the fall shrinks but stays
    for seed, fraction in zip(evidence.SEEDS, (0.5, 0.55, 0.6)):
        run = out / "depth" / "runs" / f"hopper-medium__balanced-N5__cql150k__seed{seed}"
        for old in run.iterdir():
            old.unlink()
        with SummaryWriter(str(run)) as writer:
            for step, score in zip((0, 1000, 2000, 3000), (start[seed], start[seed] * fraction, 30, 35)):
                writer.add_scalar("eval/normalized_score", score, step)
    evidence.first_epoch_report(out)
    verdict = {r["arm"]: r for r in csv_module.DictReader(open(out / "depth" / "depth_verdict.csv"))}
    assert verdict["balanced-N5"]["verdict"].startswith("partly supported")


def write_curve(run_dir, scores, steps=None):
    from torch.utils.tensorboard import SummaryWriter

    steps = steps if steps is not None else range(0, 1000 * len(scores), 1000)
    with SummaryWriter(str(run_dir)) as writer:
        for step, score in zip(steps, scores):
            writer.add_scalar("eval/normalized_score", score, step)


def test_walker_critic_side_verdict_needs_the_frozen_critics_gain_and_the_turn_to_over_estimation(tmp_path, monkeypatch):
    """diagnosis/walker2d/: per variant and epoch the seed mean of the probes' scores and of Qbar - Monte-Carlo
    (q_vs_mc.csv's labels); 'same cause' only when frozen critics beat as-is after epoch 1 by the 2-SE rule and the
    as-is critics go from under- to over-estimation."""
    import csv as csv_module

    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    out = tmp_path / "out"
    folder = out / "diagnosis" / "walker2d"
    after = {"as-is": (1.0, 2.0, 0.0), "frozen-critics": (50.0, 55.0, 60.0), "frozen-actor": (40.0, 45.0, 42.0)}
    for variant, scores in after.items():
        for seed, score in zip(evidence.SEEDS, scores):
            write_curve(folder / "runs" / f"{evidence.WALKER}__balanced-N5-{variant}__seed{seed}", (45.0, score, 10.0, 12.0))

    def write_q(after_epoch_1):
        rows = [{"label": "CQL 30k, step 0", "q_mean": 200.0, "mc_mean": 300.0, "q_minus_mc_mean": -100.0}]
        for variant in after:
            for seed in evidence.SEEDS:
                for step in (1000, 2000, 3000):
                    gap = after_epoch_1 + seed if (variant, step) == ("as-is", 1000) else -50.0
                    rows.append(
                        {
                            "label": f"{variant}, seed {seed}, step {step}",
                            "q_mean": 100.0 + gap,
                            "mc_mean": 100.0,
                            "q_minus_mc_mean": gap,
                        }
                    )
        evidence.write_csv(folder / "q_vs_mc.csv", rows)

    write_q(after_epoch_1=28.0)  # as-is gaps 29, 30, 31 after the first epoch
    evidence.critic_side_report(out)
    summary = {(r["variant"], int(r["step"])): r for r in csv_module.DictReader(open(folder / "summary.csv"))}
    assert float(summary[("as-is", 1000)]["score_mean"]) == pytest.approx(1.0)
    assert float(summary[("frozen-critics", 1000)]["score_std"]) == pytest.approx(np.std([50, 55, 60]), abs=0.01)
    assert float(summary[("as-is", 1000)]["q_minus_mc_mean"]) == pytest.approx(30.0)
    assert float(summary[("as-is", 0)]["q_minus_mc_mean"]) == pytest.approx(-100.0)
    verdict = next(csv_module.DictReader(open(folder / "verdict.csv")))
    se = np.sqrt(np.var([50, 55, 60], ddof=1) / 3 + np.var([1, 2, 0], ddof=1) / 3)
    assert float(verdict["difference"]) == pytest.approx(54.0) and float(verdict["se"]) == pytest.approx(se, abs=0.01)
    assert verdict["result"] == "holds" and verdict["verdict"] == "same cause as on hopper-medium"
    sentence = next(line for line in evidence.headline(out, []) if "walker2d-medium-expert" in line)
    assert sentence.endswith(
        "ours goes from 45.0 to 1.0 in the first epoch, with the critics frozen to 55.0 "
        f"(frozen - as is +54.0 ± {se:.1f}: holds); Qbar - Monte-Carlo -100 before the epoch, +30 after it: "
        "**same cause as on hopper-medium**."
    )
    write_q(after_epoch_1=-40.0)  # still pessimistic after the epoch: frozen critics help, but not by that route
    evidence.critic_side_report(out)
    verdict = next(csv_module.DictReader(open(folder / "verdict.csv")))
    assert verdict["result"] == "holds" and verdict["verdict"] == "not the same cause"


def test_independent_report_groups_runs_by_pretraining(tmp_path, monkeypatch):
    """intervals/independent/: ours and SAC-ft grouped by their CQL pretraining (1: seeds 1-2, 2: 4-5, 3: 6-7; seed
    3 left out), AWAC one pretraining per seed; a pretraining with an unfinished run is left out; the claim rows
    count pretrainings."""
    import csv as csv_module

    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    monkeypatch.setattr(evidence, "INTERVAL_RESAMPLES", 300)
    monkeypatch.setattr(evidence, "LATE_FROM", 3000)
    out = tmp_path / "out"
    (out / "status").mkdir(parents=True)
    level = {"balanced-N5": 60.0, "sac-ft": 30.0, "awac-N5": 40.0}
    seeds = {"balanced-N5": (1, 2, 3, 4, 5, 6, 7), "sac-ft": (1, 2, 3, 4, 5, 6), "awac-N5": (1, 2, 3, 4, 5)}
    for arm, arm_seeds in seeds.items():
        for seed in arm_seeds:
            write_curve(out / "runs" / f"hopper-medium-replay__{arm}__seed{seed}", [level[arm] + seed] * 6)
            (out / "status" / f"medium-replay_{arm}_s{seed}.done").touch()
    evidence.independent_report(out)
    runs = list(csv_module.DictReader(open(out / "intervals" / "independent" / "runs.csv")))
    of = lambda arm: [(int(r["pretraining_seed"]), int(r["seed"])) for r in runs if r["arm"] == arm]
    assert of("balanced-N5") == [(1, 1), (1, 2), (2, 4), (2, 5), (3, 6), (3, 7)]
    assert of("sac-ft") == [(1, 1), (1, 2), (2, 4), (2, 5)]  # seed 7 missing: pretraining 3 left out
    assert of("awac-N5") == [(s, s) for s in (1, 2, 3, 4, 5)]
    assert float(next(r for r in runs if r["arm"] == "balanced-N5" and r["seed"] == "4")["late"]) == 64.0
    claims = list(csv_module.DictReader(open(out / "intervals" / "independent" / "claims.csv")))
    sac = next(r for r in claims if r["second"] == "sac-ft" and r["metric"] == "late")
    assert (sac["n_first"], sac["n_pretrainings_first"], sac["n_second"], sac["n_pretrainings_second"]) == ("6", "3", "4", "2")
    assert sac["result"] == "holds" and float(sac["iqm_first"]) == pytest.approx(np.mean([62, 64, 65, 66]))
    awac = next(r for r in claims if r["second"] == "awac-N5" and r["metric"] == "late")
    assert awac["n_pretrainings_second"] == "5" and awac["result"] == "holds"
    curves = list(csv_module.DictReader(open(out / "intervals" / "independent" / "curves.csv")))
    ours = [r for r in curves if r["arm"] == "balanced-N5"]
    assert [int(r["step"]) for r in ours] == list(range(0, 6000, 1000))
    assert {(r["n_pretrainings"], r["n_runs"], float(r["iqm"])) for r in ours} == {("3", "6", np.mean([62, 64, 65, 66]))}
    assert {(r["arm"], r["n_pretrainings"]) for r in curves} == {("balanced-N5", "3"), ("sac-ft", "2"), ("awac-N5", "5")}
    for figure in ("probability_of_improvement.png", "iqm_curves.png"):
        assert (out / "intervals" / "independent" / figure).stat().st_size > 10_000


def test_deep_full_report_puts_claim_b_at_both_depths(tmp_path, monkeypatch):
    """depth/full/: claim (b) on hopper-medium (drop = score at 0 - lowest over 1k-10k) at 30k and at the deepest
    checkpoint, by the 2-SE rule and the interval rule, from the full runs of each depth."""
    import csv as csv_module

    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    monkeypatch.setattr(evidence, "INTERVAL_RESAMPLES", 300)
    out = tmp_path / "out"
    (out / "status").mkdir(parents=True)
    for seed in evidence.SEEDS:
        for arm in evidence.DEEP_FULL_ARMS:
            ours = arm == "balanced-N5"
            fall30 = [50, 10 + seed, 12, 15] + [30] * 8  # everyone falls at 30k
            fall150 = [50, 48 - seed, 50, 52] + [50] * 8 if ours else fall30  # ours keeps its start at 150k
            write_curve(out / "runs" / f"hopper-medium__{arm}__seed{seed}", fall30)
            write_curve(out / "depth" / "full" / "runs" / f"hopper-medium__{arm}__cql150k__seed{seed}", fall150)
            (out / "status" / f"medium_{arm}_s{seed}.done").touch()
            (out / "status" / f"full150k_{arm}_s{seed}.done").touch()
    evidence.deep_full_report(out)
    summary = {(r["cql_steps"], r["arm"]): r for r in csv_module.DictReader(open(out / "depth" / "full" / "summary.csv"))}
    assert float(summary[("150000", "balanced-N5")]["drop_mean"]) == pytest.approx(np.mean([50 - 47, 50 - 46, 50 - 45]))
    assert float(summary[("30000", "balanced-N5")]["drop_mean"]) == pytest.approx(np.mean([39, 38, 38]), abs=0.01)
    claims = list(csv_module.DictReader(open(out / "depth" / "full" / "claims.csv")))
    verdicts = {(r["cql_steps"], r["rule"]): r["result"] for r in claims if r["result"].startswith("verdict")}
    assert verdicts[("150000", "2 SE")] == "verdict: reproduced (3/3 comparisons run)"
    assert verdicts[("150000", "interval (IQM, 95%)")] == "verdict: reproduced (3/3 comparisons run)"
    assert not verdicts[("30000", "2 SE")].startswith("verdict: reproduced")
    # the README headline's (b) cell on hopper-medium carries the deepest checkpoint's verdicts after its own
    cell = next(line for line in evidence.headline(Path("out"), []) if line.startswith("| (b)")).split(" | ")[1]
    assert cell.endswith("; from 150k CQL steps: reproduced (3/3), IQM drop: reproduced (3/3)")


def test_report_puts_walker2d_beside_hopper_and_outside_the_hopper_pool(tmp_path, monkeypatch):
    """walker2d-medium-expert: its rows in summary.csv and claims.csv under its own task name, its interval rows on
    their own (never in "all Hopper datasets"), SAC from scratch from its own Walker2d runs, and its column in the
    README's headline once it has a verdict."""
    import csv as csv_module

    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    monkeypatch.setattr(evidence, "FIGURES", {})
    monkeypatch.setattr(evidence, "INTERVAL_RESAMPLES", 300)
    monkeypatch.setattr(evidence, "LATE_FROM", 3000)
    monkeypatch.setattr(evidence.subprocess, "run", lambda command, **kw: None)
    out = tmp_path / "out"
    (out / "status").mkdir(parents=True)
    curves = {
        ("runs/hopper-medium__balanced-N5__seed{}", "medium_balanced-N5_s{}"): [40, 42, 45, 50, 55, 60],
        ("runs/hopper-medium__sac-ft__seed{}", "medium_sac-ft_s{}"): [40, 10, 20, 30, 40, 50],
        ("runs/walker2d-medium-expert__balanced-N5__seed{}", "walker2d-medium-expert_balanced-N5_s{}"): [
            70,
            71,
            72,
            80,
            81,
            82,
        ],
        ("runs/walker2d-medium-expert__sac-ft__seed{}", "walker2d-medium-expert_sac-ft_s{}"): [70, 5, 10, 20, 25, 30],
        ("runs/walker2d__sac__seed{}", "walker2d_sac_s{}"): [0, 1, 2, 3, 4, 5],
    }
    for (run, job), scores in curves.items():
        for seed in (1, 2):
            write_curve(out / run.format(seed), [score + seed for score in scores])
            (out / "status" / f"{job.format(seed)}.done").touch()
    readme = tmp_path / "README.md"
    readme.write_text("top\n<!-- headline -->\nold\n<!-- /headline -->\nend\n")
    evidence.report(out)
    summary = {(r["task"], r["arm"]): r for r in csv_module.DictReader(open(out / "summary.csv"))}
    assert float(summary[("walker2d-medium-expert", "balanced-N5")]["final_mean"]) == pytest.approx(81 + 1.5)
    assert float(summary[("walker2d-medium-expert", "sac")]["final_mean"]) == pytest.approx(4 + 1.5)
    assert ("hopper-medium", "sac") not in summary  # Hopper's SAC runs did not run here; Walker2d's are not Hopper's
    claims = list(csv_module.DictReader(open(out / "claims.csv")))
    walker = [r for r in claims if r["task"] == "walker2d-medium-expert" and r["claim"].startswith("(a)")]
    assert [(r["second"], r["result"]) for r in walker if r["first"]] == [("sac-ft", "holds"), ("sac", "holds")]
    assert walker[-1]["result"] == "verdict: inconclusive (2/4 comparisons run)"
    interval_rows = list(csv_module.DictReader(open(out / "intervals" / "claims.csv")))
    pooled = [r for r in interval_rows if r["task"] == "all Hopper datasets"]
    assert all("walker2d" not in r["tasks"] for r in pooled)
    assert any(r["task"] == "walker2d-medium-expert" and r["second"] == "sac-ft" for r in interval_rows)
    iqm = list(csv_module.DictReader(open(out / "intervals" / "iqm.csv")))
    assert {r["task"] for r in iqm if r["arm"] == "sac"} == {"walker2d-medium-expert"}
    header = next(line for line in readme.read_text().splitlines() if line.startswith("| claim |"))
    assert header == "| claim | hopper-medium | hopper-medium-replay | hopper-medium-expert | walker2d-medium-expert |"


def test_alpha_report_reads_its_verdict_against_the_committed_ensembles_probes(tmp_path, monkeypatch):
    """alpha/: the base level's probes are the depth test's 30k probes (the committed ensemble, alpha_cql 5); the
    CQL gap of each level is its run's losses/cql over its own alpha_cql; ours' kept at the highest alpha against
    the base decides; with only part of the levels run the verdict is marked interim."""
    import csv as csv_module

    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    out = tmp_path / "out"
    (out / "status").mkdir(parents=True)
    fractions = {5.0: (0.2, 0.3, 0.25), 10.0: (0.5, 0.55, 0.6), 20.0: (0.85, 0.9, 0.95)}
    for alpha, kept in fractions.items():
        for arm in evidence.PROBE_ARMS:
            for seed, fraction in zip(evidence.SEEDS, kept):
                write_curve(evidence.ALPHA_AXIS.run_dir(out, alpha, arm, seed), [50.0, 50.0 * fraction, 30, 35])
                (out / "status" / f"{evidence.ALPHA_AXIS.job(alpha)}_{arm}_s{seed}.done").touch()
    from torch.utils.tensorboard import SummaryWriter

    for name, alpha, gap in (
        ("cql-pretrain", 5.0, 2.0),
        ("cql-pretrain-alpha10", 10.0, 3.0),
        ("cql-pretrain-alpha20", 20.0, 5.0),
    ):
        with SummaryWriter(str(out / "runs" / f"hopper-medium__{name}__seed1")) as writer:
            for step in range(26_000, 30_001, 1000):
                writer.add_scalar("losses/cql", alpha * gap, step)
    (out / "status" / "alpha20_balanced-N5_s3.done").unlink()  # seed 3 at alpha 20 not finished: interim
    evidence.axis_report(out, evidence.ALPHA_AXIS)
    summary = {(float(r["alpha_cql"]), r["arm"]): r for r in csv_module.DictReader(open(out / "alpha" / "alpha_summary.csv"))}
    assert [float(summary[(a, "balanced-N5")]["cql_gap"]) for a in (5.0, 10.0, 20.0)] == [2.0, 3.0, 5.0]
    assert summary[(20.0, "balanced-N5")]["n_seeds"] == "2"
    verdict = {r["arm"]: r for r in csv_module.DictReader(open(out / "alpha" / "alpha_verdict.csv"))}
    assert verdict["balanced-N5"]["highest_alpha_cql"] == "20.0" and float(verdict["balanced-N5"]["kept_5"]) == 0.25
    assert verdict["balanced-N5"]["verdict"] == "supported [interim: highest run so far 20]"
    assert (out / "alpha" / "first_epoch_vs_alpha.png").stat().st_size > 10_000
    (out / "status" / "alpha20_balanced-N5_s3.done").touch()
    evidence.axis_report(out, evidence.ALPHA_AXIS)
    verdict = {r["arm"]: r for r in csv_module.DictReader(open(out / "alpha" / "alpha_verdict.csv"))}
    assert verdict["balanced-N5"]["verdict"] == "supported" and verdict["sac-ft"]["verdict"] == "(control)"


def test_headline_adds_the_cql_weight_and_independent_pretraining_lines_once_they_have_results(tmp_path, monkeypatch):
    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    out = Path("out")
    assert not any("Independent pretraining" in line or "CQL weight" in line for line in evidence.headline(out, []))
    verdict = "verdict: inconclusive (0/3 comparisons run)"
    rows = [
        {
            "claim": "(a) ours ends above every baseline",
            "task": "hopper-medium",
            "metric": "late",
            "first": "",
            "result": verdict,
        },
    ]
    evidence.write_csv(tmp_path / out / "intervals" / "independent" / "claims.csv", rows)
    assert not any("Independent pretraining" in line for line in evidence.headline(out, []))  # nothing compared yet
    rows += [
        {
            "claim": "(a) ours ends above every baseline",
            "task": "hopper-medium-replay",
            "metric": "late",
            "first": "",
            "result": "verdict: reproduced (3/3 comparisons run)",
        },
        {
            "claim": "(a) ours ends above every baseline",
            "task": "hopper-medium-replay",
            "metric": "auc",
            "first": "",
            "result": "verdict: reproduced (3/3 comparisons run)",
        },
        {
            "claim": "(b) no early collapse",
            "task": "hopper-medium",
            "metric": "drop",
            "first": "",
            "result": "verdict: not reproduced (1/1 comparisons run)",
        },
    ]
    evidence.write_csv(tmp_path / out / "intervals" / "independent" / "claims.csv", rows)
    evidence.write_csv(
        tmp_path / out / "alpha" / "alpha_verdict.csv",
        [
            {
                "arm": "balanced-N5",
                "highest_alpha_cql": 20.0,
                "kept_highest": 0.9,
                "kept_5": 0.25,
                "difference": 0.65,
                "se": 0.05,
                "verdict": "supported",
            }
        ],
    )
    lines = evidence.headline(out, [])
    weight = next(line for line in lines if "CQL weight" in line)
    assert (
        "a CQL weight of 20 instead of 5 (`out/alpha/`): ours keeps 90% of its start after the first epoch, not 25%" in weight
    )
    assert "not 25% (+65 ± 5 points, SE): **supported**." in weight and "SAC-ft" not in weight  # no control row here
    independent = next(line for line in lines if "Independent pretraining" in line)
    assert independent.endswith(
        "(a) late on hopper-medium-replay: reproduced (3/3); (b) drop on hopper-medium: not reproduced (1/1)."
    )


def test_committed_readme_headline_is_what_the_committed_csvs_give():
    """The README's first screen is regenerated from the committed CSVs by `--report`: the committed block must be
    exactly what those CSVs give now, so a CSV and the README cannot drift apart."""
    out = Path("benchmark/results/evidence")
    readme = (evidence.ROOT / "README.md").read_text()
    start, end = evidence.HEADLINE_MARKERS
    committed = readme.split(start, 1)[1].split(end, 1)[0].strip().splitlines()[1:]  # after the "written by" line
    claims = evidence.read_csv(evidence.ROOT / out / "claims.csv")
    assert claims, "the study's claims.csv is committed"
    assert committed == evidence.headline(out, claims)


def test_side_by_side_puts_each_independent_comparison_beside_the_shared_ensembles(tmp_path, monkeypatch):
    """intervals/independent/side_by_side.csv and the README block: each comparison the check could make (not the n/a
    ones, only its claim's interval metric) joined to the same comparison by the 2-SE rule and the interval rule on the
    shared ensemble's runs; agree says whether all the results that exist are the same."""
    import csv as csv_module

    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    out = Path("out")
    a, b = "(a) ours ends above every baseline", "(b) no early collapse with balanced replay"
    row = lambda claim, task, metric, second, **numbers: {
        "claim": claim,
        "task": task,
        "metric": metric,
        "first": "balanced-N5",
        "second": second,
        **numbers,
    }
    interval = lambda d, low, high, result: dict(iqm_difference=d, ci_low=low, ci_high=high, result=result)
    b_long = b + "; a dip with uniform, online-only and SAC-ft"  # the study's wording; the check's is shorter
    evidence.write_csv(
        tmp_path / out / "claims.csv",
        [
            row(a, "hopper-medium", "final", "sac-ft", difference=-8.08, se=10.52, result="tie"),
            row(b_long, "hopper-medium", "drop", "sac-ft", difference=-1.5, se=2.5, result="tie"),
        ],
    )
    evidence.write_csv(
        tmp_path / out / "intervals" / "claims.csv",
        [
            row(a, "hopper-medium", "late", "sac-ft", **interval(-6.41, -10.62, -1.99, "reversed")),
            row(a, "hopper-medium", "auc", "sac-ft", **interval(9.0, 1.0, 12.0, "holds")),
            row(b_long, "hopper-medium", "drop", "sac-ft", **interval(-2.0, -5.0, 1.0, "tie")),
        ],
    )
    pretrainings = dict(n_pretrainings_first=3, n_pretrainings_second=2, n_first=6, n_second=4)
    evidence.write_csv(
        tmp_path / out / "intervals" / "independent" / "claims.csv",
        [
            row(a, "hopper-medium", "late", "sac-ft", **interval(-3.25, -9.5, 4.75, "tie"), **pretrainings),
            row(a, "hopper-medium", "auc", "sac-ft", **interval(1.0, -2.0, 3.0, "tie"), **pretrainings),
            row(a, "hopper-medium", "late", "awac-N5", **interval("", "", "", "n/a (fewer than 2 pretrainings)")),
            row(b, "hopper-medium", "drop", "sac-ft", **interval(-1.0, -4.0, 2.0, "tie"), **pretrainings),
            row(a, "all Hopper datasets", "late", "sac-ft", **interval(2.0, 0.5, 4.0, "holds"), **pretrainings),
            {"claim": a, "task": "hopper-medium", "metric": "late", "first": "", "result": "verdict: inconclusive"},
        ],
    )
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- independent-pretraining -->\nstale table\n<!-- /independent-pretraining -->\nafter\n")
    evidence.fill_side_by_side(out, readme)
    rows = list(csv_module.DictReader(open(tmp_path / out / "intervals" / "independent" / "side_by_side.csv")))
    assert [(r["claim"][:3], r["task"], r["second"], r["agree"]) for r in rows] == [
        ("(a)", "hopper-medium", "sac-ft", "no"),  # 2-SE tie, shared interval reversed, independent tie
        ("(b)", "hopper-medium", "sac-ft", "yes"),
        ("(a)", "all Hopper datasets", "sac-ft", "yes"),  # no 2-SE or shared row across datasets: one result
    ]
    first = rows[0]
    assert (first["two_se_metric"], first["two_se_difference"], first["two_se_result"]) == ("final", "-8.08", "tie")
    assert (first["shared_metric"], first["shared_ci_low"], first["shared_result"]) == ("late", "-10.62", "reversed")
    assert (first["independent_iqm_difference"], first["n_pretrainings_first"]) == ("-3.25", "3")
    assert (rows[1]["two_se_difference"], rows[1]["shared_iqm_difference"]) == ("-1.5", "-2.0")
    assert rows[2]["two_se_result"] == rows[2]["shared_result"] == ""
    text = readme.read_text()
    assert text.startswith("before\n<!-- independent-pretraining -->\n") and text.endswith(
        "<!-- /independent-pretraining -->\nafter\n"
    )
    assert "stale table" not in text
    assert (
        "| (a) | hopper-medium | Ours (balanced, N=5) − SAC-ft | final -8.1 ± 10.5 tie | late -6.4 [-10.6, -2.0] reversed | "
        "late -3.2 [-9.5, 4.8] tie (3/2) | no |" in text
    )
    assert (
        "| (a) | all Hopper datasets | Ours (balanced, N=5) − SAC-ft | — | — | late +2.0 [0.5, 4.0] holds (3/2) | yes |"
        in text
    )


def test_runner_records_the_dataset_each_job_reads(tmp_path, monkeypatch):
    """commands.txt names the bytes a run was started on: the dataset's SHA-256 and the CPU that wrote it."""
    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    monkeypatch.setattr(evidence, "POLL_SECONDS", 0.05)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "d.hdf5").write_bytes(b"not really hdf5, but bytes to hash" * 1000)
    (tmp_path / "data" / "d.hdf5.made_on").write_text("Some CPU\n")
    command = ["python", "-c", "pass", "--dataset-path", "data/d.hdf5"]
    monkeypatch.setattr(
        evidence,
        "jobs",
        lambda out: [
            evidence.Job("reads", command, None, None),
            evidence.Job("no_data", ["python", "-c", "pass"], None, None),
        ],
    )
    out = tmp_path / "out"
    evidence.run_campaign(out, workers=1, dry_run=False, only=[])
    lines = (out / "commands.txt").read_text().splitlines()
    expected = hashlib.sha256(b"not really hdf5, but bytes to hash" * 1000).hexdigest()
    at = lines.index("python -c pass --dataset-path data/d.hdf5")
    assert lines[at + 1] == f"#   dataset data/d.hdf5: sha256 {expected}, made on Some CPU"
    assert lines[at + 2] == "python -c pass" and len(lines) == at + 3  # no dataset, no record


def test_runner_names_missing_packages_before_any_job(tmp_path, monkeypatch):
    """A fresh machine without h5py: one message naming it and the install command; no job starts."""
    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    monkeypatch.setattr(evidence, "jobs", lambda out: fake_jobs(tmp_path))
    real_find_spec = evidence.importlib.util.find_spec
    monkeypatch.setattr(
        evidence.importlib.util, "find_spec", lambda name: None if name in ("h5py", "tyro") else real_find_spec(name)
    )
    with pytest.raises(SystemExit) as exit_info:
        evidence.run_campaign(tmp_path / "out", workers=2, dry_run=False, only=[])
    assert str(exit_info.value) == (
        "error: the campaign's scripts need h5py, tyro, not installed here: "
        "pip install torch==2.13.0 (the CPU build), then pip install -r requirements.txt"
    )
    assert not list(tmp_path.glob("*.args"))  # no job ran
