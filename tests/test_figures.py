"""Figures readable at the width GitHub shows them (issue 22): one colour per method in every figure (plot.py's
METHOD_COLOURS, by legend label), axes filling the canvas, the legend in a band below them, short titles;
plot_offline.py drawn the same way."""

import csv
import re
import sys

import matplotlib.colors as mcolors
import numpy as np
import pytest

from conftest import REPO_ROOT, load_script

plot = load_script("benchmark/plot", "plot_for_figure_tests")
evidence = load_script("benchmark/evidence", "evidence_for_figure_tests")


def write_run(path, tags: dict):
    """A TensorBoard run: {tag: [(step, value), ...]}."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(path))
    for tag, points in tags.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()


def test_every_method_keeps_one_colour_across_the_tools():
    """evidence.py's labels have fixed, distinct colours; paper.sh's, cpu_scale.sh's and demo.sh's names of the same
    arms get the same ones."""
    fixed = {label: plot.METHOD_COLOURS[label] for label in evidence.LABELS.values()}  # KeyError: a label without one
    assert len(set(fixed.values())) == len(fixed)
    colour_of_arm = {arm: fixed[label] for arm, label in evidence.LABELS.items()}
    paper = {"ours": "balanced-N5", "sac-ft": "sac-ft", "awac": "awac-N5", "bcq-ft": "bcq-ft-N1", "sac": "sac"}
    colours = plot.method_colours([plot.LABELS[name] for name in paper])
    assert [colours[plot.LABELS[name]] for name in paper] == [colour_of_arm[arm] for arm in paper.values()]
    # cpu_scale.sh: figure NAME FIGURES -- "LABEL=ARM" ...
    script = (REPO_ROOT / "benchmark" / "cpu_scale.sh").read_text()
    pairs = re.findall(
        r'"([^"]*)=([A-Za-z0-9-]+)"',
        "\n".join(line for line in script.replace("\\\n", " ").splitlines() if line.startswith("figure ")),
    )
    arm_of = {"bcq-ft": "bcq-ft-N1", "fqe-init": "fqe-init-N5"}
    assert len(pairs) >= 12
    for label, arm in pairs:
        label = label.replace("$BCQ_N", "2")
        assert plot.method_colours([label])[label] == colour_of_arm[arm_of.get(arm, arm)], (label, arm)
    demo = re.search(r'--method "([^"=]+)=', (REPO_ROOT / "demo.sh").read_text()).group(1)
    assert plot.method_colours([demo])[demo] == colour_of_arm["balanced-N5"]
    others = plot.method_colours(["my idea", "another idea"])
    assert len(set(others.values())) == 2 and not set(others.values()) & set(plot.METHOD_COLOURS.values())


def test_one_panel_figure_fills_its_canvas(tmp_path, monkeypatch):
    """As evidence.py draws fig3: five methods, a long panel title. The axes take most of the canvas, the legend sits
    below them in at most two rows, every title fits on at most two lines, each line has its method's colour."""
    rng = np.random.default_rng(0)
    arms = {"balanced-N5": "balanced-N5", "sac-ft": "sac-ft", "awac-N5": "awac-N5", "bcq-ft-N1": "bcq-ft-N1", "sac": "sac"}
    for arm in arms:
        for seed in (1, 2):
            write_run(
                tmp_path / "runs" / f"hopper-medium__{arm}__seed{seed}",
                {"eval/normalized_score": [(s, float(rng.uniform(0, 100))) for s in range(0, 50_001, 1000)]},
            )
    figures = []
    monkeypatch.setattr(plot.plt, "close", figures.append)  # keep the figure to measure it
    methods = [f"--method={evidence.LABELS[arm]}={tmp_path}/runs/*__{arm}__seed*" for arm in arms]
    plot.main(
        [
            *methods,
            "--one-panel",
            "--panel-title",
            "Hopper-v4, hopper-medium (CPU-scale D4RL recipe), 50k online steps",
            "--figures",
            "fig3",
            "--final-window",
            "3",
            "--formats",
            "png",
            "--out-dir",
            str(tmp_path / "out"),
        ]
    )
    (fig,) = figures
    assert (tmp_path / "out" / "fig3_score.png").exists()
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    assert width <= 1000  # shown at GitHub's width without shrinking its text much
    (ax,) = fig.axes
    axes_box, (legend,) = ax.get_window_extent(renderer), fig.legends
    legend_box = legend.get_window_extent(renderer)
    assert axes_box.width * axes_box.height > 0.5 * width * height
    assert legend_box.y1 <= axes_box.y0 and legend_box.height < 0.15 * height  # a compact band below the axes
    assert legend_box.width <= width
    for text in (ax.title, fig._suptitle):
        assert text.get_text().count("\n") <= 1 and text.get_window_extent(renderer).width <= width
    for line in ax.get_lines():
        assert mcolors.to_hex(line.get_color()) == plot.METHOD_COLOURS[line.get_label()]
    assert {line.get_label() for line in ax.get_lines()} == set(evidence.LABELS[arm] for arm in arms)


def test_plot_offline_draws_every_run_with_one_legend(tmp_path, monkeypatch):
    for name, offset in (("a", 0.0), ("b", 100.0)):
        write_run(
            tmp_path / name,
            {
                "eval/return": [(s, s / 10 + offset) for s in (1000, 2000, 3000)],
                **{f"eval/member_{i}_return": [(s, s / 10 + offset + 10 * i) for s in (1000, 2000, 3000)] for i in range(3)},
            },
        )
    (tmp_path / "datasets.csv").write_text("dataset,mean_return\nA,150.0\n")
    module = load_script("benchmark/plot_offline", "plot_offline_for_figure_tests")
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "plot_offline.py",
            "--run",
            f"a={tmp_path / 'a'}",
            "--run",
            f"b={tmp_path / 'b'}",
            "--dataset",
            "a=A",
            "--datasets-csv",
            str(tmp_path / "datasets.csv"),
            "--out",
            str(tmp_path / "cql_offline"),
        ],
    )
    module.main()
    fig = module.plt.gcf()
    with open(tmp_path / "cql_offline.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["step"], r["member_min"], r["member_max"], r["dataset_mean_return"]) for r in rows][:2] == [
        ("a", "1000", "100.0", "120.0", "150.0"),
        ("a", "2000", "200.0", "220.0", "150.0"),
    ]
    assert rows[-1]["dataset_mean_return"] == ""  # run b has no dataset row
    assert (tmp_path / "cql_offline.png").read_bytes()[:4] == b"\x89PNG"
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes)
    for ax in fig.axes:
        assert mcolors.to_hex(ax.get_lines()[0].get_color()) == plot.METHOD_COLOURS["CQL (offline)"]
    module.plt.close(fig)


@pytest.mark.parametrize(
    "label, method",
    [
        ("Ours (balanced replay + Q-ensemble)", "Ours (balanced, N=5)"),
        ("SAC (sac.py)", "SAC (from scratch)"),
        ("BCQ-ft (N=2)", "BCQ-ft (N=1)"),
        ("Ours, N=2 (seed 1)", "Ours, N=2"),
        ("Online-only", "Online only (N=5)"),
    ],
)
def test_labels_of_a_known_method_get_its_colour(label, method):
    assert plot.method_colours([label])[label] == plot.METHOD_COLOURS[method]
