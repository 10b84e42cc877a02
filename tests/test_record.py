"""benchmark/record.py: a checkpoint's score against an independent evaluation (and the script's own logged one),
the video files (frame count and size), the side-by-side clip, and one-line errors on bad input."""

import os
import re
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO_ROOT, load_script

record = load_script("benchmark/record", "record_under_test")
cql = load_script("cql_pretrain", "cql_for_record_tests")
bcq = load_script("bcq_ft", "bcq_for_record_tests")

SEED, EPISODES = 3, 2
HOPPER_RANDOM, HOPPER_EXPERT = -20.272305, 3234.3  # D4RL's reference returns
COMMON = [
    "--env-id",
    "Hopper-v4",
    "--n-ensemble",
    "2",
    "--hidden-dim",
    "16",
    "--batch-size",
    "32",
    "--seed",
    str(SEED),
    "--no-cuda",
]
TRAIN = {  # a few updates of each script: tiny checkpoints in each script's own format
    "cql": [
        "cql_pretrain.py",
        *COMMON,
        "--offline-steps",
        "20",
        "--log-every",
        "10",
        "--eval-every",
        "20",
        "--eval-episodes",
        str(EPISODES),
        "--checkpoint",
        "cql.pt",
        "--run-dir",
        "runs/cql",
    ],
    "awac": [
        "awac.py",
        *COMMON,
        "--offline-steps",
        "10",
        "--online-steps",
        "0",
        "--log-every",
        "10",
        "--eval-every",
        "10",
        "--eval-episodes",
        "1",
        "--save-checkpoint",
        "awac.pt",
        "--run-dir",
        "runs/awac",
    ],
    "bcq": [
        "bcq_ft.py",
        *COMMON,
        "--offline-steps",
        "10",
        "--online-steps",
        "0",
        "--log-every",
        "10",
        "--eval-every",
        "10",
        "--eval-episodes",
        "1",
        "--save-checkpoint",
        "bcq.pt",
        "--run-dir",
        "runs/bcq",
    ],
    "sac": [
        "sac.py",
        "--env-id",
        "Hopper-v4",
        "--hidden-dim",
        "16",
        "--batch-size",
        "32",
        "--seed",
        str(SEED),
        "--no-cuda",
        "--total-timesteps",
        "150",
        "--learning-starts",
        "100",
        "--eval-every",
        "150",
        "--eval-episodes",
        "1",
        "--checkpoint",
        "sac.pt",
        "--run-dir",
        "runs/sac",
    ],
}


def env_vars(**extra) -> dict:
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_hopper_dataset):
    """{algo: checkpoint path}: the four trainings run at the same time (each one thread)."""
    root = tmp_path_factory.mktemp("record")
    procs = {}
    for algo, (script, *args) in TRAIN.items():
        data = [] if algo == "sac" else ["--dataset-path", str(tiny_hopper_dataset)]
        with open(root / f"{algo}.log", "w") as log:  # a file, not a pipe: nothing blocks on a full pipe
            procs[algo] = subprocess.Popen(
                [sys.executable, str(REPO_ROOT / script), *args, *data],
                cwd=root,
                env=env_vars(),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
    for algo, proc in procs.items():
        assert proc.wait(timeout=300) == 0, f"{algo}: {(root / f'{algo}.log').read_text()[-2000:]}"
    return {algo: root / f"{algo}.pt" for algo in TRAIN}


def run_record(*args, cwd, **extra_env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmark" / "record.py"), *map(str, args)],
        cwd=cwd,
        env=env_vars(**extra_env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def printed(stdout: str, prefix: str = "") -> tuple[list[str], str, str]:
    """(per-episode returns, mean return, normalized score) as record.py printed them."""
    episodes = re.findall(rf"^{re.escape(prefix)}episode \d+ \(reset seed \d+\): return (-?[\d.]+), ", stdout, re.M)
    mean, score = re.search(
        rf"^{re.escape(prefix)}mean return (-?[\d.]+) ± [\d.]+ over \d+ episodes, normalized score "
        r"(-?[\d.]+) ",
        stdout,
        re.M,
    ).groups()
    return episodes, mean, score


# ---------------------------------------------------------------------------------
# an evaluation written here from the checkpoint's tensors (no code of record.py)
# ---------------------------------------------------------------------------------
def independent_policy(path, n_members=None):
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    obs_dim, act_dim, n = ckpt["obs_dim"], ckpt["act_dim"], n_members or ckpt["n_ensemble"]
    if ckpt["algo"] == "bcq":  # bcq_ft.py's own action selection, with its own networks
        vae = bcq.EnsembleVAE(obs_dim, act_dim, ckpt["latent_dim"], ckpt["vae_hidden_sizes"], n)
        actor = bcq.EnsemblePerturbation(obs_dim, act_dim, ckpt["actor_hidden_sizes"], n, ckpt["phi"])
        critic = bcq.EnsembleCritic(obs_dim, act_dim, ckpt["hidden_sizes"], n)
        vae.load_state_dict(ckpt["vae"])
        actor.load_state_dict(ckpt["actor"])
        critic.load_state_dict(ckpt["critic"])
        return lambda obs: bcq.bcq_select_action(vae, actor, critic, obs, ckpt["args"]["n_act_candidates"])[0]
    actor = cql.EnsembleActor(obs_dim, act_dim, ckpt["hidden_sizes"], n)
    actor.load_state_dict({key: value[:n] for key, value in ckpt["actor"].items()})
    # eq. (5): the mixture's mean is the members' mean of mu; the deterministic action is its tanh
    return lambda obs: torch.tanh(actor(obs.expand(n, -1, -1))[0].mean(0))[0]


@torch.no_grad()
def independent_returns(path, seed=SEED, episodes=EPISODES, n_members=None):
    policy = independent_policy(path, n_members)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gym.make("Hopper-v4")
    returns, lengths = [], []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + 10_000 + k)
        total, steps, done = 0.0, 0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(torch.tensor(obs, dtype=torch.float32)[None]).numpy())
            total, steps, done = total + float(reward), steps + 1, terminated or truncated
        returns.append(total)
        lengths.append(steps)
    return np.array(returns), lengths


def normalized(episode_return):
    return 100 * (episode_return - HOPPER_RANDOM) / (HOPPER_EXPERT - HOPPER_RANDOM)


# ---------------------------------------------------------------------------------
# scores
# ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("algo", ["cql", "awac", "sac", "bcq"])
def test_score_matches_an_independent_evaluation(trained, algo, capsys):
    record.main([str(trained[algo]), "--episodes", str(EPISODES), "--seed", str(SEED)])
    episodes, mean, score = printed(capsys.readouterr().out)
    returns, _ = independent_returns(trained[algo])
    assert episodes == [f"{r:.1f}" for r in returns]
    assert (mean, score) == (f"{returns.mean():.1f}", f"{normalized(returns.mean()):.1f}")


@pytest.mark.slow
def test_score_is_the_one_the_script_logged_and_members_can_be_sliced(trained, capsys):
    """cql_pretrain.py's final evaluation (eq. 5 policy, start states seed + 10000 + k) is what record.py reproduces."""
    events = EventAccumulator(str(trained["cql"].parent / "runs" / "cql"))
    events.Reload()
    logged = events.Scalars("eval/return")[-1].value
    record.main([str(trained["cql"]), "--episodes", str(EPISODES), "--seed", str(SEED), "--env-id", "hopper-medium-v2"])
    _, mean, _ = printed(capsys.readouterr().out)
    assert float(mean) == pytest.approx(logged, abs=0.051)
    record.main([str(trained["cql"]), "--episodes", "1", "--seed", "5", "--n-ensemble", "1"])
    episodes, _, _ = printed(capsys.readouterr().out)
    assert episodes == [f"{independent_returns(trained['cql'], seed=5, episodes=1, n_members=1)[0][0]:.1f}"]


# ---------------------------------------------------------------------------------
# videos
# ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_video_files_have_every_kth_frame_at_the_chosen_size(trained, tmp_path):
    import imageio_ffmpeg

    result = run_record(
        trained["cql"],
        "--episodes",
        EPISODES,
        "--seed",
        SEED,
        "--video",
        "--video-episodes",
        1,
        "--formats",
        "gif",
        "mp4",
        "png",
        "--size",
        64,
        "--frame-every",
        2,
        "--out-dir",
        "videos",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    returns, lengths = independent_returns(trained["cql"])
    episodes, _, _ = printed(result.stdout)
    assert episodes == [f"{r:.1f}" for r in returns]  # rendering does not change the episodes
    n_frames = lengths[0] // 2 + 1  # the reset state and every 2nd step
    videos = tmp_path / "videos"
    assert sorted(os.listdir(videos)) == ["cql_ep0.gif", "cql_ep0.mp4", "cql_ep0_strip.png"]  # only episode 0
    gif = Image.open(videos / "cql_ep0.gif")
    assert (gif.n_frames, gif.size) == (n_frames, (64, 64))
    gif.seek(n_frames // 2)
    assert np.asarray(gif.convert("RGB")).std() > 5  # a picture, not a blank frame
    assert imageio_ffmpeg.count_frames_and_secs(str(videos / "cql_ep0.mp4"))[0] == n_frames
    reader = imageio_ffmpeg.read_frames(str(videos / "cql_ep0.mp4"))
    assert next(reader)["size"] == (64, 64)
    reader.close()
    columns = len(np.unique(np.linspace(0, n_frames - 1, 6).round()))
    assert Image.open(videos / "cql_ep0_strip.png").size[0] == 64 * columns + 2 * (columns - 1)
    assert f"wrote videos{os.sep}cql_ep0.gif" in result.stdout  # paths as given, not made absolute


@pytest.mark.slow
def test_side_by_side_clip_holds_both_policies(trained, tmp_path):
    result = run_record(
        "--side-by-side",
        trained["cql"],
        trained["sac"],
        "--labels",
        "CQL",
        "SAC",
        "--episodes",
        1,
        "--seed",
        SEED,
        "--formats",
        "gif",
        "png",
        "--size",
        64,
        "--frame-every",
        2,
        "--name",
        "before_after",
        "--out-dir",
        "figures",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lengths = [independent_returns(trained[algo], episodes=1)[1][0] for algo in ("cql", "sac")]
    for label, algo in (("CQL", "cql"), ("SAC", "sac")):
        _, mean, _ = printed(result.stdout, f"{label}: ")
        assert mean == f"{independent_returns(trained[algo], episodes=1)[0][0]:.1f}"
    gif = Image.open(tmp_path / "figures" / "before_after.gif")
    bar = max(36, 64 // 6)  # the label bar above the frames
    assert (gif.n_frames, gif.size) == (max(lengths) // 2 + 1, (2 * 64 + 4, 64 + bar))
    assert (tmp_path / "figures" / "before_after_strip.png").stat().st_size > 1000


# ---------------------------------------------------------------------------------
# errors: one line, exit status != 0
# ---------------------------------------------------------------------------------
def assert_one_error_line(result, *fragments):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.slow
def test_rendering_impossible_is_one_line(trained, tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmark" / "record.py"),
            str(trained["cql"]),
            "--video",
            "--episodes",
            "1",
            "--out-dir",
            str(tmp_path / "v"),
        ],
        capture_output=True,
        text=True,
        env=dict(env, MUJOCO_GL="glfw", OMP_NUM_THREADS="1"),
        timeout=300,
    )  # glfw: needs a display
    assert_one_error_line(result, "cannot render Hopper-v4 (MUJOCO_GL=glfw)", "MUJOCO_GL=osmesa")


def test_missing_video_library_is_one_line(tmp_path):
    stub = tmp_path / "stub" / "imageio_ffmpeg"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('not installed')\n")
    result = run_record(tmp_path / "any.pt", "--video", "--formats", "mp4", cwd=tmp_path, PYTHONPATH=str(stub.parent))
    assert_one_error_line(result, "pip install imageio-ffmpeg")


def test_missing_checkpoint_is_one_line(tmp_path):
    assert_one_error_line(run_record("nope.pt", cwd=tmp_path), "checkpoint nope.pt does not exist")


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["{cql}", "--env-id", "HalfCheetah-v4"],
            "was trained for 'Hopper-v4' (Hopper-v4), not for --env-id 'HalfCheetah-v4'",
        ),
        (["{cql}", "--env-id", "walker2d-medium-v2"], "not for --env-id 'walker2d-medium-v2' (Walker2d-v4)"),
        (["{cql}", "--env-id", "NoSuchEnv-v0"], "unknown --env-id 'NoSuchEnv-v0'"),
        (["{cql}", "--n-ensemble", "3"], "--n-ensemble 3 but checkpoint"),
        (["{text}"], "not a file written by torch.save"),
        (["{cql}", "--episodes", "0"], "--episodes must be at least 1"),
        (["--side-by-side", "{cql}"], "two or more"),
        (["{cql}", "--side-by-side", "{cql}", "{sac}"], "give one checkpoint, or --side-by-side"),
        (["--side-by-side", "{cql}", "{sac}", "--labels", "one"], "--labels has 1 label(s) for 2 checkpoint(s)"),
    ],
)
def test_bad_input_stops_with_one_message(trained, tmp_path, args, message):
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    paths = {"cql": trained["cql"], "sac": trained["sac"], "text": tmp_path / "notes.txt"}
    with pytest.raises(SystemExit) as stop:
        record.main([arg.format(**paths) for arg in args])
    text = str(stop.value.code)
    assert text.startswith("error: ") and "\n" not in text and message in text, text
