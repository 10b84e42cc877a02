"""D4RL's dataset recipes at CPU scale, written with sac.py in D4RL's HDF5 format.

D4RL (Fu et al., 2020) made its MuJoCo datasets from one SAC run per environment; this script follows the same
recipes with smaller budgets (D4RL's sizes in brackets):

  behaviour run  sac.py, 2x256 networks, seed 1, --total-timesteps 200k [D4RL: SAC to convergence, ~1M+],
                 the actor saved at every evaluation (every 5k steps, 10 deterministic episodes)
  expert         100k transitions [1M] of the run's best snapshot (highest evaluation return)
  medium         100k transitions [1M] of the first snapshot whose evaluation reaches one third of D4RL's expert
                 reference return (normalized score 33.3, the score D4RL calls 100 being its expert's return)
  medium-replay  the run's replay buffer up to that snapshot's step [hopper-medium-replay-v2: 402k]
  medium-expert  the medium and expert rollouts, one after the other [2M]

Rollouts sample from the stochastic tanh-Gaussian policy (sac.py --rollout-actor), 1000-step episodes, the episode
cut by the end of a rollout stored as a time-limit end. The two behaviour policies are committed
(benchmark/datasets/<env>/{medium,expert}_policy.pt, ~300 kB each) with the snapshot table behaviour.csv, so

    python benchmark/make_datasets.py --env hopper

regenerates every dataset bit for bit without the behaviour run: the rollouts from the committed policies, and
medium-replay by rerunning sac.py with the behaviour run's seed for just the medium step's worth of steps (same seed,
same transitions; checked against the full run's replay file when that is on disk). With no committed policies
the behaviour run comes first (resumable: rerunning the command continues it). Files go to --out-dir
(data/cpu_d4rl/<env>_<dataset>.hdf5, not committed), the behaviour run's replay to data/datasets/; their
statistics to --csv, with each file's SHA-256 and the CPU it was made on (model name from /proc/cpuinfo, kept in
<file>.made_on when this script writes the file; "unknown" for a file it found already there).

Bit for bit means on the same kind of CPU: floating-point results (MuJoCo's integration, torch's matmuls) differ
in the last digits between CPU models and the rollouts diverge from there, so another CPU gives datasets of the same
distribution, not the same bytes (an AMD EPYC wrote a medium file of 197 episodes, mean return 1261.5, where the
committed record has 194 and 1281.1); the SHA-256 and CPU columns say which case a file is. Paths handed to sac.py
are repository-relative, so the files' metadata and hashes do not depend on where the repository lies.

    python benchmark/make_datasets.py --env hopper --datasets medium     # only what the medium dataset needs
"""

import argparse
import csv
import hashlib
import io
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from repo import write_atomically, written

ROOT = Path(__file__).resolve().parents[1]
GYM_ID = {"hopper": "Hopper-v4", "walker2d": "Walker2d-v4", "halfcheetah": "HalfCheetah-v4"}
REF_RETURNS = {"halfcheetah": (-280.178953, 12135.0), "hopper": (-20.272305, 3234.3), "walker2d": (1.629008, 4592.3)}
D4RL_SIZE = {
    "medium": 1_000_000,
    "expert": 1_000_000,
    "medium-expert": 2_000_000,
    "medium-replay": {"hopper": 402_000, "walker2d": 302_000, "halfcheetah": 202_000},
}
DATASETS = ("medium", "medium-replay", "expert", "medium-expert")
KEYS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")

BEHAVIOUR_SEED, BEHAVIOUR_STEPS, SNAPSHOT_EVERY = 1, 200_000, 5_000
ROLLOUT_STEPS = 100_000
ROLLOUT_SEED = {"medium": 2, "expert": 3}
MEDIUM_FRACTION = 1.0 / 3.0


def run(command: list[str]):
    print("+", " ".join(command), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if subprocess.run(command, cwd=ROOT, env=env).returncode != 0:
        sys.exit(f"error: command failed: {' '.join(command)}")


def shown(path) -> str:
    """A path as written into commands and records: relative to the repository when inside it (never a machine path
    for files of the repository), else as given."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def sac(*flags) -> list[str]:
    """sac.py's command line (run from the repository root): paths repository-relative, so nothing sac.py stores
    (the dataset's metadata/policy names its --rollout-actor) depends on where the repository is."""
    return [sys.executable, "sac.py", "--no-cuda", *(shown(f) if isinstance(f, Path) else str(f) for f in flags)]


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows (e.g. arm64 on macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware")) and ":" in line:
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def made_on_file(path: Path) -> Path:
    return path.with_name(path.name + ".made_on")


def record_made_on(path: Path, cpu: str):
    """Note next to a file this script just wrote which CPU made it (read back by stats_row)."""
    made_on_file(path).write_text(cpu + "\n")


def made_on(path: Path) -> str:
    sidecar = made_on_file(path)
    return sidecar.read_text().strip() if sidecar.exists() else "unknown"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def snapshot_table(snapshot_dir: Path) -> list[dict]:
    rows = []
    if not snapshot_dir.exists():
        return rows
    for path in sorted(snapshot_dir.glob("step*.pt")):
        snapshot = torch.load(path, map_location="cpu", weights_only=True)
        rows.append(
            {
                "step": snapshot["step"],
                "eval_return": round(snapshot["eval_return"], 2),
                "normalized_score": round(snapshot["normalized_score"], 2),
                "path": path,
            }
        )
    return rows


def choose_policies(env: str, rows: list[dict], finished: bool) -> dict:
    """{'medium': row, 'expert': row} for the rows the recipe can decide now (expert only once the run is over)."""
    low, high = REF_RETURNS[env]
    threshold = low + MEDIUM_FRACTION * (high - low)  # the return whose normalized score is 33.3
    chosen = {}
    medium = next((row for row in rows if row["eval_return"] >= threshold), None)
    if medium is not None:
        chosen["medium"] = medium
    if finished:
        chosen["expert"] = max(rows, key=lambda row: row["eval_return"])
    return chosen


def write_behaviour_csv(path: Path, rows: list[dict], chosen: dict):
    with written(path) as f:
        writer = csv.writer(f)
        writer.writerow(["step", "eval_return", "normalized_score", "chosen_as"])
        for row in rows:
            role = " ".join(name for name, c in chosen.items() if c["step"] == row["step"])
            writer.writerow([row["step"], row["eval_return"], row["normalized_score"], role])


def wait_for_other_behaviour_run(pid_file: Path, decided):
    """Another process (a parallel call of this script) running the behaviour run: wait until it is over or the
    snapshots decide what is needed, instead of starting a second copy of the same run."""
    while pid_file.exists() and not decided():
        try:
            os.kill(int(pid_file.read_text()), 0)
        except (OSError, ValueError):  # that process is gone: its run is resumed here
            return
        time.sleep(30)


def committed_choice(policy_dir: Path, name: str) -> int | None:
    """The snapshot step of a committed behaviour policy, or None."""
    path = policy_dir / f"{name}_policy.pt"
    return torch.load(path, map_location="cpu", weights_only=True)["step"] if path.exists() else None


def episode_returns(rewards, terminals, timeouts) -> np.ndarray:
    ends = np.flatnonzero(terminals | timeouts)
    if len(ends) == 0:
        return np.array([rewards.sum()])
    return np.add.reduceat(rewards[: ends[-1] + 1].astype(np.float64), np.concatenate([[0], ends[:-1] + 1]))


def read(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {key: f[key][()] for key in KEYS}


def concatenate(parts: list[Path], out: Path, metadata: dict):
    """medium-expert: the files one after the other; the cut episode at each file's end becomes a time-limit end."""
    arrays = [read(path) for path in parts]
    for part in arrays:
        part["timeouts"][-1] |= not part["terminals"][-1]
    data = io.BytesIO()
    with h5py.File(data, "w") as f:
        for key in KEYS:
            f.create_dataset(key, data=np.concatenate([part[key] for part in arrays]), compression="gzip")
        for key, value in metadata.items():
            f[f"metadata/{key}"] = value
    write_atomically(out, data.getvalue(), "dataset")


def stats_row(env: str, name: str, path: Path) -> dict:
    data = read(path)
    returns = episode_returns(data["rewards"], data["terminals"].astype(bool), data["timeouts"].astype(bool))
    low, high = REF_RETURNS[env]
    d4rl_size = D4RL_SIZE[name][env] if isinstance(D4RL_SIZE[name], dict) else D4RL_SIZE[name]
    return {
        "dataset": f"{env}-{name}",
        "file": shown(path),
        "imitates": f"{env}-{name}-v2",
        "d4rl_transitions": d4rl_size,
        "transitions": len(data["rewards"]),
        "episodes": len(returns),
        "mean_return": round(float(returns.mean()), 1),
        "std_return": round(float(returns.std()), 1),
        "mean_normalized_score": round(float(100 * (returns.mean() - low) / (high - low)), 1),
        "sha256": sha256(path),
        "made_on_cpu": made_on(path),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", choices=sorted(GYM_ID), default="hopper", help="environment family")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS), help="which datasets")
    parser.add_argument("--out-dir", type=Path, default=Path("data/cpu_d4rl"), help="where the HDF5 files go")
    parser.add_argument(
        "--policy-dir", type=Path, default=None, help="committed behaviour policies (default benchmark/datasets/<env>)"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("checkpoints/datasets"),
        help="behaviour run's checkpoint and snapshots (not committed)",
    )
    parser.add_argument("--csv", type=Path, default=None, help="dataset statistics (default <out-dir>/datasets.csv)")
    args = parser.parse_args()
    env, gym_id = args.env, GYM_ID[args.env]
    out_dir, work = ROOT / args.out_dir, ROOT / args.work_dir / env
    policy_dir = ROOT / (args.policy_dir or Path("benchmark/datasets") / env)
    out_dir.mkdir(parents=True, exist_ok=True)
    policy_dir.mkdir(parents=True, exist_ok=True)
    needs = {"medium"} | ({"expert"} if {"expert", "medium-expert"} & set(args.datasets) else set())
    replay_file = ROOT / "data/datasets" / f"{env}_sac_replay_{BEHAVIOUR_STEPS // 1000}k.hdf5"

    # 1. behaviour policies: committed ones, else chosen from the behaviour run's snapshots (run it first)
    if any(committed_choice(policy_dir, name) is None for name in needs):
        finished_marker = work / "snapshots" / f"step{BEHAVIOUR_STEPS:07d}.pt"
        decided = lambda: (
            finished_marker.exists()
            or ("expert" not in needs and choose_policies(env, snapshot_table(work / "snapshots"), False))
        )
        wait_for_other_behaviour_run(work / "behaviour.pid", decided)
        if not decided():
            lock = work / "behaviour.pid"
            lock.parent.mkdir(parents=True, exist_ok=True)
            lock.write_text(str(os.getpid()))
            behaviour_checkpoint = work / f"sac_seed{BEHAVIOUR_SEED}.pt"  # an interrupted run continues from it
            run(
                sac(
                    "--env-id",
                    gym_id,
                    "--seed",
                    BEHAVIOUR_SEED,
                    "--total-timesteps",
                    BEHAVIOUR_STEPS,
                    "--eval-every",
                    SNAPSHOT_EVERY,
                    "--eval-episodes",
                    10,
                    "--snapshot-dir",
                    work / "snapshots",
                    "--dataset-out",
                    replay_file,
                    "--run-dir",
                    f"runs/datasets/{env}_sac_seed{BEHAVIOUR_SEED}",
                    "--checkpoint",
                    behaviour_checkpoint,
                    "--checkpoint-every",
                    10_000,
                    *(["--resume"] if behaviour_checkpoint.exists() else []),
                )
            )
            lock.unlink()
        rows = snapshot_table(work / "snapshots")
        chosen = choose_policies(env, rows, finished_marker.exists())
        for name in needs:
            if name not in chosen:
                sys.exit(f"error: the behaviour run has no snapshot for '{name}' yet (see {shown(work / 'snapshots')})")
            if committed_choice(policy_dir, name) is None:
                shutil.copyfile(chosen[name]["path"], policy_dir / f"{name}_policy.pt")
        write_behaviour_csv(policy_dir / "behaviour.csv", rows, chosen)

    # 2. rollouts of the behaviour policies
    files = {name: out_dir / f"{env}_{name.replace('-', '_')}.hdf5" for name in DATASETS}
    for name in sorted(needs):
        if not files[name].exists():
            run(
                sac(
                    "--env-id",
                    gym_id,
                    "--seed",
                    ROLLOUT_SEED[name],
                    "--total-timesteps",
                    ROLLOUT_STEPS,
                    "--rollout-actor",
                    policy_dir / f"{name}_policy.pt",
                    "--eval-every",
                    ROLLOUT_STEPS,
                    "--eval-episodes",
                    10,
                    "--dataset-out",
                    files[name],
                    "--run-dir",
                    f"runs/datasets/{env}_{name}",
                    "--checkpoint",
                    work / f"rollout_{name}.pt",
                )
            )
            record_made_on(files[name], cpu_model())

    # 3. medium-replay: the behaviour run's first medium-step transitions (a rerun of that many steps)
    if "medium-replay" in args.datasets and not files["medium-replay"].exists():
        medium_step = committed_choice(policy_dir, "medium")
        run(
            sac(
                "--env-id",
                gym_id,
                "--seed",
                BEHAVIOUR_SEED,
                "--total-timesteps",
                medium_step,
                "--eval-every",
                SNAPSHOT_EVERY,
                "--eval-episodes",
                10,
                "--dataset-out",
                files["medium-replay"],
                "--run-dir",
                f"runs/datasets/{env}_medium_replay",
                "--checkpoint",
                work / "medium_replay.pt",
            )
        )
        record_made_on(files["medium-replay"], cpu_model())
        if replay_file.exists():  # same seed, same transitions as the behaviour run's first medium_step steps
            rerun, full = read(files["medium-replay"]), read(replay_file)
            for key in KEYS:
                if not np.array_equal(rerun[key], full[key][:medium_step]):
                    sys.exit(f"error: medium-replay '{key}' differs from the behaviour run's first {medium_step} steps")
            print(f"medium-replay equals the first {medium_step} transitions of {replay_file}")

    # 4. medium-expert
    if "medium-expert" in args.datasets and not files["medium-expert"].exists():
        concatenate(
            [files["medium"], files["expert"]],
            files["medium-expert"],
            {"env_id": gym_id, "gym_env_id": gym_id, "policy": "medium rollouts, then expert rollouts"},
        )
        # the bytes are its parts' (the concatenation is exact on any CPU): the CPUs that made them
        record_made_on(files["medium-expert"], " + ".join(dict.fromkeys(made_on(files[n]) for n in ("medium", "expert"))))

    # 5. statistics
    rows = [stats_row(env, name, files[name]) for name in DATASETS if files[name].exists()]
    csv_path = ROOT / (args.csv or args.out_dir / "datasets.csv")
    with written(csv_path) as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(" | ".join(f"{k}={v}" for k, v in row.items()))
    print(f"wrote {shown(csv_path)}")


if __name__ == "__main__":
    main()
