"""benchmark/make_datasets.py's reproducibility records (issue 22): datasets.csv gives each file's SHA-256 and the
CPU that made it after the columns it always had, and what it hands sac.py holds no machine path."""

import csv
import hashlib
import os
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import REPO_ROOT, load_script

make_datasets = load_script("benchmark/make_datasets", "make_datasets_for_provenance_tests")
OLD_COLUMNS = [
    "dataset",
    "file",
    "imitates",
    "d4rl_transitions",
    "transitions",
    "episodes",
    "mean_return",
    "std_return",
    "mean_normalized_score",
]


def write_dataset(path, n=300, seed=0):
    rng = np.random.default_rng(seed)
    timeouts = np.zeros(n, dtype=bool)
    timeouts[n // 2 - 1] = timeouts[-1] = True
    with h5py.File(path, "w") as f:
        for key, value in {
            "observations": rng.normal(size=(n, 11)),
            "actions": rng.uniform(-1, 1, (n, 3)),
            "rewards": rng.normal(size=n),
            "next_observations": rng.normal(size=(n, 11)),
            "terminals": np.zeros(n, dtype=bool),
            "timeouts": timeouts,
        }.items():
            f[key] = value
    return path


def test_cpu_model_names_this_machines_cpu():
    model = make_datasets.cpu_model()
    assert model and "\n" not in model
    if os.path.exists("/proc/cpuinfo"):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        if names:
            assert model == " ".join(names[0].split())


def test_stats_row_keeps_its_columns_first_then_hash_and_cpu(tmp_path):
    path = write_dataset(tmp_path / "d.hdf5")
    row = make_datasets.stats_row("hopper", "medium", path)
    assert list(row) == [*OLD_COLUMNS, "sha256", "made_on_cpu"]
    assert row["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert row["made_on_cpu"] == "unknown"  # a file this script did not write
    make_datasets.record_made_on(path, "Some CPU @ 2.0GHz")
    assert make_datasets.stats_row("hopper", "medium", path)["made_on_cpu"] == "Some CPU @ 2.0GHz"
    assert row["file"] == str(path)  # outside the repository: as given
    assert make_datasets.shown(REPO_ROOT / "data" / "x.hdf5") == os.path.join("data", "x.hdf5")


@pytest.fixture
def fake_sac(monkeypatch):
    """make_datasets.run replaced: records each command and writes the --dataset-out file sac.py would write."""
    calls = []

    def run(command):
        calls.append(command)
        out = command[command.index("--dataset-out") + 1]
        write_dataset(Path(out) if os.path.isabs(out) else REPO_ROOT / out, seed=len(calls))

    monkeypatch.setattr(make_datasets, "run", run)
    return calls


def test_main_records_hash_and_cpu_and_passes_relative_paths(tmp_path, monkeypatch, fake_sac):
    """--datasets medium-expert: the medium and expert rollouts (fake sac.py) from the committed policies, then the
    concatenation; the CSV rows carry the files' hashes and this CPU, the commands no absolute repository path."""
    out_dir = tmp_path / "cpu_d4rl"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "make_datasets.py",
            "--env",
            "hopper",
            "--datasets",
            "medium-expert",
            "--out-dir",
            str(out_dir),
            "--work-dir",
            str(tmp_path / "work"),
            "--csv",
            str(tmp_path / "datasets.csv"),
        ],
    )
    make_datasets.main()
    rollouts = {command[command.index("--rollout-actor") + 1]: command for command in fake_sac}
    assert sorted(rollouts) == ["benchmark/datasets/hopper/expert_policy.pt", "benchmark/datasets/hopper/medium_policy.pt"]
    assert not any(str(REPO_ROOT) in arg for command in fake_sac for arg in command[2:])
    with open(tmp_path / "datasets.csv") as f:
        rows = {row["dataset"]: row for row in csv.DictReader(f)}
    with open(tmp_path / "datasets.csv") as f:
        assert next(csv.reader(f)) == [*OLD_COLUMNS, "sha256", "made_on_cpu"]
    assert sorted(rows) == ["hopper-expert", "hopper-medium", "hopper-medium-expert"]
    for name in ("medium", "expert", "medium_expert"):
        path = out_dir / f"hopper_{name}.hdf5"
        row = rows[f"hopper-{name.replace('_', '-')}"]
        assert row["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert row["made_on_cpu"] == make_datasets.cpu_model()  # medium-expert: its parts' CPU, here the same one
        assert row["file"] == str(path)
    # a second call finds the files made: nothing is rerun, the records stay
    fake_sac.clear()
    make_datasets.main()
    assert fake_sac == []
    with open(tmp_path / "datasets.csv") as f:
        assert {row["dataset"]: row for row in csv.DictReader(f)} == rows
