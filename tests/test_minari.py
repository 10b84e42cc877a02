"""Minari datasets (issues 13 and 21), read through Farama's minari package: transitions episode after episode, the
environment and reference scores each dataset names, pretraining and fine-tuning end to end, the checkpoint
environment check between D4RL (-v4) and Minari (-v5) tasks, one clear error per bad input, and the install message
when minari is missing.

No network: every dataset is written here by Minari's own create_dataset_from_buffers into a temporary
MINARI_DATASETS_PATH; the download test replaces minari's download function by one that writes the dataset. Cases run
in-process where that is enough (a SystemExit carrying one 'error: ...' line is what the real process prints with exit
status 1, see test_reliability.py); subprocesses check the real runs and the real exit.
"""

import dataclasses
import json
import os
import subprocess
import sys
import warnings

import gymnasium as gym
import minari
import numpy as np
import pytest
import torch
from minari.data_collector import EpisodeBuffer

from conftest import REPO_ROOT, own_copies, run_main, scalars

DATASET_SCRIPTS = ("cql_pretrain", "fqe", "balanced_finetune", "awac", "bcq_ft")
DATASET_ID = "mujoco/hopper/tiny-v0"
REF_MIN, REF_MAX = -20.0, 3000.0  # not D4RL's hopper references (-20.272305, 3234.3): scores must use these
MAX_EPISODE_STEPS = 40  # the env spec's time limit (Hopper-v5's own is 1000): make_env must apply it
KEYS = ("observations", "actions", "rewards", "terminations", "truncations")


@pytest.fixture(scope="module")
def mods():
    return own_copies("minari", DATASET_SCRIPTS)


# ---------------------------------------------------------------------------------
# datasets written by minari.create_dataset_from_buffers
# ---------------------------------------------------------------------------------
def hopper_v5_episodes(n_steps=400, seed=0):
    """Random-policy Hopper-v5 episodes, each a dict of Minari's per-episode arrays (observations: T+1 rows)."""
    env = gym.make("Hopper-v5", max_episode_steps=MAX_EPISODE_STEPS)
    env.action_space.seed(seed)
    episodes, obs = [], env.reset(seed=seed)[0]
    current = {key: [] for key in KEYS} | {"observations": [obs]}
    for step in range(n_steps):
        action = env.action_space.sample()
        obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(KEYS, (obs, action, reward, terminated, truncated)):
            current[key].append(value)
        if terminated or truncated or step == n_steps - 1:  # the last episode is cut off: neither flag set
            episodes.append({key: np.array(values) for key, values in current.items()})
            obs = env.reset()[0]
            current = {key: [] for key in KEYS} | {"observations": [obs]}
    return episodes


def write_minari_dataset(root, dataset_id, episodes, refs=(REF_MIN, REF_MAX), **options):
    """Minari's own create_dataset_from_buffers under root (the env spec: Hopper-v5 with a 40-step limit); returns the
    dataset's data folder."""
    spec = dataclasses.replace(gym.spec("Hopper-v5"), max_episode_steps=MAX_EPISODE_STEPS)
    buffers = [EpisodeBuffer(**{key: list(episode[key]) for key in KEYS}) for episode in episodes]
    old_root = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            minari.create_dataset_from_buffers(
                dataset_id,
                buffers,
                env=spec,
                eval_env=spec,
                ref_min_score=refs[0],
                ref_max_score=refs[1],
                algorithm_name="random",
                **options,
            )
    finally:
        if old_root is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old_root
    return root / dataset_id / "data"


@pytest.fixture(scope="module")
def episodes():
    episodes = hopper_v5_episodes()
    assert any(e["terminations"][-1] for e in episodes) and any(e["truncations"][-1] for e in episodes)
    assert len(episodes) > 10  # episode 10 must be read after episode 9, not after episode 1
    return episodes


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory, episodes):
    root = tmp_path_factory.mktemp("minari")
    write_minari_dataset(root, DATASET_ID, episodes)
    write_minari_dataset(root, "mujoco/hopper/norefs-v0", episodes[:3], refs=(None, None))
    return root


@pytest.fixture
def use_root(minari_root, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    return minari_root


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
    # the same transitions minari's own reader gives, episode after episode
    read = list(minari.load_dataset(DATASET_ID).iterate_episodes())
    np.testing.assert_array_equal(data["observations"], np.concatenate([e.observations[:-1] for e in read]).astype(np.float32))


def test_env_and_scores_come_from_the_dataset(mods, use_root):
    c = mods["cql_pretrain"]
    assert c.gym_env_id(DATASET_ID) == "Hopper-v5"
    env = c.make_env(DATASET_ID, 0)
    assert env.spec.id == "Hopper-v5" and env.spec.max_episode_steps == MAX_EPISODE_STEPS
    assert c.normalized_score(DATASET_ID, REF_MIN) == 0.0 and c.normalized_score(DATASET_ID, REF_MAX) == 100.0
    assert c.normalized_score(DATASET_ID, 1000.0) == pytest.approx(100 * 1020 / 3020)
    assert c.normalized_score(DATASET_ID, 1490.0) == pytest.approx(
        100 * float(minari.get_normalized_score(minari.load_dataset(DATASET_ID), np.array(1490.0)))
    )
    # D4RL names keep D4RL's environments and reference returns
    assert c.gym_env_id("hopper-medium-v2") == "Hopper-v4"
    assert c.normalized_score("hopper-medium-v2", 1000.0) == pytest.approx(100 * (1000 + 20.272305) / (3234.3 + 20.272305))
    assert c.make_env("hopper-medium-v2", 0).spec.max_episode_steps == 1000
    assert c.is_minari_id(DATASET_ID) and not c.is_minari_id("hopper-medium-v2") and not c.is_minari_id("Hopper-v5")
    # no reference scores in the metadata: NaN, as for an environment D4RL has none for
    assert np.isnan(c.normalized_score("mujoco/hopper/norefs-v0", 1000.0))


def test_minari_is_imported_only_for_a_minari_id(tmp_path, tiny_hopper_dataset):
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import cql_pretrain as c; "
        "c.load_d4rl_dataset('Hopper-v4', sys.argv[2]); c.make_env('hopper-medium-v2', 0); "
        "c.normalized_score('hopper-medium-v2', 1.0); print('minari' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(REPO_ROOT), str(tiny_hopper_dataset)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]


def test_download_through_minari(mods, tmp_path, monkeypatch, episodes):
    """A dataset not in the cache is downloaded by minari.load_dataset (here a stand-in for minari's download)."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    calls = []

    def download_dataset(dataset_id, force_download=False):
        calls.append(dataset_id)
        write_minari_dataset(tmp_path, dataset_id, episodes[:5])

    monkeypatch.setattr(minari.storage.hosting, "download_dataset", download_dataset)
    data = mods["awac"].load_d4rl_dataset("mujoco/hopper/fetched-v0")
    assert calls == ["mujoco/hopper/fetched-v0"]
    assert len(data["observations"]) == sum(len(e["rewards"]) for e in episodes[:5])
    mods["awac"].load_d4rl_dataset("mujoco/hopper/fetched-v0")
    assert calls == ["mujoco/hopper/fetched-v0"]  # cached: not downloaded again

    def offline(dataset_id, force_download=False):
        raise ConnectionError("Couldn't reach the remote Farama server")

    monkeypatch.setattr(minari.storage.hosting, "download_dataset", offline)
    with pytest.raises(
        SystemExit,
        match=r"^error: cannot load Minari dataset mujoco/hopper/nope-v0: ConnectionError: "
        r"Couldn't reach the remote Farama server$",
    ):
        mods["awac"].load_d4rl_dataset("mujoco/hopper/nope-v0")


# ---------------------------------------------------------------------------------
# pretraining and fine-tuning end to end (real processes, default checkpoint path)
# ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pretrained(minari_root, tmp_path_factory):
    """cql_pretrain.py then balanced_finetune.py on the Minari dataset, the second finding the first's checkpoint."""
    work = tmp_path_factory.mktemp("minari_runs")
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", MINARI_DATASETS_PATH=str(minari_root))
    common = ["--env-id", DATASET_ID, "--n-ensemble", "2", "--hidden-dim", "32", "--batch-size", "32", "--no-cuda"]
    runs = {
        "cql": [
            "cql_pretrain.py",
            *common,
            "--offline-steps",
            "40",
            "--log-every",
            "20",
            "--eval-every",
            "40",
            "--eval-episodes",
            "2",
            "--run-dir",
            "cql_run",
        ],
        "balanced": [
            "balanced_finetune.py",
            *common,
            "--ratio-batch-size",
            "32",
            "--online-steps",
            "200",
            "--epoch-length",
            "100",
            "--first-epoch-multiplier",
            "1",
            "--eval-episodes",
            "2",
            "--run-dir",
            "ft_run",
        ],
    }
    results = {}
    for name, argv in runs.items():
        results[name] = subprocess.run(
            [sys.executable, str(REPO_ROOT / argv[0]), *argv[1:]],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert results[name].returncode == 0, results[name].stderr[-3000:]
    return work, results


@pytest.mark.slow
def test_pretrain_and_finetune_end_to_end(pretrained):
    work, _ = pretrained
    ckpt = torch.load(work / "checkpoints" / f"cql_{DATASET_ID}_seed1.pt", weights_only=False)
    assert (ckpt["env_id"], ckpt["obs_dim"], ckpt["act_dim"], ckpt["n_ensemble"]) == (DATASET_ID, 11, 3, 2)
    finetuned = torch.load(work / "checkpoints" / f"balanced_{DATASET_ID}_seed1.pt", weights_only=False)
    assert finetuned["env_id"] == DATASET_ID and finetuned["step"] == 200
    # the online episodes ran under the dataset's env spec: none longer than its 40-step limit (Hopper-v5's is 1000)
    online = finetuned["resume"]["online"]
    breaks = np.asarray(online["next_observations"][:-1] != online["observations"][1:]).any(1)
    starts = np.flatnonzero(np.concatenate([[True], breaks]))
    lengths = np.diff(np.append(starts, len(online["observations"])))
    assert len(online["observations"]) == 200 and online["observations"].shape[1] == 11
    assert lengths.max() <= MAX_EPISODE_STEPS, lengths
    for run in ("cql_run", "ft_run"):
        logged = scalars(work / run)
        returns = np.array([v for _, v in logged["eval/return"]])
        scores = np.array([v for _, v in logged["eval/normalized_score"]])
        np.testing.assert_allclose(scores, 100 * (returns - REF_MIN) / (REF_MAX - REF_MIN), rtol=1e-5, atol=1e-4)
        assert np.all(returns < 40 * 5)  # episodes of at most 40 steps (Hopper's reward is ~1-4 per step)
    assert len(scalars(work / "ft_run")["eval/return"]) == 3  # at 0, 100 and 200 online steps


def test_sac_from_scratch_in_a_minari_datasets_env(use_root, tmp_path, monkeypatch):
    """paper.sh --suite minari runs sac.py with a Minari id: the dataset's env (-v5, its time limit) and scores."""
    sac = own_copies("minari", ["sac"])["sac"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "sac.py",
            "--env-id",
            DATASET_ID,
            "--total-timesteps",
            "60",
            "--learning-starts",
            "20",
            "--batch-size",
            "8",
            "--hidden-dim",
            "16",
            "--eval-every",
            "60",
            "--eval-episodes",
            "1",
            "--run-dir",
            "sac_run",
            "--no-cuda",
        ],
    )
    sac.main()
    ckpt = torch.load(tmp_path / "checkpoints" / f"sac_{DATASET_ID}_seed1.pt", weights_only=False)
    buffer = ckpt["resume"]["buffer"]
    ends = np.flatnonzero(buffer["terminals"] | buffer["timeouts"])
    assert ckpt["env_id"] == DATASET_ID and buffer["observations"].shape == (60, 11) and len(ends) > 0
    assert np.diff(np.concatenate([[-1], ends])).max() <= MAX_EPISODE_STEPS  # the dataset's time limit, not 1000
    logged = scalars(tmp_path / "sac_run")
    returns = np.array([v for _, v in logged["eval/return"]])
    np.testing.assert_allclose(
        [v for _, v in logged["eval/normalized_score"]], 100 * (returns - REF_MIN) / (REF_MAX - REF_MIN), rtol=1e-5
    )


# ---------------------------------------------------------------------------------
# the checkpoint's environment: Minari (Hopper-v5) and D4RL (Hopper-v4) tasks do not mix
# ---------------------------------------------------------------------------------
def test_checkpoint_of_another_environment_is_refused(mods, pretrained, use_root, tmp_path, tiny_hopper_dataset, monkeypatch):
    work, _ = pretrained
    minari_ckpt = work / "checkpoints" / f"cql_{DATASET_ID}_seed1.pt"
    tiny = [
        "--n-ensemble",
        "2",
        "--online-steps",
        "10",
        "--epoch-length",
        "5",
        "--batch-size",
        "8",
        "--ratio-batch-size",
        "8",
        "--eval-episodes",
        "1",
        "--no-cuda",
        "--run-dir",
        tmp_path / "r",
        "--checkpoint",
        tmp_path / "out.pt",
    ]
    message = run_main(
        mods["balanced_finetune"],
        ["--env-id", "hopper-medium-v2", "--dataset-path", tiny_hopper_dataset, "--cql-checkpoint", minari_ckpt, *tiny],
        monkeypatch,
        tmp_path,
    )
    assert (
        f"checkpoint {minari_ckpt} was trained for '{DATASET_ID}', not for --env-id 'hopper-medium-v2' "
        f"(environments Hopper-v5 and Hopper-v4 differ)" in message
    )
    message = run_main(
        mods["fqe"],
        [
            "--env-id",
            "hopper-medium-v2",
            "--dataset-path",
            tiny_hopper_dataset,
            "--policy-checkpoint",
            minari_ckpt,
            "--steps",
            "2",
            "--no-cuda",
            "--checkpoint",
            tmp_path / "fqe.pt",
            "--run-dir",
            tmp_path / "f",
        ],
        monkeypatch,
        tmp_path,
    )
    assert f"policy checkpoint {minari_ckpt} is for '{DATASET_ID}'" in message
    # the other way round: a Hopper-v4 checkpoint is not fine-tuned on the Minari (Hopper-v5) dataset
    d4rl_ckpt = tmp_path / "cql_v4.pt"
    torch.save(dict(torch.load(minari_ckpt, weights_only=False), env_id="hopper-medium-replay-v2"), d4rl_ckpt)
    message = run_main(
        mods["balanced_finetune"], ["--env-id", DATASET_ID, "--cql-checkpoint", d4rl_ckpt, *tiny], monkeypatch, tmp_path
    )
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
def bad_dataset(root, dataset_id, episodes, case):
    """Write the dataset of one bad-input case under root; returns the phrase its error message must contain."""
    if case == "not_cached_and_no_network":  # minari finds no copy and cannot download one
        return f"error: cannot load Minari dataset {dataset_id}: OSError: no network in this test"
    if case == "nan_rewards":
        bad = [dict(e) for e in episodes]
        bad[2] = dict(bad[2], rewards=np.where(np.arange(len(bad[2]["rewards"])) == 1, np.nan, bad[2]["rewards"]))
        write_minari_dataset(root, dataset_id, bad)
        return f"Minari dataset {dataset_id}: episode 2 contains NaN or inf"
    if case == "dims_disagree_with_env":
        wide = [dict(e, observations=np.concatenate([e["observations"], e["observations"][:, :1]], 1)) for e in episodes]
        write_minari_dataset(root, dataset_id, wide, observation_space=gym.spaces.Box(-np.inf, np.inf, (12,)))
        return f"dataset {dataset_id} has observation/action dims 12/3 but Hopper-v5 has 11/3"
    if case == "dict_observations":
        space = gym.spaces.Dict({"x": gym.spaces.Box(-np.inf, np.inf, (11,), np.float64)})
        write_minari_dataset(
            root, dataset_id, [dict(e, observations={"x": e["observations"]}) for e in episodes], observation_space=space
        )
        return f"Minari dataset {dataset_id}: its observation space is Dict("
    data_dir = write_minari_dataset(root, dataset_id, episodes)
    metadata = json.loads((data_dir / "metadata.json").read_text())
    if case == "unknown_env":
        metadata["env_spec"] = metadata["env_spec"].replace('"Hopper-v5"', '"Hopper-v99"')
        (data_dir / "metadata.json").write_text(json.dumps(metadata))
        return "cannot make the environment of"
    if case == "corrupt_metadata":
        (data_dir / "metadata.json").write_text("{truncated")
        return f"error: cannot load Minari dataset {dataset_id}: JSONDecodeError: "
    if case == "no_main_data":
        (data_dir / "main_data.hdf5").unlink()
        return f"error: cannot load Minari dataset {dataset_id}: "
    raise ValueError(case)


def no_network(dataset_id, force_download=False):
    raise OSError("no network in this test")


BAD_CASES = (
    "not_cached_and_no_network",
    "nan_rewards",
    "dims_disagree_with_env",
    "dict_observations",
    "unknown_env",
    "corrupt_metadata",
    "no_main_data",
)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_minari_dataset(case, mods, episodes, tmp_path, monkeypatch):
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    monkeypatch.setattr(minari.storage.hosting, "download_dataset", no_network)
    dataset_id = f"mujoco/hopper/{case.replace('_', '-')}-v0"
    phrase = bad_dataset(root, dataset_id, episodes[:6], case)
    argv = [
        "--env-id",
        dataset_id,
        "--n-ensemble",
        "1",
        "--hidden-dim",
        "8",
        "--batch-size",
        "8",
        "--offline-steps",
        "2",
        "--eval-episodes",
        "1",
        "--checkpoint",
        tmp_path / "out.pt",
        "--run-dir",
        tmp_path / "runs",
        "--no-cuda",
    ]
    message = run_main(mods["cql_pretrain"], argv, monkeypatch, tmp_path)
    assert phrase in message, message
    assert not (tmp_path / "out.pt").exists()


INSTALL = "error: {id} is a Minari dataset id; reading it needs the minari package: pip install 'minari[hdf5]'"


@pytest.mark.parametrize("script", DATASET_SCRIPTS)
def test_every_dataset_script_takes_minari_ids(script, mods, tmp_path, monkeypatch):
    """Each script resolves a Minari id through the shared code: here to the message for minari not installed."""
    monkeypatch.setitem(sys.modules, "minari", None)  # minari not installed: `import minari` raises ImportError
    message = run_main(mods[script], ["--env-id", DATASET_ID, "--no-cuda"], monkeypatch, tmp_path)
    assert message == INSTALL.format(id=DATASET_ID)


@pytest.mark.slow
def test_minari_missing_in_a_real_process(tmp_path):
    """Exit status 1, one 'error:' line with the install command and no traceback (minari hidden from the process)."""
    hide_minari = tmp_path / "no_minari"
    hide_minari.mkdir()
    (hide_minari / "minari.py").write_text("raise ImportError('minari is hidden in this test')\n")
    env = dict(
        os.environ,
        PYTHONHASHSEED="0",
        OMP_NUM_THREADS="1",
        MINARI_DATASETS_PATH=str(tmp_path / "empty"),
        PYTHONPATH=str(hide_minari),
    )
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "balanced_finetune.py"), "--env-id", DATASET_ID, "--no-cuda"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [INSTALL.format(id=DATASET_ID)], proc.stderr[-2000:]
