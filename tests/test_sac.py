"""sac.py: TensorBoard tags, the D4RL-format dataset it writes, time-limit handling, scores, errors, resume."""

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, load_script, scalars

TINY = ["--batch-size", "32", "--hidden-dim", "16", "--eval-episodes", "1", "--no-cuda"]


sac = load_script("sac.py")


@pytest.mark.slow
def test_tiny_run_writes_tags_and_dataset(run_script, tmp_path):
    result = run_script(
        "sac.py",
        "--env-id",
        "Hopper-v4",
        "--total-timesteps",
        "300",
        "--learning-starts",
        "100",
        "--eval-every",
        "150",
        "--log-every",
        "50",
        "--dataset-out",
        "d.hdf5",
        "--run-dir",
        "run",
        *TINY,
    )
    assert result.returncode == 0, result.stderr
    logged = scalars(tmp_path / "run", sps=True)
    for tag in (
        "eval/return",
        "eval/normalized_score",
        "charts/episodic_return",
        "charts/SPS",
        "losses/qf",
        "losses/actor",
        "losses/alpha",
        "charts/alpha",
    ):
        assert tag in logged, f"missing tag {tag}; have {sorted(logged)}"
    assert [step for step, _ in logged["eval/return"]] == [150, 300]
    ret = logged["eval/return"][-1][1]
    assert logged["eval/normalized_score"][-1][1] == pytest.approx(100 * (ret + 20.272305) / (3234.3 + 20.272305), rel=1e-5)

    with h5py.File(tmp_path / "d.hdf5") as f:
        assert {"observations", "actions", "rewards", "terminals", "timeouts", "next_observations", "metadata"} <= set(f)
        obs, next_obs = f["observations"][()], f["next_observations"][()]
        terminals, timeouts = f["terminals"][()], f["timeouts"][()]
        assert obs.shape == next_obs.shape == (300, 11) and f["actions"].shape == (300, 3)
        assert f["rewards"].shape == terminals.shape == timeouts.shape == (300,)
        assert f["metadata/env_id"][()].decode() == "Hopper-v4" and f["metadata/seed"][()] == 1
        assert np.abs(f["actions"][()]).max() <= 1.0
        # within an episode, s' of one row is s of the next
        continuing = ~(terminals | timeouts)[:-1]
        np.testing.assert_array_equal(next_obs[:-1][continuing], obs[1:][continuing])
        assert terminals.sum() > 0  # a random Hopper falls within 300 steps


@pytest.mark.slow
def test_time_limit_is_a_timeout_not_a_terminal(run_script, tmp_path):
    """HalfCheetah never terminates: step 1000 is truncated, and s' is the real last state, not the reset one."""
    result = run_script(
        "sac.py",
        "--env-id",
        "HalfCheetah-v4",
        "--total-timesteps",
        "1002",
        "--learning-starts",
        "5000",
        "--eval-every",
        "100000",
        "--dataset-out",
        "cheetah.hdf5",
        *TINY,
    )
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "cheetah.hdf5") as f:
        terminals, timeouts = f["terminals"][()], f["timeouts"][()]
        obs, next_obs = f["observations"][()], f["next_observations"][()]
    assert terminals.sum() == 0
    assert np.flatnonzero(timeouts).tolist() == [999]
    assert not np.allclose(next_obs[999], obs[1000])  # obs[1000] is the reset observation
    np.testing.assert_array_equal(next_obs[998], obs[999])
    # the reset observation is near HalfCheetah's initial state (qpos noise 0.1), the final one is not
    assert np.abs(obs[1000]).max() < 0.5 and np.abs(next_obs[999]).max() > 0.5


@pytest.mark.parametrize(
    "family,task",
    [("hopper", "hopper-medium-v2"), ("halfcheetah", "halfcheetah-random-v0"), ("walker2d", "walker2d-medium-expert-v2")],
)
def test_normalized_score_reference_points(family, task):
    low, high = {"hopper": (-20.272305, 3234.3), "halfcheetah": (-280.178953, 12135.0), "walker2d": (1.629008, 4592.3)}[family]
    assert sac.normalized_score(task, low) == pytest.approx(0.0, abs=1e-9)
    assert sac.normalized_score(task, high) == pytest.approx(100.0)
    assert sac.normalized_score(task, (low + high) / 2) == pytest.approx(50.0)


def test_d4rl_names_map_to_v4_envs():
    assert sac.gym_env_id("walker2d-medium-expert-v2") == "Walker2d-v4"
    assert sac.gym_env_id("hopper-medium-replay-v0") == "Hopper-v4"
    assert sac.gym_env_id("halfcheetah-random-v2") == "HalfCheetah-v4"
    assert sac.gym_env_id("Walker2d-v4") == "Walker2d-v4"
    assert sac.make_env("hopper-expert-v2", 0).unwrapped.spec.id == "Hopper-v4"
    with pytest.raises(SystemExit, match="unknown --env-id 'hopper-fancy-v2'"):
        sac.gym_env_id("hopper-fancy-v2")


@pytest.mark.parametrize(
    "bad_args,message",
    [
        (["--env-id", "Hoper-v4"], "unknown --env-id 'Hoper-v4'"),
        (["--env-id", "Hopper-v4", "--dataset-out", "afile/d.hdf5"], "cannot write --dataset-out afile/d.hdf5"),
    ],
)
@pytest.mark.slow
def test_bad_input_one_clear_message(run_script, tmp_path, bad_args, message):
    (tmp_path / "afile").write_text("a file, not a folder")
    result = run_script("sac.py", *bad_args, "--total-timesteps", "10", *TINY)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_same_seed_same_run_on_cpu(run_script, tmp_path):
    common = ["--total-timesteps", "250", "--learning-starts", "100", "--eval-every", "125", "--log-every", "25", *TINY]
    for name in ("a", "b"):
        assert run_script("sac.py", *common, "--run-dir", name, "--checkpoint", f"{name}.pt").returncode == 0
    a, b = scalars(tmp_path / "a"), scalars(tmp_path / "b")
    for tag in ("losses/qf", "losses/actor", "eval/return", "charts/episodic_return"):
        assert a[tag] == b[tag], tag


@pytest.mark.slow
def test_killed_run_resumes_without_losing_transitions(tmp_path):
    args = [
        sys.executable,
        str(REPO_ROOT / "sac.py"),
        "--total-timesteps",
        "3000",
        "--learning-starts",
        "200",
        "--eval-every",
        "100000",
        "--checkpoint-every",
        "500",
        "--checkpoint",
        "ck.pt",
        "--dataset-out",
        "d.hdf5",
        "--run-dir",
        "run",
        *TINY,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "ck.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    killed_at = torch.load(tmp_path / "ck.pt", weights_only=True)["step"]
    assert 0 < killed_at < 3000

    resumed = subprocess.run(args + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from ck.pt at step {killed_at}" in resumed.stdout + resumed.stderr
    final = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert final["step"] == 3000 and final["resume"]["buffer"]["size"] == 3000
    with h5py.File(tmp_path / "d.hdf5") as f:
        obs, next_obs = f["observations"][()], f["next_observations"][()]
        ends = f["terminals"][()] | f["timeouts"][()]
    assert len(obs) == 3000
    assert ends[killed_at - 1]  # the interrupted episode is closed as a timeout at the checkpoint
    continuing = ~ends[:-1]  # and no transition is lost or duplicated: every non-final row chains to the next
    np.testing.assert_array_equal(next_obs[:-1][continuing], obs[1:][continuing])


@pytest.mark.slow
def test_snapshots_then_rollouts_of_a_saved_actor(run_script, tmp_path):
    """--snapshot-dir saves the actor at every evaluation; --rollout-actor collects with it and never learns."""
    result = run_script(
        "sac.py",
        "--env-id",
        "Hopper-v4",
        "--total-timesteps",
        "300",
        "--learning-starts",
        "100",
        "--eval-every",
        "150",
        "--snapshot-dir",
        "snaps",
        "--run-dir",
        "run",
        *TINY,
    )
    assert result.returncode == 0, result.stderr
    snapshots = sorted(p.name for p in (tmp_path / "snaps").iterdir())
    assert snapshots == ["step0000150.pt", "step0000300.pt"]
    snapshot = torch.load(tmp_path / "snaps" / "step0000300.pt", weights_only=True)
    evaluated = dict(scalars(tmp_path / "run")["eval/return"])
    assert snapshot["step"] == 300 and snapshot["eval_return"] == pytest.approx(evaluated[300], rel=1e-5)

    # a near-deterministic actor (log-std bias -20, its weights 0): every sampled action must be tanh(mean(s))
    act_dim = snapshot["act_dim"]
    snapshot["actor"]["net.4.weight"][..., act_dim:] = 0.0
    snapshot["actor"]["net.4.bias"][..., act_dim:] = -20.0
    torch.save(snapshot, tmp_path / "sharp.pt")
    result = run_script(
        "sac.py",
        "--env-id",
        "Hopper-v4",
        "--total-timesteps",
        "400",
        "--rollout-actor",
        "sharp.pt",
        "--eval-every",
        "400",
        "--dataset-out",
        "rollouts.hdf5",
        "--checkpoint",
        "r.pt",
        *TINY,
    )
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "rollouts.hdf5", "r") as f:
        observations, actions = f["observations"][()], f["actions"][()]
        assert "rollouts of sharp.pt" in f["metadata/policy"][()].decode()
    actor = sac.EnsembleActor(snapshot["obs_dim"], act_dim, snapshot["hidden_sizes"], 1)
    actor.load_state_dict(snapshot["actor"])
    with torch.no_grad():
        mean, _ = actor(torch.as_tensor(observations).unsqueeze(0))
    np.testing.assert_allclose(actions, torch.tanh(mean[0]).numpy(), atol=1e-5)
    after = torch.load(tmp_path / "r.pt", weights_only=True)["actor"]
    for key, value in snapshot["actor"].items():  # no update touched the actor
        torch.testing.assert_close(after[key], value)


@pytest.mark.slow
def test_rollout_actor_with_other_dims_is_a_clear_error(run_script, tmp_path):
    result = run_script(
        "sac.py",
        "--env-id",
        "Hopper-v4",
        "--total-timesteps",
        "200",
        "--learning-starts",
        "100",
        "--eval-every",
        "200",
        "--snapshot-dir",
        "snaps",
        *TINY,
    )
    assert result.returncode == 0, result.stderr
    result = run_script(
        "sac.py", "--env-id", "Walker2d-v4", "--total-timesteps", "100", "--rollout-actor", "snaps/step0000200.pt", *TINY
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "has dims 11/3 but Walker2d-v4 has 17/6" in result.stderr
