"""Minari datasets (issue 13): the shared loader read against the episodes it was given, pretraining and fine-tuning
end to end on a dataset in Minari's on-disk layout, the environment and reference scores each dataset names, the
checkpoint environment check between D4RL (-v4) and Minari (-v5) tasks, one clear error per bad input, and a dataset
written by Minari's own create_dataset_from_buffers.

No network: datasets are written here with h5py and json, in Minari's layout
(<root>/<id>/data/main_data.hdf5 with episode_<i> groups, <root>/<id>/data/metadata.json), and MINARI_DATASETS_PATH
points at a temporary root. Cases run in-process where that is enough (a SystemExit carrying one 'error: ...' line is
what the real process prints with exit status 1, see test_reliability.py); one subprocess checks the real exit.
"""
import json
import os
import subprocess
import sys
import types

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO_ROOT, load_script

DATASET_SCRIPTS = ("cql_pretrain", "fqe", "balanced_finetune", "awac", "bcq_ft")
DATASET_ID = "mujoco/hopper/tiny-v0"
REF_MIN, REF_MAX = -20.0, 3000.0  # not D4RL's hopper references (-20.272305, 3234.3): scores must use these
MAX_EPISODE_STEPS = 40  # the env_spec's time limit (Hopper-v5's own is 1000): make_env must apply it


def load_own_copy(name):
    return load_script(name, f"minari_{name}")


@pytest.fixture(scope="module")
def mods():
    return {name: load_own_copy(name) for name in DATASET_SCRIPTS}


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------
# datasets in Minari's on-disk layout
# ---------------------------------------------------------------------------------
def box(dim, low=-np.inf, high=np.inf, dtype="float64"):
    """A Box space serialized as Minari does (a JSON string in metadata.json)."""
    return json.dumps({"type": "Box", "dtype": dtype, "shape": [dim], "low": [low] * dim, "high": [high] * dim})


def hopper_v5_episodes(n_steps=400, seed=0):
    """Random-policy Hopper-v5 episodes, each a dict of Minari's per-episode arrays (observations: T+1 rows)."""
    env = gym.make("Hopper-v5", max_episode_steps=MAX_EPISODE_STEPS)
    env.action_space.seed(seed)
    episodes, obs = [], env.reset(seed=seed)[0]
    current = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}
    for step in range(n_steps):
        action = env.action_space.sample()
        obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(("observations", "actions", "rewards", "terminations", "truncations"),
                              (obs, action, reward, terminated, truncated)):
            current[key].append(value)
        if terminated or truncated or step == n_steps - 1:  # the last episode is cut off: neither flag set
            episodes.append({key: np.array(values) for key, values in current.items()})
            obs = env.reset()[0]
            current = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}
    return episodes


def write_minari_dataset(root, dataset_id, episodes, env="Hopper-v5", obs_space=None, act_space=None, drop=(),
                         **metadata_changes):
    """Write episodes in Minari's layout under root; returns the data folder."""
    data_dir = root / dataset_id / "data"
    data_dir.mkdir(parents=True)
    with h5py.File(data_dir / "main_data.hdf5", "w") as f:
        for i, episode in enumerate(episodes):
            group = f.create_group(f"episode_{i}")
            group.attrs["id"], group.attrs["total_steps"] = i, len(episode["rewards"])
            for key, values in episode.items():
                group[key] = values
    obs_dim, act_dim = episodes[0]["observations"].shape[1], episodes[0]["actions"].shape[1]
    metadata = {
        "total_episodes": len(episodes), "total_steps": int(sum(len(e["rewards"]) for e in episodes)),
        "data_format": "hdf5", "jpeg_encoding": True,
        "observation_space": obs_space or box(obs_dim), "action_space": act_space or box(act_dim, -1.0, 1.0, "float32"),
        "env_spec": json.dumps({"id": env, "entry_point": "gymnasium.envs.mujoco.hopper_v5:HopperEnv",
                                "max_episode_steps": MAX_EPISODE_STEPS, "kwargs": {}, "additional_wrappers": []}),
        "dataset_id": dataset_id, "minari_version": "0.5.4", "ref_min_score": REF_MIN, "ref_max_score": REF_MAX,
    }
    metadata.update(metadata_changes)
    for key in drop:
        del metadata[key]
    (data_dir / "metadata.json").write_text(json.dumps(metadata))
    return data_dir


@pytest.fixture(scope="module")
def episodes():
    episodes = hopper_v5_episodes()
    assert any(e["terminations"][-1] for e in episodes) and any(e["truncations"][-1] for e in episodes)
    assert len(episodes) > 10  # episode_10 must be read after episode_9, not after episode_1
    return episodes


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory, episodes):
    root = tmp_path_factory.mktemp("minari")
    write_minari_dataset(root, DATASET_ID, episodes)
    return root


@pytest.fixture
def use_root(minari_root, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    return minari_root


def run_main(module, argv, monkeypatch, cwd) -> str:
    """module.main() with argv; returns the one-line 'error: ...' message it must stop with."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [f"{module.__name__}.py", *map(str, argv)])
    with pytest.raises(SystemExit) as stop:
        module.main()
    message = stop.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    return message


# ---------------------------------------------------------------------------------
# the loader, the environment, the scores
# ---------------------------------------------------------------------------------
def test_transitions_follow_the_episodes(mods, use_root, episodes):
    data = mods["cql_pretrain"].load_d4rl_dataset(DATASET_ID)
    assert set(data) == {"observations", "actions", "rewards", "next_observations", "terminals"}
    assert all(v.dtype == np.float32 for v in data.values())
    assert len(data["observations"]) == sum(len(e["rewards"]) for e in episodes)
    row = 0
    for i, episode in enumerate(episodes):
        steps = len(episode["rewards"])
        rows = slice(row, row + steps)
        np.testing.assert_array_equal(data["observations"][rows], episode["observations"][:-1].astype(np.float32))
        np.testing.assert_array_equal(data["next_observations"][rows], episode["observations"][1:].astype(np.float32))
        np.testing.assert_array_equal(data["actions"][rows], episode["actions"].astype(np.float32))
        np.testing.assert_array_equal(data["rewards"][rows], episode["rewards"].astype(np.float32))
        np.testing.assert_array_equal(data["terminals"][rows], episode["terminations"].astype(np.float32))
        last = row + steps - 1
        if episode["truncations"][-1]:  # a time limit: not terminal, and s' is this episode's own last observation
            assert data["terminals"][last] == 0.0
            if i + 1 < len(episodes):
                assert not np.array_equal(data["next_observations"][last], episodes[i + 1]["observations"][0])
        row += steps
    assert data["terminals"].sum() == sum(e["terminations"].sum() for e in episodes) > 0


def test_env_and_scores_come_from_the_dataset(mods, use_root):
    c = mods["cql_pretrain"]
    assert c.gym_env_id(DATASET_ID) == "Hopper-v5"
    env = c.make_env(DATASET_ID, 0)
    assert env.spec.id == "Hopper-v5" and env.spec.max_episode_steps == MAX_EPISODE_STEPS
    assert c.normalized_score(DATASET_ID, REF_MIN) == 0.0 and c.normalized_score(DATASET_ID, REF_MAX) == 100.0
    assert c.normalized_score(DATASET_ID, 1000.0) == pytest.approx(100 * 1020 / 3020)
    # D4RL names keep D4RL's environments and reference returns
    assert c.gym_env_id("hopper-medium-v2") == "Hopper-v4"
    assert c.normalized_score("hopper-medium-v2", 1000.0) == pytest.approx(100 * (1000 + 20.272305) / (3234.3 + 20.272305))
    assert c.make_env("hopper-medium-v2", 0).spec.max_episode_steps == 1000
    assert c.is_minari_id(DATASET_ID) and not c.is_minari_id("hopper-medium-v2") and not c.is_minari_id("Hopper-v5")
    # no reference scores in the metadata: NaN, as for an environment D4RL has none for
    write_minari_dataset(use_root, "mujoco/hopper/norefs-v0", hopper_v5_episodes(50), drop=("ref_min_score", "ref_max_score"))
    assert np.isnan(c.normalized_score("mujoco/hopper/norefs-v0", 1000.0))


def test_download_through_minari_when_it_is_installed(mods, tmp_path, monkeypatch, episodes):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    calls = []

    def download_dataset(dataset_id, force_download=False):
        calls.append(dataset_id)
        write_minari_dataset(tmp_path, dataset_id, episodes[:5])

    monkeypatch.setitem(sys.modules, "minari", types.SimpleNamespace(download_dataset=download_dataset))
    data = mods["awac"].load_d4rl_dataset("mujoco/hopper/fetched-v0")
    assert calls == ["mujoco/hopper/fetched-v0"]
    assert len(data["observations"]) == sum(len(e["rewards"]) for e in episodes[:5])
    mods["awac"].load_d4rl_dataset("mujoco/hopper/fetched-v0")
    assert calls == ["mujoco/hopper/fetched-v0"]  # cached: not downloaded again

    def offline(dataset_id, force_download=False):
        raise ValueError("Couldn't find any version for dataset mujoco/hopper/nope in the remote Farama server.")

    monkeypatch.setitem(sys.modules, "minari", types.SimpleNamespace(download_dataset=offline))
    with pytest.raises(SystemExit, match=r"minari could not download it \(ValueError: Couldn't find any version"):
        mods["awac"].load_d4rl_dataset("mujoco/hopper/nope-v0")


# ---------------------------------------------------------------------------------
# pretraining and fine-tuning end to end (real processes, default checkpoint path)
# ---------------------------------------------------------------------------------
def scalars(run_dir) -> dict:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def pretrained(minari_root, tmp_path_factory):
    """cql_pretrain.py then balanced_finetune.py on the Minari dataset, the second finding the first's checkpoint."""
    work = tmp_path_factory.mktemp("minari_runs")
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", MINARI_DATASETS_PATH=str(minari_root))
    common = ["--env-id", DATASET_ID, "--n-ensemble", "2", "--hidden-dim", "32", "--batch-size", "32", "--no-cuda"]
    runs = {
        "cql": ["cql_pretrain.py", *common, "--offline-steps", "40", "--log-every", "20", "--eval-every", "40",
                "--eval-episodes", "2", "--run-dir", "cql_run"],
        "balanced": ["balanced_finetune.py", *common, "--ratio-batch-size", "32", "--online-steps", "200",
                     "--epoch-length", "100", "--first-epoch-multiplier", "1", "--eval-episodes", "2",
                     "--run-dir", "ft_run"],
    }
    results = {}
    for name, argv in runs.items():
        results[name] = subprocess.run([sys.executable, str(REPO_ROOT / argv[0]), *argv[1:]], cwd=work, env=env,
                                       capture_output=True, text=True, timeout=300)
        assert results[name].returncode == 0, results[name].stderr[-3000:]
    return work, results


@pytest.mark.slow
def test_pretrain_and_finetune_end_to_end(pretrained):
    work, _ = pretrained
    ckpt = torch.load(work / "checkpoints" / f"cql_{DATASET_ID}_seed1.pt", weights_only=False)
    assert (ckpt["env_id"], ckpt["obs_dim"], ckpt["act_dim"], ckpt["n_ensemble"]) == (DATASET_ID, 11, 3, 2)
    finetuned = torch.load(work / "checkpoints" / f"balanced_{DATASET_ID}_seed1.pt", weights_only=False)
    assert finetuned["env_id"] == DATASET_ID and finetuned["step"] == 200
    # the online episodes ran under the dataset's env_spec: none longer than its 40-step limit (Hopper-v5's is 1000)
    online = finetuned["resume"]["online"]
    breaks = np.asarray(online["next_observations"][:-1] != online["observations"][1:]).any(1)
    starts = np.flatnonzero(np.concatenate([[True], breaks]))
    lengths = np.diff(np.append(starts, len(online["observations"])))
    assert len(online["observations"]) == 200 and online["observations"].shape[1] == 11
    assert lengths.max() <= MAX_EPISODE_STEPS, lengths
    for run in ("cql_run", "ft_run"):
        logged = scalars(work / run)
        returns, scores = np.array(logged["eval/return"]), np.array(logged["eval/normalized_score"])
        np.testing.assert_allclose(scores, 100 * (returns - REF_MIN) / (REF_MAX - REF_MIN), rtol=1e-5, atol=1e-4)
        assert np.all(returns < 40 * 5)  # episodes of at most 40 steps (Hopper's reward is ~1-4 per step)
    assert len(scalars(work / "ft_run")["eval/return"]) == 3  # at 0, 100 and 200 online steps


def test_sac_from_scratch_in_a_minari_datasets_env(use_root, tmp_path, monkeypatch):
    """paper.sh --suite minari runs sac.py with a Minari id: the dataset's env (-v5, its time limit) and scores."""
    sac = load_own_copy("sac")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["sac.py", "--env-id", DATASET_ID, "--total-timesteps", "60", "--learning-starts",
                                      "20", "--batch-size", "8", "--hidden-dim", "16", "--eval-every", "60",
                                      "--eval-episodes", "1", "--run-dir", "sac_run", "--no-cuda"])
    sac.main()
    ckpt = torch.load(tmp_path / "checkpoints" / f"sac_{DATASET_ID}_seed1.pt", weights_only=False)
    buffer = ckpt["resume"]["buffer"]
    ends = np.flatnonzero(buffer["terminals"] | buffer["timeouts"])
    assert ckpt["env_id"] == DATASET_ID and buffer["observations"].shape == (60, 11) and len(ends) > 0
    assert np.diff(np.concatenate([[-1], ends])).max() <= MAX_EPISODE_STEPS  # the dataset's time limit, not 1000
    logged = scalars(tmp_path / "sac_run")
    np.testing.assert_allclose(logged["eval/normalized_score"],
                               100 * (np.array(logged["eval/return"]) - REF_MIN) / (REF_MAX - REF_MIN), rtol=1e-5)


# ---------------------------------------------------------------------------------
# the checkpoint's environment: Minari (Hopper-v5) and D4RL (Hopper-v4) tasks do not mix
# ---------------------------------------------------------------------------------
def test_checkpoint_of_another_environment_is_refused(mods, pretrained, use_root, tmp_path, tiny_hopper_dataset,
                                                      monkeypatch):
    work, _ = pretrained
    minari_ckpt = work / "checkpoints" / f"cql_{DATASET_ID}_seed1.pt"
    tiny = ["--n-ensemble", "2", "--online-steps", "10", "--epoch-length", "5", "--batch-size", "8",
            "--ratio-batch-size", "8", "--eval-episodes", "1", "--no-cuda", "--run-dir", tmp_path / "r",
            "--save-checkpoint", tmp_path / "out.pt"]
    message = run_main(mods["balanced_finetune"], ["--env-id", "hopper-medium-v2", "--dataset-path", tiny_hopper_dataset,
                                                   "--checkpoint", minari_ckpt, *tiny], monkeypatch, tmp_path)
    assert f"checkpoint {minari_ckpt} was trained for '{DATASET_ID}', not for --env-id 'hopper-medium-v2' " \
           f"(environments Hopper-v5 and Hopper-v4 differ)" in message
    message = run_main(mods["fqe"], ["--env-id", "hopper-medium-v2", "--dataset-path", tiny_hopper_dataset,
                                     "--policy-checkpoint", minari_ckpt, "--steps", "2", "--no-cuda",
                                     "--checkpoint", tmp_path / "fqe.pt", "--run-dir", tmp_path / "f"],
                       monkeypatch, tmp_path)
    assert f"policy checkpoint {minari_ckpt} is for '{DATASET_ID}'" in message
    # the other way round: a Hopper-v4 checkpoint is not fine-tuned on the Minari (Hopper-v5) dataset
    d4rl_ckpt = tmp_path / "cql_v4.pt"
    torch.save(dict(torch.load(minari_ckpt, weights_only=False), env_id="hopper-medium-replay-v2"), d4rl_ckpt)
    message = run_main(mods["balanced_finetune"], ["--env-id", DATASET_ID, "--checkpoint", d4rl_ckpt, *tiny],
                       monkeypatch, tmp_path)
    assert "(environments Hopper-v4 and Hopper-v5 differ)" in message
    assert not (tmp_path / "out.pt").exists()
    # same environment, other dataset: allowed (a gymnasium id with --dataset-path, or another Minari dataset of v5)
    v5_ckpt = tmp_path / "cql_v5.pt"
    torch.save(dict(torch.load(minari_ckpt, weights_only=False), env_id="Hopper-v5"), v5_ckpt)
    loaded = mods["balanced_finetune"].load_ensemble_checkpoint(str(v5_ckpt), "", DATASET_ID, 11, 3, 1)
    assert loaded["n_ensemble"] == 2 and loaded["actor"]["net.0.weight"].shape[0] == 1


# ---------------------------------------------------------------------------------
# bad input: one clear error each
# ---------------------------------------------------------------------------------
def corrupt(root, dataset_id, episodes, case):
    """Write the dataset of one bad-input case under root; returns the phrase its error message must contain."""
    data_dir = root / dataset_id / "data"
    if case == "missing":
        return f"Minari dataset {dataset_id} not found in {data_dir}; get it with: " \
               f"pip install minari && minari download {dataset_id}"
    if case == "no_total_steps_key":
        write_minari_dataset(root, dataset_id, episodes, drop=("total_steps",))
        return f"{data_dir / 'metadata.json'} has no 'total_steps' key"
    if case == "no_env_spec_key":
        write_minari_dataset(root, dataset_id, episodes, drop=("env_spec",))
        return f"{data_dir / 'metadata.json'} has no 'env_spec' key"
    if case == "unknown_env":
        write_minari_dataset(root, dataset_id, episodes, env="Hopper-v99")
        return "was collected in 'Hopper-v99', which gymnasium does not know"
    if case == "dims_disagree_with_env":
        wide = [dict(e, observations=np.concatenate([e["observations"], e["observations"][:, :1]], 1)) for e in episodes]
        write_minari_dataset(root, dataset_id, wide)
        return f"dataset {dataset_id} has observation/action dims 12/3 but Hopper-v5 has 11/3"
    if case == "dims_disagree_with_metadata":
        write_minari_dataset(root, dataset_id, episodes, obs_space=box(17))
        return "episode_0/observations has shape"
    if case == "dict_observations":
        write_minari_dataset(root, dataset_id, episodes, obs_space=json.dumps({"type": "Dict", "subspaces": {}}))
        return "'observation_space' is a Dict space"
    if case == "no_main_data":
        write_minari_dataset(root, dataset_id, episodes)
        (data_dir / "main_data.hdf5").unlink()
        return f"dataset file {data_dir / 'main_data.hdf5'} does not exist"
    if case == "not_hdf5":
        write_minari_dataset(root, dataset_id, episodes)
        (data_dir / "main_data.hdf5").write_text("not hdf5\n")
        return f"cannot read dataset {data_dir / 'main_data.hdf5'}: not a readable HDF5 file"
    if case == "not_json":
        write_minari_dataset(root, dataset_id, episodes)
        (data_dir / "metadata.json").write_text("{truncated")
        return f"cannot read {data_dir / 'metadata.json'}: not a readable JSON file"
    if case == "no_rewards":
        write_minari_dataset(root, dataset_id, episodes)
        with h5py.File(data_dir / "main_data.hdf5", "a") as f:
            del f["episode_3/rewards"]
        return "episode_3 has no 'rewards'"
    if case == "observations_not_one_longer":
        write_minari_dataset(root, dataset_id, [dict(e, observations=e["observations"][1:]) for e in episodes])
        return "episode_0/observations has"
    if case == "nan_rewards":
        bad = [dict(e) for e in episodes]
        bad[2] = dict(bad[2], rewards=np.where(np.arange(len(bad[2]["rewards"])) == 1, np.nan, bad[2]["rewards"]))
        write_minari_dataset(root, dataset_id, bad)
        return "episode_2/rewards contains NaN or inf"
    if case == "total_steps_wrong":
        write_minari_dataset(root, dataset_id, episodes, total_steps=7)
        return "total_steps is 7"
    raise ValueError(case)


BAD_CASES = ("missing", "no_total_steps_key", "no_env_spec_key", "unknown_env", "dims_disagree_with_env",
             "dims_disagree_with_metadata", "dict_observations", "no_main_data", "not_hdf5", "not_json", "no_rewards",
             "observations_not_one_longer", "nan_rewards", "total_steps_wrong")


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_minari_dataset(case, mods, episodes, tmp_path, monkeypatch):
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    monkeypatch.setitem(sys.modules, "minari", None)  # minari not installed: `import minari` raises ImportError
    dataset_id = f"mujoco/hopper/{case.replace('_', '-')}-v0"
    phrase = corrupt(root, dataset_id, episodes[:6], case)
    argv = ["--env-id", dataset_id, "--n-ensemble", "1", "--hidden-dim", "8", "--batch-size", "8", "--offline-steps",
            "2", "--eval-episodes", "1", "--checkpoint", tmp_path / "out.pt", "--run-dir", tmp_path / "runs", "--no-cuda"]
    message = run_main(mods["cql_pretrain"], argv, monkeypatch, tmp_path)
    assert phrase in message, message
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("script", DATASET_SCRIPTS)
def test_every_dataset_script_takes_minari_ids(script, mods, tmp_path, monkeypatch):
    """Each script resolves a Minari id through the shared code: here to the message for a dataset not on disk."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "empty"))
    monkeypatch.setitem(sys.modules, "minari", None)
    message = run_main(mods[script], ["--env-id", DATASET_ID, "--no-cuda"], monkeypatch, tmp_path)
    assert message == f"error: Minari dataset {DATASET_ID} not found in {tmp_path / 'empty' / DATASET_ID / 'data'}; " \
                      f"get it with: pip install minari && minari download {DATASET_ID}"


@pytest.mark.slow
def test_a_missing_dataset_in_a_real_process(tmp_path):
    """Exit status 1, one 'error:' line and no traceback (minari hidden from the process)."""
    hide_minari = tmp_path / "no_minari"
    hide_minari.mkdir()
    (hide_minari / "minari.py").write_text("raise ImportError('minari is hidden in this test')\n")
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", MINARI_DATASETS_PATH=str(tmp_path / "empty"),
               PYTHONPATH=str(hide_minari))
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "balanced_finetune.py"), "--env-id", DATASET_ID, "--no-cuda"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        f"error: Minari dataset {DATASET_ID} not found in {tmp_path / 'empty' / DATASET_ID / 'data'}; "
        f"get it with: pip install minari && minari download {DATASET_ID}"], proc.stderr[-2000:]


# ---------------------------------------------------------------------------------
# a dataset written by Minari itself
# ---------------------------------------------------------------------------------
def test_dataset_written_by_minari_itself(mods, episodes, tmp_path, monkeypatch):
    minari = pytest.importorskip("minari")
    from minari.data_collector import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    buffers = [EpisodeBuffer(observations=list(e["observations"]), actions=list(e["actions"]),
                             rewards=list(e["rewards"]), terminations=list(e["terminations"]),
                             truncations=list(e["truncations"])) for e in episodes]
    with pytest.warns(UserWarning, match="eval_env"):
        minari.create_dataset_from_buffers("mujoco/hopper/minari-written-v0", buffers, env="Hopper-v5",
                                           ref_min_score=REF_MIN, ref_max_score=REF_MAX, algorithm_name="random")
    c = mods["bcq_ft"]
    data = c.load_d4rl_dataset("mujoco/hopper/minari-written-v0")
    # the same transitions as minari's own reader gives, episode after episode
    dataset = minari.load_dataset("mujoco/hopper/minari-written-v0")
    read = list(dataset.iterate_episodes())
    assert len(read) == len(episodes)
    expected = {"observations": [e.observations[:-1] for e in read], "next_observations": [e.observations[1:] for e in read],
                "actions": [e.actions for e in read], "rewards": [e.rewards for e in read],
                "terminals": [e.terminations for e in read]}
    for key, parts in expected.items():
        np.testing.assert_array_equal(data[key], np.concatenate(parts).astype(np.float32), err_msg=key)
    assert c.gym_env_id("mujoco/hopper/minari-written-v0") == "Hopper-v5"
    assert c.normalized_score("mujoco/hopper/minari-written-v0", 1490.0) == pytest.approx(
        100 * float(minari.get_normalized_score(dataset, np.array(1490.0))))
