"""cql_pretrain.py: eq. (3) against a plain per-state computation, member independence, the D4RL loader and its
errors, checkpoints, determinism, and resume after a real SIGKILL."""

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, load_script, scalars, write_d4rl_file

cql = load_script("cql_pretrain")


def random_batch(n_ensemble, batch_size, obs_dim, act_dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(n_ensemble, batch_size, obs_dim, generator=g),
        "actions": torch.rand(n_ensemble, batch_size, act_dim, generator=g) * 2 - 1,
        "rewards": torch.randn(n_ensemble, batch_size, generator=g),
        "next_observations": torch.randn(n_ensemble, batch_size, obs_dim, generator=g),
        "terminals": (torch.rand(n_ensemble, batch_size, generator=g) < 0.3).float(),
    }


def plain_q(critic, row, obs, act):
    """Row `row` of a vectorized critic as an ordinary MLP on one (s, a) pair: a Python float."""
    x = torch.cat([obs, act])
    layers = [m for m in critic.net if isinstance(m, cql.VectorizedLinear)]
    for k, layer in enumerate(layers):
        x = x @ layer.weight[row] + layer.bias[row, 0]
        if k < len(layers) - 1:
            x = torch.relu(x)
    return float(x.detach())


def test_critic_loss_matches_unvectorized_eq3():
    torch.manual_seed(0)
    obs_dim, act_dim, batch_size, n_actions, gamma, alpha_cql = 3, 2, 4, 3, 0.9, 5.0
    actor = cql.EnsembleActor(obs_dim, act_dim, [8, 8], 1)
    critic = cql.EnsembleCritic(obs_dim, act_dim, [8, 8], 1)
    target = cql.EnsembleCritic(obs_dim, act_dim, [8, 8], 1)  # different weights from critic on purpose
    batch = random_batch(1, batch_size, obs_dim, act_dim)
    mean, log_std = actor(torch.cat([batch["observations"], batch["next_observations"]], 1))
    samples = cql.sample_cql_actions(mean, log_std, n_actions)
    loss, info = cql.cql_critic_loss(critic, target, batch, samples, gamma, alpha_cql)

    expected = 0.0
    log_uniform = act_dim * math.log(0.5)
    for twin in range(2):
        lse, q_data, sq_err = [], [], []
        for b in range(batch_size):
            s, a = batch["observations"][0, b], batch["actions"][0, b]
            s_next, a_next = batch["next_observations"][0, b], samples["target_actions"][0, b]
            y = float(batch["rewards"][0, b]) + gamma * (1 - float(batch["terminals"][0, b])) * min(
                plain_q(target, 0, s_next, a_next), plain_q(target, 1, s_next, a_next)
            )
            values = []
            for k in range(n_actions):
                j = b * n_actions + k
                values.append(plain_q(critic, twin, s, samples["random_actions"][0, j]) - log_uniform)
                values.append(plain_q(critic, twin, s, samples["pi_actions"][0, j]) - float(samples["pi_log_probs"][0, j]))
                next_q = plain_q(critic, twin, s, samples["next_pi_actions"][0, j])
                values.append(next_q - float(samples["next_pi_log_probs"][0, j]))
            assert len(values) == 3 * n_actions
            top = max(values)
            lse.append(top + math.log(sum(math.exp(v - top) for v in values)))
            q_data.append(plain_q(critic, twin, s, a))
            sq_err.append((q_data[-1] - y) ** 2)
        expected += alpha_cql * (np.mean(lse) - np.mean(q_data)) + np.mean(sq_err)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5, abs=1e-5)
    # the sampled actions come from the right distributions
    assert samples["random_actions"].abs().max() <= 1
    assert samples["random_actions"].shape == (1, batch_size * n_actions, act_dim)
    assert not samples["pi_actions"].requires_grad


def test_bc_log_prob_matches_sample_log_prob():
    torch.manual_seed(1)
    mean, log_std = torch.randn(2, 5, 3), torch.randn(2, 5, 3) * 0.3
    action, log_prob = cql.tanh_gaussian_sample(mean, log_std)
    assert torch.allclose(cql.tanh_gaussian_log_prob(mean, log_std, action), log_prob, atol=1e-3)


def test_members_have_own_weights_and_own_minibatches():
    torch.manual_seed(0)
    obs_dim, act_dim, n_actions = 3, 2, 2
    actor = cql.EnsembleActor(obs_dim, act_dim, [8, 8], 2)
    critic = cql.EnsembleCritic(obs_dim, act_dim, [8, 8], 2)
    for net in (actor, critic):
        for p in net.parameters():
            assert not torch.allclose(p[0], p[-1])  # members (and twins) initialised independently
    data = {k: v[0] for k, v in random_batch(1, 1000, obs_dim, act_dim).items()}
    batch = cql.sample_batch(data, np.random.default_rng(0), 2, 64)
    assert batch["observations"].shape == (2, 64, obs_dim)
    assert not torch.equal(batch["observations"][0], batch["observations"][1])

    # member 0's loss and gradient do not depend on member 1's minibatch, and equal a 1-member critic holding
    # member 0's weights (critic rows [:2]: the slicing convention of the checkpoint format)
    target = cql.EnsembleCritic(obs_dim, act_dim, [8, 8], 2)
    mean, log_std = actor(torch.cat([batch["observations"], batch["next_observations"]], 1))
    samples = cql.sample_cql_actions(mean, log_std, n_actions)

    def member0(batch_):
        critic.zero_grad()
        _, info = cql.cql_critic_loss(critic, target, batch_, samples, 0.99, 5.0)
        (info["bellman"] + info["cql"])[0].sum().backward()
        return float((info["bellman"] + info["cql"])[0].sum().detach()), [p.grad[:2].clone() for p in critic.parameters()]

    loss_a, grads_a = member0(batch)
    other = {k: v.clone() for k, v in batch.items()}
    other["observations"][1] += 1.0
    other["rewards"][1] -= 3.0
    loss_b, grads_b = member0(other)
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert all(torch.allclose(a, b) for a, b in zip(grads_a, grads_b))

    single, single_target = cql.EnsembleCritic(obs_dim, act_dim, [8, 8], 1), cql.EnsembleCritic(obs_dim, act_dim, [8, 8], 1)
    single.load_state_dict({k: v[:2] for k, v in critic.state_dict().items()}, strict=True)
    single_target.load_state_dict({k: v[:2] for k, v in target.state_dict().items()}, strict=True)
    single_loss, _ = cql.cql_critic_loss(
        single, single_target, {k: v[:1] for k, v in batch.items()}, {k: v[:1] for k, v in samples.items()}, 0.99, 5.0
    )
    assert float(single_loss) == pytest.approx(loss_a, rel=1e-5)


def test_update_moves_every_member():
    torch.manual_seed(0)
    obs_dim, act_dim, n = 3, 2, 2
    actor, critic = cql.EnsembleActor(obs_dim, act_dim, [8, 8], n), cql.EnsembleCritic(obs_dim, act_dim, [8, 8], n)
    target = cql.EnsembleCritic(obs_dim, act_dim, [8, 8], n)
    target.load_state_dict(critic.state_dict())
    log_alpha = torch.zeros(n, requires_grad=True)
    opts = [
        torch.optim.Adam(actor.parameters(), 1e-3),
        torch.optim.Adam(critic.parameters(), 1e-3),
        torch.optim.Adam([log_alpha], 1e-3),
    ]
    before = [p.detach().clone() for p in [*actor.parameters(), *critic.parameters()]]
    batch = random_batch(n, 16, obs_dim, act_dim)
    info = cql.cql_update(actor, critic, target, log_alpha, *opts, batch, 0.99, 5e-3, 5.0, 3, -2.0)
    after = [*actor.parameters(), *critic.parameters()]
    for b, a in zip(before, after):
        assert all(not torch.equal(b[i], a[i]) for i in range(a.shape[0]))
    assert set(info) >= {"losses/qf", "losses/cql", "losses/actor", "charts/alpha", "charts/q_data"}
    assert not torch.equal(log_alpha.detach(), torch.zeros(n))


def test_ensemble_moments_eq5():
    mu, std = torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [1.0]])
    mean, sd = cql.ensemble_moments(mu, std)
    assert float(mean) == pytest.approx(1.0) and float(sd) == pytest.approx(math.sqrt(2.0))  # (1+0+1+4)/2 - 1 = 2


# ---- D4RL loader ----
def test_loader_v2_keeps_every_row_and_timeouts_non_terminal(tmp_path):
    obs = np.arange(12, dtype=np.float32).reshape(6, 2)
    next_obs = obs + 100
    terminals, timeouts = [0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0]
    path = write_d4rl_file(tmp_path / "v2.hdf5", obs, np.full((6, 1), 0.5), np.arange(6), terminals, timeouts, next_obs)
    data = cql.load_d4rl_dataset("Hopper-v4", str(path))
    np.testing.assert_array_equal(data["observations"], obs)
    np.testing.assert_array_equal(data["next_observations"], next_obs)
    np.testing.assert_array_equal(data["rewards"], np.arange(6, dtype=np.float32))
    np.testing.assert_array_equal(data["terminals"], np.array(terminals, dtype=np.float32))
    assert data["rewards"].dtype == np.float32 and data["terminals"].dtype == np.float32 and data["rewards"].shape == (6,)


def test_loader_v0_uses_next_row_and_drops_episode_ends(tmp_path):
    obs = np.arange(16, dtype=np.float32).reshape(8, 2)
    # episode 1: rows 0-3, ends terminal at row 3; episode 2: rows 4-7, times out at row 6; row 7 starts episode 3
    terminals, timeouts = [0, 0, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1, 0]
    path = write_d4rl_file(tmp_path / "v0.hdf5", obs, np.zeros((8, 1)), np.arange(8), terminals, timeouts)
    data = cql.load_d4rl_dataset("Hopper-v4", str(path))
    kept = [0, 1, 2, 3, 4, 5]  # row 6 (timeout) and row 7 (file end) dropped
    np.testing.assert_array_equal(data["observations"], obs[kept])
    np.testing.assert_array_equal(data["next_observations"], obs[[k + 1 for k in kept]])
    np.testing.assert_array_equal(data["rewards"], np.array(kept, dtype=np.float32))
    np.testing.assert_array_equal(data["terminals"], np.array([0, 0, 0, 1, 0, 0], dtype=np.float32))

    # no timeouts key: an episode times out at its 1000th step, counted from the last terminal
    n = 2300
    terminals = np.zeros(n, dtype=bool)
    terminals[99] = True  # episode 0: rows 0-99; then 1000-step episodes at rows 100-1099, 1100-2099, 2100-...
    path = write_d4rl_file(tmp_path / "v0_no_timeouts.hdf5", np.arange(n)[:, None], np.zeros((n, 1)), np.arange(n), terminals)
    data = cql.load_d4rl_dataset("Hopper-v4", str(path))
    dropped = {1099, 2099, n - 1}
    np.testing.assert_array_equal(data["rewards"], np.array([i for i in range(n) if i not in dropped], dtype=np.float32))
    np.testing.assert_array_equal(data["next_observations"][:, 0], data["rewards"] + 1)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_key", "no 'actions' key"),
        ("lengths", "'rewards' has 3 rows but 'observations' has 4"),
        ("nan", "'rewards' contains NaN or inf"),
        ("not_hdf5", "not a readable HDF5 file"),
        ("no_file", "does not exist"),
    ],
)
def test_loader_errors(tmp_path, case, message):
    path = tmp_path / f"{case}.hdf5"
    obs, act, rew, term = np.zeros((4, 2)), np.zeros((4, 1)), np.zeros(4), np.zeros(4)
    if case == "missing_key":
        import h5py

        with h5py.File(path, "w") as f:
            f["observations"], f["rewards"], f["terminals"] = obs, rew, term
    elif case == "lengths":
        write_d4rl_file(path, obs, act, rew[:3], term)
    elif case == "nan":
        write_d4rl_file(path, obs, act, np.array([0, np.nan, 0, 0]), term)
    elif case == "not_hdf5":
        path.write_text("this is not an HDF5 file\n")
    with pytest.raises(SystemExit, match=message):
        cql.load_d4rl_dataset("Hopper-v4", str(path))


def assert_clean_error(proc, *fragments):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


@pytest.mark.slow
def test_d4rl_name_without_cache_or_network(run_script, tmp_path):
    # a proxy that refuses connections makes the download fail fast (and never downloads 100s of MB in CI)
    proxy = {"http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    proc = run_script("cql_pretrain.py", "--env-id", "hopper-medium-v2", "--offline-steps", "1", env_vars=proxy)
    url = "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/hopper_medium-v2.hdf5"
    assert_clean_error(proc, str(tmp_path / "d4rl_cache" / "hopper_medium-v2.hdf5"), url, "--dataset-path")


@pytest.mark.slow
def test_dataset_dims_must_match_env(run_script, tmp_path):
    path = write_d4rl_file(tmp_path / "small.hdf5", np.zeros((10, 5)), np.zeros((10, 3)), np.zeros(10), np.zeros(10))
    proc = run_script("cql_pretrain.py", "--env-id", "Hopper-v4", "--dataset-path", path, "--offline-steps", "1")
    assert_clean_error(proc, "observation/action dims 5/3", "11/3")


@pytest.mark.slow
def test_unwritable_checkpoint_fails_at_startup(run_script, tmp_path, tiny_hopper_dataset):
    (tmp_path / "a_file").write_text("x")
    proc = run_script(
        "cql_pretrain.py",
        "--env-id",
        "Hopper-v4",
        "--dataset-path",
        tiny_hopper_dataset,
        "--checkpoint",
        tmp_path / "a_file" / "cql.pt",
    )
    assert_clean_error(proc, "cannot write checkpoint")


# ---- runs: checkpoint, determinism, NaN, SIGKILL + resume ----
TINY = [
    "--env-id",
    "Hopper-v4",
    "--n-ensemble",
    "2",
    "--hidden-dim",
    "32",
    "--batch-size",
    "32",
    "--offline-steps",
    "600",
    "--log-every",
    "50",
    "--eval-every",
    "300",
    "--eval-episodes",
    "2",
    "--checkpoint-every",
    "150",
    "--seed",
    "3",
]


def script_command(*args):
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    return [sys.executable, str(REPO_ROOT / "cql_pretrain.py"), *map(str, args)], env


def run_cql(cwd, *args):
    cmd, env = script_command(*args)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_hopper_dataset):
    """Run A and B: same seed, uninterrupted. Run C: SIGKILLed after its first periodic checkpoint, then resumed."""
    root = tmp_path_factory.mktemp("cql_runs")
    side_by_side = []  # A and B run beside C's first part (one thread each)
    for name in ("a", "b"):
        cmd, env = script_command(
            *TINY, "--dataset-path", tiny_hopper_dataset, "--run-dir", f"runs/{name}", "--checkpoint", f"{name}.pt"
        )
        side_by_side.append(
            subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        )

    cmd, env = script_command(*TINY, "--dataset-path", tiny_hopper_dataset, "--run-dir", "runs/c", "--checkpoint", "c.pt")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (root / "c.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for uninterrupted in side_by_side:
        _, stderr = uninterrupted.communicate(timeout=300)
        assert uninterrupted.returncode == 0, stderr[-3000:]
    killed_at = torch.load(root / "c.pt", weights_only=True)["step"]
    resumed = run_cql(root, *TINY, "--dataset-path", tiny_hopper_dataset, "--checkpoint", "c.pt", "--resume")
    return root, killed_at, resumed


@pytest.mark.slow
def test_checkpoint_has_spec_fields_and_loads_strict(runs):
    root = runs[0]
    ckpt = torch.load(root / "a.pt", weights_only=True)
    for key in (
        "format",
        "algo",
        "env_id",
        "obs_dim",
        "act_dim",
        "n_ensemble",
        "hidden_sizes",
        "actor",
        "critic",
        "step",
        "args",
        "resume",
    ):
        assert key in ckpt
    assert (ckpt["format"], ckpt["algo"], ckpt["env_id"]) == ("o2o-ensemble-v1", "cql", "Hopper-v4")
    dims = (ckpt["obs_dim"], ckpt["act_dim"], ckpt["n_ensemble"], ckpt["hidden_sizes"], ckpt["step"])
    assert dims == (11, 3, 2, [32, 32], 600)
    assert ckpt["args"]["n_ensemble"] == 2
    actor, critic = cql.EnsembleActor(11, 3, [32, 32], 2), cql.EnsembleCritic(11, 3, [32, 32], 2)
    actor.load_state_dict(ckpt["actor"], strict=True)
    critic.load_state_dict(ckpt["critic"], strict=True)
    for key in (
        "critic_target",
        "actor_optimizer",
        "critic_optimizer",
        "alpha_optimizer",
        "log_alpha",
        "rng",
        "step",
        "run_dir",
    ):
        assert key in ckpt["resume"]
    assert set(ckpt["resume"]["rng"]) == {"torch", "cuda", "numpy", "python"}  # resume_state: every RNG
    one = cql.EnsembleCritic(11, 3, [32, 32], 1)  # the first n members: critic rows [:2n]
    one.load_state_dict({k: v[:2] for k, v in ckpt["critic"].items()}, strict=True)


@pytest.mark.slow
def test_logged_tags(runs):
    logged = scalars(runs[0] / "runs" / "a")
    for tag in (
        "eval/normalized_score",
        "eval/return",
        "eval/member_0_normalized_score",
        "eval/member_1_normalized_score",
        "losses/qf",
        "losses/cql",
        "losses/actor",
        "charts/alpha",
        "charts/q_data",
    ):
        assert tag in logged
    assert [s for s, _ in logged["eval/return"]] == [300, 600]
    assert [s for s, _ in logged["losses/qf"]] == list(range(50, 601, 50))


@pytest.mark.slow
def test_same_seed_same_logged_values(runs):
    root = runs[0]
    a, b = scalars(root / "runs" / "a"), scalars(root / "runs" / "b")
    assert a == b and len(a) >= 10


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(runs):
    root, killed_at, resumed = runs
    assert 150 <= killed_at < 600  # really killed mid-way, after a periodic checkpoint
    assert f"at step {killed_at}" in resumed.stdout
    assert torch.load(root / "c.pt", weights_only=True)["step"] == 600
    assert scalars(root / "runs" / "c") == scalars(root / "runs" / "a")  # curves continue, nothing lost or doubled


@pytest.mark.slow
def test_resume_with_other_n_is_an_error(runs, tiny_hopper_dataset):
    root = runs[0]
    cmd, env = script_command(
        *TINY, "--dataset-path", tiny_hopper_dataset, "--checkpoint", "a.pt", "--resume", "--n-ensemble", "3"
    )
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert_clean_error(proc, "n_ensemble=2", "n_ensemble=3")


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_checkpoint(runs, tmp_path):
    root = runs[0]
    huge = write_d4rl_file(tmp_path / "huge.hdf5", np.zeros((50, 11)), np.zeros((50, 3)), np.full(50, 3e38), np.zeros(50))
    good = (root / "a.pt").read_bytes()
    (tmp_path / "keep.pt").write_bytes(good)
    cmd, env = script_command(
        "--env-id",
        "Hopper-v4",
        "--dataset-path",
        huge,
        "--n-ensemble",
        "2",
        "--hidden-dim",
        "16",
        "--batch-size",
        "8",
        "--offline-steps",
        "100",
        "--log-every",
        "5",
        "--checkpoint",
        "keep.pt",
    )
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert_clean_error(proc, "losses/qf = ", "at step 5", "keep.pt")
    assert (tmp_path / "keep.pt").read_bytes() == good


@pytest.mark.slow
def test_bc_warmup_clones_the_data_actions():
    torch.manual_seed(0)
    obs_dim, act_dim, n = 3, 2, 2
    actor, critic = cql.EnsembleActor(obs_dim, act_dim, [16, 16], n), cql.EnsembleCritic(obs_dim, act_dim, [16, 16], n)
    target = cql.EnsembleCritic(obs_dim, act_dim, [16, 16], n)
    log_alpha = torch.full((n,), -5.0, requires_grad=True)  # small alpha: the clone is sharp
    opts = [
        torch.optim.Adam(actor.parameters(), 1e-2),
        torch.optim.Adam(critic.parameters(), 1e-3),
        torch.optim.Adam([log_alpha], 0.0),
    ]
    batch = random_batch(n, 32, obs_dim, act_dim)
    batch["actions"] = torch.tensor([0.5, -0.3]).expand(n, 32, act_dim).clone()
    for _ in range(300):
        cql.cql_update(actor, critic, target, log_alpha, *opts, batch, 0.99, 5e-3, 5.0, 2, -2.0, bc=True)
    with torch.no_grad():
        mean, _ = actor(batch["observations"])
    error = (torch.tanh(mean) - batch["actions"]).abs()
    assert float(error.mean()) < 0.03 and float(error.max()) < 0.1
