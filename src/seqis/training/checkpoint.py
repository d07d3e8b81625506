"""Crash-safe checkpoints: write to a temporary file, fsync, rename; keep the last K.

A reader never sees a half-written file under a checkpoint's final name: rename is
atomic on POSIX file systems, and the directory is fsynced so the rename itself
survives a crash. Loading walks from the newest checkpoint back to the first one that
loads, so a truncated or corrupted file costs one checkpoint interval, not the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path

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
    payload = {"format": 1, "step": step, "state": state}
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
    """The newest loadable checkpoint's state; corrupted ones are skipped with a warning."""
    candidates = list_checkpoints(out)
    if not candidates:
        raise CheckpointError(f"no checkpoint to resume from in {checkpoint_dir(out)}")
    for path in reversed(candidates):
        try:
            return _read(path), path
        except Exception as e:  # any unreadable file: fall back to the previous one
            warnings.warn(
                f"checkpoint {path} is unreadable ({e.__class__.__name__}); trying the previous one",
                RuntimeWarning,
                stacklevel=2,
            )
    raise CheckpointError(f"every checkpoint in {checkpoint_dir(out)} is corrupted")


def _read(path: Path) -> dict:
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != 1 or "state" not in payload:
        raise ValueError("not a seqis checkpoint")
    return payload["state"]


def load_checkpoint(path: Path) -> dict:
    """The state in one checkpoint file; an unreadable one is a :class:`CheckpointError`."""
    try:
        return _read(path)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({e.__class__.__name__}: {e})") from None


def params_sha256(model: nn.Module) -> str:
    """SHA-256 over parameter names and bytes in state-dict order: equal iff runs ended equal."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
