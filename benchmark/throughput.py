"""Throughput of every script's update step, the vectorized ensemble against a per-member loop, and the whole
fine-tuning loop, on the CPU or a CUDA GPU, as a share of the machine's matmul rate measured in the same run.

Measured (issue 7), each at the script's default network sizes unless --hidden-dim/--batch-size override them:
  sac.py                 sac_update                     one member (sac.py has no ensemble), 2x256, batch 256
  cql_pretrain.py        cql_update                     actor eq. 2 + alpha + critic eq. 3 (10 sampled actions per kind)
  fqe.py                 fqe_update                     twin-critic TD step (eq. 5 policy moments at s' precomputed)
  balanced_finetune.py   update_actor_critic            critic + actor (eq. 5 ensemble policy) + alpha + Polyak
                         update_density_ratio           eq. 4 step of the 256-256 w(s, a) net (one net for any N)
  awac.py                awac_update                    critic, advantage-weighted actor, Polyak
  bcq_ft.py              bcq_update                     VAE 750-750, perturbation actor 400-300, twin Q 400-300, 10 samples
  finetune_loop          balanced_finetune.py run as a subprocess: env steps with the ensemble policy, sum-tree
                         sampling and priority updates, density-ratio step, SAC update, per-epoch logging

Variants: "vectorized" = the script's update on one N-member network (batched [N, in, out] weights); "loop" = the
same update function on N separate 1-member networks (own optimizers), one after the other (N > 1 only). For
balanced_finetune.update_actor_critic the members are coupled through eq. 5 (one Gaussian with the mixture's
moments, one Adam, mean of the members' min-Q), so its loop baseline is N independent single-member SAC updates of
the same sizes (update_actor_critic with k = 1), not the same computation split up; the FLOP count is equal.
The vectorized and loop updates alternate, so load from other processes on a shared machine hits both alike;
updates/s comes from the best (minimum) time over --iters timed blocks of --block updates (timeit's advice: the
least disturbed run), the median is in the notes. On CUDA every block is bracketed by torch.cuda.synchronize()
and --warmup blocks run first.

GFLOP per update is analytic: every matmul of the forward and backward passes (elementwise work ignored), written
out per script below from what autograd actually computes (weight gradients of every parameter that requires
grad, input gradients of the layers whose input depends on something that requires grad). Each count is checked
against torch.utils.flop_counter.FlopCounterMode on one extra (untimed) update of the real function; the notes
say "flops checked" when they agree. The matmul peak is measured at the start and the end of the run (float32
256x1024 @ 1024x1024 torch.mm, plus 4096^3 on CUDA; the best rate) and share_of_peak = achieved / peak.

Whole loop: a synthetic D4RL-format dataset (random values, Walker2d-v4 dims 17/6) and a freshly initialised
N-member checkpoint in cql_pretrain.py's format; balanced_finetune.py then runs --loop-steps env steps in epochs of
--loop-epoch-length env steps + as many updates (--first-epoch-multiplier 1, evaluation only at the start and the
end). env steps/s = steady-state rate between the first and the last charts/SPS event (wall times of the
TensorBoard events: every epoch after the first, evaluation excluded); the script's own last charts/SPS value and
the end-to-end time are in the notes. The untrained policy ends Walker2d episodes early, so env.reset is more
frequent than in a real run.

On the CPU the scripts that tune glibc's malloc in main() (cql_pretrain.py, fqe.py, bcq_ft.py: keep_freed_memory_on_cpu) are
timed after that call and the others before it (it is process-wide), unless --default-malloc.
On CUDA, the issue-7 targets are printed as PASS/FAIL lines: N=5 update_actor_critic >= 3x the per-member loop,
whole loop >= 150 env steps/s.

    OMP_NUM_THREADS=1 python benchmark/throughput.py --device cpu --threads 1 --out benchmark/results/throughput_cpu.csv
    python benchmark/throughput.py --device cuda --out benchmark/results/gpu/throughput_cuda.csv
    python benchmark/throughput.py --quick --scripts sac balanced_finetune finetune_loop --n-ensemble 1 2

Writes a CSV (command, machine and sizes in '#' header lines; read with pandas.read_csv(path, comment="#")) and a
PNG bar chart next to it.
"""

import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from repo import REPO_ROOT, load_script, save_figure, written

SCRIPTS = ("sac", "cql_pretrain", "fqe", "balanced_finetune", "awac", "bcq_ft")
ITEMS = SCRIPTS + ("finetune_loop",)
MALLOC_TUNED = ("cql_pretrain", "fqe", "bcq_ft")  # scripts whose main() calls keep_freed_memory_on_cpu() on the CPU
COLUMNS = (
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
)
TARGET_SPEEDUP, TARGET_SPS = 3.0, 150.0  # issue 7, on a GPU


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(device, iters: int) -> float:
    """The machine's float32 matmul rate: best over sizes (256x1024 @ 1024x1024; on CUDA also 4096^3) and repetitions."""
    shapes = [(256, 1024, 1024)] + ([(4096, 4096, 4096)] if device.type == "cuda" else [])
    best_rate = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        reps = (200 if m == 256 else 20) if device.type == "cuda" else 20
        for _ in range(3):
            torch.mm(a, b)
        for _ in range(iters):
            sync(device)
            start = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b)
            sync(device)
            best_rate = max(best_rate, 2 * m * k * n * reps / (time.perf_counter() - start) / 1e9)
    return best_rate


# ---------------------------------------------------------------------------------
# analytic FLOP counts (matmuls only; 2 * rows * in * out per matmul)
# ---------------------------------------------------------------------------------
def linear_flops(rows: int, sizes, weight_grad: bool, input_grad_from: int | None) -> int:
    """Matmul FLOPs of one MLP over `rows` inputs: forward, weight gradients (if weight_grad), and input gradients
    of the layers from index `input_grad_from` on (None: no backward through the inputs, e.g. under no_grad)."""
    total = 0
    for k, (n_in, n_out) in enumerate(sizes):
        mm = 2 * rows * n_in * n_out
        total += mm  # forward
        total += mm if weight_grad else 0
        total += mm if input_grad_from is not None and k >= input_grad_from else 0
    return total


def mlp(in_dim: int, hidden, out_dim: int):
    """(in, out) of each layer of an MLP in_dim -> hidden... -> out_dim."""
    widths = [in_dim, *hidden, out_dim]
    return list(zip(widths[:-1], widths[1:]))


FWD = dict(weight_grad=False, input_grad_from=None)  # forward only (no_grad or nothing to differentiate)
TRAIN = dict(weight_grad=True, input_grad_from=1)  # trained on data inputs: no gradient into layer 0's input
THROUGH = dict(weight_grad=False, input_grad_from=0)  # frozen weights, gradient to the input (dQ/da)
TRAIN_THROUGH = dict(weight_grad=True, input_grad_from=0)  # weight grads and gradient to the input


def sac_update_flops(obs_dim, act_dim, hidden, batch) -> int:
    """sac.sac_update: one member. The actor step freezes the critic (critic.requires_grad_(False)): dQ/da only."""
    actor, critic = mlp(obs_dim, hidden, 2 * act_dim), mlp(obs_dim + act_dim, hidden, 1)
    return (
        linear_flops(batch, actor, **FWD)  # a' ~ pi(s'), no grad
        + 2 * linear_flops(batch, critic, **FWD)  # target twins at (s', a')
        + 2 * linear_flops(batch, critic, **TRAIN)  # twins at (s, a_data)
        + linear_flops(batch, actor, **TRAIN)  # actor at s
        + 2 * linear_flops(batch, critic, **THROUGH)
    )  # twins at (s, a~pi), weights frozen


def cql_update_flops(n_ensemble, obs_dim, act_dim, hidden, batch, n_actions) -> int:
    """cql_pretrain.cql_update of N members."""
    actor, critic = mlp(obs_dim, hidden, 2 * act_dim), mlp(obs_dim + act_dim, hidden, 1)
    per_member = (
        # actor on [s; s'] (2B rows): backward runs over all 2B rows although only the s rows carry gradient
        linear_flops(2 * batch, actor, **TRAIN)
        + 2 * linear_flops(batch, critic, **FWD)  # target twins on (s', a')
        + 2 * linear_flops(batch * (1 + 3 * n_actions), critic, **TRAIN)  # data action + 3 n_actions sampled
        + 2 * linear_flops(batch, critic, **THROUGH)
    )  # functional_call with detached weights on (s, a~pi(s))
    return n_ensemble * per_member


def fqe_update_flops(n_ensemble, obs_dim, act_dim, hidden, batch) -> int:
    """fqe.fqe_update of N members (the eq. 5 moments at s' are precomputed once per dataset, not per update)."""
    critic = mlp(obs_dim + act_dim, hidden, 1)
    return n_ensemble * (2 * linear_flops(batch, critic, **FWD) + 2 * linear_flops(batch, critic, **TRAIN))


def balanced_update_flops(n_ensemble, obs_dim, act_dim, hidden, batch) -> int:
    """balanced_finetune.update_actor_critic: every member sees the same B states (expanded)."""
    actor, critic = mlp(obs_dim, hidden, 2 * act_dim), mlp(obs_dim + act_dim, hidden, 1)
    per_member = (
        linear_flops(batch, actor, **FWD)  # eq. 5 policy at s', no grad
        + 2 * linear_flops(batch, critic, **FWD)  # target twins
        + 2 * linear_flops(batch, critic, **TRAIN)  # critic step
        + linear_flops(batch, actor, **TRAIN)  # eq. 5 policy at s, with grad
        + 2 * linear_flops(batch, critic, **THROUGH)
    )  # critic.requires_grad_(False): dQ/da only
    return n_ensemble * per_member


def density_ratio_flops(obs_dim, act_dim, hidden_dim, batch, ratio_batch) -> int:
    """balanced_finetune.update_density_ratio: one forward over online + offline + RL batch rows (2R + B), and the
    backward over all of them (the RL rows are detached after the forward but sit in the same matmul)."""
    return linear_flops(2 * ratio_batch + batch, mlp(obs_dim + act_dim, [hidden_dim] * 2, 1), **TRAIN)


def awac_update_flops(n_ensemble, obs_dim, act_dim, hidden, batch) -> int:
    """awac.awac_update of N members."""
    actor, critic = mlp(obs_dim, hidden, 2 * act_dim), mlp(obs_dim + act_dim, hidden, 1)
    per_member = (
        linear_flops(batch, actor, **FWD)  # a' ~ pi(s')
        + 2 * linear_flops(batch, critic, **FWD)  # target twins
        + 2 * linear_flops(batch, critic, **TRAIN)  # critic step
        + linear_flops(batch, actor, **TRAIN)  # log pi(a_data|s)
        + 2 * 2 * linear_flops(batch, critic, **FWD)
    )  # no-grad twins at (s, a~pi) and (s, a_data)
    return n_ensemble * per_member


def bcq_update_flops(n_ensemble, obs_dim, act_dim, vae_hidden, actor_hidden, critic_hidden, batch, n_samples) -> int:
    """bcq_ft.bcq_update of N members (latent 2|A|). The actor step backpropagates through critic weights that
    require grad (weight gradients computed, then discarded) and through both twins of the batched critic."""
    latent = 2 * act_dim
    encoder, decoder = mlp(obs_dim + act_dim, vae_hidden, 2 * latent), mlp(obs_dim + latent, vae_hidden, act_dim)
    actor, critic = mlp(obs_dim + act_dim, actor_hidden, act_dim), mlp(obs_dim + act_dim, critic_hidden, 1)
    bk = batch * n_samples
    per_member = (
        linear_flops(batch, encoder, **TRAIN)  # VAE step: encoder on (s, a)
        + linear_flops(batch, decoder, **TRAIN_THROUGH)  # decoder on (s, z(encoder))
        + linear_flops(bk, decoder, **FWD)  # target: K candidates per s' from the VAE...
        + linear_flops(bk, actor, **FWD)  # ...perturbed by the target actor...
        + 2 * linear_flops(bk, critic, **FWD)  # ...scored by the target twins
        + 2 * linear_flops(batch, critic, **TRAIN)  # critic step
        + linear_flops(batch, decoder, **FWD)  # actor step: VAE action at s, no grad
        + linear_flops(batch, actor, **TRAIN)
        + 2 * linear_flops(batch, critic, **TRAIN_THROUGH)
    )
    return n_ensemble * per_member


def counted_flops(step) -> int:
    """FLOPs torch itself counts (matmuls, forward and backward) in one call of step()."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------
# one benchmark per update function: make(n) -> a callable doing one update of n members (own batch each call)
# ---------------------------------------------------------------------------------
def synthetic_data(device, obs_dim, act_dim, size=100_000):
    """Random transitions: an update's cost does not depend on the values."""
    return {
        "observations": torch.randn(size, obs_dim, device=device),
        "actions": torch.rand(size, act_dim, device=device) * 2 - 1,
        "rewards": torch.randn(size, device=device),
        "next_observations": torch.randn(size, obs_dim, device=device),
        "terminals": (torch.rand(size, device=device) < 0.01).float(),
    }


def sample_tuple(data, rng, n, batch):
    """(s, a, r, s', d) with leading dims [n, B], each member its own uniform minibatch (awac.py / bcq_ft.py)."""
    idx = torch.from_numpy(rng.integers(0, len(data["observations"]), size=(n, batch))).to(data["observations"].device)
    return tuple(data[k][idx] for k in ("observations", "actions", "rewards", "next_observations", "terminals"))


def benchmarks(name, mod, args, device, data, rng):
    """[(function label, hidden label, make(n), flops(n), note, n_dependent)] for one script."""
    S, A, B = args.obs_dim, args.act_dim, args.batch_size
    h = [args.hidden_dim or 256] * 2
    hidden = "-".join(map(str, h))
    adam = torch.optim.Adam

    def actor_critic(n):
        actor = mod.EnsembleActor(S, A, h, n).to(device)
        critic = mod.EnsembleCritic(S, A, h, n).to(device)
        target = mod.EnsembleCritic(S, A, h, n).to(device)
        target.load_state_dict(critic.state_dict())
        return actor, critic, target

    if name == "sac":

        def make(n):
            actor, critic, target = actor_critic(1)
            log_alpha = torch.zeros(1, device=device, requires_grad=True)
            opts = adam(actor.parameters(), lr=3e-4), adam(critic.parameters(), lr=3e-4), adam([log_alpha], lr=3e-4)

            def step():
                idx = rng.integers(0, len(data["observations"]), size=B)
                batch = {k: v[torch.from_numpy(idx).to(device)].unsqueeze(0) for k, v in data.items()}
                mod.sac_update(batch, actor, critic, target, log_alpha, *opts, gamma=0.99, tau=5e-3, target_entropy=-float(A))

            return step

        return [("sac.sac_update", hidden, make, lambda n: sac_update_flops(S, A, h, B), "sac.py trains one member", False)]

    if name == "cql_pretrain":
        hyper = dict(gamma=0.99, tau=5e-3, alpha_cql=5.0, n_actions=args.n_actions, target_entropy=-float(A))

        def make(n):  # as cql_pretrain.main() builds them: policy lr 1e-4, Q lr 3e-4, alpha lr 1e-4, one alpha per member
            actor, critic, target = actor_critic(n)
            log_alpha = torch.zeros(n, device=device, requires_grad=True)
            opts = adam(actor.parameters(), lr=1e-4), adam(critic.parameters(), lr=3e-4), adam([log_alpha], lr=1e-4)
            return lambda: mod.cql_update(actor, critic, target, log_alpha, *opts, mod.sample_batch(data, rng, n, B), **hyper)

        return [
            (
                "cql_pretrain.cql_update",
                hidden,
                make,
                lambda n: cql_update_flops(n, S, A, h, B, args.n_actions),
                f"{args.n_actions} actions per kind",
                True,
            )
        ]

    if name == "fqe":
        fqe_data = dict(
            data, next_policy_mean=torch.randn_like(data["actions"]), next_policy_std=torch.rand_like(data["actions"]) + 0.1
        )

        def make(n):
            critic, target = mod.EnsembleCritic(S, A, h, n).to(device), mod.EnsembleCritic(S, A, h, n).to(device)
            target.load_state_dict(critic.state_dict())
            opt = adam(critic.parameters(), lr=3e-4)
            return lambda: mod.fqe_update(critic, target, opt, mod.sample_batch(fqe_data, rng, n, B), 0.99, 5e-3)

        return [("fqe.fqe_update", hidden, make, lambda n: fqe_update_flops(n, S, A, h, B), "", True)]

    if name == "balanced_finetune":
        R = B  # ratio_batch_size default = batch_size default = 256
        keys = ("observations", "actions", "rewards", "next_observations", "terminals")

        def gather(size):  # as main()'s gather(): one index tensor into device storage
            idx = torch.from_numpy(rng.integers(0, len(data["observations"]), size=size)).to(device)
            return tuple(data[k][idx] for k in keys)

        def make(n):  # as main() builds them: one Adam over all members' actor weights, one scalar alpha
            actor, critic, target = actor_critic(n)
            log_alpha = torch.zeros((), device=device, requires_grad=True)
            opts = adam(actor.parameters(), lr=3e-4), adam(critic.parameters(), lr=3e-4), adam([log_alpha], lr=3e-4)
            return lambda: mod.update_actor_critic(
                gather(B), actor, critic, target, log_alpha, *opts, -float(A), 0.99, 5e-3, n
            )

        def make_ratio(n):
            net = mod.DensityRatioNet(S, A, h[0]).to(device)
            opt = adam(net.parameters(), lr=3e-4)

            def step():
                obs, act = gather(2 * R + B)[:2]
                mod.update_density_ratio(
                    net, opt, (obs[:R], act[:R]), (obs[R : 2 * R], act[R : 2 * R]), (obs[2 * R :], act[2 * R :]), 5.0
                )

            return step

        return [
            (
                "balanced_finetune.update_actor_critic",
                hidden,
                make,
                lambda n: balanced_update_flops(n, S, A, h, B),
                "vectorized: all members share one batch, coupled by eq. 5; loop: each member its own",
                True,
            ),
            (
                "balanced_finetune.update_density_ratio",
                hidden,
                make_ratio,
                lambda n: density_ratio_flops(S, A, h[0], B, R),
                f"one net for any N; {R}+{R}+{B} rows",
                False,
            ),
        ]

    if name == "awac":
        awac_args = mod.Args()

        def make(n):
            actor, critic, target = actor_critic(n)
            opts = adam(actor.parameters(), lr=3e-4), adam(critic.parameters(), lr=3e-4)
            return lambda: mod.awac_update(actor, critic, target, *opts, sample_tuple(data, rng, n, B), awac_args)

        return [("awac.awac_update", hidden, make, lambda n: awac_update_flops(n, S, A, h, B), "", True)]

    if name == "bcq_ft":
        bcq_args = mod.Args()
        vae_h, actor_h, critic_h = (
            ([args.hidden_dim] * 2,) * 3
            if args.hidden_dim
            else (list(bcq_args.vae_hidden_sizes), list(bcq_args.actor_hidden_sizes), list(bcq_args.critic_hidden_sizes))
        )
        k = bcq_args.n_action_samples

        def make(n):
            vae = mod.EnsembleVAE(S, A, 2 * A, vae_h, n).to(device)
            actor = mod.EnsemblePerturbation(S, A, actor_h, n, bcq_args.phi).to(device)
            actor_target = mod.EnsemblePerturbation(S, A, actor_h, n, bcq_args.phi).to(device)
            critic = mod.EnsembleCritic(S, A, critic_h, n).to(device)
            critic_target = mod.EnsembleCritic(S, A, critic_h, n).to(device)
            actor_target.load_state_dict(actor.state_dict())
            critic_target.load_state_dict(critic.state_dict())
            opts = tuple(adam(net.parameters(), lr=bcq_args.learning_rate) for net in (vae, actor, critic))
            return lambda: mod.bcq_update(
                vae, actor, actor_target, critic, critic_target, opts, sample_tuple(data, rng, n, B), bcq_args
            )

        label = "vae{}/actor{}/critic{}".format(*("-".join(map(str, x)) for x in (vae_h, actor_h, critic_h)))
        return [
            (
                "bcq_ft.bcq_update",
                label,
                make,
                lambda n: bcq_update_flops(n, S, A, vae_h, actor_h, critic_h, B, k),
                f"{k} action samples",
                True,
            )
        ]
    raise ValueError(name)


def time_variants(steps: dict, args, device) -> dict:
    """{variant: [seconds per update of each timed block]}, variants alternating block by block."""
    times = {name: [] for name in steps}
    for _ in range(args.warmup):
        for fn in steps.values():
            fn()
    for _ in range(args.iters):
        for name, fn in steps.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(args.block):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - start) / args.block)
    return times


def load_note(before: float) -> str:
    """The 1-minute load average before and after a measurement (the CPU may be shared)."""
    return f"load avg {before:.1f}->{os.getloadavg()[0]:.1f}"


def update_section(name, mod, args, device, data, rng):
    rows = []
    for label, hidden, make, flops_of, note, n_dependent in benchmarks(name, mod, args, device, data, rng):
        for n in args.n_ensemble if n_dependent else [1]:
            torch.manual_seed(0)
            load_before = os.getloadavg()[0]
            steps = {"vectorized" if label != "balanced_finetune.update_density_ratio" else "single": make(n)}
            if n_dependent and n > 1:
                members = [make(1) for _ in range(n)]
                steps["loop"] = lambda members=members: [member() for member in members]
            flops = flops_of(n)
            counted = counted_flops(next(iter(steps.values())))  # one untimed update under torch's FLOP counter
            check = "flops checked" if counted == flops else f"FlopCounterMode counts {counted / 1e9:.4g} GFLOP"
            times = time_variants(steps, args, device)
            best = {v: min(ts) for v, ts in times.items()}
            for variant, ts in times.items():
                extra = [note, check, f"median {1e3 * statistics.median(ts):.3g} ms", load_note(load_before)]
                if variant == "loop":
                    independent = " = N independent single-member SAC updates (not eq. 5)" if "actor_critic" in label else ""
                    extra.insert(0, f"{n} separate 1-member networks" + independent)
                if "loop" in best:
                    extra.insert(0, f"vectorized/loop speedup {best['loop'] / best['vectorized']:.2f}x")
                rows.append(
                    make_row(
                        label,
                        device,
                        n,
                        hidden,
                        args.batch_size,
                        variant,
                        best[variant],
                        flops,
                        args.peak,
                        "; ".join(x for x in extra if x),
                    )
                )
            msg = ", ".join(f"{v} {1 / best[v]:.2f} upd/s ({flops / best[v] / 1e9 / args.peak:.0%} of peak)" for v in best)
            print(
                f"{label} N={n}: {msg}"
                + (f", speedup {best['loop'] / best['vectorized']:.2f}x" if "loop" in best else "")
                + f" [{check}]",
                flush=True,
            )
    return rows


def make_row(script, device, n, hidden, batch, variant, seconds, flops, peak, notes):
    achieved = flops / seconds / 1e9
    return {
        "script": script,
        "device": device.type,
        "N": n,
        "hidden": hidden,
        "batch": batch,
        "variant": variant,
        "updates_per_s": 1.0 / seconds,
        "ms_per_update": 1e3 * seconds,
        "gflop_per_update": flops / 1e9,
        "achieved_gflops": achieved,
        "peak_gflops": peak,
        "share_of_peak": achieved / peak,
        "notes": notes,
    }


# ---------------------------------------------------------------------------------
# the whole fine-tuning loop: balanced_finetune.py as a subprocess
# ---------------------------------------------------------------------------------
def finetune_loop_section(args, device):
    import h5py
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    bf = load_script("balanced_finetune")
    n, S, A, M = args.loop_n_ensemble, 17, 6, args.loop_dataset_size  # Walker2d-v4: 17 / 6
    h = [args.hidden_dim or 256] * 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gen = np.random.default_rng(0)
        with h5py.File(tmp / "walker_synthetic.hdf5", "w") as f:  # D4RL v2 schema, random values
            f["observations"] = gen.standard_normal((M, S), dtype=np.float32)
            f["actions"] = gen.uniform(-1, 1, (M, A)).astype(np.float32)
            f["rewards"] = gen.standard_normal(M, dtype=np.float32)
            f["next_observations"] = gen.standard_normal((M, S), dtype=np.float32)
            f["terminals"] = gen.random(M) < 0.001
            f["timeouts"] = np.zeros(M, dtype=bool)
        torch.manual_seed(0)
        torch.save(
            {
                "format": bf.CHECKPOINT_FORMAT,
                "algo": "cql",
                "env_id": "Walker2d-v4",
                "obs_dim": S,
                "act_dim": A,
                "n_ensemble": n,
                "hidden_sizes": h,
                "actor": bf.EnsembleActor(S, A, h, n).state_dict(),
                "critic": bf.EnsembleCritic(S, A, h, n).state_dict(),
                "step": 0,
                "args": {},
            },
            tmp / "cql.pt",
        )
        command = [
            sys.executable,
            str(REPO_ROOT / "balanced_finetune.py"),
            "--env-id",
            "Walker2d-v4",
            "--dataset-path",
            str(tmp / "walker_synthetic.hdf5"),
            "--cql-checkpoint",
            str(tmp / "cql.pt"),
            "--n-ensemble",
            str(n),
            "--hidden-dim",
            str(h[0]),
            "--batch-size",
            str(args.batch_size),
            "--ratio-batch-size",
            str(args.batch_size),
            "--online-steps",
            str(args.loop_steps),
            "--epoch-length",
            str(args.loop_epoch_length),
            "--first-epoch-multiplier",
            "1",
            "--eval-every-epochs",
            "1000000",
            "--eval-episodes",
            "1",
            "--checkpoint-every",
            "0",
            "--checkpoint",
            str(tmp / "out.pt"),
            "--run-dir",
            str(tmp / "run"),
            "--cuda" if device.type == "cuda" else "--no-cuda",
        ]
        env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"error: balanced_finetune.py failed:\n{proc.stderr[-3000:]}")
        events = EventAccumulator(str(tmp / "run"))
        events.Reload()
        sps = events.Scalars("charts/SPS")
    if len(sps) < 2:
        raise SystemExit("error: the fine-tuning loop needs --loop-steps >= 2 * --loop-epoch-length for a steady-state rate")
    seconds = (sps[-1].wall_time - sps[0].wall_time) / (sps[-1].step - sps[0].step)  # per env step, epochs 2..E
    flops = balanced_update_flops(n, S, A, h, args.batch_size) + density_ratio_flops(
        S, A, h[0], args.batch_size, args.batch_size
    )
    notes = (
        f"env steps/s in updates_per_s (1 env step + 1 density-ratio step + 1 update_actor_critic each); "
        f"steady state over {sps[-1].step - sps[0].step} steps (epochs 2-{len(sps)} of {args.loop_epoch_length}); "
        f"script's own charts/SPS {sps[-1].value:.0f}; end-to-end {wall:.1f} s for {args.loop_steps} steps incl. startup "
        f"and 2 evaluations; synthetic dataset M={M}; untrained policy; {load_note(load_before)}"
    )
    row = make_row(
        "balanced_finetune.py (whole loop)",
        device,
        n,
        "-".join(map(str, h)),
        args.batch_size,
        "whole_loop",
        seconds,
        flops,
        args.peak,
        notes,
    )
    print(
        f"whole fine-tuning loop N={n}: {1 / seconds:.1f} env steps/s steady state "
        f"(script's charts/SPS {sps[-1].value:.0f}, {wall:.1f} s end to end)",
        flush=True,
    )
    return [row]


# ---------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------
def targets(rows, device) -> list:
    """Issue 7's GPU targets: PASS/FAIL lines on CUDA; on the CPU the same numbers, marked as information only."""
    cuda = device.type == "cuda"
    verdict = lambda ok: ("PASS" if ok else "FAIL") if cuda else "CPU (GPU target, information only)"
    lines = []
    by_key = {(r["script"], r["N"], r["variant"]): r for r in rows}
    vec, loop = (by_key.get(("balanced_finetune.update_actor_critic", 5, v)) for v in ("vectorized", "loop"))
    if vec and loop:
        speedup = loop["ms_per_update"] / vec["ms_per_update"]
        lines.append(
            f"{verdict(speedup >= TARGET_SPEEDUP)}: N=5 fine-tuning update (update_actor_critic) "
            f"{speedup:.2f}x faster vectorized than 5 independent single-member SAC updates "
            f"(target >= {TARGET_SPEEDUP:.0f}x)"
        )
    for r in rows:
        if r["variant"] == "whole_loop":
            lines.append(
                f"{verdict(r['updates_per_s'] >= TARGET_SPS)}: whole fine-tuning loop N={r['N']} "
                f"{r['updates_per_s']:.1f} env steps/s (target >= {TARGET_SPS:.0f})"
            )
    return lines


def write_results(rows, args, device, out: Path, target_lines):
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "none"
    with written(out) as f:
        f.write(f"# command: python benchmark/{Path(__file__).name} {' '.join(sys.argv[1:])}\n")
        f.write(
            f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, GPU {gpu}, torch "
            f"{torch.__version__}, {torch.get_num_threads()} torch threads, OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, load avg at start {args.load_start}, at end "
            f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}\n"
        )
        f.write(
            f"# matmul peak {args.peak:.1f} GFLOP/s (float32 torch.mm, best of start/end, same run); obs/act dims "
            f"{args.obs_dim}/{args.act_dim}; {args.iters} timed blocks of {args.block} updates per variant (best "
            f"reported, median in notes) after {args.warmup} warm-up; malloc "
            f"{'default' if args.default_malloc or device.type != 'cpu' else 'tuned for ' + '/'.join(MALLOC_TUNED)}\n"
        )
        for line in target_lines:
            f.write(f"# {line}\n")
        if args.note:
            f.write(f"# note: {args.note}\n")
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: f"{value:.6g}" if isinstance(value, float) else value for key, value in row.items()})
    print(f"wrote {out}")

    title = (
        f"Update throughput on {device.type}"
        + (f" ({gpu})" if device.type == "cuda" else f", {torch.get_num_threads()} thread(s)")
        + f"; matmul peak {args.peak:.0f} GFLOP/s"
    )
    draw_throughput(rows, title, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.png')}")


# variant -> (legend, colour): neutral colours, so no bar is read as one of plot.py's METHOD_COLOURS methods
VARIANT_STYLE = {
    "vectorized": ("vectorized ensemble", "#3a3a3a"),
    "loop": ("per-member loop", "#a8a8a8"),
    "single": ("single network", "#6b8e8e"),
    "whole_loop": ("whole loop (env steps/s)", "#c7792b"),
}


def draw_throughput(rows, title: str, path: Path):
    """Horizontal bars, one group per (script, N) read top to bottom: updates/s (log) and % of the matmul peak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys((r["script"], r["N"]) for r in rows))
    logged = {r["variant"] for r in rows}
    variants = [v for v in dict.fromkeys((*VARIANT_STYLE, *(r["variant"] for r in rows))) if v in logged]
    by_key = {(r["script"], r["N"], r["variant"]): r for r in rows}
    bars = {variant: [] for variant in variants}  # variant -> [(y, row, bar height)], centred per group
    for i, (script, n) in enumerate(configs):
        present = [v for v in variants if (script, n, v) in by_key]
        height = min(0.4, 0.8 / len(present))
        for j, variant in enumerate(present):
            bars[variant].append((i + height * (j - (len(present) - 1) / 2), by_key[(script, n, variant)], height))
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 0.38 * len(configs) + 1.4), sharey=True, layout="constrained")
    for variant, placed in bars.items():
        legend, colour = VARIANT_STYLE.get(variant, (variant, "C0"))
        for ax, column, scale in ((axes[0], "updates_per_s", 1), (axes[1], "share_of_peak", 100)):
            ax.barh(
                [y for y, _, _ in placed],
                [float(row[column]) * scale for _, row, _ in placed],
                height=[h for _, _, h in placed],
                color=colour,
                label=legend,
            )
    labels = [f"{s.replace('.py (', ' (').replace('.', ': ', 1)}, N={n}" for s, n in configs]
    axes[0].set_yticks(np.arange(len(configs)), labels, fontsize=9)
    axes[0].invert_yaxis()
    axes[0].set_xscale("log")
    axes[0].set_xlabel("updates per second (log)")
    axes[1].set_xlabel("% of the measured matmul peak")
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=11)
    handles, legend_labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, legend_labels, loc="outside lower center", ncol=len(variants), fontsize=9, frameon=False)
    save_figure(fig, path, dpi=130)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device to time on")
    parser.add_argument("--scripts", nargs="+", choices=ITEMS, default=list(ITEMS), help="what to measure")
    parser.add_argument("--n-ensemble", type=int, nargs="+", default=[1, 5], help="ensemble sizes N (sac: always 1)")
    parser.add_argument("--iters", type=int, default=None, help="timed blocks per variant (default cpu 5, cuda 30)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed updates per variant first (default cpu 1, cuda 20)")
    parser.add_argument("--block", type=int, default=None, help="updates per timed block (default cpu 1, cuda 10)")
    parser.add_argument("--quick", action="store_true", help="tiny iteration counts and a tiny whole-loop run (tests)")
    parser.add_argument("--batch-size", type=int, default=256, help="minibatch per member (every script's default)")
    parser.add_argument(
        "--hidden-dim",
        type=int,
        default=None,
        help="one hidden width for every network (default: each script's own, 256 / BCQ 750, 400-300)",
    )
    parser.add_argument("--obs-dim", type=int, default=17, help="observation dim (17: HalfCheetah/Walker2d)")
    parser.add_argument("--act-dim", type=int, default=6, help="action dim (6: HalfCheetah/Walker2d)")
    parser.add_argument("--n-actions", type=int, default=10, help="CQL sampled actions per state and kind")
    parser.add_argument("--loop-n-ensemble", type=int, default=5, help="N of the whole-loop run")
    parser.add_argument(
        "--loop-steps", type=int, default=None, help="env steps of the whole-loop run (default cpu 300, cuda 4000)"
    )
    parser.add_argument(
        "--loop-epoch-length", type=int, default=None, help="env steps per epoch there (default cpu 100, cuda 1000)"
    )
    parser.add_argument("--loop-dataset-size", type=int, default=None, help="synthetic dataset rows (default 1,000,000)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--default-malloc", action="store_true", help="skip the glibc malloc setting cql_pretrain.py/fqe.py apply on the CPU"
    )
    parser.add_argument("--note", type=str, default="", help="free text written into the CSV header")
    parser.add_argument("--out", type=Path, default=None, help="CSV path (default benchmark/results/throughput_<device>.csv)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no GPU")
    cuda = args.device == "cuda"
    defaults = dict(
        iters=(2, 5, 30),
        warmup=(1, 1, 20),
        block=(1, 1, 10),
        loop_steps=(30, 300, 4000),
        loop_epoch_length=(10, 100, 1000),
        loop_dataset_size=(5000, 1_000_000, 1_000_000),
    )
    for key, values in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, values[0] if args.quick else values[2 if cuda else 1])
    if min(args.iters, args.block) < 1 or args.warmup < 0 or min(args.n_ensemble) < 1:
        raise SystemExit("error: --iters and --block must be >= 1, --warmup >= 0, --n-ensemble >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.load_start = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    peak = matmul_gflops(device, 2 if args.quick else 5)
    print(
        f"matmul peak: {peak:.1f} GFLOP/s on {device} ({torch.get_num_threads()} threads); load avg {args.load_start}",
        flush=True,
    )
    args.peak = peak

    rng = np.random.default_rng(0)
    data = synthetic_data(device, args.obs_dim, args.act_dim)
    rows, malloc_tuned = [], False
    order = sorted((s for s in args.scripts if s in SCRIPTS), key=lambda s: s in MALLOC_TUNED)  # untuned ones first
    for name in order:
        mod = load_script(name)
        if name in MALLOC_TUNED and device.type == "cpu" and not args.default_malloc and not malloc_tuned:
            mod.keep_freed_memory_on_cpu()  # as cql_pretrain.main() / fqe.main() do on the CPU (process-wide)
            malloc_tuned = True
        rows += update_section(name, mod, args, device, data, rng)
    if "finetune_loop" in args.scripts:
        rows += finetune_loop_section(args, device)

    peak_after = matmul_gflops(device, 2 if args.quick else 5)  # again at the end: the machine may be shared
    print(f"matmul peak at the end: {peak_after:.1f} GFLOP/s", flush=True)
    args.peak = max(peak, peak_after)
    for row in rows:
        row["peak_gflops"] = args.peak
        row["share_of_peak"] = row["achieved_gflops"] / args.peak
    target_lines = targets(rows, device)
    for line in target_lines:
        print(line)
    write_results(
        rows, args, device, args.out or REPO_ROOT / "benchmark" / "results" / f"throughput_{args.device}.csv", target_lines
    )


if __name__ == "__main__":
    main()
