"""benchmark/plot.py: the paper's figures (Lee et al., CoRL 2021, Fig. 3, 4a, 4b) from TensorBoard runs.

Reads the event files of any set of runs with tensorboard's EventAccumulator and writes to --out-dir:
  fig3_score.{png,pdf}              eval/normalized_score vs online environment steps         (paper Fig. 3)
  fig4a_offline_fraction.{png,pdf}  balanced/offline_fraction: dataset share of the RL batch   (paper Fig. 4a)
  fig4b_auroc.{png,pdf}             balanced/auroc: Q separating online from random actions   (paper Fig. 4b)
  curves.csv                        the plotted curves: tag, task, method, step, mean, std, n_seeds
  summary.csv                       final normalized score per task and method (printed as a table with --summary)
One panel per task, one line per method, the line the mean over seeds and the band ± one std.
A figure whose tag no run logs is skipped with a note.

Which runs, which method:
  * A run is a directory holding events.out.tfevents.* files; each path given (a directory or a glob) is searched
    recursively. --exclude GLOB drops runs whose path matches.
  * By default each run's directory name is parsed with --name-regex, whose groups `task` and `method` name its
    panel and its line. The default matches benchmark/paper.sh's and ablations.sh's `<task>__<method>__seed<seed>`
    and the scripts' own default `<env_id>__<algo>__<seed>__<time>`.
  * --method "NAME=GLOB" (repeatable; legend order) instead makes a method of the runs under the paths GLOB matches,
    e.g. --method "Ours=runs/hopper*__ours__*". The panel still comes from --name-regex's `task` group ("all" when
    the name does not match); --one-panel puts every run into one panel.
  * A task naming only an environment (paper.sh's SAC from scratch, `hopper__sac__seed0`, or a gymnasium id such as
    Hopper-v4) has no dataset: its runs are drawn in every panel of that environment (hopper-random-v2, ...).

Aggregating seeds whose evaluation steps differ (the choice made here): each seed's curve is linearly interpolated
(np.interp) onto one grid, the union of all its seeds' eval steps restricted to the range every seed covers, so
nothing is extrapolated and a run that stopped early shortens the curve. Seeds evaluated at the same steps (the
usual case: the scripts evaluate on a fixed schedule) are aligned exactly, with no interpolation. The std is the
population std over seeds (numpy's default, ddof=0). A step logged twice in one run (a resumed run) keeps the last
value. Negative steps (the offline phase of awac.py / bcq_ft.py) are dropped unless --include-offline.
Final score: per seed the mean of the curve's last --final-window grid points (default 1: the last one), then
mean ± std over seeds.

Examples:
  python benchmark/plot.py runs --exclude '*cql-pretrain*' --out-dir benchmark/results/paper --summary
  python benchmark/plot.py --method "Ours=runs/*__ours__*" --method "SAC-ft=runs/*__sac-ft__*" --out-dir /tmp/figs
  python benchmark/plot.py runs/walker2d-* --figures fig4a fig4b --formats png
"""

import argparse
import csv
import fnmatch
import glob
import os
import re
import sys
import textwrap
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from repo import save_figure, written

# figure key -> (tag, file stem, y-axis label, short figure title)
FIGURES = {
    "fig3": ("eval/normalized_score", "fig3_score", "Normalized score (D4RL)", "Normalized score"),
    "fig4a": (
        "balanced/offline_fraction",
        "fig4a_offline_fraction",
        "Offline share of the RL batch",
        "Offline data in the balanced batch",
    ),
    "fig4b": ("balanced/auroc", "fig4b_auroc", "AUROC (online vs. random actions)", "Q separating online from random actions"),
}
SCORE_TAG = FIGURES["fig3"][0]
DEFAULT_NAME_REGEX = r"^(?P<task>.+?)__(?P<method>.+?)__(?:seed)?(?P<seed>\d+)(?:__.*)?$"
# Legend names of the method names benchmark/paper.sh gives its runs; any other name is shown as it is.
LABELS = {
    "ours": "Ours (balanced replay + Q-ensemble)",
    "sac-ft": "SAC-ft",
    "awac": "AWAC",
    "bcq-ft": "BCQ-ft",
    "sac": "SAC (from scratch)",
}
# One colour per method in every figure of the project (plot.py, plot_offline.py, README): by legend label, the labels
# benchmark/evidence.py and cpu_scale.sh give; other labels by the patterns below, then colours no method owns.
METHOD_COLOURS = {
    "Ours (balanced, N=5)": "#1f77b4",
    "SAC-ft": "#ff7f0e",
    "AWAC (N=5)": "#2ca02c",
    "BCQ-ft (N=1)": "#d62728",
    "SAC (from scratch)": "#9467bd",
    "Uniform replay (N=5)": "#8c564b",
    "Online only (N=5)": "#e377c2",
    "Ours, N=2": "#17becf",
    "Ours, N=1": "#7f7f7f",
    "Ours, FQE-init": "#bcbd22",
    "CQL (offline)": "#1f77b4",  # plot_offline.py: the pretraining whose critics and policy "Ours" fine-tunes
}
METHOD_PATTERNS = [  # (regex on the lower-case label, the method whose colour it gets), first match wins; covers
    # paper.sh's LABELS, cpu_scale.sh's labels ("Balanced replay", "2 members", "CQL-init", ...) and demo.sh's
    (r"fqe", "Ours, FQE-init"),
    (r"^ours.*\bn=2\b|^2 members", "Ours, N=2"),
    (r"^ours.*\bn=1\b|^1 member\b", "Ours, N=1"),
    (r"^(ours|balanced replay|cql-init|5 members)", "Ours (balanced, N=5)"),
    (r"^sac-ft", "SAC-ft"),
    (r"^awac", "AWAC (N=5)"),
    (r"^bcq", "BCQ-ft (N=1)"),
    (r"^sac\b", "SAC (from scratch)"),
    (r"^uniform", "Uniform replay (N=5)"),
    (r"^online[ -]only", "Online only (N=5)"),
]
OTHER_COLOURS = ["#000000", "#b8860b", "#4b0082", "#006400", "#8b0000", "#00008b"]


def method_colours(labels) -> dict:
    """{label: colour}: METHOD_COLOURS, else the first METHOD_PATTERNS match, else OTHER_COLOURS in legend order."""
    colours, others = {}, iter(OTHER_COLOURS * (len(labels) // len(OTHER_COLOURS) + 1))
    for label in labels:
        if label in METHOD_COLOURS:
            colours[label] = METHOD_COLOURS[label]
            continue
        known = next((method for pattern, method in METHOD_PATTERNS if re.search(pattern, label.lower())), None)
        colours[label] = METHOD_COLOURS[known] if known else next(others)
    return colours


ENV_ORDER = ["halfcheetah", "hopper", "walker2d"]
DATASET_ORDER = ["random", "medium", "medium-replay", "medium-expert", "expert"]
D4RL_TASK = re.compile(r"(?P<env>halfcheetah|hopper|walker2d)-(?P<dataset>[a-z-]+)-v\d+")
GYM_ID = re.compile(r"(?P<env>HalfCheetah|Hopper|Walker2d)-v\d+")


def fail(message: str):
    raise SystemExit(f"error: {message}")


# ---- finding and reading runs ----
def find_runs(patterns, exclude=()):
    """Directories holding event files under the given paths/globs, without duplicates, in sorted order."""
    runs = set()
    for pattern in patterns:
        matches = glob.glob(pattern) or ([pattern] if os.path.exists(pattern) else [])
        for match in matches:
            if os.path.isfile(match):
                match = os.path.dirname(match) or "."
            for folder, _, files in os.walk(match):
                if any("tfevents" in f for f in files):
                    runs.add(os.path.normpath(folder))
    return sorted(
        r for r in runs if not any(fnmatch.fnmatch(r, g) or fnmatch.fnmatch(os.path.basename(r), g) for g in exclude)
    )


def read_scalars(run_dir, tags):
    """{tag: (steps, values)} for the tags this run logs; a step logged twice keeps its last value."""
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    curves = {}
    for tag in set(tags) & set(acc.Tags()["scalars"]):
        by_step = {event.step: event.value for event in acc.Scalars(tag)}
        steps = np.array(sorted(by_step), dtype=np.int64)
        curves[tag] = (steps, np.array([by_step[s] for s in steps], dtype=np.float64))
    return curves


def run_task(run_dir, name_regex, one_panel, panel_title="all"):
    """The panel a run belongs to: the `task` group of --name-regex applied to its folder name."""
    match = None if one_panel else name_regex.match(os.path.basename(run_dir))
    if match is None:
        return panel_title
    task = match.group("task")
    gym_match = GYM_ID.fullmatch(task)
    return gym_match.group("env").lower() if gym_match else task  # Hopper-v4 -> hopper (env-only task)


def group_runs(args):
    """{(task, method): [run_dir, ...]} and the methods in legend order."""
    name_regex = re.compile(args.name_regex)
    groups = defaultdict(list)
    if args.method:
        methods = []
        for spec in args.method:
            name, sep, pattern = spec.rpartition("=")  # the last "=": a legend name may contain one ("N=5")
            if not sep or not name or not pattern:
                fail(f"--method wants NAME=GLOB, got {spec!r}")
            runs = find_runs([pattern], args.exclude)
            if not runs:
                fail(f"--method {spec!r}: no run with TensorBoard event files matches {pattern!r}")
            methods.append(name)
            for run in runs:
                groups[(run_task(run, name_regex, args.one_panel, args.panel_title), name)].append(run)
        return groups, methods
    runs = find_runs(args.runs, args.exclude)
    if not runs:
        fail(f"no TensorBoard event files found under {' '.join(args.runs)}")
    for run in runs:
        match = name_regex.match(os.path.basename(run))
        if match is None:
            print(f"note: skipped {run}: its name does not match --name-regex", file=sys.stderr)
            continue
        groups[(run_task(run, name_regex, args.one_panel, args.panel_title), match.group("method"))].append(run)
    known = [m for m in LABELS if any(m == method for _, method in groups)]
    return groups, known + sorted({method for _, method in groups} - set(known))


# ---- aggregation over seeds ----
def aggregate(curves):
    """Mean and std over seeds on a common grid (see the module docstring); None when the seeds share no range."""
    lo = max(steps[0] for steps, _ in curves)
    hi = min(steps[-1] for steps, _ in curves)
    if lo > hi:
        return None
    grid = np.unique(np.concatenate([steps for steps, _ in curves]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    per_seed = np.stack([np.interp(grid, steps, values) for steps, values in curves])
    return {"step": grid, "mean": per_seed.mean(axis=0), "std": per_seed.std(axis=0), "per_seed": per_seed}


def aggregate_all(groups, tags, include_offline):
    """{(tag, task, method): aggregate} over every group and tag some of its runs log."""
    results = {}
    for (task, method), runs in groups.items():
        by_tag = defaultdict(list)
        for run in runs:
            for tag, (steps, values) in read_scalars(run, tags).items():
                keep = steps >= 0 if not include_offline else np.ones_like(steps, dtype=bool)
                if keep.any():
                    by_tag[tag].append((steps[keep], values[keep]))
        for tag, curves in by_tag.items():
            agg = aggregate(curves)
            if agg is None:
                print(f"note: {tag} of {method} on {task}: its seeds share no step range; skipped", file=sys.stderr)
                continue
            results[(tag, task, method)] = agg
    return results


# ---- figures ----
def task_sort_key(task):
    match = D4RL_TASK.fullmatch(task)
    if match is None:
        return (len(ENV_ORDER), 0, task)
    env, dataset = match.group("env"), match.group("dataset")
    return (ENV_ORDER.index(env), DATASET_ORDER.index(dataset) if dataset in DATASET_ORDER else 99, task)


def panels_of(tasks):
    """Panels: every task except an environment-only task (e.g. 'hopper') when that env has dataset tasks."""
    tasks = set(tasks)
    return sorted((t for t in tasks if not any(o.startswith(t + "-") for o in tasks)), key=task_sort_key)


def shown_in(panel, task):
    return task == panel or panel.startswith(task + "-")


def draw_figure(results, tag, figure, methods, out_stem, formats):
    """One panel per task; made to be read at the width GitHub shows an image (~700-900 px): short titles, the axes
    filling the canvas, the legend in compact rows below the axes, each method in its METHOD_COLOURS colour."""
    _, _, ylabel, title = figure
    entries = {(task, method): agg for (t, task, method), agg in results.items() if t == tag}
    panels = panels_of(task for task, _ in entries)
    # D4RL tasks: one column per dataset, so a full grid is envs (rows) x datasets (columns); else rows of 4.
    d4rl = [D4RL_TASK.fullmatch(p) for p in panels]
    ncols = len({m.group("dataset") for m in d4rl}) if all(d4rl) else min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    one = len(panels) == 1
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(6.4, 4.0) if one else (3.6 * ncols, 2.9 * nrows),
        squeeze=False,
        sharex=not one,
        layout="constrained",
    )
    labels = [LABELS.get(method, method) for method in methods]
    colours = method_colours(labels)
    handles = {}
    for ax, panel in zip(axes.flat, panels):
        for method, label in zip(methods, labels):
            for (task, m), agg in entries.items():
                if m != method or not shown_in(panel, task):
                    continue
                (line,) = ax.plot(agg["step"], agg["mean"], color=colours[label], lw=1.8, label=label)
                ax.fill_between(
                    agg["step"], agg["mean"] - agg["std"], agg["mean"] + agg["std"], color=colours[label], alpha=0.15, lw=0
                )
                handles.setdefault(label, line)
        ax.set_title(textwrap.fill(panel, 70 if one else 34), fontsize=10)
        ax.margins(x=0.01)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x else "0"))
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in axes[-1, :]:
        ax.set_xlabel("Online environment steps")
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    seeds = sorted({agg["per_seed"].shape[0] for agg in entries.values()})
    seed_text = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    fig.suptitle(f"{title} (mean ± std over {seed_text} seeds)", fontsize=11)
    width = max(len(label) for label in handles) * 0.075 + 0.6  # inches per legend entry at fontsize 9
    fig.legend(
        handles.values(),
        handles.keys(),
        loc="outside lower center",
        fontsize=9,
        frameon=False,
        ncol=max(1, min(len(handles), int(fig.get_figwidth() // width))),
        handlelength=1.5,
        columnspacing=1.2,
    )
    paths = []
    for fmt in formats:
        paths.append(f"{out_stem}.{fmt}")
        save_figure(fig, paths[-1], dpi=150)
    plt.close(fig)
    return paths


# ---- tables ----
def write_curves_csv(results, methods, path):
    order = {m: i for i, m in enumerate(methods)}
    with written(path) as f:
        writer = csv.writer(f)
        writer.writerow(["tag", "task", "method", "step", "mean", "std", "n_seeds"])
        for (tag, task, method), agg in sorted(
            results.items(), key=lambda kv: (kv[0][0], task_sort_key(kv[0][1]), order[kv[0][2]])
        ):
            n = agg["per_seed"].shape[0]
            for step, mean, std in zip(agg["step"], agg["mean"], agg["std"]):
                writer.writerow([tag, task, method, int(step), f"{mean:.6g}", f"{std:.6g}", n])


def final_scores(results, methods, window):
    """[(task, method, last step, mean, std, n_seeds)] of eval/normalized_score, in panel then legend order."""
    rows = []
    for (tag, task, method), agg in results.items():
        if tag != SCORE_TAG:
            continue
        final = agg["per_seed"][:, -window:].mean(axis=1)
        rows.append((task, method, int(agg["step"][-1]), final.mean(), final.std(), len(final)))
    order = {m: i for i, m in enumerate(methods)}
    return sorted(rows, key=lambda r: (task_sort_key(r[0]), order[r[1]]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("runs", nargs="*", default=["runs"], help="run folders or globs, searched recursively")
    parser.add_argument(
        "--method",
        action="append",
        default=[],
        metavar="NAME=GLOB",
        help="a method made of the runs under GLOB (repeatable; replaces name parsing)",
    )
    parser.add_argument(
        "--name-regex", default=DEFAULT_NAME_REGEX, help="regex on a run's folder name with groups task and method"
    )
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="drop runs matching GLOB")
    parser.add_argument("--one-panel", action="store_true", help="draw every run in one panel")
    parser.add_argument("--panel-title", default="all", help="title of that one panel (and its task in the CSVs)")
    parser.add_argument("--figures", nargs="+", choices=sorted(FIGURES), default=["fig3", "fig4a", "fig4b"])
    parser.add_argument("--out-dir", default="benchmark/results/plots", help="folder for figures and CSVs")
    parser.add_argument("--formats", nargs="+", default=["png", "pdf"], help="image formats")
    parser.add_argument("--include-offline", action="store_true", help="keep negative steps (offline phases)")
    parser.add_argument("--final-window", type=int, default=1, help="final score = mean of the last K eval points")
    parser.add_argument("--summary", action="store_true", help="print the final-score table (markdown)")
    args = parser.parse_args(argv)
    if args.final_window < 1:
        fail("--final-window must be at least 1")
    try:
        re.compile(args.name_regex)
    except re.error as err:
        fail(f"--name-regex: {err}")
    if not {"task", "method"} <= set(re.compile(args.name_regex).groupindex):
        fail("--name-regex needs the named groups task and method")
    return args


def main(argv=None):
    args = parse_args(argv)
    groups, methods = group_runs(args)
    tags = [FIGURES[key][0] for key in args.figures]
    results = aggregate_all(groups, tags, args.include_offline)
    try:
        os.makedirs(args.out_dir, exist_ok=True)
    except OSError as err:
        fail(f"cannot create --out-dir {args.out_dir}: {err}")
    for key in args.figures:
        tag, stem = FIGURES[key][:2]
        if not any(t == tag for t, _, _ in results):
            print(f"note: no run logs {tag}: {key} skipped")
            continue
        paths = draw_figure(results, tag, FIGURES[key], methods, os.path.join(args.out_dir, stem), args.formats)
        print(f"wrote {', '.join(paths)}")
    write_curves_csv(results, methods, os.path.join(args.out_dir, "curves.csv"))
    rows = final_scores(results, methods, args.final_window)
    with written(os.path.join(args.out_dir, "summary.csv")) as f:
        writer = csv.writer(f)
        writer.writerow(["task", "method", "final_step", "mean", "std", "n_seeds"])
        writer.writerows([task, method, step, f"{mean:.6g}", f"{std:.6g}", n] for task, method, step, mean, std, n in rows)
    print(f"wrote {os.path.join(args.out_dir, 'curves.csv')}, {os.path.join(args.out_dir, 'summary.csv')}")
    if args.summary:
        window = "last eval" if args.final_window == 1 else f"mean of the last {args.final_window} evals"
        print(f"\nFinal normalized score ({window}), mean ± std over seeds\n")
        print("| task | method | online steps | score | seeds |\n|-|-|-|-|-|")
        for task, method, step, mean, std, n in rows:
            print(f"| {task} | {LABELS.get(method, method)} | {step} | {mean:.1f} ± {std:.1f} | {n} |")


if __name__ == "__main__":
    main()
