"""Rewrite a checkpoint written before issue 14 (it holds numpy arrays) in the current format, once.

    python benchmark/convert_checkpoint.py OLD.pt [NEW.pt]     # NEW.pt defaults to OLD.pt, replaced atomically

Every script now loads checkpoints with torch.load(weights_only=True), which accepts tensors and plain Python values
only and runs no code from the file. Older checkpoints of balanced_finetune.py, awac.py, bcq_ft.py and sac.py stored
their replay contents (and the sum-tree leaves) as numpy arrays, which that loader refuses; the scripts then stop and
name this command. cql_pretrain.py and fqe.py checkpoints never held numpy arrays and load as they are.

This script loads OLD.pt with weights_only=False, WHICH RUNS WHATEVER CODE THE FILE NAMES: run it only on files you
trust, such as the checkpoints of your own runs. It turns every numpy array into a torch tensor of the same dtype,
shape and values (numpy scalars into Python numbers), which is exactly what the current scripts write, checks that
the result loads with weights_only=True, and writes it atomically (temp file, then rename). A file that already loads
with weights_only=True is left as it is (copied to NEW.pt when given) without being unpickled unrestricted.
"""

import argparse
import os
import pickle
import shutil
import warnings

import numpy as np
import torch

CHECKPOINT_FORMAT = "o2o-ensemble-v1"


def fail(message: str):
    raise SystemExit(f"error: {message}")


def to_current_format(value):
    """numpy arrays -> tensors of the same dtype (copied, so each owns its storage), numpy scalars -> Python numbers;
    dicts (OrderedDict state dicts keep their type), lists and tuples are rebuilt around the converted values."""
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            fail("the checkpoint holds a numpy array of Python objects, which no checkpoint of this project has")
        return torch.from_numpy(np.array(value, copy=True, order="C"))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return type(value)((key, to_current_format(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(to_current_format(item) for item in value)
    return value


def loads_restricted(path: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(path, map_location="cpu", weights_only=True)
        return True
    except pickle.UnpicklingError:
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="checkpoint written by an older version (trusted: it is unpickled unrestricted)")
    parser.add_argument("new", nargs="?", help="where the converted checkpoint is written (default: over OLD)")
    args = parser.parse_args()
    new = args.new or args.old
    in_place = os.path.abspath(new) == os.path.abspath(args.old)
    if not os.path.isfile(args.old):
        fail(f"checkpoint {args.old} does not exist")
    try:
        if loads_restricted(args.old):
            if not in_place:
                shutil.copyfile(args.old, f"{new}.tmp")
                os.replace(f"{new}.tmp", new)
            print(
                f"{args.old} is already in the current format (it loads with weights_only=True); nothing to convert"
                + ("" if in_place else f", copied to {new}")
            )
            return
        checkpoint = torch.load(args.old, map_location="cpu", weights_only=False)  # the user vouched for this file
    except Exception as err:  # zip/pickle errors of a truncated or foreign file
        fail(f"cannot read checkpoint {args.old}: {(str(err).strip() or repr(err)).splitlines()[0]}")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        fail(f"{args.old} is not an {CHECKPOINT_FORMAT} checkpoint of this project; not converted")
    converted = to_current_format(checkpoint)
    tmp_path = f"{new}.tmp"
    try:
        torch.save(converted, tmp_path)
        if not loads_restricted(tmp_path):  # e.g. an object of a type no script writes
            os.remove(tmp_path)
            fail(f"{args.old} holds objects other than numpy arrays that weights_only=True refuses; not converted")
        os.replace(tmp_path, new)
    except OSError as err:
        fail(f"cannot write {new}: {err}")
    print(f"converted {args.old} ({checkpoint['algo']}, step {checkpoint.get('step')}) -> {new}")


if __name__ == "__main__":
    main()
