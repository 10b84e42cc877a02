"""Balanced replay + pessimistic Q-ensemble fine-tuning (Lee, Seo, Lee, Abbeel, Shin, CoRL 2021), CleanRL style.

Loads N offline CQL agents (cql_pretrain.py) and fine-tunes them online:

* Pessimistic Q-ensemble, eq. (5): the policy is ONE Gaussian in pre-tanh space with the moments of the
  members' mixture, mu = mean_i mu_i, sigma^2 = mean_i(sigma_i^2 + mu_i^2) - mu^2, squashed by tanh.
  All members' actor parameters are trained jointly through it with one Adam (SAC actor loss,
  mean(alpha log pi(a|s) - Qbar(s,a)), Qbar = mean_i min(Q1_i, Q2_i), one sampled action shared by
  all members). Each member keeps its twin critics, regressed on its own target
  r + gamma (1-d) (min(Q1'_i, Q2'_i)(s', a') - alpha log pi(a'|s')), a' ~ the ensemble policy;
  per-member MSE (Q1 + Q2) summed over members. No CQL term online. alpha restarts at 1.0,
  target entropy -|A|; gamma 0.99, tau 5e-3, lr 3e-4, batch 256 [official].
* Balanced replay, eq. (4): one prioritized buffer (numpy sum-tree) holds the dataset and every online
  transition (capacity M + online steps: nothing is overwritten). Offline priority 1; online
  transitions enter with p_max, which starts at M f / ((1 - f) 1000) and never decreases. A density-ratio
  network w(s,a) >= 0 is trained with the Jensen-Shannon f-divergence bound
  mean_off[-log(2/(w+1))] - mean_on[log(2w/(w+1))] (minimiser w* = p_online / p_offline), and the leaves
  of the batch just drawn get priority w^(1/T) / mean_off(w^(1/T)), clamped to [1e-3, 1e3], T = 5.
  Sampling is stratified proportional; no importance weights.
* Schedule [official]: epochs of 1000 env steps followed by 1000 updates (5000 in the first epoch);
  evaluation (deterministic tanh(mu) of the ensemble, >= 5 episodes) at the start of every epoch.

Implementation choices where the paper is silent: the Notes at the end of this file.
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
from typing import Annotated, Literal

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
    # task, data and the pretrained ensemble
    env_id: str = "walker2d-medium-expert-v2"
    """D4RL task name (v4 env), Minari dataset id (mujoco/hopper/medium-v0: the env it names) or gym id + --dataset-path"""
    dataset_path: str | None = None
    """D4RL-format HDF5 file to use instead of the D4RL download for --env-id"""
    cql_checkpoint: str | None = None
    """CQL checkpoint to fine-tune (default checkpoints/cql_{env_id}_seed{seed}.pt, as cql_pretrain.py writes)"""
    n_ensemble: int = 5
    """number of ensemble members N (the first N of the stored ensemble) [official: 5]"""
    q_init: Literal["cql", "fqe"] = "cql"
    """where the critics come from: the CQL checkpoint or an fqe.py checkpoint (policy always from CQL)"""
    fqe_checkpoint: str | None = None
    """fqe.py checkpoint for --q-init fqe (default checkpoints/fqe_{env_id}_seed{seed}.pt)"""

    # method variant and schedule
    sampling: Literal["balanced", "uniform", "online-only"] = "balanced"
    """RL minibatch source: balanced replay, uniform over offline+online, or online data only"""
    online_steps: int = 250_000
    """total online environment steps [official: 250 epochs of 1000]"""
    epoch_length: int = 1000
    """environment steps per epoch, each followed by as many gradient updates [official]"""
    first_epoch_multiplier: int = 5
    """the first epoch does this many times --epoch-length updates [official]"""

    # hyperparameters
    batch_size: int = 256
    """RL minibatch size [official]"""
    ratio_batch_size: int = 256
    """online and offline samples (each) per density-ratio step [official]"""
    hidden_dim: int = 256
    """width of the density-ratio network's two hidden layers [official]; actor/critic sizes come from the checkpoint"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 5e-3
    """target critic Polyak rate"""
    policy_lr: float = 3e-4
    """actor learning rate (one Adam over all members)"""
    q_lr: float = 3e-4
    """critic learning rate"""
    alpha_lr: float = 3e-4
    """entropy temperature learning rate"""
    ratio_lr: float = 3e-4
    """density-ratio network learning rate"""
    init_alpha: float = 1.0
    """entropy temperature alpha at the start of fine-tuning (re-initialised, not loaded)"""
    temperature: float = 5.0
    """T in the priority w^(1/T) [official]"""
    init_online_fraction: float = 0.5
    """f: share of priority mass online after the first 1000 online steps; sets the initial p_max [official]"""

    # evaluation and checkpoints
    eval_episodes: int = 5
    """deterministic evaluation episodes at the start of each epoch (the authors' code: at least 5)"""
    eval_every_epochs: int = 1
    """evaluate at the start of every this many epochs (and at the end)"""
    checkpoint: str | None = None
    """where the fine-tuned ensemble is written (default checkpoints/balanced_{env_id}_seed{seed}.pt)"""
    checkpoint_every: int = 10_000
    """write a resumable checkpoint at the first epoch end after this many env steps (0: only at the end)"""
    keep_checkpoints: bool = False
    """also keep each checkpoint written (periodic and final) as a copy named <checkpoint stem>_step<N>.pt"""
    resume: bool = False
    """continue the run stored in --checkpoint"""
    old_save_checkpoint: Annotated[str | None, tyro.conf.arg(name="save-checkpoint")] = None
    """old spelling of --checkpoint; when given, --checkpoint keeps its old meaning, the CQL input (Notes)"""

    # runtime
    seed: int = 1
    """seed of python, numpy and torch RNGs and of the environments"""
    run_dir: str | None = None
    """TensorBoard folder (default runs/{env_id}__balanced__{seed}__{time})"""
    torch_deterministic: bool = True
    """set torch.backends.cudnn.deterministic"""
    cuda: bool = True
    """use CUDA when available"""
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


# ---------------------------------------------------------------------------------------------------------------------
# Balanced replay: the density-ratio network and priorities (eq. 4), the sum-tree, the replay buffer
# ---------------------------------------------------------------------------------------------------------------------
class DensityRatioNet(nn.Module):
    """w(s, a) >= 0: MLP hidden-hidden ReLU, ReLU output; last layer U(-3e-3, 3e-3), bias 1.0 so w ~ 1 at start."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim + act_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 1),
            nn.ReLU(),
        )
        nn.init.uniform_(self.net[4].weight, -3e-3, 3e-3)
        nn.init.constant_(self.net[4].bias, 1.0)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, act], dim=-1)).squeeze(-1)


def density_ratio_loss(w_online: torch.Tensor, w_offline: torch.Tensor) -> torch.Tensor:
    """Eq. (4) with the Jensen-Shannon f: mean_off[-log(2/(w+1))] - mean_on[log(2w/(w+1))] (minimiser w = p_on/p_off)."""
    offline_term = -torch.log(2.0 / (w_offline + 1.0) + 1e-10).mean()
    online_term = torch.log(2.0 * w_online / (w_online + 1.0) + 1e-10).mean()
    return offline_term - online_term


def priorities_from_ratio(w_batch: torch.Tensor, w_offline: torch.Tensor, temperature: float) -> torch.Tensor:
    """p = w^(1/T) / (mean_off w^(1/T) + 1e-10), clamped to [1e-3, 1e3] (self-normalized, temperature T)."""
    scaled = w_batch.pow(1.0 / temperature)
    normalizer = w_offline.pow(1.0 / temperature).mean() + 1e-10
    return (scaled / normalizer).clamp(1e-3, 1e3)


def update_density_ratio(ratio_net, ratio_optimizer, online, offline, rl_batch, temperature):
    """One density-ratio step (eq. 4). Each argument batch is (obs, act). Returns the RL batch's new priorities,
    computed with w BEFORE this step's update, and the detached loss, mean w_online and mean w_offline by tag."""
    n_on, n_off = len(online[0]), len(offline[0])
    w = ratio_net(torch.cat([online[0], offline[0], rl_batch[0]]), torch.cat([online[1], offline[1], rl_batch[1]]))
    w_online, w_offline, w_batch = w[:n_on], w[n_on : n_on + n_off], w[n_on + n_off :]
    loss = density_ratio_loss(w_online, w_offline)
    priorities = priorities_from_ratio(w_batch.detach(), w_offline.detach(), temperature)
    ratio_optimizer.zero_grad(set_to_none=True)
    loss.backward()
    ratio_optimizer.step()
    return priorities, {
        "losses/density_ratio_loss": loss.detach(),
        "balanced/w_online": w_online.detach().mean(),
        "balanced/w_offline": w_offline.detach().mean(),
    }


class SumTree:
    """Array-backed binary sum-tree over `capacity` leaves, vectorized over batches (no per-sample loops).

    nodes[1] is the root, node i has children 2i and 2i+1, leaf j sits at nodes[n_leaves + j]
    (n_leaves = next power of two >= capacity; the padding leaves stay 0 and are never drawn).
    """

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.depth = max(1, int(np.ceil(np.log2(max(self.capacity, 2)))))
        self.n_leaves = 1 << self.depth
        self.nodes = np.zeros(2 * self.n_leaves, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.nodes[1])

    def get(self, indices) -> np.ndarray:
        return self.nodes[self.n_leaves + np.asarray(indices, dtype=np.int64)]

    def set_all(self, priorities) -> None:
        """Replace every leaf (length <= capacity, the rest 0) and rebuild the tree level by level."""
        priorities = np.asarray(priorities, dtype=np.float64)
        self.nodes[:] = 0.0
        self.nodes[self.n_leaves : self.n_leaves + len(priorities)] = priorities
        lo = self.n_leaves
        while lo > 1:
            lo //= 2
            self.nodes[lo : 2 * lo] = self.nodes[2 * lo : 4 * lo : 2] + self.nodes[2 * lo + 1 : 4 * lo : 2]

    def update(self, indices, priorities) -> None:
        """Set leaves[indices] = priorities (a repeated index keeps its LAST value), then refresh ancestors."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        priorities = np.broadcast_to(np.asarray(priorities, dtype=np.float64), indices.shape)
        if indices.size == 0:
            return
        if indices.min() < 0 or indices.max() >= self.capacity:
            raise IndexError(f"SumTree index out of range [0, {self.capacity})")
        if not np.all(np.isfinite(priorities)) or np.any(priorities < 0):
            raise ValueError("SumTree priorities must be finite and >= 0")
        # last occurrence of each index: first occurrence in the reversed array
        unique, first_in_reversed = np.unique(indices[::-1], return_index=True)
        nodes = unique + self.n_leaves
        self.nodes[nodes] = priorities[::-1][first_in_reversed]
        for _ in range(self.depth):  # each parent recomputed from its two children (duplicates write equal values)
            nodes >>= 1
            self.nodes[nodes] = self.nodes[2 * nodes] + self.nodes[2 * nodes + 1]

    def sample(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """Stratified proportional sampling: total split into batch_size equal segments, one uniform draw in each."""
        total = self.nodes[1]
        if not total > 0:
            raise ValueError("SumTree.sample: all priorities are zero")
        mass = (np.arange(batch_size) + rng.random(batch_size)) * (total / batch_size)
        nodes = np.ones(batch_size, dtype=np.int64)
        for _ in range(self.depth):
            left = 2 * nodes
            left_mass = self.nodes[left]
            # go right when the draw lies past the left subtree; never into a zero-mass subtree (rounding at the edge)
            go_right = (mass >= left_mass) & (self.nodes[left + 1] > 0)
            mass = np.where(go_right, mass - left_mass, mass)
            nodes = left + go_right
        return nodes - self.n_leaves


def initial_p_max(dataset_size: int, init_online_fraction: float) -> float:
    """p_max = M f / ((1 - f) 1000): after 1000 online steps at p_max, f of the priority mass is online [official]."""
    f = init_online_fraction
    return dataset_size * f / ((1.0 - f) * 1000.0)


class BalancedReplayBuffer:
    """The one buffer of balanced replay: offline rows [0, M), then online rows [M, M + online_steps); nothing is ever
    overwritten. Host numpy arrays hold the online data (checkpointed as tensors), device tensors mirror every row for
    sampling, and with --sampling balanced a sum-tree holds every row's priority (offline 1, online p_max)."""

    KEYS = ("observations", "actions", "rewards", "next_observations", "terminals")

    def __init__(self, dataset: dict, online_steps: int, balanced: bool, init_online_fraction: float, device):
        self.dataset_size = M = len(dataset["observations"])
        obs_dim, act_dim = dataset["observations"].shape[1], dataset["actions"].shape[1]
        self.online = {
            "observations": np.zeros((online_steps, obs_dim), np.float32),
            "actions": np.zeros((online_steps, act_dim), np.float32),
            "rewards": np.zeros(online_steps, np.float32),
            "next_observations": np.zeros((online_steps, obs_dim), np.float32),
            "terminals": np.zeros(online_steps, np.float32),
        }
        capacity = M + online_steps
        self.storage = {key: torch.zeros((capacity, *value.shape[1:]), device=device) for key, value in self.online.items()}
        for key in self.storage:
            self.storage[key][:M] = torch.as_tensor(dataset[key], device=device)
        self.tree = SumTree(capacity) if balanced else None
        if balanced:
            self.tree.set_all(np.ones(M))  # offline priority 1
        self.p_max = initial_p_max(M, init_online_fraction)
        self.device = device

    def add(self, row: int, obs, action, reward, next_obs, terminated: bool):
        online = self.online
        online["observations"][row], online["actions"][row], online["rewards"][row] = obs, action, reward
        online["next_observations"][row], online["terminals"][row] = next_obs, float(terminated)  # timeouts not terminal

    def publish(self, start: int, end: int):
        """Online rows [start, end) to the device, entering the sum-tree with p_max."""
        M = self.dataset_size
        for key in self.storage:
            rows = self.online[key][start:end]
            self.storage[key][M + start : M + end] = torch.as_tensor(rows, device=self.device)
        if self.tree is not None:
            new_rows = np.arange(M + start, M + end)
            self.tree.update(new_rows, np.full(len(new_rows), self.p_max))  # online transitions enter with p_max

    def set_priorities(self, indices: np.ndarray, priorities: np.ndarray):
        self.tree.update(indices, priorities)  # only the drawn leaves change; p_max never decreases
        self.p_max = max(self.p_max, float(priorities.max()))

    def gather(self, indices: np.ndarray):
        idx = torch.from_numpy(indices).to(self.device, non_blocking=True)
        return tuple(self.storage[key][idx] for key in self.KEYS)

    def state_dict(self, n_online: int) -> dict:
        return {
            "online": {key: torch.from_numpy(value[:n_online].copy()) for key, value in self.online.items()},
            "tree_leaves": torch.from_numpy(self.tree.get(np.arange(self.dataset_size + n_online)))
            if self.tree is not None
            else None,
            "p_max": self.p_max,
        }

    def load_state_dict(self, state: dict, n_online: int):
        M = self.dataset_size
        for key in self.online:  # stored as tensors of the buffer's dtype (weights_only loading takes no numpy arrays)
            self.online[key][:n_online] = state["online"][key].numpy()
            self.storage[key][M : M + n_online] = state["online"][key].to(self.device)
        if self.tree is not None:
            self.tree.set_all(state["tree_leaves"].numpy())
        self.p_max = state["p_max"]


def auroc(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) formula, ties given their average rank."""
    scores = np.concatenate([positive_scores, negative_scores]).astype(np.float64)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    _, inverse, counts = np.unique(sorted_scores, return_inverse=True, return_counts=True)
    if np.any(counts > 1):  # average rank within each group of ties
        rank_sums = np.bincount(inverse, weights=np.arange(1, len(scores) + 1))
        ranks[order] = (rank_sums / counts)[inverse]
    n_pos, n_neg = len(positive_scores), len(negative_scores)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ---------------------------------------------------------------------------------------------------------------------
# Pessimistic Q-ensemble (eq. 5)
# ---------------------------------------------------------------------------------------------------------------------
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


def ensemble_moments(mu: torch.Tensor, std: torch.Tensor):
    """Eq. (5): moments of the uniform mixture of N Gaussians (member dim first) -> (mean, std) of one Gaussian.

    sigma^2 = mean_i(sigma_i^2 + mu_i^2) - mu^2, computed as mean_i sigma_i^2 + mean_i (mu_i - mu)^2 (same value,
    no cancellation); sigma is clamped to [exp(LOG_STD_MIN), exp(LOG_STD_MAX)] like a member's, as the authors do.
    """
    mean = mu.mean(0)
    var = std.pow(2).mean(0) + (mu - mean).pow(2).mean(0)
    return mean, var.clamp(np.exp(2.0 * LOG_STD_MIN), np.exp(2.0 * LOG_STD_MAX)).sqrt()


def ensemble_policy(actor: EnsembleActor, obs: torch.Tensor, n_ensemble: int):
    """obs [B, S] -> the ensemble policy's pre-tanh (mean, log_std) [B, A], every member seeing the same states."""
    mean, log_std = actor(obs.unsqueeze(0).expand(n_ensemble, *obs.shape))
    mean, std = ensemble_moments(mean, log_std.exp())
    return mean, std.log()


def mean_min_q(critic: EnsembleCritic, obs: torch.Tensor, act: torch.Tensor, n_ensemble: int) -> torch.Tensor:
    """Qbar(s, a) = mean over members of min(Q1_i, Q2_i)(s, a): obs [B, S], act [B, A] -> [B]."""
    q = critic(obs.unsqueeze(0).expand(n_ensemble, *obs.shape), act.unsqueeze(0).expand(n_ensemble, *act.shape))
    return q.min(dim=1).values.mean(0)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float):
    """Polyak averaging of the target network: target <- (1 - tau) target + tau source."""
    for target_param, param in zip(target.parameters(), source.parameters()):
        target_param.lerp_(param, tau)


def update_actor_critic(
    batch,
    actor,
    critic,
    target_critic,
    log_alpha,
    actor_optimizer,
    critic_optimizer,
    alpha_optimizer,
    target_entropy,
    gamma,
    tau,
    n_ensemble,
):
    """One SAC step of the pessimistic ensemble: critic, actor, alpha, Polyak. No host sync.

    batch = (obs [B,S], act [B,A], rew [B], next_obs [B,S], done [B]). Returns the detached losses, alpha and
    Qbar by TensorBoard tag.
    """
    obs, act, rew, next_obs, done = batch
    alpha = log_alpha.exp().detach()
    expand = lambda x: x.unsqueeze(0).expand(n_ensemble, *x.shape)  # same batch for every member

    # critic: per-member target r + gamma (1-d) (min(Q1'_i, Q2'_i)(s', a') - alpha log pi(a'|s')), a' from eq. (5)
    with torch.no_grad():
        next_action, next_log_pi = tanh_gaussian_sample(*ensemble_policy(actor, next_obs, n_ensemble))
        target_q = target_critic(expand(next_obs), expand(next_action)).min(dim=1).values  # [N, B]
        target = rew + gamma * (1.0 - done) * (target_q - alpha * next_log_pi)  # [N, B]
    q = critic(expand(obs), expand(act))  # [N, 2, B]
    qf_loss = (q - target.unsqueeze(1)).pow(2).mean(dim=2).sum()  # per member MSE(Q1) + MSE(Q2), summed over members
    critic_optimizer.zero_grad(set_to_none=True)
    qf_loss.backward()
    critic_optimizer.step()

    # actor: mean(alpha log pi(a|s) - Qbar(s, a)), one action a ~ pi_ensemble(s) shared by all members
    action, log_pi = tanh_gaussian_sample(*ensemble_policy(actor, obs, n_ensemble))
    critic.requires_grad_(False)  # the actor step needs dQ/da only, not gradients of the critic weights
    qbar = critic(expand(obs), expand(action)).min(dim=1).values.mean(0)
    actor_loss = (alpha * log_pi - qbar).mean()
    actor_optimizer.zero_grad(set_to_none=True)
    actor_loss.backward()
    actor_optimizer.step()
    critic.requires_grad_(True)

    # temperature: target entropy -|A| (CleanRL's form)
    alpha_loss = (-log_alpha.exp() * (log_pi.detach() + target_entropy)).mean()
    alpha_optimizer.zero_grad(set_to_none=True)
    alpha_loss.backward()
    alpha_optimizer.step()

    soft_update(target_critic, critic, tau)
    return {
        "losses/qf_loss": qf_loss.detach(),
        "losses/actor_loss": actor_loss.detach(),
        "losses/alpha_loss": alpha_loss.detach(),
        "charts/alpha": alpha,
        "losses/qf_values": qbar.detach().mean(),
    }


def resolve_args(args: Args):
    """The old spellings (Notes), default checkpoint paths (as cql_pretrain.py and fqe.py write them) and a clear error
    for a bad value."""
    if args.old_save_checkpoint is not None:  # before: --checkpoint CQL.pt (the input) --save-checkpoint OUT.pt
        if args.cql_checkpoint is not None and args.checkpoint is not None:
            fail(
                "--save-checkpoint (the old spelling of --checkpoint) with both --checkpoint and --cql-checkpoint: "
                "give --cql-checkpoint CQL.pt --checkpoint OUT.pt"
            )
        args.cql_checkpoint, args.checkpoint = args.cql_checkpoint or args.checkpoint, args.old_save_checkpoint
        print(
            "note: old spellings: --checkpoint CQL.pt --save-checkpoint OUT.pt now read --cql-checkpoint CQL.pt "
            "--checkpoint OUT.pt",
            file=sys.stderr,
        )
    if args.cql_checkpoint is None:
        args.cql_checkpoint = f"checkpoints/cql_{args.env_id}_seed{args.seed}.pt"
    if args.q_init == "fqe" and args.fqe_checkpoint is None:
        args.fqe_checkpoint = f"checkpoints/fqe_{args.env_id}_seed{args.seed}.pt"
    if args.checkpoint is None:
        args.checkpoint = f"checkpoints/balanced_{args.env_id}_seed{args.seed}.pt"
    for name in (
        "online_steps",
        "epoch_length",
        "first_epoch_multiplier",
        "batch_size",
        "ratio_batch_size",
        "eval_episodes",
        "eval_every_epochs",
        "hidden_dim",
    ):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 < args.init_online_fraction < 1.0:
        fail("--init-online-fraction must lie in (0, 1)")
    if args.temperature <= 0:
        fail("--temperature must be > 0")


def load_pretrained_ensemble(args: Args, obs_dim: int, act_dim: int, device):
    """The first N members of the CQL checkpoint: the policy, and the critics from it or from --fqe-checkpoint."""
    n_ensemble, cql_path = args.n_ensemble, args.cql_checkpoint
    data_flag = f" --dataset-path {args.dataset_path}" if args.dataset_path else ""
    cql_command = (
        f"python cql_pretrain.py --env-id {args.env_id} --n-ensemble {n_ensemble} --seed {args.seed} "
        f"--checkpoint {cql_path}" + data_flag
    )
    ckpt = load_ensemble_checkpoint(cql_path, cql_command, args.env_id, obs_dim, act_dim, n_ensemble)
    if ckpt["algo"] == "fqe":
        fail(
            f"--cql-checkpoint {cql_path} is an fqe.py checkpoint (critics only); the policy comes from a CQL "
            f"checkpoint: give it as --cql-checkpoint and this one as --q-init fqe --fqe-checkpoint"
        )
    hidden_sizes = list(ckpt["hidden_sizes"])
    critic_source, critic_path = ckpt, cql_path
    if args.q_init == "fqe":
        fqe_command = (
            f"python fqe.py --env-id {args.env_id} --n-ensemble {n_ensemble} --seed {args.seed} "
            f"--policy-checkpoint {cql_path} --checkpoint {args.fqe_checkpoint}" + data_flag
        )
        critic_source = load_ensemble_checkpoint(args.fqe_checkpoint, fqe_command, args.env_id, obs_dim, act_dim, n_ensemble)
        critic_path = args.fqe_checkpoint
        if critic_source["algo"] != "fqe":
            fail(f"--fqe-checkpoint {critic_path} has algo {critic_source['algo']!r}, expected 'fqe' (written by fqe.py)")
        if list(critic_source["hidden_sizes"]) != hidden_sizes:
            fail(f"FQE critics {critic_source['hidden_sizes']} and CQL networks {hidden_sizes} differ in hidden sizes")
    actor = EnsembleActor(obs_dim, act_dim, hidden_sizes, n_ensemble).to(device)
    critic = EnsembleCritic(obs_dim, act_dim, hidden_sizes, n_ensemble).to(device)
    load_state(actor, ckpt["actor"], "actor", cql_path)
    load_state(critic, critic_source["critic"], "critic", critic_path)
    return actor, critic, hidden_sizes


def sample_indices(args: Args, buffer: BalancedReplayBuffer, rng: np.random.Generator, n_online: int):
    """Row indices of one update: the RL minibatch (by --sampling), then the density-ratio net's online and
    offline minibatches (uniform over each part)."""
    M = buffer.dataset_size
    if args.sampling == "balanced":
        indices = buffer.tree.sample(args.batch_size, rng)
    elif args.sampling == "uniform":
        indices = rng.integers(0, M + n_online, args.batch_size)
    else:  # online-only
        indices = M + rng.integers(0, n_online, args.batch_size)
    ratio_indices = np.concatenate(
        [M + rng.integers(0, n_online, args.ratio_batch_size), rng.integers(0, M, args.ratio_batch_size)]
    )
    return indices, ratio_indices


@torch.no_grad()
def collect_epoch(
    env, actor, n_ensemble: int, buffer: BalancedReplayBuffer, step: int, n_steps: int, seed: int, progress
) -> int:
    """One epoch of environment steps with the stochastic ensemble policy (eq. 5), into the buffer; returns the step
    after it. Every epoch starts a fresh episode, as the authors' collector does (the cut episode's last transition
    stays non-terminal)."""
    obs, _ = env.reset(seed=seed + step)
    for row in range(step, step + n_steps):
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=buffer.device)[None]
        action = tanh_gaussian_sample(*ensemble_policy(actor, obs_t, n_ensemble))[0][0].cpu().numpy()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(row, obs, action, reward, next_obs, terminated)
        obs = env.reset()[0] if terminated or truncated else next_obs
        progress.update(1)
    buffer.publish(step, step + n_steps)
    return step + n_steps


@dataclass
class BalancedAgent:
    """The networks fine-tuning trains: the ensemble policy and twin critics of eq. (5) (hidden sizes from the CQL
    checkpoint) with target critics and temperature, the density-ratio net of eq. (4), and one Adam each."""

    actor: EnsembleActor
    critic: EnsembleCritic
    hidden_sizes: list
    target_critic: EnsembleCritic
    log_alpha: torch.Tensor
    target_entropy: float
    ratio_net: DensityRatioNet
    actor_optimizer: torch.optim.Optimizer
    critic_optimizer: torch.optim.Optimizer
    alpha_optimizer: torch.optim.Optimizer
    ratio_optimizer: torch.optim.Optimizer

    def resumable(self) -> dict:
        """The parts a checkpoint's resume entry holds by name (the actor, critic and alpha have entries of their own)."""
        names = ("target_critic", "ratio_net", "actor_optimizer", "critic_optimizer", "alpha_optimizer", "ratio_optimizer")
        return {name: getattr(self, name) for name in names}


def build_balanced_agent(args: Args, obs_dim: int, act_dim: int, device) -> BalancedAgent:
    """Policy from CQL, critics from CQL or FQE, target critics copied from the critics, alpha re-initialised (target
    entropy -|A|), a fresh density-ratio net; the optimizers."""
    actor, critic, hidden_sizes = load_pretrained_ensemble(args, obs_dim, act_dim, device)
    target_critic = EnsembleCritic(obs_dim, act_dim, hidden_sizes, args.n_ensemble).to(device)
    target_critic.load_state_dict(critic.state_dict())
    log_alpha = torch.tensor(float(np.log(args.init_alpha)), device=device, requires_grad=True)
    ratio_net = DensityRatioNet(obs_dim, act_dim, args.hidden_dim).to(device)
    return BalancedAgent(
        actor,
        critic,
        hidden_sizes,
        target_critic,
        log_alpha,
        target_entropy=-float(act_dim),
        ratio_net=ratio_net,
        actor_optimizer=torch.optim.Adam(actor.parameters(), lr=args.policy_lr),  # all members jointly, one Adam
        critic_optimizer=torch.optim.Adam(critic.parameters(), lr=args.q_lr),
        alpha_optimizer=torch.optim.Adam([log_alpha], lr=args.alpha_lr),
        ratio_optimizer=torch.optim.Adam(ratio_net.parameters(), lr=args.ratio_lr),
    )


@dataclass
class BalancedProgress:
    """Where fine-tuning stands: env steps, epochs and updates done, the epoch in progress (None between epochs; else
    its first step, updates done, device-side sums of its statistics, offline rows drawn) and the last epoch's stats."""

    global_step: int = 0
    epoch: int = 0
    n_updates: int = 0
    partial: dict | None = None
    epoch_stats: dict = dataclasses.field(default_factory=dict)


def load_resumed_run(saved: dict, args: Args, agent: BalancedAgent, buffer: BalancedReplayBuffer, rng) -> BalancedProgress:
    """Networks, optimizers, alpha, RNG states and the replay buffer (online transitions, sum-tree leaves, p_max) from a
    resumable checkpoint of this run, and its TensorBoard folder unless --run-dir names one; returns where it stood."""
    state, path = saved["resume"], args.checkpoint
    if (state["dataset_size"], state["online_steps"], state["sampling"]) != (
        buffer.dataset_size,
        args.online_steps,
        args.sampling,
    ):
        fail(
            f"--resume: {path} was made with dataset size {state['dataset_size']}, --online-steps "
            f"{state['online_steps']}, --sampling {state['sampling']}; this run has {buffer.dataset_size}, "
            f"{args.online_steps}, {args.sampling}"
        )
    load_state(agent.actor, saved["actor"], "actor", path)  # e.g. another --hidden-dim: a clear error
    load_state(agent.critic, saved["critic"], "critic", path)
    load_resume_state(saved, path, rng, agent.resumable())
    buffer.load_state_dict(state, state["global_step"])
    partial = state.get("partial")  # absent in checkpoints written before signals were caught
    if partial is not None:
        partial["sums"] = {tag: value.to(buffer.device) for tag, value in partial["sums"].items()}
    with torch.no_grad():
        agent.log_alpha.copy_(state["log_alpha"])
    args.run_dir = args.run_dir or state["run_dir"]
    return BalancedProgress(
        global_step=state["global_step"], epoch=state["epoch"], n_updates=state["n_updates"], partial=partial
    )


def log_balanced_eval(args: Args, actor, eval_env, videos, writer, device, step: int, last: bool = False) -> float:
    """Evaluates the deterministic ensemble policy tanh(mu) of eq. (5) (the first episode seeded by the step, later ones
    the env's RNG) and logs its return and normalized score; returns the score."""
    seeds = [args.seed + 10_000 + step] + [None] * (args.eval_episodes - 1)
    policy = lambda obs: torch.tanh(ensemble_policy(actor, obs, args.n_ensemble)[0])
    returns = evaluate(eval_env, policy, seeds, device)
    videos.after_eval(eval_env, policy, seeds[0], step, last, device)
    mean_return = float(np.mean(returns))
    score = normalized_score(args.env_id, mean_return)
    writer.add_scalar("eval/return", mean_return, step)
    writer.add_scalar("eval/normalized_score", score, step)
    tqdm.write(f"step {step}: eval return {mean_return:.1f}, normalized score {score:.1f}")
    return score


def fail_balanced_nonfinite(what: str, args: Args, run: BalancedProgress, progress):
    """Stops the run on a non-finite value with one line: what, where, and the last good checkpoint (not overwritten)."""
    progress.close()
    fail(f"{what} at online step {run.global_step} (update {run.n_updates}); the last good checkpoint is {args.checkpoint}")


def balanced_update_epoch(
    args: Args,
    agent: BalancedAgent,
    buffer: BalancedReplayBuffer,
    rng,
    run: BalancedProgress,
    epoch_updates: int,
    stop,
    progress,
) -> bool:
    """The remaining gradient updates of the epoch in progress: density-ratio step and the drawn rows' new priorities
    (eq. 4), then the ensemble's SAC step (eq. 5); statistics summed on the device. False: a stop signal came first."""
    partial, M, B, R = run.partial, buffer.dataset_size, args.batch_size, args.ratio_batch_size
    sums = partial["sums"]
    while partial["updates_done"] < epoch_updates:
        if stop["signal"]:  # run.partial holds this epoch's progress: --resume does its remaining updates
            return False
        indices, ratio_indices = sample_indices(args, buffer, rng, run.global_step)
        partial["offline_drawn"] += int(np.count_nonzero(indices < M))
        obs_b, act_b, rew_b, next_obs_b, done_b = buffer.gather(np.concatenate([indices, ratio_indices]))
        priorities, ratio_stats = update_density_ratio(
            agent.ratio_net,
            agent.ratio_optimizer,
            (obs_b[B : B + R], act_b[B : B + R]),
            (obs_b[B + R :], act_b[B + R :]),
            (obs_b[:B], act_b[:B]),
            args.temperature,
        )
        if args.sampling == "balanced":
            new_priorities = priorities.cpu().numpy()
            if not np.isfinite(new_priorities).all():  # host copy already made: this check costs no sync
                fail_balanced_nonfinite(
                    "losses/density_ratio_loss: the density-ratio net gives non-finite w", args, run, progress
                )
            buffer.set_priorities(indices, new_priorities)
        sac_stats = update_actor_critic(
            (obs_b[:B], act_b[:B], rew_b[:B], next_obs_b[:B], done_b[:B]),
            agent.actor,
            agent.critic,
            agent.target_critic,
            agent.log_alpha,
            agent.actor_optimizer,
            agent.critic_optimizer,
            agent.alpha_optimizer,
            agent.target_entropy,
            args.gamma,
            args.tau,
            args.n_ensemble,
        )
        for tag, value in {**sac_stats, **ratio_stats}.items():
            sums[tag] = sums[tag] + value if tag in sums else value
        partial["updates_done"] += 1
        run.n_updates += 1
    return True


@torch.no_grad()
def q_auroc(critic, buffer: BalancedReplayBuffer, rows: slice, rng: np.random.Generator, device, n_ensemble: int) -> float:
    """Qbar as a classifier of real online actions against uniform random actions at the same states (Fig. 4b)."""
    states = torch.as_tensor(buffer.online["observations"][rows], device=device)
    real = mean_min_q(critic, states, torch.as_tensor(buffer.online["actions"][rows], device=device), n_ensemble)
    act_dim = buffer.online["actions"].shape[1]
    fake_actions = torch.as_tensor(rng.uniform(-1.0, 1.0, (len(states), act_dim)).astype(np.float32), device=device)
    fake = mean_min_q(critic, states, fake_actions, n_ensemble)
    return auroc(real.cpu().numpy(), fake.cpu().numpy())


def log_balanced_epoch(
    args: Args, critic, buffer: BalancedReplayBuffer, rng, run: BalancedProgress, epoch_updates: int, writer, progress
):
    """After an epoch's updates: one host sync for all averaged statistics, the NaN/inf check, the share of offline rows
    in the RL minibatches and Qbar's AUROC on the epoch's (last 1000) online transitions; logged, kept in run.epoch_stats."""
    partial, global_step = run.partial, run.global_step
    sums = partial["sums"]
    run.epoch_stats = dict(zip(sums, (torch.stack(list(sums.values())) / max(epoch_updates, 1)).tolist()))
    for tag, value in run.epoch_stats.items():
        if not np.isfinite(value):
            fail_balanced_nonfinite(f"{tag} is {value}", args, run, progress)
    recent = slice(max(partial["epoch_start"], global_step - 1000), global_step)
    run.epoch_stats.update(
        {
            "balanced/offline_fraction": partial["offline_drawn"] / max(epoch_updates * args.batch_size, 1),
            "balanced/auroc": q_auroc(critic, buffer, recent, rng, buffer.device, args.n_ensemble),
        }
    )
    for tag, value in run.epoch_stats.items():
        writer.add_scalar(tag, value, global_step)


def save_balanced_checkpoint(
    args: Args, header: dict, agent: BalancedAgent, buffer: BalancedReplayBuffer, rng, run: BalancedProgress, writer
):
    """The checkpoint at run.global_step (CONTRIBUTING.md format; with --keep-checkpoints also a _step<N> copy); with
    run.partial, the epoch a signal stopped during its updates, which --resume completes."""
    step, partial = run.global_step, run.partial
    writer.flush()
    payload = {
        "format": CHECKPOINT_FORMAT,
        **header,
        "hidden_sizes": agent.hidden_sizes,
        "actor": agent.actor.state_dict(),
        "critic": agent.critic.state_dict(),
        "step": step,
        "args": dataclasses.asdict(args),
        "resume": resume_state(
            rng,
            agent.resumable(),
            log_alpha=agent.log_alpha.detach().cpu(),
            global_step=step,
            epoch=run.epoch,
            n_updates=run.n_updates,
            **buffer.state_dict(step),
            dataset_size=buffer.dataset_size,
            online_steps=args.online_steps,
            sampling=args.sampling,
            run_dir=args.run_dir,
            partial=partial,
            epoch_stats=None if partial else run.epoch_stats,
        ),
    }
    save_checkpoint(args.checkpoint, payload)
    if args.keep_checkpoints:  # snapshots for diagnostics (benchmark/diagnose.py --policy)
        stem, ext = os.path.splitext(args.checkpoint)
        save_checkpoint(f"{stem}_step{step}{ext or '.pt'}", payload)


def main():
    args = tyro.cli(Args)
    resolve_args(args)
    check_writable(args.checkpoint)
    if not args.resume:
        check_output_checkpoint(args.checkpoint, "balanced")

    # seeding
    random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # env and data; header: what every checkpoint of this run says it is (and what --resume checks)
    env = make_env(args.env_id, args.seed)
    eval_env = make_env(args.env_id, args.seed + 10_000)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    header = {"algo": "balanced", "env_id": args.env_id, "obs_dim": obs_dim, "act_dim": act_dim, "n_ensemble": args.n_ensemble}
    saved = load_resume_checkpoint(args.checkpoint, header) if args.resume else None
    dataset = load_d4rl_dataset(args.env_id, args.dataset_path)
    check_dataset_matches_env(dataset, env, args.dataset_path or args.env_id)

    # the ensemble (eq. 5) and density-ratio net (eq. 4); one buffer for the dataset and every online transition
    agent = build_balanced_agent(args, obs_dim, act_dim, device)
    buffer = BalancedReplayBuffer(dataset, args.online_steps, args.sampling == "balanced", args.init_online_fraction, device)
    run = BalancedProgress() if saved is None else load_resumed_run(saved, args, agent, buffer, rng)
    args.run_dir = args.run_dir or f"runs/{args.env_id}__balanced__{args.seed}__{int(time.time())}"

    # on resume, TensorBoard drops what the interrupted run logged from the checkpoint's step on; the statistics of the
    # epoch that ended there are logged again
    tracking, videos = start_tracking(args, args.run_dir), EvalVideos(args, args.run_dir)  # --track, --capture-video
    writer = TensorBoardWriter(args.run_dir, purge_step=run.global_step if saved is not None else None)
    writer.add_text(
        "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{key}|{value}|" for key, value in vars(args).items())
    )
    if saved is not None:
        for tag, value in (saved["resume"].get("epoch_stats") or {}).items():
            writer.add_scalar(tag, value, run.global_step)

    start_time, start_step, last_checkpoint, first_score = time.time(), run.global_step, run.global_step, None
    progress = tqdm(total=args.online_steps, initial=run.global_step, desc="balanced fine-tuning")
    stop = catch_stop_signals()
    while run.global_step < args.online_steps or run.partial is not None:
        if run.partial is None:  # a new epoch: evaluation at its start (epoch 0: the pretrained policy), then its env steps
            if run.epoch % args.eval_every_epochs == 0:
                score = log_balanced_eval(args, agent.actor, eval_env, videos, writer, device, run.global_step)
                first_score = score if first_score is None else first_score
            run.partial = {"epoch_start": run.global_step, "updates_done": 0, "sums": {}, "offline_drawn": 0}
            n_steps = min(args.epoch_length, args.online_steps - run.global_step)
            run.global_step = collect_epoch(
                env, agent.actor, args.n_ensemble, buffer, run.global_step, n_steps, args.seed, progress
            )

        # gradient updates: one per env step (the first epoch: --first-epoch-multiplier per step); statistics on the device
        epoch_updates = (run.global_step - run.partial["epoch_start"]) * (args.first_epoch_multiplier if run.epoch == 0 else 1)
        if not balanced_update_epoch(args, agent, buffer, rng, run, epoch_updates, stop, progress):
            progress.close()  # stopped by a signal: the checkpoint holds the epoch in progress
            save_balanced_checkpoint(args, header, agent, buffer, rng, run, writer)
            stop_after_signal(stop["signal"], args.checkpoint, run.global_step)
        run.epoch += 1
        log_balanced_epoch(args, agent.critic, buffer, rng, run, epoch_updates, writer, progress)
        writer.add_scalar("charts/SPS", int((run.global_step - start_step) / (time.time() - start_time)), run.global_step)
        run.partial = None
        if (
            args.checkpoint_every > 0
            and run.global_step - last_checkpoint >= args.checkpoint_every
            and run.global_step < args.online_steps
        ):
            save_balanced_checkpoint(args, header, agent, buffer, rng, run, writer)
            last_checkpoint = run.global_step
    progress.close()

    final_score = log_balanced_eval(args, agent.actor, eval_env, videos, writer, device, run.global_step, last=True)
    save_balanced_checkpoint(args, header, agent, buffer, rng, run, writer)
    writer.close()
    if tracking is not None:
        tracking.finish()
    env.close()
    eval_env.close()
    before = "n/a (resumed)" if args.resume and start_step > 0 else f"{first_score:.1f}"
    print(
        f"normalized score: {before} before fine-tuning -> {final_score:.1f} after {run.global_step} online steps; "
        f"curves: tensorboard --logdir {args.run_dir}; checkpoint: {args.checkpoint}"
    )


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


def load_ensemble_checkpoint(path: str, make_command: str, env_id: str, obs_dim: int, act_dim: int, n_ensemble: int) -> dict:
    """Load a checkpoint (on the CPU, running no code) and slice it to its first n_ensemble (actor [:k],
    critic [:2k]); load_state_dict copies the tensors to the networks' device."""
    if not os.path.isfile(path):
        fail(f"checkpoint {path} not found; create it with: {make_command}")
    ckpt = load_checkpoint(path, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        fail(f"checkpoint {path} has format {found!r}, expected {CHECKPOINT_FORMAT!r}")
    missing = [
        k for k in ("algo", "env_id", "obs_dim", "act_dim", "n_ensemble", "hidden_sizes", "actor", "critic") if k not in ckpt
    ]
    if missing:
        fail(f"checkpoint {path} lacks field(s) {', '.join(missing)}")
    # same environment = same gymnasium id, version included (Hopper-v4 of D4RL names is not Hopper-v5 of Minari's
    # mujoco/hopper/*-v0); the dataset may differ. Equal ids need no lookup (a Minari id's env is in its metadata).
    if ckpt["env_id"] != env_id and gym_env_id(ckpt["env_id"]) != gym_env_id(env_id):
        fail(
            f"checkpoint {path} was trained for {ckpt['env_id']!r}, not for --env-id {env_id!r} (environments "
            f"{gym_env_id(ckpt['env_id'])} and {gym_env_id(env_id)} differ)"
        )
    if (ckpt["obs_dim"], ckpt["act_dim"]) != (obs_dim, act_dim):
        fail(
            f"checkpoint {path} has observation/action dims {ckpt['obs_dim']}/{ckpt['act_dim']} "
            f"but {gym_env_id(env_id)} has {obs_dim}/{act_dim}"
        )
    if n_ensemble < 1 or n_ensemble > ckpt["n_ensemble"]:
        fail(f"--n-ensemble {n_ensemble} but checkpoint {path} holds {ckpt['n_ensemble']} member(s)")
    ckpt["actor"] = {k: v[:n_ensemble] for k, v in ckpt["actor"].items()}
    ckpt["critic"] = {k: v[: 2 * n_ensemble] for k, v in ckpt["critic"].items()}
    return ckpt


def load_state(module, state_dict: dict, what: str, path: str):
    """module.load_state_dict (strict for a network) with one clear line when the stored state does not fit."""
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, ValueError, KeyError) as err:
        fail(f"checkpoint {path}: its {what} does not fit this run ({str(err).strip().splitlines()[0]} ...)")


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
# Notes. Choices where the paper is silent (a careful reading of the official code where possible):
# ---------------------------------------------------------------------------------------------------------------------
# * All members share the one RL minibatch of 256 (the policy is one distribution, the priorities are set
#   for "the 256 transitions just drawn"); the offline pretraining's per-member minibatches do not apply.
# * The mixture variance is computed as mean_i sigma_i^2 + mean_i (mu_i - mu)^2, algebraically equal to
#   eq. (5) but free of cancellation; the mixture std is clamped to [e^-20, e^2] as in the authors' code.
# * Every epoch of 1000 env steps starts a fresh episode, as the authors' collector does; the episode cut at
#   the epoch's end keeps its last transition non-terminal, like a time-limit end.
# * Update order per gradient step (CleanRL's SAC): density-ratio step (its priorities come from w before
#   the step), critic step, actor step, alpha step, Polyak update of the target critics.
# * The density-ratio network is trained in every --sampling mode so balanced/w_* are comparable across
#   modes; it sets priorities only with --sampling balanced. Its hidden width is --hidden-dim (256
#   [official]); the actor/critic sizes are read from the checkpoint. Hidden layers use nn.Linear's
#   default init; the last layer U(-3e-3, 3e-3) with bias 1.0 [official].
# * balanced/auroc: after each epoch's updates, Qbar scores the (up to 1000) online transitions of that
#   epoch: real (s, a) are positives, (s, a ~ U[-1,1]^|A|) negatives; AUROC by the rank-sum formula.
# * Losses, alpha, offline fraction and w are averaged on the device over an epoch's updates and synced
#   once per epoch; that is also where a NaN/inf loss stops the run (before the checkpoint is written, so
#   the last good checkpoint survives). With --sampling balanced the sum-tree lives on the host, so one
#   copy of the 256 new priorities per update is inherent (free on the CPU).
# * Checkpoints (CONTRIBUTING.md format, algo "balanced") are written at the end of an epoch once at least
#   --checkpoint-every env steps passed since the last one, and at the end. They hold the full resume state
#   (online transitions, sum-tree leaves, p_max, density-ratio net, optimizers, alpha, RNG states, step,
#   run dir). --resume continues at the next epoch, which starts a fresh episode anyway, so an interrupted run
#   resumes exactly; the statistics of the epoch that ended at the checkpoint (purged from TensorBoard with what
#   the interrupted run logged after it) are logged again from the checkpoint.
# * SIGTERM or SIGINT: collection finishes its epoch of env steps (a few seconds), updates finish the current one;
#   the checkpoint then also holds the epoch in progress (updates done, the device-side sums of its statistics,
#   offline draws), --resume does its remaining updates, and the run logs what the uninterrupted one would have.
#   The run exits with status 75 and the command that continues it.
# * Flags: the CQL input is --cql-checkpoint, this run's own checkpoint --checkpoint. Old spellings, still accepted:
#   --save-checkpoint OUT.pt for --checkpoint; when it is given, --checkpoint keeps its old meaning, the CQL input
#   (so `--checkpoint CQL.pt --save-checkpoint OUT.pt [--resume]` runs as before), with a one-line note. A CQL (or
#   any other script's) checkpoint at the --checkpoint path is never overwritten. Checkpoints written before
#   resume_state (flat torch_rng/numpy_rng/python_rng/cuda_rng keys, no epoch in progress) resume as they are.
# * Online time-limit ends are stored as non-terminal (done = terminated), as the dataset's are.
