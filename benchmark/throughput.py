"""Throughput of the vectorized ensemble updates against a plain per-member loop and the machine's matmul rate.

CQL section (cql_pretrain.py, SPEC §3, issue 3): one CQL update of all N members (actor eq. 2, alpha, critic eq. 3,
target update) with the default 2x256 networks and batch 256, timed
  * vectorized: cql_update() on one N-member EnsembleActor/EnsembleCritic (batched [N, in, out] weights), and
  * loop:       the same cql_update() on N separate 1-member networks (own optimizers), one after the other,
in the same process (on the CPU with the malloc setting cql_pretrain.py applies, keep_freed_memory_on_cpu, unless
--default-malloc), alternating the two so that load from other processes on a shared machine hits both alike;
updates/s is taken from the best (minimum) time of the timed updates, the least disturbed by other processes.
The machine's matmul rate is measured in the same run (float32 torch.mm of 256x1024 @ 1024x1024), and the
achieved rate of an update is its analytic FLOP count (cql_update_flops: every matmul of the forward and
backward passes, elementwise work ignored) over its best time.

    python benchmark/throughput.py --device cpu --n-ensemble 1 2 5 --iters 10
    python benchmark/throughput.py --device cuda --n-ensemble 1 2 5 10 --iters 100 --out benchmark/results/throughput_cql_cuda.csv

Writes a CSV (command and machine in '#' header lines; read with pandas.read_csv(path, comment="#")) and a PNG.
"""
import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """Import a top-level script (importable without side effects) by path."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(device, iters: int) -> float:
    """The machine's float32 matmul rate: 256x1024 @ 1024x1024, best of `iters` timed repetitions."""
    a, b = torch.randn(256, 1024, device=device), torch.randn(1024, 1024, device=device)
    reps = 200 if device.type == "cuda" else 20
    for _ in range(3):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        sync(device)
        best = min(best, (time.perf_counter() - start) / reps)
    return 2 * 256 * 1024 * 1024 / best / 1e9


def linear_flops(rows: int, sizes, weight_grad: bool, input_grad_from: int | None) -> int:
    """Matmul FLOPs of an MLP over `rows` inputs: forward, weight gradients, and input gradients of the layers
    from index `input_grad_from` on (None: no backward through the inputs)."""
    total = 0
    for k, (n_in, n_out) in enumerate(sizes):
        mm = 2 * rows * n_in * n_out
        total += mm  # forward
        total += mm if weight_grad else 0
        total += mm if input_grad_from is not None and k >= input_grad_from else 0
    return total


def cql_update_flops(n_members: int, obs_dim: int, act_dim: int, hidden: int, batch: int, n_actions: int) -> int:
    """Analytic matmul FLOPs of one cql_update() of N members (see cql_pretrain.cql_update for the passes)."""
    actor = [(obs_dim, hidden), (hidden, hidden), (hidden, 2 * act_dim)]
    critic = [(obs_dim + act_dim, hidden), (hidden, hidden), (hidden, 1)]
    per_member = (
        # actor on [s; s'] (2B rows): forward, weight grads, input grads of layers 2-3 (the observations need none)
        linear_flops(2 * batch, actor, weight_grad=True, input_grad_from=1)
        # target twins on (s', a'): forward only
        + 2 * linear_flops(batch, critic, weight_grad=False, input_grad_from=None)
        # twins on the data action and 3 * n_actions sampled actions per state: forward, weight grads, input grads 2-3
        + 2 * linear_flops(batch * (1 + 3 * n_actions), critic, weight_grad=True, input_grad_from=1)
        # twins with detached weights on (s, a~pi(s)) for the actor loss: forward, input grads of every layer
        + 2 * linear_flops(batch, critic, weight_grad=False, input_grad_from=0)
    )
    return n_members * per_member


def make_members(cql, n, obs_dim, act_dim, hidden, device):
    """Networks, optimizers and log alpha of an n-member ensemble, as cql_pretrain.main() builds them."""
    hidden_sizes = [hidden, hidden]
    actor = cql.EnsembleActor(obs_dim, act_dim, hidden_sizes, n).to(device)
    critic = cql.EnsembleCritic(obs_dim, act_dim, hidden_sizes, n).to(device)
    target = cql.EnsembleCritic(obs_dim, act_dim, hidden_sizes, n).to(device)
    target.load_state_dict(critic.state_dict())
    log_alpha = torch.zeros(n, device=device, requires_grad=True)
    optimizers = (torch.optim.Adam(actor.parameters(), lr=1e-4), torch.optim.Adam(critic.parameters(), lr=3e-4),
                  torch.optim.Adam([log_alpha], lr=1e-4))
    return (actor, critic, target, log_alpha, *optimizers)


def cql_section(args, device, peak, cql):
    rows = []
    rng = np.random.default_rng(0)
    size = 100_000  # a synthetic dataset: the update's cost does not depend on the values
    data = {
        "observations": torch.randn(size, args.obs_dim, device=device),
        "actions": torch.rand(size, args.act_dim, device=device) * 2 - 1,
        "rewards": torch.randn(size, device=device),
        "next_observations": torch.randn(size, args.obs_dim, device=device),
        "terminals": (torch.rand(size, device=device) < 0.01).float(),
    }
    hyper = dict(gamma=0.99, tau=5e-3, alpha_cql=5.0, n_actions=args.n_actions, target_entropy=-float(args.act_dim))
    for n in args.n_ensemble:
        torch.manual_seed(0)
        vectorized = make_members(cql, n, args.obs_dim, args.act_dim, args.hidden_dim, device)
        singles = [make_members(cql, 1, args.obs_dim, args.act_dim, args.hidden_dim, device) for _ in range(n)]

        def step_vectorized():
            batch = cql.sample_batch(data, rng, n, args.batch_size)
            cql.cql_update(*vectorized, batch, **hyper)

        def step_loop():
            batch = cql.sample_batch(data, rng, n, args.batch_size)  # the same [N, B] draw, split per member
            for i, member in enumerate(singles):
                cql.cql_update(*member, {k: v[i : i + 1] for k, v in batch.items()}, **hyper)

        times = {"vectorized": [], "loop": []}
        for _ in range(args.warmup):
            step_vectorized()
            step_loop()
        for _ in range(args.iters):  # alternate, so load from other processes hits both modes alike
            for mode, fn in (("vectorized", step_vectorized), ("loop", step_loop)):
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
                times[mode].append(time.perf_counter() - start)
        flops = cql_update_flops(n, args.obs_dim, args.act_dim, args.hidden_dim, args.batch_size, args.n_actions)
        for mode, ts in times.items():
            best = min(ts)  # best of the timed updates: the least disturbed by other processes (as timeit advises)
            achieved = flops / best / 1e9
            rows.append({
                "section": "cql", "device": device.type, "threads": torch.get_num_threads(),
                "malloc_tuned": device.type == "cpu" and not args.default_malloc, "n_ensemble": n,
                "mode": mode, "updates_per_s": 1.0 / best, "ms_per_update": 1e3 * best,
                "ms_median": 1e3 * statistics.median(ts), "ms_max": 1e3 * max(ts), "gflop_per_update": flops / 1e9,
                "achieved_gflops": achieved, "matmul_peak_gflops": peak, "share_of_peak": achieved / peak,
            })
        speedup = min(times["loop"]) / min(times["vectorized"])
        for row in rows[-2:]:
            row["vectorized_speedup"] = speedup
        print(f"N={n}: vectorized {rows[-2]['updates_per_s']:.2f} upd/s ({rows[-2]['share_of_peak']:.0%} of peak), "
              f"loop {rows[-1]['updates_per_s']:.2f} upd/s ({rows[-1]['share_of_peak']:.0%}), speedup {speedup:.2f}x",
              flush=True)
    return rows


def write_results(rows, args, peak, out: Path):
    out.parent.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0])
    with open(out, "w") as f:
        f.write(f"# command: python benchmark/{Path(__file__).name} {' '.join(sys.argv[1:])}\n")
        f.write(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                f"matmul peak {peak:.1f} GFLOP/s (256x1024 @ 1024x1024 float32, same run)\n")
        f.write(f"# networks 2x{args.hidden_dim}, batch {args.batch_size}, obs/act dims {args.obs_dim}/{args.act_dim}, "
                f"n_actions {args.n_actions}, {args.iters} timed updates per mode (best reported; median in ms_median) "
                f"after {args.warmup} warm-up\n")
        if args.note:
            f.write(f"# note: {args.note}\n")
        f.write(",".join(columns) + "\n")
        for row in rows:
            f.write(",".join(f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]) for c in columns) + "\n")
    print(f"wrote {out}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted({r["n_ensemble"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for offset, mode in ((-0.2, "vectorized"), (0.2, "loop")):
        by_n = {r["n_ensemble"]: r for r in rows if r["mode"] == mode}
        x = np.arange(len(ns)) + offset
        axes[0].bar(x, [by_n[n]["updates_per_s"] for n in ns], width=0.4, label=mode)
        axes[1].bar(x, [100 * by_n[n]["share_of_peak"] for n in ns], width=0.4, label=mode)
    for ax, label in zip(axes, ("CQL updates/s (all N members)", "% of matmul peak")):
        ax.set_xticks(np.arange(len(ns)), [f"N={n}" for n in ns])
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(f"cql_update throughput, {rows[0]['device']} ({rows[0]['threads']} threads), peak {peak:.0f} GFLOP/s")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)
    print(f"wrote {out.with_suffix('.png')}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device to time on")
    parser.add_argument("--n-ensemble", type=int, nargs="+", default=[1, 2, 5], help="ensemble sizes N")
    parser.add_argument("--iters", type=int, default=10, help="timed updates per mode and N (best reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates per mode and N first")
    parser.add_argument("--batch-size", type=int, default=256, help="minibatch per member")
    parser.add_argument("--hidden-dim", type=int, default=256, help="hidden width (2 layers)")
    parser.add_argument("--obs-dim", type=int, default=17, help="observation dim (17: HalfCheetah/Walker2d)")
    parser.add_argument("--act-dim", type=int, default=6, help="action dim (6: HalfCheetah/Walker2d)")
    parser.add_argument("--n-actions", type=int, default=10, help="CQL sampled actions per state and kind")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="skip the glibc malloc setting cql_pretrain.py applies on the CPU (shows its effect)")
    parser.add_argument("--note", type=str, default="", help="free text written into the CSV header")
    parser.add_argument("--out", type=Path, default=None, help="CSV path (default benchmark/results/throughput_cql_<device>.csv)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no GPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cql = load_script("cql_pretrain")
    if device.type == "cpu" and not args.default_malloc:
        cql.keep_freed_memory_on_cpu()  # as cql_pretrain.main() does on the CPU
    peak = matmul_gflops(device, max(args.iters, 5))
    print(f"matmul peak: {peak:.1f} GFLOP/s on {device} ({torch.get_num_threads()} threads)", flush=True)
    rows = cql_section(args, device, peak, cql)
    peak_after = matmul_gflops(device, max(args.iters, 5))  # again at the end: the machine may be shared
    print(f"matmul peak at the end: {peak_after:.1f} GFLOP/s", flush=True)
    peak = max(peak, peak_after)
    for row in rows:
        row["matmul_peak_gflops"] = peak
        row["share_of_peak"] = row["achieved_gflops"] / peak
    write_results(rows, args, peak, args.out or REPO_ROOT / "benchmark" / "results" / f"throughput_cql_{args.device}.csv")


if __name__ == "__main__":
    main()
