"""bcq_ft.py: soft clipped double-Q target, critic loss and VAE loss against independent computations,
ensemble action selection, a tiny offline-then-online run with N=2, data-path errors, SIGKILL + --resume,
and same-seed determinism."""

import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, load_script, scalars, write_d4rl_file

bcq_ft = load_script("bcq_ft")

TINY = [
    "--env-id",
    "Hopper-v4",
    "--n-ensemble",
    "2",
    "--hidden-dim",
    "16",
    "--batch-size",
    "32",
    "--eval-episodes",
    "1",
    "--log-every",
    "50",
    "--eval-every",
    "100",
]
N, B, K, S, A = 2, 5, 4, 6, 3


def nets(seed=0):
    torch.manual_seed(seed)
    vae = bcq_ft.EnsembleVAE(S, A, 2 * A, [16, 16], N)
    actor = bcq_ft.EnsemblePerturbation(S, A, [16, 16], N, phi=0.05)
    critic = bcq_ft.EnsembleCritic(S, A, [16, 16], N)
    critic_target = bcq_ft.EnsembleCritic(S, A, [16, 16], N)
    return vae, actor, critic, critic_target


def test_soft_clipped_double_q_target_loops():
    rng = np.random.default_rng(0)
    next_q = rng.normal(size=(N, 2, B * K))
    rewards, dones = rng.normal(size=(N, B)), (rng.uniform(size=(N, B)) < 0.3).astype(np.float64)
    y = bcq_ft.soft_clipped_double_q_target(
        torch.tensor(next_q), torch.tensor(rewards), torch.tensor(dones), 0.9, 0.75, K
    ).numpy()
    for i in range(N):
        for b in range(B):
            best = -np.inf
            for j in range(K):  # candidate j of state b sits at b*K + j (repeat_interleave layout)
                q1, q2 = next_q[i, 0, b * K + j], next_q[i, 1, b * K + j]
                best = max(best, 0.75 * min(q1, q2) + 0.25 * max(q1, q2))
            assert y[i, b] == pytest.approx(rewards[i, b] + 0.9 * (1 - dones[i, b]) * best)


def test_critic_loss_uses_each_states_own_candidates():
    vae, actor, critic, critic_target = nets()
    with torch.no_grad():
        critic_target.net[-1].bias.add_(torch.randn_like(critic_target.net[-1].bias))
    obs, next_obs = torch.randn(N, B, S), torch.randn(N, B, S)
    actions, rewards = torch.rand(N, B, A) * 2 - 1, torch.randn(N, B)
    dones = torch.tensor([[0.0, 1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0, 0.0]])
    args = SimpleNamespace(n_action_samples=K, gamma=0.99, lmbda=0.75)
    torch.manual_seed(7)
    loss, _ = bcq_ft.bcq_critic_loss(vae, actor, critic, critic_target, (obs, actions, rewards, next_obs, dones), args)

    torch.manual_seed(7)
    z = torch.randn(N, B * K, 2 * A).clamp(-0.5, 0.5)  # the prior draw decode() makes
    expected = 0.0
    with torch.no_grad():
        for i in range(N):
            q_now = critic(obs, actions)[i]  # [2, B]
            for b in range(B):
                values = []
                for j in range(K):
                    s_next = next_obs[:, b : b + 1].expand(N, 1, S)  # run the state through every member...
                    a_vae = vae.decode(s_next, z[:, b * K + j : b * K + j + 1])
                    a_next = actor(s_next, a_vae)
                    q1, q2 = critic_target(s_next, a_next)[i, :, 0]  # ...and keep member i
                    values.append(0.75 * min(q1, q2) + 0.25 * max(q1, q2))
                y = rewards[i, b] + 0.99 * (1 - dones[i, b]) * max(values)
                expected += ((q_now[0, b] - y) ** 2 + (q_now[1, b] - y) ** 2).item() / B
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_vae_loss_matches_reconstruction_plus_half_kl():
    vae, *_ = nets()
    obs, actions = torch.randn(N, B, S), torch.rand(N, B, A) * 2 - 1
    torch.manual_seed(3)
    loss, recon, kl = bcq_ft.vae_loss_fn(vae, obs, actions, 0.5)
    torch.manual_seed(3)
    with torch.no_grad():
        mean, log_std = vae.encoder(torch.cat([obs, actions], -1)).chunk(2, -1)
        std = log_std.clamp(-4, 15).exp()
        z = mean + std * torch.randn_like(std)
        reconstruction = torch.tanh(vae.decoder(torch.cat([obs, z], -1)))
        kl_terms = torch.distributions.kl_divergence(
            torch.distributions.Normal(mean, std), torch.distributions.Normal(0.0, 1.0)
        )
    expected = sum(((reconstruction[i] - actions[i]) ** 2).mean() + 0.5 * kl_terms[i].mean() for i in range(N))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert kl.item() == pytest.approx(kl_terms.mean().item(), rel=1e-5)
    # the clipped prior: decoded latents never exceed 0.5
    torch.manual_seed(0)
    z_prior = torch.randn(N, 1000, 2 * A).clamp(-0.5, 0.5)
    torch.manual_seed(0)
    decoded = vae.decode(torch.zeros(N, 1000, S))
    assert torch.allclose(decoded, torch.tanh(vae.decoder(torch.cat([torch.zeros(N, 1000, S), z_prior], -1))))


def test_select_action_takes_best_pooled_candidate_by_mean_q1():
    vae, actor, critic, _ = nets()
    obs = torch.randn(3, S)
    torch.manual_seed(11)
    chosen = bcq_ft.bcq_select_action(vae, actor, critic, obs, K)
    torch.manual_seed(11)
    with torch.no_grad():
        obs_rep = obs.repeat_interleave(K, 0).unsqueeze(0).expand(N, -1, -1)
        candidates = actor(obs_rep, vae.decode(obs_rep))  # [N, 3K, A]
        for b in range(3):
            pool = [candidates[i, b * K + j] for i in range(N) for j in range(K)]
            scores = []
            for a in pool:
                q = critic(obs[b].expand(N, 1, S), a.expand(N, 1, A))  # every member scores the candidate
                scores.append(q[:, 0, 0].mean().item())  # mean over members of Q1
            assert torch.equal(chosen[b], pool[int(np.argmax(scores))])


@pytest.mark.slow
def test_tiny_offline_then_online_run_is_deterministic(run_script, tiny_hopper_dataset, tmp_path):
    runs = []
    for name in ("a", "b"):
        result = run_script(
            "bcq_ft.py",
            *TINY,
            "--dataset-path",
            tiny_hopper_dataset,
            "--offline-steps",
            "100",
            "--online-steps",
            "200",
            "--run-dir",
            f"runs/{name}",
            "--checkpoint",
            f"ck/{name}.pt",
        )
        assert result.returncode == 0, result.stderr[-2000:]
        runs.append(scalars(tmp_path / "runs" / name, sps=True))
    first, second = runs
    for tag in (
        "eval/normalized_score",
        "eval/return",
        "losses/critic_loss",
        "losses/actor_loss",
        "losses/vae_loss",
        "charts/SPS",
    ):
        assert tag in first, tag
    assert [s for s, _ in first["eval/return"]] == [0, 100, 200]
    assert [s for s, _ in first["losses/critic_loss"]] == [-50, 0, 50, 100, 150, 200]
    assert first["charts/buffer_size"][-1] == (200, 2000 + 200)
    for tag in first:
        if tag != "charts/SPS":
            assert first[tag] == second[tag], tag
    ckpt = torch.load(tmp_path / "ck" / "a.pt", weights_only=True)
    assert ckpt["format"] == "o2o-ensemble-v1" and ckpt["algo"] == "bcq" and ckpt["step"] == 300
    assert ckpt["n_ensemble"] == 2 and ckpt["hidden_sizes"] == [16, 16] and ckpt["latent_dim"] == 6
    bcq_ft.EnsembleCritic(11, 3, [16, 16], 2).load_state_dict(ckpt["critic"], strict=True)
    bcq_ft.EnsembleVAE(11, 3, 6, [16, 16], 2).load_state_dict(ckpt["vae"], strict=True)


def _bad_file(kind, tmp_path):
    path = tmp_path / f"{kind}.hdf5"
    m = 50
    obs_dim = 5 if kind == "dims" else 11
    actions = np.zeros((m, 3))
    if kind == "nan":
        actions[3, 1] = np.inf
    write_d4rl_file(path, np.zeros((m, obs_dim)), actions, np.zeros(m), np.zeros(m), np.zeros(m), np.zeros((m, obs_dim)))
    return path


@pytest.mark.parametrize(
    "kind, message", [("missing", "does not exist"), ("dims", "dims 5/3"), ("nan", "'actions' contains NaN or inf")]
)
@pytest.mark.slow
def test_data_path_errors(kind, message, run_script, tmp_path):
    path = tmp_path / "nowhere.hdf5" if kind == "missing" else _bad_file(kind, tmp_path)
    result = run_script("bcq_ft.py", *TINY, "--dataset-path", path, "--offline-steps", "10", "--online-steps", "0")
    assert result.returncode != 0
    assert message in result.stderr and "error:" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_sigkill_then_resume(tiny_hopper_dataset, tmp_path):
    args = [
        *TINY,
        "--dataset-path",
        str(tiny_hopper_dataset),
        "--offline-steps",
        "100",
        "--online-steps",
        "1200",
        "--checkpoint-every",
        "100",
        "--eval-every",
        "10000",
        "--checkpoint",
        "ck/run.pt",
        "--run-dir",
        "runs/r",
    ]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, str(REPO_ROOT / "bcq_ft.py"), *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_path = tmp_path / "ck" / "run.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt_path.exists():
            try:
                step = torch.load(ckpt_path, weights_only=True)["step"]
            except Exception:  # replaced while reading
                step = 0
            if step >= 400:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    before = torch.load(ckpt_path, weights_only=True)
    killed_at = before["step"]
    assert 400 <= killed_at < 1300
    online_before = before["resume"]["online_transitions"]
    assert len(online_before["observations"]) == killed_at - 100

    result = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    after = torch.load(ckpt_path, weights_only=True)
    assert after["step"] == 1300
    online = after["resume"]["online_transitions"]
    assert len(online["observations"]) == 1200
    for key in online:
        np.testing.assert_array_equal(online[key][: killed_at - 100], online_before[key])
    assert len(np.unique(online["observations"], axis=0)) == 1200
    steps = [s for s, _ in scalars(tmp_path / "runs" / "r")["losses/critic_loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == 1200

    # resuming the same checkpoint with another ensemble size is a clear error, not a traceback
    other_n = [arg if arg != "2" else "3" for arg in cmd]  # "--n-ensemble 2" is the only "2" in cmd
    result = subprocess.run(other_n + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "n_ensemble=2" in result.stderr and "Traceback" not in result.stderr
