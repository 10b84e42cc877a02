"""fqe.py: convergence to closed-form values, the TD target, bad policy checkpoints, and resume after SIGKILL."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, load_script, run_main, scalars, write_d4rl_file

fqe = load_script("fqe")


OBS_DIM, ACT_DIM = 11, 3  # Hopper-v4


def write_policy(path, n_ensemble=2, hidden=16, env_id="Hopper-v4", obs_dim=OBS_DIM, act_dim=ACT_DIM, algo="cql"):
    """A checkpoint (CONTRIBUTING.md: Contracts) holding a random ensemble policy, written without running cql_pretrain.py."""
    torch.manual_seed(0)
    actor = fqe.EnsembleActor(obs_dim, act_dim, [hidden, hidden], n_ensemble)
    critic = fqe.EnsembleCritic(obs_dim, act_dim, [hidden, hidden], n_ensemble)
    torch.save(
        {
            "format": fqe.CHECKPOINT_FORMAT,
            "algo": algo,
            "env_id": env_id,
            "obs_dim": obs_dim,
            "act_dim": act_dim,
            "n_ensemble": n_ensemble,
            "hidden_sizes": [hidden, hidden],
            "actor": actor.state_dict(),
            "critic": critic.state_dict(),
            "step": 0,
            "args": {},
        },
        path,
    )
    return path


def constant_reward_dataset(path, terminal: bool, rows=400, seed=0):
    """Random states and actions, reward 1 everywhere; every transition terminal, or none (and no timeouts)."""
    rng = np.random.default_rng(seed)
    return write_d4rl_file(
        path,
        rng.normal(size=(rows, OBS_DIM)),
        rng.uniform(-1, 1, size=(rows, ACT_DIM)),
        np.ones(rows),
        np.full(rows, terminal),
        np.zeros(rows, dtype=bool),
        rng.normal(size=(rows, OBS_DIM)),
    )


def critic_values(ckpt_path, dataset_path):
    """Q of every member and twin at the dataset's (s, a) and at (s, uniform random a)."""
    ckpt = torch.load(ckpt_path, weights_only=True)
    critic = fqe.EnsembleCritic(OBS_DIM, ACT_DIM, ckpt["hidden_sizes"], ckpt["n_ensemble"])
    critic.load_state_dict(ckpt["critic"], strict=True)
    data = fqe.load_d4rl_dataset("Hopper-v4", str(dataset_path))
    obs = torch.as_tensor(data["observations"]).expand(ckpt["n_ensemble"], -1, -1)
    acts = torch.as_tensor(data["actions"]).expand(ckpt["n_ensemble"], -1, -1)
    with torch.no_grad():
        return torch.cat([critic(obs, acts).flatten(), critic(obs, torch.rand_like(acts) * 2 - 1).flatten()])


# stated tolerances, over every member, twin, dataset (s, a) and (s, random a): the mean within 3% of the value,
# the mean absolute error within 5% and the largest error within 20% (SGD noise at lr 1e-3)
@pytest.mark.parametrize(
    "terminal, gamma, expected, extra",
    [
        (True, 0.99, 1.0, []),  # reward 1, every transition terminal: Q = 1
        (False, 0.5, 2.0, ["--tau", "0.05"]),  # reward 1 forever, gamma 0.5: Q = 1 / (1 - 0.5) = 2
    ],
)
@pytest.mark.slow
def test_converges_to_closed_form_value(run_script, tmp_path, terminal, gamma, expected, extra):
    dataset = constant_reward_dataset(tmp_path / "data.hdf5", terminal)
    policy = write_policy(tmp_path / "policy.pt")
    proc = run_script(
        "fqe.py",
        "--env-id",
        "Hopper-v4",
        "--dataset-path",
        dataset,
        "--policy-checkpoint",
        policy,
        "--steps",
        "1500",
        "--batch-size",
        "64",
        "--hidden-dim",
        "32",
        "--lr",
        "1e-3",
        "--gamma",
        gamma,
        "--eval-every",
        "1500",
        "--eval-episodes",
        "1",
        "--log-every",
        "500",
        *extra,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    q = critic_values(tmp_path / "checkpoints" / "fqe_Hopper-v4_seed1.pt", dataset)
    assert abs(float(q.mean()) - expected) < 0.03 * expected, float(q.mean())
    assert float((q - expected).abs().mean()) < 0.05 * expected, float((q - expected).abs().mean())
    assert float((q - expected).abs().max()) < 0.20 * expected, float((q - expected).abs().max())


def test_td_target_per_twin_without_min_or_entropy():
    torch.manual_seed(0)
    critic, target = fqe.EnsembleCritic(3, 2, [8, 8], 2), fqe.EnsembleCritic(3, 2, [8, 8], 2)
    batch = {
        "observations": torch.randn(2, 5, 3),
        "actions": torch.rand(2, 5, 2) * 2 - 1,
        "rewards": torch.randn(2, 5),
        "next_observations": torch.randn(2, 5, 3),
        "terminals": torch.tensor([[0, 1, 0, 0, 1]] * 2).float(),
    }
    next_actions = torch.rand(2, 5, 2) * 2 - 1
    loss, info = fqe.fqe_loss(critic, target, batch, next_actions, 0.9)
    with torch.no_grad():
        q_next = target(batch["next_observations"], next_actions)
        q = critic(batch["observations"], batch["actions"])
    expected = 0.0
    for i in range(2):
        for j in range(2):
            y = batch["rewards"][i] + 0.9 * (1 - batch["terminals"][i]) * q_next[i, j]
            expected += float(((q[i, j] - y) ** 2).mean())
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_ensemble_moments_at_eq5():
    actor = fqe.EnsembleActor(3, 2, [8, 8], 3)
    obs = torch.randn(7, 3)
    mean, std = fqe.ensemble_moments_at(actor, obs, chunk=4)
    with torch.no_grad():
        mu, log_std = actor(obs.expand(3, -1, -1))
    var = (log_std.exp() ** 2 + mu**2).mean(0) - mu.mean(0) ** 2
    assert torch.allclose(mean, mu.mean(0), atol=1e-6) and torch.allclose(std, var.sqrt(), atol=1e-5)


def test_episode_start_states():
    obs = np.arange(6, dtype=np.float32)[:, None]
    next_obs = np.array([[1], [2], [9], [4], [5], [7]], dtype=np.float32)  # row 2 ends an episode (time limit)
    terminals = np.array([0, 0, 0, 1, 0, 0], dtype=np.float32)  # row 3 terminal
    starts = fqe.episode_start_states({"observations": obs, "next_observations": next_obs, "terminals": terminals})
    np.testing.assert_array_equal(starts[:, 0], [0, 3, 4])


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "policy checkpoint {path} does not exist"),
        ("not_a_checkpoint", "cannot read policy checkpoint"),
        ("other_env", "is for 'HalfCheetah-v4' (dims 17/6), not for --env-id 'Hopper-v4' (dims 11/3)"),
        ("too_many_members", "--n-ensemble 3 but policy checkpoint {path} holds 2 member(s)"),
        ("fqe_as_policy", "has algo 'fqe'"),
    ],
)
@pytest.mark.slow
def test_bad_policy_checkpoint(run_script, tmp_path, monkeypatch, tiny_hopper_dataset, case, message):
    path = tmp_path / "policy.pt"
    extra = []
    if case == "not_a_checkpoint":
        path.write_text("not a torch file")
    elif case == "other_env":
        write_policy(path, env_id="HalfCheetah-v4", obs_dim=17, act_dim=6)
    elif case == "too_many_members":
        write_policy(path)
        extra = ["--n-ensemble", "3"]
    elif case == "fqe_as_policy":
        write_policy(path, algo="fqe")
    args = [
        "--env-id",
        "Hopper-v4",
        "--dataset-path",
        tiny_hopper_dataset,
        "--policy-checkpoint",
        path,
        "--steps",
        "10",
        *extra,
    ]
    if case == "not_a_checkpoint":  # one case as a user sees it: one line, no traceback
        proc = run_script("fqe.py", *args)
        assert proc.returncode != 0
        assert "Traceback" not in proc.stderr, proc.stderr
        assert message.format(path=path) in proc.stderr, proc.stderr
    else:  # the others in-process (cheaper): main() stops with SystemExit("error: ...")
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "argv", ["fqe.py", *map(str, args)])
        with pytest.raises(SystemExit) as stop:
            fqe.main()
        assert str(stop.value).startswith("error: ") and message.format(path=path) in str(stop.value)


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, tiny_hopper_dataset):
    policy = write_policy(tmp_path / "policy.pt")
    common = [
        sys.executable,
        str(REPO_ROOT / "fqe.py"),
        "--env-id",
        "Hopper-v4",
        "--dataset-path",
        str(tiny_hopper_dataset),
        "--policy-checkpoint",
        str(policy),
        "--steps",
        "2000",
        "--batch-size",
        "32",
        "--hidden-dim",
        "16",
        "--log-every",
        "100",
        "--eval-every",
        "1000",
        "--eval-episodes",
        "2",
        "--checkpoint-every",
        "200",
    ]
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [*common, "--checkpoint", "a.pt", "--run-dir", "runs/a"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]

    proc = subprocess.Popen(
        [*common, "--checkpoint", "b.pt", "--run-dir", "runs/b"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (tmp_path / "b.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(tmp_path / "b.pt", weights_only=True)["step"]
    assert 200 <= killed_at < 2000
    resumed = subprocess.run(
        [*common, "--checkpoint", "b.pt", "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = torch.load(tmp_path / "b.pt", weights_only=True)
    assert final["step"] == 2000 and final["algo"] == "fqe" and final["n_ensemble"] == 2
    logged = scalars(tmp_path / "runs" / "b")
    assert logged == scalars(tmp_path / "runs" / "a")  # same seed: identical values, nothing lost or doubled
    assert {"eval/q_estimate", "eval/mc_return", "losses/qf", "charts/q_data"} <= set(logged)


@pytest.mark.slow
def test_default_paths_chain_cql_fqe_balanced_finetune(run_script, tmp_path, tiny_hopper_dataset):
    """cql_pretrain.py -> fqe.py -> balanced_finetune.py --q-init fqe with default checkpoint paths only."""
    data = ["--env-id", "Hopper-v4", "--dataset-path", tiny_hopper_dataset]
    proc = run_script(
        "cql_pretrain.py",
        *data,
        "--n-ensemble",
        "2",
        "--hidden-dim",
        "32",
        "--batch-size",
        "32",
        "--offline-steps",
        "100",
        "--eval-episodes",
        "1",
        "--log-every",
        "50",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_script("fqe.py", *data, "--steps", "100", "--batch-size", "32", "--eval-episodes", "1", "--log-every", "50")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "checkpoints" / "fqe_Hopper-v4_seed1.pt", weights_only=True)
    cql_ckpt = torch.load(tmp_path / "checkpoints" / "cql_Hopper-v4_seed1.pt", weights_only=True)
    assert (ckpt["algo"], ckpt["n_ensemble"], ckpt["hidden_sizes"]) == ("fqe", 2, [32, 32])  # N and size from the policy
    for key, value in ckpt["actor"].items():  # the actor stored is the policy evaluated
        torch.testing.assert_close(value, cql_ckpt["actor"][key])
    proc = run_script(
        "balanced_finetune.py",
        *data,
        "--n-ensemble",
        "2",
        "--q-init",
        "fqe",
        "--online-steps",
        "100",
        "--epoch-length",
        "100",
        "--first-epoch-multiplier",
        "1",
        "--batch-size",
        "32",
        "--ratio-batch-size",
        "32",
        "--hidden-dim",
        "32",
        "--eval-episodes",
        "1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_non_finite_loss_stops_and_keeps_last_checkpoint(monkeypatch, tmp_path):
    rows = 64
    data = write_d4rl_file(
        tmp_path / "huge.hdf5",
        np.zeros((rows, OBS_DIM)),
        np.zeros((rows, ACT_DIM)),
        np.full(rows, 3e38),
        np.zeros(rows),
        next_observations=np.zeros((rows, OBS_DIM)),
    )
    policy = write_policy(tmp_path / "policy.pt")
    (tmp_path / "keep.pt").write_bytes(b"previous checkpoint")
    message = run_main(
        fqe,
        [
            "--env-id",
            "Hopper-v4",
            "--dataset-path",
            data,
            "--policy-checkpoint",
            policy,
            "--steps",
            "50",
            "--batch-size",
            "8",
            "--log-every",
            "5",
            "--checkpoint",
            "keep.pt",
        ],
        monkeypatch,
        tmp_path,
    )
    assert message.startswith("error: losses/qf = ") and "at step 5" in message and "keep.pt" in message
    assert (tmp_path / "keep.pt").read_bytes() == b"previous checkpoint"


def test_unwritable_checkpoint_fails_at_startup(monkeypatch, tmp_path, tiny_hopper_dataset):
    (tmp_path / "a_file").write_text("x")
    message = run_main(
        fqe,
        [
            "--env-id",
            "Hopper-v4",
            "--dataset-path",
            tiny_hopper_dataset,
            "--policy-checkpoint",
            write_policy(tmp_path / "policy.pt"),
            "--checkpoint",
            tmp_path / "a_file" / "fqe.pt",
        ],
        monkeypatch,
        tmp_path,
    )
    assert message.startswith("error: cannot write checkpoint")


def test_refuses_to_overwrite_another_algorithms_checkpoint(monkeypatch, tmp_path, tiny_hopper_dataset):
    policy = write_policy(tmp_path / "policy.pt")
    other = write_policy(tmp_path / "my_cql.pt")
    before = other.read_bytes()
    message = run_main(
        fqe,
        ["--env-id", "Hopper-v4", "--dataset-path", tiny_hopper_dataset, "--policy-checkpoint", policy, "--checkpoint", other],
        monkeypatch,
        tmp_path,
    )
    assert "holds a 'cql' checkpoint; refusing to overwrite it" in message
    assert other.read_bytes() == before
    message = run_main(
        fqe,
        [
            "--env-id",
            "Hopper-v4",
            "--dataset-path",
            tiny_hopper_dataset,
            "--policy-checkpoint",
            policy,
            "--checkpoint",
            policy,
        ],
        monkeypatch,
        tmp_path,
    )
    assert "would overwrite the policy checkpoint" in message


def test_checkpoint_stores_the_policy_path_as_given(monkeypatch, tmp_path, tiny_hopper_dataset):
    """The policy checkpoint's path is stored as given, so a relative path stays relative and a committed checkpoint
    names no folder of one machine; a checkpoint of an older version, which stored it absolute, still resumes."""
    write_policy(tmp_path / "policy.pt")
    argv = ["--env-id", "Hopper-v4", "--dataset-path", tiny_hopper_dataset, "--policy-checkpoint", "policy.pt"]
    argv += ["--checkpoint", "fqe.pt", "--run-dir", "runs/a", "--batch-size", "8", "--eval-episodes", "1"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["fqe.py", *map(str, argv), "--steps", "10"])
    fqe.main()
    ckpt = torch.load(tmp_path / "fqe.pt", weights_only=True)
    assert ckpt["policy_checkpoint"] == "policy.pt"

    ckpt["policy_checkpoint"] = str(tmp_path / "policy.pt")  # as written before
    torch.save(ckpt, tmp_path / "fqe.pt")
    monkeypatch.setattr(sys, "argv", ["fqe.py", *map(str, argv), "--steps", "20", "--resume"])
    fqe.main()
    ckpt = torch.load(tmp_path / "fqe.pt", weights_only=True)
    assert (ckpt["step"], ckpt["policy_checkpoint"]) == (20, "policy.pt")
