"""SAC from scratch (Haarnoja et al., 2018), CleanRL style: the paper's "SAC" baseline and a dataset writer.

Soft Actor-Critic with twin Q-functions (clipped double-Q), a tanh-Gaussian actor with a state-dependent
log-std, and automatic entropy tuning towards a target entropy of -|A| [Haarnoja et al., "SAC: Algorithms
and Applications", 2018; eqs. (5), (7), (17) of that paper for the critic, actor and temperature losses].
One gradient update per environment step once `--learning-starts` random steps are collected.

Also writes everything it experienced as a D4RL-format HDF5 file (`--dataset-out`), the way D4RL's
replay datasets were made; with `--learning-starts >= --total-timesteps` every action is uniform random,
which is how D4RL's random datasets were made. Keys: observations, actions, rewards, terminals,
timeouts, next_observations, metadata/*. A time-limit truncation is stored as timeouts=1, terminals=0,
with the real final observation as next_observations (never the reset observation).

Choices where the paper is silent: the actor and temperature are updated every step (as in the original
SAC, not CleanRL's delayed policy updates); evaluation runs `--eval-episodes` deterministic episodes
(tanh of the mean) in a separate env seeded with seed + 10_000. The networks are the one-member case of
the vectorized ensemble used by every script here, so a SAC checkpoint has the same format.

    python sac.py --env-id Hopper-v4 --total-timesteps 100000
    python sac.py --env-id Hopper-v4 --total-timesteps 100000 --learning-starts 100000 --dataset-out data/hopper_random.hdf5
"""

import contextlib
import dataclasses
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
    # task and seed
    env_id: str = "Hopper-v4"
    """gymnasium id (Hopper-v4), D4RL task name (hopper-medium-v2 -> Hopper-v4) or Minari id (mujoco/hopper/medium-v0 -> v5)"""
    seed: int = 1
    """seed of the run (env, networks, replay sampling)"""

    # algorithm
    total_timesteps: int = 1_000_000
    """environment steps to take"""
    learning_starts: int = 5000
    """uniform-random steps before learning starts (>= total-timesteps writes a random-policy dataset)"""
    batch_size: int = 256
    """minibatch size of each update"""
    hidden_dim: int = 256
    """width of the two hidden layers of actor and critics"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """target network soft-update rate"""
    policy_lr: float = 3e-4
    """learning rate of the actor"""
    q_lr: float = 3e-4
    """learning rate of the critics"""
    alpha_lr: float = 3e-4
    """learning rate of the entropy temperature"""

    # evaluation, logging, dataset and checkpoints
    eval_every: int = 5000
    """evaluate the deterministic policy every this many env steps"""
    eval_episodes: int = 10
    """episodes per evaluation"""
    log_every: int = 1000
    """log losses, alpha and SPS every this many env steps"""
    dataset_out: str | None = None
    """write every transition as a D4RL-format HDF5 file here"""
    run_dir: str | None = None
    """TensorBoard folder (default runs/<env-id>__sac__<seed>__<time>)"""
    checkpoint: str | None = None
    """checkpoint path (default checkpoints/sac_<env-id>_seed<seed>.pt)"""
    checkpoint_every: int = 50_000
    """write a resumable checkpoint every this many env steps (and at the end)"""
    resume: bool = False
    """continue from --checkpoint if it exists"""
    snapshot_dir: str | None = None
    """also save the actor at every evaluation as DIR/step<N>.pt (behaviour policies for datasets)"""
    rollout_actor: str | None = None
    """collect data with this saved actor (sampled actions, no learning) instead of training"""

    # runtime
    cuda: bool = True
    """use CUDA when available"""
    torch_deterministic: bool = True
    """use deterministic torch algorithms"""
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


# ---- replay buffer ----
class ReplayBuffer:
    """Preallocated numpy arrays holding every transition of the run (capacity = total steps, nothing overwritten)."""

    FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")

    def __init__(self, capacity: int, obs_dim: int, act_dim: int):
        self.size = 0
        self.observations = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros((capacity, act_dim), dtype=np.float32)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.next_observations = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.terminals = np.zeros(capacity, dtype=bool)
        self.timeouts = np.zeros(capacity, dtype=bool)

    def add(self, obs, action, reward, next_obs, terminated: bool, truncated: bool):
        i = self.size
        self.observations[i], self.actions[i], self.rewards[i] = obs, action, reward
        self.next_observations[i], self.terminals[i], self.timeouts[i] = next_obs, terminated, truncated
        self.size += 1

    def sample(self, batch_size: int, rng: np.random.Generator, device) -> dict:
        idx = rng.integers(0, self.size, size=batch_size)
        keys = ("observations", "actions", "rewards", "next_observations", "terminals")
        # [1, B, ...]: the one-member case of the ensemble layout
        return {key: torch.as_tensor(getattr(self, key)[idx], dtype=torch.float32, device=device).unsqueeze(0) for key in keys}

    def state(self) -> dict:
        """Tensors of the arrays' dtypes (float32, bool): checkpoints are loaded with weights_only=True."""
        return {"size": self.size, **{key: torch.from_numpy(getattr(self, key)[: self.size].copy()) for key in self.FIELDS}}

    def load_state(self, state: dict):
        self.size = state["size"]
        for key in self.FIELDS:
            getattr(self, key)[: self.size] = state[key].numpy()


# ---- SAC losses and update ----
@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float):
    """Polyak averaging of the target network: target <- (1 - tau) target + tau source."""
    for target_param, param in zip(target.parameters(), source.parameters()):
        target_param.lerp_(param, tau)


def sac_update(
    batch,
    actor,
    critic,
    critic_target,
    log_alpha,
    actor_optimizer,
    q_optimizer,
    alpha_optimizer,
    gamma: float,
    tau: float,
    target_entropy: float,
) -> dict:
    """One SAC gradient step on critics, actor and temperature. Returns detached losses (no host sync)."""
    obs, actions, rewards = batch["observations"], batch["actions"], batch["rewards"]
    next_obs, terminals = batch["next_observations"], batch["terminals"]
    alpha = log_alpha.exp().detach()

    # critic: soft Bellman target with clipped double-Q, r + γ(1-d)(min Q'(s',a') - α log π(a'|s'))
    with torch.no_grad():
        next_actions, next_log_prob = tanh_gaussian_sample(*actor(next_obs))
        next_q = critic_target(next_obs, next_actions).min(dim=1).values - alpha * next_log_prob
        target_q = rewards + gamma * (1.0 - terminals) * next_q
    q = critic(obs, actions)  # [1, 2, B]
    qf_loss = F.mse_loss(q, target_q.unsqueeze(1).expand_as(q), reduction="none").mean(-1).sum()
    q_optimizer.zero_grad(set_to_none=True)
    qf_loss.backward()
    q_optimizer.step()

    # actor: α log π(a|s) - min Q(s, a), a ~ π(s)
    new_actions, log_prob = tanh_gaussian_sample(*actor(obs))
    critic.requires_grad_(False)  # the actor step needs dQ/da only, not gradients of the critic weights
    min_q = critic(obs, new_actions).min(dim=1).values
    actor_loss = (alpha * log_prob - min_q).mean()
    actor_optimizer.zero_grad(set_to_none=True)
    actor_loss.backward()
    actor_optimizer.step()
    critic.requires_grad_(True)

    # temperature: -log α (log π + target entropy)
    alpha_loss = -(log_alpha * (log_prob.detach() + target_entropy)).mean()
    alpha_optimizer.zero_grad(set_to_none=True)
    alpha_loss.backward()
    alpha_optimizer.step()

    soft_update(critic_target, critic, tau)
    return {"qf": qf_loss.detach(), "actor": actor_loss.detach(), "alpha": alpha_loss.detach(), "q_data": q.detach().mean()}


SAC_RESUMABLE = ("critic_target", "actor_optimizer", "q_optimizer", "alpha_optimizer")  # the resume entry's modules


def sac_networks(obs_dim: int, act_dim: int, hidden_sizes, args, device) -> dict:
    """Actor, twin critics, their target, log α (α = 1 at the start) and the three Adam optimizers, keyed by the names of
    sac_update's parameters. The one-member case of the vectorized ensemble (same checkpoint format as every script)."""
    actor = EnsembleActor(obs_dim, act_dim, hidden_sizes, 1).to(device)
    critic = EnsembleCritic(obs_dim, act_dim, hidden_sizes, 1).to(device)
    critic_target = EnsembleCritic(obs_dim, act_dim, hidden_sizes, 1).to(device)
    critic_target.load_state_dict(critic.state_dict())
    log_alpha = torch.zeros(1, device=device, requires_grad=True)
    return {
        "actor": actor,
        "critic": critic,
        "critic_target": critic_target,
        "log_alpha": log_alpha,
        "actor_optimizer": torch.optim.Adam(actor.parameters(), lr=args.policy_lr),
        "q_optimizer": torch.optim.Adam(critic.parameters(), lr=args.q_lr),
        "alpha_optimizer": torch.optim.Adam([log_alpha], lr=args.alpha_lr),
    }


def sac_resume(path: str, identity: dict, args, nets: dict, buffer: ReplayBuffer, env: gym.Env, rng) -> tuple[int, str]:
    """--resume: networks, optimizers, α, replay buffer and RNG states from `path`; returns its step and the run dir. The
    env starts a new episode, so the interrupted episode's last transition is marked a time-limit end."""
    ckpt = load_resume_checkpoint(path, identity)
    if ckpt["resume"]["buffer"]["size"] > args.total_timesteps:
        fail(
            f"checkpoint {path} holds {ckpt['resume']['buffer']['size']} steps, more than "
            f"--total-timesteps {args.total_timesteps}"
        )
    load_state(nets["actor"], ckpt["actor"], "actor", path)
    load_state(nets["critic"], ckpt["critic"], "critic", path)
    state = load_resume_state(ckpt, path, rng, {name: nets[name] for name in SAC_RESUMABLE})
    with torch.no_grad():
        nets["log_alpha"].copy_(state["log_alpha"])
    buffer.load_state(state["buffer"])
    if buffer.size and not (buffer.terminals[buffer.size - 1] or buffer.timeouts[buffer.size - 1]):
        buffer.timeouts[buffer.size - 1] = True  # the interrupted episode ends here; the env restarts in main()
    env.action_space.np_random.bit_generator.state = state["action_space_rng"]
    tqdm.write(f"resumed from {path} at step {ckpt['step']}")
    return ckpt["step"], args.run_dir or state["run_dir"]


def sac_checkpoint(identity: dict, args, nets: dict, step: int, rng, buffer: ReplayBuffer, env: gym.Env, run_dir: str) -> dict:
    """The checkpoint payload (CONTRIBUTING.md: Checkpoint); its resume entry holds the target critic, optimizers, α,
    replay contents, run dir and the RNG states, the action space's sampler among them."""
    return {
        "format": CHECKPOINT_FORMAT,
        **identity,
        "actor": nets["actor"].state_dict(),
        "critic": nets["critic"].state_dict(),
        "step": step,
        "args": dataclasses.asdict(args),
        "resume": resume_state(
            rng,
            {name: nets[name] for name in SAC_RESUMABLE},
            log_alpha=nets["log_alpha"].detach().clone(),
            buffer=buffer.state(),
            run_dir=run_dir,
            action_space_rng=env.action_space.np_random.bit_generator.state,
        ),
    }


def sac_log_losses(writer, losses: dict, log_alpha: torch.Tensor, step: int, checkpoint_path: str):
    """Once per --log-every: one host sync reads the detached losses of sac_update; a NaN or inf loss stops the run."""
    values = {name: value.item() for name, value in losses.items()}  # one host sync per log interval
    for name, value in values.items():
        if not np.isfinite(value):
            fail(f"loss '{name}' became {value} at step {step}; the last good checkpoint is {checkpoint_path}")
        writer.add_scalar("charts/q_data" if name == "q_data" else f"losses/{name}", value, step)
    writer.add_scalar("charts/alpha", log_alpha.exp().item(), step)


def sac_evaluate(args, actor: EnsembleActor, identity: dict, step: int, device, videos, writer):
    """--eval-episodes deterministic episodes (tanh of the mean) on an env seeded with seed + 10_000: logged and printed;
    with --snapshot-dir the actor is also saved as DIR/step<N>.pt (a behaviour policy for --rollout-actor)."""
    eval_env = make_env(args.env_id, args.seed + 10_000)
    seeds = [args.seed + 10_000 + i for i in range(args.eval_episodes)]
    policy = lambda o: torch.tanh(actor(o.unsqueeze(0))[0][0])  # the deterministic tanh(mean)
    eval_return = float(np.mean(evaluate(eval_env, policy, seeds, device)))
    videos.after_eval(eval_env, policy, seeds[0], step, step == args.total_timesteps, device)
    eval_env.close()
    score = normalized_score(args.env_id, eval_return)
    writer.add_scalar("eval/return", eval_return, step)
    writer.add_scalar("eval/normalized_score", score, step)
    tqdm.write(f"step {step}: eval return {eval_return:.1f}, normalized score {score:.1f}")
    if args.snapshot_dir:
        save_checkpoint(
            os.path.join(args.snapshot_dir, f"step{step:07d}.pt"),
            {
                "format": CHECKPOINT_FORMAT,
                **identity,
                "algo": "sac-snapshot",
                "actor": actor.state_dict(),
                "step": step,
                "eval_return": eval_return,
                "normalized_score": score,
                "seed": args.seed,
            },
        )


def write_sac_dataset(args, buffer: ReplayBuffer):
    """--dataset-out: every transition of the run in D4RL's HDF5 schema, with metadata saying how it was collected."""
    if args.rollout_actor:
        policy = f"rollouts of {args.rollout_actor}"
    else:
        policy = "uniform random" if args.learning_starts >= args.total_timesteps else "sac replay"
    metadata = {
        "env_id": args.env_id,
        "gym_env_id": gym_env_id(args.env_id),
        "seed": args.seed,
        "total_timesteps": args.total_timesteps,
        "learning_starts": args.learning_starts,
        "policy": policy,
    }
    write_d4rl_dataset(args.dataset_out, buffer, metadata)
    print(f"wrote {buffer.size} transitions to {args.dataset_out}")


def main():
    args = tyro.cli(Args)
    env = make_env(args.env_id, args.seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    checkpoint_path = args.checkpoint or f"checkpoints/sac_{args.env_id}_seed{args.seed}.pt"
    if args.dataset_out:
        check_writable(args.dataset_out, "--dataset-out")
    check_writable(checkpoint_path, "checkpoint")
    if not args.resume:
        check_output_checkpoint(checkpoint_path, "sac")

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    rng = np.random.default_rng(args.seed)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")

    # --rollout-actor: act with the saved policy from the first step, never update
    rollout_state = load_rollout_actor(args.rollout_actor, args.env_id, obs_dim, act_dim) if args.rollout_actor else None
    hidden_sizes = [args.hidden_dim, args.hidden_dim] if rollout_state is None else rollout_state["hidden_sizes"]
    nets = sac_networks(obs_dim, act_dim, hidden_sizes, args, device)
    actor, target_entropy = nets["actor"], -float(act_dim)
    buffer = ReplayBuffer(args.total_timesteps, obs_dim, act_dim)
    if rollout_state is not None:
        actor.load_state_dict(rollout_state["actor"])
    learn = rollout_state is None
    # what a checkpoint of this run must match (--resume) and what its checkpoints and snapshots say they are
    identity = dict(algo="sac", env_id=args.env_id, obs_dim=obs_dim, act_dim=act_dim, n_ensemble=1, hidden_sizes=hidden_sizes)

    start_step, run_dir = 0, args.run_dir or f"runs/{args.env_id}__sac__{args.seed}__{int(time.time())}"
    if args.resume:  # networks, optimizers, alpha, replay buffer, RNG states; the env starts a new episode
        start_step, run_dir = sac_resume(checkpoint_path, identity, args, nets, buffer, env, rng)
    # on resume, TensorBoard drops whatever the interrupted run logged after its checkpoint's step
    tracking, videos = start_tracking(args, run_dir), EvalVideos(args, run_dir)  # --track, --capture-video
    writer = TensorBoardWriter(run_dir, purge_step=start_step + 1 if args.resume else None)
    if start_step == 0:
        writer.add_text(
            "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{key}|{value}|" for key, value in vars(args).items())
        )

    obs, _ = env.reset(seed=args.seed + start_step)
    sps_start, sps_step = time.time(), start_step
    progress = tqdm(
        range(start_step, args.total_timesteps), initial=start_step, total=args.total_timesteps, desc="sac", unit="step"
    )
    stop = catch_stop_signals()
    for global_step in progress:
        step = global_step + 1
        # collect: uniform random actions until --learning-starts, then a ~ π(s)
        if learn and global_step < args.learning_starts:
            action = env.action_space.sample()
        else:
            with torch.no_grad():
                obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device=device).view(1, 1, -1)
                action, _ = tanh_gaussian_sample(*actor(obs_tensor))
            action = action.view(-1).cpu().numpy()
        next_obs, reward, terminated, truncated, info = env.step(action)
        # next_obs is the real last observation even when the episode ends; we reset only after storing it
        buffer.add(obs, action, reward, next_obs, terminated, truncated)
        obs = next_obs
        if terminated or truncated:
            writer.add_scalar("charts/episodic_return", info["episode"]["r"], step)
            writer.add_scalar("charts/episodic_length", info["episode"]["l"], step)
            obs, _ = env.reset()

        # update: one SAC step on critics (eq. 5), actor (eq. 7) and temperature (eq. 17) per env step
        if learn and global_step >= args.learning_starts:
            batch = buffer.sample(args.batch_size, rng, device)
            losses = sac_update(batch, **nets, gamma=args.gamma, tau=args.tau, target_entropy=target_entropy)
            if step % args.log_every == 0:
                sac_log_losses(writer, losses, nets["log_alpha"], step, checkpoint_path)
        if step % args.log_every == 0:
            writer.add_scalar("charts/SPS", (step - sps_step) / (time.time() - sps_start), step)
            sps_start, sps_step = time.time(), step

        if step % args.eval_every == 0 or step == args.total_timesteps:
            sac_evaluate(args, actor, identity, step, device, videos, writer)
        if step % args.checkpoint_every == 0 or step == args.total_timesteps or stop["signal"]:
            writer.flush()
            save_checkpoint(checkpoint_path, sac_checkpoint(identity, args, nets, step, rng, buffer, env, run_dir))
        if stop["signal"]:
            progress.close()
            stop_after_signal(stop["signal"], checkpoint_path, step)

    if args.dataset_out:
        write_sac_dataset(args, buffer)
    writer.close()
    if tracking is not None:
        tracking.finish()
    env.close()
    print(f"TensorBoard logs in {run_dir}; checkpoint {checkpoint_path}")


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


def write_d4rl_dataset(path: str, buffer: ReplayBuffer, metadata: dict):
    """Write the buffer with D4RL v2's HDF5 schema: built in memory, then written by write_atomically."""
    data = io.BytesIO()
    with h5py.File(data, "w") as f:
        for key in ReplayBuffer.FIELDS:
            f.create_dataset(key, data=getattr(buffer, key)[: buffer.size], compression="gzip")
        for key, value in metadata.items():
            f[f"metadata/{key}"] = value
    write_atomically(path, data.getbuffer(), "dataset")


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


def load_rollout_actor(path: str, env_id: str, obs_dim: int, act_dim: int) -> dict:
    """The actor of a sac.py snapshot or checkpoint, checked against the env (loads tensors and plain data only)."""
    state = load_checkpoint(path, "--rollout-actor checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or state.get("n_ensemble") != 1:
        fail(f"--rollout-actor {path} is not a one-member {CHECKPOINT_FORMAT} checkpoint or snapshot")
    if (state.get("obs_dim"), state.get("act_dim")) != (obs_dim, act_dim):
        fail(
            f"--rollout-actor {path} has dims {state.get('obs_dim')}/{state.get('act_dim')} but {env_id} has "
            f"{obs_dim}/{act_dim}"
        )
    return state


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
# Notes (the algorithm's choices are in the docstring):
# ---------------------------------------------------------------------------------------------------------------------
#   * Checkpoint: --checkpoint, written every --checkpoint-every steps and at the end, continued with --resume (an
#     error when there is none; before issue 21 sac.py then started afresh). The flags are spelled as they always
#     were; --rollout-actor names an input. Checkpoints written before resume_state (flat torch_rng/numpy_rng/
#     python_rng keys) resume as they are. A resumed run starts a new episode (the simulator state is not stored):
#     the interrupted episode's last transition is marked a time-limit end, and nothing is lost or stored twice.
#   * SIGTERM or SIGINT: the current step finishes, the checkpoint is written at that step and the run exits with
#     status 75 and the command that continues it.
