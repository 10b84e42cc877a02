"""Issue 21: a full disk and a preempted job lose nothing. Real processes, real files, real signals.

* Disk full during a write (checkpoint, dataset, CSV, figure): one `error:` line naming the file and the cause,
  exit status 1, no temporary file left, the last good file intact. The full disk is a small tmpfs filled up (we
  are root here and in CI); where mount is not allowed, the temp file each write goes through is a link to /dev/full,
  whose writes fail with ENOSPC just the same. The TensorBoard event file (written by tensorboard's own thread,
  under a name of its choosing) gets a simulated ENOSPC instead: in-process for every script, and in a real fqe.py.
* SIGTERM (Slurm before its time limit) and SIGINT (Ctrl-C) during training: the run finishes its update, writes a
  resumable checkpoint and exits with status 75 and one line saying how to continue; that command continues the run,
  and where a resumed run is exact (offline training, and fine-tuning, whose epochs start fresh episodes) it logs
  the same values as an uninterrupted run. sac.py's resumed run starts a new episode, so there only the transitions
  before the stop are compared.
"""

import contextlib
import errno
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from tensorboard.compat.tensorflow_stub.io.gfile import LocalFileSystem

from conftest import REPO_ROOT, load_script, scalars

SCRIPTS = ("cql_pretrain", "fqe", "balanced_finetune", "awac", "bcq_ft", "sac")
HIDDEN = 16
LONG_STEPS = 600  # a long run: checkpoints every 100 steps, so a stop lands after the first one and well before the end
ENOSPC = "No space left on device"


def tiny_argv(script, data, policy, long=False) -> list:
    """A tiny run of each script writing ck.pt, logging to runs/r; long: long enough to be stopped half way."""
    common = ["--env-id", "Hopper-v4", "--no-cuda", "--run-dir", "runs/r", "--checkpoint", "ck.pt"]
    steps = LONG_STEPS if long else 20
    if script == "sac":
        return [
            *common,
            "--total-timesteps",
            steps,
            "--learning-starts",
            10,
            "--batch-size",
            16,
            "--hidden-dim",
            HIDDEN,
            "--log-every",
            50,
            "--eval-every",
            1000,
            "--eval-episodes",
            1,
            "--checkpoint-every",
            100,
        ]
    common += ["--dataset-path", data, "--batch-size", 16]
    if script == "fqe":
        return [
            *common,
            "--policy-checkpoint",
            policy,
            "--steps",
            steps,
            "--log-every",
            50,
            "--eval-every",
            1000,
            "--eval-episodes",
            1,
            "--checkpoint-every",
            100,
        ]
    if script == "balanced_finetune":
        return [
            *common,
            "--cql-checkpoint",
            policy,
            "--n-ensemble",
            2,
            "--online-steps",
            600 if long else 20,
            "--epoch-length",
            100 if long else 10,
            "--first-epoch-multiplier",
            2,
            "--ratio-batch-size",
            16,
            "--hidden-dim",
            HIDDEN,
            "--eval-episodes",
            1,
            "--checkpoint-every",
            100,
        ]
    common += [
        "--n-ensemble",
        2,
        "--hidden-dim",
        HIDDEN,
        "--log-every",
        50,
        "--eval-every",
        1000,
        "--eval-episodes",
        1,
        "--checkpoint-every",
        100,
    ]
    if script == "cql_pretrain":
        return [*common, "--offline-steps", steps]
    return [*common, "--offline-steps", steps, "--online-steps", 0]  # awac, bcq_ft: stopped in the offline phase


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """A cql-format ensemble (N=2, hidden 16, Hopper-v4), the input of fqe.py and balanced_finetune.py."""
    path = tmp_path_factory.mktemp("policy") / "cql.pt"
    torch.manual_seed(0)
    c = load_script("cql_pretrain", "interruptions_cql_pretrain")
    hidden = [HIDDEN, HIDDEN]
    torch.save(
        {
            "format": "o2o-ensemble-v1",
            "algo": "cql",
            "env_id": "Hopper-v4",
            "obs_dim": 11,
            "act_dim": 3,
            "n_ensemble": 2,
            "hidden_sizes": hidden,
            "actor": c.EnsembleActor(11, 3, hidden, 2).state_dict(),
            "critic": c.EnsembleCritic(11, 3, hidden, 2).state_dict(),
            "step": 0,
            "args": {},
        },
        path,
    )
    return path


def start(script, argv, cwd, **kwargs):
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, str(REPO_ROOT / f"{script}.py"), *map(str, argv)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


# ---------------------------------------------------------------------------------
# a full disk
# ---------------------------------------------------------------------------------
@pytest.fixture
def disk(tmp_path):
    """A folder on a 4 MB tmpfs and fill(): fill it up. Without the right to mount, a plain folder, and fill(paths)
    links each path's temp file (path.tmp, what every write goes through) to /dev/full."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True).returncode == 0
    )

    def fill(paths):
        if mounted:
            with contextlib.suppress(OSError), open(folder / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
        else:
            for path in paths:
                os.symlink("/dev/full", f"{path}.tmp")

    yield folder, fill
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)


def leftovers(folder) -> list:
    return sorted(path.name for path in folder.rglob("*") if path.name != "filler" and path.name.endswith(".tmp"))


@pytest.mark.slow
def test_full_disk_stops_every_write_with_one_line_and_keeps_the_last_good_file(disk, tiny_hopper_dataset, policy, tmp_path):
    folder, fill = disk
    # the last good files: a checkpoint of each script and sac.py's dataset (their bytes do not matter: a failed write
    # must leave them as they were), then a CSV and a figure written by the benchmark tools
    runs = {script: tmp_path / script for script in SCRIPTS}
    for script, cwd in runs.items():
        cwd.mkdir()
        (folder / f"{script}.pt").write_bytes(f"the last good checkpoint of {script}.py".encode())
    (folder / "dataset.hdf5").write_bytes(b"the last good dataset")
    stats = [
        sys.executable,
        str(REPO_ROOT / "benchmark" / "dataset_stats.py"),
        str(tiny_hopper_dataset),
        "--csv",
        str(folder / "stats.csv"),
    ]
    figure = [
        sys.executable,
        "-c",
        "import sys, matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt; "
        "sys.path.insert(0, sys.argv[2]); from repo import save_figure; save_figure(plt.figure(), sys.argv[1])",
        str(folder / "figure.png"),
        str(REPO_ROOT / "benchmark"),
    ]
    for command in (stats, figure):
        assert subprocess.run(command, capture_output=True, timeout=120).returncode == 0
    good = {path: path.read_bytes() for path in folder.iterdir()}
    fill(good)

    # the same runs again: each write fails
    procs = {
        script: start(
            script,
            tiny_argv(script, tiny_hopper_dataset, policy)
            + [
                "--checkpoint",
                folder / f"{script}.pt" if script != "sac" else tmp_path / "sac.pt",
                *(["--dataset-out", folder / "dataset.hdf5"] if script == "sac" else []),
            ],
            runs[script],
        )
        for script in SCRIPTS
    }
    expected = {script: f"error: cannot write checkpoint {folder / f'{script}.pt'}: {ENOSPC}" for script in SCRIPTS}
    expected["sac"] = f"error: cannot write dataset {folder / 'dataset.hdf5'}: {ENOSPC}"
    for script, proc in procs.items():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 1 and "Traceback" not in stderr, (script, stderr[-2000:])
        assert [line for line in stderr.splitlines() if line.startswith("error:")] == [expected[script]], stderr[-2000:]
    for command, what in ((stats, f"CSV file {folder / 'stats.csv'}"), (figure, f"figure {folder / 'figure.png'}")):
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and done.stderr.strip().splitlines() == [f"error: cannot write {what}: {ENOSPC}"], (
            done.stderr[-2000:]
        )
    assert {path: path.read_bytes() for path in good} == good  # the last good files, untouched
    assert leftovers(folder) == []  # and no temp file left


def event_file_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("script", SCRIPTS)
def test_full_disk_during_a_tensorboard_write_stops_with_one_line(script, tmp_path, monkeypatch, capsys):
    """Every script logs through TensorBoardWriter. A full disk when the event file is created, or while it grows
    (tensorboard's thread writes it; the error comes out at the writer's next call, at the latest at close):
    one `error:` line, and the thread prints no traceback of its own."""
    assert "SummaryWriter(" not in (REPO_ROOT / f"{script}.py").read_text(), "every writer is a TensorBoardWriter"
    module = load_script(script, f"interruptions_{script}")
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)  # the writer sets it; restored after the test
    expected = f"error: cannot write TensorBoard log {tmp_path / 'run'}: {ENOSPC}"
    writer = module.TensorBoardWriter(str(tmp_path / "run"))
    writer.add_scalar("x", 1.0, 1)
    writer.flush()
    monkeypatch.setattr(LocalFileSystem, "append", event_file_full)
    with pytest.raises(SystemExit) as stop:
        writer.add_scalar("x", 2.0, 2)
        writer.close()
    assert stop.value.code == expected
    monkeypatch.setattr(LocalFileSystem, "write", event_file_full)  # the event file's first record
    with pytest.raises(SystemExit) as stop:
        module.TensorBoardWriter(str(tmp_path / "run"), purge_step=3)
    assert stop.value.code == expected
    assert capsys.readouterr().err == ""


# fqe.py as a real process whose event file fills the disk after its first 20 records
FULL_AFTER_20_RECORDS = """
import errno, os, runpy, sys
from tensorboard.compat.tensorflow_stub.io.gfile import LocalFileSystem
append, records = LocalFileSystem.append, []
def append_until_full(*args, **kwargs):
    records.append(1)
    if len(records) > 20:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return append(*args, **kwargs)
LocalFileSystem.append = append_until_full
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_full_disk_during_a_tensorboard_write_in_a_real_process(tiny_hopper_dataset, policy, tmp_path):
    argv = tiny_argv("fqe", tiny_hopper_dataset, policy, long=True)
    done = subprocess.run(
        [sys.executable, "-c", FULL_AFTER_20_RECORDS, str(REPO_ROOT / "fqe.py"), *map(str, argv)],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot write TensorBoard log runs/r: {ENOSPC}"], done.stderr[-2000:]
    assert 0 < torch.load(tmp_path / "ck.pt", weights_only=True)["step"] < LONG_STEPS  # stopped part way, last good checkpoint


def test_unwritable_or_vanished_folder(tmp_path):
    """The shared writer when the folder is read-only (a read-only mount, or a path under a file) or has vanished
    (deleted while the run went on: it is made again, nothing is lost)."""
    module = load_script("awac", "interruptions_awac")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit, match=r"^error: cannot write checkpoint .*a_file/sub/ck\.pt: Not a directory$"):
        module.save_checkpoint(str(tmp_path / "a_file" / "sub" / "ck.pt"), {"step": 1})
    read_only = tmp_path / "ro"
    read_only.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(read_only)], capture_output=True).returncode
        == 0
    ):
        try:
            with pytest.raises(SystemExit, match=r"^error: cannot write checkpoint .*ro/ck\.pt: Read-only file system$"):
                module.save_checkpoint(str(read_only / "ck.pt"), {"step": 1})
        finally:
            subprocess.run(["umount", str(read_only)], check=True)
    vanished = tmp_path / "gone" / "ck.pt"
    module.save_checkpoint(str(vanished), {"step": 1})
    os.remove(vanished)
    os.rmdir(vanished.parent)
    module.save_checkpoint(str(vanished), {"step": 2})
    assert torch.load(vanished, weights_only=True) == {"step": 2} and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------
# SIGTERM and SIGINT
# ---------------------------------------------------------------------------------
STOP_LINE = re.compile(r"^stopped by (SIG\w+) after step (\d+): checkpoint ck\.pt written; continue with: (.*)$")


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, sig",
    [
        ("cql_pretrain", signal.SIGTERM),
        ("balanced_finetune", signal.SIGTERM),
        ("fqe", signal.SIGINT),
        ("awac", signal.SIGTERM),
        ("bcq_ft", signal.SIGINT),
        ("sac", signal.SIGTERM),
    ],
)
def test_a_signal_stops_with_a_checkpoint_and_the_run_continues(script, sig, tiny_hopper_dataset, policy, tmp_path):
    argv = tiny_argv(script, tiny_hopper_dataset, policy, long=True)
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    for folder in (whole, stopped):
        folder.mkdir()
    uninterrupted = start(script, argv, whole)
    proc = start(script, argv, stopped)
    deadline = time.time() + 300
    while not (stopped / "ck.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)  # the first periodic checkpoint: training is under way
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 75, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    match = STOP_LINE.match(last)
    assert match and match.group(1) == sig.name and "Traceback" not in stderr, stderr[-2000:]
    step, command = int(match.group(2)), shlex.split(match.group(3))
    saved = torch.load(stopped / "ck.pt", weights_only=True)
    assert saved["step"] == step and command[-1] == "--resume" and command[2:-1] == list(map(str, argv))
    resumed = subprocess.run(
        [sys.executable, *command[1:]],
        cwd=stopped,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1"),
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.communicate()[1][-2000:]
    final, reference = (torch.load(folder / "ck.pt", weights_only=True) for folder in (stopped, whole))
    assert step < final["step"] == reference["step"], "the run had ended before the signal"
    if script == "sac":  # the resumed run starts a new episode: the transitions before the stop are the same
        for key, values in final["resume"]["buffer"].items():
            if key != "size":
                assert torch.equal(values[: step - 1], reference["resume"]["buffer"][key][: step - 1]), key
        return
    assert scalars(stopped / "runs" / "r") == scalars(whole / "runs" / "r")
    for net in ("actor", "critic"):
        for key, value in final[net].items():
            assert torch.equal(value, reference[net][key]), (net, key)
