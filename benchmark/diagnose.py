"""benchmark/diagnose.py: why a fine-tuning run rises or falls. Two diagnostics the paper's argument rests on.

1. --policy: are a checkpoint's Q-values right? The checkpoint's ensemble policy (eq. 5, sampled actions, as it
   collects data) runs --episodes episodes; at every visited (s_t, a_t) its critics' Qbar (mean over members of the
   min of each twin pair, the value the actor maximises) is set against the Monte-Carlo discounted return of the
   rest of the episode, sum_k gamma^k r_{t+k}. Over-estimation where the policy goes is what makes fine-tuning
   collapse (Sec. 3.2, Fig. 1c: FQE's Q, not pessimistic, against CQL's). States fewer than --tail steps before a
   time-limit cut are left out (their return is cut short); terminal states count. The critics are soft Q-functions
   (they also value the entropy bonus -alpha log pi), so a small positive gap is expected at a small alpha.
   LABEL=CKPT takes policy and critics from one checkpoint (cql_pretrain.py, balanced_finetune.py);
   LABEL=POLICY_CKPT:CRITIC_CKPT takes the critics from another (fqe.py's critics of a CQL policy = FQE-init).
2. --runs: what the run itself logged, per online epoch, mean (std) over seeds: the temperature charts/alpha, the
   critics' Qbar on the RL batch losses/qf_values, the dataset share of the batch balanced/offline_fraction, and the
   score eval/normalized_score. LABEL=GLOB, the glob matching one run folder per seed.

    P=benchmark/results/evidence/pretrained
    python benchmark/diagnose.py --env-id Hopper-v4 --policy "CQL=$P/cql_hopper-medium_N5.pt" \\
        --policy "FQE=$P/cql_hopper-medium_N5.pt:$P/fqe_hopper-medium_N5.pt" \\
        --runs "Ours=benchmark/results/evidence/runs/hopper-medium__balanced-N5__seed*" --out-dir /tmp/diagnose

Writes q_vs_mc.csv (one row per --policy) and run_diagnostics.csv (label, tag, step, mean, std, n_seeds) with a
figure run_diagnostics.png, into --out-dir.
"""

import argparse
import csv
import glob
import os
import sys

import numpy as np
import torch

from repo import load_script, save_figure, written

bf = load_script("balanced_finetune")  # its networks, eq. (5) policy, checkpoint loader and environments

RUN_TAGS = ("eval/normalized_score", "losses/qf_values", "charts/alpha", "balanced/offline_fraction")


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def split_label(text: str, flag: str):
    if "=" not in text:
        fail(f"{flag} {text!r}: expected LABEL=PATH")
    label, path = text.rsplit("=", 1)  # a label may hold "=" (N=5), a path rarely does
    return label, path


def discounted_returns_to_go(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = r_t + gamma G_{t+1}, G_T = 0 (one episode's rewards [T] -> [T])."""
    returns, running = np.zeros(len(rewards)), 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        returns[t] = running
    return returns


def load_policy_and_critics(spec_text: str, env_id: str, obs_dim: int, act_dim: int):
    policy_path, _, critic_path = spec_text.partition(":")
    make = "a checkpoint of cql_pretrain.py or balanced_finetune.py"
    ckpt = bf.load_ensemble_checkpoint(policy_path, make, env_id, obs_dim, act_dim, 1)  # checked; N read from it
    n_ensemble = int(ckpt["n_ensemble"])
    ckpt = bf.load_ensemble_checkpoint(policy_path, make, env_id, obs_dim, act_dim, n_ensemble)
    if ckpt["algo"] == "fqe":
        fail(f"{policy_path} is an fqe.py checkpoint (critics only): give it as POLICY_CKPT:{policy_path}")
    critic_source = ckpt
    if critic_path:
        critic_source = bf.load_ensemble_checkpoint(critic_path, make, env_id, obs_dim, act_dim, n_ensemble)
        if list(critic_source["hidden_sizes"]) != list(ckpt["hidden_sizes"]):
            fail(f"{critic_path} and {policy_path} differ in hidden sizes")
    actor = bf.EnsembleActor(obs_dim, act_dim, ckpt["hidden_sizes"], n_ensemble)
    critic = bf.EnsembleCritic(obs_dim, act_dim, ckpt["hidden_sizes"], n_ensemble)
    bf.load_state(actor, ckpt["actor"], "actor", policy_path)
    bf.load_state(critic, critic_source["critic"], "critic", critic_path or policy_path)
    return actor, critic, n_ensemble


@torch.no_grad()
def q_against_monte_carlo(actor, critic, n_ensemble: int, env, episodes: int, seed: int, gamma: float, tail: int) -> dict:
    """Roll out the sampled eq. (5) policy; Qbar(s_t, a_t) and the member spread against G_t at the kept states."""
    q_kept, g_kept, q_start, g_start, spread_start, returns = [], [], [], [], [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        observations, actions, rewards, done, truncated = [], [], [], False, False
        while not done:
            obs_t = torch.as_tensor(obs, dtype=torch.float32)[None]
            action = bf.tanh_gaussian_sample(*bf.ensemble_policy(actor, obs_t, n_ensemble))[0][0].numpy()
            observations.append(obs)
            actions.append(action)
            obs, reward, terminated, truncated, _ = env.step(action)
            rewards.append(float(reward))
            done = terminated or truncated
        obs_b = torch.as_tensor(np.array(observations), dtype=torch.float32)
        act_b = torch.as_tensor(np.array(actions), dtype=torch.float32)
        expand = lambda x: x.unsqueeze(0).expand(n_ensemble, *x.shape)
        q_members = critic(expand(obs_b), expand(act_b)).min(dim=1).values  # [N, T]
        qbar = q_members.mean(0).numpy()
        g = discounted_returns_to_go(np.array(rewards), gamma)
        keep = len(rewards) - (tail if truncated else 0)
        q_kept.append(qbar[: max(keep, 0)])
        g_kept.append(g[: max(keep, 0)])
        q_start.append(qbar[0])
        g_start.append(g[0])
        spread_start.append(float(q_members[:, 0].std(unbiased=False)))
        returns.append(sum(rewards))
    q_all, g_all = np.concatenate(q_kept), np.concatenate(g_kept)
    return {
        "episodes": episodes,
        "mean_return": float(np.mean(returns)),
        "q_start": float(np.mean(q_start)),
        "mc_start": float(np.mean(g_start)),
        "member_q_std_start": float(np.mean(spread_start)),
        "states": len(q_all),
        "q_mean": float(q_all.mean()) if len(q_all) else float("nan"),
        "mc_mean": float(g_all.mean()) if len(g_all) else float("nan"),
        "q_minus_mc_mean": float((q_all - g_all).mean()) if len(q_all) else float("nan"),
    }


def run_curves(pattern: str) -> dict:
    """tag -> (steps, [n_seeds, n_steps] values) over the runs the glob matches (steps every run logged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dirs = sorted(d for d in glob.glob(pattern) if os.path.isdir(d))
    if not run_dirs:
        fail(f"--runs {pattern!r} matches no run folder")
    curves = {}
    for tag in RUN_TAGS:
        per_run = []
        for run_dir in run_dirs:
            events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
            events.Reload()
            if tag in events.Tags()["scalars"]:
                per_run.append({e.step: e.value for e in events.Scalars(tag)})  # a resumed step: the last value
        if per_run:
            steps = sorted(set.intersection(*(set(points) for points in per_run)))
            curves[tag] = (np.array(steps), np.array([[points[s] for s in steps] for points in per_run]))
    return curves


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="Hopper-v4")
    parser.add_argument("--policy", action="append", default=[], help="LABEL=CKPT or LABEL=POLICY_CKPT:CRITIC_CKPT")
    parser.add_argument("--runs", action="append", default=[], help="LABEL=GLOB (one run folder per seed)")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--tail", type=int, default=200, help="states this close to a time-limit cut are left out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    if not args.policy and not args.runs:
        fail("nothing to diagnose: give --policy and/or --runs")
    os.makedirs(args.out_dir, exist_ok=True)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    if args.policy:
        env = bf.make_env(args.env_id, args.seed)
        obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
        rows = []
        for text in args.policy:
            label, spec_text = split_label(text, "--policy")
            actor, critic, n_ensemble = load_policy_and_critics(spec_text, args.env_id, obs_dim, act_dim)
            stats = q_against_monte_carlo(actor, critic, n_ensemble, env, args.episodes, args.seed, args.gamma, args.tail)
            rows.append(
                {
                    "label": label,
                    "checkpoints": spec_text,
                    "n_members": n_ensemble,  # (the CSV's column name)
                    "normalized_score": round(bf.normalized_score(args.env_id, stats["mean_return"]), 2),
                    **{key: round(value, 2) if isinstance(value, float) else value for key, value in stats.items()},
                }
            )
            print(
                f"{label}: Qbar {stats['q_mean']:.1f} vs Monte-Carlo {stats['mc_mean']:.1f} over {stats['states']} "
                f"states (start {stats['q_start']:.1f} vs {stats['mc_start']:.1f}); return {stats['mean_return']:.0f}"
            )
        with written(os.path.join(args.out_dir, "q_vs_mc.csv")) as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if args.runs:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(RUN_TAGS), figsize=(4.2 * len(RUN_TAGS), 3.4))
        with written(os.path.join(args.out_dir, "run_diagnostics.csv")) as f:
            writer = csv.writer(f)
            writer.writerow(["label", "tag", "step", "mean", "std", "n_seeds"])
            for text in args.runs:
                label, pattern = split_label(text, "--runs")
                for tag, (steps, values) in run_curves(pattern).items():
                    mean, std = values.mean(0), values.std(0)
                    writer.writerows(
                        [label, tag, int(s), round(float(m), 4), round(float(d), 4), len(values)]
                        for s, m, d in zip(steps, mean, std)
                    )
                    ax = axes[RUN_TAGS.index(tag)]
                    ax.plot(steps, mean, label=label)
                    ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        for ax, tag in zip(axes, RUN_TAGS):
            ax.set_title(tag)
            ax.set_xlabel("online env steps")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, os.path.join(args.out_dir, "run_diagnostics.png"), dpi=110)
        print(f"wrote {os.path.join(args.out_dir, 'run_diagnostics.csv')} and run_diagnostics.png")


if __name__ == "__main__":
    main()
