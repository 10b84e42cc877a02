"""What the benchmark tools share: importing a repository script as a module, and writing their outputs (CSV files,
figures, datasets) so that a full disk or a missing folder ends with one `error:` line and never leaves a partial file.

A tool imports it as `from repo import ...` (python puts benchmark/ first on sys.path when it runs benchmark/x.py).
"""

import contextlib
import importlib.util
import io
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """A repository script (cql_pretrain, balanced_finetune, ...) as a fresh module: its networks, losses and
    helpers; importing it has no side effects and main() does not run."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_atomically(path, data: bytes, what: str):
    """Write bytes to a temp file in the same folder, then rename it over `path` (the last good file or the complete
    new one, never a partial one). Disk full, an unwritable or vanished folder: the temp file is removed and the tool
    stops with one line naming the file and the cause, exit status 1."""
    tmp_path = f"{path}.tmp"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp_path, "wb") as f:
            f.write(data)
        os.replace(tmp_path, path)
    except OSError as err:
        sys.exit(f"error: cannot write {what} {path}: {err.strerror or err}")
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp_path)


@contextlib.contextmanager
def written(path, what: str = "CSV file"):
    """`with written(path) as f:` an in-memory text file (newline="" as the csv module wants), written atomically to
    `path` when the block ends."""
    text = io.StringIO(newline="")
    yield text
    write_atomically(path, text.getvalue().encode(), what)


def save_figure(fig, path, **savefig_kwargs):
    """fig.savefig into memory (format from the suffix), then written atomically to `path`."""
    data = io.BytesIO()
    fig.savefig(data, format=Path(path).suffix[1:], **savefig_kwargs)
    write_atomically(path, data.getvalue(), "figure")
