"""Crash-safe checkpoints: write to a temporary file, fsync, rename; keep the last K.

A reader never sees a half-written file under a checkpoint's final name: rename is
atomic on POSIX file systems, and the directory is fsynced so the rename itself
survives a crash. Loading walks from the newest checkpoint back to the first one that
loads, so a truncated or corrupted file costs one checkpoint interval, not the run.

Checkpoints hold only what ``torch.load(weights_only=True)`` accepts, so that reading one
never runs code: :func:`encode_state` turns numpy arrays and scalars into tensors and
numbers before saving, :func:`decode_state` turns them back after loading. A file that
the safe loader refuses is an error, never skipped: a checkpoint planted by someone else
must not pass for a crash-damaged one.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import warnings
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seqis.errors import CheckpointError

_NAME = re.compile(r"^step-(\d{9})\.pt$")


def checkpoint_dir(out: Path) -> Path:
    return Path(out) / "checkpoints"


def save_checkpoint(out: Path, step: int, state: dict, keep: int = 2) -> Path:
    """Atomically write ``state`` as step ``step``'s checkpoint; prune to ``keep`` newest."""
    folder = checkpoint_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:09d}.pt"
    tmp = folder / f".{final.name}.tmp-{os.getpid()}"
    payload = {"format": 1, "step": step, "state": encode_state(state)}
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:  # a full disk or an interrupted save: leave no half-written file behind
        tmp.unlink(missing_ok=True)
        raise
    _publish(tmp, final)
    for old in list_checkpoints(out)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return final


def _publish(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` over ``final`` and fsync the directory, so the rename survives a crash."""
    os.replace(tmp, final)
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON so that a reader sees the old file or the new one, never a torn one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(obj, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _publish(tmp, path)


def list_checkpoints(out: Path) -> list[Path]:
    """Checkpoint files of a run, oldest first (temporary files are ignored)."""
    folder = checkpoint_dir(out)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def load_latest(out: Path) -> tuple[dict, Path]:
    """The newest loadable checkpoint's state; corrupted ones are skipped with a warning.

    A file the safe loader refuses raises :class:`CheckpointError` instead of being skipped.
    """
    candidates = list_checkpoints(out)
    if not candidates:
        raise CheckpointError(f"no checkpoint to resume from in {checkpoint_dir(out)}")
    for path in reversed(candidates):
        try:
            return _read(path), path
        except CheckpointError:  # refused as unsafe: never quietly resume from an older file
            raise
        except Exception as e:  # any unreadable file: fall back to the previous one
            warnings.warn(
                f"checkpoint {path} is unreadable ({e.__class__.__name__}); trying the previous one",
                RuntimeWarning,
                stacklevel=2,
            )
    raise CheckpointError(f"every checkpoint in {checkpoint_dir(out)} is corrupted")


# torch.load(weights_only=True) raises UnpicklingError with this prefix for whatever its
# unpickler refuses (a global not on its allowlist, an opcode it does not run); damaged
# zip archives and truncated files raise RuntimeError, OSError or EOFError instead.
_REFUSED = "Weights only load failed"


def _read(path: Path) -> dict:
    """The decoded state in ``path``; :class:`CheckpointError` if the safe loader refuses it."""
    try:
        with warnings.catch_warnings():  # its note on an unusual pickle protocol would break the one line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if _REFUSED not in str(e):
            raise
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors, numbers, strings, lists and dicts "
            "and was refused because loading it could run code (delete it to resume from the one before)"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != 1 or "state" not in payload:
        raise ValueError("not a seqis checkpoint")
    return decode_state(payload["state"])


def load_checkpoint(path: Path) -> dict:
    """The state in one checkpoint file; an unreadable or refused one is a :class:`CheckpointError`."""
    try:
        return _read(path)
    except CheckpointError:
        raise
    except Exception as e:  # torch's messages run over many lines; the CLI prints one
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"checkpoint {path} is unreadable ({e.__class__.__name__}: {first})") from None


# -- the codec: state <-> what weights_only loading accepts -------------------------------------
# A numpy array travels as a tensor in a dict marked with this key (torch has no safe global
# for numpy objects); a numpy scalar travels as the Python number it holds.
_ARRAY = "__seqis_ndarray__"
# Types the safe loader rebuilds as they are; checked by exact type, since a subclass (an
# enum, a numpy float, a named tuple) pickles as its own class, which the loader refuses.
_LEAVES = frozenset(
    {type(None), bool, int, float, complex, str, bytes, bytearray, torch.Size, torch.dtype, torch.device}
)
_DICTS = (dict, OrderedDict, Counter)
_SEQUENCES = (list, tuple, set)


def encode_state(obj: Any) -> Any:
    """``obj`` with numpy arrays as marked tensors and numpy scalars as Python numbers.

    Containers that need no change are returned as they are, so a module's state dict keeps
    its ``_metadata``. Anything a ``weights_only`` load would refuse raises ``TypeError``
    naming where it sits: better a failed save than checkpoints that cannot be resumed.
    """
    return _encode(obj, "state")


def _encode(obj: Any, where: str) -> Any:
    if isinstance(obj, torch.Tensor) or type(obj) in _LEAVES:
        return obj
    if isinstance(obj, np.ndarray):
        return {_ARRAY: _array_to_tensor(obj, where)}
    if isinstance(obj, np.generic):
        return _encode(obj.item(), where)  # item() of a datetime is no number: checked again
    if type(obj) in _DICTS:
        return _rebuilt_dict(obj, {_encode(k, where): _encode(v, f"{where}[{k!r}]") for k, v in obj.items()})
    if type(obj) in _SEQUENCES:
        items = [_encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return obj if all(a is b for a, b in zip(items, obj, strict=True)) else type(obj)(items)
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which a checkpoint cannot hold "
        "(tensors, numbers, strings, bytes, None, lists, tuples, sets, dicts and numpy arrays only)"
    )


def _array_to_tensor(array: np.ndarray, where: str) -> torch.Tensor:
    """A C-ordered, native-endian copy (torch takes no other), so later edits do not leak in."""
    try:
        return torch.from_numpy(np.array(array, dtype=array.dtype.newbyteorder("="), order="C", copy=True))
    except TypeError as e:  # object, string and datetime arrays have no tensor dtype
        raise TypeError(
            f"{where} is a numpy array of dtype {array.dtype}, which a checkpoint cannot hold"
        ) from e


def decode_state(obj: Any) -> Any:
    """Undo :func:`encode_state`: marked tensors become numpy arrays of their dtype and shape."""
    if type(obj) in _DICTS:
        if obj.keys() == {_ARRAY} and isinstance(obj[_ARRAY], torch.Tensor):
            return obj[_ARRAY].numpy()
        return _rebuilt_dict(obj, {k: decode_state(v) for k, v in obj.items()})
    if type(obj) in _SEQUENCES:
        items = [decode_state(v) for v in obj]
        return obj if all(a is b for a, b in zip(items, obj, strict=True)) else type(obj)(items)
    return obj


def _rebuilt_dict(original: dict, items: dict) -> dict:
    """``items`` as a dict of ``original``'s type with its attributes, or ``original`` if unchanged."""
    pairs = zip(original.items(), items.items(), strict=False)
    if len(items) == len(original) and all(k is j and v is w for (k, v), (j, w) in pairs):
        return original
    rebuilt = type(original)(items)
    if hasattr(original, "__dict__"):  # an OrderedDict's _metadata; a plain dict has no attributes
        rebuilt.__dict__.update(original.__dict__)
    return rebuilt


def params_sha256(model: nn.Module) -> str:
    """SHA-256 over parameter names and bytes in state-dict order: equal iff runs ended equal."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
