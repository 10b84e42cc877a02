"""Mutation check of the update steps: plant one single-line bug at a time in a temporary copy of the repository and
see whether the fast tests notice (issue 24).

Every entry of MUTANTS is (file, original snippet, mutated snippet, description). The file "*" means every script
that holds the snippet (a helper copied verbatim into several scripts, CONTRIBUTING.md, is mutated in every copy, as
a real bug fixed "everywhere" would be). A per-file snippet must occur exactly once in its file. The repository is
copied once to a temporary folder; each mutant is applied there, the pytest selection runs (fast tests only, with a
timeout), and the file is restored. Nothing in the repository itself is ever modified, and no mutated code is kept.

    python benchmark/mutation_check.py                                   # the default selection, every mutant
    python benchmark/mutation_check.py --tests tests/test_sac.py --only sac.py
    python benchmark/mutation_check.py --check                           # only verify that every snippet applies

A mutant is "caught" when pytest fails (exit code 1), "survived" when it passes, "timeout" past --timeout seconds
(counted as caught: the mutant broke something), "stale" when its snippet is no longer in the file (update the list).
The unmutated copy must pass first. Exit code: 1 when a mutant survived or is stale, else 0.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("cql_pretrain.py", "balanced_finetune.py", "fqe.py", "awac.py", "bcq_ft.py", "sac.py")
DEFAULT_TESTS = (
    "tests/test_update_steps.py",
    "tests/test_cql_pretrain.py",
    "tests/test_balanced_finetune.py",
    "tests/test_fqe.py",
    "tests/test_awac.py",
    "tests/test_bcq_ft.py",
    "tests/test_sac.py",
)

MUTANTS = [
    # ---- shared helpers, mutated in every copy ----
    ("*", "target_param.lerp_(param, tau)", "target_param.lerp_(param, 1.0 - tau)", "Polyak step inverted (1 - tau)"),
    ("*", "target_param.lerp_(param, tau)", "target_param.lerp_(param, 2.0 * tau)", "Polyak step 2 tau"),
    (
        "*",
        "log_prob - 2.0 * (np.log(2.0) - u - F.softplus(-2.0 * u))",
        "log_prob + 2.0 * (np.log(2.0) - u - F.softplus(-2.0 * u))",
        "tanh change of variables: wrong sign",
    ),
    ("*", "log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)", "log_std", "actor log-std not clamped to [-20, 2]"),
    (
        "*",
        "torch.cat([obs, act], dim=-1).repeat_interleave(2, dim=0)",
        "torch.cat([obs, act], dim=-1).repeat(2, 1, 1)",
        "critic rows not member-major (twin of another member's input)",
    ),
    # ---- cql_pretrain.py: eq. (3) critic, eq. (2) actor, alpha, sampling ----
    (
        "cql_pretrain.py",
        'samples["target_actions"]).min(1).values',
        'samples["target_actions"]).max(1).values',
        "CQL Bellman target: max over twins",
    ),
    ("cql_pretrain.py", 'gamma * (1.0 - batch["terminals"]) * next_q', "gamma * next_q", "CQL target: terminal mask dropped"),
    (
        "cql_pretrain.py",
        'batch["rewards"] + gamma * (1.0 - batch["terminals"])',
        'batch["rewards"] + (1.0 - batch["terminals"])',
        "CQL target: no discount",
    ),
    ("cql_pretrain.py", "q_rand - random_density", "q_rand + random_density", "CQL: uniform density sign"),
    (
        "cql_pretrain.py",
        'q_pi - samples["pi_log_probs"]',
        'q_pi + samples["pi_log_probs"]',
        "CQL: pi(s) importance weight sign",
    ),
    (
        "cql_pretrain.py",
        'q_next_pi - samples["next_pi_log_probs"]',
        'q_next_pi + samples["next_pi_log_probs"]',
        "CQL: pi(s') importance weight sign",
    ),
    ("cql_pretrain.py", "- q_data.mean(-1))  # [N, 2]", "+ q_data.mean(-1))  # [N, 2]", "CQL: conservative term sign"),
    ("cql_pretrain.py", "torch.logsumexp(cat_q, -1)", "cat_q.max(-1).values", "CQL: logsumexp -> max"),
    (
        "cql_pretrain.py",
        "return (bellman + cql_term).sum(), {",
        "return (bellman + cql_term).mean(), {",
        "CQL critic loss: mean over members/twins instead of sum",
    ),
    (
        "cql_pretrain.py",
        "q_data = q_all[:, :, :batch_size]",
        "q_data = q_all[:, :, 1:batch_size + 1]",
        "CQL: Q(s, a_data) off by one",
    ),
    (
        "cql_pretrain.py",
        "tanh_gaussian_sample(mean[:, batch:], log_std[:, batch:])",
        "tanh_gaussian_sample(mean[:, :batch], log_std[:, :batch])",
        "CQL: Bellman target action drawn at s, not s'",
    ),
    (
        "cql_pretrain.py",
        '"next_pi_actions": pi_actions[:, batch * n_actions :]',
        '"next_pi_actions": pi_actions[:, : batch * n_actions]',
        "CQL: a'~pi(s') samples drawn at s",
    ),
    ("cql_pretrain.py", "(obs, pi_action)).min(1).values", "(obs, pi_action)).max(1).values", "CQL actor: max over twins"),
    (
        "cql_pretrain.py",
        "(alpha[:, None] * log_pi - q_pi).mean(1)",
        "(alpha[:, None] * log_pi + q_pi).mean(1)",
        "CQL actor: Q sign",
    ),
    (
        "cql_pretrain.py",
        "(alpha[:, None] * log_pi - q_pi).mean(1)",
        "(alpha[:, None] * log_pi - q_pi).sum(1)",
        "CQL actor: sum over the batch",
    ),
    ("cql_pretrain.py", "frozen = {name: p.detach() for", "frozen = {name: p for", "CQL actor loss also trains the critic"),
    ("cql_pretrain.py", "alpha = log_alpha.exp().detach()", "alpha = log_alpha.detach()", "CQL: alpha = log alpha"),
    (
        "cql_pretrain.py",
        "(log_pi.detach() + target_entropy)",
        "(log_pi.detach() - target_entropy)",
        "CQL alpha loss: target entropy sign",
    ),
    ("cql_pretrain.py", "alpha_loss = -(log_alpha[:, None]", "alpha_loss = (log_alpha[:, None]", "CQL alpha loss sign"),
    (
        "cql_pretrain.py",
        "(log_pi.detach() + target_entropy)",
        "(log_pi + target_entropy)",
        "CQL alpha loss also trains the actor",
    ),
    (
        "cql_pretrain.py",
        "pi_action, log_pi = tanh_gaussian_sample(mean[:, :batch_size], log_std[:, :batch_size])",
        "pi_action, log_pi = tanh_gaussian_sample(mean[:, batch_size:], log_std[:, batch_size:])",
        "CQL actor: action drawn at s' instead of s",
    ),
    (
        "cql_pretrain.py",
        "(alpha[:, None] * log_pi - bc_log_prob)",
        "(alpha[:, None] * log_pi + bc_log_prob)",
        "CQL BC warm-up: likelihood sign",
    ),
    (
        "cql_pretrain.py",
        "bc_log_prob = tanh_gaussian_log_prob(mean[:, :batch_size], log_std[:, :batch_size]",
        "bc_log_prob = tanh_gaussian_log_prob(mean[:, batch_size:], log_std[:, batch_size:]",
        "CQL BC warm-up: likelihood at s'",
    ),
    (
        "cql_pretrain.py",
        "(critic_loss + actor_loss.sum() + alpha_loss.sum()).backward()",
        "(critic_loss + actor_loss.sum()).backward()",
        "CQL: alpha never trained",
    ),
    (
        "cql_pretrain.py",
        "soft_update(critic_target, critic, tau)",
        "soft_update(critic, critic_target, tau)",
        "CQL: Polyak arguments swapped",
    ),
    # ---- balanced_finetune.py: eq. (5) SAC step of the ensemble, eq. (4) density-ratio step ----
    (
        "balanced_finetune.py",
        "expand(next_action)).min(dim=1).values",
        "expand(next_action)).max(dim=1).values",
        "fine-tuning target: max over twins",
    ),
    (
        "balanced_finetune.py",
        "expand(next_action)).min(dim=1).values",
        "expand(next_action)).mean(dim=1)",
        "fine-tuning target: mean over twins",
    ),
    (
        "balanced_finetune.py",
        "gamma * (1.0 - done) * (target_q",
        "gamma * (target_q",
        "fine-tuning target: terminal mask dropped",
    ),
    ("balanced_finetune.py", "rew + gamma * (1.0 - done)", "rew + (1.0 - done)", "fine-tuning target: no discount"),
    (
        "balanced_finetune.py",
        "(target_q - alpha * next_log_pi)",
        "(target_q + alpha * next_log_pi)",
        "fine-tuning target: entropy sign",
    ),
    ("balanced_finetune.py", "(target_q - alpha * next_log_pi)", "(target_q)", "fine-tuning target: entropy term dropped"),
    (
        "balanced_finetune.py",
        "ensemble_policy(actor, next_obs, n_ensemble)",
        "ensemble_policy(actor, obs, n_ensemble)",
        "fine-tuning target: a' drawn at s",
    ),
    (
        "balanced_finetune.py",
        "target_q = target_critic(expand(next_obs)",
        "target_q = critic(expand(next_obs)",
        "fine-tuning target: online critic instead of target critic",
    ),
    (
        "balanced_finetune.py",
        "q = critic(expand(obs), expand(act))",
        "q = critic(expand(next_obs), expand(act))",
        "fine-tuning critic: Q evaluated at s'",
    ),
    (
        "balanced_finetune.py",
        ".pow(2).mean(dim=2).sum()  # per member",
        ".pow(2).mean()  # per member",
        "fine-tuning critic loss: mean over members/twins instead of sum",
    ),
    (
        "balanced_finetune.py",
        "expand(action)).min(dim=1).values.mean(0)",
        "expand(action)).min(dim=1).values.min(0).values",
        "actor Qbar: min over members instead of mean (eq. 5)",
    ),
    (
        "balanced_finetune.py",
        "expand(action)).min(dim=1).values.mean(0)",
        "expand(action)).min(dim=1).values.sum(0)",
        "actor Qbar: sum over members instead of mean",
    ),
    (
        "balanced_finetune.py",
        "expand(action)).min(dim=1).values.mean(0)",
        "expand(action)).max(dim=1).values.mean(0)",
        "actor Qbar: max over twins",
    ),
    (
        "balanced_finetune.py",
        "expand(action)).min(dim=1).values.mean(0)",
        "expand(action)).mean(dim=1).mean(0)",
        "actor Qbar: mean over twins",
    ),
    (
        "balanced_finetune.py",
        "expand(action)).min(dim=1).values.mean(0)",
        "expand(action))[:, 0].mean(0)",
        "actor Qbar: Q1 only",
    ),
    (
        "balanced_finetune.py",
        "qbar = critic(expand(obs)",
        "qbar = target_critic(expand(obs)",
        "actor Qbar from the target critic",
    ),
    (
        "balanced_finetune.py",
        "action, log_pi = tanh_gaussian_sample(*ensemble_policy(actor, obs, n_ensemble))",
        "action, log_pi = tanh_gaussian_sample(*ensemble_policy(actor, next_obs, n_ensemble))",
        "fine-tuning actor: a drawn at s'",
    ),
    ("balanced_finetune.py", "critic.requires_grad_(True)", "critic.requires_grad_(False)", "fine-tuning: critic left frozen"),
    ("balanced_finetune.py", "(alpha * log_pi - qbar).mean()", "(alpha * log_pi + qbar).mean()", "fine-tuning actor: Q sign"),
    ("balanced_finetune.py", "(alpha * log_pi - qbar).mean()", "(log_pi - qbar).mean()", "fine-tuning actor: alpha dropped"),
    (
        "balanced_finetune.py",
        "alpha = log_alpha.exp().detach()",
        "alpha = log_alpha.detach()",
        "fine-tuning: alpha = log alpha",
    ),
    (
        "balanced_finetune.py",
        "(-log_alpha.exp() * (log_pi.detach()",
        "(log_alpha.exp() * (log_pi.detach()",
        "fine-tuning alpha loss sign",
    ),
    (
        "balanced_finetune.py",
        "(log_pi.detach() + target_entropy)",
        "(log_pi.detach() - target_entropy)",
        "fine-tuning alpha loss: target entropy sign",
    ),
    (
        "balanced_finetune.py",
        "(-log_alpha.exp() * (log_pi.detach()",
        "(-log_alpha * (log_pi.detach()",
        "fine-tuning alpha loss: log alpha instead of alpha (not this script's documented form)",
    ),
    (
        "balanced_finetune.py",
        "    return mean, std.log()\n",
        "    return mean, std\n",
        "ensemble policy returns std as log-std",
    ),
    (
        "balanced_finetune.py",
        "soft_update(target_critic, critic, tau)",
        "soft_update(target_critic, critic, 1.0)",
        "fine-tuning: target critic copied (tau = 1)",
    ),
    (
        "balanced_finetune.py",
        "loss = density_ratio_loss(w_online, w_offline)",
        "loss = density_ratio_loss(w_offline, w_online)",
        "density ratio: online and offline swapped in eq. (4)",
    ),
    (
        "balanced_finetune.py",
        "priorities_from_ratio(w_batch.detach(), w_offline.detach(), temperature)",
        "priorities_from_ratio(w_batch.detach(), w_online.detach(), temperature)",
        "priorities normalised by online w",
    ),
    (
        "balanced_finetune.py",
        "priorities_from_ratio(w_batch.detach(), w_offline.detach(), temperature)",
        "priorities_from_ratio(w_batch.detach(), w_offline.detach(), 1.0)",
        "priorities: temperature dropped",
    ),
    (
        "balanced_finetune.py",
        "w[n_on : n_on + n_off], w[n_on + n_off :]",
        "w[n_on : n_on + n_off], w[n_on + n_off - 1 : -1]",
        "density ratio: RL-batch w off by one",
    ),
    (
        "balanced_finetune.py",
        "w[:n_on], w[n_on : n_on + n_off]",
        "w[:n_on], w[n_on - 1 : n_on + n_off - 1]",
        "density ratio: offline w off by one",
    ),
    (
        "balanced_finetune.py",
        '"balanced/w_online": w_online.detach().mean()',
        '"balanced/w_online": w_offline.detach().mean()',
        "density ratio: logged w_online is w_offline",
    ),
    ("balanced_finetune.py", "    ratio_optimizer.step()\n", "\n", "density-ratio net never trained"),
    (
        "balanced_finetune.py",
        "offline_term = -torch.log(2.0 / (w_offline + 1.0) + 1e-10).mean()",
        "offline_term = torch.log(2.0 / (w_offline + 1.0) + 1e-10).mean()",
        "density ratio loss: offline term sign",
    ),
    (
        "balanced_finetune.py",
        "return (scaled / normalizer).clamp(1e-3, 1e3)",
        "return (scaled / normalizer).clamp(1e-3)",
        "priorities: upper clamp dropped",
    ),
    (
        "balanced_finetune.py",
        "normalizer = w_offline.pow(1.0 / temperature).mean() + 1e-10",
        "normalizer = w_offline.mean().pow(1.0 / temperature) + 1e-10",
        "priorities: normaliser mean(w)^(1/T)",
    ),
    # ---- fqe.py ----
    ("fqe.py", 'gamma * (1.0 - batch["terminals"].unsqueeze(1)) * next_q', "gamma * next_q", "FQE: terminal mask dropped"),
    (
        "fqe.py",
        'next_q = critic_target(batch["next_observations"], next_actions)',
        'next_q = critic_target(batch["next_observations"], next_actions).min(1, keepdim=True).values',
        "FQE: min over twins (should be each twin its own)",
    ),
    (
        "fqe.py",
        'next_q = critic_target(batch["next_observations"], next_actions)',
        'next_q = critic(batch["next_observations"], next_actions)',
        "FQE: online critic instead of target",
    ),
    (
        "fqe.py",
        'unsqueeze(1) + gamma * (1.0 - batch["terminals"]',
        'unsqueeze(1) + (1.0 - batch["terminals"]',
        "FQE: no discount",
    ),
    ("fqe.py", "return mse.sum(), {", "return mse.mean(), {", "FQE: mean over members/twins instead of sum"),
    (
        "fqe.py",
        "next_actions = torch.tanh(mean + std * torch.randn_like(mean))",
        "next_actions = torch.tanh(mean)",
        "FQE: a' = tanh(mu), the policy's noise dropped",
    ),
    (
        "fqe.py",
        "next_actions = torch.tanh(mean + std * torch.randn_like(mean))",
        "next_actions = torch.tanh(mean + torch.randn_like(mean))",
        "FQE: a' ignores the policy's std",
    ),
    (
        "fqe.py",
        "soft_update(critic_target, critic, tau)",
        "soft_update(critic, critic_target, tau)",
        "FQE: Polyak arguments swapped",
    ),
    # ---- awac.py ----
    (
        "awac.py",
        "critic_target(next_obs, next_actions).min(dim=1).values",
        "critic_target(next_obs, next_actions).max(dim=1).values",
        "AWAC target: max over twins",
    ),
    ("awac.py", "rewards + gamma * (1.0 - dones) * next_q", "rewards + gamma * next_q", "AWAC target: terminal mask dropped"),
    ("awac.py", "rewards + gamma * (1.0 - dones) * next_q", "rewards + (1.0 - dones) * next_q", "AWAC target: no discount"),
    ("awac.py", "tanh_gaussian_sample(*actor(next_obs))", "tanh_gaussian_sample(*actor(obs))", "AWAC target: a' drawn at s"),
    (
        "awac.py",
        "return (q - target.unsqueeze(1)).pow(2).mean(-1).sum(), q.detach()",
        "return (q - target.unsqueeze(1)).pow(2).mean(), q.detach()",
        "AWAC critic loss: mean over members/twins",
    ),
    (
        "awac.py",
        "weights = torch.exp((q - v) / awac_lambda)",
        "weights = torch.exp((v - q) / awac_lambda)",
        "AWAC: advantage sign",
    ),
    ("awac.py", ".clamp_max(exp_adv_max)", "", "AWAC: weight cap dropped"),
    (
        "awac.py",
        "v = critic(obs, pi_actions).min(dim=1).values",
        "v = critic(obs, pi_actions).max(dim=1).values",
        "AWAC actor: V with max over twins",
    ),
    (
        "awac.py",
        "q = critic(obs, actions).min(dim=1).values",
        "q = critic(obs, actions).mean(dim=1)",
        "AWAC actor: Q with mean over twins",
    ),
    (
        "awac.py",
        "return -(log_prob * weights).mean(-1).sum(), weights",
        "return -(log_prob * weights).mean(), weights",
        "AWAC actor loss: mean over members",
    ),
    (
        "awac.py",
        "awac_actor_loss(actor, critic, batch[0], batch[1]",
        "awac_actor_loss(actor, critic, batch[3], batch[1]",
        "AWAC update: actor trained at s'",
    ),
    (
        "awac.py",
        "soft_update(critic_target, critic, args.tau)",
        "soft_update(critic_target, critic, 1.0)",
        "AWAC: target critic copied (tau = 1)",
    ),
    # ---- bcq_ft.py ----
    (
        "bcq_ft.py",
        "lmbda * next_q.min(dim=1).values + (1.0 - lmbda) * next_q.max(dim=1).values",
        "lmbda * next_q.max(dim=1).values + (1.0 - lmbda) * next_q.min(dim=1).values",
        "BCQ target: min/max weights swapped",
    ),
    ("bcq_ft.py", "n_samples).max(dim=-1).values", "n_samples).mean(dim=-1)", "BCQ target: mean over candidates"),
    (
        "bcq_ft.py",
        "soft_q.view(soft_q.shape[0], -1, n_samples)",
        "soft_q.view(soft_q.shape[0], n_samples, -1).transpose(1, 2)",
        "BCQ target: candidates of one state taken strided",
    ),
    ("bcq_ft.py", "rewards + gamma * (1.0 - dones) * best", "rewards + gamma * best", "BCQ target: terminal mask dropped"),
    (
        "bcq_ft.py",
        "next_obs.repeat_interleave(args.n_action_samples, dim=1)",
        "next_obs.repeat(1, args.n_action_samples, 1)",
        "BCQ target: candidates of other states",
    ),
    ("bcq_ft.py", "actions + self.phi * torch.tanh(", "actions + torch.tanh(", "BCQ perturbation range ignored"),
    (
        "bcq_ft.py",
        "self.net(torch.cat([obs, actions], -1)))).clamp(-1.0, 1.0)",
        "self.net(torch.cat([obs, actions], -1))))",
        "BCQ perturbed action not clipped to [-1, 1]",
    ),
    ("bcq_ft.py", "std = log_std.clamp(-4.0, 15.0).exp()", "std = log_std.exp()", "BCQ VAE: log-std clamp dropped"),
    ("bcq_ft.py", "- mean.pow(2) - std.pow(2)", "+ mean.pow(2) - std.pow(2)", "BCQ VAE KL: mu^2 sign"),
    ("bcq_ft.py", "(recon_loss + kl_weight * kl_loss)", "(recon_loss + kl_loss)", "BCQ VAE: KL weight dropped"),
    ("bcq_ft.py", "z = mean + std * torch.randn_like(std)", "z = mean", "BCQ VAE: latent not sampled"),
    ("bcq_ft.py", "device=obs.device).clamp(-0.5, 0.5)", "device=obs.device)", "BCQ prior latent not clipped"),
    ("bcq_ft.py", "actor(obs, sampled_actions))[:, 0]", "actor(obs, sampled_actions))[:, 1]", "BCQ actor: Q2 instead of Q1"),
    ("bcq_ft.py", "actor_loss = -critic(obs, actor(", "actor_loss = critic(obs, actor(", "BCQ actor loss sign"),
    (
        "bcq_ft.py",
        "sampled_actions = vae.decode(obs)",
        "sampled_actions = vae.decode(batch[3])",
        "BCQ actor: VAE actions of s'",
    ),
    (
        "bcq_ft.py",
        "q = bcq_critic_loss(vae, actor_target, critic",
        "q = bcq_critic_loss(vae, actor, critic",
        "BCQ target: online perturbation net instead of target",
    ),
    (
        "bcq_ft.py",
        "soft_update(actor_target, actor, args.tau)",
        "soft_update(actor, actor_target, args.tau)",
        "BCQ: actor Polyak arguments swapped",
    ),
    (
        "bcq_ft.py",
        "soft_update(critic_target, critic, args.tau)",
        "soft_update(critic_target, critic, 1.0)",
        "BCQ: target critic copied (tau = 1)",
    ),
    (
        "bcq_ft.py",
        "return (q - target.unsqueeze(1)).pow(2).mean(-1).sum(), q.detach()",
        "return (q - target.unsqueeze(1)).pow(2).mean(), q.detach()",
        "BCQ critic loss: mean over members/twins",
    ),
    (
        "bcq_ft.py",
        "scores = critic(score_obs, score_act)[:, 0].mean(0)",
        "scores = critic(score_obs, score_act)[:, 0].min(0).values",
        "BCQ acting: min over members instead of mean",
    ),
    # ---- sac.py ----
    (
        "sac.py",
        "critic_target(next_obs, next_actions).min(dim=1).values",
        "critic_target(next_obs, next_actions).max(dim=1).values",
        "SAC target: max over twins",
    ),
    ("sac.py", "- alpha * next_log_prob", "+ alpha * next_log_prob", "SAC target: entropy sign"),
    (
        "sac.py",
        "rewards + gamma * (1.0 - terminals) * next_q",
        "rewards + gamma * next_q",
        "SAC target: terminal mask dropped",
    ),
    (
        "sac.py",
        "rewards + gamma * (1.0 - terminals) * next_q",
        "rewards + (1.0 - terminals) * next_q",
        "SAC target: no discount",
    ),
    ("sac.py", "tanh_gaussian_sample(*actor(next_obs))", "tanh_gaussian_sample(*actor(obs))", "SAC target: a' drawn at s"),
    ("sac.py", 'reduction="none").mean(-1).sum()', 'reduction="none").mean()', "SAC critic loss: mean over twins"),
    (
        "sac.py",
        "min_q = critic(obs, new_actions).min(dim=1).values",
        "min_q = critic(obs, new_actions).max(dim=1).values",
        "SAC actor: max over twins",
    ),
    ("sac.py", "(alpha * log_prob - min_q).mean()", "(alpha * log_prob + min_q).mean()", "SAC actor: Q sign"),
    ("sac.py", "alpha = log_alpha.exp().detach()", "alpha = log_alpha.detach()", "SAC: alpha = log alpha"),
    ("sac.py", "alpha_loss = -(log_alpha * (", "alpha_loss = (log_alpha * (", "SAC alpha loss sign"),
    (
        "sac.py",
        "(log_prob.detach() + target_entropy)",
        "(log_prob.detach() - target_entropy)",
        "SAC alpha loss: target entropy sign",
    ),
    (
        "sac.py",
        "soft_update(critic_target, critic, tau)",
        "soft_update(critic, critic_target, tau)",
        "SAC: Polyak arguments swapped",
    ),
    ("sac.py", "critic.requires_grad_(True)", "critic.requires_grad_(False)", "SAC: critic left frozen"),
]


def apply(root: str, mutant) -> dict:
    """Apply a mutant under root; returns {path: original text} to restore (empty when the snippet is missing)."""
    file, original, mutated, _ = mutant
    saved = {}
    for name in SCRIPTS if file == "*" else (file,):
        path = os.path.join(root, name)
        with open(path) as f:
            text = f.read()
        count = text.count(original)
        if count == 0 or (file != "*" and count != 1):
            continue
        saved[path] = text
        with open(path, "w") as f:
            f.write(text.replace(original, mutated))
    if file != "*" and not saved:
        return {}
    return saved


def restore(saved: dict):
    for path, text in saved.items():
        with open(path, "w") as f:
            f.write(text)


def run_tests(root: str, tests, timeout: float) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-m", "not slow", "-p", "no:cacheprovider", *tests]
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout"
    if proc.returncode == 0:
        return "survived"
    if proc.returncode == 1:
        return "caught"
    return f"error (pytest exit {proc.returncode}): {proc.stdout[-300:]}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", nargs="+", default=list(DEFAULT_TESTS), help="pytest selection (run with -m 'not slow')")
    parser.add_argument("--only", default=None, help="run only mutants whose file or description contains this text")
    parser.add_argument("--numbers", default=None, help="run only these mutants, by their number in the table: 4,7,12")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per pytest run")
    parser.add_argument("--check", action="store_true", help="only check that every snippet applies, run no test")
    args = parser.parse_args()

    wanted = None if args.numbers is None else {int(n) for n in args.numbers.split(",")}
    mutants = [
        (number, m)
        for number, m in enumerate(MUTANTS, 1)
        if (args.only is None or args.only in m[0] or args.only in m[3]) and (wanted is None or number in wanted)
    ]
    with tempfile.TemporaryDirectory(prefix="mutation_check_") as tmp:
        root = os.path.join(tmp, "repo")
        shutil.copytree(ROOT, root, ignore=shutil.ignore_patterns(".git", "__pycache__", "runs", "checkpoints", ".ruff_cache"))
        if not args.check:
            baseline = run_tests(root, args.tests, args.timeout)
            if baseline != "survived":
                print(f"the unmutated repository does not pass the selection: {baseline}")
                sys.exit(2)
        rows = []
        for number, mutant in mutants:
            start = time.time()
            saved = apply(root, mutant)
            if not saved:
                result = "stale"
            else:
                result = "applies" if args.check else run_tests(root, args.tests, args.timeout)
                restore(saved)
            rows.append((number, mutant[0], mutant[3], result))
            print(f"{number:3d}  {result:9s} {time.time() - start:6.1f}s  {mutant[0]:21s} {mutant[3]}", flush=True)

    caught = sum(r[3] in ("caught", "timeout") for r in rows)
    survived = [r for r in rows if r[3] == "survived"]
    bad = [r for r in rows if r[3] not in ("caught", "timeout", "survived", "applies")]
    print(f"\n{len(rows)} mutants: {caught} caught, {len(survived)} survived, {len(bad)} stale or error")
    for number, file, description, result in survived + bad:
        print(f"  {result}: #{number} {file}: {description}")
    sys.exit(1 if survived or bad else 0)


if __name__ == "__main__":
    main()
