"""Offline pretraining curves against the dataset's own average return (issue: CQL beats its data).

    python benchmark/plot_offline.py --run "replay=RUN_DIR" --run "random=RUN_DIR" \
        --datasets-csv benchmark/results/cpu_scale/datasets.csv --dataset "replay=data/hopper_replay_30k.hdf5" \
        --dataset "random=data/hopper_random_100k.hdf5" --out benchmark/results/cpu_scale/cql_offline

For each named run (a cql_pretrain.py TensorBoard folder) it draws eval/return of the ensemble policy (eq. 5) and
the spread of its members (eval/member_<i>_return, min to max) against offline gradient steps, with the mean
episode return of the dataset it was trained on (from benchmark/dataset_stats.py's CSV) as a dashed line, and
writes the same numbers to OUT.csv (one row per run and evaluation step) next to OUT.png.
"""
import argparse
import csv
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from repo import save_figure, written


def pairs(values):
    return dict(value.split("=", 1) for value in values)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR (repeatable)")
    parser.add_argument("--dataset", action="append", default=[], help="NAME=DATASET_PATH as in --datasets-csv")
    parser.add_argument("--datasets-csv", help="benchmark/dataset_stats.py output with each dataset's mean return")
    parser.add_argument("--out", required=True, help="output path without extension (.png and .csv are written)")
    args = parser.parse_args()
    runs, datasets = pairs(args.run), pairs(args.dataset)
    dataset_mean = {}
    if args.datasets_csv:
        with open(args.datasets_csv) as f:
            dataset_mean = {row["dataset"]: float(row["mean_return"]) for row in csv.DictReader(f)}

    rows = []
    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.6), squeeze=False)
    for ax, (name, run_dir) in zip(axes[0], runs.items()):
        events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
        events.Reload()
        ensemble = {e.step: e.value for e in events.Scalars("eval/return")}
        member_tags = [t for t in events.Tags()["scalars"] if re.fullmatch(r"eval/member_\d+_return", t)]
        members = [{e.step: e.value for e in events.Scalars(t)} for t in member_tags]
        steps = sorted(ensemble)
        low = [min(m[s] for m in members) for s in steps]
        high = [max(m[s] for m in members) for s in steps]
        ax.plot(steps, [ensemble[s] for s in steps], marker="o", label=f"ensemble policy (eq. 5), N={len(members)}")
        ax.fill_between(steps, low, high, alpha=0.25, label="members (min to max)")
        reference = dataset_mean.get(datasets.get(name, ""))
        if reference is not None:
            ax.axhline(reference, color="k", linestyle="--", label=f"dataset mean return ({reference:.0f})")
        ax.set_title(name)
        ax.set_xlabel("Offline gradient steps")
        ax.set_ylabel("Evaluation return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        for s, lo, hi in zip(steps, low, high):
            rows.append({"run": name, "step": s, "ensemble_return": round(ensemble[s], 2), "member_min": round(lo, 2),
                         "member_max": round(hi, 2), "dataset_mean_return": reference})
    fig.tight_layout()
    save_figure(fig, f"{args.out}.png", dpi=120)
    with written(f"{args.out}.csv") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}.png and {args.out}.csv")


if __name__ == "__main__":
    main()
