"""Fitted Q Evaluation (FQE) of a fixed pretrained ensemble policy on its offline dataset (paper Fig. 1c).

Gives the critics for the paper's Fig. 1c experiment (balanced_finetune.py --q-init fqe): fine-tuning the same CQL
policy from critics that are *not* pessimistic. For each of the N members, twin critics of the usual architecture
are regressed, by plain TD (no CQL term, no entropy term), on

    y_j = r + gamma (1 - d) Q'_j(s', a'),   a' ~ pi(.|s'),   j = 1, 2 (each twin on its own target network),

with target networks updated by Polyak averaging (tau 5e-3), Adam lr 3e-4, batch 256.

pi is the policy that fine-tuning starts from: the ensemble policy of eq. (5) built from the first N members of the
policy checkpoint (a Gaussian with the mixture's moments in pre-tanh space, mu = mean_i mu_i,
sigma^2 = mean_i(sigma_i^2 + mu_i^2) - mu^2, then tanh), *stochastic*, since that is the policy whose Q-function
the fine-tuned critics represent. Every member's critics evaluate this same ensemble policy, each member with its
own initialisation and its own minibatches (indices [N, B]), so the N critics are N independent FQE estimates.

Implementation choices where the paper is silent: the Notes at the end of this file.

Usage:
  python cql_pretrain.py --env-id hopper-medium-replay-v2 --n-ensemble 5
  python fqe.py --env-id hopper-medium-replay-v2 --n-ensemble 5
  python balanced_finetune.py --env-id hopper-medium-replay-v2 --n-ensemble 5 --q-init fqe
"""

import contextlib
import ctypes
import dataclasses
import http.client
import io
import os
import pickle
import random
import re
import shlex
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass

import gymnasium as gym
import h5py
import numpy as np
import torch
import torch.nn as nn
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm


@dataclass
class Args:
    # task, data, the policy to evaluate and the output
    env_id: str = "walker2d-medium-expert-v2"
    """D4RL task name or Minari dataset id (mujoco/hopper/medium-v0; cached or downloaded) or gymnasium id + --dataset-path"""
    dataset_path: str | None = None
    """HDF5 file with D4RL's schema to evaluate on instead of the D4RL file of --env-id"""
    policy_checkpoint: str | None = None
    """checkpoint of the policy to evaluate (default checkpoints/cql_{env_id}_seed{seed}.pt, as cql_pretrain.py writes)"""
    checkpoint: str | None = None
    """where the FQE checkpoint is written (default checkpoints/fqe_{env_id}_seed{seed}.pt)"""

    # runtime
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, CUDA is used when available"""

    # algorithm
    n_ensemble: int | None = None
    """number N of members: the policy is the eq. (5) ensemble of the first N (default: all in the policy checkpoint)"""
    steps: int = 250_000
    """number of gradient steps"""
    batch_size: int = 256
    """minibatch size per member (each member draws its own)"""
    hidden_dim: int | None = None
    """width of the critics' two hidden layers (default: the policy checkpoint's, as balanced_finetune.py needs)"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 5e-3
    """target critic smoothing coefficient"""
    lr: float = 3e-4
    """learning rate of the critics"""

    # logging, evaluation and checkpoints
    log_every: int = 1000
    """log losses every this many updates (also where NaN/inf losses are detected)"""
    eval_every: int = 10_000
    """compare the Q estimate with Monte-Carlo returns every this many updates"""
    eval_episodes: int = 10
    """Monte-Carlo episodes per evaluation"""
    checkpoint_every: int = 50_000
    """also write the checkpoint every this many updates (it is always written at each evaluation and at the end)"""
    resume: bool = False
    """continue the run saved in --checkpoint"""
    run_dir: str | None = None
    """TensorBoard folder (default runs/{env_id}__fqe__{seed}__{time})"""
    # Weights & Biases and evaluation videos (README: Tracking and videos)
    track: bool = False
    """mirror the TensorBoard scalars to Weights & Biases (pip install wandb; WANDB_MODE=offline needs no network)"""
    wandb_project_name: str = "o2o-balanced-replay"
    """the Weights & Biases project (with --track)"""
    wandb_entity: str | None = None
    """the Weights & Biases team or user (with --track; default: your default entity)"""
    capture_video: bool = False
    """render evaluation episodes to <run-dir>/videos/step<N>.mp4 (.gif without imageio-ffmpeg)"""
    video_every_evals: int = 10
    """with --capture-video: the first evaluation, every this many evaluations, and the last"""


# ---- vectorized ensemble networks (paper §3.2): weights [N, in, out], one batched matmul per layer ----
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


class VectorizedLinear(nn.Module):
    """N independent linear layers applied as one batched matmul: x [N, B, in] -> [N, B, out]."""

    def __init__(self, in_features: int, out_features: int, n_ensemble: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_ensemble, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n_ensemble, 1, out_features))
        bound = 1.0 / in_features**0.5  # nn.Linear's default init, drawn independently for each member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


def vectorized_mlp(in_dim: int, hidden_sizes, out_dim: int, n_ensemble: int) -> nn.Sequential:
    layers, width = [], in_dim
    for hidden in hidden_sizes:
        layers += [VectorizedLinear(width, hidden, n_ensemble), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, VectorizedLinear(width, out_dim, n_ensemble))


class EnsembleActor(nn.Module):
    """N tanh-Gaussian actors with state-dependent log-std: obs [N, B, S] -> mean, log_std [N, B, A] (pre-tanh)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes, n_ensemble: int):
        super().__init__()
        self.net = vectorized_mlp(obs_dim, hidden_sizes, 2 * act_dim, n_ensemble)

    def forward(self, obs: torch.Tensor):
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)


class EnsembleCritic(nn.Module):
    """Twin Q-functions of N members as 2N vectorized MLPs, member-major (row 2i: Q1 of member i, 2i+1: Q2).

    obs [N, B, S], act [N, B, A] -> Q [N, 2, B]. The first n members are rows [:2n].
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes, n_ensemble: int):
        super().__init__()
        self.n_ensemble = n_ensemble
        self.net = vectorized_mlp(obs_dim + act_dim, hidden_sizes, 1, 2 * n_ensemble)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, act], dim=-1).repeat_interleave(2, dim=0)
        return self.net(x).view(self.n_ensemble, 2, -1)


# ---------------------------------------------------------------------------------------------------------------------
# fqe.py: the fixed ensemble policy, the FQE loss and update
# ---------------------------------------------------------------------------------------------------------------------
POLICY_ALGOS = ("cql", "balanced", "awac", "sac")  # checkpoints whose actor is an EnsembleActor


def ensemble_moments(mu: torch.Tensor, std: torch.Tensor):
    """Eq. (5): moments of the uniform mixture of N Gaussians (member dim first) -> (mean, std) of one Gaussian.

    sigma^2 = mean_i(sigma_i^2 + mu_i^2) - mu^2, computed as mean_i sigma_i^2 + mean_i (mu_i - mu)^2 (same value,
    no cancellation); sigma is clamped to [exp(LOG_STD_MIN), exp(LOG_STD_MAX)] like a member's, as the authors do.
    """
    mean = mu.mean(0)
    var = std.pow(2).mean(0) + (mu - mean).pow(2).mean(0)
    return mean, var.clamp(np.exp(2.0 * LOG_STD_MIN), np.exp(2.0 * LOG_STD_MAX)).sqrt()


@torch.no_grad()
def ensemble_moments_at(actor: EnsembleActor, obs: torch.Tensor, chunk: int = 65536):
    """ensemble_moments of the members' Gaussians at states obs [M, S], in chunks: the pre-tanh mean and std [M, A] of
    the eq. (5) policy. Actions are sampled as tanh(mean + std eps) from the std itself (balanced_finetune.py's
    ensemble_policy gives log-std, whose exp differs from the std in the last bit for some values)."""
    n_ensemble = actor.net[0].weight.shape[0]
    means, stds = [], []
    for part in obs.split(chunk):
        mu, log_std = actor(part.expand(n_ensemble, -1, -1))
        mean, std = ensemble_moments(mu, log_std.exp())
        means.append(mean)
        stds.append(std)
    return torch.cat(means), torch.cat(stds)


def sample_batch(data: dict, rng: np.random.Generator, n_ensemble: int, batch_size: int) -> dict:
    """Each member gets its own minibatch: indices [N, B] -> tensors [N, B, ...]."""
    size = data["observations"].shape[0]
    idx = torch.from_numpy(rng.integers(0, size, size=(n_ensemble, batch_size))).to(data["observations"].device)
    return {key: value[idx] for key, value in data.items()}


def fqe_loss(critic: nn.Module, critic_target: nn.Module, batch: dict, next_actions: torch.Tensor, gamma: float):
    """TD regression of every member's twins on y_j = r + gamma (1 - d) Q'_j(s', a'): no conservatism, no entropy.

    Returns the loss (sum over members and twins: each member gets its own gradient) and the MSE [N, 2] and
    Q(s, a_data) [N, 2, B].
    """
    with torch.no_grad():
        next_q = critic_target(batch["next_observations"], next_actions)  # [N, 2, B], each twin its own target
        target = batch["rewards"].unsqueeze(1) + gamma * (1.0 - batch["terminals"].unsqueeze(1)) * next_q
    q_data = critic(batch["observations"], batch["actions"])
    mse = (q_data - target).pow(2).mean(-1)  # [N, 2]
    return mse.sum(), {"mse": mse, "q_data": q_data}


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float):
    """Polyak averaging of the target network: target <- (1 - tau) target + tau source."""
    for target_param, param in zip(target.parameters(), source.parameters()):
        target_param.lerp_(param, tau)


def fqe_update(critic, critic_target, optimizer, batch: dict, gamma: float, tau: float) -> dict:
    """One FQE step of every member. batch holds next_policy_mean/std, the eq. (5) moments at s'. No .item()."""
    mean, std = batch["next_policy_mean"], batch["next_policy_std"]
    next_actions = torch.tanh(mean + std * torch.randn_like(mean))
    loss, info = fqe_loss(critic, critic_target, batch, next_actions, gamma)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    soft_update(critic_target, critic, tau)
    return {"losses/qf": info["mse"].detach().mean(), "charts/q_data": info["q_data"].detach().mean()}


@torch.no_grad()
def state_value(actor: EnsembleActor, critic: EnsembleCritic, obs: torch.Tensor, n_samples: int = 10) -> float:
    """FQE's V(s) = E_{a ~ pi(s)} Q(s, a) at states obs [K, S], averaged over states, members, twins and samples."""
    mean, std = ensemble_moments_at(actor, obs)
    mean, std, obs = (x.repeat_interleave(n_samples, 0) for x in (mean, std, obs))
    actions = torch.tanh(mean + std * torch.randn_like(mean))
    n_ensemble = critic.n_ensemble
    return float(critic(obs.expand(n_ensemble, -1, -1), actions.expand(n_ensemble, -1, -1)).mean())


@torch.no_grad()
def sample_policy(actor: EnsembleActor, obs: torch.Tensor) -> torch.Tensor:
    """An action of the stochastic ensemble policy (eq. 5) at obs [B, S], as monte_carlo draws them."""
    mean, std = ensemble_moments_at(actor, obs)
    return torch.tanh(mean + std * torch.randn_like(mean))


def monte_carlo(actor: EnsembleActor, envs: list, seed: int, gamma: float, device):
    """Episodes of the stochastic ensemble policy (eq. 5), one per env in lockstep, env e from seed + 10000 + e.

    Returns discounted returns [E], undiscounted returns [E] and the start states [E, S].
    """
    obs = np.stack([env.reset(seed=seed + 10_000 + e)[0] for e, env in enumerate(envs)])
    start_obs = obs.copy()
    discounted, returns = np.zeros(len(envs)), np.zeros(len(envs))
    discount, active = np.ones(len(envs)), np.ones(len(envs), dtype=bool)
    while active.any():
        actions = sample_policy(actor, torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
        for e in np.flatnonzero(active):
            obs[e], reward, terminated, truncated, _ = envs[e].step(actions[e])
            discounted[e] += discount[e] * reward
            returns[e] += reward
            discount[e] *= gamma
            active[e] = not (terminated or truncated)
    return discounted, returns, start_obs


def episode_start_states(dataset: dict, limit: int = 10_000) -> np.ndarray:
    """Row 0 and every row whose predecessor ended an episode (terminal, or its next_observation is not this row)."""
    obs, next_obs = dataset["observations"], dataset["next_observations"]
    starts = np.concatenate([[True], (dataset["terminals"][:-1] > 0) | np.any(next_obs[:-1] != obs[1:], axis=1)])
    rows = np.flatnonzero(starts)
    if len(rows) > limit:  # an evenly spaced subset keeps evaluation cheap on datasets of many short episodes
        rows = rows[np.linspace(0, len(rows) - 1, limit).astype(int)]
    return obs[rows]


def check_fqe_args(args) -> tuple[str, str]:
    """The policy and output checkpoint paths (defaults from --env-id and --seed), after the checks of the flags and of
    the output path that must fail at startup, before anything slow."""
    policy_path = args.policy_checkpoint or f"checkpoints/cql_{args.env_id}_seed{args.seed}.pt"
    checkpoint_path = args.checkpoint or f"checkpoints/fqe_{args.env_id}_seed{args.seed}.pt"
    for name in ("steps", "batch_size", "log_every", "eval_every", "eval_episodes", "checkpoint_every"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1")
    if os.path.abspath(policy_path) == os.path.abspath(checkpoint_path):
        fail(f"--checkpoint {checkpoint_path} would overwrite the policy checkpoint (the policy is --policy-checkpoint)")
    check_writable(checkpoint_path)
    if not args.resume:
        check_output_checkpoint(checkpoint_path, "fqe")
    return policy_path, checkpoint_path


def load_fqe_policy(policy_path: str, args, obs_dim: int, act_dim: int, device) -> tuple[EnsembleActor, int, list]:
    """The policy of eq. (5): the first N members of a pretrained ensemble checkpoint, checked against the environment
    and frozen. Returns the actor, N and the checkpoint's hidden sizes."""
    policy = read_ensemble_checkpoint(policy_path, "policy checkpoint")
    if policy["algo"] not in POLICY_ALGOS:
        fail(f"policy checkpoint {policy_path} has algo {policy['algo']!r}; expected one of {', '.join(POLICY_ALGOS)}")
    # same environment = same gymnasium id, version included (D4RL names: -v4, Minari's mujoco/*: -v5), as in fine-tuning
    if (policy["env_id"] != args.env_id and gym_env_id(policy["env_id"]) != gym_env_id(args.env_id)) or (
        policy["obs_dim"],
        policy["act_dim"],
    ) != (obs_dim, act_dim):
        fail(
            f"policy checkpoint {policy_path} is for {policy['env_id']!r} (dims {policy['obs_dim']}/{policy['act_dim']}), "
            f"not for --env-id {args.env_id!r} (dims {obs_dim}/{act_dim})"
        )
    n_ensemble = args.n_ensemble or policy["n_ensemble"]
    if not 1 <= n_ensemble <= policy["n_ensemble"]:
        fail(f"--n-ensemble {n_ensemble} but policy checkpoint {policy_path} holds {policy['n_ensemble']} member(s)")
    policy_hidden = list(policy["hidden_sizes"])
    actor = EnsembleActor(obs_dim, act_dim, policy_hidden, n_ensemble).to(device)
    try:
        actor.load_state_dict({key: value[:n_ensemble] for key, value in policy["actor"].items()}, strict=True)
    except RuntimeError as err:
        fail(f"policy checkpoint {policy_path}: its actor does not fit an EnsembleActor ({str(err).splitlines()[0]})")
    actor.requires_grad_(False)
    return actor, n_ensemble, policy_hidden


def load_fqe_data(args, actor: EnsembleActor, env: gym.Env, device) -> tuple[dict, torch.Tensor]:
    """The dataset (README: D4RL or Minari) as tensors, with the fixed policy's eq. (5) moments at every s' computed
    once, and the states its episodes start from (where eval/q_estimate is measured)."""
    dataset = load_d4rl_dataset(args.env_id, args.dataset_path)
    check_dataset_matches_env(dataset, env, args.dataset_path or args.env_id)
    data = {key: torch.as_tensor(value, device=device) for key, value in dataset.items()}
    data["next_policy_mean"], data["next_policy_std"] = ensemble_moments_at(actor, data["next_observations"])
    return data, torch.as_tensor(episode_start_states(dataset), device=device)


@dataclass
class FQERun:
    """What an FQE run's updates, evaluations and checkpoints use: its flags and paths, the fixed eq. (5) policy (actor)
    and the N members' twin critics fitted to it, with their target networks, optimizer and sizes."""

    args: Args
    policy_path: str
    checkpoint_path: str
    obs_dim: int
    act_dim: int
    n_ensemble: int
    policy_hidden: list  # the policy checkpoint's hidden sizes
    hidden_sizes: list  # the critics'
    actor: EnsembleActor
    critic: EnsembleCritic
    critic_target: EnsembleCritic
    optimizer: torch.optim.Optimizer

    def resumable(self) -> dict:
        """The modules whose states the checkpoint's "resume" entry holds besides the critic (resume_state)."""
        return {"critic_target": self.critic_target, "optimizer": self.optimizer}


def build_fqe_run(args, policy_path, checkpoint_path, obs_dim, act_dim, actor, n_ensemble, policy_hidden, device) -> FQERun:
    """The critics FQE fits to the fixed policy `actor`: N members' twins (--hidden-dim wide, default the policy's), each
    twin with its own target network that starts as its copy, and Adam; returned in an FQERun with the rest."""
    hidden_sizes = [args.hidden_dim] * 2 if args.hidden_dim else policy_hidden
    critic = EnsembleCritic(obs_dim, act_dim, hidden_sizes, n_ensemble).to(device)
    critic_target = EnsembleCritic(obs_dim, act_dim, hidden_sizes, n_ensemble).to(device)
    critic_target.load_state_dict(critic.state_dict())
    optimizer = torch.optim.Adam(critic.parameters(), lr=args.lr)
    return FQERun(
        args=args,
        policy_path=policy_path,
        checkpoint_path=checkpoint_path,
        obs_dim=obs_dim,
        act_dim=act_dim,
        n_ensemble=n_ensemble,
        policy_hidden=policy_hidden,
        hidden_sizes=hidden_sizes,
        actor=actor,
        critic=critic,
        critic_target=critic_target,
        optimizer=optimizer,
    )


def resume_fqe(run: FQERun, np_rng: np.random.Generator) -> tuple[int, str]:
    """--resume: the critics, target critics, optimizer and RNG states of the run saved in --checkpoint; returns its
    step and run dir (--run-dir, when given, wins)."""
    args, path = run.args, run.checkpoint_path
    ckpt = load_resume_checkpoint(
        path, {"algo": "fqe", "env_id": args.env_id, "n_ensemble": run.n_ensemble, "hidden_sizes": run.hidden_sizes}
    )
    load_state(run.critic, ckpt["critic"], "critic", path)
    state = load_resume_state(ckpt, path, np_rng, run.resumable())
    start_step, run_dir = state["step"], args.run_dir or state["run_dir"]
    print(f"resuming {path} at step {start_step}, logging to {run_dir}")
    return start_step, run_dir


def save_fqe_checkpoint(run: FQERun, step: int, np_rng: np.random.Generator, run_dir: str, writer):
    """The checkpoint: the policy's N members, their critics and the "resume" entry (all --resume needs). Non-finite
    critic weights stop the run instead, keeping the last good file."""
    if not all(torch.isfinite(p).all() for p in run.critic.parameters()):  # keep the last good checkpoint
        fail(f"non-finite critic weights at step {step}; kept the last good checkpoint {run.checkpoint_path}")
    writer.flush()  # curves up to the checkpoint survive a crash; --resume purges anything logged after it
    save_checkpoint(
        run.checkpoint_path,
        {
            "format": CHECKPOINT_FORMAT,
            "algo": "fqe",
            "env_id": run.args.env_id,
            "obs_dim": run.obs_dim,
            "act_dim": run.act_dim,
            "n_ensemble": run.n_ensemble,
            "hidden_sizes": run.hidden_sizes,
            "actor": run.actor.state_dict(),
            "critic": run.critic.state_dict(),
            "step": step,
            "args": dataclasses.asdict(run.args),
            "policy_checkpoint": run.policy_path,  # as given: relative to where the run started
            "policy_hidden_sizes": run.policy_hidden,
            "resume": resume_state(np_rng, run.resumable(), step=step, run_dir=run_dir),
        },
    )


def read_fqe_losses(info: dict, global_step: int, checkpoint_path: str) -> dict:
    """The update's detached losses as floats, read with one host sync per log interval; a NaN or inf stops the run."""
    values = dict(zip(info, torch.stack(list(info.values())).cpu().tolist()))
    bad = [name for name, value in values.items() if not np.isfinite(value)]
    if bad:
        fail(
            f"{', '.join(f'{name} = {values[name]}' for name in bad)} at step {global_step}; "
            f"kept the last good checkpoint {checkpoint_path}"
        )
    return values


def evaluate_fqe(run: FQERun, envs: list, start_states: torch.Tensor, videos, writer, global_step: int, device):
    """The FQE estimate V(s) of the policy (at the dataset's episode starts and at the env's) against its Monte-Carlo
    return from --eval-episodes episodes: logged under eval/ and printed on one line."""
    args, actor = run.args, run.actor
    discounted, returns, env_starts = monte_carlo(actor, envs, args.seed, args.gamma, device)
    videos.after_eval(
        envs[0],
        lambda obs: sample_policy(actor, obs),
        args.seed + 10_000,
        global_step,
        global_step == args.steps,
        device,
    )
    q_dataset = state_value(actor, run.critic, start_states)
    q_env = state_value(actor, run.critic, torch.as_tensor(env_starts, dtype=torch.float32, device=device))
    writer.add_scalar("eval/q_estimate", q_dataset, global_step)
    writer.add_scalar("eval/q_estimate_env_starts", q_env, global_step)
    writer.add_scalar("eval/mc_return", discounted.mean(), global_step)
    writer.add_scalar("eval/return", returns.mean(), global_step)
    writer.add_scalar("eval/normalized_score", normalized_score(args.env_id, returns.mean()), global_step)
    tqdm.write(
        f"step={global_step} q_estimate={q_dataset:.2f} (env starts {q_env:.2f}) "
        f"mc_return={discounted.mean():.2f} return={returns.mean():.1f}"
    )


def main():
    args = tyro.cli(Args)
    policy_path, checkpoint_path = check_fqe_args(args)

    random.seed(args.seed)
    np_rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    if device.type == "cpu":
        keep_freed_memory_on_cpu()

    envs = [make_env(args.env_id, args.seed) for _ in range(args.eval_episodes)]
    obs_dim, act_dim = envs[0].observation_space.shape[0], envs[0].action_space.shape[0]
    # the policy: the eq. (5) ensemble of the first N members of a pretrained checkpoint
    actor, n_ensemble, policy_hidden = load_fqe_policy(policy_path, args, obs_dim, act_dim, device)
    # data (README: D4RL or Minari), with the fixed policy's eq. (5) moments at every s' computed once
    data, start_states = load_fqe_data(args, actor, envs[0], device)
    # the critics FQE fits: N members' twins, each twin on its own target network
    run = build_fqe_run(args, policy_path, checkpoint_path, obs_dim, act_dim, actor, n_ensemble, policy_hidden, device)

    start_step = 0
    run_dir = args.run_dir or f"runs/{args.env_id}__fqe__{args.seed}__{int(time.time())}"
    if args.resume:  # critics, target critics, optimizer, RNG states, step and run dir
        start_step, run_dir = resume_fqe(run, np_rng)

    # on resume, TensorBoard drops whatever the interrupted run logged after its checkpoint's step
    tracking, videos = start_tracking(args, run_dir), EvalVideos(args, run_dir)  # --track, --capture-video
    writer = TensorBoardWriter(run_dir, purge_step=start_step + 1 if args.resume else None)
    if not args.resume:
        writer.add_text(
            "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{key}|{value}|" for key, value in vars(args).items())
        )

    start_time, sps_step = time.time(), start_step
    progress = tqdm(range(start_step, args.steps), initial=start_step, total=args.steps)
    stop = catch_stop_signals()
    for step in progress:
        batch = sample_batch(data, np_rng, n_ensemble, args.batch_size)
        info = fqe_update(run.critic, run.critic_target, run.optimizer, batch, args.gamma, args.tau)
        global_step = step + 1  # updates done
        is_log, is_checkpoint = global_step % args.log_every == 0, global_step % args.checkpoint_every == 0
        is_eval = global_step % args.eval_every == 0 or global_step == args.steps
        if is_log or is_eval or is_checkpoint:
            values = read_fqe_losses(info, global_step, checkpoint_path)  # one sync per log interval
            if is_log:
                for name, value in values.items():
                    writer.add_scalar(name, value, global_step)
                writer.add_scalar("charts/SPS", (global_step - sps_step) / (time.time() - start_time), global_step)
                start_time, sps_step = time.time(), global_step
        if is_eval:
            evaluate_fqe(run, envs, start_states, videos, writer, global_step, device)
        if is_eval or is_checkpoint or stop["signal"]:
            save_fqe_checkpoint(run, global_step, np_rng, run_dir, writer)
            start_time = time.time()  # do not count evaluation and saving in SPS
        if stop["signal"]:
            progress.close()
            stop_after_signal(stop["signal"], checkpoint_path, global_step)
    if start_step >= args.steps:
        save_fqe_checkpoint(run, start_step, np_rng, run_dir, writer)
    writer.close()
    if tracking is not None:
        tracking.finish()
    for env in envs:
        env.close()
    print(f"saved {checkpoint_path}")


# =====================================================================================================================
# Plumbing: data, environments, scores, checkpoint files, evaluation. A helper that several scripts hold is copied
# verbatim into each (CONTRIBUTING.md) and tests/test_reliability.py checks that every copy is identical. Python looks
# these names up when main() runs, so they can come after it.
# =====================================================================================================================


def fail(message: str):
    """Stop with one clear message and exit status 1, no traceback (used for every bad input)."""
    raise SystemExit(f"error: {message}")


# ---- tasks, environments, scores (README: D4RL or Minari) ----
D4RL_TASK = re.compile(r"(halfcheetah|hopper|walker2d)-(random|medium|medium-replay|medium-expert|expert)-v(0|2)")
GYM_ENV_OF = {"halfcheetah": "HalfCheetah-v4", "hopper": "Hopper-v4", "walker2d": "Walker2d-v4"}
# D4RL's reference returns (random, expert) used for the normalized score.
REF_RETURNS = {"halfcheetah": (-280.178953, 12135.0), "hopper": (-20.272305, 3234.3), "walker2d": (1.629008, 4592.3)}
# A versioned Minari dataset id with a namespace, e.g. mujoco/hopper/medium-v0; its env and scores are in its metadata.
MINARI_ID = re.compile(r"[\w-]+(?:/[\w-]+)+-v\d+")


def is_minari_id(env_id: str) -> bool:
    """namespace/name-vN and not a gymnasium id (gymnasium ids can have a namespace too, e.g. ALE/Pong-v5)."""
    return MINARI_ID.fullmatch(env_id) is not None and env_id not in gym.registry


def gym_env_id(env_id: str) -> str:
    """A D4RL task name (walker2d-medium-v2) maps to its gymnasium v4 env, a Minari dataset id to the env of its env spec
    (mujoco/hopper/medium-v0 -> Hopper-v5); a gymnasium id passes through."""
    task = D4RL_TASK.fullmatch(env_id)
    if task:
        return GYM_ENV_OF[task.group(1)]
    if env_id in gym.registry:
        return env_id
    if is_minari_id(env_id):
        return minari_dataset(env_id).env_spec.id
    fail(
        f"unknown --env-id {env_id!r}: give a D4RL task name such as walker2d-medium-expert-v2, a Minari dataset id "
        f"such as mujoco/hopper/medium-v0, or a gymnasium id such as Hopper-v4"
    )


def normalized_score(env_id: str, episode_return: float) -> float:
    """100 * (R - random) / (expert - random) with D4RL's reference returns, or with a Minari dataset's reference scores
    (ref_min_score, ref_max_score); NaN where there are none."""
    if is_minari_id(env_id):
        metadata = minari_dataset(env_id).storage.metadata
        random_return, expert_return = metadata.get("ref_min_score"), metadata.get("ref_max_score")
        if random_return is None or expert_return is None:
            return float("nan")
        return 100.0 * (episode_return - random_return) / (expert_return - random_return)
    family = gym_env_id(env_id).split("-")[0].lower()
    if family not in REF_RETURNS:
        return float("nan")
    random_return, expert_return = REF_RETURNS[family]
    return 100.0 * (episode_return - random_return) / (expert_return - random_return)


def make_env(env_id: str, seed: int) -> gym.Env:
    kwargs = {}
    if is_minari_id(env_id):  # the env exactly as the dataset's env spec made it: its kwargs and episode length
        spec = minari_dataset(env_id).env_spec
        kwargs = dict(spec.kwargs or {})
        if spec.max_episode_steps is not None:
            kwargs["max_episode_steps"] = spec.max_episode_steps
    with warnings.catch_warnings():  # gymnasium flags the -v4 envs as old; README explains why we use them
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            env = gym.make(gym_env_id(env_id), **kwargs)
        except (TypeError, ValueError, gym.error.Error) as err:  # e.g. env spec kwargs this gymnasium does not take
            fail(f"cannot make the environment of {env_id} ({gym_env_id(env_id)}, {kwargs}): {err}")
    if not np.allclose(env.action_space.low, -1.0) or not np.allclose(env.action_space.high, 1.0):
        fail(f"{env_id}: actions must lie in [-1, 1] (tanh policies, D4RL convention)")
    env = gym.wrappers.RecordEpisodeStatistics(env)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env


# ---- D4RL data path (README: D4RL or Minari) ----
D4RL_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl"
D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")


def d4rl_url(env_id: str) -> str:
    family, dataset, version = D4RL_TASK.fullmatch(env_id).groups()
    if version == "2":
        return f"{D4RL_URL}/gym_mujoco_v2/{family}_{dataset.replace('-', '_')}-v2.hdf5"
    if dataset == "medium-replay":  # the v0 files call it "mixed", and walker2d "walker"
        return f"{D4RL_URL}/gym_mujoco/{'walker' if family == 'walker2d' else family}_mixed.hdf5"
    return f"{D4RL_URL}/gym_mujoco/{family}_{dataset.replace('-', '_')}.hdf5"


def download_d4rl_file(env_id: str) -> str:
    """Path of the cached D4RL file (d4rl's own cache, so its downloads are reused); download it when missing."""
    url = d4rl_url(env_id)
    dataset_dir = os.environ.get("D4RL_DATASET_DIR", os.path.expanduser("~/.d4rl/datasets"))
    path = os.path.join(dataset_dir, url.rsplit("/", 1)[1])
    if os.path.exists(path):
        return path
    os.makedirs(dataset_dir, exist_ok=True)
    partial = f"{path}.{os.getpid()}.part"  # unique per process: parallel jobs may download the same file
    received, total = 0, None
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as out:
            length = response.headers.get("Content-Length", "").strip()
            total = int(length) if length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {os.path.basename(path)}") as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if total is None or received == total:  # a connection closed early ends the read loop without an error
            os.replace(partial, path)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        if os.path.exists(partial):
            os.remove(partial)
        fail(
            f"dataset for {env_id} not found at {path} and could not be downloaded from {url} ({err}); "
            f"download it there by hand, or pass --dataset-path FILE.hdf5"
        )
    if total is not None and received != total:  # never let a short file take the final name
        os.remove(partial)
        fail(
            f"download of {url} ended after {received} of the {total} bytes announced; the partial file was "
            f"deleted and {path} not written: run again, or download it there by hand"
        )
    return path


def read_hdf5_dataset(path: str) -> dict:
    """The D4RL arrays of one file, checked: required keys present, lengths equal, values finite."""
    if not os.path.isfile(path):
        fail(f"dataset file {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            data = {key: f[key][()] for key in D4RL_KEYS if key in f}
    except Exception as err:  # h5py raises OSError for truncated or non-HDF5 files, KeyError/ValueError for corrupt ones
        fail(f"cannot read dataset {path}: not a readable HDF5 file ({err})")
    for key in ("observations", "actions", "rewards", "terminals"):
        if key not in data:
            fail(f"dataset {path} has no '{key}' key (expected D4RL keys: {', '.join(D4RL_KEYS)})")
    for key, values in data.items():  # shapes first: len() of a scalar, or a 2-column reward, would crash later
        if key in ("observations", "actions", "next_observations") and values.ndim != 2:
            fail(f"dataset {path}: '{key}' must be 2-D (rows, dim), got shape {values.shape}")
        if key in ("rewards", "terminals", "timeouts") and not (values.ndim == 1 or values.shape[1:] == (1,)):
            fail(f"dataset {path}: '{key}' must have one value per row, got shape {values.shape}")
    n_rows = len(data["observations"])
    for key, values in data.items():
        if len(values) != n_rows:
            fail(f"dataset {path}: '{key}' has {len(values)} rows but 'observations' has {n_rows}")
        if not np.all(np.isfinite(values)):
            fail(f"dataset {path}: '{key}' contains NaN or inf")
    if n_rows < 2:
        fail(f"dataset {path} has {n_rows} rows; need at least 2")
    return data


def load_d4rl_dataset(env_id: str, dataset_path: str | None = None) -> dict[str, np.ndarray]:
    """Transitions (s, a, r, s', d) of a D4RL task, of a Minari dataset (read_minari_dataset) or of any file with
    D4RL's schema.

    With stored next_observations every row is a transition and time-limit ends stay non-terminal
    (done = terminals). Without them (v0 files), s' = observations[i+1] and each episode's last row
    (a timeout, or the file's last row) is dropped, as D4RL's qlearning_dataset does.
    """
    path = dataset_path if dataset_path is not None else None
    if path is None:
        if is_minari_id(env_id):
            return read_minari_dataset(env_id)
        if not D4RL_TASK.fullmatch(env_id):
            fail(f"--env-id {env_id!r} is not a D4RL task name or a Minari dataset id: pass --dataset-path FILE.hdf5")
        path = download_d4rl_file(env_id)
    data = read_hdf5_dataset(path)
    observations = data["observations"].astype(np.float32)
    terminals = data["terminals"].astype(bool)
    if "next_observations" in data:
        keep = np.ones(len(observations), dtype=bool)
        next_observations = data["next_observations"].astype(np.float32)
    else:
        if "timeouts" in data:
            timeouts = data["timeouts"].astype(bool)
        else:  # v0 without timeouts: an episode times out at its 1000th step (d4rl's episode_step counter)
            episode_start = np.concatenate([[0], np.flatnonzero(terminals[:-1]) + 1])
            index = np.arange(len(terminals))
            step_in_episode = index - episode_start[np.searchsorted(episode_start, index, side="right") - 1]
            timeouts = (step_in_episode + 1) % 1000 == 0
        keep = ~timeouts
        keep[-1] = False
        next_observations = np.concatenate([observations[1:], observations[-1:]])
    return {
        "observations": observations[keep],
        "actions": data["actions"].astype(np.float32)[keep],
        "rewards": data["rewards"].astype(np.float32).reshape(-1)[keep],
        "next_observations": next_observations[keep],
        "terminals": terminals.astype(np.float32)[keep],
    }


# ---- Minari data path (README: D4RL or Minari): Farama's minari package, imported only for a Minari dataset id ----
def minari_dataset(dataset_id: str):
    """minari.load_dataset: from Minari's cache ($MINARI_DATASETS_PATH, else ~/.minari/datasets), downloaded there when
    missing; checked to hold one flat vector per observation and action and to name its environment."""
    try:
        import minari
    except ImportError:
        fail(f"{dataset_id} is a Minari dataset id; reading it needs the minari package: pip install 'minari[hdf5]'")
    try:
        dataset = minari.load_dataset(dataset_id, download=True)
    except Exception as err:  # not cached and no network, an unknown id, unreadable files: minari raises many types
        fail(f"cannot load Minari dataset {dataset_id}: {type(err).__name__}: {(str(err).strip() or '?').splitlines()[0]}")
    if dataset.env_spec is None:
        fail(f"Minari dataset {dataset_id} names no environment (no env_spec in its metadata)")
    for name, space in (("observation", dataset.observation_space), ("action", dataset.action_space)):
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            fail(
                f"Minari dataset {dataset_id}: its {name} space is {space}; only flat Box spaces (one vector per step) "
                f"are supported"
            )
    return dataset


def read_minari_dataset(dataset_id: str) -> dict[str, np.ndarray]:
    """Transitions of a Minari dataset, episode after episode: s = observations[t], s' = observations[t+1] (an
    episode's last s' is its own final observation, never the next episode's first) and done = terminations[t];
    truncations (time limits) are not terminal. Checked as read_hdf5_dataset checks a D4RL file."""
    episodes = list(minari_dataset(dataset_id).iterate_episodes())
    for episode in episodes:
        steps = len(episode.rewards)
        if len(episode.observations) != steps + 1 or len(episode.actions) != steps:
            fail(
                f"Minari dataset {dataset_id}: episode {episode.id} has {len(episode.observations)} observations and "
                f"{len(episode.actions)} actions for {steps} rewards (observations need one more)"
            )
        if not all(np.all(np.isfinite(values)) for values in (episode.observations, episode.actions, episode.rewards)):
            fail(f"Minari dataset {dataset_id}: episode {episode.id} contains NaN or inf")
    if sum(len(episode.rewards) for episode in episodes) < 2:
        fail(f"Minari dataset {dataset_id} has fewer than 2 steps")
    return {
        "observations": np.concatenate([e.observations[:-1] for e in episodes]).astype(np.float32),
        "actions": np.concatenate([e.actions for e in episodes]).astype(np.float32),
        "rewards": np.concatenate([np.reshape(e.rewards, -1) for e in episodes]).astype(np.float32),
        "next_observations": np.concatenate([e.observations[1:] for e in episodes]).astype(np.float32),
        "terminals": np.concatenate([np.reshape(e.terminations, -1) for e in episodes]).astype(bool).astype(np.float32),
    }


def check_dataset_matches_env(dataset: dict, env: gym.Env, source: str):
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    if dataset["observations"].shape[1] != obs_dim or dataset["actions"].shape[1] != act_dim:
        fail(
            f"dataset {source} has observation/action dims {dataset['observations'].shape[1]}/"
            f"{dataset['actions'].shape[1]} but {env.spec.id} has {obs_dim}/{act_dim}"
        )


CHECKPOINT_FORMAT = "o2o-ensemble-v1"


def write_atomically(path: str, data, what: str):
    """Write bytes to a temp file in the same folder, then rename it over `path`: `path` is always the last good file
    or the complete new one. A full disk, an unwritable or vanished folder: the temp file is removed and the run stops
    with one line naming the file and the cause."""
    tmp_path = f"{path}.tmp"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp_path, "wb") as f:
            f.write(data)
        os.replace(tmp_path, path)
    except OSError as err:
        fail(f"cannot write {what} {path}: {err.strerror or err}")
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp_path)


def save_checkpoint(path: str, payload: dict):
    """torch.save into memory, then write_atomically (torch.save itself reports a full disk as an opaque C++ error)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomically(path, buffer.getbuffer(), "checkpoint")


def load_checkpoint(path: str, what: str):
    """torch.load restricted to tensors and plain Python values (weights_only=True), on the CPU: loading runs no code.

    A file the restricted unpickler refuses is not loaded. The globals its pickle names are then read statically
    (nothing runs) to tell a checkpoint of an older version, which held numpy arrays, from a foreign file.
    """
    if not os.path.isfile(path):
        fail(f"{what} {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing them; fail() says it
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # refused by the restricted unpickler, or not a pickle at all
        pass
    except Exception as err:  # zip and I/O errors of a truncated or foreign file
        fail(f"cannot read {what} {path}: {(str(err).strip() or repr(err)).splitlines()[0]}")
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"PK" and magic[:1] != b"\x80":  # neither a torch.save zip nor a binary pickle
        fail(f"cannot read {what} {path}: not a file written by torch.save")
    try:
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # a bare pickle, or opcodes torch.save never writes: no list of names
        names = []
    numpy_arrays = {
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
    }
    if names and set(names) <= numpy_arrays:
        fail(
            f"{what} {path} holds numpy arrays: it was written by an older version of this project and was not "
            f"loaded; if you trust the file, convert it once with: python benchmark/convert_checkpoint.py {path}"
        )
    fail(
        f"{what} {path} contains objects a checkpoint of this project never holds"
        f"{' (' + ', '.join(names) + ')' if names else ''}; it was not loaded"
    )


def check_output_checkpoint(path: str, algo: str):
    """Never overwrite another script's checkpoint (such as a CQL ensemble given where the output belongs): a file at
    the output path must be one of this script's (`algo`; a fresh run then overwrites it) or not a checkpoint."""
    if os.path.isfile(path) and zipfile.is_zipfile(path):
        existing = load_checkpoint(path, "checkpoint")
        if isinstance(existing, dict) and existing.get("algo") not in (None, algo):
            fail(
                f"--checkpoint {path} holds a {existing['algo']!r} checkpoint; refusing to overwrite it (--checkpoint "
                f"is where this run writes; inputs have their own flags)"
            )


def load_resume_checkpoint(path: str, expected: dict) -> dict:
    """The checkpoint --resume continues: it must exist, be in our format, match this run (`expected`: algo, env,
    sizes) and hold a resume state."""
    if not os.path.isfile(path):
        fail(f"--resume: no checkpoint at {path} (give the run's --checkpoint)")
    ckpt = load_checkpoint(path, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        fail(f"checkpoint {path} is not an {CHECKPOINT_FORMAT} checkpoint")
    for key, value in expected.items():
        if ckpt.get(key) != value:
            fail(f"checkpoint {path} has {key}={ckpt.get(key)!r} but this run has {key}={value!r}")
    if "resume" not in ckpt:
        fail(f"checkpoint {path} holds no resume state")
    return ckpt


def resume_state(np_rng: np.random.Generator, modules: dict, **values) -> dict:
    """A checkpoint's "resume" entry: the state dicts of `modules` (target networks, optimizers), plain `values` (step,
    run dir, buffers) and the RNG states of torch, CUDA, numpy and python, so that --resume continues exactly."""
    rng = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "numpy": np_rng.bit_generator.state,
        "python": random.getstate(),
    }
    return {**{name: module.state_dict() for name, module in modules.items()}, **values, "rng": rng}


def load_resume_state(ckpt: dict, path: str, np_rng: np.random.Generator, modules: dict) -> dict:
    """The inverse of resume_state: loads `modules` and restores the RNGs; returns the resume entry (for its values).
    Also reads the RNG keys of checkpoints written before resume_state (torch_rng, numpy_rng, python_rng, cuda_rng; or
    rng with "random" for python's, in awac.py and bcq_ft.py)."""
    state = ckpt["resume"]
    for name, module in modules.items():
        load_state(module, state[name], name, path)
    rng = state.get("rng") or {key: state.get(f"{key}_rng") for key in ("torch", "cuda", "numpy", "python")}
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        for device, cuda_state in enumerate(rng["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
    np_rng.bit_generator.state = rng["numpy"]
    random.setstate(rng["python"] if "python" in rng else rng["random"])
    return state


def load_state(module, state_dict: dict, what: str, path: str):
    """module.load_state_dict (strict for a network) with one clear line when the stored state does not fit."""
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, ValueError, KeyError) as err:
        fail(f"checkpoint {path}: its {what} does not fit this run ({str(err).strip().splitlines()[0]} ...)")


def keep_freed_memory_on_cpu():
    """CPU speed: let glibc's malloc reuse freed memory instead of mmap-ing (and page-faulting) each large tensor.

    The activations of one vectorized update are tens of MB at N = 5 (cql_pretrain.py's critic: [2N, B (1 + 3
    n_actions), 256] floats, 81 MB; bcq_ft.py's 750-wide VAE). Above glibc's mmap threshold (at most 32 MB) every
    such tensor is a fresh mmap whose pages fault in on first touch, which made the vectorized N = 5 update up to
    1.5x slower than a loop over 5 one-member networks on the CPU (benchmark/throughput.py). A no-op where the C
    library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-4, 0)  # M_MMAP_MAX = 0: serve every allocation from the heap
    libc.mallopt(-1, 1 << 30)


def read_ensemble_checkpoint(path: str, what: str):
    """A checkpoint (CONTRIBUTING.md: Contracts) with every field fqe.py reads (loaded by load_checkpoint: no code runs)."""
    ckpt = load_checkpoint(path, what)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        fail(f"{what} {path} is not an {CHECKPOINT_FORMAT} checkpoint")
    missing = [
        k
        for k in ("algo", "env_id", "obs_dim", "act_dim", "n_ensemble", "hidden_sizes", "actor", "critic", "step")
        if k not in ckpt
    ]
    if missing:
        fail(f"{what} {path} lacks field(s) {', '.join(missing)}")
    return ckpt


def check_writable(path: str, what: str = "checkpoint"):
    """Fail at startup, not after hours of training, when `path` cannot be written: its folder (the folder itself
    when `what` ends in "directory") is created and a probe file is written there and removed."""
    folder = os.path.abspath(path) if what.endswith("directory") else os.path.dirname(os.path.abspath(path))
    probe = os.path.join(folder, f".write_probe_{os.getpid()}.tmp")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as err:
        fail(f"cannot write {what} {path}: {err}")


def catch_stop_signals() -> dict:
    """From here on SIGTERM (Slurm, some time before its limit; kill) and SIGINT (Ctrl-C) only set stop["signal"]: the
    training loop checks it after each update, writes a resumable checkpoint and calls stop_after_signal. A second
    signal stops at once (the default handlers are back)."""
    stop = {"signal": None}

    def handler(signum, frame):
        stop["signal"] = signum
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def stop_after_signal(signum: int, checkpoint: str, step: int):
    """The end of a run stopped by a signal, once its checkpoint is written: one line saying how to continue, and exit
    status 75 (EX_TEMPFAIL, "try again"), which benchmark/paper.sh's Slurm jobs take as: requeue with --resume."""
    command = shlex.join(["python", *sys.argv, *([] if "--resume" in sys.argv else ["--resume"])])
    tqdm.write(
        f"stopped by {signal.Signals(signum).name} after step {step}: checkpoint {checkpoint} written; continue "
        f"with: {command}",
        file=sys.stderr,
    )
    raise SystemExit(75)


def start_tracking(args, run_dir: str):
    """--track: a Weights & Biases run that mirrors the TensorBoard scalars (sync_tensorboard, so call it before the
    SummaryWriter exists) under the run dir's name; None without --track. WANDB_MODE=offline keeps it on disk."""
    if not args.track:
        return None
    try:
        import wandb
    except ImportError:
        fail("--track needs Weights & Biases: pip install wandb")
    return wandb.init(
        project=args.wandb_project_name,
        entity=args.wandb_entity,
        sync_tensorboard=True,
        config=vars(args),
        name=os.path.basename(os.path.normpath(run_dir)),
        save_code=True,
    )


class TensorBoardWriter(SummaryWriter):
    """A SummaryWriter whose failed writes (a full disk) stop the run with one line, as every other write does.
    tensorboard writes the event file in a thread of its own: its error comes out at the writer's next call (close
    flushes first), and quiet_tensorboard_thread keeps that thread from printing a traceback as well."""

    def __init__(self, log_dir: str, purge_step: int | None = None):
        threading.excepthook = quiet_tensorboard_thread
        self.stop_on_os_error(super().__init__, log_dir, purge_step=purge_step)

    def stop_on_os_error(self, write, *args, **kwargs):
        try:
            return write(*args, **kwargs)
        except OSError as err:
            fail(f"cannot write TensorBoard log {self.log_dir}: {err.strerror or err}")

    def add_scalar(self, *args, **kwargs):
        return self.stop_on_os_error(super().add_scalar, *args, **kwargs)

    def add_text(self, *args, **kwargs):
        return self.stop_on_os_error(super().add_text, *args, **kwargs)

    def flush(self):
        return self.stop_on_os_error(super().flush)

    def close(self):
        return self.stop_on_os_error(super().close)


def quiet_tensorboard_thread(args):
    """threading.excepthook: an OSError in tensorboard's writer thread prints nothing (TensorBoardWriter reports it);
    an error in any other thread is printed as usual."""
    if not (issubclass(args.exc_type, OSError) and type(args.thread).__module__.startswith("tensorboard.")):
        threading.__excepthook__(args)


VIDEO_SIZE, VIDEO_FPS = 240, 25  # --capture-video frames: 240 x 240 pixels, ~25 frames per second of simulated time


class EvalVideos:
    """--capture-video: after the first evaluation, every --video-every-evals-th and the last, one episode of the
    evaluated policy from the first evaluation episode's start seed, rendered on an env of its own (the evaluation
    env, its RNG and the torch RNG are left as they were: no logged number changes), to <run_dir>/videos/step<N>.mp4
    (imageio-ffmpeg), else .gif (Pillow)."""

    def __init__(self, args, run_dir: str):
        self.on, self.every, self.dir, self.n_evals = args.capture_video, args.video_every_evals, run_dir, 0
        if self.on:
            os.environ.setdefault("MUJOCO_GL", "egl")  # headless MuJoCo; read when the first env imports mujoco
            if self.every < 1:
                fail("--video-every-evals must be at least 1")

    def after_eval(self, env: gym.Env, policy, seed: int, step: int, last: bool, device):
        """env: the evaluation env (only its spec is used); policy as in `evaluate`. Returns the path written or None."""
        self.n_evals += 1
        if not self.on or not (self.n_evals == 1 or self.n_evals % self.every == 0 or last):
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                render_env = gym.make(env.spec, render_mode="rgb_array", width=VIDEO_SIZE, height=VIDEO_SIZE)
            obs, _ = render_env.reset(seed=seed)
            frames = [render_env.render()]
        except Exception as err:  # no GL library, no EGL device, an env that cannot render
            fail(
                f"--capture-video: cannot render {env.spec.id} (MUJOCO_GL={os.environ.get('MUJOCO_GL', '')}): "
                f"{(str(err).strip() or type(err).__name__).splitlines()[0]}; headless MuJoCo needs EGL "
                f"(apt install libegl1) or OSMesa (MUJOCO_GL=osmesa, apt install libosmesa6)"
            )
        fps = render_env.metadata.get("render_fps") or VIDEO_FPS
        frame_every, done, t = max(1, round(fps / VIDEO_FPS)), False, 0
        with torch.random.fork_rng(), torch.no_grad():  # a stochastic policy draws from a copy of the torch RNG
            while not done:
                action = policy(torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(0))[0].cpu().numpy()
                obs, _, terminated, truncated, _ = render_env.step(action)
                done, t = terminated or truncated, t + 1
                if t % frame_every == 0 or done:
                    frames.append(render_env.render())
        render_env.close()
        os.makedirs(os.path.join(self.dir, "videos"), exist_ok=True)
        return write_video(frames, os.path.join(self.dir, "videos", f"step{step}"), fps / frame_every)


def write_video(frames: list, stem: str, fps: float) -> str:
    """stem.mp4 with imageio-ffmpeg, else stem.gif with Pillow, each imported only here; returns the path."""
    try:
        import imageio_ffmpeg
    except ImportError:
        try:
            from PIL import Image
        except ImportError:
            fail("--capture-video needs imageio-ffmpeg (MP4) or Pillow (GIF): pip install imageio-ffmpeg")
        path = stem + ".gif"
        images = [Image.fromarray(frame) for frame in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
        return path
    path = stem + ".mp4"
    height, width = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(
        path,
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        macro_block_size=1,
        output_params=["-loglevel", "error"],
    )
    writer.send(None)  # start ffmpeg
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


# =====================================================================================================================
# End of the shared plumbing
# =====================================================================================================================

if __name__ == "__main__":
    main()


# ---------------------------------------------------------------------------------------------------------------------
# Notes. Choices where the paper is silent:
# ---------------------------------------------------------------------------------------------------------------------
#   * Twin critics without a min in the target (a min would be a pessimistic, i.e. conservative, estimate).
#   * The critics start from a fresh random initialisation (standard FQE), not from the CQL critics.
#   * The policy is fixed, so its eq. (5) moments at every next_observation of the dataset are computed once at the
#     start; an update then only samples a' = tanh(mu + sigma eps).
#   * Default 250,000 steps (the paper gives none). Hidden width defaults to the policy checkpoint's (balanced_finetune.py
#     requires FQE and CQL networks of one size); --n-ensemble defaults to all members of the policy checkpoint.
#   * Accepted policy checkpoints: those with an EnsembleActor (algo cql, balanced, awac or sac; CONTRIBUTING.md).
#   * Evaluation every --eval-every steps: eval/mc_return is the mean discounted return of the stochastic ensemble
#     policy over --eval-episodes episodes in the env (start states from env seeds seed + 10000 + k);
#     eval/q_estimate is the FQE value V(s) = E_{a~pi} Q(s, a) (mean over members, twins and 10 sampled actions)
#     at the dataset's episode start states (row 0 and every row whose previous next_observation differs from it);
#     eval/q_estimate_env_starts is the same at the start states of the Monte-Carlo episodes, the like-for-like one.
#   * Logged losses/qf is the TD MSE averaged over members and twins; charts/q_data the mean Q(s, a_data).
#   * What to expect: on a narrow dataset FQE overestimates at gamma 0.99, because the policy's actions at s' lie
#     where the data do not pin Q down and the errors compound through bootstrapping (a CQL policy on a 20k-row
#     random-policy Hopper dataset, hidden 64, 30k steps: eval/q_estimate 127 against eval/mc_return 48 and still
#     rising), while at gamma 0.9 it matches (10.5 against 9.2-10.6). That optimism is what paper Fig. 1c is about.
#   * Output: a checkpoint (CONTRIBUTING.md) with algo "fqe", the same N, actor = the N policy members evaluated, critic = the
#     FQE critics, plus a resume state (target critics, optimizer, RNG states, step, run dir) for --resume. Flags: the
#     output is --checkpoint and the input --policy-checkpoint, as they always were (no old spelling to keep).
#     Checkpoints written before resume_state (flat torch_rng/numpy_rng/python_rng/cuda_rng keys) resume as they are.
#     policy_checkpoint is the path given (relative to where the run started, the repository root for benchmark/), so a
#     committed checkpoint names no machine's folder; older checkpoints hold an absolute path. A record only: no script
#     reads it back.
#   * SIGTERM or SIGINT: the current update finishes, the checkpoint is written at that step and the run exits with
#     status 75 and the command that continues it; that run logs what the uninterrupted one would have.
