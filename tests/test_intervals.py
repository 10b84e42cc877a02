"""benchmark/intervals.py: the pre-registered interval estimates (late, AUC, IQM with stratified bootstrap intervals,
probability of improvement, the verdict on intervals) and their figures. Needs rliable (requirements-test.txt)."""

import sys

import numpy as np
import pytest
import scipy.stats
from matplotlib.colors import to_rgba

from conftest import load_script

intervals = load_script("benchmark/intervals")
REPS = 1000
STEPS = np.arange(0, 50_001, 1000)


# ---------------------------------------------------------------------------------
# per-run metrics
# ---------------------------------------------------------------------------------
def test_defaults_are_the_pre_registered_values():
    evidence = load_script("benchmark/evidence")
    assert intervals.LATE_FROM == evidence.LATE_FROM == 20_000
    assert intervals.INTERVAL_METRICS == evidence.INTERVAL_METRICS
    assert intervals.INTERVAL_RESAMPLES == evidence.INTERVAL_RESAMPLES
    assert intervals.INTERVAL_CONFIDENCE == evidence.INTERVAL_CONFIDENCE
    assert intervals.LOWER_IS_BETTER == evidence.LOWER_IS_BETTER and intervals.SEED == 0


def test_late_and_auc_by_hand():
    scores = np.arange(51.0)  # 0 at step 0 rising by 1 per 1000 steps to 50 at 50k
    assert intervals.late(STEPS, scores) == pytest.approx(np.mean(np.arange(20, 51)))  # 31 evaluations, 20k..50k
    assert intervals.auc(STEPS, scores) == pytest.approx(25.0)  # the triangle 50 * 50k / 2, over 50k
    steps, scores = [0, 1000, 3000], [0.0, 10.0, 20.0]
    assert intervals.auc(steps, scores) == pytest.approx((1000 * 5 + 2000 * 15) / 3000)
    assert intervals.late(steps, scores, late_from=1000) == pytest.approx(15.0)
    assert intervals.late(steps, scores, late_from=2000) == pytest.approx(20.0)  # every point from 2000 on: 3000
    assert intervals.run_metrics(steps, scores, late_from=1000) == pytest.approx({"late": 15.0, "auc": 35 / 3})
    hopper_like = np.where(STEPS % 2000 == 0, 80.0, 20.0)  # the 30-50 point swings of Hopper's evaluations
    assert intervals.late(STEPS, hopper_like) == pytest.approx((16 * 80 + 15 * 20) / 31)
    assert intervals.auc(STEPS, hopper_like) == pytest.approx(50.0)  # every trapezoid has mean 50
    assert np.isnan(intervals.auc([1000, 2000], [1.0, 2.0]))  # no evaluation at step 0 (SAC from scratch)
    assert np.isnan(intervals.late([0, 1000], [1.0, 2.0]))  # nothing at or after 20k
    with pytest.raises(ValueError):
        intervals.late([0, 2000, 1000], [1.0, 2.0, 3.0])


# ---------------------------------------------------------------------------------
# point estimates
# ---------------------------------------------------------------------------------
def hand_iqm(values):
    """Sorted, floor(n/4) dropped at each end (scipy.stats.trim_mean cuts int(0.25 n): for a fractional n/4 it cuts
    less, never a fraction of a value), the mean of the rest."""
    values = sorted(np.ravel(values))
    k = len(values) // 4
    kept = values[k : len(values) - k]
    return sum(kept) / len(kept)


def test_iqm_matches_an_independent_computation_and_rliable():
    metrics = intervals.rliable("metrics")
    assert intervals.iqm([100.0, 1.0, 3.0, 2.0, 4.0]) == 3.0  # 5 runs: the middle 3
    assert intervals.iqm([1.0, 2.0, 9.0]) == 4.0  # 3 runs: nothing trimmed, the mean
    assert intervals.iqm([1.0, 2.0, 3.0, 4.0, 5.0, 60.0]) == 3.5  # 6 runs: int(1.5) = 1 cut each side
    rng = np.random.default_rng(0)
    for n in range(1, 16):
        values = rng.normal(50, 20, size=n)
        assert intervals.iqm(values) == pytest.approx(hand_iqm(values), rel=1e-12)
        assert intervals.iqm(values) == pytest.approx(scipy.stats.trim_mean(values, 0.25), rel=1e-12)
    matrix = rng.normal(size=(5, 3))  # runs x tasks: every run of every task pooled, as rliable
    assert intervals.iqm(matrix) == pytest.approx(metrics.aggregate_iqm(matrix), rel=1e-12)
    assert intervals.iqm(matrix) == pytest.approx(hand_iqm(matrix), rel=1e-12)
    np.testing.assert_allclose(intervals._iqm_columns(matrix), [hand_iqm(column) for column in matrix.T], rtol=1e-12)


def test_probability_of_improvement_matches_rliable_with_ties_and_unequal_runs():
    metrics = intervals.rliable("metrics")
    assert intervals.probability_of_improvement([[1.0, 2.0, 3.0]], [[2.0]]) == pytest.approx(0.5)  # 1 win + tie / 3
    assert intervals.probability_of_improvement([[5.0, 6.0]], [[1.0, 2.0, 3.0]]) == 1.0
    assert intervals.probability_of_improvement([[1.0, 4.0, 4.0]], [[1.0, 4.0, 4.0]]) == 0.5  # the same runs
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 4, size=(5, 3)).astype(float), rng.integers(0, 4, size=(3, 3)).astype(float)  # ties
    ours = intervals.probability_of_improvement(list(x.T), list(y.T))
    assert ours == pytest.approx(metrics.probability_of_improvement(x, y), rel=1e-12)


# ---------------------------------------------------------------------------------
# stratified bootstrap intervals
# ---------------------------------------------------------------------------------
def test_iqm_interval_is_rliables_stratified_bootstrap_reproduced_by_hand():
    """StratifiedBootstrap draws, per resample, a run index for every (run, task) cell from numpy's global RNG: runs
    are resampled within each task; the interval is the 2.5 and 97.5 percentiles of the resampled IQMs."""
    x = np.random.default_rng(2).normal(50, 10, size=(4, 3))
    intervals._iqm_interval.cache_clear()
    point, low, high = intervals.iqm_interval(list(x.T), reps=REPS)
    np.random.seed(0)
    resampled = [hand_iqm(x[np.random.choice(4, (4, 3)), np.arange(3)]) for _ in range(REPS)]
    assert point == pytest.approx(hand_iqm(x))
    assert (low, high) == pytest.approx(tuple(np.percentile(resampled, [2.5, 97.5])), rel=1e-12)


def test_difference_resamples_each_arm_and_task_independently_with_unequal_runs():
    rng = np.random.default_rng(3)
    first = [rng.normal(size=3), rng.normal(size=5)]  # 3 runs on one task, 5 on the other: one array per task
    second = [rng.normal(size=4), rng.normal(size=4)]  # as many on both: one runs x tasks array
    c = intervals.compare_intervals(first, second, reps=REPS)
    np.random.seed(0)
    differences = []
    for _ in range(REPS):  # rliable's StratifiedIndependentBootstrap: each array on its own, in order
        a = [col[np.random.choice(len(col), (len(col), 1))][:, 0] for col in first]
        b = np.column_stack(second)[np.random.choice(4, (4, 2)), np.arange(2)]
        differences.append(hand_iqm(np.concatenate(a)) - hand_iqm(b))
    assert c["iqm_difference"] == pytest.approx(hand_iqm(np.concatenate(first)) - hand_iqm(np.concatenate(second)))
    assert (c["ci_low"], c["ci_high"]) == pytest.approx(tuple(np.percentile(differences, [2.5, 97.5])), rel=1e-12)


def test_stratification_keeps_every_task_in_every_resample():
    """Two tasks far apart, 3 runs each: a stratified resample always holds 3 runs of each, so the IQM (the middle 4
    of 6: two of each task) stays within [50, 52]; resampling the 6 pooled runs would reach ~1 and ~101."""
    columns = [np.array([0.0, 1.0, 2.0]), np.array([100.0, 101.0, 102.0])]
    intervals._iqm_interval.cache_clear()
    point, low, high = intervals.iqm_interval(columns, reps=REPS)
    assert point == pytest.approx(51.0) and 50.0 <= low <= high <= 52.0


def test_intervals_cover_the_truth_on_synthetic_data():
    """Normal runs: the population IQM is the mean. 95% intervals from 20 runs cover it in about 95% of data sets
    (percentile bootstrap: a little less), and are not trivially wide (the IQM's standard error is ~3.7 here); the
    difference's interval covers the true difference with 8 vs 5 runs."""
    rng = np.random.default_rng(4)
    covered_iqm, covered_difference, widths = [], [], []
    for trial in range(30):
        _, low, high = intervals.iqm_interval([rng.normal(60.0, 15.0, size=20)], reps=400, seed=trial)
        covered_iqm.append(low <= 60.0 <= high)
        widths.append(high - low)
    for trial in range(20):
        c = intervals.compare_intervals(
            [rng.normal(70.0, 10.0, size=8)], [rng.normal(60.0, 10.0, size=5)], reps=400, seed=trial
        )
        covered_difference.append(c["ci_low"] <= 10.0 <= c["ci_high"])
    assert np.mean(covered_iqm) >= 0.8 and np.mean(covered_difference) >= 0.8 and 8 < np.mean(widths) < 20


def test_a_fixed_seed_gives_identical_intervals_and_leaves_the_global_rng_alone():
    rng = np.random.default_rng(5)
    first, second = [rng.normal(size=5), rng.normal(size=5)], [rng.normal(size=3), rng.normal(size=3)]
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    once, twice = (intervals.compare_intervals(first, second, reps=REPS, seed=0) for _ in range(2))
    assert once == twice
    assert np.array_equal(np.random.get_state()[1], before)
    assert intervals.compare_intervals(first, second, reps=REPS, seed=1) != once
    intervals._iqm_interval.cache_clear()
    again = intervals.iqm_interval(first, reps=REPS)
    intervals._iqm_interval.cache_clear()
    assert intervals.iqm_interval(first, reps=REPS) == again


# ---------------------------------------------------------------------------------
# verdicts and rows
# ---------------------------------------------------------------------------------
OURS, BASE = np.array([80.0, 82.0, 85.0, 79.0, 90.0]), np.array([30.0, 35.0, 28.0])


def per_run_of(values: dict, metric: str = "late") -> dict:
    return {key: [{metric: float(v)} for v in runs] for key, runs in values.items()}


def test_verdict_holds_reversed_and_tie():
    held = intervals.compare_intervals([OURS], [BASE], reps=REPS)
    assert held["result"] == "holds" and held["ci_low"] > 0
    assert (held["p_improvement"], held["p_low"], held["p_high"]) == (1.0, 1.0, 1.0)
    swapped = intervals.compare_intervals([BASE], [OURS], reps=REPS)
    assert swapped["result"] == "reversed" and swapped["ci_high"] < 0 and swapped["p_high"] == 0.0
    same = intervals.compare_intervals([OURS], [OURS.copy()], reps=REPS)
    assert same["result"] == "tie" and same["ci_low"] < 0 < same["ci_high"] and same["p_improvement"] == 0.5
    assert intervals.verdict(0.0, 3.0) == "tie" and intervals.verdict(0.1, 3.0) == "holds"


def test_claim_rows_per_task_and_across_tasks():
    per_run = per_run_of(
        {
            ("medium", "ours"): OURS,
            ("medium", "base"): BASE,
            ("medium", "twin"): OURS + 0.5,
            ("replay", "ours"): OURS - 10,
            ("replay", "base"): BASE + 5,
            ("replay", "twin"): OURS - 10.5,
        }
    )
    claims = [
        ("beats base", "late", [("ours", "base")]),
        ("beats both", "late", [("ours", "base"), ("ours", "twin")]),
        ("base best", "late", [("base", "ours")]),
        ("missing arm", "late", [("ours", "base"), ("ours", "awac")]),
    ]
    rows = intervals.claim_interval_rows(per_run, claims, reps=300)
    verdicts = {(r["claim"], r["task"]): r["result"] for r in rows if not r["first"]}
    assert verdicts == {
        ("beats base", "medium"): "verdict: reproduced (1/1 comparisons run)",
        ("beats base", "replay"): "verdict: reproduced (1/1 comparisons run)",
        ("beats base", "all tasks"): "verdict: reproduced (1/1 comparisons run)",
        ("beats both", "medium"): "verdict: inconclusive (2/2 comparisons run)",
        ("beats both", "replay"): "verdict: inconclusive (2/2 comparisons run)",
        ("beats both", "all tasks"): "verdict: inconclusive (2/2 comparisons run)",
        ("base best", "medium"): "verdict: not reproduced (1/1 comparisons run)",
        ("base best", "replay"): "verdict: not reproduced (1/1 comparisons run)",
        ("base best", "all tasks"): "verdict: not reproduced (1/1 comparisons run)",
        ("missing arm", "medium"): "verdict: inconclusive (1/2 comparisons run)",
        ("missing arm", "replay"): "verdict: inconclusive (1/2 comparisons run)",
        ("missing arm", "all tasks"): "verdict: inconclusive (1/2 comparisons run)",
    }
    row = next(r for r in rows if r["first"] == "ours" and r["second"] == "base" and r["task"] == "all tasks")
    assert set(row) == set(intervals.COMPARISON_COLUMNS) and row["tasks"] == "medium+replay"
    assert (row["n_first"], row["n_second"]) == (10, 6) and row["result"] == "holds"
    assert row["iqm_first"] == pytest.approx(hand_iqm(np.concatenate([OURS, OURS - 10])), abs=0.005)
    assert row["ci_first_low"] <= row["iqm_first"] <= row["ci_first_high"]
    assert row["iqm_difference"] == pytest.approx(row["iqm_first"] - row["iqm_second"], abs=0.011)
    assert [r["task"] for r in rows if r["claim"] == "beats base"] == ["medium"] * 2 + ["replay"] * 2 + ["all tasks"] * 2


def test_lower_is_better_and_too_few_runs():
    per_run = per_run_of(
        {("t", "ours"): [1.0, 2.0, 1.5], ("t", "sac-ft"): [30.0, 35.0, 40.0], ("t", "one"): [1.0]}, metric="drop"
    )
    row = intervals.comparison_row(per_run, "t", ["t"], "ours", "sac-ft", "drop", reps=REPS)
    assert row["result"] == "holds" and row["iqm_difference"] < 0 and row["ci_low"] <= row["ci_high"] < 0
    assert row["p_improvement"] == 1.0  # P(ours' drop smaller)
    row = intervals.comparison_row(per_run, "t", ["t"], "ours", "one", "drop", reps=REPS)
    assert row["result"] == "n/a (fewer than 2 runs)" and row["n_second"] == 1


def test_iqm_rows_skip_non_finite_values():
    per_run = {
        ("a", "ours"): [{"late": 1.0, "auc": np.nan}, {"late": 3.0, "auc": np.nan}],
        ("b", "ours"): [{"late": 5.0, "auc": 2.0}, {"late": 7.0, "auc": 4.0}],
    }
    rows = intervals.iqm_rows(per_run, reps=200)
    late = [r for r in rows if r["metric"] == "late"]
    assert [(r["task"], r["n_runs"], r["iqm"]) for r in late] == [("a", 2, 2.0), ("b", 2, 6.0), ("all tasks", 4, 4.0)]
    auc = {r["task"]: r for r in rows if r["metric"] == "auc"}
    assert np.isnan(auc["a"]["iqm"]) and auc["b"]["iqm"] == 3.0 and np.isnan(auc["all tasks"]["iqm"])


def test_curve_rows_on_the_steps_every_run_has():
    runs = [(STEPS[:6], np.arange(6.0) * k) for k in (1.0, 2.0, 3.0)] + [(STEPS[:7], np.arange(7.0))]
    rows = intervals.curve_rows({("t", "ours"): runs, ("t", "flat"): [(STEPS[:6], np.ones(6))] * 3}, reps=200)
    ours = [r for r in rows if r["arm"] == "ours"]
    assert [r["step"] for r in ours] == list(STEPS[:6]) and all(r["n_runs"] == 4 for r in ours)
    assert [r["iqm"] for r in ours] == pytest.approx([hand_iqm([i, 2 * i, 3 * i, i]) for i in range(6)], abs=0.005)
    assert all(r["ci_low"] <= r["iqm"] <= r["ci_high"] for r in ours)
    assert all(r["ci_low"] == r["iqm"] == r["ci_high"] == 1.0 for r in rows if r["arm"] == "flat")


# ---------------------------------------------------------------------------------
# figures, command line, missing rliable
# ---------------------------------------------------------------------------------
def test_figures_give_a_label_the_same_colour_everywhere(tmp_path):
    per_run = per_run_of(
        {
            ("medium", "ours"): OURS,
            ("medium", "base"): BASE,
            ("replay", "ours"): OURS,
            ("replay", "base"): BASE,
            ("replay", "twin"): OURS,
        }
    )
    rows = intervals.comparison_rows(per_run, [("ours", "base"), ("ours", "twin")], "late", reps=200)
    curves = intervals.curve_rows(
        {
            (t, a): [(STEPS[:5], np.full(5, v)) for v in values[:3]]
            for (t, a), values in {k: [r["late"] for r in v] for k, v in per_run.items()}.items()
        },
        reps=200,
    )
    labels = {"ours": "Ours (balanced, N=5)", "base": "SAC-ft", "twin": "Twin"}
    colors = {"SAC-ft": "tab:orange"}
    figure = intervals.plot_iqm_curves(curves, tmp_path / "curves.png", colors, labels)
    lines = {line.get_label(): line.get_color() for ax in figure.axes for line in ax.get_lines()}
    assert to_rgba(lines["SAC-ft"]) == to_rgba("tab:orange")
    figure = intervals.plot_improvement(rows, tmp_path / "poi.png", "ours", "late", colors, labels)
    bars = [patch for ax in figure.axes for patch in ax.patches if patch.get_alpha() > 0]
    assert len(figure.axes) == 2 * 3  # a twin axis per panel: medium, replay, all tasks (twin: on replay only)
    default = intervals.colors_for(["Twin", "Ours (balanced, N=5)"])  # assigned while drawing: kept
    assert [to_rgba(bar.get_facecolor(), 1) for bar in bars] == [
        to_rgba(c)
        for c in (  # each bar: the baseline's
            "tab:orange",
            "tab:orange",
            default["Twin"],
            "tab:orange",
        )
    ]
    assert to_rgba(lines["Twin"]) == to_rgba(default["Twin"]) and to_rgba(lines["Ours (balanced, N=5)"]) == to_rgba(
        default["Ours (balanced, N=5)"]
    )
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "poi.png").stat().st_size > 0


def test_command_line_reads_tensorboard_runs(tmp_path, capsys):
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    rng = np.random.default_rng(6)
    for task, method, level, seeds in (
        ("hopper-medium", "ours", 70, 3),
        ("hopper-medium", "sac-ft", 30, 4),
        ("hopper-medium-replay", "ours", 80, 3),
        ("hopper-medium-replay", "sac-ft", 40, 3),
    ):
        for seed in range(1, seeds + 1):
            writer = EventFileWriter(str(tmp_path / "runs" / f"{task}__{method}__seed{seed}"))
            for step in range(0, 6001, 1000):
                value = summary_pb2.Summary.Value(tag="eval/normalized_score", simple_value=level + rng.normal(0, 3))
                writer.add_event(event_pb2.Event(step=step, wall_time=1.0 + step, summary=summary_pb2.Summary(value=[value])))
            writer.close()
    runs = tmp_path / "runs"
    intervals.main(
        [
            "--runs",
            f"Ours (N=5)={runs}/*__ours__seed*",
            "--runs",
            f"SAC-ft={runs}/*__sac-ft__seed*",
            "--late-from",
            "3000",
            "--reps",
            "100",
            "--out-dir",
            str(tmp_path / "out"),
        ]
    )
    assert "comparisons.csv" in capsys.readouterr().out
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"iqm.csv", "curves.csv", "comparisons.csv", "iqm_curves.png", "improvement_late.png"} <= names
    with open(tmp_path / "out" / "comparisons.csv") as f:
        rows = list(intervals.csv.DictReader(f))
    late = [r for r in rows if r["metric"] == "late"]
    assert sorted((r["task"], r["n_first"], r["n_second"], r["result"]) for r in late) == [
        ("all tasks", "6", "7", "holds"),
        ("hopper-medium", "3", "4", "holds"),
        ("hopper-medium-replay", "3", "3", "holds"),
    ]
    with pytest.raises(SystemExit, match="no run folder matches"):
        intervals.main(["--runs", f"X={runs}/nothing*", "--out-dir", str(tmp_path / "out")])


def test_missing_rliable_says_how_to_install(monkeypatch):
    for name in ("rliable", "rliable.library"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    with pytest.raises(SystemExit, match=r"rliable.*pip install -r requirements-test.txt"):
        intervals.compare_intervals([OURS], [BASE], reps=10)


# ---------------------------------------------------------------------------------
# two-stage bootstrap: the pretraining as the unit (evidence.py's independent-pretraining check)
# ---------------------------------------------------------------------------------
def test_two_stage_resample_frequencies_match_the_enumerated_distribution():
    """Two pretrainings of two runs each: the exact distribution of a resample's mean, enumerated over every choice
    of groups and then of runs within them (4 x 16 equally likely outcomes), against 40,000 resamples."""
    import itertools

    groups = [[0.0, 1.0], [10.0, 12.0]]
    exact = {}
    for chosen in itertools.product(range(2), repeat=2):
        for picks in itertools.product(range(2), repeat=4):
            runs = [
                groups[chosen[0]][picks[0]],
                groups[chosen[0]][picks[1]],
                groups[chosen[1]][picks[2]],
                groups[chosen[1]][picks[3]],
            ]
            exact[np.mean(runs)] = exact.get(np.mean(runs), 0) + 1 / 64
    reps = 40_000
    resampled = intervals.two_stage_resample(groups, reps, np.random.default_rng(0))
    assert resampled.shape == (reps, 4)
    means = resampled.mean(axis=1)
    for value, p in exact.items():
        frequency = np.mean(np.isclose(means, value))
        assert abs(frequency - p) < 4 * np.sqrt(p * (1 - p) / reps) + 1e-9, (value, frequency, p)
    assert sum(exact.values()) == pytest.approx(1.0) and set(np.round(means, 9)) <= set(np.round(list(exact), 9))
    # a resample keeps pairs from one pretraining: both runs of a drawn group come from that group
    halves = resampled.reshape(reps, 2, 2)
    assert np.all((halves < 5).all(axis=2) | (halves > 5).all(axis=2))


def test_two_stage_needs_equal_pretraining_sizes():
    with pytest.raises(ValueError, match="same number of runs"):
        intervals.two_stage_resample([[1.0, 2.0], [3.0]], 10, np.random.default_rng(0))


def test_two_stage_compare_by_hand_and_wider_than_the_run_level_bootstrap():
    """Point estimates are the IQMs and P(improvement) of all runs; the intervals are the percentiles of the
    statistics over resamples drawn in the documented order; a spread between pretrainings (3 pretrainings far apart,
    runs within each close) makes the two-stage interval wider than resampling the 6 runs as if independent."""
    first = [[[40.0, 41.0], [60.0, 62.0], [80.0, 79.0]]]  # one task, 3 pretrainings x 2 runs
    second = [[[55.0], [58.0], [61.0], [57.0], [59.0]]]  # 5 pretrainings of one run
    c = intervals.two_stage_compare(first, second, reps=REPS)
    rng = np.random.default_rng(0)
    a, b = intervals.two_stage_resample(first[0], REPS, rng), intervals.two_stage_resample(second[0], REPS, rng)
    differences = [hand_iqm(x) - hand_iqm(y) for x, y in zip(a, b)]
    improvement = [np.mean([(u > v) + 0.5 * (u == v) for u in x for v in y]) for x, y in zip(a, b)]
    flat_a, flat_b = np.ravel(first[0]), np.ravel(second[0])
    assert c["iqm_difference"] == pytest.approx(hand_iqm(flat_a) - hand_iqm(flat_b))
    assert c["p_improvement"] == pytest.approx(np.mean([(u > v) + 0.5 * (u == v) for u in flat_a for v in flat_b]))
    assert (c["ci_low"], c["ci_high"]) == pytest.approx(tuple(np.percentile(differences, [2.5, 97.5])), rel=1e-12)
    assert (c["p_low"], c["p_high"]) == pytest.approx(tuple(np.percentile(improvement, [2.5, 97.5])), rel=1e-12)
    intervals._iqm_interval.cache_clear()
    _, run_low, run_high = intervals.iqm_interval([flat_a], reps=REPS)
    assert c["ci_first_high"] - c["ci_first_low"] > run_high - run_low
    assert c["result"] == intervals.verdict(c["ci_low"], c["ci_high"])


def test_two_stage_curve_rows_give_each_step_two_stage_compares_interval():
    """Each step's band is the interval two_stage_compare gives that step's values (one resample serves every step),
    the point is the IQM of all runs there, only the steps every run has count, and a spread between pretrainings
    widens the band beyond curve_rows' run-level one."""
    offsets = [[0.0, 2.0], [30.0, 31.0], [60.0, 64.0]]  # 3 pretrainings far apart, 2 runs each
    groups = [[(STEPS[:5], offset + 5.0 * np.arange(5)) for offset in group] for group in offsets]
    groups[1][0] = (STEPS[:6], 30.0 + 5.0 * np.arange(6))  # one more evaluation in one run: left out
    rows = intervals.two_stage_curve_rows({("t", "ours"): groups, ("t", "flat"): [[(STEPS[:5], np.ones(5))] * 2] * 3})
    ours = [r for r in rows if r["arm"] == "ours"]
    assert [r["step"] for r in ours] == list(STEPS[:5])
    assert all(r["n_pretrainings"] == 3 and r["n_runs"] == 6 for r in ours)
    for i, row in enumerate(ours):
        at_step = [[offset + 5.0 * i for offset in group] for group in offsets]
        c = intervals.two_stage_compare([at_step], [at_step])
        assert row["iqm"] == pytest.approx(hand_iqm(np.ravel(at_step)), abs=0.005)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((c["ci_first_low"], c["ci_first_high"]), abs=0.005)
    runs = [run for group in groups for run in group]
    single = [r for r in intervals.curve_rows({("t", "ours"): runs}, reps=REPS)]
    assert all(a["ci_high"] - a["ci_low"] > b["ci_high"] - b["ci_low"] for a, b in zip(ours, single))
    assert all(r["ci_low"] == r["iqm"] == r["ci_high"] == 1.0 for r in rows if r["arm"] == "flat")
    with pytest.raises(ValueError, match="same number of runs"):
        intervals.two_stage_curve_rows({("t", "ours"): [groups[0], groups[1][:1]]}, reps=10)


def test_two_stage_claim_rows_verdicts_lower_is_better_and_too_few_pretrainings():
    runs = lambda *values: [{"late": v, "drop": -v} for v in values]
    per_group = {
        ("t1", "ours"): [runs(80, 82), runs(85, 84), runs(90, 88)],
        ("t1", "base"): [runs(30), runs(35), runs(32), runs(31), runs(36)],
        ("t2", "ours"): [runs(70, 71), runs(72, 73), runs(69, 70)],
        ("t2", "base"): [runs(20)],  # one pretraining: no interval on t2, and t2 stays out of "all"
        ("t3", "ours"): [runs(60, 61), runs(62, 64)],
        ("t3", "base"): [runs(50), runs(52)],
    }
    claims = [("(a)", "late", [("ours", "base")]), ("(b)", "drop", [("ours", "base")])]
    rows = intervals.two_stage_claim_rows(per_group, claims, reps=REPS)
    row = lambda claim, task, result=None: next(
        r for r in rows if r["claim"] == claim and r["task"] == task and (r["first"] == "ours") == (result is None)
    )
    assert row("(a)", "t1")["result"] == "holds" and row("(a)", "t1")["n_pretrainings_first"] == 3
    assert row("(a)", "t1")["n_first"] == 6 and row("(a)", "t1")["n_second"] == 5
    assert row("(a)", "t1", "v")["result"] == "verdict: reproduced (1/1 comparisons run)"
    assert row("(a)", "t2")["result"] == "n/a (fewer than 2 pretrainings)"
    assert row("(a)", "t2", "v")["result"] == "verdict: inconclusive (0/1 comparisons run)"
    across = [r for r in rows if r["task"] == intervals.ACROSS and r["first"] == "ours"]
    assert [(r["claim"], r["tasks"], r["n_pretrainings_first"], r["n_second"]) for r in across] == [
        ("(a)", "t1+t3", 5, 7),
        ("(b)", "t1+t3", 5, 7),
    ]
    drop = row("(b)", "t1")  # drop: lower is better; ours' drop (-85) is lower, so the comparison holds
    assert drop["result"] == "holds" and drop["iqm_difference"] < 0 and drop["ci_high"] < 0
    assert drop["ci_first_low"] <= drop["iqm_first"] <= drop["ci_first_high"]
