"""Offline CQL pretraining of an N-member ensemble, trained as one vectorized network (Lee et al., CoRL 2021, §3.2).

Implements the paper's offline phase (§3.2, eqs. 2-3): N independent CQL(H) agents (Kumar et al., 2020) whose
weights are stacked into batched layers ([N, in, out], one baddbmm per layer). Every member has its own
initialisation and its own minibatch (indices of shape [N, B]); the loss is the sum of the members' losses, and
Adam is elementwise, so each member is updated exactly as if it were trained alone (the official code trained 5
separate CQL seeds).

Equations (numbers as in the paper):
  eq. (2)  actor:   L_pi = E_s[ alpha * log pi(a|s) - min(Q1, Q2)(s, a) ],  a ~ pi(s) reparameterized;
           alpha tuned automatically to the target entropy -|A|.
  eq. (3)  critic:  CQL(H) with importance sampling, for each of the twin Q's:
             alpha_cql * ( E_s[ logsumexp_{3 n_actions values} ] - E_{s,a~D}[ Q(s, a) ] ) + Bellman MSE,
           the 3 n_actions values being Q(s, a_unif) - log(0.5^|A|), Q(s, a~pi(s)) - log pi(a|s) and
           Q(s, a'~pi(s')) - log pi(a'|s'); Bellman target r + gamma (1 - d) min(Q1', Q2')(s', a'~pi(s'))
           with target networks and no entropy term (CQL's "deterministic backup").
  eq. (5)  ensemble policy (evaluated here, fine-tuned by balanced_finetune.py): a Gaussian with the mixture's
           moments in pre-tanh space, mu = mean_i mu_i, sigma^2 = mean_i(sigma_i^2 + mu_i^2) - mu^2; the
           deterministic evaluation action is tanh(mu).

Implementation choices where the paper is silent: the Notes at the end of this file.

Usage:
  python cql_pretrain.py --env-id hopper-medium-replay-v2 --n-ensemble 5
  python cql_pretrain.py --env-id Hopper-v4 --dataset-path data/hopper_random.hdf5 --hidden-dim 64
  python cql_pretrain.py --env-id mujoco/hopper/medium-v0 --n-ensemble 5   # Minari: Hopper-v5, the dataset's ref scores
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
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm


@dataclass
class Args:
    # task and data
    env_id: str = "walker2d-medium-expert-v2"
    """D4RL task name or Minari dataset id (mujoco/hopper/medium-v0; cached or downloaded) or gymnasium id + --dataset-path"""
    dataset_path: str | None = None
    """HDF5 file with D4RL's schema to train on instead of the D4RL file of --env-id"""

    # runtime
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, CUDA is used when available"""

    # algorithm
    n_ensemble: int = 5
    """number N of CQL agents trained together as one vectorized ensemble"""
    offline_steps: int = 1_000_000
    """number of gradient steps"""
    batch_size: int = 256
    """minibatch size per member (each member draws its own)"""
    hidden_dim: int = 256
    """width of the two hidden layers of actors and critics"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 5e-3
    """target critic smoothing coefficient"""
    policy_lr: float = 1e-4
    """learning rate of the actors"""
    q_lr: float = 3e-4
    """learning rate of the critics"""
    alpha_lr: float = 1e-4
    """learning rate of the entropy temperatures (CQL's code uses the policy lr)"""
    n_actions: int = 10
    """actions sampled per state for each of the 3 parts of the CQL logsumexp (eq. 3)"""
    alpha_cql: float = 5.0
    """weight of the conservative term (eq. 3)"""
    bc_steps: int = 0
    """behaviour-cloning warm-up updates of the actor (CQL's code used 40000)"""

    # logging, evaluation and checkpoints
    log_every: int = 1000
    """log losses every this many updates (also where NaN/inf losses are detected)"""
    eval_every: int = 10_000
    """evaluate the ensemble policy and every member every this many updates"""
    eval_episodes: int = 10
    """episodes per evaluated policy"""
    checkpoint: str | None = None
    """checkpoint path (default checkpoints/cql_{env_id}_seed{seed}.pt)"""
    checkpoint_every: int = 50_000
    """also write the checkpoint every this many updates (it is always written at each evaluation and at the end)"""
    resume: bool = False
    """continue the run saved in --checkpoint"""
    run_dir: str | None = None
    """TensorBoard folder (default runs/{env_id}__cql__{seed}__{time})"""
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
# cql_pretrain.py: sampling, losses and the vectorized update
# ---------------------------------------------------------------------------------------------------------------------
def ensemble_moments(mu: torch.Tensor, std: torch.Tensor):
    """Eq. (5): moments of the uniform mixture of N Gaussians (member dim first) -> (mean, std) of one Gaussian.

    sigma^2 = mean_i(sigma_i^2 + mu_i^2) - mu^2, computed as mean_i sigma_i^2 + mean_i (mu_i - mu)^2 (same value,
    no cancellation); sigma is clamped to [exp(LOG_STD_MIN), exp(LOG_STD_MAX)] like a member's, as the authors do.
    """
    mean = mu.mean(0)
    var = std.pow(2).mean(0) + (mu - mean).pow(2).mean(0)
    return mean, var.clamp(np.exp(2.0 * LOG_STD_MIN), np.exp(2.0 * LOG_STD_MAX)).sqrt()


def sample_batch(data: dict, rng: np.random.Generator, n_ensemble: int, batch_size: int) -> dict:
    """Each member gets its own minibatch: indices [N, B] -> tensors [N, B, ...]."""
    size = data["observations"].shape[0]
    idx = torch.from_numpy(rng.integers(0, size, size=(n_ensemble, batch_size))).to(data["observations"].device)
    return {key: value[idx] for key, value in data.items()}


def tanh_gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """log pi(a|s) of a given action in [-1, 1] (clipped to ±(1 - 1e-6) before atanh), summed over action dims, with
    the same change of variables as tanh_gaussian_sample. A NaN in mean or log_std reaches the loss check."""
    u = torch.atanh(action.clamp(-1.0 + 1e-6, 1.0 - 1e-6))
    log_prob = torch.distributions.Normal(mean, log_std.exp(), validate_args=False).log_prob(u)
    log_prob = log_prob - 2.0 * (np.log(2.0) - u - F.softplus(-2.0 * u))
    return log_prob.sum(-1)


@torch.no_grad()
def sample_cql_actions(mean: torch.Tensor, log_std: torch.Tensor, n_actions: int) -> dict:
    """The actions of eq. (3), drawn without gradient. mean/log_std: [N, 2B, A], rows [:B] at s, rows [B:] at s'.

    Returns [N, B * n_actions, A] actions (row b * n_actions + k: k-th sample for state b) with their log-probs
    [N, B * n_actions], and target_actions [N, B, A] ~ pi(s') for the Bellman backup.
    """
    batch = mean.shape[1] // 2
    pi_actions, pi_log_probs = tanh_gaussian_sample(
        mean.repeat_interleave(n_actions, 1), log_std.repeat_interleave(n_actions, 1)
    )
    target_actions, _ = tanh_gaussian_sample(mean[:, batch:], log_std[:, batch:])
    return {
        "random_actions": torch.empty_like(pi_actions[:, : batch * n_actions]).uniform_(-1.0, 1.0),
        "pi_actions": pi_actions[:, : batch * n_actions],  # a ~ pi(s)
        "pi_log_probs": pi_log_probs[:, : batch * n_actions],
        "next_pi_actions": pi_actions[:, batch * n_actions :],  # a' ~ pi(s'), scored at s
        "next_pi_log_probs": pi_log_probs[:, batch * n_actions :],
        "target_actions": target_actions,
    }


def cql_critic_loss(critic: nn.Module, critic_target: nn.Module, batch: dict, samples: dict, gamma: float, alpha_cql: float):
    """eq. (3), CQL(H) with importance sampling, for every member and twin at once.

    Returns the loss to minimise (sum over members and twins, so each member gets its own gradient) and
    per-member-and-twin terms [N, 2] (bellman, cql) plus Q(s, a_data) [N, 2, B], all attached to the graph.
    """
    obs, actions = batch["observations"], batch["actions"]
    n_ensemble, batch_size, act_dim = actions.shape
    n_actions = samples["random_actions"].shape[1] // batch_size

    # Bellman target: r + gamma (1 - d) min(Q1', Q2')(s', a'), a' ~ pi(s'), no entropy term (deterministic backup)
    with torch.no_grad():
        next_q = critic_target(batch["next_observations"], samples["target_actions"]).min(1).values  # [N, B]
        target = batch["rewards"] + gamma * (1.0 - batch["terminals"]) * next_q

    # one critic pass over the data actions and the 3 * n_actions sampled actions of every state
    obs_rep = obs.repeat_interleave(n_actions, 1)
    q_all = critic(
        torch.cat([obs, obs_rep, obs_rep, obs_rep], 1),
        torch.cat([actions, samples["random_actions"], samples["pi_actions"], samples["next_pi_actions"]], 1),
    )  # [N, 2, B * (1 + 3 n_actions)]
    q_data = q_all[:, :, :batch_size]
    q_rand, q_pi, q_next_pi = q_all[:, :, batch_size:].view(n_ensemble, 2, 3, batch_size, n_actions).unbind(2)

    # eq. (3): importance-sampled logsumexp over the 3 * n_actions values per state
    random_density = np.log(0.5**act_dim)  # log of the uniform density on [-1, 1]^|A|
    cat_q = torch.cat(
        [
            q_rand - random_density,
            q_pi - samples["pi_log_probs"].view(n_ensemble, 1, batch_size, n_actions),
            q_next_pi - samples["next_pi_log_probs"].view(n_ensemble, 1, batch_size, n_actions),
        ],
        -1,
    )  # [N, 2, B, 3 n_actions]
    cql_term = alpha_cql * (torch.logsumexp(cat_q, -1).mean(-1) - q_data.mean(-1))  # [N, 2]
    bellman = (q_data - target.unsqueeze(1)).pow(2).mean(-1)  # [N, 2]
    return (bellman + cql_term).sum(), {"bellman": bellman, "cql": cql_term, "q_data": q_data}


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float):
    """Polyak averaging of the target network: target <- (1 - tau) target + tau source."""
    for target_param, param in zip(target.parameters(), source.parameters()):
        target_param.lerp_(param, tau)


def cql_update(
    actor,
    critic,
    critic_target,
    log_alpha,
    actor_optimizer,
    critic_optimizer,
    alpha_optimizer,
    batch: dict,
    gamma: float,
    tau: float,
    alpha_cql: float,
    n_actions: int,
    target_entropy: float,
    bc: bool = False,
) -> dict:
    """One gradient step of every member: actor eq. (2) (or BC warm-up), alpha, critic eq. (3), target update.

    No .item() here: the returned losses are detached tensors, converted only when logged.
    """
    obs, batch_size = batch["observations"], batch["observations"].shape[1]
    mean, log_std = actor(torch.cat([obs, batch["next_observations"]], 1))  # [N, 2B, A]: rows [:B] at s, [B:] at s'
    samples = sample_cql_actions(mean, log_std, n_actions)
    alpha = log_alpha.exp().detach()

    # eq. (2): alpha log pi(a|s) - min(Q1, Q2)(s, a), a ~ pi(s) reparameterized; critic weights detached so the
    # actor loss moves only the actor
    pi_action, log_pi = tanh_gaussian_sample(mean[:, :batch_size], log_std[:, :batch_size])
    if bc:  # BC warm-up: alpha log pi(a|s) - log pi(a_data|s)
        bc_log_prob = tanh_gaussian_log_prob(mean[:, :batch_size], log_std[:, :batch_size], batch["actions"])
        actor_loss = (alpha[:, None] * log_pi - bc_log_prob).mean(1)  # [N]
    else:
        frozen = {name: p.detach() for name, p in critic.named_parameters()}
        q_pi = torch.func.functional_call(critic, frozen, (obs, pi_action)).min(1).values  # [N, B]
        actor_loss = (alpha[:, None] * log_pi - q_pi).mean(1)  # [N]
    # automatic entropy tuning towards -|A|
    alpha_loss = -(log_alpha[:, None] * (log_pi.detach() + target_entropy)).mean(1)  # [N]

    critic_loss, info = cql_critic_loss(critic, critic_target, batch, samples, gamma, alpha_cql)

    actor_optimizer.zero_grad()
    critic_optimizer.zero_grad()
    alpha_optimizer.zero_grad()
    (critic_loss + actor_loss.sum() + alpha_loss.sum()).backward()
    actor_optimizer.step()
    critic_optimizer.step()
    alpha_optimizer.step()

    soft_update(critic_target, critic, tau)

    return {
        "losses/qf": info["bellman"].detach().mean(),
        "losses/cql": info["cql"].detach().mean(),
        "losses/actor": actor_loss.detach().mean(),
        "losses/alpha": alpha_loss.detach().mean(),
        "charts/alpha": alpha.mean(),
        "charts/q_data": info["q_data"].detach().mean(),
    }


@torch.no_grad()
def evaluate_members(actor: EnsembleActor, envs: list, n_ensemble: int, seed: int, device) -> np.ndarray:
    """Deterministic returns of the ensemble policy (eq. 5) and of each member, all envs in lockstep.

    envs holds (N + 1) * episodes envs; env e runs policy e % (N + 1) (index N: the ensemble) from start state
    seed + 10000 + e // (N + 1), so every policy is scored on the same start states. Returns [N + 1, episodes].
    """
    n_policies = n_ensemble + 1
    policy_of_env = torch.arange(len(envs), device=device) % n_policies
    obs = np.stack([env.reset(seed=seed + 10_000 + e // n_policies)[0] for e, env in enumerate(envs)])
    returns, active = np.zeros(len(envs)), np.ones(len(envs), dtype=bool)
    while active.any():
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
        mean, log_std = actor(obs_t.expand(n_ensemble, -1, -1))  # every member on every env's state
        ens_mean, _ = ensemble_moments(mean, log_std.exp())  # eq. (5)
        means = torch.cat([mean, ens_mean.unsqueeze(0)])  # [N + 1, envs, A]
        actions = torch.tanh(means[policy_of_env, torch.arange(len(envs), device=device)]).cpu().numpy()
        for e in np.flatnonzero(active):
            obs[e], reward, terminated, truncated, _ = envs[e].step(actions[e])
            returns[e] += reward
            active[e] = not (terminated or truncated)
    return returns.reshape(-1, n_policies).T


def ensemble_action(actor: EnsembleActor, obs: torch.Tensor, n_ensemble: int) -> torch.Tensor:
    """tanh of the eq. (5) ensemble mean at obs [B, S]: the policy evaluate_members scores as index N."""
    mean, log_std = actor(obs.expand(n_ensemble, -1, -1))
    return torch.tanh(ensemble_moments(mean, log_std.exp())[0])


# ---------------------------------------------------------------------------------------------------------------------
# cql_pretrain.py: the pieces of main()
# ---------------------------------------------------------------------------------------------------------------------
def check_cql_pretrain_args(args: Args, checkpoint_path: str):
    """Refuse counts and sizes below 1, an unwritable checkpoint path and (without --resume) another script's checkpoint
    there, before any data is loaded."""
    for name in (
        "n_ensemble",
        "offline_steps",
        "batch_size",
        "hidden_dim",
        "n_actions",
        "log_every",
        "eval_every",
        "eval_episodes",
        "checkpoint_every",
    ):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1")
    check_writable(checkpoint_path)
    if not args.resume:
        check_output_checkpoint(checkpoint_path, "cql")


def cql_pretrain_header(args: Args, obs_dim: int, act_dim: int) -> dict:
    """The checkpoint's identity (CONTRIBUTING.md: Contracts): what it is, and what --resume requires to match."""
    hidden_sizes = [args.hidden_dim, args.hidden_dim]
    return {
        "algo": "cql",
        "env_id": args.env_id,
        "obs_dim": obs_dim,
        "act_dim": act_dim,
        "n_ensemble": args.n_ensemble,
        "hidden_sizes": hidden_sizes,
    }


# what a checkpoint's "resume" entry holds besides the networks, log alpha, step, run dir and RNG states
CQL_PRETRAIN_RESUMABLE = ("critic_target", "actor_optimizer", "critic_optimizer", "alpha_optimizer")


def build_cql_pretrain_nets(header: dict, args: Args, device) -> dict:
    """The N actors, twin critics and target critics (eqs. 2-3), one temperature per member (alpha = 1) and the Adam
    optimizers, keyed as cql_update's parameters."""
    obs_dim, act_dim, hidden_sizes, n_ensemble = header["obs_dim"], header["act_dim"], header["hidden_sizes"], args.n_ensemble
    actor = EnsembleActor(obs_dim, act_dim, hidden_sizes, n_ensemble).to(device)
    critic = EnsembleCritic(obs_dim, act_dim, hidden_sizes, n_ensemble).to(device)
    critic_target = EnsembleCritic(obs_dim, act_dim, hidden_sizes, n_ensemble).to(device)
    critic_target.load_state_dict(critic.state_dict())
    log_alpha = torch.zeros(n_ensemble, device=device, requires_grad=True)  # one temperature per member, alpha = 1
    return {
        "actor": actor,
        "critic": critic,
        "critic_target": critic_target,
        "log_alpha": log_alpha,
        "actor_optimizer": torch.optim.Adam(actor.parameters(), lr=args.policy_lr),
        "critic_optimizer": torch.optim.Adam(critic.parameters(), lr=args.q_lr),
        "alpha_optimizer": torch.optim.Adam([log_alpha], lr=args.alpha_lr),
    }


def resume_cql_pretrain(checkpoint_path: str, header: dict, nets: dict, np_rng: np.random.Generator) -> tuple[int, str]:
    """--resume: networks, target critics, optimizers, alpha and RNG states from the checkpoint; returns its step and
    run dir."""
    ckpt = load_resume_checkpoint(checkpoint_path, header)
    load_state(nets["actor"], ckpt["actor"], "actor", checkpoint_path)
    load_state(nets["critic"], ckpt["critic"], "critic", checkpoint_path)
    state = load_resume_state(ckpt, checkpoint_path, np_rng, {name: nets[name] for name in CQL_PRETRAIN_RESUMABLE})
    with torch.no_grad():
        nets["log_alpha"].copy_(state["log_alpha"])
    return state["step"], state["run_dir"]


def save_cql_pretrain_checkpoint(
    checkpoint_path: str, header: dict, nets: dict, np_rng: np.random.Generator, args: Args, step: int, run_dir: str, writer
):
    """Write the checkpoint at `step` (everything --resume needs), refusing non-finite weights: the last good file stays."""
    for name in ("actor", "critic"):  # keep the last good checkpoint
        if not all(torch.isfinite(p).all() for p in nets[name].parameters()):
            fail(f"non-finite {name} weights at step {step}; kept the last good checkpoint {checkpoint_path}")
    writer.flush()  # curves up to the checkpoint survive a crash; --resume purges anything logged after it
    resumable = {name: nets[name] for name in CQL_PRETRAIN_RESUMABLE}
    save_checkpoint(
        checkpoint_path,
        {
            "format": CHECKPOINT_FORMAT,
            **header,
            "actor": nets["actor"].state_dict(),
            "critic": nets["critic"].state_dict(),
            "step": step,
            "args": dataclasses.asdict(args),
            "resume": resume_state(
                np_rng, resumable, log_alpha=nets["log_alpha"].detach().clone(), step=step, run_dir=run_dir
            ),
        },
    )


def read_cql_pretrain_losses(info: dict, global_step: int, checkpoint_path: str) -> dict:
    """The losses cql_update returned, as floats (the one host sync per log interval); stops on NaN or inf."""
    values = dict(zip(info, torch.stack(list(info.values())).cpu().tolist()))
    bad = [name for name, value in values.items() if not np.isfinite(value)]
    if bad:
        fail(
            f"{', '.join(f'{name} = {values[name]}' for name in bad)} at step {global_step}; "
            f"kept the last good checkpoint {checkpoint_path}"
        )
    return values


def log_cql_pretrain_evaluation(args: Args, actor: EnsembleActor, envs: list, videos, writer, global_step: int, device):
    """Evaluate the ensemble policy (eq. 5) and every member, log returns and normalized scores, print one line."""
    n_ensemble = args.n_ensemble
    returns = evaluate_members(actor, envs, n_ensemble, args.seed, device).mean(1)  # members, then the ensemble
    videos.after_eval(
        envs[0],
        lambda obs: ensemble_action(actor, obs, n_ensemble),
        args.seed + 10_000,
        global_step,
        global_step == args.offline_steps,
        device,
    )
    writer.add_scalar("eval/return", returns[n_ensemble], global_step)
    writer.add_scalar("eval/normalized_score", normalized_score(args.env_id, returns[n_ensemble]), global_step)
    for i in range(n_ensemble):
        writer.add_scalar(f"eval/member_{i}_return", returns[i], global_step)
        writer.add_scalar(f"eval/member_{i}_normalized_score", normalized_score(args.env_id, returns[i]), global_step)
    members = " ".join(f"{normalized_score(args.env_id, r):.1f}" for r in returns[:n_ensemble])
    tqdm.write(
        f"step={global_step} ensemble return={returns[n_ensemble]:.1f} "
        f"score={normalized_score(args.env_id, returns[n_ensemble]):.1f} members=[{members}]"
    )


def main():
    args = tyro.cli(Args)
    checkpoint_path = args.checkpoint or f"checkpoints/cql_{args.env_id}_seed{args.seed}.pt"
    check_cql_pretrain_args(args, checkpoint_path)

    random.seed(args.seed)
    np_rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    if device.type == "cpu":
        keep_freed_memory_on_cpu()

    # data (README: D4RL or Minari): D4RL file or --dataset-path, checked against the env it is evaluated in
    n_ensemble = args.n_ensemble
    envs = [make_env(args.env_id, args.seed) for _ in range((n_ensemble + 1) * args.eval_episodes)]
    dataset = load_d4rl_dataset(args.env_id, args.dataset_path)
    check_dataset_matches_env(dataset, envs[0], args.dataset_path or args.env_id)
    obs_dim, act_dim = dataset["observations"].shape[1], dataset["actions"].shape[1]
    data = {key: torch.as_tensor(value, device=device) for key, value in dataset.items()}

    # the N CQL agents (eqs. 2-3) as one vectorized ensemble, and what their checkpoint says they are
    header = cql_pretrain_header(args, obs_dim, act_dim)
    nets = build_cql_pretrain_nets(header, args, device)
    target_entropy = -float(act_dim)

    start_step = 0
    run_dir = args.run_dir or f"runs/{args.env_id}__cql__{args.seed}__{int(time.time())}"
    if args.resume:  # networks, target critics, optimizers, alpha, RNG states, step and run dir
        start_step, resumed_run_dir = resume_cql_pretrain(checkpoint_path, header, nets, np_rng)
        run_dir = args.run_dir or resumed_run_dir  # a continuation (a copy of a finished run) may log elsewhere
        print(f"resuming {checkpoint_path} at step {start_step}, logging to {run_dir}")

    # on resume, TensorBoard drops whatever the interrupted run logged after its checkpoint's step
    tracking, videos = start_tracking(args, run_dir), EvalVideos(args, run_dir)  # --track, --capture-video
    writer = TensorBoardWriter(run_dir, purge_step=start_step + 1 if args.resume else None)
    if not args.resume:
        writer.add_text(
            "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{key}|{value}|" for key, value in vars(args).items())
        )

    def save(step: int):
        save_cql_pretrain_checkpoint(checkpoint_path, header, nets, np_rng, args, step, run_dir, writer)

    start_time, sps_step = time.time(), start_step
    progress = tqdm(range(start_step, args.offline_steps), initial=start_step, total=args.offline_steps)
    stop = catch_stop_signals()
    for step in progress:
        batch = sample_batch(data, np_rng, n_ensemble, args.batch_size)
        info = cql_update(
            **nets,
            batch=batch,
            gamma=args.gamma,
            tau=args.tau,
            alpha_cql=args.alpha_cql,
            n_actions=args.n_actions,
            target_entropy=target_entropy,
            bc=step < args.bc_steps,
        )
        global_step = step + 1  # updates done
        is_eval = global_step % args.eval_every == 0 or global_step == args.offline_steps
        is_save = is_eval or global_step % args.checkpoint_every == 0
        if global_step % args.log_every == 0 or is_save:  # losses checked for NaN/inf wherever they are read
            values = read_cql_pretrain_losses(info, global_step, checkpoint_path)
            if global_step % args.log_every == 0:
                for name, value in values.items():
                    writer.add_scalar(name, value, global_step)
                writer.add_scalar("charts/SPS", (global_step - sps_step) / (time.time() - start_time), global_step)
                start_time, sps_step = time.time(), global_step
        if is_eval:
            log_cql_pretrain_evaluation(args, nets["actor"], envs, videos, writer, global_step, device)
        if is_save or stop["signal"]:
            save(global_step)
            start_time = time.time()  # do not count evaluation and saving in SPS
        if stop["signal"]:
            progress.close()
            stop_after_signal(stop["signal"], checkpoint_path, global_step)
    if start_step >= args.offline_steps:
        save(start_step)
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
# Notes. Choices where the paper is silent (following the official CQL code unless said otherwise):
# ---------------------------------------------------------------------------------------------------------------------
#   * The actor is updated with the critics of the current step, before the critic update (CQL/rlkit order); the
#     actor, critic and alpha losses share one forward pass and one backward pass. The actor loss evaluates the
#     critics with detached weights, so it sends no gradient into the critics.
#   * alpha's learning rate equals the policy's (1e-4), as in the CQL code; log alpha starts at 0 (alpha = 1).
#     The alpha used in the actor loss is the value before this step's alpha update.
#   * The CQL sampled actions (10 per state from pi(s) and from pi(s'), 10 uniform) are drawn without gradient and
#     their log-probabilities are detached, as in the CQL code; the a' of the Bellman target is a separate sample.
#   * BC warm-up (--bc-steps): the actor minimises alpha * log pi(a|s) - log pi(a_data|s) instead of eq. (2) for the
#     first bc_steps updates (the critics train normally). CQL's code used 40,000 steps; the default here is 0.
#   * Logged losses are means over members (and over twins for the critic): losses/qf is the Bellman MSE,
#     losses/cql the conservative term alpha_cql * (logsumexp - Q(s, a_data)); charts/alpha the mean alpha.
#   * Evaluation: every --eval-every updates and at the end, the ensemble policy and each member run the same
#     --eval-episodes start states (env seeds seed + 10000 + k), deterministic tanh(mu), all in lockstep with one
#     batched actor forward per env step.
#   * Resume (--resume) takes the networks, target critics, optimizers, log alpha, RNG states, step and run dir from
#     the checkpoint; hyperparameters come from the command line (env, N and network size must match). Flags: this
#     run's checkpoint is --checkpoint, as it always was (no old spelling to keep); --resume without one is an error.
#     Checkpoints written before resume_state (flat torch_rng/numpy_rng/python_rng/cuda_rng keys) resume as they are.
#   * SIGTERM or SIGINT: the current update finishes, the checkpoint is written at that step and the run exits with
#     status 75 and the command that continues it; that run logs what the uninterrupted one would have.
#   * Observations and rewards are used raw (as in the authors' fine-tuning code).
#   * On the CPU, glibc's malloc is told to keep freed memory for reuse (keep_freed_memory_on_cpu): without it every
#     large activation of the vectorized update is a fresh, page-faulting mmap and N = 5 runs slower than a loop.
