"""Interval estimates for benchmark/evidence.py's study (Agarwal et al., "Deep RL at the Edge of the Statistical
Precipice", NeurIPS 2021), as pre-registered there in the block "Interval estimates ..." (the defaults below are its
LATE_FROM, INTERVAL_METRICS, INTERVAL_RESAMPLES, INTERVAL_CONFIDENCE and seed 0; the tests check they match):

  * per run: late = the mean of every evaluation at step >= LATE_FROM (to the end); auc = the trapezoid area of the
    curve from step 0 to its last step / the last step (NaN for a curve without an evaluation at step 0);
  * per arm, on one task (a dataset) or across tasks (the datasets as rliable's tasks): the interquartile mean of the
    runs (rliable's aggregate_iqm: scipy.stats.trim_mean(0.25) over every run of every task) with its 95% stratified
    bootstrap interval (runs resampled with replacement within each task; percentile interval);
  * per comparison: IQM(first) - IQM(second) and the probability of improvement P(first > second) (rliable's: ties
    count one half, averaged over tasks), both with intervals from one stratified bootstrap in which the runs are
    resampled independently within each arm and each task (rliable's StratifiedIndependentBootstrap);
  * verdict: a comparison holds when the interval of IQM(first) - IQM(second) lies above 0, is reversed when it lies
    below 0, else a tie; a claim is reproduced when every comparison holds, not reproduced when any is reversed,
    inconclusive otherwise (as evidence.claim_rows). For a metric in LOWER_IS_BETTER "first better" means lower.

rliable's bootstraps draw from numpy's global RandomState; every estimate seeds it with `seed` just before and restores
it after, so an estimate does not depend on what was computed before it, and two calls give the same interval.
rliable is an optional, benchmark-only dependency (requirements-test.txt pins a combination that imports): it is
imported inside the functions that need it.

    python benchmark/intervals.py --runs "Ours=benchmark/results/evidence/runs/hopper-*__balanced-N5__seed*" \\
        --runs "SAC-ft=benchmark/results/evidence/runs/hopper-*__sac-ft__seed*" --out-dir /tmp/intervals
"""

import argparse
import csv
import functools
import glob
import re
from pathlib import Path

import numpy as np

LATE_FROM = 20_000
INTERVAL_METRICS = ("late", "auc")
INTERVAL_RESAMPLES = 10_000
INTERVAL_CONFIDENCE = 0.95
SEED = 0
LOWER_IS_BETTER = ("drop",)
IQM_CUT = 0.25  # the share trimmed from each end: int(IQM_CUT * n) values, as scipy.stats.trim_mean
ACROSS = "all tasks"
INSTALL = (
    "pip install -r requirements-test.txt (rliable 1.2.0 with arch<8 and pandas<3: arch 7 does not import "
    "under pandas 3 and rliable 1.2.0 refuses arch 8)"
)
SCORE_TAG = "eval/normalized_score"
RUN_NAME = re.compile(r"^(?P<task>.+?)__(?P<method>.+?)__(?:seed)?(?P<seed>\d+)(?:__.*)?$")  # as benchmark/plot.py
COMPARISON_COLUMNS = (
    "claim",
    "task",
    "tasks",
    "metric",
    "first",
    "second",
    "iqm_first",
    "ci_first_low",
    "ci_first_high",
    "iqm_second",
    "ci_second_low",
    "ci_second_high",
    "iqm_difference",
    "ci_low",
    "ci_high",
    "p_improvement",
    "p_low",
    "p_high",
    "n_first",
    "n_second",
    "result",
)


def fail(message: str):
    raise SystemExit(f"error: {message}")


def rliable(module: str = "library"):
    """One of rliable's modules (library, metrics, plot_utils), or one line saying how to install it."""
    try:
        return __import__(f"rliable.{module}", fromlist=[module])
    except Exception as error:  # not installed, or arch failing under pandas 3 (a TypeError at import)
        fail(
            f"interval estimates need rliable, an optional benchmark-only dependency, which does not import "
            f"({type(error).__name__}: {error}): {INSTALL}"
        )


# ---- per-run metrics ----
def _curve(steps, scores) -> tuple:
    steps, scores = np.asarray(steps, dtype=float), np.asarray(scores, dtype=float)
    if steps.ndim != 1 or steps.shape != scores.shape or np.any(np.diff(steps) <= 0):
        raise ValueError("a curve is two 1-D arrays of the same length, the steps strictly increasing")
    return steps, scores


def late(steps, scores, late_from: int = LATE_FROM) -> float:
    """The mean of every evaluation at step >= late_from, up to the end (NaN if there is none)."""
    steps, scores = _curve(steps, scores)
    window = scores[steps >= late_from]
    return float(window.mean()) if len(window) else float("nan")


def auc(steps, scores) -> float:
    """The trapezoid area under the curve from step 0 to its last step, divided by the last step (in score units).
    NaN when the curve has no evaluation at step 0 (the area from 0 is then unknown) or a single point."""
    steps, scores = _curve(steps, scores)
    if len(steps) < 2 or steps[0] != 0:
        return float("nan")
    return float(np.sum(np.diff(steps) * (scores[1:] + scores[:-1]) / 2) / steps[-1])


def run_metrics(steps, scores, late_from: int = LATE_FROM) -> dict:
    """One run's curve -> {"late": ..., "auc": ...}."""
    return {"late": late(steps, scores, late_from), "auc": auc(steps, scores)}


# ---- point estimates ----
def iqm(values) -> float:
    """The interquartile mean of all values (rliable's aggregate_iqm = scipy.stats.trim_mean(values, 0.25, axis=None)):
    sorted, int(0.25 n) dropped at each end, the mean of the rest (3 values: none dropped; 5: the middle 3)."""
    values = np.sort(np.asarray(values, dtype=float), axis=None)
    cut = int(IQM_CUT * len(values))
    return float(values[cut : len(values) - cut].mean())


def _iqm_columns(matrix: np.ndarray) -> np.ndarray:
    """The IQM of every column of a (runs x k) array."""
    matrix = np.sort(matrix, axis=0)
    cut = int(IQM_CUT * matrix.shape[0])
    return matrix[cut : matrix.shape[0] - cut].mean(axis=0)


def probability_of_improvement(first: list, second: list) -> float:
    """first[t], second[t]: the runs' values of two arms on task t -> P(X > Y) + P(X = Y) / 2 for a run X of the first
    and a run Y of the second on the same task, averaged over the tasks (rliable's probability_of_improvement, i.e.
    the Mann-Whitney U / (n_x n_y), for any numbers of runs per task)."""
    probabilities = []
    for x, y in zip(first, second):
        x, y = np.ravel(x)[:, None], np.ravel(y)[None, :]
        probabilities.append((np.count_nonzero(x > y) + 0.5 * np.count_nonzero(x == y)) / (x.size * y.size))
    return float(np.mean(probabilities))


# ---- stratified bootstrap (rliable) ----
def _strata(columns: list) -> list:
    """One arm's runs per task -> what rliable resamples: a (runs x tasks) array when every task has as many runs (its
    usual input), else one (runs x 1) array per task; either way runs are resampled within each task."""
    columns = [np.asarray(c, dtype=float) for c in columns]
    if len({len(c) for c in columns}) == 1:
        return [np.column_stack(columns)]
    return [c[:, None] for c in columns]


def _flat(arrays) -> np.ndarray:
    return np.concatenate([a.ravel() for a in arrays])


def _task_columns(arrays) -> list:
    return [a[:, t] for a in arrays for t in range(a.shape[1])]


def bootstrap(data, func, reps: int = INTERVAL_RESAMPLES, confidence: float = INTERVAL_CONFIDENCE, seed: int = SEED) -> tuple:
    """rliable.library.get_interval_estimates on one entry: an array (runs x tasks [x ...]) is resampled by its
    StratifiedBootstrap, a list of arrays by its StratifiedIndependentBootstrap (each array on its own) -> (point
    estimate, lower bounds, upper bounds) of func's 1-D output. The global RNG is seeded with seed, then restored."""
    library = rliable("library")
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        points, intervals = library.get_interval_estimates({"x": data}, func, reps=reps, confidence_interval_size=confidence)
    finally:
        np.random.set_state(state)
    return np.asarray(points["x"], dtype=float), intervals["x"][0], intervals["x"][1]


@functools.cache
def _iqm_interval(columns: tuple, reps: int, confidence: float, seed: int) -> tuple:
    strata = _strata(columns)
    point, low, high = bootstrap(
        strata[0] if len(strata) == 1 else strata, lambda *arrays: np.array([iqm(_flat(arrays))]), reps, confidence, seed
    )
    return float(point[0]), float(low[0]), float(high[0])


def iqm_interval(
    columns: list, reps: int = INTERVAL_RESAMPLES, confidence: float = INTERVAL_CONFIDENCE, seed: int = SEED
) -> tuple:
    """columns[t]: one arm's run values on task t -> (IQM over every run, interval low, interval high); runs
    resampled within each task (one task: a plain bootstrap of the runs)."""
    return _iqm_interval(tuple(tuple(map(float, c)) for c in columns), reps, confidence, seed)


def compare_intervals(
    first: list, second: list, reps: int = INTERVAL_RESAMPLES, confidence: float = INTERVAL_CONFIDENCE, seed: int = SEED
) -> dict:
    """first[t], second[t]: two arms' run values on task t (any numbers of runs) -> IQM(first) - IQM(second) and
    P(first > second), each with its interval from one bootstrap that resamples the runs independently within each arm
    and each task, and the result: holds (the difference's interval above 0), reversed (below 0) or tie."""
    a, b = _strata(first), _strata(second)

    def statistics(*arrays):
        x, y = arrays[: len(a)], arrays[len(a) :]
        return np.array([iqm(_flat(x)) - iqm(_flat(y)), probability_of_improvement(_task_columns(x), _task_columns(y))])

    point, low, high = bootstrap(a + b, statistics, reps, confidence, seed)
    return {
        "iqm_difference": float(point[0]),
        "ci_low": float(low[0]),
        "ci_high": float(high[0]),
        "p_improvement": float(point[1]),
        "p_low": float(low[1]),
        "p_high": float(high[1]),
        "result": verdict(low[0], high[0]),
    }


def verdict(low: float, high: float) -> str:
    """The pre-registered rule on the interval of IQM(first) - IQM(second)."""
    return "holds" if low > 0 else "reversed" if high < 0 else "tie"


def ran(results: list) -> int:
    """How many comparisons had enough runs to be made (a comparison short of runs is "n/a ...")."""
    return sum(not result.startswith("n/a") for result in results)


def claim_verdict(results: list, n_pairs: int) -> str:
    """A claim's verdict from its comparisons' results (evidence.claim_rows reads its 2-SE comparisons with it too)."""
    return (
        "reproduced"
        if len(results) == n_pairs and all(r == "holds" for r in results)
        else "not reproduced"
        if "reversed" in results
        else "inconclusive"
    )


# ---- rows for CSV ----
def _tasks_of(per_run: dict, tasks) -> list:
    return list(tasks) if tasks is not None else list(dict.fromkeys(task for task, _ in per_run))


def _values(per_run: dict, task: str, arm: str, metric: str) -> np.ndarray:
    values = np.array([run[metric] for run in per_run.get((task, arm), [])], dtype=float)
    return values[np.isfinite(values)]


def _task_sets(per_run: dict, tasks: list, arms: tuple, across: str | None) -> list:
    """(task label, [tasks]): each task on which every arm has runs, then all of them together when there are two or
    more (labelled `across`)."""
    held = [t for t in tasks if all(per_run.get((t, arm)) for arm in arms)]
    return [(t, [t]) for t in held] + ([(across, held)] if across is not None and len(held) > 1 else [])


def _r(x: float, digits: int = 2):
    return round(float(x), digits) if np.isfinite(x) else float("nan")


def iqm_rows(
    per_run: dict,
    metrics=INTERVAL_METRICS,
    tasks=None,
    across: str | None = ACROSS,
    reps: int = INTERVAL_RESAMPLES,
    confidence: float = INTERVAL_CONFIDENCE,
    seed: int = SEED,
) -> list:
    """per_run[(task, arm)] = one dict of metric values per run -> one row per (task, arm, metric), then per (arm,
    metric) across the tasks the arm has: task, tasks, metric, arm, n_runs, mean, iqm, ci_low, ci_high."""
    tasks, arms = _tasks_of(per_run, tasks), list(dict.fromkeys(arm for _, arm in per_run))
    task_sets = {arm: dict(_task_sets(per_run, tasks, (arm,), across)) for arm in arms}
    rows = []
    for metric in metrics:
        for label in tasks + [across]:
            for arm in arms:
                if label not in task_sets[arm]:
                    continue
                columns = [_values(per_run, t, arm, metric) for t in task_sets[arm][label]]
                row = {
                    "task": label,
                    "tasks": "+".join(task_sets[arm][label]),
                    "metric": metric,
                    "arm": arm,
                    "n_runs": sum(map(len, columns)),
                }
                if min(map(len, columns)) == 0:  # a metric NaN in every run of a task (auc without a score at 0)
                    rows.append({**row, **dict.fromkeys(("mean", "iqm", "ci_low", "ci_high"), float("nan"))})
                    continue
                point, low, high = iqm_interval(columns, reps, confidence, seed)
                rows.append(
                    {**row, "mean": _r(np.mean(_flat(columns))), "iqm": _r(point), "ci_low": _r(low), "ci_high": _r(high)}
                )
    return rows


def comparison_row(
    per_run: dict,
    task: str,
    task_set: list,
    first: str,
    second: str,
    metric: str,
    claim: str = "",
    reps: int = INTERVAL_RESAMPLES,
    confidence: float = INTERVAL_CONFIDENCE,
    seed: int = SEED,
    lower_is_better=LOWER_IS_BETTER,
) -> dict:
    """One comparison on the tasks task_set (labelled task), with COMPARISON_COLUMNS. The difference and its interval
    are first - second in the metric's units; p_improvement is P(first better than second)."""
    a = [_values(per_run, t, first, metric) for t in task_set]
    b = [_values(per_run, t, second, metric) for t in task_set]
    row = dict.fromkeys(COMPARISON_COLUMNS, "")
    row.update(
        claim=claim,
        task=task,
        tasks="+".join(task_set),
        metric=metric,
        first=first,
        second=second,
        n_first=sum(map(len, a)),
        n_second=sum(map(len, b)),
    )
    if min(map(len, a + b)) < 2:
        return {**row, "result": "n/a (fewer than 2 runs)"}
    for name, columns in (("first", a), ("second", b)):
        point, low, high = iqm_interval(columns, reps, confidence, seed)
        row.update({f"iqm_{name}": _r(point), f"ci_{name}_low": _r(low), f"ci_{name}_high": _r(high)})
    sign = -1.0 if metric in lower_is_better else 1.0
    c = compare_intervals([sign * x for x in a], [sign * y for y in b], reps, confidence, seed)
    low, high = sorted((sign * c["ci_low"], sign * c["ci_high"]))
    row.update(
        iqm_difference=_r(sign * c["iqm_difference"]),
        ci_low=_r(low),
        ci_high=_r(high),
        p_improvement=_r(c["p_improvement"], 3),
        p_low=_r(c["p_low"], 3),
        p_high=_r(c["p_high"], 3),
        result=c["result"],
    )
    return row


def comparison_rows(
    per_run: dict,
    pairs: list,
    metric: str,
    tasks=None,
    across: str | None = ACROSS,
    claim: str = "",
    reps: int = INTERVAL_RESAMPLES,
    confidence: float = INTERVAL_CONFIDENCE,
    seed: int = SEED,
    lower_is_better=LOWER_IS_BETTER,
) -> list:
    """Every (first, second) pair on each task both arms have, then across those tasks (two or more)."""
    tasks = _tasks_of(per_run, tasks)
    return [
        comparison_row(per_run, label, task_set, first, second, metric, claim, reps, confidence, seed, lower_is_better)
        for first, second in pairs
        for label, task_set in _task_sets(per_run, tasks, (first, second), across)
    ]


def claim_interval_rows(
    per_run: dict,
    claims: list,
    tasks=None,
    across: str | None = ACROSS,
    reps: int = INTERVAL_RESAMPLES,
    confidence: float = INTERVAL_CONFIDENCE,
    seed: int = SEED,
    lower_is_better=LOWER_IS_BETTER,
) -> list:
    """claims: [(claim, metric, [(first, second), ...])] (evidence.CLAIMS' form; pass one entry per interval metric)
    -> for each claim and task (each task, then `across`), its comparison rows then a verdict row (result "verdict:
    reproduced / not reproduced / inconclusive (k/n comparisons run)", the other columns empty)."""
    tasks = _tasks_of(per_run, tasks)
    labels = tasks + ([across] if across is not None else [])
    rows = []
    for claim, metric, pairs in claims:
        comparisons = comparison_rows(per_run, pairs, metric, tasks, across, claim, reps, confidence, seed, lower_is_better)
        rows += with_verdicts(comparisons, claim, metric, len(pairs), labels, COMPARISON_COLUMNS)
    return rows


def with_verdicts(comparisons: list, claim: str, metric: str, n_pairs: int, labels: list, columns) -> list:
    """One claim's comparison rows grouped by task label (in the order of labels), each group followed by its verdict
    row: result "verdict: reproduced / not reproduced / inconclusive (k/n comparisons run)", the other columns empty."""
    by_task = {}
    for row in comparisons:
        by_task.setdefault(row["task"], []).append(row)
    rows = []
    for label in labels:
        if label in by_task:
            results = [row["result"] for row in by_task[label]]
            verdict = f"verdict: {claim_verdict(results, n_pairs)} ({ran(results)}/{n_pairs} comparisons run)"
            rows += by_task[label]
            rows.append({**dict.fromkeys(columns, ""), "claim": claim, "task": label, "metric": metric, "result": verdict})
    return rows


def _on_common_steps(runs: list) -> tuple:
    """[(steps, scores) per run] -> (the steps every run has, a (runs x those steps) array of their scores)."""
    common = functools.reduce(np.intersect1d, [np.asarray(steps) for steps, _ in runs])
    return common, np.stack([np.asarray(s, dtype=float)[np.isin(np.asarray(st), common)] for st, s in runs])


def _curve_points(task: str, arm: str, steps, point, low, high, **counts) -> list:
    return [
        {"task": task, "arm": arm, "step": int(step), **counts, "iqm": _r(p), "ci_low": _r(lo), "ci_high": _r(hi)}
        for step, p, lo, hi in zip(steps, point, low, high)
    ]


def curve_rows(
    curves: dict, reps: int = INTERVAL_RESAMPLES, confidence: float = INTERVAL_CONFIDENCE, seed: int = SEED
) -> list:
    """curves[(task, arm)] = [(steps, scores) per run] -> one row per (task, arm, step) on the steps every run has:
    task, arm, step, n_runs, iqm, ci_low, ci_high. As rliable's sample-efficiency curves: a (runs x 1 x steps) array,
    runs resampled within each step."""
    rows = []
    for (task, arm), runs in curves.items():
        common, scores = _on_common_steps(runs)
        estimate = lambda s: _iqm_columns(s.reshape(s.shape[0], -1))
        rows += _curve_points(
            task, arm, common, *bootstrap(scores[:, None, :], estimate, reps, confidence, seed), n_runs=len(runs)
        )
    return rows


# ---- two-stage bootstrap: the pretraining as the unit ----
def two_stage_resample(groups, reps: int, rng: np.random.Generator) -> np.ndarray:
    """groups: one arm's runs on one task grouped by their pretraining, G groups of m run values each -> (reps, G m)
    resampled run values: in each resample G groups drawn with replacement, then m runs drawn with replacement within
    each drawn group (a hierarchical bootstrap: the spread between pretrainings counts, not only the spread between
    fine-tuning seeds of one pretraining). A run may be a vector (a curve's scores): (reps, G m, steps), the same
    draw for every step."""
    sizes = {len(group) for group in groups}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"every pretraining needs the same number of runs (at least one), got sizes {sorted(sizes)}")
    values = np.asarray(groups, dtype=float)
    n_groups, m = values.shape[:2]
    drawn_groups = rng.integers(0, n_groups, size=(reps, n_groups))
    drawn_runs = rng.integers(0, m, size=(reps, n_groups, m))
    return values[drawn_groups[:, :, None], drawn_runs].reshape(reps, n_groups * m, *values.shape[2:])


def _pairwise_improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x (reps, n_x), y (reps, n_y) -> P(X > Y) + P(X = Y) / 2 within each resample: (reps,)."""
    x, y = x[:, :, None], y[:, None, :]
    return (np.count_nonzero(x > y, axis=(1, 2)) + 0.5 * np.count_nonzero(x == y, axis=(1, 2))) / (x.shape[1] * y.shape[2])


def _percentile_interval(draws: np.ndarray, confidence: float) -> np.ndarray:
    """The percentile interval of bootstrap draws (resamples along the first axis): [low, high] for each column."""
    tail = 100 * (1 - confidence) / 2
    return np.percentile(draws, [tail, 100 - tail], axis=0)


def two_stage_compare(
    first: list, second: list, reps: int = INTERVAL_RESAMPLES, confidence: float = INTERVAL_CONFIDENCE, seed: int = SEED
) -> dict:
    """first[t], second[t]: two arms' runs on task t, grouped by pretraining -> the IQM of each arm over all its runs
    and IQM(first) - IQM(second), P(first > second) (averaged over tasks), each with a percentile interval from
    two_stage_resample (each arm and task on its own, numpy's default_rng(seed): the first arm's tasks in order, then
    the second's), and the result by the interval rule."""
    rng = np.random.default_rng(seed)
    a = [two_stage_resample(groups, reps, rng) for groups in first]
    b = [two_stage_resample(groups, reps, rng) for groups in second]
    flat = lambda arm: np.concatenate([np.ravel(groups) for groups in arm])
    iqm_a, iqm_b = _iqm_columns(np.concatenate(a, axis=1).T), _iqm_columns(np.concatenate(b, axis=1).T)
    improvement = np.mean([_pairwise_improvement(x, y) for x, y in zip(a, b)], axis=0)
    interval = lambda draws: _percentile_interval(draws, confidence)
    (a_low, a_high), (b_low, b_high) = interval(iqm_a), interval(iqm_b)
    low, high = interval(iqm_a - iqm_b)
    p_low, p_high = interval(improvement)
    return {
        "iqm_first": iqm(flat(first)),
        "ci_first_low": float(a_low),
        "ci_first_high": float(a_high),
        "iqm_second": iqm(flat(second)),
        "ci_second_low": float(b_low),
        "ci_second_high": float(b_high),
        "iqm_difference": iqm(flat(first)) - iqm(flat(second)),
        "ci_low": float(low),
        "ci_high": float(high),
        "p_improvement": probability_of_improvement([np.ravel(g) for g in first], [np.ravel(g) for g in second]),
        "p_low": float(p_low),
        "p_high": float(p_high),
        "result": verdict(low, high),
    }


def two_stage_claim_rows(
    per_group: dict,
    claims: list,
    tasks=None,
    across: str | None = ACROSS,
    reps: int = INTERVAL_RESAMPLES,
    confidence: float = INTERVAL_CONFIDENCE,
    seed: int = SEED,
    lower_is_better=LOWER_IS_BETTER,
) -> list:
    """per_group[(task, arm)] = [[one dict of metric values per run] per pretraining]; claims: [(claim, metric,
    [(first, second), ...])] -> as claim_interval_rows (COMPARISON_COLUMNS plus n_pretrainings_first/second), the
    intervals from two_stage_compare. A pretraining with a non-finite value of the metric in any run is left out."""
    tasks = _tasks_of(per_group, tasks)
    labels = tasks + ([across] if across is not None else [])
    columns = [*COMPARISON_COLUMNS, "n_pretrainings_first", "n_pretrainings_second"]
    rows = []
    for claim, metric, pairs in claims:
        groups = {  # (task, arm) -> the values of its pretrainings that have the metric in every run
            key: [g for g in ([run[metric] for run in group] for group in value) if g and np.all(np.isfinite(g))]
            for key, value in per_group.items()
        }
        comparisons = []
        for first, second in pairs:
            run = [t for t in tasks if groups.get((t, first)) and groups.get((t, second))]
            held = [t for t in run if min(len(groups[(t, first)]), len(groups[(t, second)])) >= 2]
            task_sets = [(t, [t]) for t in run] + ([(across, held)] if across is not None and len(held) > 1 else [])
            for label, task_set in task_sets:
                a, b = [groups[(t, first)] for t in task_set], [groups[(t, second)] for t in task_set]
                row = dict.fromkeys(columns, "")
                row.update(claim=claim, task=label, tasks="+".join(task_set), metric=metric, first=first, second=second)
                row.update(n_first=sum(np.size(g) for g in a), n_second=sum(np.size(g) for g in b))
                row.update(n_pretrainings_first=sum(map(len, a)), n_pretrainings_second=sum(map(len, b)))
                if min(map(len, a + b)) < 2:
                    row["result"] = "n/a (fewer than 2 pretrainings)"
                else:
                    row.update(_two_stage_numbers(a, b, metric in lower_is_better, reps, confidence, seed))
                comparisons.append(row)
        rows += with_verdicts(comparisons, claim, metric, len(pairs), labels, columns)
    return rows


def two_stage_curve_rows(
    curves: dict, reps: int = INTERVAL_RESAMPLES, confidence: float = INTERVAL_CONFIDENCE, seed: int = SEED
) -> list:
    """curves[(task, arm)] = [[(steps, scores) per run] per pretraining] -> curve_rows' rows (plus n_pretrainings)
    with the interval from two_stage_resample instead of a bootstrap of runs: one resample of pretrainings and runs
    (numpy's default_rng(seed) for each curve) serves every step, so a step's interval is the one two_stage_compare
    gives its values. The point is the IQM of all runs at the step, on the steps every run has."""
    rows = []
    for (task, arm), groups in curves.items():
        common, scores = _on_common_steps([run for group in groups for run in group])
        values = np.split(scores, np.cumsum([len(group) for group in groups])[:-1])  # pretrainings x runs x steps
        resampled = two_stage_resample(values, reps, np.random.default_rng(seed))  # (reps, runs, steps)
        low, high = _percentile_interval(_iqm_columns(np.moveaxis(resampled, 1, 0)), confidence)
        counts = dict(n_pretrainings=len(groups), n_runs=len(scores))
        rows += _curve_points(task, arm, common, _iqm_columns(scores), low, high, **counts)
    return rows


def _two_stage_numbers(a: list, b: list, lower_is_better: bool, reps: int, confidence: float, seed: int) -> dict:
    """two_stage_compare on two arms' pretraining groups, "first better" meaning lower when lower_is_better (the
    values are negated, then every estimate is turned back into the metric's own units, rounded for a CSV)."""
    sign = -1.0 if lower_is_better else 1.0
    negate = lambda arm: [[[sign * v for v in group] for group in task] for task in arm]
    c = two_stage_compare(negate(a), negate(b), reps, confidence, seed)
    numbers = {"result": c["result"], "p_improvement": _r(c["p_improvement"], 3)}
    numbers.update(p_low=_r(c["p_low"], 3), p_high=_r(c["p_high"], 3))
    for point, low, high in (
        ("iqm_first", "ci_first_low", "ci_first_high"),
        ("iqm_second", "ci_second_low", "ci_second_high"),
        ("iqm_difference", "ci_low", "ci_high"),
    ):
        ends = sorted((sign * c[low], sign * c[high]))
        numbers.update({point: _r(sign * c[point]), low: _r(ends[0]), high: _r(ends[1])})
    return numbers


# ---- figures ----
_DEFAULT_COLORS: dict = {}


def colors_for(labels, colors: dict | None = None) -> dict:
    """label -> colour: as given in colors, else a colour of seaborn's colorblind palette (rliable's) that the label
    keeps in every figure this process draws (the first label seen gets the first free colour)."""
    import seaborn as sns

    palette = sns.color_palette("colorblind", 10)
    out = dict(colors or {})
    for label in labels:
        if label not in out:
            if label not in _DEFAULT_COLORS:
                _DEFAULT_COLORS[label] = palette[len(_DEFAULT_COLORS) % len(palette)]
            out[label] = _DEFAULT_COLORS[label]
    return out


def _figure(width: float, heights: list, columns: bool):
    """A figure of len(heights) panels side by side (columns) or stacked (each panel as high as given)."""
    from matplotlib.figure import Figure

    n = len(heights)
    if columns:
        figure = Figure(figsize=(width * n, max(heights)), layout="constrained")
        return figure, figure.subplots(1, n, squeeze=False)[0]
    figure = Figure(figsize=(width, sum(heights)), layout="constrained")
    return figure, figure.subplots(n, 1, squeeze=False, height_ratios=heights)[:, 0]


def plot_iqm_curves(
    rows: list,
    path,
    colors: dict | None = None,
    labels: dict | None = None,
    tasks=None,
    ylabel: str = "IQM normalized score",
    xlabel: str = "Online environment steps",
):
    """curve_rows -> one panel per task: each arm's IQM over its runs with the 95% interval band (rliable's
    plot_sample_efficiency_curve), coloured by label (labels: arm -> legend label; colors: label -> colour).
    Returns the matplotlib Figure, saved to path."""
    from matplotlib.ticker import FuncFormatter

    plot_utils = rliable("plot_utils")
    labels = labels or {}
    tasks = list(tasks) if tasks is not None else list(dict.fromkeys(row["task"] for row in rows))
    arms = list(dict.fromkeys(row["arm"] for row in rows))
    colors = colors_for([labels.get(arm, arm) for arm in arms], colors)
    figure, axes = _figure(4.6, [3.6] * len(tasks), columns=True)
    for ax, task in zip(axes, tasks):
        for arm in arms:  # one call per arm: the arms of a panel may have different steps
            mine = [row for row in rows if row["task"] == task and row["arm"] == arm]
            if not mine:
                continue
            label = labels.get(arm, arm)
            plot_utils.plot_sample_efficiency_curve(
                [row["step"] for row in mine],
                {label: np.array([row["iqm"] for row in mine])},
                {label: np.array([[row["ci_low"] for row in mine], [row["ci_high"] for row in mine]])},
                algorithms=[label],
                colors=colors,
                ax=ax,
                xlabel=xlabel,
                ylabel=ylabel,
                labelsize="medium",
                ticklabelsize="small",
                marker="",
                linewidth=1.8,
            )
        ax.set_title(task)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x else "0"))
    handles = {line.get_label(): line for ax in axes for line in ax.get_lines()}
    figure.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=min(len(handles), 4), frameon=False)
    figure.savefig(path, dpi=150)
    return figure


def plot_improvement(
    rows: list, path, first: str, metric: str, colors: dict | None = None, labels: dict | None = None, tasks=None
):
    """comparison rows with first == `first` on `metric` -> one panel per task: P(first better than each second) with
    its 95% interval (rliable's plot_probability_of_improvement), each bar the second arm's colour. Returns the
    Figure, saved to path."""
    plot_utils = rliable("plot_utils")
    labels = labels or {}
    rows = [row for row in rows if row["first"] == first and row["metric"] == metric and row["p_improvement"] != ""]
    if not rows:
        raise ValueError(f"no comparison of {first} on {metric} to plot")
    tasks = list(tasks) if tasks is not None else list(dict.fromkeys(row["task"] for row in rows))
    colors = colors_for([labels.get(a, a) for a in dict.fromkeys([first] + [row["second"] for row in rows])], colors)
    figure, axes = _figure(6.0, [1.0 + 0.45 * sum(row["task"] == task for row in rows) for task in tasks], columns=False)
    separator = "\x1f"  # labels may hold commas, rliable's default pair separator
    for ax, task in zip(axes, tasks):
        mine = [row for row in rows if row["task"] == task]
        pairs = [labels.get(first, first) + separator + labels.get(row["second"], row["second"]) for row in mine]
        plot_utils.plot_probability_of_improvement(
            {p: row["p_improvement"] for p, row in zip(pairs, mine)},
            {p: np.array([row["p_low"], row["p_high"]]) for p, row in zip(pairs, mine)},
            pair_separator=separator,
            ax=ax,
            colors=[colors[labels.get(row["second"], row["second"])] for row in mine],
            xticks=[0.0, 0.25, 0.5, 0.75, 1.0],
            xlabel=f"P(X better than Y), {metric}",
            left_ylabel="X",
            right_ylabel="Y",
            labelsize="medium",
            ticklabelsize="small",
        )
        ax.axvline(0.5, color="0.4", lw=1, ls="--")
        ax.set_xlim(0, 1)
        ax.set_title(task)
    figure.savefig(path, dpi=150)
    return figure


# ---- command line: TensorBoard run folders -> CSVs and figures ----
def read_curve(run_dir) -> tuple:
    """A run folder's eval/normalized_score curve (a step logged twice, as after a resume: the last value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    if SCORE_TAG not in events.Tags()["scalars"]:
        fail(f"{run_dir}: no {SCORE_TAG} scalar")
    points = {e.step: e.value for e in events.Scalars(SCORE_TAG) if e.step >= 0}
    steps = np.array(sorted(points))
    return steps, np.array([points[s] for s in steps])


def write_csv(path, rows: list):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--runs",
        action="append",
        required=True,
        metavar="LABEL=GLOB",
        help="run folders of one method (task = the folder name's part before '__'); repeatable",
    )
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--first", help="the method compared with every other (default: the first --runs)")
    parser.add_argument("--metrics", nargs="+", default=list(INTERVAL_METRICS), choices=list(INTERVAL_METRICS))
    parser.add_argument("--late-from", type=int, default=LATE_FROM)
    parser.add_argument("--reps", type=int, default=INTERVAL_RESAMPLES)
    parser.add_argument("--confidence", type=float, default=INTERVAL_CONFIDENCE)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    rliable("library")  # before reading any run: one line if it is missing
    curves, per_run = {}, {}
    for spec in args.runs:
        label, sep, pattern = spec.rpartition("=")  # the last "=": a label may contain one ("N=5"), as plot.py
        if not sep or not label:
            fail(f"--runs {spec!r}: expected LABEL=GLOB")
        folders = sorted(p for p in glob.glob(pattern) if Path(p).is_dir())
        if not folders:
            fail(f"--runs {spec!r}: no run folder matches")
        for folder in folders:
            match = RUN_NAME.match(Path(folder).name)
            task = match.group("task") if match else Path(folder).parent.name
            steps, scores = read_curve(folder)
            curves.setdefault((task, label), []).append((steps, scores))
            per_run.setdefault((task, label), []).append(run_metrics(steps, scores, args.late_from))
    labels = list(dict.fromkeys(label for _, label in per_run))
    first = args.first or labels[0]
    if first not in labels:
        fail(f"--first {first!r} is none of the --runs labels {labels}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    estimates = dict(reps=args.reps, confidence=args.confidence, seed=args.seed)
    curve_table = curve_rows(curves, **estimates)
    tables = {
        "iqm.csv": iqm_rows(per_run, args.metrics, **estimates),
        "curves.csv": curve_table,
        "comparisons.csv": [
            row
            for metric in args.metrics
            for row in comparison_rows(per_run, [(first, label) for label in labels if label != first], metric, **estimates)
        ],
    }
    colors = colors_for(labels)
    plot_iqm_curves(curve_table, args.out_dir / "iqm_curves.png", colors)
    for metric in args.metrics if len(labels) > 1 else ():
        if any(row["p_improvement"] != "" and row["metric"] == metric for row in tables["comparisons.csv"]):
            plot_improvement(tables["comparisons.csv"], args.out_dir / f"improvement_{metric}.png", first, metric, colors)
    for name, table in tables.items():
        if table:
            write_csv(args.out_dir / name, table)
    print(f"wrote {', '.join(sorted(p.name for p in args.out_dir.iterdir()))} to {args.out_dir}")


if __name__ == "__main__":
    main()
