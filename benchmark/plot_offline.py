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
import importlib.util
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from repo import save_figure, written


def method_colour(label: str) -> str:
    """The colour plot.py's METHOD_COLOURS gives a method (one colour per method in every figure of the project)."""
    spec = importlib.util.spec_from_file_location("plot", os.path.join(os.path.dirname(os.path.abspath(__file__)), "plot.py"))
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    return plot.method_colours([label])[label]


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
    colour = method_colour("CQL (offline)")
    fig, axes = plt.subplots(1, len(runs), figsize=(3.4 * len(runs) + 0.6, 3.4), squeeze=False, layout="constrained")
    handles = {}
    for ax, (name, run_dir) in zip(axes[0], runs.items()):
        events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
        events.Reload()
        ensemble = {e.step: e.value for e in events.Scalars("eval/return")}
        member_tags = [t for t in events.Tags()["scalars"] if re.fullmatch(r"eval/member_\d+_return", t)]
        members = [{e.step: e.value for e in events.Scalars(t)} for t in member_tags]
        steps = sorted(ensemble)
        low = [min(m[s] for m in members) for s in steps]
        high = [max(m[s] for m in members) for s in steps]
        (handles[f"ensemble policy (eq. 5), N={len(members)}"],) = ax.plot(
            steps, [ensemble[s] for s in steps], color=colour, marker="o", markersize=3, lw=1.8
        )
        handles["its members (min to max)"] = ax.fill_between(steps, low, high, color=colour, alpha=0.2, lw=0)
        reference = dataset_mean.get(datasets.get(name, ""))
        if reference is not None:
            handles["the dataset's mean episode return"] = ax.axhline(reference, color="k", linestyle="--", lw=1.2)
            ax.annotate(
                f"{reference:.0f}",
                (1.0, reference),
                xycoords=("axes fraction", "data"),
                xytext=(-3, 3),
                textcoords="offset points",
                ha="right",
                va="bottom",
                fontsize=9,
            )
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("Offline gradient steps")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x else "0"))
        ax.grid(alpha=0.3)
        for s, lo, hi in zip(steps, low, high):
            rows.append(
                {
                    "run": name,
                    "step": s,
                    "ensemble_return": round(ensemble[s], 2),
                    "member_min": round(lo, 2),
                    "member_max": round(hi, 2),
                    "dataset_mean_return": reference,
                }
            )
    axes[0][0].set_ylabel("Evaluation return")
    fig.suptitle("CQL pretraining: return of the policy vs. its dataset's", fontsize=11)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=len(handles), fontsize=9, frameon=False)
    save_figure(fig, f"{args.out}.png", dpi=150)
    with written(f"{args.out}.csv") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}.png and {args.out}.csv")


if __name__ == "__main__":
    main()
