"""Sum-tree cost of one balanced-replay step: sample(256) + update(256) at 2^22 leaves.

Compares balanced_finetune.SumTree (numpy, vectorized level by level over the batch) with a plain
implementation of the same array layout that loops in Python over the batch and over the tree levels
(the structure of the authors' rlkit/baselines-style tree), in the same run on the same priorities.
Capacity 2,250,000 = a 2M-transition dataset plus 250k online steps, i.e. a tree with 2^22 leaves.
Target (issue 4): under 0.5 ms per sample+update for the vectorized tree.

    python benchmark/sumtree_bench.py                # writes benchmark/results/sumtree_bench.csv
"""

import argparse
import csv
import os
import platform
import sys
import time

import numpy as np

from repo import REPO_ROOT, load_script, written

bf = load_script("balanced_finetune")


class PlainSumTree:
    """Same layout as SumTree (root 1, leaves at n_leaves + j), one Python loop per index and per level."""

    def __init__(self, nodes: np.ndarray, n_leaves: int):
        self.nodes, self.n_leaves = nodes, n_leaves

    def update(self, indices, priorities):
        for index, priority in zip(indices.tolist(), priorities.tolist()):
            node = index + self.n_leaves
            change = priority - self.nodes[node]
            while node >= 1:
                self.nodes[node] += change
                node //= 2

    def sample(self, batch_size, rng):
        segment = self.nodes[1] / batch_size
        out = np.empty(batch_size, dtype=np.int64)
        for i in range(batch_size):
            mass = (i + rng.random()) * segment
            node = 1
            while node < self.n_leaves:
                left = 2 * node
                if mass < self.nodes[left] or self.nodes[left + 1] <= 0:
                    node = left
                else:
                    mass -= self.nodes[left]
                    node = left + 1
            out[i] = node - self.n_leaves
        return out


def time_steps(tree, n_steps, batch, capacity, rng):
    times = []
    for _ in range(n_steps):
        new_priorities = rng.uniform(1e-3, 10.0, batch)
        start = time.perf_counter()
        indices = tree.sample(batch, rng)
        tree.update(indices, new_priorities)
        times.append(time.perf_counter() - start)
    return np.array(times) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=2_250_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3000, help="timed steps of the vectorized tree")
    parser.add_argument("--plain-steps", type=int, default=200, help="timed steps of the plain Python tree")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmark" / "results" / "sumtree_bench.csv"))
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    tree = bf.SumTree(args.capacity)
    n_offline = min(2_000_000, args.capacity)
    leaves = np.ones(args.capacity)  # offline priority 1, online leaves at assorted priorities
    leaves[n_offline:] = rng.uniform(0.5, 4.0, args.capacity - n_offline)
    tree.set_all(leaves)
    plain = PlainSumTree(tree.nodes.copy(), tree.n_leaves)
    time_steps(tree, 50, args.batch, args.capacity, rng)  # warm-up (page faults, caches)

    rows = []
    for name, impl, steps in (
        ("vectorized SumTree (balanced_finetune.py)", tree, args.steps),
        ("plain per-sample Python loop", plain, args.plain_steps),
    ):
        ms = time_steps(impl, steps, args.batch, args.capacity, np.random.default_rng(1))
        rows.append(
            {
                "implementation": name,
                "leaves": tree.n_leaves,
                "capacity": args.capacity,
                "batch": args.batch,
                "steps": steps,
                "median_ms": round(float(np.median(ms)), 4),
                "mean_ms": round(float(ms.mean()), 4),
                "p90_ms": round(float(np.percentile(ms, 90)), 4),
            }
        )
        print(
            f"{name:45s} sample({args.batch})+update({args.batch}) at {tree.n_leaves} leaves: "
            f"median {np.median(ms):.3f} ms, mean {ms.mean():.3f} ms, p90 {np.percentile(ms, 90):.3f} ms"
        )
    # both trees stay consistent: internal nodes equal the sum of their children
    n = tree.n_leaves
    assert np.allclose(tree.nodes[1:n], tree.nodes[2 : 2 * n : 2] + tree.nodes[3 : 2 * n : 2])
    speedup = rows[1]["median_ms"] / rows[0]["median_ms"]
    print(f"speed-up {speedup:.1f}x; target < 0.5 ms: {'met' if rows[0]['median_ms'] < 0.5 else 'NOT met'}")

    with written(args.out) as f:
        f.write(
            f"# command: python benchmark/sumtree_bench.py  (cpu: {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores, numpy {np.__version__}, python {sys.version.split()[0]})\n"
        )
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
