"""AWAC offline-to-online baseline, optionally as a vectorized ensemble (CleanRL style, one file).

Implements Advantage-Weighted Actor-Critic (Nair, Gupta, Dalal, Levine, "AWAC: Accelerating Online
Reinforcement Learning with Offline Datasets", 2020) as the offline-to-online baseline of Lee, Seo, Lee,
Abbeel, Shin, "Offline-to-Online Reinforcement Learning via Balanced Replay and Pessimistic Q-Ensemble"
(CoRL 2021). One run = an offline phase of `--offline-steps` gradient
steps on the D4RL dataset, then an online phase of `--online-steps` environment steps with one gradient step
after each, with the SAME update rule; one replay buffer holds the dataset and, online, the new transitions
(capacity = dataset size + online steps, nothing is overwritten; minibatches are uniform over its contents).

Update (the AWAC paper's Algorithm 1: weighted-likelihood actor update and TD backup of the critic):
  critic: twin Q regressed on  y = r + γ(1−d)·min(Q1', Q2')(s', a'),  a' ~ π(·|s')  (no entropy term),
          loss = MSE(Q1, y) + MSE(Q2, y)  (as CORL's awac.py); targets are Polyak averages, τ = 5e-3.
  actor:  loss = −mean[ log π(a|s) · min(exp(A(s,a)/λ), 100) ],
          A(s,a) = min(Q1,Q2)(s,a) − min(Q1,Q2)(s, a_π),  a_π ~ π(·|s),  weights computed without gradient.
  Order per step as CORL's awac.py: critic step, then actor step with the freshly updated critic, then Polyak.

Implementation choices where the paper is silent: the Notes at the end of this file.

    python awac.py --env-id hopper-medium-v2 --n-ensemble 5
    python awac.py --env-id walker2d-medium-expert-v2 --n-ensemble 5 --awac-lambda 0.3333
    python awac.py --env-id Hopper-v4 --dataset-path data/hopper_replay.hdf5 --offline-steps 20000 \
        --online-steps 20000 --hidden-dim 64
    python awac.py --env-id hopper-medium-v2 --n-ensemble 5 --resume    # continue an interrupted run
"""

import contextlib
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
from typing import Annotated

import gymnasium as gym
import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm


@dataclass
class Args:
    # task, data and seed
    env_id: str = "walker2d-medium-expert-v2"
    """D4RL task name, Minari dataset id (mujoco/hopper/medium-v0) or, with --dataset-path, any gymnasium id to act in"""
    dataset_path: str | None = None
    """HDF5 file with D4RL's schema; default: the D4RL file of --env-id (cached or downloaded)"""
    seed: int = 1
    """seed of random, numpy, torch and the environments"""

    # algorithm
    n_ensemble: int = 1
    """number of AWAC agents trained as one vectorized ensemble (acting uses the eq. 5 mixture policy)"""
    offline_steps: int = 1_000_000
    """gradient steps on the dataset before any interaction"""
    online_steps: int = 250_000
    """environment steps of the online phase (one gradient step after each)"""
    batch_size: int = 256
    """minibatch size per member"""
    hidden_dim: int = 256
    """width of the two hidden layers of actor and critics"""
    learning_rate: float = 3e-4
    """Adam learning rate of actor and critics"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 5e-3
    """Polyak averaging coefficient of the target critics"""
    awac_lambda: float = 1.0
    """temperature λ of the advantage weights exp(A/λ) (CORL: 0.3333 for walker2d-medium-expert)"""
    exp_adv_max: float = 100.0
    """cap on the advantage weights"""

    # evaluation, logging and checkpoints
    eval_every: int = 5_000
    """evaluate whenever the x-axis step (online env steps; offline steps count negative) is a multiple of this"""
    eval_episodes: int = 10
    """episodes per evaluation (deterministic eq. 5 policy)"""
    log_every: int = 1_000
    """log losses (and check them for NaN/inf) every this many steps"""
    # --save-checkpoint: the old spelling, still accepted (tyro lists the aliases first: this puts --checkpoint first)
    checkpoint: Annotated[str | None, tyro.conf.arg(name="save-checkpoint", aliases=("--checkpoint",))] = None
    """checkpoint written during and at the end of the run (default checkpoints/awac_{env_id}_seed{seed}.pt)"""
    checkpoint_every: int = 50_000
    """write the resumable checkpoint every this many steps (offline and online steps alike); 0: only at the end"""
    resume: bool = False
    """continue the run stored in --checkpoint"""
    run_dir: str | None = None
    """TensorBoard folder; default runs/{env_id}__awac__{seed}__{time}; a resumed run reuses the stored one"""

    # runtime
    cuda: bool = True
    """use CUDA when available"""
    torch_deterministic: bool = True
    """torch.backends.cudnn.deterministic"""

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


def tanh_gaussian_sample(mean: torch.Tensor, log_std: torch.Tensor):
    """Reparameterized a = tanh(u), u ~ N(mean, std), and log pi(a) with the tanh change of variables."""
    std = log_std.exp()
    u = mean + std * torch.randn_like(mean)
    log_prob = torch.distributions.Normal(mean, std, validate_args=False).log_prob(u)
    log_prob = log_prob - 2.0 * (np.log(2.0) - u - F.softplus(-2.0 * u))
    return torch.tanh(u), log_prob.sum(-1)


# ---------------------------------------------------------------------------------------------------------------------
# AWAC: policy, losses, update step
# ---------------------------------------------------------------------------------------------------------------------
def tanh_gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """log pi(a|s) of a given action in [-1, 1] (clipped to ±(1 - 1e-6) before atanh), summed over action dims, with
    the same change of variables as tanh_gaussian_sample. A NaN in mean or log_std reaches the loss check."""
    u = torch.atanh(action.clamp(-1.0 + 1e-6, 1.0 - 1e-6))
    log_prob = torch.distributions.Normal(mean, log_std.exp(), validate_args=False).log_prob(u)
    log_prob = log_prob - 2.0 * (np.log(2.0) - u - F.softplus(-2.0 * u))
    return log_prob.sum(-1)


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


def critic_loss_fn(actor, critic, critic_target, batch, gamma: float):
    """Twin-Q TD loss: y = r + γ(1−d)·min(Q1', Q2')(s', a'~π(s')), no entropy; Σ_members (MSE(Q1,y) + MSE(Q2,y))."""
    obs, actions, rewards, next_obs, dones = batch
    with torch.no_grad():
        next_actions, _ = tanh_gaussian_sample(*actor(next_obs))
        next_q = critic_target(next_obs, next_actions).min(dim=1).values  # [N, B]
        target = rewards + gamma * (1.0 - dones) * next_q
    q = critic(obs, actions)  # [N, 2, B]
    return (q - target.unsqueeze(1)).pow(2).mean(-1).sum(), q.detach()


def awac_actor_loss(actor, critic, obs, actions, awac_lambda: float, exp_adv_max: float):
    """AWAC actor loss: −mean[log π(a|s) · min(exp(A/λ), cap)], A = minQ(s,a) − minQ(s, a_π), a_π ~ π(·|s) (one sample).

    Per-member mean over the batch, summed over members. Returns (loss, weights [N, B]).
    """
    mean, log_std = actor(obs)
    with torch.no_grad():
        pi_actions, _ = tanh_gaussian_sample(mean, log_std)
        v = critic(obs, pi_actions).min(dim=1).values
        q = critic(obs, actions).min(dim=1).values
        weights = torch.exp((q - v) / awac_lambda).clamp_max(exp_adv_max)
    log_prob = tanh_gaussian_log_prob(mean, log_std, actions)  # [N, B]
    return -(log_prob * weights).mean(-1).sum(), weights


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float):
    """Polyak averaging of the target network: target <- (1 - tau) target + tau source."""
    for target_param, param in zip(target.parameters(), source.parameters()):
        target_param.lerp_(param, tau)


def awac_update(actor, critic, critic_target, actor_optimizer, critic_optimizer, batch, args) -> dict:
    """One AWAC gradient step (critic, then actor with the updated critic, then Polyak). No host sync inside."""
    critic_loss, q = critic_loss_fn(actor, critic, critic_target, batch, args.gamma)
    critic_optimizer.zero_grad(set_to_none=True)
    critic_loss.backward()
    critic_optimizer.step()

    actor_loss, weights = awac_actor_loss(actor, critic, batch[0], batch[1], args.awac_lambda, args.exp_adv_max)
    actor_optimizer.zero_grad(set_to_none=True)
    actor_loss.backward()
    actor_optimizer.step()

    soft_update(critic_target, critic, args.tau)
    return {
        "losses/critic_loss": critic_loss.detach(),
        "losses/actor_loss": actor_loss.detach(),
        "losses/qf_mean": q.mean(),
        "losses/adv_weight_mean": weights.mean(),
        "losses/adv_weight_capped_fraction": (weights >= args.exp_adv_max).float().mean(),
    }


@dataclass
class AWACNetworks:
    """Actor, twin critics, their Polyak target, and the Adam optimizers of actor and critics."""

    actor: EnsembleActor
    critic: EnsembleCritic
    critic_target: EnsembleCritic
    actor_optimizer: torch.optim.Adam
    critic_optimizer: torch.optim.Adam

    def resumable(self) -> dict:
        """What a checkpoint keeps under "resume" (actor and critic are its own keys), in the stored order."""
        return {
            "critic_target": self.critic_target,
            "actor_optimizer": self.actor_optimizer,
            "critic_optimizer": self.critic_optimizer,
        }


def make_awac_networks(obs_dim: int, act_dim: int, args: Args, device: torch.device) -> AWACNetworks:
    """Fresh networks (shared-block classes, so the checkpoint loads like every other script's) and optimizers; built in
    this order, which fixes the torch RNG draws of their initialization."""
    hidden_sizes = [args.hidden_dim, args.hidden_dim]
    actor = EnsembleActor(obs_dim, act_dim, hidden_sizes, args.n_ensemble).to(device)
    critic = EnsembleCritic(obs_dim, act_dim, hidden_sizes, args.n_ensemble).to(device)
    critic_target = EnsembleCritic(obs_dim, act_dim, hidden_sizes, args.n_ensemble).to(device)
    critic_target.load_state_dict(critic.state_dict())
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.learning_rate)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.learning_rate)
    return AWACNetworks(actor, critic, critic_target, actor_optimizer, critic_optimizer)


# ---------------------------------------------------------------------------------------------------------------------
# Replay buffer: the dataset followed by the online transitions (nothing is overwritten)
# ---------------------------------------------------------------------------------------------------------------------
class OfflineOnlineBuffer:
    FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals")

    def __init__(self, dataset: dict, capacity: int, device: torch.device):
        self.dataset_size = len(dataset["observations"])
        self.size = self.dataset_size
        self.data = {}
        for key in self.FIELDS:
            values = torch.as_tensor(dataset[key])
            self.data[key] = torch.zeros((capacity, *values.shape[1:]), dtype=torch.float32, device=device)
            self.data[key][: self.size] = values.to(device)

    def add(self, obs, action, reward, next_obs, terminal):
        for key, value in zip(self.FIELDS, (obs, action, reward, next_obs, terminal)):
            self.data[key][self.size] = torch.as_tensor(np.asarray(value, dtype=np.float32))
        self.size += 1

    def sample(self, rng: np.random.Generator, n_ensemble: int, batch_size: int):
        """Own uniform minibatch for each member: indices [N, B] -> (s, a, r, s', d) with leading dims [N, B]."""
        idx = torch.as_tensor(rng.integers(0, self.size, size=(n_ensemble, batch_size)))
        idx = idx.to(self.data["observations"].device)
        return tuple(self.data[key][idx] for key in self.FIELDS)

    def online_part(self) -> dict:
        """The online rows as CPU tensors of their own (a slice would save the whole buffer's storage)."""
        return {key: self.data[key][self.dataset_size : self.size].to("cpu", copy=True) for key in self.FIELDS}

    def load_online_part(self, online: dict):
        n = len(online["observations"])
        for key in self.FIELDS:
            self.data[key][self.dataset_size : self.dataset_size + n] = online[key]
        self.size = self.dataset_size + n


# ---------------------------------------------------------------------------------------------------------------------
# The run's pieces (main() below is their outline): arguments, checkpoint, resume, logging, evaluation
# ---------------------------------------------------------------------------------------------------------------------
def check_awac_args(args: Args):
    """Stop with one line (fail) on a flag value no run can use."""
    for name in ("n_ensemble", "batch_size", "hidden_dim", "eval_episodes", "log_every", "eval_every"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1")
    if args.offline_steps < 0 or args.online_steps < 0 or args.checkpoint_every < 0:
        fail("--offline-steps, --online-steps and --checkpoint-every must be non-negative")
    for name, value in (
        ("learning_rate", args.learning_rate),
        ("tau", args.tau),
        ("awac_lambda", args.awac_lambda),
        ("exp_adv_max", args.exp_adv_max),
    ):
        if not (np.isfinite(value) and value > 0):
            fail(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    if not 0.0 <= args.gamma <= 1.0:
        fail(f"--gamma must lie in [0, 1], got {args.gamma}")


def awac_checkpoint_identity(args: Args, obs_dim: int, act_dim: int) -> dict:
    """What a checkpoint of this run is: the keys every checkpoint starts with and --resume requires to match."""
    return {
        "algo": "awac",
        "env_id": args.env_id,
        "obs_dim": obs_dim,
        "act_dim": act_dim,
        "n_ensemble": args.n_ensemble,
        "hidden_sizes": [args.hidden_dim] * 2,
    }


def awac_checkpoint(args: Args, identity: dict, nets: AWACNetworks, np_rng, buffer, step: int, episodes: int, run_dir: str):
    """The checkpoint payload (CONTRIBUTING.md: Checkpoint): identity, actor and critic, and under "resume" the target
    critics, optimizers, RNG states, counters and online transitions that --resume needs."""
    return {
        "format": CHECKPOINT_FORMAT,
        **identity,
        "actor": nets.actor.state_dict(),
        "critic": nets.critic.state_dict(),
        "step": step,
        "args": dataclasses.asdict(args),
        "resume": resume_state(
            np_rng,
            nets.resumable(),
            global_step=step,
            episodes=episodes,
            run_dir=run_dir,
            dataset_size=buffer.dataset_size,
            online_transitions=buffer.online_part(),
        ),
    }


def load_awac_resume(path: str, identity: dict, nets: AWACNetworks, buffer, np_rng, online_steps: int) -> dict:
    """--resume: the checkpoint must match this run and its dataset, and its online transitions fit the buffer; restores
    networks, optimizers, RNG states and online transitions, and returns its resume entry (step, episodes, run dir)."""
    ckpt = load_resume_checkpoint(path, identity)
    state = ckpt["resume"]
    check_resume_fits_buffer(state, path, buffer.dataset_size, online_steps)
    load_state(nets.actor, ckpt["actor"], "actor", path)
    load_state(nets.critic, ckpt["critic"], "critic", path)
    load_resume_state(ckpt, path, np_rng, nets.resumable())
    buffer.load_online_part(state["online_transitions"])
    return state


def log_awac_losses(writer, metrics: dict, x: int, step: int, buffer_size: int, last_log: tuple) -> tuple:
    """Losses at x (checked for NaN/inf: the one host sync), steps per second since the last log (`last_log`: its time
    and step) and the buffer size; returns this log's (time, step)."""
    values = check_finite(metrics, x)
    for name, value in values.items():
        writer.add_scalar(name, value, x)
    last_log_time, last_log_step = last_log
    writer.add_scalar("charts/SPS", (step - last_log_step) / max(time.time() - last_log_time, 1e-9), x)
    writer.add_scalar("charts/buffer_size", buffer_size, x)
    return time.time(), step


def evaluate_awac(args: Args, eval_env, policy, videos, writer, x: int, last: bool, metrics: dict, device):
    """Returns of the deterministic eq. 5 policy from the fixed evaluation seeds (and a video when due), logged at x and
    printed with the latest critic loss."""
    returns = evaluate(eval_env, policy, [args.seed + 10_000 + i for i in range(args.eval_episodes)], device)
    videos.after_eval(eval_env, policy, args.seed + 10_000, x, last, device)
    score = normalized_score(args.env_id, returns.mean())
    writer.add_scalar("eval/return", returns.mean(), x)
    writer.add_scalar("eval/normalized_score", score, x)
    tqdm.write(
        f"x={x} ({'offline' if x <= 0 else 'online'}) return={returns.mean():.1f} "
        f"normalized={score:.1f} critic_loss={metrics['losses/critic_loss'].item():.3f}"
    )


def main():
    args = tyro.cli(Args)
    check_awac_args(args)
    checkpoint_path = args.checkpoint or f"checkpoints/awac_{args.env_id}_seed{args.seed}.pt"
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.deterministic = args.torch_deterministic

    random.seed(args.seed)
    np_rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)

    # data, envs, buffer (README: D4RL or Minari)
    eval_env = make_env(args.env_id, args.seed + 10_000)
    obs_dim, act_dim = eval_env.observation_space.shape[0], eval_env.action_space.shape[0]
    dataset = load_d4rl_dataset(args.env_id, args.dataset_path)
    check_dataset_matches_env(dataset, eval_env, args.dataset_path or args.env_id)
    buffer = OfflineOnlineBuffer(dataset, len(dataset["observations"]) + args.online_steps, device)
    total_steps = args.offline_steps + args.online_steps

    # networks, optimizers, and the run they continue (--resume) or start
    nets = make_awac_networks(obs_dim, act_dim, args, device)
    identity = awac_checkpoint_identity(args, obs_dim, act_dim)
    global_step, episodes = 0, 0
    if args.resume:
        state = load_awac_resume(checkpoint_path, identity, nets, buffer, np_rng, args.online_steps)
        global_step, episodes = state["global_step"], state["episodes"]
        run_dir = args.run_dir or state["run_dir"]
    else:
        run_dir = args.run_dir or f"runs/{args.env_id}__awac__{args.seed}__{int(time.time())}"
        check_output_checkpoint(checkpoint_path, "awac")
    check_writable(checkpoint_path, "checkpoint")
    check_writable(run_dir, "run directory")

    x_of = lambda step: step - args.offline_steps  # x-axis: online env steps, offline ones before 0
    tracking, videos = start_tracking(args, run_dir), EvalVideos(args, run_dir)  # --track, --capture-video
    writer = TensorBoardWriter(run_dir, purge_step=x_of(global_step) + 1 if args.resume else None)
    if not args.resume:
        writer.add_text(
            "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{key}|{value}|" for key, value in vars(args).items())
        )

    def save(step: int, metrics: dict | None):
        if metrics is not None:
            check_finite(metrics, x_of(step))  # never overwrite the last good checkpoint with a diverged one
        writer.flush()
        save_checkpoint(checkpoint_path, awac_checkpoint(args, identity, nets, np_rng, buffer, step, episodes, run_dir))

    env, obs = None, None
    metrics, last_log = None, (time.time(), global_step)
    policy = lambda o: torch.tanh(ensemble_moments_at(nets.actor, o)[0])  # the eq. 5 policy, deterministic: tanh(mean)
    progress = tqdm(range(global_step, total_steps), initial=global_step, total=total_steps, desc="awac")
    stop = catch_stop_signals()
    for global_step in progress:
        if global_step >= args.offline_steps:  # online phase: act with the eq. 5 mixture policy, store, update
            if env is None:  # first online step, or a resumed run: a fresh episode (seeded by the step)
                env = make_env(args.env_id, args.seed + global_step)
                obs, _ = env.reset(seed=args.seed + global_step)
            mean, std = ensemble_moments_at(nets.actor, torch.as_tensor(obs, dtype=torch.float32, device=device)[None])
            action = torch.tanh(mean + std * torch.randn_like(mean))[0].cpu().numpy()
            next_obs, reward, terminated, truncated, info = env.step(action)
            buffer.add(obs, action, reward, next_obs, float(terminated))  # time-limit ends stay non-terminal
            obs = next_obs
            if terminated or truncated:
                episodes += 1
                writer.add_scalar("charts/episodic_return", info["episode"]["r"], x_of(global_step + 1))
                writer.add_scalar("charts/episodic_length", info["episode"]["l"], x_of(global_step + 1))
                obs, _ = env.reset()

        batch = buffer.sample(np_rng, args.n_ensemble, args.batch_size)
        metrics = awac_update(
            nets.actor, nets.critic, nets.critic_target, nets.actor_optimizer, nets.critic_optimizer, batch, args
        )

        step, x = global_step + 1, x_of(global_step + 1)
        if x % args.log_every == 0 or step == total_steps:
            last_log = log_awac_losses(writer, metrics, x, step, buffer.size, last_log)
        if x % args.eval_every == 0 or step == total_steps:
            evaluate_awac(args, eval_env, policy, videos, writer, x, step == total_steps, metrics, device)
        if (args.checkpoint_every and step % args.checkpoint_every == 0) or step == total_steps or stop["signal"]:
            save(step, metrics)
        if stop["signal"]:
            progress.close()
            stop_after_signal(stop["signal"], checkpoint_path, step)

    if metrics is None:  # nothing to train (0 steps, or resumed at the end): still leave a checkpoint
        save(global_step, None)
    writer.close()
    if tracking is not None:
        tracking.finish()
    if env is not None:
        env.close()
    eval_env.close()
    print(f"checkpoint: {checkpoint_path}\nrun dir: {run_dir}")


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


def check_resume_fits_buffer(state: dict, path: str, dataset_size: int, online_steps: int):
    """--resume of a run that replays a dataset and its online transitions: the checkpoint's "resume" entry must come
    from a dataset of this size and hold no more online transitions than --online-steps leaves room for."""
    if state["dataset_size"] != dataset_size:
        fail(f"checkpoint {path} was trained on {state['dataset_size']} dataset transitions, this dataset has {dataset_size}")
    if len(state["online_transitions"]["observations"]) > online_steps:  # more than the buffer has room for
        fail(
            f"checkpoint {path} holds {len(state['online_transitions']['observations'])} online "
            f"transitions but --online-steps is {online_steps}"
        )


def load_state(module, state_dict: dict, what: str, path: str):
    """module.load_state_dict (strict for a network) with one clear line when the stored state does not fit."""
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, ValueError, KeyError) as err:
        fail(f"checkpoint {path}: its {what} does not fit this run ({str(err).strip().splitlines()[0]} ...)")


@torch.no_grad()
def evaluate(env: gym.Env, policy, seeds: list, device) -> np.ndarray:
    """Undiscounted returns of one episode per entry of `seeds` (the reset seed; None goes on with the env's own RNG).

    policy: a [1, obs_dim] float32 tensor on `device` -> a [1, act_dim] action tensor in [-1, 1]."""
    returns = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        done, episode_return = False, 0.0
        while not done:
            action = policy(torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(0))[0].cpu().numpy()
            obs, reward, terminated, truncated, _ = env.step(action)
            episode_return += float(reward)
            done = terminated or truncated
        returns.append(episode_return)
    return np.array(returns)


def check_finite(metrics: dict, step: int):
    """Stop with a clear message when a logged loss is NaN/inf (one host sync, only at log/checkpoint time)."""
    values = torch.stack(list(metrics.values())).cpu()
    if not torch.isfinite(values).all():
        name = next(k for k, v in zip(metrics, values) if not torch.isfinite(v))
        fail(
            f"{name} is {values[list(metrics).index(name)].item()} at step {step}; stopping (the last good checkpoint is kept)"
        )
    return dict(zip(metrics, values.tolist()))


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
# Notes. Choices made where the paper is silent:
# ---------------------------------------------------------------------------------------------------------------------
# - V(s) ≈ min-Q(s, a_π) with a_π ONE SAMPLE of the current policy (not its mean), as CORL's awac.py
#   (`pi_action, _ = self._actor(states)` draws an rsample). The next-state action a' is also a sample.
# - Policy: the shared block's tanh-Gaussian EnsembleActor (state-dependent log-std clamped to [−20, 2]) so the
#   checkpoint format matches the other scripts. log π(a|s) of a dataset action is the tanh-Gaussian density:
#   u = atanh(clip(a, −1+1e-6, 1−1e-6)),  log π = Σ_j [log N(u_j; μ_j, σ_j) − log(1 − tanh(u_j)²)]
#   (the clip keeps atanh finite for actions stored at exactly ±1; the Jacobian term does not depend on the
#   parameters, so it changes the value of the loss but not its gradient).
# - λ (`--awac-lambda`) defaults to 1.0; CORL uses 0.3333 for walker2d-medium-expert (pass --awac-lambda 0.3333).
# - Learning rate 3e-4 for actor and critic, batch 256, γ 0.99, hidden 256-256 (the paper's baselines). The actor uses no
#   weight decay (CORL's AWAC uses none either).
# - Offline length: `--offline-steps` defaults to 1,000,000 (the paper's CQL pre-training budget, so the
#   baselines get the same offline compute as the method); online: 250,000 steps as balanced_finetune.py.
# - Ensemble (`--n-ensemble N`: the paper applied the ensemble to every baseline): N independent
#   AWAC agents as one vectorized ensemble (EnsembleActor / EnsembleCritic, weights [N, in, out]); each member
#   gets its own minibatch (indices [N, B]), its own targets and its own advantage weights (each member's
#   log π is of its own Gaussian on the data action); losses are per-member means summed over members, so
#   every member's gradient is that of a solo run. Acting and evaluation use the mixture-moment policy of the
#   paper's eq. 5 in pre-tanh space: μ = mean_i μ_i, σ² = mean_i(σ_i² + μ_i²) − μ²; evaluation takes tanh(μ)
#   (deterministic), exploration samples tanh(μ + σ·ε). With N = 1 this is plain AWAC.
# - x-axis of every TensorBoard curve = online environment steps. Offline gradient step t (1-based) is logged
#   at x = t − offline_steps, so the offline phase occupies x ∈ [−offline_steps, 0] and the evaluation at
#   x = 0 is the policy at the end of the offline phase — the same point as balanced_finetune.py's epoch 0
#   (its pretrained policy, logged at x = 0). Online step t (1-based, after its gradient step) is at x = t.
#   Evaluations happen whenever x is a multiple of `--eval-every` (x = 0 included) and at the end.
# - Evaluation: `--eval-episodes` episodes in a separate env, episode k reset with seed `seed + 10_000 + k`
#   (the same start states at every evaluation, independent of training history).
# - Checkpoints (CONTRIBUTING.md: Contracts; format "o2o-ensemble-v1", algo "awac") every `--checkpoint-every` steps (offline
#   and online steps count alike) and at the end, written atomically. `resume` holds the target critic, both
#   optimizers, the RNG states, the global step and the online transitions (the dataset part of the buffer is
#   re-read from the dataset file and its size checked). `--resume` continues from `--checkpoint` (old spelling,
#   still accepted: `--save-checkpoint`): TensorBoard events after the checkpoint's step are purged (SummaryWriter
#   purge_step) so curves continue without duplicates. A run resumed in the online phase starts a new training
#   episode (the simulator state of the interrupted episode is not stored); no transition is lost or stored twice.
#   Checkpoints written before resume_state (rng = {torch, numpy, random}) resume as they are.
# - SIGTERM or SIGINT: the current step finishes, the checkpoint is written at that step and the run exits with
#   status 75 and the command that continues it (exactly so in the offline phase; online, see above).
# - A NaN/inf loss is detected on the values already synced for logging (every `--log-every` steps and before
#   each checkpoint write); the run stops with a message naming the loss and the step, and the last good
#   checkpoint is kept.
