"""benchmark/throughput.py: a --quick CPU run writes the CSV it promises, and the analytic FLOP counts are right."""

import csv
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import load_script

COLUMNS = [
    "script",
    "device",
    "N",
    "hidden",
    "batch",
    "variant",
    "updates_per_s",
    "ms_per_update",
    "gflop_per_update",
    "achieved_gflops",
    "peak_gflops",
    "share_of_peak",
    "notes",
]


@pytest.fixture(scope="module")
def throughput(repo_root):
    return load_script("benchmark/throughput")


def read_rows(path):
    with open(path) as f:
        lines = [line for line in f if not line.startswith("#")]
    return list(csv.DictReader(lines))


@pytest.mark.slow
def test_quick_cpu_run_writes_expected_rows(repo_root, tmp_path):
    out = tmp_path / "tp.csv"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            str(repo_root / "benchmark" / "throughput.py"),
            "--quick",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--scripts",
            "sac",
            "balanced_finetune",
            "finetune_loop",
            "--n-ensemble",
            "1",
            "2",
            "--loop-n-ensemble",
            "2",
            "--hidden-dim",
            "32",
            "--batch-size",
            "32",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out) as f:
        header = [line for line in f if line.startswith("#")]
    assert any(line.startswith("# command:") for line in header) and any("load avg" in line for line in header)
    rows = read_rows(out)
    assert list(rows[0].keys()) == COLUMNS
    got = sorted((r["script"], int(r["N"]), r["variant"]) for r in rows)
    assert got == sorted(
        [
            ("sac.sac_update", 1, "vectorized"),
            ("balanced_finetune.update_actor_critic", 1, "vectorized"),
            ("balanced_finetune.update_actor_critic", 2, "vectorized"),
            ("balanced_finetune.update_actor_critic", 2, "loop"),
            ("balanced_finetune.update_density_ratio", 1, "single"),
            ("balanced_finetune.py (whole loop)", 2, "whole_loop"),
        ]
    )
    for r in rows:
        assert r["device"] == "cpu" and r["batch"] == "32" and r["hidden"] == "32-32"
        rate, ms, gflop, peak = (float(r[k]) for k in ("updates_per_s", "ms_per_update", "gflop_per_update", "peak_gflops"))
        assert all(math.isfinite(x) and x > 0 for x in (rate, ms, gflop, peak)), r
        assert rate * ms == pytest.approx(1000.0, rel=1e-4)
        assert float(r["achieved_gflops"]) == pytest.approx(gflop * rate, rel=1e-4)
        assert float(r["share_of_peak"]) == pytest.approx(gflop * rate / peak, rel=1e-4)
        assert "load avg" in r["notes"]
        if r["variant"] != "whole_loop":  # the analytic count agreed with torch's FlopCounterMode on the real update
            assert "flops checked" in r["notes"], r["notes"]
    loop = next(r for r in rows if r["variant"] == "loop")
    assert "independent single-member SAC updates" in loop["notes"]
    assert out.with_suffix(".png").stat().st_size > 1000


def test_linear_flops_hand_computed(throughput):
    # one layer 3 -> 5 over 4 rows: a matmul is 2*4*3*5 = 120 FLOPs; forward + weight grad + input grad = 360
    assert throughput.linear_flops(4, [(3, 5)], weight_grad=True, input_grad_from=0) == 360
    assert throughput.linear_flops(4, [(3, 5)], weight_grad=False, input_grad_from=None) == 120
    # 2x256 critic on 17+6 inputs, batch 256, trained on data: forward 3 layers, weight grads 3, input grads of 2
    fwd = 2 * 256 * (23 * 256 + 256 * 256 + 256 * 1)
    assert throughput.linear_flops(256, throughput.mlp(23, [256, 256], 1), **throughput.TRAIN) == 3 * fwd - 2 * 256 * 23 * 256
    # fqe: N members x (target twins forward + twins trained) = N * 2 * (fwd + 3 fwd - first-layer input grad)
    assert throughput.fqe_update_flops(5, 17, 6, [256, 256], 256) == 5 * 2 * (4 * fwd - 2 * 256 * 23 * 256)


@pytest.mark.parametrize("n", [1, 3])
def test_balanced_flops_match_torch_counter(throughput, n):
    """The fine-tuning update's analytic count equals what torch counts on the real update_actor_critic."""
    torch.manual_seed(0)
    bf = throughput.load_script("balanced_finetune")
    S, A, B, h = 5, 2, 8, [16, 16]
    actor, critic, target = bf.EnsembleActor(S, A, h, n), bf.EnsembleCritic(S, A, h, n), bf.EnsembleCritic(S, A, h, n)
    log_alpha = torch.zeros((), requires_grad=True)
    opts = [torch.optim.Adam(p, lr=1e-3) for p in (actor.parameters(), critic.parameters(), [log_alpha])]
    batch = (torch.randn(B, S), torch.rand(B, A) * 2 - 1, torch.randn(B), torch.randn(B, S), torch.zeros(B))
    counted = throughput.counted_flops(
        lambda: bf.update_actor_critic(batch, actor, critic, target, log_alpha, *opts, -float(A), 0.99, 5e-3, n)
    )
    assert counted == throughput.balanced_update_flops(n, S, A, h, B)
