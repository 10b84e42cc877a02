"""benchmark/record.py: evaluate a checkpoint of this project and record its episodes, without training.

Takes a checkpoint of cql_pretrain.py, balanced_finetune.py, awac.py, sac.py (its checkpoints and --snapshot-dir
snapshots), fqe.py (the policy whose critics it fitted) or bcq_ft.py, runs the policy the script itself evaluates,
and prints the mean return and the D4RL normalized score:
  * ensembles (cql, balanced, awac, sac, fqe): the deterministic action tanh(mu) of eq. (5)'s mixture of the N
    members (balanced_finetune.ensemble_policy); for N = 1 (sac, SAC-ft) that is the member's tanh(mu);
  * bcq: bcq_ft.bcq_select_action, the best of the perturbed VAE candidates by the members' mean Q1 (the VAE
    samples its latents: torch is seeded with --seed).
Episode k starts from reset seed --seed + 10000 + k, the start states cql_pretrain.py, awac.py, bcq_ft.py and sac.py
evaluate on: with a run's --seed, the score is the one its final evaluation logged (up to float rounding of
batched vs. one-state forward passes; bcq also up to its sampled latents).

--video renders the episodes (gymnasium render_mode="rgb_array" through the model's "track" camera, which follows
the agent as gymnasium 1.x's default free camera does not; one frame every --frame-every env steps) and writes
them under --out-dir as <checkpoint stem>_ep<k>.gif / .mp4, and with png a strip of --strip-frames frames.
--side-by-side A.pt B.pt ... runs episode 0 of each policy and writes one GIF/MP4/PNG of the policies next to each
other, labelled with --labels and each episode's normalized score (a policy whose episode ended first holds its
last frame, darkened). A clip has (steps // --frame-every) + 1 frames: the reset state and every k-th step.

    python benchmark/record.py checkpoints/cql_hopper-medium-v2_seed1.pt --episodes 10
    python benchmark/record.py CKPT.pt --env-id hopper-medium-v2 --episodes 2 --video --formats gif mp4 png
    P=benchmark/results/evidence/pretrained
    python benchmark/record.py --side-by-side $P/cql_hopper-medium-replay_N5.pt checkpoints/balanced.pt \\
        --labels "CQL (offline)" "fine-tuned" --formats gif png --out-dir figures

Rendering needs no display: MuJoCo renders off-screen with EGL (MUJOCO_GL=egl, set here when unset; needs libEGL,
e.g. apt install libegl1, Mesa's software renderer is enough) or OSMesa (MUJOCO_GL=osmesa, apt install
libosmesa6). GIF needs Pillow (installed with matplotlib); MP4 needs imageio-ffmpeg (pip install imageio-ffmpeg,
which brings its own ffmpeg). Both are imported only when that format is written.
"""

import argparse
import functools
import importlib.util
import os
import warnings

import gymnasium as gym
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENSEMBLE_ALGOS = ("cql", "balanced", "awac", "sac", "sac-snapshot", "fqe")
FORMATS = ("gif", "mp4", "png")
TARGET_FPS = 25  # default frame rate of a clip: --frame-every = round(render fps / 25), Hopper's 125 fps -> every 5th
LABEL_COLOUR, ENDED_COLOUR = (255, 255, 255), (255, 200, 90)


def fail(message: str):
    raise SystemExit(f"error: {message}")


def load_script(name: str):
    """A script of the repository as a module (its networks, loaders, env and score helpers); main() does not run."""
    spec = importlib.util.spec_from_file_location(f"record_{name}", os.path.join(ROOT, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- checkpoints -> policies ----
def read_checkpoint(path: str, env_id: str | None, scripts: dict) -> dict:
    """The checked checkpoint dict (loaded as the scripts load them: tensors and plain values only)."""
    bf = scripts["balanced_finetune"]
    ckpt = bf.load_checkpoint(path, "checkpoint")  # fails with one line on a missing or foreign file
    if not isinstance(ckpt, dict) or ckpt.get("format") != bf.CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        fail(f"checkpoint {path} has format {found!r}, expected {bf.CHECKPOINT_FORMAT!r}")
    algo = ckpt.get("algo")
    if algo not in (*ENSEMBLE_ALGOS, "bcq"):
        fail(f"checkpoint {path} has algo {algo!r}: record.py evaluates {', '.join((*ENSEMBLE_ALGOS, 'bcq'))}")
    needed = ["env_id", "obs_dim", "act_dim", "n_ensemble", "hidden_sizes", "actor"]
    needed += ["critic", "vae", "latent_dim", "actor_hidden_sizes", "vae_hidden_sizes", "phi"] if algo == "bcq" else []
    missing = [key for key in needed if key not in ckpt]
    if missing:
        fail(f"checkpoint {path} lacks field(s) {', '.join(missing)}")
    # the same environment: the same gymnasium id and version (equal names need no lookup)
    if env_id is not None and env_id != ckpt["env_id"] and bf.gym_env_id(env_id) != bf.gym_env_id(ckpt["env_id"]):
        fail(
            f"checkpoint {path} was trained for {ckpt['env_id']!r} ({bf.gym_env_id(ckpt['env_id'])}), not for "
            f"--env-id {env_id!r} ({bf.gym_env_id(env_id)})"
        )
    return ckpt


def sliced(state: dict, rows: int) -> dict:
    return {key: value[:rows] for key, value in state.items()}


def load_into(module: torch.nn.Module, state: dict, what: str, path: str):
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        fail(f"checkpoint {path}: its {what} does not fit the network ({str(err).splitlines()[0]} ...)")


def make_policy(path: str, ckpt: dict, n_members: int | None, scripts: dict):
    """(policy: obs [1, S] -> action [1, A], number of members used) for the checkpoint's algorithm."""
    obs_dim, act_dim, n_stored = ckpt["obs_dim"], ckpt["act_dim"], int(ckpt["n_ensemble"])
    k = n_stored if n_members is None else n_members
    if not 1 <= k <= n_stored:
        fail(f"--n-ensemble {k} but checkpoint {path} holds {n_stored} member(s)")
    if ckpt["algo"] == "bcq":
        bcq = scripts["bcq_ft"]
        vae = bcq.EnsembleVAE(obs_dim, act_dim, ckpt["latent_dim"], ckpt["vae_hidden_sizes"], k)
        actor = bcq.EnsemblePerturbation(obs_dim, act_dim, ckpt["actor_hidden_sizes"], k, ckpt["phi"])
        critic = bcq.EnsembleCritic(obs_dim, act_dim, ckpt["hidden_sizes"], k)
        for net, what, rows in ((vae, "vae", k), (actor, "actor", k), (critic, "critic", 2 * k)):
            load_into(net, sliced(ckpt[what], rows), what, path)
        n_candidates = int((ckpt.get("args") or {}).get("n_act_candidates", 100))
        return (lambda obs: bcq.bcq_select_action(vae, actor, critic, obs, n_candidates)), k
    bf = scripts["balanced_finetune"]
    hidden = ckpt.get("policy_hidden_sizes", ckpt["hidden_sizes"]) if ckpt["algo"] == "fqe" else ckpt["hidden_sizes"]
    actor = bf.EnsembleActor(obs_dim, act_dim, hidden, k)
    load_into(actor, sliced(ckpt["actor"], k), "actor", path)
    return (lambda obs: torch.tanh(bf.ensemble_policy(actor, obs, k)[0])), k


# ---- environments and episodes ----
def make_envs(env_id: str, seed: int, render_size: int | None, scripts: dict):
    """(the env the scripts evaluate in, the same env rendering rgb_array frames of render_size or None)."""
    bf = scripts["balanced_finetune"]
    env = bf.make_env(env_id, seed)
    if render_size is None:
        return env, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # env.spec: the id, kwargs, time limit and wrappers of the env the scripts make
            render_env = gym.make(
                env.spec, render_mode="rgb_array", width=render_size, height=render_size, camera_name="track"
            )
            render_env.reset(seed=seed)
            frame = render_env.render()
    except Exception as err:  # no GL library, no EGL device, no display for glfw, an env that cannot render
        fail(
            f"cannot render {env.spec.id} (MUJOCO_GL={os.environ.get('MUJOCO_GL', '')}): "
            f"{(str(err).strip() or type(err).__name__).splitlines()[0]}; headless MuJoCo needs EGL "
            f"(apt install libegl1) or OSMesa (MUJOCO_GL=osmesa, apt install libosmesa6)"
        )
    if not isinstance(frame, np.ndarray) or frame.ndim != 3:
        fail(f"{env.spec.id} renders no rgb_array frames")
    return env, render_env


@torch.no_grad()
def run_episode(env, policy, reset_seed: int, frame_every: int | None):
    """(return, steps, frames): frames [H, W, 3] uint8 of the reset state and of every frame_every-th step."""
    obs, _ = env.reset(seed=reset_seed)
    frames = [env.render()] if frame_every else []
    episode_return, steps, done = 0.0, 0, False
    while not done:
        action = policy(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))[0].numpy()
        obs, reward, terminated, truncated, _ = env.step(action)
        episode_return += float(reward)
        steps += 1
        done = terminated or truncated
        if frame_every and steps % frame_every == 0:
            frames.append(env.render())
    return episode_return, steps, frames


# ---- images and video files ----
@functools.cache
def default_font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one small bitmap font
        return ImageFont.load_default()


def fitting_font(draw, text: str, width: int, size: int):
    """Pillow's default font at the largest size <= `size` whose rendering of `text` fits `width` pixels."""
    while size > 8 and draw.textlength(text, font=default_font(size)) > width:
        size -= 1
    return default_font(size)


def labelled(frame: np.ndarray, lines: list[str], bar: int, colours: list | None = None, dim: bool = False) -> np.ndarray:
    """The frame (darkened with dim) under a black bar of height `bar` holding the text lines, each fitted to the
    frame's width."""
    from PIL import Image, ImageDraw

    height, width = frame.shape[:2]
    image = Image.new("RGB", (width, height + bar))
    image.paste(Image.fromarray((frame * 0.5).astype(np.uint8) if dim else frame), (0, bar))
    draw = ImageDraw.Draw(image)
    line_height = bar // len(lines)
    for i, text in enumerate(lines):
        font = fitting_font(draw, text, width - 10, line_height - 4)
        draw.text((5, i * line_height + 2), text, fill=(colours or [LABEL_COLOUR] * len(lines))[i], font=font)
    return np.asarray(image)


def side_by_side(panels: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Panels of equal height next to each other, `gap` grey pixels apart."""
    spacer = np.full((panels[0].shape[0], gap, 3), 128, dtype=np.uint8)
    return np.concatenate([part for panel in panels for part in (spacer, panel)][1:], axis=1)


def even(frame: np.ndarray) -> np.ndarray:
    """Pad to even width and height (H.264 in yuv420p needs them)."""
    height, width = frame.shape[:2]
    return np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)))


def video_library(fmt: str):
    """The optional library writing `fmt` (imported only when needed), or one line saying how to install it."""
    try:
        if fmt == "mp4":
            import imageio_ffmpeg

            return imageio_ffmpeg
        import PIL.Image

        return PIL
    except ImportError:
        fail(
            "writing MP4 needs imageio-ffmpeg: pip install imageio-ffmpeg (or use --formats gif)"
            if fmt == "mp4"
            else f"writing {fmt.upper()} needs Pillow: pip install pillow"
        )


def write_gif(frames: list, path: str, fps: float):
    Image = video_library("gif").Image
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def write_mp4(frames: list, path: str, fps: float):
    imageio_ffmpeg = video_library("mp4")
    height, width = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(
        path,
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        macro_block_size=1,
        output_params=["-loglevel", "error"],
    )
    writer.send(None)  # start ffmpeg
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def strip(clips: list[list], steps: list[int], frame_every: int, labels: list[str], n_columns: int) -> np.ndarray:
    """A grid image: one row per clip under its label, n_columns frames evenly spaced over the longest clip, each
    marked with its env step; a clip that ended shows its last frame, darkened."""
    longest = max(len(frames) for frames in clips)
    picks = np.unique(np.linspace(0, longest - 1, n_columns).round().astype(int))
    cell_bar = max(16, clips[0][0].shape[0] // 12)
    rows = []
    for frames, ended_at, label in zip(clips, steps, labels):
        cells = [
            labelled(frames[i], [f"step {i * frame_every}"], cell_bar)
            if i < len(frames)
            else labelled(frames[-1], [f"ended at step {ended_at}"], cell_bar, [ENDED_COLOUR], dim=True)
            for i in picks
        ]
        rows.append(labelled(side_by_side(cells, 2), [label], 2 * cell_bar))
    return np.concatenate(rows, axis=0)


def write_clip(frames: list, stem: str, formats: list[str], fps: float, strip_image=None) -> list[str]:
    paths = []
    for fmt in formats:
        path = f"{stem}.{fmt}" if fmt != "png" else f"{stem}_strip.png"
        if fmt == "gif":
            write_gif(frames, path, fps)
        elif fmt == "mp4":
            write_mp4([even(frame) for frame in frames], path, fps)
        else:
            from PIL import Image

            Image.fromarray(strip_image).save(path)
        paths.append(path)
    return paths


# ---- evaluation and the two outputs ----
def evaluate_checkpoint(path: str, args, scripts: dict, render: bool, video_episodes: int) -> dict:
    """Evaluate one checkpoint over --episodes episodes, rendering the first video_episodes when render."""
    ckpt = read_checkpoint(path, args.env_id, scripts)
    env_id = args.env_id or ckpt["env_id"]
    policy, k = make_policy(path, ckpt, args.n_ensemble, scripts)
    env, render_env = make_envs(env_id, args.seed + 10_000, args.size if render else None, scripts)
    if (env.observation_space.shape[0], env.action_space.shape[0]) != (ckpt["obs_dim"], ckpt["act_dim"]):
        fail(
            f"checkpoint {path} has observation/action dims {ckpt['obs_dim']}/{ckpt['act_dim']} but "
            f"{env.spec.id} has {env.observation_space.shape[0]}/{env.action_space.shape[0]}"
        )
    render_fps = env.metadata.get("render_fps") or TARGET_FPS
    frame_every = args.frame_every or max(1, round(render_fps / TARGET_FPS))
    torch.manual_seed(args.seed)  # bcq's VAE latents; the ensemble policies draw nothing
    returns, steps, clips = [], [], []
    for episode in range(args.episodes):
        recorded = render_env is not None and episode < video_episodes
        episode_return, n_steps, frames = run_episode(
            render_env if recorded else env, policy, args.seed + 10_000 + episode, frame_every if recorded else None
        )
        returns.append(episode_return)
        steps.append(n_steps)
        if recorded:
            clips.append(frames)
    scores = [scripts["balanced_finetune"].normalized_score(env_id, r) for r in [*returns, np.mean(returns)]]
    return {
        "path": path,
        "env_id": env_id,
        "gym_id": env.spec.id,
        "returns": np.array(returns),
        "steps": steps,
        "scores": scores[:-1],
        "score": scores[-1],
        "clips": clips,
        "frame_every": frame_every,
        "fps": render_fps / frame_every,
        "description": f"{ckpt['algo']}, N={k}" + (f", step {ckpt['step']}" if "step" in ckpt else ""),
    }


def score_text(score: float) -> str:
    return "n/a (no reference returns)" if np.isnan(score) else f"{score:.1f}"


def report(result: dict, seed: int, prefix: str = ""):
    for k, (episode_return, n_steps, score) in enumerate(zip(result["returns"], result["steps"], result["scores"])):
        print(
            f"{prefix}episode {k} (reset seed {seed + 10_000 + k}): return {episode_return:.1f}, {n_steps} steps, "
            f"normalized score {score_text(score)}"
        )
    returns = result["returns"]
    print(
        f"{prefix}mean return {returns.mean():.1f} ± {returns.std():.1f} over {len(returns)} episodes, "
        f"normalized score {score_text(result['score'])} ({result['description']}, {result['env_id']})"
    )


def write_episodes(result: dict, label: str, args) -> None:
    """<out-dir>/<checkpoint stem>_ep<k>.<format> for every recorded episode."""
    stem = os.path.join(args.out_dir, os.path.splitext(os.path.basename(result["path"]))[0])
    for k, frames in enumerate(result["clips"]):
        text = f"{label}, episode {k}: score {score_text(result['scores'][k])}"
        image = None
        if "png" in args.formats:
            image = strip([frames], result["steps"][k : k + 1], result["frame_every"], [text], args.strip_frames)
        paths = write_clip(frames, f"{stem}_ep{k}", args.formats, result["fps"], image)
        print(
            f"wrote {', '.join(paths)} ({len(frames)} frames of {frames[0].shape[1]}x{frames[0].shape[0]}, "
            f"{result['fps']:g} fps)"
        )


def write_side_by_side(results: list, labels: list, args) -> None:
    """One clip of every policy's episode 0 next to each other, each under its label, the env step and its
    episode's normalized score (and a strip with png)."""
    if len({result["gym_id"] for result in results}) > 1:
        fail(
            f"--side-by-side checkpoints are for different environments: "
            f"{', '.join(sorted({result['gym_id'] for result in results}))}"
        )
    clips = [result["clips"][0] for result in results]
    steps = [result["steps"][0] for result in results]
    scores = [score_text(result["scores"][0]) for result in results]
    frame_every, bar = results[0]["frame_every"], max(36, args.size // 6)
    composed = []
    for t in range(max(len(frames) for frames in clips)):
        panels = []
        for frames, label, score, ended_at in zip(clips, labels, scores, steps):
            if t < len(frames):
                panels.append(labelled(frames[t], [label, f"step {t * frame_every}, score {score}"], bar))
            else:  # this episode is over: its last frame, darkened
                panels.append(
                    labelled(
                        frames[-1],
                        [label, f"ended at step {ended_at}, score {score}"],
                        bar,
                        [LABEL_COLOUR, ENDED_COLOUR],
                        dim=True,
                    )
                )
        composed.append(side_by_side(panels))
    image = None
    if "png" in args.formats:
        image = strip(
            clips, steps, frame_every, [f"{label}: score {score}" for label, score in zip(labels, scores)], args.strip_frames
        )
    paths = write_clip(composed, os.path.join(args.out_dir, args.name), args.formats, results[0]["fps"], image)
    print(
        f"wrote {', '.join(paths)} ({len(composed)} frames of {composed[0].shape[1]}x{composed[0].shape[0]}, "
        f"{results[0]['fps']:g} fps)"
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("checkpoint", nargs="?", help="checkpoint to evaluate (not with --side-by-side)")
    parser.add_argument("--side-by-side", nargs="+", metavar="CKPT", help="two or more checkpoints, one clip")
    parser.add_argument("--labels", nargs="+", help="their labels (default: file name and algorithm)")
    parser.add_argument("--env-id", help="environment, as the scripts take it (default: the checkpoint's env_id)")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes per checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="episode k starts from reset seed SEED + 10000 + k")
    parser.add_argument("--n-ensemble", type=int, help="evaluate the first K members only (default: all)")
    parser.add_argument("--video", action="store_true", help="render the episodes and write them to --out-dir")
    parser.add_argument("--video-episodes", type=int, help="record only the first K episodes (default: all)")
    parser.add_argument(
        "--formats",
        nargs="+",
        choices=FORMATS,
        default=["gif"],
        help="gif (Pillow), mp4 (imageio-ffmpeg), png (a strip of frames)",
    )
    parser.add_argument("--out-dir", default="videos", help="folder for the clips")
    parser.add_argument("--name", default="side_by_side", help="file stem of the --side-by-side clip")
    parser.add_argument("--size", type=int, default=240, help="rendered frame width and height in pixels")
    parser.add_argument("--frame-every", type=int, help="keep every K-th env step (default: about 25 frames/s)")
    parser.add_argument("--strip-frames", type=int, default=6, help="frames per row of a png strip")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.side_by_side is None):
        fail("give one checkpoint, or --side-by-side with two or more")
    if args.side_by_side is not None and len(args.side_by_side) < 2:
        fail("--side-by-side takes two or more checkpoints")
    if args.labels is not None and len(args.labels) != len(args.side_by_side or [args.checkpoint]):
        fail(f"--labels has {len(args.labels)} label(s) for {len(args.side_by_side or [args.checkpoint])} checkpoint(s)")
    for name in ("episodes", "size", "strip_frames", "frame_every", "n_ensemble", "video_episodes"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "video_episodes" else 1):
            fail(f"--{name.replace('_', '-')} must be at least {0 if name == 'video_episodes' else 1}")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    side_by_side = args.side_by_side is not None
    render = args.video or side_by_side
    if render:
        os.environ.setdefault("MUJOCO_GL", "egl")  # off-screen rendering, no display; read when a renderer starts
        for fmt in args.formats:  # a missing video library fails before any episode runs
            video_library(fmt)
        try:
            os.makedirs(args.out_dir, exist_ok=True)
        except OSError as err:
            fail(f"cannot create --out-dir {args.out_dir}: {err}")
    scripts = {"balanced_finetune": load_script("balanced_finetune"), "bcq_ft": load_script("bcq_ft")}
    checkpoints = args.side_by_side or [args.checkpoint]
    video_episodes = 1 if side_by_side else args.episodes if args.video_episodes is None else args.video_episodes
    results, labels = [], []
    for i, path in enumerate(checkpoints):
        result = evaluate_checkpoint(path, args, scripts, render, video_episodes)
        label = (
            args.labels[i]
            if args.labels
            else f"{os.path.splitext(os.path.basename(path))[0]} ({result['description'].split(',')[0]})"
        )
        report(result, args.seed, f"{label}: " if side_by_side else "")
        results.append(result)
        labels.append(label)
    if side_by_side:
        write_side_by_side(results, labels, args)
    elif args.video:
        write_episodes(results[0], labels[0], args)


if __name__ == "__main__":
    main()
