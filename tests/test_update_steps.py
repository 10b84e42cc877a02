"""Every update step of every script against an independent float64 computation (issue 24).

Each test hand-builds tiny networks and batches (known rewards, terminal flags, gamma, alpha, tau), runs ONE update
step of a script with plain SGD optimizers and compares what it returns (losses, targets, priorities) and what it
leaves behind (the new parameters of every network: so which network each loss trains, and by how much; the target
networks, moved by exactly tau) with a reference written here from the formulas in the scripts' docstrings: plain
Python loops over members, twins and samples, each member's network evaluated as an ordinary MLP holding one row of
the vectorized weights, gradients by autograd on float64 copies of the weights. The reference calls nothing of the
script under test.

Sampled actions are made deterministic wherever the formula allows it, so any correct way of drawing the noise
passes: the actor's log-std output is pushed below LOG_STD_MIN, hence clamped to -20, so a ~ pi(s) is tanh(mu(s)) to
float32 precision (|mu| >= 0.25 is checked) and log pi(a|s) = sum_d [20 - log(2 pi)/2 - log(1 - tanh(mu_d)^2)].
benchmark/mutation_check.py plants single-line bugs in the update code and runs these tests against each.
"""

import math
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, load_script

cql = load_script("cql_pretrain", "cql_pretrain_update_steps")
bf = load_script("balanced_finetune", "balanced_finetune_update_steps")
fqe = load_script("fqe", "fqe_update_steps")
awac = load_script("awac", "awac_update_steps")
bcq = load_script("bcq_ft", "bcq_ft_update_steps")
sac = load_script("sac", "sac_update_steps")

LOG_STD_FLOOR = -20.0  # LOG_STD_MIN of every script: the smallest log-std a member's policy can have
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------------------------
# the reference: ordinary MLPs on float64 copies of the weights
# ---------------------------------------------------------------------------------------------------------------------
def leaf64(net) -> dict:
    """float64 copies of a module's parameters, by name, as leaves that autograd differentiates."""
    return {name: p.detach().double().clone().requires_grad_() for name, p in net.named_parameters()}


def layers(P: dict, prefix: str = "net") -> list:
    """The (weight [rows, in, out], bias [rows, 1, out]) pairs of a vectorized MLP, first layer first."""
    indices = sorted({int(k.split(".")[-2]) for k in P if k.startswith(prefix + ".")})
    return [(P[f"{prefix}.{i}.weight"], P[f"{prefix}.{i}.bias"]) for i in indices]


def row_mlp(mlp: list, row: int, x: torch.Tensor) -> torch.Tensor:
    """Row `row` of a vectorized MLP as an ordinary MLP with ReLU between layers: x [in] -> [out]."""
    x = x.double()
    for k, (weight, bias) in enumerate(mlp):
        x = x @ weight[row] + bias[row, 0]
        if k < len(mlp) - 1:
            x = torch.relu(x)
    return x


def q_ref(P: dict, member: int, twin: int, s, a) -> torch.Tensor:
    """Twin `twin` of member `member` (row 2 member + twin of the critic: the checkpoint format's convention)."""
    return row_mlp(layers(P), 2 * member + twin, torch.cat([s.double(), a.double()]))[0]


def actor_ref(P: dict, member: int, s, act_dim: int):
    """Member's pre-tanh mean and log-std (clamped to [-20, 2]) at one state."""
    out = row_mlp(layers(P), member, s)
    return out[:act_dim], out[act_dim:].clamp(LOG_STD_FLOOR, 2.0)


def tiny_std_log_prob(mu: torch.Tensor, log_sigma) -> torch.Tensor:
    """log pi(tanh(mu)) of a tanh-Gaussian whose std is so small that its sample is tanh(mu): the density of
    N(mu, sigma) at its mean, times the tanh change of variables, summed over action dims."""
    assert float(torch.as_tensor(log_sigma).detach().max()) < -19.0  # the setup's promise
    assert float(mu.detach().abs().min()) > 0.25
    return (-log_sigma - HALF_LOG_2PI - torch.log(1.0 - torch.tanh(mu) ** 2)).sum()


def tanh_gaussian_log_density(a, mu, log_std) -> torch.Tensor:
    """log pi(a) of a = tanh(u), u ~ N(mu, exp(log_std)), summed over action dims."""
    a = a.double()
    u = 0.5 * torch.log((1 + a) / (1 - a))
    std = torch.exp(log_std)
    return (-0.5 * ((u - mu) / std) ** 2 - log_std - HALF_LOG_2PI - torch.log(1 - a**2)).sum()


def sgd(P: dict, loss: torch.Tensor, lr: float, keys=None) -> dict:
    """P after one SGD step of rate lr on loss (only the parameters in keys move; default: all)."""
    keys = list(P) if keys is None else list(keys)
    grads = torch.autograd.grad(loss, [P[k] for k in keys], allow_unused=True, retain_graph=True)
    new = {k: v.detach().clone() for k, v in P.items()}
    for k, g in zip(keys, grads):
        if g is not None:
            new[k] -= lr * g
    return {k: v.requires_grad_() for k, v in new.items()}


def polyak(target: dict, source: dict, tau: float) -> dict:
    return {k: (1.0 - tau) * target[k].detach() + tau * source[k].detach() for k in target}


def assert_params(net, expected: dict, what: str):
    for name, p in net.named_parameters():
        torch.testing.assert_close(
            p.detach().double(), expected[name].detach(), rtol=1e-5, atol=2e-6, msg=lambda m, name=name: f"{what} {name}: {m}"
        )


def scalar(x) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def assert_value(got, expected, what: str, rel=1e-5):
    assert scalar(got) == pytest.approx(scalar(expected), rel=rel, abs=1e-6), what


def deterministic_actor(module, obs_dim: int, act_dim: int, n: int, seed: int, identical: bool = False):
    """A linear actor whose log-std output is -40 (so clamped to -20: a ~ pi(s) is tanh(mu(s))) and whose mean is a
    small slope around +-0.6 (so |mu| > 0.25 on the states used here)."""
    torch.manual_seed(seed)
    actor = module.EnsembleActor(obs_dim, act_dim, [], n)
    layer = actor.net[0]
    with torch.no_grad():
        layer.weight[:, :, :act_dim].mul_(0.3)
        layer.bias[:, :, :act_dim] = torch.tensor([0.6, -0.6, 0.7, -0.7][:act_dim])
        layer.weight[:, :, act_dim:] = 0.0
        layer.bias[:, :, act_dim:] = -40.0
        if identical:  # the ensemble policy of eq. (5) is then a Gaussian of std e^-20 too
            for p in actor.parameters():
                p[1:] = p[0]
    return actor


def critics(module, obs_dim, act_dim, n, seed):
    """A critic and a target critic of other weights (so a target computed with the wrong network shows)."""
    torch.manual_seed(seed)
    critic = module.EnsembleCritic(obs_dim, act_dim, [6], n)
    target = module.EnsembleCritic(obs_dim, act_dim, [6], n)
    return critic, target


def optimizers(lr, *param_lists):
    return [torch.optim.SGD(params, lr=lr) for params in param_lists]


N, B, S, A = 2, 4, 3, 2
GAMMA, TAU = 0.9, 0.1
DONE = torch.tensor([0.0, 1.0, 0.0, 1.0])  # two terminal transitions of four


# ---------------------------------------------------------------------------------------------------------------------
# sac.py: sac_update
# ---------------------------------------------------------------------------------------------------------------------
def test_sac_update_matches_reference():
    actor = deterministic_actor(sac, S, A, 1, seed=0)
    critic, critic_target = critics(sac, S, A, 1, seed=1)
    log_alpha = torch.tensor([-1.2], requires_grad=True)
    g = torch.Generator().manual_seed(2)
    batch = {
        "observations": torch.randn(1, B, S, generator=g) * 0.5,
        "actions": torch.rand(1, B, A, generator=g) * 1.8 - 0.9,
        "rewards": torch.tensor([[1.0, -2.0, 0.5, 3.0]]),
        "next_observations": torch.randn(1, B, S, generator=g) * 0.5,
        "terminals": DONE[None].clone(),
    }
    lr_q, lr_pi, lr_alpha, target_entropy = 0.05, 0.05, 0.01, -float(A)

    Pa, Pc, Pt, la = (
        leaf64(actor),
        leaf64(critic),
        leaf64(critic_target),
        torch.tensor(-1.2, dtype=torch.float64, requires_grad=True),
    )
    alpha = math.exp(-1.2)
    # critic: y = r + gamma (1 - d) (min_j Q'_j(s', a') - alpha log pi(a'|s')), a' ~ pi(s'); loss MSE(Q1) + MSE(Q2)
    qf_loss, q_data = 0.0, []
    for b in range(B):
        s, a, s2 = (batch[k][0, b] for k in ("observations", "actions", "next_observations"))
        mu2, log_std2 = actor_ref(Pa, 0, s2, A)
        with torch.no_grad():
            soft_next = min(q_ref(Pt, 0, j, s2, torch.tanh(mu2)) for j in range(2)) - alpha * tiny_std_log_prob(mu2, log_std2)
            y = batch["rewards"][0, b] + GAMMA * (1 - batch["terminals"][0, b]) * soft_next
        for j in range(2):
            q = q_ref(Pc, 0, j, s, a)
            q_data.append(float(q.detach()))
            qf_loss = qf_loss + (q - y) ** 2 / B
    Pc_new = sgd(Pc, qf_loss, lr_q)
    # actor: mean(alpha log pi(a|s) - min_j Q_j(s, a)), a ~ pi(s), with the critic just updated
    actor_loss, log_pis = 0.0, []
    for b in range(B):
        s = batch["observations"][0, b]
        mu, log_std = actor_ref(Pa, 0, s, A)
        log_pi = tiny_std_log_prob(mu, log_std)
        log_pis.append(float(log_pi.detach()))
        actor_loss = actor_loss + (alpha * log_pi - min(q_ref(Pc_new, 0, j, s, torch.tanh(mu)) for j in range(2))) / B
    Pa_new = sgd(Pa, actor_loss, lr_pi, keys=list(Pa))
    # temperature: -log alpha (log pi + target entropy), log pi without gradient
    alpha_loss = -(la * (torch.tensor(log_pis, dtype=torch.float64) + target_entropy)).mean()
    la_new = la - lr_alpha * torch.autograd.grad(alpha_loss, la)[0]

    opts = optimizers(lr_pi, actor.parameters()) + optimizers(lr_q, critic.parameters()) + optimizers(lr_alpha, [log_alpha])
    info = sac.sac_update(batch, actor, critic, critic_target, log_alpha, *opts, GAMMA, TAU, target_entropy)
    assert_value(info["qf"], qf_loss, "critic loss")
    assert_value(info["actor"], actor_loss, "actor loss")
    assert_value(info["alpha"], alpha_loss, "alpha loss")
    assert_value(info["q_data"], np.mean(q_data), "mean Q(s, a)")
    assert_params(critic, Pc_new, "critic")
    assert_params(actor, Pa_new, "actor")
    assert scalar(log_alpha) == pytest.approx(scalar(la_new), rel=1e-5)
    assert_params(critic_target, polyak(Pt, Pc_new, TAU), "target critic (Polyak tau)")
    assert all(p.requires_grad for p in critic.parameters())  # the critic stays trainable for the next step


# ---------------------------------------------------------------------------------------------------------------------
# balanced_finetune.py: update_actor_critic (eq. 5) and the density-ratio step (eq. 4)
# ---------------------------------------------------------------------------------------------------------------------
def balanced_setup():
    actor = deterministic_actor(bf, S, A, N, seed=3, identical=True)
    critic, target_critic = critics(bf, S, A, N, seed=4)
    g = torch.Generator().manual_seed(5)
    batch = (
        torch.randn(B, S, generator=g) * 0.5,
        torch.rand(B, A, generator=g) * 1.8 - 0.9,
        torch.tensor([1.0, -2.0, 0.5, 3.0]),
        torch.randn(B, S, generator=g) * 0.5,
        DONE.clone(),
    )
    return actor, critic, target_critic, batch


def mixture_ref(Pa: dict, s, n: int):
    """Eq. (5): the mixture's mean mu = mean_i mu_i and log-std log sqrt(mean_i sigma_i^2 + mean_i (mu_i - mu)^2)."""
    outs = [actor_ref(Pa, i, s, A) for i in range(n)]
    mu = sum(m for m, _ in outs) / n
    var = sum(torch.exp(2 * ls) for _, ls in outs) / n + sum((m - mu) ** 2 for m, _ in outs) / n
    return mu, 0.5 * torch.log(var.clamp(math.exp(-40.0), math.exp(4.0)))


def test_balanced_update_actor_critic_matches_reference():
    actor, critic, target_critic, batch = balanced_setup()
    obs, act, rew, next_obs, done = batch
    log_alpha = torch.tensor(math.log(0.3), requires_grad=True)
    lr_q, lr_pi, lr_alpha, target_entropy = 0.05, 0.05, 0.02, -float(A)
    alpha = 0.3

    Pa, Pc, Pt = leaf64(actor), leaf64(critic), leaf64(target_critic)
    la = torch.tensor(math.log(0.3), dtype=torch.float64, requires_grad=True)
    # critic: member i regresses both twins on r + gamma (1 - d) (min_j Q'_ij(s', a') - alpha log pi(a'|s')),
    # a' ~ the ensemble policy (eq. 5); per-member MSE(Q1) + MSE(Q2), summed over members
    qf_loss = 0.0
    for b in range(B):
        mu2, log_std2 = mixture_ref(Pa, next_obs[b], N)
        with torch.no_grad():
            entropy_term = alpha * tiny_std_log_prob(mu2, log_std2)
        for i in range(N):
            with torch.no_grad():
                y = rew[b] + GAMMA * (1 - done[b]) * (
                    min(q_ref(Pt, i, j, next_obs[b], torch.tanh(mu2)) for j in range(2)) - entropy_term
                )
            for j in range(2):
                qf_loss = qf_loss + (q_ref(Pc, i, j, obs[b], act[b]) - y) ** 2 / B
    Pc_new = sgd(Pc, qf_loss, lr_q)
    # actor: mean_b(alpha log pi(a|s) - Qbar(s, a)), Qbar = mean over members of min over twins, one shared action
    actor_loss, log_pis, qbars = 0.0, [], []
    for b in range(B):
        mu, log_std = mixture_ref(Pa, obs[b], N)
        log_pi = tiny_std_log_prob(mu, log_std)
        qbar = sum(min(q_ref(Pc_new, i, j, obs[b], torch.tanh(mu)) for j in range(2)) for i in range(N)) / N
        log_pis.append(float(log_pi.detach()))
        qbars.append(float(qbar.detach()))
        actor_loss = actor_loss + (alpha * log_pi - qbar) / B
    Pa_new = sgd(Pa, actor_loss, lr_pi)
    # temperature, CleanRL's form: mean(-alpha (log pi + target entropy))
    alpha_loss = (-torch.exp(la) * (torch.tensor(log_pis, dtype=torch.float64) + target_entropy)).mean()
    la_new = la - lr_alpha * torch.autograd.grad(alpha_loss, la)[0]

    opts = optimizers(lr_pi, actor.parameters()) + optimizers(lr_q, critic.parameters()) + optimizers(lr_alpha, [log_alpha])
    info = bf.update_actor_critic(batch, actor, critic, target_critic, log_alpha, *opts, target_entropy, GAMMA, TAU, N)
    assert_value(info["losses/qf_loss"], qf_loss, "critic loss")
    assert_value(info["losses/actor_loss"], actor_loss, "actor loss")
    assert_value(info["losses/alpha_loss"], alpha_loss, "alpha loss")
    assert_value(info["charts/alpha"], alpha, "alpha")
    assert_value(info["losses/qf_values"], np.mean(qbars), "Qbar")
    assert_params(critic, Pc_new, "critic")
    assert_params(actor, Pa_new, "actor")
    assert scalar(log_alpha) == pytest.approx(scalar(la_new), rel=1e-5)
    assert_params(target_critic, polyak(Pt, Pc_new, TAU), "target critic (Polyak tau)")
    assert all(p.requires_grad for p in critic.parameters())


def test_balanced_reductions_are_distinguishable_in_this_setup():
    """The check above can tell eq. (5)'s reductions apart only if members and twins disagree here: guard it."""
    actor, critic, target_critic, (obs, act, rew, next_obs, done) = balanced_setup()
    Pa, Pc = leaf64(actor), leaf64(critic)
    with torch.no_grad():
        for b in range(B):
            mu, _ = mixture_ref(Pa, obs[b], N)
            q = torch.tensor([[float(q_ref(Pc, i, j, obs[b], torch.tanh(mu))) for j in range(2)] for i in range(N)])
            assert q.min(1).values.max() - q.min(1).values.min() > 1e-3  # members differ
            assert (q.max(1).values - q.min(1).values).min() > 1e-3  # twins differ


def ratio_ref(P: dict, s, a) -> torch.Tensor:
    """w(s, a): the density-ratio MLP (hidden ReLU layers, ReLU output), as an ordinary float64 computation."""
    x = torch.cat([s.double(), a.double()])
    for k in (0, 2, 4):
        x = torch.relu(x @ P[f"net.{k}.weight"].T + P[f"net.{k}.bias"])
    return x[0]


def test_balanced_density_ratio_step_matches_reference():
    torch.manual_seed(7)
    net = bf.DensityRatioNet(S, A, 5)
    with torch.no_grad():  # spread w over about [0.4, 2] so the priorities differ and w^(1/T) differs from w
        net.net[4].weight.normal_(0.0, 2.0)
    g = torch.Generator().manual_seed(7)
    n_on, n_off, n_rl, temperature, lr = 3, 4, 5, 5.0, 0.1
    online = (torch.randn(n_on, S, generator=g), torch.rand(n_on, A, generator=g) * 2 - 1)
    offline = (torch.randn(n_off, S, generator=g), torch.rand(n_off, A, generator=g) * 2 - 1)
    rl_batch = (torch.randn(n_rl, S, generator=g), torch.rand(n_rl, A, generator=g) * 2 - 1)

    P = leaf64(net)
    w_on = [ratio_ref(P, s, a) for s, a in zip(*online)]
    w_off = [ratio_ref(P, s, a) for s, a in zip(*offline)]
    w_rl = [scalar(ratio_ref(P, s, a)) for s, a in zip(*rl_batch)]
    assert min(map(scalar, w_on + w_off)) > 0.05 and max(w_rl) / min(w_rl) > 1.5  # the setup's promise
    # eq. (4), Jensen-Shannon: mean_off[-log(2 / (w + 1))] - mean_on[log(2 w / (w + 1))]
    loss = (
        sum(-torch.log(2 / (w + 1) + 1e-10) for w in w_off) / n_off
        - sum(torch.log(2 * w / (w + 1) + 1e-10) for w in w_on) / n_on
    )
    P_new = sgd(P, loss, lr)
    # priorities of the RL batch, from w before this step: w^(1/T) / mean_off(w^(1/T)), clamped to [1e-3, 1e3]
    normalizer = np.mean([scalar(w) ** (1 / temperature) for w in w_off]) + 1e-10
    priorities = [min(max(w ** (1 / temperature) / normalizer, 1e-3), 1e3) for w in w_rl]

    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    got, stats = bf.update_density_ratio(net, optimizer, online, offline, rl_batch, temperature)
    np.testing.assert_allclose(got.detach().numpy(), priorities, rtol=1e-5)
    assert_value(stats["losses/density_ratio_loss"], loss, "density-ratio loss")
    assert_value(stats["balanced/w_online"], np.mean([scalar(w) for w in w_on]), "mean w online")
    assert_value(stats["balanced/w_offline"], np.mean([scalar(w) for w in w_off]), "mean w offline")
    assert_params(net, P_new, "density-ratio net")


# ---------------------------------------------------------------------------------------------------------------------
# cql_pretrain.py: sample_cql_actions, cql_update (eq. 2 actor, alpha, eq. 3 critic, Polyak)
# ---------------------------------------------------------------------------------------------------------------------
def test_cql_sampled_actions_come_from_the_right_states():
    n_actions = 3
    mean = torch.tensor([0.3, -0.5, 0.8, -0.9, 0.4, 0.6, -0.35, 1.1]).view(1, 2 * B, 1).repeat(N, 1, A)
    mean[1] *= -1.2  # member 1's own policy
    mean[..., 1] += 0.05
    log_std = torch.full_like(mean, LOG_STD_FLOOR)  # std e^-20: every sample is tanh(mean) of its state
    samples = cql.sample_cql_actions(mean, log_std, n_actions)
    for i in range(N):
        for b in range(B):
            log_pi_s = float(tiny_std_log_prob(mean[i, b].double(), torch.full((A,), LOG_STD_FLOOR)))
            log_pi_next = float(tiny_std_log_prob(mean[i, B + b].double(), torch.full((A,), LOG_STD_FLOOR)))
            torch.testing.assert_close(samples["target_actions"][i, b], torch.tanh(mean[i, B + b]))  # a' ~ pi(s')
            for k in range(n_actions):
                row = b * n_actions + k
                torch.testing.assert_close(samples["pi_actions"][i, row], torch.tanh(mean[i, b]))  # a ~ pi(s)
                torch.testing.assert_close(samples["next_pi_actions"][i, row], torch.tanh(mean[i, B + b]))  # pi(s')
                assert float(samples["pi_log_probs"][i, row]) == pytest.approx(log_pi_s, rel=1e-5)
                assert float(samples["next_pi_log_probs"][i, row]) == pytest.approx(log_pi_next, rel=1e-5)
    assert samples["random_actions"].shape == (N, B * n_actions, A)
    assert samples["random_actions"].abs().max() <= 1.0

    # with a real spread, every log-prob is the tanh-Gaussian density of its own action
    log_std = torch.full_like(mean, math.log(0.4))
    samples = cql.sample_cql_actions(mean, log_std, n_actions)
    for i in range(N):
        for row in range(B * n_actions):
            b = row // n_actions
            for key, state in (("pi", b), ("next_pi", B + b)):
                expected = tanh_gaussian_log_density(
                    samples[f"{key}_actions"][i, row], mean[i, state].double(), log_std[i, state].double()
                )
                assert float(samples[f"{key}_log_probs"][i, row]) == pytest.approx(float(expected), abs=2e-3)


def cql_batch(seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(N, B, S, generator=g) * 0.5,
        "actions": torch.rand(N, B, A, generator=g) * 1.8 - 0.9,
        "rewards": torch.tensor([[1.0, -2.0, 0.5, 3.0], [-1.0, 0.25, 2.0, -0.5]]),
        "next_observations": torch.randn(N, B, S, generator=g) * 0.5,
        "terminals": torch.stack([DONE, 1 - DONE]),
    }


def test_cql_update_matches_reference_without_the_conservative_term():
    """alpha_cql = 0 leaves eq. (3)'s Bellman part (its conservative part: test_cql_pretrain.py); the step is then
    deterministic: critic, actor (eq. 2), alpha, Polyak, each member on its own minibatch and its own alpha."""
    actor = deterministic_actor(cql, S, A, N, seed=8)
    critic, critic_target = critics(cql, S, A, N, seed=9)
    log_alphas = [-0.7, 0.4]
    log_alpha = torch.tensor(log_alphas, requires_grad=True)
    batch = cql_batch(10)
    lr_q, lr_pi, lr_alpha, target_entropy = 0.05, 0.05, 0.02, -float(A)

    Pa, Pc, Pt = leaf64(actor), leaf64(critic), leaf64(critic_target)
    la = torch.tensor(log_alphas, dtype=torch.float64, requires_grad=True)
    bellman, actor_losses, alpha_losses, q_data = torch.zeros(N, 2, dtype=torch.float64), [], [], []
    for i in range(N):
        alpha = math.exp(log_alphas[i])
        actor_loss_i, alpha_loss_i = 0.0, 0.0
        for b in range(B):
            s, a, s2 = (batch[k][i, b] for k in ("observations", "actions", "next_observations"))
            # Bellman target: r + gamma (1 - d) min_j Q'_ij(s', a'), a' ~ pi_i(s'), no entropy term
            with torch.no_grad():
                mu2, _ = actor_ref(Pa, i, s2, A)
                y = batch["rewards"][i, b] + GAMMA * (1 - batch["terminals"][i, b]) * min(
                    q_ref(Pt, i, j, s2, torch.tanh(mu2)) for j in range(2)
                )
            for j in range(2):
                q = q_ref(Pc, i, j, s, a)
                q_data.append(float(q.detach()))
                bellman[i, j] = bellman[i, j] + (q - y) ** 2 / B
            # eq. (2): alpha_i log pi_i(a|s) - min_j Q_ij(s, a), a ~ pi_i(s); the critic's weights held fixed
            mu, log_std = actor_ref(Pa, i, s, A)
            log_pi = tiny_std_log_prob(mu, log_std)
            q_pi = min(q_ref({k: v.detach() for k, v in Pc.items()}, i, j, s, torch.tanh(mu)) for j in range(2))
            actor_loss_i = actor_loss_i + (alpha * log_pi - q_pi) / B
            alpha_loss_i = alpha_loss_i - la[i] * (float(log_pi.detach()) + target_entropy) / B
        actor_losses.append(actor_loss_i)
        alpha_losses.append(alpha_loss_i)
    Pc_new = sgd(Pc, bellman.sum(), lr_q)
    Pa_new = sgd(Pa, sum(actor_losses), lr_pi)
    la_new = la - lr_alpha * torch.autograd.grad(sum(alpha_losses), la)[0]

    opts = optimizers(lr_pi, actor.parameters()) + optimizers(lr_q, critic.parameters()) + optimizers(lr_alpha, [log_alpha])
    info = cql.cql_update(actor, critic, critic_target, log_alpha, *opts, batch, GAMMA, TAU, 0.0, 3, target_entropy)
    assert_value(info["losses/qf"], bellman.mean(), "Bellman MSE")
    assert_value(info["losses/cql"], 0.0, "conservative term at alpha_cql = 0")
    assert_value(info["losses/actor"], sum(actor_losses) / N, "actor loss")
    assert_value(info["losses/alpha"], sum(alpha_losses) / N, "alpha loss")
    assert_value(info["charts/alpha"], np.mean(np.exp(log_alphas)), "alpha")
    assert_value(info["charts/q_data"], np.mean(q_data), "mean Q(s, a)")
    assert_params(critic, Pc_new, "critic (its own loss only: the actor loss must not train it)")
    assert_params(actor, Pa_new, "actor")
    np.testing.assert_allclose(log_alpha.detach().numpy(), la_new.detach().numpy(), rtol=1e-5)
    assert_params(critic_target, polyak(Pt, Pc_new, TAU), "target critic (Polyak tau)")


def test_cql_critic_loss_sums_members_and_twins():
    """Eq. (3) with N = 2 and hand-made samples: the loss is the sum over members and twins of
    alpha_cql (E_s logsumexp - E Q(s, a_data)) + Bellman MSE, each member on its own minibatch."""
    critic, critic_target = critics(cql, S, A, N, seed=11)
    batch, n_actions, alpha_cql = cql_batch(12), 2, 3.0
    g = torch.Generator().manual_seed(13)
    samples = {
        "random_actions": torch.rand(N, B * n_actions, A, generator=g) * 2 - 1,
        "pi_actions": torch.rand(N, B * n_actions, A, generator=g) * 2 - 1,
        "pi_log_probs": torch.randn(N, B * n_actions, generator=g),
        "next_pi_actions": torch.rand(N, B * n_actions, A, generator=g) * 2 - 1,
        "next_pi_log_probs": torch.randn(N, B * n_actions, generator=g),
        "target_actions": torch.rand(N, B, A, generator=g) * 2 - 1,
    }
    loss, info = cql.cql_critic_loss(critic, critic_target, batch, samples, GAMMA, alpha_cql)
    Pc, Pt = leaf64(critic), leaf64(critic_target)
    expected = 0.0
    with torch.no_grad():
        for i in range(N):
            for j in range(2):
                lse, q_data, sq = [], [], []
                for b in range(B):
                    s = batch["observations"][i, b]
                    y = batch["rewards"][i, b] + GAMMA * (1 - batch["terminals"][i, b]) * min(
                        q_ref(Pt, i, t, batch["next_observations"][i, b], samples["target_actions"][i, b]) for t in range(2)
                    )
                    values = []
                    for k in range(n_actions):
                        r = b * n_actions + k
                        values += [
                            float(q_ref(Pc, i, j, s, samples["random_actions"][i, r])) - A * math.log(0.5),
                            float(q_ref(Pc, i, j, s, samples["pi_actions"][i, r]) - samples["pi_log_probs"][i, r]),
                            float(q_ref(Pc, i, j, s, samples["next_pi_actions"][i, r]) - samples["next_pi_log_probs"][i, r]),
                        ]
                    lse.append(math.log(sum(math.exp(v) for v in values)))
                    q_data.append(float(q_ref(Pc, i, j, s, batch["actions"][i, b])))
                    sq.append((q_data[-1] - float(y)) ** 2)
                expected += alpha_cql * (np.mean(lse) - np.mean(q_data)) + np.mean(sq)
                assert float(info["bellman"][i, j]) == pytest.approx(np.mean(sq), rel=1e-5)
    assert_value(loss, expected, "eq. (3) summed over members and twins")


def test_cql_bc_warmup_is_maximum_likelihood_of_the_data_actions():
    """bc=True: actor loss alpha log pi(a|s) - log pi(a_data|s); with alpha ~ 1e-13 the entropy part vanishes and the
    actor moves by the gradient of -mean log pi(a_data|s), a tanh-Gaussian density (log-std clamped to [-20, 2])."""
    torch.manual_seed(14)
    actor = cql.EnsembleActor(S, A, [5], N)
    critic, critic_target = critics(cql, S, A, N, seed=15)
    log_alpha = torch.full((N,), -30.0, requires_grad=True)
    batch, lr = cql_batch(16), 0.05
    Pa = leaf64(actor)
    nll = 0.0
    for i in range(N):
        for b in range(B):
            mu, log_std = actor_ref(Pa, i, batch["observations"][i, b], A)
            nll = nll - tanh_gaussian_log_density(batch["actions"][i, b], mu, log_std) / B
    Pa_new = sgd(Pa, nll, lr)
    opts = optimizers(lr, actor.parameters()) + optimizers(0.0, critic.parameters()) + optimizers(0.0, [log_alpha])
    info = cql.cql_update(actor, critic, critic_target, log_alpha, *opts, batch, GAMMA, TAU, 5.0, 2, -float(A), bc=True)
    assert_value(info["losses/actor"], nll / N, "BC actor loss", rel=1e-4)
    assert_params(actor, Pa_new, "actor after a BC step")


# ---------------------------------------------------------------------------------------------------------------------
# fqe.py: fqe_update
# ---------------------------------------------------------------------------------------------------------------------
def test_fqe_update_matches_reference():
    """std 0: a' = tanh(mean) exactly. Each twin regresses on its own target r + gamma (1 - d) Q'_ij(s', a')."""
    critic, critic_target = critics(fqe, S, A, N, seed=17)
    batch = cql_batch(18)
    g = torch.Generator().manual_seed(19)
    batch["next_policy_mean"] = torch.randn(N, B, A, generator=g)
    batch["next_policy_std"] = torch.zeros(N, B, A)
    Pc, Pt, lr = leaf64(critic), leaf64(critic_target), 0.05
    loss, q_data = 0.0, []
    for i in range(N):
        for b in range(B):
            a2 = torch.tanh(batch["next_policy_mean"][i, b])
            for j in range(2):
                with torch.no_grad():
                    y = batch["rewards"][i, b] + GAMMA * (1 - batch["terminals"][i, b]) * q_ref(
                        Pt, i, j, batch["next_observations"][i, b], a2
                    )
                q = q_ref(Pc, i, j, batch["observations"][i, b], batch["actions"][i, b])
                q_data.append(float(q.detach()))
                loss = loss + (q - y) ** 2 / B
    Pc_new = sgd(Pc, loss, lr)
    info = fqe.fqe_update(critic, critic_target, torch.optim.SGD(critic.parameters(), lr=lr), batch, GAMMA, TAU)
    assert_value(info["losses/qf"], loss / (2 * N), "mean TD error over members and twins")
    assert_value(info["charts/q_data"], np.mean(q_data), "mean Q(s, a)")
    assert_params(critic, Pc_new, "critic")
    assert_params(critic_target, polyak(Pt, Pc_new, TAU), "target critic (Polyak tau)")


def test_fqe_next_action_is_a_sample_of_the_stochastic_policy():
    """a' = tanh(mean + std eps): with Q' = w . a' (a linear target critic), Q = 0 and r = 0 the loss is
    gamma^2 E[(w . a')^2], computed here by Gauss-Hermite quadrature for the given mean and std."""
    n_rows, mean, std, w = 20_000, torch.tensor([0.3, -0.8]), torch.tensor([0.4, 1.5]), torch.tensor([1.5, -2.0])
    critic, critic_target = fqe.EnsembleCritic(1, A, [], 1), fqe.EnsembleCritic(1, A, [], 1)
    with torch.no_grad():
        for p in [*critic.parameters(), *critic_target.parameters()]:
            p.zero_()
        critic_target.net[0].weight[:, 1:, 0] = w  # rows: [s, a1, a2] -> Q'
    batch = {
        "observations": torch.zeros(1, n_rows, 1),
        "actions": torch.zeros(1, n_rows, A),
        "rewards": torch.zeros(1, n_rows),
        "next_observations": torch.zeros(1, n_rows, 1),
        "terminals": torch.zeros(1, n_rows),
        "next_policy_mean": mean.expand(1, n_rows, A).clone(),
        "next_policy_std": std.expand(1, n_rows, A).clone(),
    }
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    weights = weights / weights.sum()
    first = [np.sum(weights * np.tanh(m + s * nodes)) for m, s in zip(mean.numpy(), std.numpy())]
    second = [np.sum(weights * np.tanh(m + s * nodes) ** 2) for m, s in zip(mean.numpy(), std.numpy())]
    w = w.numpy()
    expected = GAMMA**2 * (w[0] ** 2 * second[0] + w[1] ** 2 * second[1] + 2 * w[0] * w[1] * first[0] * first[1])
    torch.manual_seed(20)
    info = fqe.fqe_update(critic, critic_target, torch.optim.SGD(critic.parameters(), lr=0.0), batch, GAMMA, TAU)
    assert float(info["losses/qf"]) == pytest.approx(expected, rel=0.03)


# ---------------------------------------------------------------------------------------------------------------------
# awac.py: critic_loss_fn, awac_update
# ---------------------------------------------------------------------------------------------------------------------
def flag_actor(seed):
    """A linear AWAC actor: obs = (x1, x2, flag); log-std -0.7 where flag = 0 (the states s) and clamped to -20 where
    flag = 1 (the next states s', where a' ~ pi(s') is then tanh(mu(s')))."""
    torch.manual_seed(seed)
    actor = awac.EnsembleActor(S, A, [], N)
    layer = actor.net[0]
    with torch.no_grad():
        layer.weight[:, :, :A].mul_(0.3)
        layer.weight[:, S - 1, :A] = 0.0
        layer.bias[:, :, :A] = torch.tensor([0.6, -0.6])
        layer.weight[:, :, A:] = 0.0
        layer.weight[:, S - 1, A:] = -40.0
        layer.bias[:, :, A:] = -0.7
    return actor


def awac_batch(seed):
    g = torch.Generator().manual_seed(seed)
    obs, next_obs = torch.randn(N, B, S, generator=g) * 0.5, torch.randn(N, B, S, generator=g) * 0.5
    obs[..., -1], next_obs[..., -1] = 0.0, 1.0
    rewards = torch.tensor([[1.0, -2.0, 0.5, 3.0], [-1.0, 0.25, 2.0, -0.5]])
    return (obs, torch.rand(N, B, A, generator=g) * 1.8 - 0.9, rewards, next_obs, torch.stack([DONE, 1 - DONE]))


def awac_critic_reference(Pa, Pc, Pt, batch):
    obs, actions, rewards, next_obs, dones = batch
    loss = 0.0
    for i in range(N):
        for b in range(B):
            with torch.no_grad():  # y = r + gamma (1 - d) min_j Q'_ij(s', a'), a' ~ pi_i(s'), no entropy
                mu2, log_std2 = actor_ref(Pa, i, next_obs[i, b], A)
                assert float(log_std2.max()) == LOG_STD_FLOOR and float(mu2.abs().min()) > 0.25
                y = rewards[i, b] + GAMMA * (1 - dones[i, b]) * min(
                    q_ref(Pt, i, j, next_obs[i, b], torch.tanh(mu2)) for j in range(2)
                )
            for j in range(2):
                loss = loss + (q_ref(Pc, i, j, obs[i, b], actions[i, b]) - y) ** 2 / B
    return loss


def test_awac_critic_loss_matches_reference():
    actor, (critic, critic_target), batch = flag_actor(21), critics(awac, S, A, N, seed=22), awac_batch(23)
    loss, q = awac.critic_loss_fn(actor, critic, critic_target, batch, GAMMA)
    assert_value(loss, awac_critic_reference(leaf64(actor), leaf64(critic), leaf64(critic_target), batch), "critic loss")


def test_awac_update_matches_reference():
    """Critic step, then the actor step, then Polyak. lambda = 1e9 makes every weight exp(A / lambda) = 1 (to 1e-8),
    so the actor step is the gradient of -sum_i mean_b log pi_i(a_data|s) (the weights: test_awac.py)."""
    actor, (critic, critic_target), batch = flag_actor(24), critics(awac, S, A, N, seed=25), awac_batch(26)
    obs, actions = batch[0], batch[1]
    Pa, Pc, Pt, lr = leaf64(actor), leaf64(critic), leaf64(critic_target), 0.05
    critic_loss = awac_critic_reference(Pa, Pc, Pt, batch)
    Pc_new = sgd(Pc, critic_loss, lr)
    nll = 0.0
    for i in range(N):
        for b in range(B):
            mu, log_std = actor_ref(Pa, i, obs[i, b], A)
            nll = nll - tanh_gaussian_log_density(actions[i, b], mu, log_std) / B
    Pa_new = sgd(Pa, nll, lr)
    args = SimpleNamespace(gamma=GAMMA, tau=TAU, awac_lambda=1e9, exp_adv_max=100.0)
    info = awac.awac_update(
        actor, critic, critic_target, *optimizers(lr, actor.parameters(), critic.parameters()), batch, args
    )
    assert_value(info["losses/critic_loss"], critic_loss, "critic loss")
    assert_value(info["losses/actor_loss"], nll, "actor loss", rel=1e-4)
    assert_value(info["losses/adv_weight_mean"], 1.0, "advantage weights")
    assert_params(critic, Pc_new, "critic")
    assert_params(actor, Pa_new, "actor")
    assert_params(critic_target, polyak(Pt, Pc_new, TAU), "target critic (Polyak tau)")


# ---------------------------------------------------------------------------------------------------------------------
# bcq_ft.py: the perturbation model, bcq_update (VAE, critic with eq. 13's soft clipped double-Q target, actor)
# ---------------------------------------------------------------------------------------------------------------------
def test_bcq_perturbation_moves_an_action_by_at_most_phi_and_stays_in_range():
    torch.manual_seed(27)
    phi = 0.05
    model = bcq.EnsemblePerturbation(S, A, [4], N, phi)
    with torch.no_grad():
        model.net[-1].bias[:, 0, 0] = 50.0  # tanh = +1 on dim 0, -1 on dim 1: the full range, both ways
        model.net[-1].bias[:, 0, 1] = -50.0
    obs = torch.randn(N, 3, S)
    actions = torch.tensor([[0.2, 0.2], [0.98, -0.99], [-0.5, 0.97]]).expand(N, 3, A)
    expected = torch.tensor([[0.25, 0.15], [1.0, -1.0], [-0.45, 0.92]]).expand(N, 3, A)
    torch.testing.assert_close(model(obs, actions), expected)
    # in general: clip(a + phi tanh(f(s, a)), -1, 1) with f each member's own MLP
    torch.manual_seed(28)
    model = bcq.EnsemblePerturbation(S, A, [4], N, 0.3)
    with torch.no_grad():
        model.net[-1].weight.mul_(5.0)
    actions = torch.rand(N, 6, A) * 2 - 1
    obs = torch.randn(N, 6, S)
    got = model(obs, actions)
    P = leaf64(model)
    for i in range(N):
        for b in range(6):
            f = row_mlp(layers(P), i, torch.cat([obs[i, b], actions[i, b]]))
            torch.testing.assert_close(
                got[i, b].double(), (actions[i, b].double() + 0.3 * torch.tanh(f)).clamp(-1, 1), rtol=1e-5, atol=1e-6
            )
    assert (got - actions).abs().max() <= 0.3 + 1e-6 and got.abs().max() <= 1.0


def bcq_nets(seed):
    """VAE whose decoder ignores its latent (first-layer weights of z zero: decoded actions are deterministic) and
    whose encoder gives log-stds beyond BCQ's clamp [-4, 15] on half the latent dims; actor_target != actor."""
    torch.manual_seed(seed)
    latent = 2 * A
    vae = bcq.EnsembleVAE(S, A, latent, [5], N)
    actor = bcq.EnsemblePerturbation(S, A, [5], N, 0.2)
    actor_target = bcq.EnsemblePerturbation(S, A, [5], N, 0.2)
    critic, critic_target = critics(bcq, S, A, N, seed=seed + 1)
    with torch.no_grad():
        vae.decoder[0].weight[:, S:] = 0.0
        vae.encoder[-1].bias[:, 0, latent : latent + A] = -7.0  # log-std -7 + small: clamped to -4
        vae.encoder[-1].bias[:, 0, latent + A :] = 0.5
        actor.net[-1].weight.mul_(3.0)
        actor_target.net[-1].weight.mul_(3.0)
    return vae, actor, actor_target, critic, critic_target


def test_bcq_update_matches_reference():
    vae, actor, actor_target, critic, critic_target = bcq_nets(29)
    g = torch.Generator().manual_seed(31)
    obs, next_obs = torch.randn(N, B, S, generator=g), torch.randn(N, B, S, generator=g)
    actions = torch.rand(N, B, A, generator=g) * 1.8 - 0.9
    rewards = torch.tensor([[1.0, -2.0, 0.5, 3.0], [-1.0, 0.25, 2.0, -0.5]])
    batch = (obs, actions, rewards, next_obs, torch.stack([DONE, 1 - DONE]))
    args = SimpleNamespace(kl_weight=0.5, n_action_samples=3, gamma=GAMMA, lmbda=0.75, tau=TAU)
    lr, latent = 0.05, 2 * A

    Pv, Pp, Ppt, Pc, Pt = (leaf64(m) for m in (vae, actor, actor_target, critic, critic_target))
    trained_vae_keys = [k for k in Pv if k != "decoder.0.weight"]  # the latent's weights stay 0 (see the optimizer)

    def decode(P, i, s):  # the latent has no effect here: z = 0
        return torch.tanh(row_mlp(layers(P, "decoder"), i, torch.cat([s.double(), torch.zeros(latent)])))

    def perturb(P, i, s, a):
        return (a + 0.2 * torch.tanh(row_mlp(layers(P), i, torch.cat([s.double(), a])))).clamp(-1.0, 1.0)

    # VAE: MSE(a_rec, a) + 0.5 KL(N(mu, sigma) || N(0, 1)), sigma = exp(clamp(log sigma, -4, 15)), per member, summed
    vae_loss, recons, kls = 0.0, [], []
    for i in range(N):
        recon, kl = 0.0, 0.0
        for b in range(B):
            out = row_mlp(layers(Pv, "encoder"), i, torch.cat([obs[i, b], actions[i, b]]))
            mu, log_sigma = out[:latent], out[latent:].clamp(-4.0, 15.0)
            kl = kl + (-0.5 * (1 + 2 * log_sigma - mu**2 - torch.exp(2 * log_sigma))).mean() / B
            recon = recon + ((decode(Pv, i, obs[i, b]) - actions[i, b]) ** 2).mean() / B
        vae_loss = vae_loss + recon + 0.5 * kl
        recons.append(float(recon.detach()))
        kls.append(float(kl.detach()))
    Pv_new = sgd(Pv, vae_loss, lr, trained_vae_keys)
    # critic: y = r + gamma (1 - d) max_k [0.75 min_j Q'_ij + 0.25 max_j Q'_ij](s', a'_k), a'_k = xi'(s', G(s'))
    # (G: the VAE after its step; xi': the target perturbation net); MSE(Q1, y) + MSE(Q2, y)
    critic_loss, q_data = 0.0, []
    for i in range(N):
        for b in range(B):
            with torch.no_grad():
                a2 = perturb(Ppt, i, next_obs[i, b], decode(Pv_new, i, next_obs[i, b]))
                q1, q2 = (q_ref(Pt, i, j, next_obs[i, b], a2) for j in range(2))
                y = rewards[i, b] + GAMMA * (1 - batch[4][i, b]) * (0.75 * min(q1, q2) + 0.25 * max(q1, q2))
            for j in range(2):
                q = q_ref(Pc, i, j, obs[i, b], actions[i, b])
                q_data.append(float(q.detach()))
                critic_loss = critic_loss + (q - y) ** 2 / B
    Pc_new = sgd(Pc, critic_loss, lr)
    # actor: -sum_i mean_b Q1_i(s, xi(s, G(s))) with the critic just updated
    actor_loss = 0.0
    for i in range(N):
        for b in range(B):
            a_vae = decode(Pv_new, i, obs[i, b]).detach()
            actor_loss = actor_loss - q_ref(Pc_new, i, 0, obs[i, b], perturb(Pp, i, obs[i, b], a_vae)) / B
    Pp_new = sgd(Pp, actor_loss, lr)

    vae_params = [p for name, p in vae.named_parameters() if name != "decoder.0.weight"]
    opts = optimizers(lr, vae_params, actor.parameters(), critic.parameters())
    info = bcq.bcq_update(vae, actor, actor_target, critic, critic_target, opts, batch, args)
    assert_value(info["losses/vae_loss"], vae_loss, "VAE loss")
    assert_value(info["losses/recon_loss"], np.mean(recons), "reconstruction loss")
    assert_value(info["losses/kl_loss"], np.mean(kls), "KL")
    assert_value(info["losses/critic_loss"], critic_loss, "critic loss")
    assert_value(info["losses/actor_loss"], actor_loss, "actor loss")
    assert_value(info["losses/qf_mean"], np.mean(q_data), "mean Q(s, a)")
    assert_params(vae, Pv_new, "VAE")
    assert_params(critic, Pc_new, "critic")
    assert_params(actor, Pp_new, "perturbation actor")
    assert_params(critic_target, polyak(Pt, Pc_new, TAU), "target critic (Polyak tau)")
    assert_params(actor_target, polyak(Ppt, Pp_new, TAU), "target actor (Polyak tau)")


def test_every_planted_bug_of_the_mutation_check_still_applies():
    """benchmark/mutation_check.py plants each bug by replacing a snippet of the scripts' source; a snippet that no
    longer matches (after a rename or a reformat) silently drops its mutant from the check, so every one must apply."""
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmark" / "mutation_check.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"(\d+) mutants: 0 caught, 0 survived, 0 stale or error", summary), summary
    assert int(summary.split()[0]) >= 100, summary  # the table was not emptied
