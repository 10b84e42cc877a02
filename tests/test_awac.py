"""awac.py: the actor loss against an independent computation (cap included), eq. 5 moments, a tiny
offline-then-online run with N=2, data-path errors, SIGKILL + --resume, and same-seed determinism."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, load_script, scalars, write_d4rl_file

awac = load_script("awac")

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


def independent_actor_loss(mean, log_std, eps, q_data, critic_pi, actions, lam, cap):
    """AWAC's actor loss in float64 numpy from the actor's outputs, written without awac.py's helpers."""
    mean, std = mean.double().numpy(), log_std.exp().double().numpy()
    clip = np.float32(1 - 1e-6)
    a = np.clip(actions.numpy(), -clip, clip).astype(np.float64)
    u = np.arctanh(a)
    log_prob = (-0.5 * ((u - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi) - np.log(1 - a**2)).sum(-1)
    advantage = q_data.double().numpy() - critic_pi.double().numpy()
    weights = np.minimum(np.exp(advantage / lam), cap)
    return -(log_prob * weights).mean(-1).sum(), weights


def test_actor_loss_matches_formula_and_cap_binds():
    torch.manual_seed(0)
    n, b, obs_dim, act_dim = 2, 64, 5, 3
    actor = awac.EnsembleActor(obs_dim, act_dim, [16, 16], n)
    critic = awac.EnsembleCritic(obs_dim, act_dim, [16, 16], n)
    with torch.no_grad():  # a steep critic so advantages spread widely
        critic.net[-1].weight.mul_(30.0)
    obs = torch.randn(n, b, obs_dim)
    actions = torch.rand(n, b, act_dim) * 2 - 1
    actions[0, 0] = 1.0  # exactly on the boundary: must be clipped before atanh
    actions[1, 1, 0] = -1.0

    def reference(lam):
        torch.manual_seed(123)
        with torch.no_grad():
            mean, log_std = actor(obs)
            eps = torch.randn_like(mean)  # the one draw awac_actor_loss makes for a_pi ~ pi(.|s)
            a_pi = torch.tanh(mean + log_std.exp() * eps)
            v = critic(obs, a_pi).min(dim=1).values
            q = critic(obs, actions).min(dim=1).values
        return independent_actor_loss(mean, log_std, eps, q, v, actions, lam, 100.0)

    _, raw = reference(1.0)
    advantage = np.log(raw)  # lam = 1: log of the uncapped weights where < 100
    positive = advantage[advantage > 0]
    lam = float(np.median(positive)) / np.log(100.0)  # about half of the positive advantages hit the cap
    expected_loss, expected_weights = reference(lam)
    assert (expected_weights == 100.0).mean() > 0.1 and (expected_weights < 100.0).mean() > 0.3

    torch.manual_seed(123)
    loss, weights = awac.awac_actor_loss(actor, critic, obs, actions, lam, 100.0)
    assert np.isfinite(loss.item())
    np.testing.assert_allclose(weights.numpy(), expected_weights, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(loss.item(), expected_loss, rtol=2e-4)
    # the weights carry no gradient: the actor's gradient is that of the weighted log-likelihood only
    loss.backward()
    assert all(p.grad is not None for p in actor.parameters())
    assert all(p.grad is None for p in critic.parameters())


def test_log_prob_of_boundary_action_is_finite_and_tanh_gaussian():
    mean, log_std = torch.zeros(1, 1, 2), torch.zeros(1, 1, 2)
    a = torch.tensor([[[0.3, 1.0]]])
    lp = awac.tanh_gaussian_log_prob(mean, log_std, a)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean.double(), log_std.exp().double()), [torch.distributions.TanhTransform()]
    )
    a_clipped = a.clamp(-np.float32(1 - 1e-6), np.float32(1 - 1e-6)).double()
    np.testing.assert_allclose(lp.item(), dist.log_prob(a_clipped).sum().item(), rtol=1e-4)


def test_ensemble_moments_eq5():
    rng = np.random.default_rng(0)
    mu_i, std_i = rng.normal(size=(4, 3, 2)), rng.uniform(0.1, 2.0, size=(4, 3, 2))
    mu, std = awac.ensemble_moments(torch.tensor(mu_i), torch.tensor(std_i))
    np.testing.assert_allclose(mu.numpy(), mu_i.mean(0))
    np.testing.assert_allclose(std.numpy() ** 2, (std_i**2 + mu_i**2).mean(0) - mu_i.mean(0) ** 2, rtol=1e-6)
    mu1, std1 = awac.ensemble_moments(torch.tensor(mu_i[:1]), torch.tensor(std_i[:1]))
    np.testing.assert_allclose(std1.numpy(), std_i[0], rtol=1e-6)


@pytest.mark.slow
def test_tiny_offline_then_online_run_is_deterministic(run_script, tiny_hopper_dataset, tmp_path):
    runs = []
    for name in ("a", "b"):
        result = run_script(
            "awac.py",
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
        "losses/adv_weight_mean",
        "charts/SPS",
    ):
        assert tag in first, tag
    # x-axis: offline steps negative, x = 0 is the end of the offline phase, online up to 200
    assert [s for s, _ in first["eval/return"]] == [0, 100, 200]
    assert [s for s, _ in first["losses/critic_loss"]] == [-50, 0, 50, 100, 150, 200]
    assert first["charts/buffer_size"][-1] == (200, 2000 + 200)
    for tag in first:
        if tag != "charts/SPS":
            assert first[tag] == second[tag], tag
    ckpt = torch.load(tmp_path / "ck" / "a.pt", weights_only=True)
    assert ckpt["format"] == "o2o-ensemble-v1" and ckpt["algo"] == "awac" and ckpt["step"] == 300
    assert ckpt["n_ensemble"] == 2 and ckpt["hidden_sizes"] == [16, 16]
    actor = awac.EnsembleActor(11, 3, [16, 16], 2)
    actor.load_state_dict(ckpt["actor"], strict=True)


def _bad_file(kind, tmp_path):
    path = tmp_path / f"{kind}.hdf5"
    m = 50
    obs_dim = 5 if kind == "dims" else 11
    rewards = np.zeros(m)
    if kind == "nan":
        rewards[7] = np.nan
    write_d4rl_file(path, np.zeros((m, obs_dim)), np.zeros((m, 3)), rewards, np.zeros(m), np.zeros(m), np.zeros((m, obs_dim)))
    return path


@pytest.mark.parametrize(
    "kind, message", [("missing", "does not exist"), ("dims", "dims 5/3"), ("nan", "'rewards' contains NaN")]
)
@pytest.mark.slow
def test_data_path_errors(kind, message, run_script, tmp_path):
    path = tmp_path / "nowhere.hdf5" if kind == "missing" else _bad_file(kind, tmp_path)
    result = run_script("awac.py", *TINY, "--dataset-path", path, "--offline-steps", "10", "--online-steps", "0")
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
        "1500",
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
    cmd = [sys.executable, str(REPO_ROOT / "awac.py"), *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_path, killed_at = tmp_path / "ck" / "run.pt", None
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
    assert 400 <= killed_at < 1600
    online_before = before["resume"]["online_transitions"]
    assert len(online_before["observations"]) == killed_at - 100

    result = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    after = torch.load(ckpt_path, weights_only=True)
    assert after["step"] == 1600
    online = after["resume"]["online_transitions"]
    assert len(online["observations"]) == 1500  # dataset + 1500 online transitions, none lost or repeated
    for key in online:
        np.testing.assert_array_equal(online[key][: killed_at - 100], online_before[key])
    assert len(np.unique(online["observations"], axis=0)) == 1500
    logged = scalars(tmp_path / "runs" / "r")
    steps = [s for s, _ in logged["losses/critic_loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == 1500  # curves continue, no duplicated points


@pytest.mark.slow
def test_inf_loss_stops_with_named_loss_and_step(run_script, tiny_hopper_dataset, tmp_path):
    import h5py

    with h5py.File(tiny_hopper_dataset) as f:
        data = {key: f[key][()] for key in f}
    data["rewards"] = np.full_like(data["rewards"], 1e30)  # finite data, but the squared TD error overflows
    path = write_d4rl_file(tmp_path / "huge.hdf5", **data)
    result = run_script(
        "awac.py",
        *TINY,
        "--dataset-path",
        path,
        "--offline-steps",
        "100",
        "--online-steps",
        "0",
        "--log-every",
        "20",
        "--checkpoint-every",
        "10",
        "--checkpoint",
        "ck/x.pt",
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "losses/critic_loss is inf at step -90" in result.stderr  # first check: the checkpoint at step 10
    assert not (tmp_path / "ck" / "x.pt").exists()  # a diverged state is never written


@pytest.mark.slow
def test_unwritable_checkpoint_path_fails_at_startup(run_script, tiny_hopper_dataset, tmp_path):
    (tmp_path / "afile").write_text("")
    result = run_script(
        "awac.py",
        *TINY,
        "--dataset-path",
        tiny_hopper_dataset,
        "--offline-steps",
        "10",
        "--online-steps",
        "0",
        "--checkpoint",
        tmp_path / "afile" / "ck.pt",
    )
    assert result.returncode != 0 and "cannot write checkpoint" in result.stderr
    assert "Traceback" not in result.stderr
