"""Share of balanced_finetune.py's wall time spent OUTSIDE gradient updates, at the default network sizes.

Runs balanced_finetune.main() for real (default N = 5, 256-256 actor/critic/density-ratio nets, batch 256,
--sampling balanced) from a synthetic checkpoint (freshly initialised shared-block ensemble, same format as
cql_pretrain.py's) on a locally written random-policy Hopper-v4 dataset, for one epoch of --steps env steps
followed by --steps updates (the official 1:1 schedule; --first-epoch-multiplier 1 to keep it short).
The two update functions (update_actor_critic: critic+actor+alpha+Polyak; update_density_ratio: eq. 4 step)
and the other phases are timed by wrapping the module's functions; nothing in the script is changed.

"Outside" = everything in the training loop but those two functions: environment steps with the ensemble
policy, sum-tree sampling/priority updates, minibatch gathers, AUROC, logging, evaluation and checkpoint writing.
Startup (imports, dataset read, buffer fill) is reported separately and excluded from the share.
Note: this run evaluates twice (start and end) per `steps` env steps, the real schedule once per 1000, and the
synthetic policy's episodes are short, so evaluation weight differs from a real run (reported per phase).
Target (issue 4): under 15% on this CPU.

    python benchmark/finetune_overhead.py            # writes benchmark/results/finetune_overhead.csv (~1-2 min)
"""

import argparse
import csv
import os
import platform
import sys
import tempfile
import time

import gymnasium as gym
import h5py
import numpy as np
import torch

from repo import REPO_ROOT, load_script, written

bf = load_script("balanced_finetune")


def write_random_hopper(path, n_steps, seed=0):
    env = gym.make("Hopper-v4")
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    rows = {key: [] for key in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")}
    for _ in range(n_steps):
        action = env.action_space.sample()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(rows, (obs, action, reward, terminated, truncated, next_obs)):
            rows[key].append(value)
        obs = env.reset()[0] if terminated or truncated else next_obs
    with h5py.File(path, "w") as f:
        for key, values in rows.items():
            f[key] = np.array(values, dtype=bool if key in ("terminals", "timeouts") else np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="online env steps (= gradient updates)")
    parser.add_argument("--dataset-size", type=int, default=20_000)
    parser.add_argument("--n-ensemble", type=int, default=5)
    parser.add_argument("--hidden-dim", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared)")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmark" / "results" / "finetune_overhead.csv"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    timers = {
        "update_actor_critic": 0.0,
        "update_density_ratio": 0.0,
        "evaluate": 0.0,
        "save_checkpoint": 0.0,
        "SumTree.sample": 0.0,
        "SumTree.update": 0.0,
    }
    marks = {}

    def timed(name, fn):
        def wrapper(*a, **kw):
            marks.setdefault("loop_start", time.perf_counter())  # the first evaluate() opens the training loop
            start = time.perf_counter()
            out = fn(*a, **kw)
            timers[name] += time.perf_counter() - start
            return out

        return wrapper

    for name in ("update_actor_critic", "update_density_ratio", "evaluate", "save_checkpoint"):
        setattr(bf, name, timed(name, getattr(bf, name)))
    bf.SumTree.sample = timed("SumTree.sample", bf.SumTree.sample)
    bf.SumTree.update = timed("SumTree.update", bf.SumTree.update)

    with tempfile.TemporaryDirectory() as tmp:
        data_path, ckpt_path = os.path.join(tmp, "hopper_random.hdf5"), os.path.join(tmp, "cql.pt")
        write_random_hopper(data_path, args.dataset_size)
        hidden = [args.hidden_dim, args.hidden_dim]
        torch.manual_seed(0)
        actor = bf.EnsembleActor(11, 3, hidden, args.n_ensemble)
        critic = bf.EnsembleCritic(11, 3, hidden, args.n_ensemble)
        torch.save(
            {
                "format": bf.CHECKPOINT_FORMAT,
                "algo": "cql",
                "env_id": "Hopper-v4",
                "obs_dim": 11,
                "act_dim": 3,
                "n_ensemble": args.n_ensemble,
                "hidden_sizes": hidden,
                "actor": actor.state_dict(),
                "critic": critic.state_dict(),
                "step": 0,
                "args": {},
            },
            ckpt_path,
        )
        sys.argv = [
            "balanced_finetune.py",
            "--env-id",
            "Hopper-v4",
            "--dataset-path",
            data_path,
            "--cql-checkpoint",
            ckpt_path,
            "--n-ensemble",
            str(args.n_ensemble),
            "--hidden-dim",
            str(args.hidden_dim),
            "--online-steps",
            str(args.steps),
            "--epoch-length",
            str(args.steps),
            "--first-epoch-multiplier",
            "1",
            "--checkpoint",
            os.path.join(tmp, "out.pt"),
            "--run-dir",
            os.path.join(tmp, "run"),
            "--no-cuda",
        ]
        start = time.perf_counter()
        bf.main()
        end = time.perf_counter()

    loop = end - marks["loop_start"]
    updates = timers["update_actor_critic"] + timers["update_density_ratio"]
    outside = loop - updates
    share = outside / loop
    rows = [
        {"quantity": name, "seconds": round(value, 3), "share_of_loop": round(value / loop, 4)}
        for name, value in (
            ("startup (excluded)", marks["loop_start"] - start),
            ("training loop", loop),
            ("update_actor_critic", timers["update_actor_critic"]),
            ("update_density_ratio", timers["update_density_ratio"]),
            ("outside gradient updates", outside),
            ("  of which evaluate", timers["evaluate"]),
            ("  of which SumTree.sample+update", timers["SumTree.sample"] + timers["SumTree.update"]),
            ("  of which save_checkpoint", timers["save_checkpoint"]),
        )
    ]
    for row in rows:
        print(f"{row['quantity']:36s} {row['seconds']:9.3f} s  {100 * row['share_of_loop']:6.2f} %")
    print(
        f"share outside gradient updates: {100 * share:.1f}% (target < 15%: {'met' if share < 0.15 else 'NOT met'}); "
        f"{1e3 * timers['update_actor_critic'] / args.steps:.1f} ms per SAC update, "
        f"{1e3 * timers['update_density_ratio'] / args.steps:.1f} ms per density-ratio update"
    )
    with written(args.out) as f:
        f.write(
            f"# command: python benchmark/finetune_overhead.py --steps {args.steps} --threads {args.threads} "
            f"(N={args.n_ensemble}, hidden {args.hidden_dim}, batch 256, dataset {args.dataset_size}; "
            f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__})\n"
        )
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
