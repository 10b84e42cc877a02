"""Shared test helpers: a tiny D4RL-format dataset, running a script as a user would (a subprocess) or in-process
(its main() with patched argv), importing a script or benchmark tool as a module, reading the TensorBoard scalars a
run logged; and two autouse fixtures: one torch thread per test, and the signal handlers restored after each test
(a script's main() catches SIGTERM and SIGINT)."""

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmark"))  # benchmark tools import benchmark/repo.py, as when run as scripts


def load_script(relative_path: str, module_name: str | None = None):
    """Import a repository file ("awac", "cql_pretrain.py", "benchmark/plot.py") as a fresh module; main() does not run.

    module_name (default: the file's stem) lets a test file hold its own copy, so what it patches stays its own."""
    path = REPO_ROOT / relative_path
    if path.suffix != ".py":
        path = path.with_name(path.name + ".py")
    spec = importlib.util.spec_from_file_location(module_name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def own_copies(prefix: str, names) -> dict:
    """name -> a fresh module of each script, private to one test file (what it patches stays its own)."""
    return {name: load_script(name, f"{prefix}_{name}") for name in names}


def run_main(module, argv, monkeypatch, cwd) -> str:
    """module.main() with argv, in cwd; returns the message of the SystemExit it must stop with: one 'error: ...' line,
    which the real process prints alone with exit status 1 (any other exception fails the test)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [f"{module.__name__}.py", *map(str, argv)])
    with pytest.raises(SystemExit) as stop:
        module.main()
    message = stop.value.code
    assert isinstance(message, str), f"exit code {message!r}, expected an 'error: ...' message (exit status 1)"
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def scalars(run_dir, sps: bool = False) -> dict:
    """tag -> [(step, value)] of every scalar a TensorBoard run logged (charts/SPS, the timing, only when asked)."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"] if sps or tag != "charts/SPS"
    }


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def restore_signal_handlers():
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def write_d4rl_file(path, observations, actions, rewards, terminals, timeouts=None, next_observations=None):
    """Write arrays with D4RL's HDF5 schema (v2 when next_observations/timeouts are given, v0-style otherwise)."""
    with h5py.File(path, "w") as f:
        f["observations"] = np.asarray(observations, dtype=np.float32)
        f["actions"] = np.asarray(actions, dtype=np.float32)
        f["rewards"] = np.asarray(rewards, dtype=np.float32)
        f["terminals"] = np.asarray(terminals, dtype=bool)
        if timeouts is not None:
            f["timeouts"] = np.asarray(timeouts, dtype=bool)
        if next_observations is not None:
            f["next_observations"] = np.asarray(next_observations, dtype=np.float32)
    return path


def rollout_random_hopper(n_steps: int, seed: int = 0, max_episode_steps: int = 1000):
    """A random-policy Hopper-v4 dataset in D4RL v2 form, written without any repo script."""
    env = gym.make("Hopper-v4", max_episode_steps=max_episode_steps)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    rows = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")}
    for _ in range(n_steps):
        action = env.action_space.sample()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(rows, (obs, action, reward, terminated, truncated, next_obs)):
            rows[key].append(value)
        obs = env.reset()[0] if terminated or truncated else next_obs
    return {k: np.array(v) for k, v in rows.items()}


@pytest.fixture(scope="session")
def tiny_hopper_dataset(tmp_path_factory) -> Path:
    """2,000 random-policy Hopper-v4 transitions in D4RL v2 format."""
    path = tmp_path_factory.mktemp("data") / "hopper_random_tiny.hdf5"
    return Path(write_d4rl_file(path, **rollout_random_hopper(2000)))


@pytest.fixture
def run_script(tmp_path):
    """run_script("cql_pretrain.py", "--env-id", "Hopper-v4", ...) in a fresh folder; returns CompletedProcess."""

    def run(script: str, *args, cwd=None, timeout=300, env_vars=None):
        env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", D4RL_DATASET_DIR=str(tmp_path / "d4rl_cache"))
        env.update(env_vars or {})
        return subprocess.run(
            [sys.executable, str(REPO_ROOT / script), *map(str, args)],
            cwd=cwd or tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run
