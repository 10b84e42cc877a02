"""--track (Weights & Biases, offline here: no network) and --capture-video (evaluation episodes as MP4): the run's
config and TensorBoard scalars reach the offline W&B run, a missing wandb is one error line, videos are written at the
chosen evaluations with frames of the chosen size, and rendering changes no logged number."""

import glob
import os
import struct
import sys

import pytest

from conftest import load_script, run_main, scalars, write_d4rl_file

HOPPER = ["--env-id", "Hopper-v4", "--no-cuda", "--hidden-dim", "16", "--batch-size", "8", "--eval-episodes", "1"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, tiny_hopper_dataset):
    import h5py

    with h5py.File(tiny_hopper_dataset, "r") as f:
        arrays = {key: f[key][:300] for key in f}
    return write_d4rl_file(tmp_path_factory.mktemp("data") / "small.hdf5", **arrays)


def cql_argv(data, tmp_path, name, steps=20):
    return [
        *HOPPER,
        "--dataset-path",
        data,
        "--n-ensemble",
        "1",
        "--offline-steps",
        steps,
        "--log-every",
        "5",
        "--eval-every",
        "5",
        "--run-dir",
        tmp_path / "runs" / name,
        "--checkpoint",
        tmp_path / f"{name}.pt",
    ]


def wandb_records(path):
    """The protobuf Records of a .wandb file (LevelDB log format: a 7-byte file header, then 32 KiB blocks of chunks,
    each with a 7-byte header: crc32, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, chunks = open(path, "rb").read(), 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the zero padding at the end of a block
            pos += left
            continue
        chunks, pos = chunks + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            yield record
            chunks = b""


def test_track_offline_run_holds_the_config_and_the_tensorboard_scalars(run_script, small_data, tmp_path):
    pytest.importorskip("wandb")
    result = run_script(
        "cql_pretrain.py",
        *cql_argv(small_data, tmp_path, "tracked", steps=10),
        "--seed",
        "7",
        "--track",
        "--wandb-project-name",
        "o2o-test",
        env_vars={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_file,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "*.wandb"))
    records = list(wandb_records(run_file))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: item.value_json for item in run.config.update}
    assert (run.project, run.display_name, config["seed"], config["offline_steps"]) == ("o2o-test", "tracked", "7", "10")
    synced = {}  # global_step -> {tag: value} of every history row wandb made from the TensorBoard events
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): float(item.value_json) for item in r.history.item}
            synced[int(row["global_step"])] = row
    logged = scalars(tmp_path / "runs" / "tracked")
    assert set(synced) == {5, 10} and "eval/return" in logged
    for tag, points in logged.items():
        for step, value in points:
            assert synced[step][tag] == pytest.approx(value, rel=1e-6), (tag, step)


def test_track_without_wandb_is_one_error_line(small_data, tmp_path, monkeypatch):
    cql = load_script("cql_pretrain", "tracking_cql_pretrain")
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError, as when it is not installed
    message = run_main(cql, [*cql_argv(small_data, tmp_path, "untracked", steps=2), "--track"], monkeypatch, tmp_path)
    assert message == "error: --track needs Weights & Biases: pip install wandb"


def video_frames(path):
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return meta["size"], sum(1 for _ in reader)


@pytest.mark.parametrize("script", ["cql_pretrain", "sac"])  # evaluate_members (lockstep envs) and evaluate
def test_capture_video_writes_chosen_evaluations_and_changes_no_number(script, small_data, tmp_path, monkeypatch):
    pytest.importorskip("imageio_ffmpeg")
    monkeypatch.setenv("MUJOCO_GL", os.environ.get("MUJOCO_GL", "egl"))  # the scripts set it when unset
    mod = load_script(script, f"videos_{script}")

    def run(name, *extra):
        if script == "sac":  # evaluations at env steps 20, 40, 60 and 80
            argv = [
                *HOPPER,
                "--total-timesteps",
                "80",
                "--learning-starts",
                "20",
                "--log-every",
                "10",
                "--eval-every",
                "20",
                "--run-dir",
                tmp_path / "runs" / name,
                "--checkpoint",
                tmp_path / f"{name}.pt",
            ]
        else:  # evaluations at updates 5, 10, 15 and 20
            argv = cql_argv(small_data, tmp_path, name)
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "argv", [f"{script}.py", *map(str, [*argv, *extra])])
        mod.main()
        return scalars(tmp_path / "runs" / name)

    plain = run("plain")
    filmed = run("filmed", "--capture-video", "--video-every-evals", "3")
    assert filmed == plain  # same seed: every logged value identical, videos or not
    steps = [20, 40, 60, 80] if script == "sac" else [5, 10, 15, 20]
    videos = tmp_path / "runs" / "filmed" / "videos"
    # evaluations 1 (the first), 3 (every 3rd) and 4 (the last)
    assert sorted(os.listdir(videos)) == sorted(f"step{steps[i]}.mp4" for i in (0, 2, 3))
    size, n_frames = video_frames(videos / f"step{steps[0]}.mp4")
    assert size == (mod.VIDEO_SIZE, mod.VIDEO_SIZE) and n_frames >= 2
    assert not (tmp_path / "runs" / "plain" / "videos").exists()
