"""Issue 14: loading a checkpoint runs no code, older checkpoints convert and resume, a short download is rejected.

* Crafted checkpoints whose unpickling would create a marker file (a `__reduce__` payload) are refused by every
  flag of every script that reads a checkpoint: one `error: ...` line naming the file, exit 1, and no marker.
* Every kind of checkpoint the scripts write loads with `weights_only=True` and holds no numpy object; a checkpoint
  in the format written before this change is refused with the converter's command, and once converted it equals
  the current format and resumes exactly as the native checkpoint does.
* A download that ends before its Content-Length leaves no file under the final name (local server on 127.0.0.1).

Speed: the scripts' main() run in-process at tiny sizes (fail() raises SystemExit("error: ..."), exit status 1, as
in test_reliability.py); real processes check the stderr and exit status of a refused checkpoint and a short download.
"""

import http.server
import os
import pickle
import re
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, own_copies, run_main, scalars

SCRIPTS = ("cql_pretrain", "fqe", "balanced_finetune", "awac", "bcq_ft", "sac")
DATASET_SCRIPTS = ("cql_pretrain", "fqe", "balanced_finetune", "awac", "bcq_ft")  # sac.py reads no dataset
FORMAT = "o2o-ensemble-v1"
HIDDEN = 16


@pytest.fixture(scope="module")
def mods():
    return own_copies("safety", SCRIPTS)


def run_to_end(module, argv, monkeypatch, cwd):
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [f"{module.__name__}.py", *map(str, argv)])
    module.main()


def differences(a, b, where="checkpoint") -> list:
    """Every place where two loaded checkpoints differ in type, dtype, shape or value (empty: identical)."""
    if type(a) is not type(b):
        return [f"{where}: {type(a).__name__} vs {type(b).__name__}"]
    if isinstance(a, torch.Tensor):
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [f"{where}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)} or values"]
    if isinstance(a, dict):
        if list(a) != list(b):
            return [f"{where}: keys {list(a)} vs {list(b)}"]
        return [d for key in a for d in differences(a[key], b[key], f"{where}[{key!r}]")]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def leaves(value):
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in leaves(item)]
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in leaves(item)]
    return [value]


@pytest.fixture(scope="module")
def policy(tmp_path_factory, mods):
    """A cql-format ensemble (N=2, hidden 16, Hopper-v4) written directly, for fqe.py and balanced_finetune.py."""
    path = tmp_path_factory.mktemp("policy") / "cql.pt"
    torch.manual_seed(0)
    c = mods["cql_pretrain"]
    torch.save(
        {
            "format": FORMAT,
            "algo": "cql",
            "env_id": "Hopper-v4",
            "obs_dim": 11,
            "act_dim": 3,
            "n_ensemble": 2,
            "hidden_sizes": [HIDDEN, HIDDEN],
            "actor": c.EnsembleActor(11, 3, [HIDDEN] * 2, 2).state_dict(),
            "critic": c.EnsembleCritic(11, 3, [HIDDEN] * 2, 2).state_dict(),
            "step": 0,
            "args": {},
        },
        path,
    )
    return path


def tiny_argv(script, data, policy) -> list:
    """A tiny run of each script writing ck.pt (relative) with a checkpoint before its end, logging to runs/r."""
    common = ["--env-id", "Hopper-v4", "--no-cuda", "--run-dir", "runs/r"]
    if script == "sac":
        return [
            *common,
            "--total-timesteps",
            "300",
            "--learning-starts",
            "50",
            "--batch-size",
            "16",
            "--hidden-dim",
            HIDDEN,
            "--log-every",
            "25",
            "--eval-every",
            "150",
            "--eval-episodes",
            "1",
            "--checkpoint-every",
            "100",
            "--checkpoint",
            "ck.pt",
        ]
    common += ["--dataset-path", data]
    if script == "cql_pretrain":
        return [
            *common,
            "--n-ensemble",
            "2",
            "--hidden-dim",
            HIDDEN,
            "--batch-size",
            "16",
            "--offline-steps",
            "60",
            "--log-every",
            "10",
            "--eval-every",
            "30",
            "--eval-episodes",
            "1",
            "--checkpoint-every",
            "20",
            "--checkpoint",
            "ck.pt",
        ]
    if script == "fqe":
        return [
            *common,
            "--policy-checkpoint",
            policy,
            "--steps",
            "60",
            "--batch-size",
            "16",
            "--log-every",
            "10",
            "--eval-every",
            "30",
            "--eval-episodes",
            "1",
            "--checkpoint-every",
            "20",
            "--checkpoint",
            "ck.pt",
        ]
    if script == "balanced_finetune":
        return [
            *common,
            "--cql-checkpoint",
            policy,
            "--n-ensemble",
            "2",
            "--online-steps",
            "150",
            "--epoch-length",
            "50",
            "--first-epoch-multiplier",
            "1",
            "--batch-size",
            "16",
            "--ratio-batch-size",
            "16",
            "--hidden-dim",
            HIDDEN,
            "--eval-episodes",
            "1",
            "--checkpoint-every",
            "50",
            "--checkpoint",
            "ck.pt",
        ]
    return [
        *common,
        "--n-ensemble",
        "2",
        "--hidden-dim",
        HIDDEN,
        "--batch-size",
        "16",
        "--offline-steps",
        "20",
        "--online-steps",
        "120",
        "--log-every",
        "10",
        "--eval-every",
        "60",
        "--eval-episodes",
        "1",
        "--checkpoint-every",
        "60",
        "--checkpoint",
        "ck.pt",
    ]  # awac, bcq_ft


# ---------------------------------------------------------------------------------
# crafted checkpoints: unpickling them would create a marker file
# ---------------------------------------------------------------------------------
class Payload:
    """Unpickling calls function(*args): with weights_only=False, torch.load would run it."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def write_payload(path, kind, marker):
    content = {"format": FORMAT, "algo": "cql", "env_id": "Hopper-v4"}
    if kind == "open":  # torch.save zip, pickle protocol 2, as a checkpoint is written
        torch.save({**content, "actor": Payload(open, str(marker), "w")}, path)
    elif kind == "system":
        torch.save({**content, "actor": Payload(os.system, f"touch {marker}")}, path)
    else:  # "raw_pickle": a bare protocol-4 pickle, not a torch.save zip
        with open(path, "wb") as f:
            pickle.dump({**content, "actor": Payload(open, str(marker), "w")}, f, protocol=4)
    return path


def test_the_payload_is_live(tmp_path):
    """Control: unrestricted, the crafted file does create its marker, so its absence below means something."""
    marker = tmp_path / "marker"
    torch.load(write_payload(tmp_path / "evil.pt", "open", marker), weights_only=False)
    assert marker.exists()


REFUSING_FLAGS = {  # case -> (script, the flag given the crafted file, other arguments)
    "cql_pretrain --checkpoint --resume": ("cql_pretrain", "--checkpoint", ["--resume"]),
    "fqe --policy-checkpoint": ("fqe", "--policy-checkpoint", []),
    "fqe --checkpoint --resume": ("fqe", "--checkpoint", ["--resume"]),
    "fqe --checkpoint": ("fqe", "--checkpoint", []),  # the guard against overwriting another algorithm's file
    "balanced_finetune --cql-checkpoint": ("balanced_finetune", "--cql-checkpoint", []),
    "balanced_finetune --fqe-checkpoint": ("balanced_finetune", "--fqe-checkpoint", ["--q-init", "fqe"]),
    "balanced_finetune --checkpoint --resume": ("balanced_finetune", "--checkpoint", ["--resume"]),
    "balanced_finetune --checkpoint": ("balanced_finetune", "--checkpoint", []),  # the same guard
    "awac --checkpoint --resume": ("awac", "--checkpoint", ["--resume"]),
    "bcq_ft --checkpoint --resume": ("bcq_ft", "--checkpoint", ["--resume"]),
    "sac --checkpoint --resume": ("sac", "--checkpoint", ["--resume"]),
    "sac --rollout-actor": ("sac", "--rollout-actor", []),
}


# Without --resume a script reads its output path only when it is a torch.save zip (to keep another algorithm's
# checkpoint): a bare pickle there is overwritten unread, so those pairs are not refusal cases.
REFUSAL_CASES = [
    (case, kind)
    for case in REFUSING_FLAGS
    for kind in ("open", "system", "raw_pickle")
    if not (case.endswith(" --checkpoint") and kind == "raw_pickle")
]


@pytest.mark.parametrize("case, kind", REFUSAL_CASES, ids=[f"{case}-{kind}" for case, kind in REFUSAL_CASES])
def test_crafted_checkpoint_is_refused(case, kind, mods, tiny_hopper_dataset, policy, tmp_path, monkeypatch):
    script, flag, extra = REFUSING_FLAGS[case]
    marker = tmp_path / "marker"
    evil = write_payload(tmp_path / "evil.pt", kind, marker)
    before = evil.read_bytes()
    argv = tiny_argv(script, tiny_hopper_dataset, policy) + [flag, evil, *extra]
    message = run_main(mods[script], argv, monkeypatch, tmp_path)
    assert not marker.exists(), "unpickling the checkpoint ran its code"
    assert f"checkpoint {evil} contains objects a checkpoint of this project never holds" in message, message
    assert message.endswith("it was not loaded"), message
    if kind != "raw_pickle":  # a torch.save zip: the refused globals are named
        assert ("io.open" if kind == "open" else "posix.system") in message, message
    assert evil.read_bytes() == before  # never overwritten either
    assert not (tmp_path / "runs").exists()  # stopped before training


@pytest.mark.slow
def test_real_process_refuses_with_one_line(tiny_hopper_dataset, policy, tmp_path):
    """As a user runs them, on a file whose pickle calls os.system: exit 1, one line, no traceback. The issue's case
    (balanced_finetune.py's CQL input, --cql-checkpoint) and fqe.py's policy; every flag of every script is checked
    in-process above, and load_checkpoint is one function copied verbatim (test_reliability's identity test)."""
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    cases = {
        script: REFUSING_FLAGS[case]
        for script, case in (("balanced_finetune", "balanced_finetune --cql-checkpoint"), ("fqe", "fqe --policy-checkpoint"))
    }
    procs = {}
    for script, (_, flag, extra) in cases.items():
        folder = tmp_path / script
        folder.mkdir()
        evil = write_payload(folder / "evil.pt", "system", folder / "marker")
        argv = tiny_argv(script, tiny_hopper_dataset, policy) + [flag, evil, *extra]
        procs[script] = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / f"{script}.py"), *map(str, argv)],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for script, proc in procs.items():
        _, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 1, (script, stderr[-2000:])
        assert "Traceback" not in stderr, (script, stderr[-2000:])
        lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and "never holds (posix.system); it was not loaded" in lines[0], (script, stderr[-2000:])
        assert not (tmp_path / script / "marker").exists(), script


# ---------------------------------------------------------------------------------
# every kind of checkpoint: restricted loading, the older format, conversion, exact resume
# ---------------------------------------------------------------------------------
# What the code before issue 14 (commit 7402653) stored as numpy arrays: the replay contents. Everything else in
# its checkpoints was already tensors or plain Python values, so those files equal this format otherwise.
OLD_NUMPY = {
    "balanced_finetune": [("resume", "online"), ("resume", "tree_leaves")],
    "awac": [("resume", "online_transitions")],
    "bcq_ft": [("resume", "online_transitions")],
    "sac": [("resume", "buffer")],
    "cql_pretrain": [],
    "fqe": [],
}
REPLAY_DTYPES = {
    "balanced_finetune": {"online": torch.float32, "tree_leaves": torch.float64},
    "awac": {"online_transitions": torch.float32},
    "bcq_ft": {"online_transitions": torch.float32},
    "sac": {"buffer": None},
}  # sac: float32, and bool terminals/timeouts


def as_written_before_issue_14(ckpt, script):
    """The same checkpoint in the older format: the fields of OLD_NUMPY as numpy arrays of the same dtype."""
    old = pickle.loads(pickle.dumps(ckpt))
    for outer, inner in OLD_NUMPY[script]:
        value = old[outer][inner]
        old[outer][inner] = (
            value.numpy()
            if isinstance(value, torch.Tensor)
            else {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in value.items()}
        )
    return old


def as_written_before_issue_21(ckpt, script):
    """The same checkpoint with the resume layout each script wrote before resume_state: flat torch_rng, numpy_rng,
    python_rng (and cuda_rng, not in sac.py); awac.py and bcq_ft.py: rng = {torch, numpy, random}, and bcq_ft.py's
    optimizers as a list."""
    old = pickle.loads(pickle.dumps(ckpt))
    resume = old["resume"]
    rng = resume.pop("rng")
    if script in ("awac", "bcq_ft"):
        resume["rng"] = {"torch": rng["torch"], "numpy": rng["numpy"], "random": rng["python"]}
        if script == "bcq_ft":
            resume["optimizers"] = [resume.pop(f"{net}_optimizer") for net in ("vae", "actor", "critic")]
    else:
        resume.update({f"{key}_rng": rng[key] for key in ("torch", "numpy", "python")})
        if script != "sac":
            resume["cuda_rng"] = None
    return old


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_checkpoint_kind_loads_restricted_converts_and_resumes_exactly(
    script, mods, tiny_hopper_dataset, policy, tmp_path, monkeypatch
):
    module, argv = mods[script], tiny_argv(script, tiny_hopper_dataset, policy)
    full = tmp_path / "uninterrupted"
    full.mkdir()
    real_save, saves = module.save_checkpoint, []

    def save_and_keep_the_first(path, payload):  # the first periodic checkpoint, as a killed run would leave it
        real_save(path, payload)
        saves.append(path)
        if len(saves) == 1:
            shutil.copyfile(path, full / "mid.pt")

    monkeypatch.setattr(module, "save_checkpoint", save_and_keep_the_first)
    run_to_end(module, argv, monkeypatch, full)
    monkeypatch.setattr(module, "save_checkpoint", real_save)
    assert len(saves) >= 2

    # the current format: tensors and plain values only, loaded by the restricted unpickler
    mid = torch.load(full / "mid.pt", weights_only=True)
    final_step = torch.load(full / "ck.pt", weights_only=True)["step"]
    assert 0 < mid["step"] < final_step
    assert not any(isinstance(leaf, (np.ndarray, np.generic)) for leaf in leaves(mid))
    for field, dtype in REPLAY_DTYPES.get(script, {}).items():
        stored = mid["resume"][field]
        dtypes = (
            {stored.dtype}
            if isinstance(stored, torch.Tensor)
            else {v.dtype for v in stored.values() if isinstance(v, torch.Tensor)}
        )
        assert dtypes == ({dtype} if dtype else {torch.float32, torch.bool}), (field, dtypes)

    # the older format: refused with the converter's command (cql_pretrain and fqe never held numpy arrays)
    native, converted, old_rng = tmp_path / "native", tmp_path / "converted", tmp_path / "old_rng"
    for folder in (native, converted, old_rng):
        folder.mkdir()
    shutil.copyfile(full / "mid.pt", native / "ck.pt")
    torch.save(as_written_before_issue_14(mid, script), converted / "ck.pt")
    torch.save(as_written_before_issue_21(mid, script), old_rng / "ck.pt")
    resume = argv + ["--resume"]
    if OLD_NUMPY[script]:
        message = run_main(module, resume, monkeypatch, converted)
        assert message == (
            "error: checkpoint ck.pt holds numpy arrays: it was written by an older version of this "
            "project and was not loaded; if you trust the file, convert it once with: "
            "python benchmark/convert_checkpoint.py ck.pt"
        ), message
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmark" / "convert_checkpoint.py"), "ck.pt"],
        cwd=converted,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert ("converted ck.pt" if OLD_NUMPY[script] else "already in the current format") in done.stdout
    assert differences(torch.load(converted / "ck.pt", weights_only=True), mid) == []

    # resumed from the native, the converted and the older resume layout: the same logged values and final checkpoint
    for folder in (native, converted, old_rng):
        run_to_end(module, resume, monkeypatch, folder)
    for folder in (converted, old_rng):
        assert scalars(native / "runs" / "r") == scalars(folder / "runs" / "r")
        assert (
            differences(torch.load(native / "ck.pt", weights_only=True), torch.load(folder / "ck.pt", weights_only=True)) == []
        )
    assert torch.load(native / "ck.pt", weights_only=True)["step"] == final_step
    if script in ("cql_pretrain", "fqe"):  # offline: a resumed run is the uninterrupted run (online ones restart the env)
        after = {tag: [(s, v) for s, v in values if s > mid["step"]] for tag, values in scalars(full / "runs" / "r").items()}
        assert scalars(native / "runs" / "r") == {tag: values for tag, values in after.items() if values}


@pytest.mark.slow
def test_converter_leaves_other_files_alone(tmp_path):
    not_ours = tmp_path / "other.pt"
    torch.save({"weights": np.zeros(3, np.float32)}, not_ours)  # numpy inside, but no checkpoint of this project
    before = not_ours.read_bytes()
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmark" / "convert_checkpoint.py"), not_ours],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"error: {not_ours} is not an {FORMAT} checkpoint of this project; not converted" in done.stderr
    assert not_ours.read_bytes() == before and not (tmp_path / "other.pt.tmp").exists()


# ---------------------------------------------------------------------------------
# downloads: a body shorter than its Content-Length never takes the final name
# ---------------------------------------------------------------------------------
BODY = bytes(range(256)) * 40  # 10240 bytes standing in for a D4RL file


class Server(http.server.BaseHTTPRequestHandler):
    """Answers every GET (also a proxied one) with BODY; short=True announces it whole but sends 4096 bytes."""

    short = True

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY[:4096] if self.short else BODY)  # HTTP/1.0: the connection closes after this

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Server)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    Server.short = True


@pytest.mark.slow
@pytest.mark.parametrize("script", DATASET_SCRIPTS)
def test_short_download_is_deleted_and_reported(script, mods, server, tmp_path, monkeypatch):
    module = mods[script]
    monkeypatch.setattr(module, "D4RL_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    final = tmp_path / "hopper_medium-v2.hdf5"
    with pytest.raises(SystemExit) as stop:
        module.download_d4rl_file("hopper-medium-v2")
    message = stop.value.code
    assert re.fullmatch(
        rf"error: download of http://127\.0\.0\.1:\d+/gym_mujoco_v2/hopper_medium-v2\.hdf5 ended after "
        rf"4096 of the {len(BODY)} bytes announced; the partial file was deleted and {re.escape(str(final))}"
        rf" not written: run again, or download it there by hand",
        message,
    ), message
    assert os.listdir(tmp_path) == []  # neither the final name nor a .part file
    Server.short = False  # the same server sending everything: the file is complete under its final name
    assert module.download_d4rl_file("hopper-medium-v2") == str(final)
    assert final.read_bytes() == BODY and os.listdir(tmp_path) == [final.name]


@pytest.mark.slow
def test_short_download_real_process(server, tmp_path):
    """cql_pretrain.py with a D4RL name, its request sent to the loopback server as an HTTP proxy: one line, exit 1."""
    proxy = f"http://127.0.0.1:{server.server_address[1]}"
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        D4RL_DATASET_DIR=str(tmp_path / "d4rl"),
        http_proxy=proxy,
        HTTP_PROXY=proxy,
        no_proxy="",
        NO_PROXY="",
    )
    argv = ["--env-id", "hopper-medium-v2", "--no-cuda", "--n-ensemble", "1", "--eval-episodes", "1", "--checkpoint", "ck.pt"]
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "cql_pretrain.py"), *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and f"ended after 4096 of the {len(BODY)} bytes announced" in lines[0], done.stderr[-2000:]
    assert os.listdir(tmp_path / "d4rl") == []
