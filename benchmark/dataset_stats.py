"""Episode statistics of D4RL-format HDF5 files: how many episodes, their mean return and D4RL-normalized score.

    python benchmark/dataset_stats.py data/hopper_random.hdf5 data/hopper_replay.hdf5 --csv benchmark/results/datasets.csv

An episode ends at a row with terminals=1 or timeouts=1 (or at the file's end). The "dataset return" a
pretrained policy should beat is the mean over complete episodes (the file's last, unfinished one is dropped).
"""

import argparse
import csv

import h5py
import numpy as np

from repo import written

REF_RETURNS = {"halfcheetah": (-280.178953, 12135.0), "hopper": (-20.272305, 3234.3), "walker2d": (1.629008, 4592.3)}


def episode_returns(path: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        rewards = f["rewards"][()].astype(np.float64)
        ends = f["terminals"][()].astype(bool)
        if "timeouts" in f:
            ends |= f["timeouts"][()].astype(bool)
    end_rows = np.flatnonzero(ends)
    if len(end_rows) == 0:
        return np.array([rewards.sum()])
    complete = rewards[: end_rows[-1] + 1]  # rows after the last end belong to an unfinished episode
    return np.add.reduceat(complete, np.concatenate([[0], end_rows[:-1] + 1]))


def env_family(path: str) -> str | None:
    with h5py.File(path, "r") as f:
        name = f["metadata/env_id"][()].decode() if "metadata/env_id" in f else path
    return next((family for family in REF_RETURNS if family in name.lower()), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--csv", help="also write the table as CSV here")
    args = parser.parse_args()
    rows = []
    for path in args.files:
        returns = episode_returns(path)
        family = env_family(path)
        low, high = REF_RETURNS.get(family, (np.nan, np.nan))
        with h5py.File(path, "r") as f:
            transitions = len(f["rewards"])
        rows.append(
            {
                "dataset": path,
                "transitions": transitions,
                "episodes": len(returns),
                "mean_return": round(float(returns.mean()), 2),
                "std_return": round(float(returns.std()), 2),
                "max_return": round(float(returns.max()), 2),
                "mean_normalized_score": round(float(100 * (returns.mean() - low) / (high - low)), 2),
            }
        )
    print(" | ".join(rows[0]))
    for row in rows:
        print(" | ".join(str(v) for v in row.values()))
    if args.csv:
        with written(args.csv) as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
