"""Issue 8 sweep across every script: each bad input ends in one `error: ...` line naming the problem, a non-zero
exit and no traceback, the same way in sac.py, cql_pretrain.py, fqe.py, balanced_finetune.py, awac.py and bcq_ft.py.

Speed: every case runs the script's main() in-process (modules loaded once, sys.argv patched); fail() raises
SystemExit("error: ..."), which exits with status 1 and prints the message alone, and any other exception would fail
the test, so an in-process SystemExit carrying a one-line "error: " string is the same check as a subprocess. One
subprocess per script (all six run in parallel) checks the real stderr/exit status of one representative case.

Covered elsewhere, not repeated here: a NaN/inf loss stopping the run (tests of cql_pretrain, fqe, balanced_finetune,
awac; bcq_ft and sac are covered below), same seed -> identical logged values (tests of every script; fqe's through
its SIGKILL test, which compares a resumed run with a same-seed uninterrupted one), SIGKILL + --resume (every script).
"""

import ast
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import tyro

from conftest import REPO_ROOT, own_copies, run_main, write_d4rl_file

SCRIPTS = ("sac", "cql_pretrain", "fqe", "balanced_finetune", "awac", "bcq_ft")
DATASET_SCRIPTS = ("cql_pretrain", "fqe", "balanced_finetune", "awac", "bcq_ft")
HIDDEN = 16
FORMAT = "o2o-ensemble-v1"


@pytest.fixture(scope="module")
def mods():
    return own_copies("reliability", SCRIPTS)


# ---------------------------------------------------------------------------------
# data and checkpoints, built once
# ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_arrays(tiny_hopper_dataset):
    with h5py.File(tiny_hopper_dataset, "r") as f:
        return {
            key: f[key][:300] for key in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")
        }


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_hopper_dataset, base_arrays):
    """Every bad dataset of issue 8 (and a good small one), keyed by case name."""
    folder = tmp_path_factory.mktemp("bad_data")
    out = {"good": write_d4rl_file(folder / "good.hdf5", **base_arrays), "missing": folder / "no_such_file.hdf5"}
    raw = tiny_hopper_dataset.read_bytes()
    (folder / "truncated.hdf5").write_bytes(raw[: len(raw) // 2])
    out["truncated"] = folder / "truncated.hdf5"
    (folder / "text.hdf5").write_text("observations,actions,rewards\n0.1,0.2,0.3\n")
    out["not_hdf5"] = folder / "text.hdf5"
    out["no_actions_key"] = write_d4rl_file(folder / "no_actions.hdf5", **base_arrays)
    with h5py.File(out["no_actions_key"], "a") as f:
        del f["actions"]
    out["short_rewards"] = write_d4rl_file(
        folder / "short_rewards.hdf5", **dict(base_arrays, rewards=base_arrays["rewards"][:-7])
    )
    out["two_column_rewards"] = write_d4rl_file(
        folder / "two_column_rewards.hdf5", **dict(base_arrays, rewards=np.zeros((300, 2)))
    )
    for key in ("observations", "actions", "rewards"):
        for bad in ("nan", "inf"):
            values = base_arrays[key].astype(np.float32).copy()
            values.reshape(-1)[17] = np.nan if bad == "nan" else -np.inf
            out[f"{bad}_{key}"] = write_d4rl_file(folder / f"{bad}_{key}.hdf5", **dict(base_arrays, **{key: values}))
    out["huge_rewards"] = write_d4rl_file(folder / "huge.hdf5", **dict(base_arrays, rewards=np.full(300, 3e38)))
    return out


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, mods, files):
    """A real cql_pretrain.py checkpoint (N=2, hidden 16, Hopper-v4, run in-process) and foreign ones derived from it."""
    folder = tmp_path_factory.mktemp("ckpts")
    cql_path = folder / "cql.pt"
    argv = [
        "cql_pretrain.py",
        "--env-id",
        "Hopper-v4",
        "--dataset-path",
        files["good"],
        "--n-ensemble",
        "2",
        "--hidden-dim",
        HIDDEN,
        "--batch-size",
        "16",
        "--offline-steps",
        "5",
        "--log-every",
        "5",
        "--eval-every",
        "5",
        "--eval-episodes",
        "1",
        "--checkpoint",
        cql_path,
        "--run-dir",
        folder / "runs",
        "--no-cuda",
    ]
    cwd, threads = os.getcwd(), torch.get_num_threads()
    old_argv, sys.argv = sys.argv, [str(a) for a in argv]
    try:
        torch.set_num_threads(1)
        os.chdir(folder)
        mods["cql_pretrain"].main()
    finally:
        sys.argv = old_argv
        os.chdir(cwd)
        torch.set_num_threads(threads)
    cql = torch.load(cql_path, weights_only=True)
    assert (cql["algo"], cql["n_ensemble"], cql["hidden_sizes"]) == ("cql", 2, [HIDDEN, HIDDEN])

    def forge(name, **changes):
        path = folder / f"{name}.pt"
        torch.save(dict(cql, **changes), path)
        return path

    def first(k):  # the first k members of the real checkpoint (actor [:k], critic [:2k])
        return {
            "n_ensemble": k,
            "actor": {key: v[:k] for key, v in cql["actor"].items()},
            "critic": {key: v[: 2 * k] for key, v in cql["critic"].items()},
        }

    c = mods["cql_pretrain"]
    cheetah_actor = c.EnsembleActor(17, 6, [HIDDEN, HIDDEN], 2).state_dict()
    cheetah_critic = c.EnsembleCritic(17, 6, [HIDDEN, HIDDEN], 2).state_dict()
    text = folder / "notes.pt"
    text.write_text("not a checkpoint\n")
    raw = folder / "state_dict.pt"  # e.g. another codebase's checkpoint: a bare actor state_dict
    torch.save(cql["actor"], raw)
    run_dir = str(folder / "resumed_run")
    return {
        "cql": cql_path,
        "text": text,
        "raw": raw,
        "cql_walker": forge("cql_walker", env_id="Walker2d-v4"),
        "cql_cheetah": forge(
            "cql_cheetah", env_id="HalfCheetah-v4", obs_dim=17, act_dim=6, actor=cheetah_actor, critic=cheetah_critic
        ),
        "fqe": forge("fqe", algo="fqe"),
        "fqe_walker": forge("fqe_walker", algo="fqe", env_id="Walker2d-v4"),
        "fqe_n1": forge("fqe_n1", algo="fqe", **first(1)),
        "balanced_walker": forge("balanced_walker", algo="balanced", env_id="Walker2d-v4", resume={"run_dir": run_dir}),
        "balanced_n3": forge("balanced_n3", algo="balanced", n_ensemble=3, resume={"run_dir": run_dir}),
        **{f"{algo}_walker": forge(f"{algo}_walker", algo=algo, env_id="Walker2d-v4") for algo in ("awac", "bcq", "sac")},
        **{f"{algo}_n2": forge(f"{algo}_n2", algo=algo) for algo in ("awac", "bcq", "sac")},
    }


# ---------------------------------------------------------------------------------
# each script's command line, tiny sizes; `data` / `env` vary per case
# ---------------------------------------------------------------------------------
def argv_of(script, tmp_path, ckpts, data=None, env="Hopper-v4", n=None, policy=None):
    out = tmp_path / "out.pt"
    common = ["--env-id", env, "--run-dir", tmp_path / "runs", "--no-cuda"]
    if script == "sac":
        return [
            *common,
            "--total-timesteps",
            "30",
            "--learning-starts",
            "10",
            "--batch-size",
            "8",
            "--hidden-dim",
            HIDDEN,
            "--log-every",
            "10",
            "--eval-every",
            "1000",
            "--eval-episodes",
            "1",
            "--checkpoint",
            out,
        ]
    common += ["--dataset-path", data]
    if script == "cql_pretrain":
        return [
            *common,
            "--n-ensemble",
            n or 1,
            "--hidden-dim",
            HIDDEN,
            "--batch-size",
            "8",
            "--offline-steps",
            "2",
            "--eval-episodes",
            "1",
            "--checkpoint",
            out,
        ]
    if script == "fqe":
        return [
            *common,
            "--policy-checkpoint",
            policy or ckpts["cql"],
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--eval-episodes",
            "1",
            "--checkpoint",
            out,
            *(["--n-ensemble", n] if n else []),
        ]
    if script == "balanced_finetune":
        return [
            *common,
            "--cql-checkpoint",
            policy or ckpts["cql"],
            "--n-ensemble",
            n or 2,
            "--online-steps",
            "10",
            "--epoch-length",
            "5",
            "--first-epoch-multiplier",
            "1",
            "--batch-size",
            "8",
            "--ratio-batch-size",
            "8",
            "--hidden-dim",
            HIDDEN,
            "--eval-episodes",
            "1",
            "--checkpoint",
            out,
        ]
    return [
        *common,
        "--n-ensemble",
        n or 1,
        "--hidden-dim",
        HIDDEN,
        "--offline-steps",
        "2",
        "--online-steps",
        "0",
        "--batch-size",
        "8",
        "--eval-episodes",
        "1",
        "--checkpoint",
        out,
    ]  # awac, bcq_ft


# ---------------------------------------------------------------------------------
# bad datasets
# ---------------------------------------------------------------------------------
DATASET_CASES = {  # case -> phrase the message must contain ({path}: the file given)
    "missing": "dataset file {path} does not exist",
    "truncated": "cannot read dataset {path}: not a readable HDF5 file",
    "not_hdf5": "cannot read dataset {path}: not a readable HDF5 file",
    "no_actions_key": "dataset {path} has no 'actions' key",
    "short_rewards": "'rewards' has 293 rows but 'observations' has 300",
    "two_column_rewards": "'rewards' must have one value per row, got shape (300, 2)",
    **{
        f"{bad}_{key}": f"dataset {{path}}: '{key}' contains NaN or inf"
        for key in ("observations", "actions", "rewards")
        for bad in ("nan", "inf")
    },
}


@pytest.mark.parametrize("case", list(DATASET_CASES))
@pytest.mark.parametrize("script", DATASET_SCRIPTS)
def test_bad_dataset(script, case, mods, files, ckpts, tmp_path, monkeypatch):
    message = run_main(mods[script], argv_of(script, tmp_path, ckpts, data=files[case]), monkeypatch, tmp_path)
    assert DATASET_CASES[case].format(path=files[case]) in message, message
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("script", DATASET_SCRIPTS)
def test_dataset_dims_must_match_env(script, mods, files, ckpts, tmp_path, monkeypatch):
    # fqe checks its policy against the env first, so it gets a HalfCheetah-shaped policy to reach the data check
    policy = ckpts["cql_cheetah"] if script == "fqe" else None
    argv = argv_of(script, tmp_path, ckpts, data=files["good"], env="HalfCheetah-v4", policy=policy)
    message = run_main(mods[script], argv, monkeypatch, tmp_path)
    assert f"dataset {files['good']} has observation/action dims 11/3 but HalfCheetah-v4 has 17/6" in message, message


# ---------------------------------------------------------------------------------
# checkpoints of another format / algorithm / env / N
# ---------------------------------------------------------------------------------
FORMAT_MSG = rf"checkpoint {{p}} is not an {FORMAT} checkpoint"
RESUME_CASES = {  # script -> {checkpoint at the resume path: regex the message must match ({p}: that path)}
    "cql_pretrain": {
        "fqe": r"{p} has algo='fqe'",
        "cql_walker": r"{p} has env_id='Walker2d-v4'",
        "cql": r"{p} has n_ensemble=2 but this run has n_ensemble=1",
    },
    "fqe": {
        "cql": r"{p} has algo='cql'",
        "fqe_walker": r"{p} has env_id='Walker2d-v4'",
        "fqe_n1": r"{p} has n_ensemble=1 but this run has n_ensemble=2",
    },
    "balanced_finetune": {
        "cql": r"{p} has algo='cql' but this run has algo='balanced'",
        "balanced_walker": r"{p} has env_id='Walker2d-v4' but this run has env_id='Hopper-v4'",
        "balanced_n3": r"{p} has n_ensemble=3 but this run has n_ensemble=2",
    },
    "awac": {
        "cql": r"{p} has algo='cql'",
        "awac_walker": r"{p} has env_id='Walker2d-v4'",
        "awac_n2": r"{p} has n_ensemble=2 but this run has n_ensemble=1",
    },
    "bcq_ft": {
        "cql": r"{p} has algo='cql'",
        "bcq_walker": r"{p} has env_id='Walker2d-v4'",
        "bcq_n2": r"{p} has n_ensemble=2 but this run has n_ensemble=1",
    },
    "sac": {
        "cql": r"{p} has algo='cql'",
        "sac_walker": r"{p} has env_id='Walker2d-v4'",
        "sac_n2": r"{p} has n_ensemble=2 but this run has n_ensemble=1",
    },
}
for cases in RESUME_CASES.values():  # the same shared load_resume_checkpoint in every script
    cases.update(
        {
            "text": r"cannot read checkpoint {p}",
            "raw": FORMAT_MSG,
            "missing": r"--resume: no checkpoint at {p} "
            r"\(give the run's --checkpoint\)$",
        }
    )


@pytest.mark.parametrize("script, foreign", [(s, c) for s, cases in RESUME_CASES.items() for c in cases])
def test_resume_of_a_foreign_checkpoint(script, foreign, mods, files, ckpts, tmp_path, monkeypatch):
    path = tmp_path / "foreign.pt"
    if foreign != "missing":
        path.write_bytes(ckpts[foreign].read_bytes())
    before = path.read_bytes() if path.exists() else None
    argv = argv_of(script, tmp_path, ckpts, data=files["good"]) + ["--checkpoint", path, "--resume"]
    message = run_main(mods[script], argv, monkeypatch, tmp_path)
    assert re.search(RESUME_CASES[script][foreign].format(p=re.escape(str(path))), message), message
    assert (path.read_bytes() if path.exists() else None) == before  # a refused resume leaves the file alone


@pytest.mark.parametrize(
    "script, change, pattern",
    [
        ("sac", ["--total-timesteps", "20"], r"{p} holds 30 steps, more than --total-timesteps 20"),
        ("balanced_finetune", ["--hidden-dim", "32"], r"checkpoint {p}: its ratio_net does not fit this run"),
        ("awac", ["--online-steps", "2"], r"checkpoint {p} holds 5 online transitions but --online-steps is 2"),
        ("bcq_ft", ["--online-steps", "2"], r"checkpoint {p} holds 5 online transitions but --online-steps is 2"),
        ("awac", ["--dataset-path", "250"], r"checkpoint {p} was trained on 300 dataset transitions, this dataset has 250$"),
        ("bcq_ft", ["--dataset-path", "250"], r"checkpoint {p} was trained on 300 dataset transitions, this dataset has 250$"),
    ],
)
def test_resume_own_checkpoint_with_other_sizes(
    script, change, pattern, mods, files, ckpts, base_arrays, tmp_path, monkeypatch
):
    """A real checkpoint of the script itself, resumed with a size that no longer fits its buffers or networks (or
    with a dataset of another size: --dataset-path N, the first N rows of the one it was trained on)."""
    argv = argv_of(script, tmp_path, ckpts, data=files["good"])
    if script in ("awac", "bcq_ft"):
        argv[argv.index("--online-steps") + 1] = "5"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [script, *map(str, argv)])
    mods[script].main()  # a complete tiny run
    assert (tmp_path / "out.pt").exists()
    if change[0] == "--dataset-path":
        rows = int(change[1])
        smaller = write_d4rl_file(tmp_path / "smaller.hdf5", **{key: value[:rows] for key, value in base_arrays.items()})
        argv[argv.index("--dataset-path") + 1], change = smaller, []
    message = run_main(mods[script], argv + ["--resume", *change], monkeypatch, tmp_path)
    assert re.search(pattern.format(p=re.escape(str(tmp_path / "out.pt"))), message), message


LOADED_CASES = [  # (script, flag, checkpoint, extra args, regex ({p}: the checkpoint path))
    ("fqe", "--policy-checkpoint", "text", [], r"cannot read policy checkpoint {p}"),
    ("fqe", "--policy-checkpoint", "raw", [], r"policy checkpoint {p} is not an " + FORMAT),
    ("fqe", "--policy-checkpoint", "fqe", [], r"policy checkpoint {p} has algo 'fqe'"),
    (
        "fqe",
        "--policy-checkpoint",
        "cql_walker",
        [],
        r"policy checkpoint {p} is for 'Walker2d-v4'.*not for --env-id 'Hopper-v4'",
    ),
    ("fqe", "--policy-checkpoint", "cql", ["--n-ensemble", "3"], r"--n-ensemble 3 but policy checkpoint {p} holds 2"),
    ("balanced_finetune", "--cql-checkpoint", "text", [], r"cannot read checkpoint {p}"),
    ("balanced_finetune", "--cql-checkpoint", "raw", [], r"checkpoint {p} has format None, expected '" + FORMAT),
    ("balanced_finetune", "--cql-checkpoint", "fqe", [], r"--cql-checkpoint {p} is an fqe\.py checkpoint"),
    (
        "balanced_finetune",
        "--cql-checkpoint",
        "cql_walker",
        [],
        r"checkpoint {p} was trained for 'Walker2d-v4', not for --env-id 'Hopper-v4'",
    ),
    ("balanced_finetune", "--cql-checkpoint", "cql", ["--n-ensemble", "3"], r"--n-ensemble 3 but checkpoint {p} holds 2"),
    ("balanced_finetune", "--fqe-checkpoint", "text", ["--q-init", "fqe"], r"cannot read checkpoint {p}"),
    ("balanced_finetune", "--fqe-checkpoint", "raw", ["--q-init", "fqe"], r"checkpoint {p} has format None"),
    (
        "balanced_finetune",
        "--fqe-checkpoint",
        "cql",
        ["--q-init", "fqe"],
        r"--fqe-checkpoint {p} has algo 'cql', expected 'fqe'",
    ),
    (
        "balanced_finetune",
        "--fqe-checkpoint",
        "fqe_walker",
        ["--q-init", "fqe"],
        r"checkpoint {p} was trained for 'Walker2d-v4'",
    ),
    ("balanced_finetune", "--fqe-checkpoint", "fqe_n1", ["--q-init", "fqe"], r"--n-ensemble 2 but checkpoint {p} holds 1"),
]


@pytest.mark.parametrize(
    "script, flag, foreign, extra, pattern", LOADED_CASES, ids=[f"{s}{f}={c}{''.join(e)}" for s, f, c, e, _ in LOADED_CASES]
)
def test_loaded_checkpoint_of_another_format_algo_env_or_n(
    script, flag, foreign, extra, pattern, mods, files, ckpts, tmp_path, monkeypatch
):
    argv = argv_of(script, tmp_path, ckpts, data=files["good"]) + [flag, ckpts[foreign], *extra]
    message = run_main(mods[script], argv, monkeypatch, tmp_path)
    assert re.search(pattern.format(p=re.escape(str(ckpts[foreign]))), message), message
    assert not (tmp_path / "out.pt").exists()


# ---------------------------------------------------------------------------------
# the old spellings (commands written before issue 21) still mean what they meant
# ---------------------------------------------------------------------------------
def parsed(module, argv):
    args = tyro.cli(module.Args, args=[str(arg) for arg in argv])
    if hasattr(module, "resolve_args"):
        module.resolve_args(args)
    return args


def test_old_spellings_parse_to_the_same_paths(mods, capsys):
    bf = mods["balanced_finetune"]
    old = parsed(bf, ["--checkpoint", "CQL.pt", "--save-checkpoint", "OUT.pt", "--resume"])
    new = parsed(bf, ["--cql-checkpoint", "CQL.pt", "--checkpoint", "OUT.pt", "--resume"])
    assert (old.cql_checkpoint, old.checkpoint, old.resume) == ("CQL.pt", "OUT.pt", True)
    assert {**vars(old), "old_save_checkpoint": None} == vars(new)
    assert capsys.readouterr().err == (
        "note: old spellings: --checkpoint CQL.pt --save-checkpoint OUT.pt now read "
        "--cql-checkpoint CQL.pt --checkpoint OUT.pt\n"
    )
    alone = parsed(bf, ["--save-checkpoint", "OUT.pt"])  # the output; the CQL input keeps its default
    assert (alone.cql_checkpoint, alone.checkpoint) == ("checkpoints/cql_walker2d-medium-expert-v2_seed1.pt", "OUT.pt")
    with pytest.raises(SystemExit, match="give --cql-checkpoint CQL.pt --checkpoint OUT.pt$"):
        parsed(bf, ["--cql-checkpoint", "A.pt", "--checkpoint", "B.pt", "--save-checkpoint", "C.pt"])
    for script in ("awac", "bcq_ft"):
        assert parsed(mods[script], ["--save-checkpoint", "OUT.pt", "--resume"]) == parsed(
            mods[script], ["--checkpoint", "OUT.pt", "--resume"]
        )
    for script in ("cql_pretrain", "fqe", "sac"):  # their output was always --checkpoint
        assert parsed(mods[script], ["--checkpoint", "OUT.pt", "--resume"]).checkpoint == "OUT.pt"


def test_old_spellings_run_and_resume(mods, files, ckpts, tmp_path, monkeypatch):
    """balanced_finetune.py --checkpoint CQL.pt ... --save-checkpoint OUT.pt [--resume], as a campaign's commands.txt
    holds it: fine-tunes CQL.pt into OUT.pt, leaves CQL.pt alone, and resumes OUT.pt. Without --save-checkpoint,
    --checkpoint is the output, and a CQL checkpoint there is never overwritten."""
    new = argv_of("balanced_finetune", tmp_path, ckpts, data=files["good"])
    old = [{"--cql-checkpoint": "--checkpoint", "--checkpoint": "--save-checkpoint"}.get(arg, arg) for arg in new]
    cql_before = ckpts["cql"].read_bytes()
    for argv in (old, old + ["--resume"]):
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "argv", ["balanced_finetune.py", *map(str, argv)])
        mods["balanced_finetune"].main()
    assert ckpts["cql"].read_bytes() == cql_before
    assert torch.load(tmp_path / "out.pt", weights_only=True)["algo"] == "balanced"
    copy = tmp_path / "my_cql.pt"
    copy.write_bytes(cql_before)
    message = run_main(
        mods["balanced_finetune"], new[: new.index("--checkpoint")] + ["--checkpoint", copy], monkeypatch, tmp_path
    )
    assert message.startswith(f"error: --checkpoint {copy} holds a 'cql' checkpoint; refusing to overwrite it"), message
    assert copy.read_bytes() == cql_before


# ---------------------------------------------------------------------------------
# unwritable checkpoint path
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_unwritable_checkpoint_path(script, mods, files, ckpts, tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("a regular file, not a folder")
    path = tmp_path / "a_file" / "sub" / "ckpt.pt"
    argv = argv_of(script, tmp_path, ckpts, data=files["good"]) + ["--checkpoint", path]
    message = run_main(mods[script], argv, monkeypatch, tmp_path)
    assert "cannot write" in message and str(path) in message, message
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # stopped before training


# ---------------------------------------------------------------------------------
# NaN/inf in a loss (the scripts whose own tests do not cover it: bcq_ft.py, sac.py)
# ---------------------------------------------------------------------------------
def test_nonfinite_loss_bcq_ft(mods, files, ckpts, tmp_path, monkeypatch):
    (tmp_path / "out.pt").write_bytes(b"last good checkpoint")
    argv = argv_of("bcq_ft", tmp_path, ckpts, data=files["huge_rewards"])
    argv[argv.index("--offline-steps") + 1] = "10"
    message = run_main(mods["bcq_ft"], argv + ["--log-every", "5"], monkeypatch, tmp_path)
    assert "losses/critic_loss is inf at step -5" in message or "losses/critic_loss is nan at step -5" in message, message
    assert (tmp_path / "out.pt").read_bytes() == b"last good checkpoint"


def test_nonfinite_loss_sac(mods, ckpts, tmp_path, monkeypatch):
    (tmp_path / "out.pt").write_bytes(b"last good checkpoint")
    message = run_main(mods["sac"], argv_of("sac", tmp_path, ckpts) + ["--gamma", "1e38"], monkeypatch, tmp_path)
    assert "loss 'qf' became" in message and "at step 20" in message, message
    assert (tmp_path / "out.pt").read_bytes() == b"last good checkpoint"


# ---------------------------------------------------------------------------------
# atomic checkpoints, one shared error path
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_checkpoint_write_is_atomic(script, mods, tmp_path, monkeypatch):
    source = (REPO_ROOT / f"{script}.py").read_text()
    assert source.count("torch.save(") == 1, "every checkpoint must be written through save_checkpoint()"
    module, path = mods[script], tmp_path / "ckpt.pt"
    module.save_checkpoint(str(path), {"step": 1})

    def killed_before_the_rename(source, target):
        assert open(source, "rb").read(2) == b"PK"  # the new checkpoint is complete in the temp file
        raise KeyboardInterrupt

    monkeypatch.setattr(module.os, "replace", killed_before_the_rename)
    with pytest.raises(KeyboardInterrupt):
        module.save_checkpoint(str(path), {"step": 2})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temp file left


# Top-level names that mean a different thing in each script. Every other name defined in more than one script is a
# shared helper and must be byte-identical in all of them.
PER_SCRIPT_NAMES = {
    "Args",  # each script's own command-line flags
    "main",  # each script's own training loop
}


def top_level_definitions(script: str) -> dict:
    """name -> source text (decorators included) of every top-level def, class and assignment in script.py."""
    source = (REPO_ROOT / f"{script}.py").read_text()
    definitions = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, ast.Assign):
            names = [target.id for target in node.targets if isinstance(target, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names = [node.target.id]
        else:
            continue
        first_line = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        text = "\n".join(source.splitlines()[first_line - 1 : node.end_lineno])
        for name in names:
            assert name not in definitions, f"{script}.py defines {name} twice"
            definitions[name] = text
    return definitions


def test_main_reads_on_one_screen():
    """CONTRIBUTING.md: main() is the algorithm's outline (set-up, the loop, the report), at most 100 lines; the pieces
    it calls sit above it in the algorithm section, the plumbing below it."""
    for script in SCRIPTS:
        source = (REPO_ROOT / f"{script}.py").read_text()
        body = ast.parse(source).body
        names = [getattr(node, "name", None) for node in body]
        main = body[names.index("main")]
        assert main.end_lineno - main.lineno + 1 <= 100, f"{script}.main() is {main.end_lineno - main.lineno + 1} lines"
        assert "Args" in names[: names.index("main")], f"{script}.py: Args comes after main()"


def test_no_script_carries_a_helper_it_never_uses():
    """A shared helper is copied only into the scripts that call it: every top-level name a script defines is used
    by the script itself (a copied helper that nothing calls is text a reader reads for nothing)."""
    for script in SCRIPTS:
        source = (REPO_ROOT / f"{script}.py").read_text()
        definitions = top_level_definitions(script)
        unused = [
            name
            for name, text in definitions.items()
            if name != "main" and len(re.findall(rf"\b{name}\b", source)) == len(re.findall(rf"\b{name}\b", text))
        ]
        assert unused == [], f"{script}.py defines {unused} and never uses them"


def test_shared_error_path_is_identical_in_every_script():
    """Every helper, class and constant that more than one script defines is the same text in all of them."""
    definitions = {script: top_level_definitions(script) for script in SCRIPTS}
    holders = {}
    for script, names in definitions.items():
        for name in names:
            holders.setdefault(name, []).append(script)
    shared = {name: scripts for name, scripts in holders.items() if len(scripts) > 1 and name not in PER_SCRIPT_NAMES}
    assert {"fail", "load_d4rl_dataset", "EnsembleCritic", "check_writable", "evaluate", "soft_update"} <= set(shared)
    for script in SCRIPTS:  # every script logs through the same TensorBoard writer (a full disk: one line)
        assert {"TensorBoardWriter", "quiet_tensorboard_thread"} <= set(definitions[script]), script
    for name, scripts in sorted(shared.items()):
        versions = {}
        for script in scripts:
            versions.setdefault(definitions[script][name], []).append(script)
        assert len(versions) == 1, f"{name} differs between scripts: " + " | ".join(map(str, versions.values()))


# ---------------------------------------------------------------------------------
# the real process: one representative bad input per script, all six in parallel
# ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_process_prints_one_line_and_no_traceback(files, ckpts, tmp_path):
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    cases = {
        script: (
            argv_of(script, tmp_path / script, ckpts, data=files["nan_rewards"]),
            f"dataset {files['nan_rewards']}: 'rewards' contains NaN or inf",
        )
        for script in DATASET_SCRIPTS
    }
    cases["sac"] = (
        argv_of("sac", tmp_path / "sac", ckpts) + ["--checkpoint", ckpts["text"], "--resume"],
        f"cannot read checkpoint {ckpts['text']}",
    )
    procs = {}
    for script, (argv, _) in cases.items():
        (tmp_path / script).mkdir()
        procs[script] = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / f"{script}.py"), *map(str, argv)],
            cwd=tmp_path / script,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for script, proc in procs.items():
        _, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 1, (script, stderr[-2000:])
        assert "Traceback" not in stderr, (script, stderr[-2000:])
        lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and cases[script][1] in lines[0], (script, stderr[-2000:])
