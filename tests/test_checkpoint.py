"""Checkpoints round-trip every kind of state, load without running code, and refuse files that would."""

from __future__ import annotations

import os
import pickle
import shlex
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from seqis.errors import CheckpointError
from seqis.training.checkpoint import (
    decode_state,
    encode_state,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)
from tests.conftest import run_cli

TINY_RUN = ["--hidden", "8", "--layers", "1", "--threads", "1", "--no-progress"]


class RunsCommand:
    """Unpickles as a call to ``os.system``: the unpickler needs only ``os.system``, not this class."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _touch(marker: Path) -> RunsCommand:
    return RunsCommand(f"touch {shlex.quote(str(marker))}")


def _every_kind() -> dict:
    """A state with each kind the trainer, samplers and loaders keep."""
    generator = torch.Generator().manual_seed(7)
    model = torch.nn.Linear(3, 2)
    return {
        "arrays": {
            "f64": np.linspace(0.0, 1.0, 5),
            "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
            "f16": np.array([0.5, np.nan], dtype=np.float16),
            "i64": np.array([-3, 0, 2**40], dtype=np.int64),
            "i32": np.array([1, 2], dtype=np.int32),
            "u8": np.array([0, 255], dtype=np.uint8),
            "bool": np.array([True, False, True]),
            "empty_f64": np.empty(0),
            "empty_i64": np.empty(0, dtype=np.int64),
            "empty_2d": np.zeros((0, 4), dtype=np.float32),
            "scalar_0d": np.array(3.5),
            "strided": np.arange(10, dtype=np.int64)[::-2],  # negative strides: torch takes a copy
            "big_endian": np.array([1.25, 2.5], dtype=">f8"),
        },
        "numpy_scalars": [np.float64(0.25), np.int64(9), np.bool_(True), np.float32(1.5)],
        "tensors": {"float": torch.randn(2, 3), "long": torch.arange(4), "bool": torch.tensor([True])},
        "generator": generator.get_state(),
        "torch_rng": [torch.get_rng_state()],
        "model": model.state_dict(),
        "optimizer": torch.optim.Adam(model.parameters()).state_dict(),
        "plain": {"int": 3, "float": 0.5, "bool": False, "none": None, "str": "fim", "tuple": (1, "a")},
        "nested": [{"recent": [np.array([1.0, 2.0]), np.array([], dtype=np.float64)]}, [[np.int64(1)]]],
    }


def _assert_same(got: Any, want: Any, where: str = "state") -> None:
    """Equal values and equal types, numpy dtypes and shapes; numpy scalars come back as numbers."""
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), where
        assert got.dtype == want.dtype.newbyteorder("=") and got.shape == want.shape, where
        assert np.array_equal(got, want, equal_nan=want.dtype.kind == "f"), where
    elif isinstance(want, np.generic):
        assert type(got) is type(want.item()) and got == want.item(), where
    elif isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype and torch.equal(got, want), where
    elif isinstance(want, dict):
        assert type(got) is type(want) and list(got) == list(want), where
        for key in want:
            _assert_same(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, list | tuple):
        assert type(got) is type(want) and len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _assert_same(a, b, f"{where}[{i}]")
    else:
        assert type(got) is type(want) and got == want, where


def test_round_trip_keeps_every_kind_of_state(tmp_path):
    state = _every_kind()
    save_checkpoint(tmp_path, 1, state)
    loaded, path = load_latest(tmp_path)
    _assert_same(loaded, state)
    assert loaded["model"]._metadata == state["model"]._metadata  # module versions survive
    torch.Generator().set_state(loaded["generator"])  # still a valid generator state
    assert load_checkpoint(path).keys() == state.keys()
    torch.load(path, map_location="cpu", weights_only=True)  # what is on disk needs no unsafe load


def test_decode_undoes_encode_and_leaves_unchanged_containers_alone():
    state = _every_kind()
    encoded = encode_state(state)
    assert encoded["arrays"]["empty_i64"].keys() == {"__seqis_ndarray__"}
    assert encoded["model"] is state["model"] and encoded["tensors"] is state["tensors"]
    _assert_same(decode_state(encoded), state)
    assert decode_state(decode_state(encoded))["arrays"]["u8"].dtype == np.uint8  # decoding twice is harmless


def test_encode_copies_arrays():
    array = np.zeros(3)
    encoded = encode_state({"a": array})
    array[0] = 1.0  # a sampler goes on drawing after its state is taken
    assert decode_state(encoded)["a"][0] == 0.0


@pytest.mark.parametrize(
    "value,named",
    [
        (OrderedDict(x=Path("p")), "state['bad'][0]['x']"),
        (np.array(["a"]), "numpy array of dtype <U1"),
        (np.array([object()]), "numpy array of dtype object"),
        (frozenset({1}), "frozenset"),
    ],
)
def test_encode_refuses_what_a_safe_load_would_refuse(value, named):
    with pytest.raises(TypeError, match="checkpoint cannot hold") as info:
        encode_state({"bad": [value]})
    assert named in str(info.value)


def _write_refused_file(path: Path, marker: Path, legacy: bool) -> None:
    payload = {"format": 1, "step": 2, "state": {"x": 1, "evil": _touch(marker)}}
    if legacy:  # a plain pickle, not torch's zip format
        path.write_bytes(pickle.dumps(payload, protocol=4))
    else:
        torch.save(payload, path)


@pytest.mark.parametrize("legacy", [False, True], ids=["torch-zip", "plain-pickle"])
def test_refused_file_is_an_error_not_a_fallback(tmp_path, legacy):
    save_checkpoint(tmp_path, 1, {"x": 1}, keep=3)
    newest = save_checkpoint(tmp_path, 2, {"x": 2}, keep=3)
    marker = tmp_path / "ran"
    _write_refused_file(newest, marker, legacy)
    for load in (lambda: load_latest(tmp_path), lambda: load_checkpoint(newest)):
        with pytest.raises(CheckpointError) as info:
            load()
        message = str(info.value)
        assert str(newest) in message and "could run code" in message and "\n" not in message
    assert not marker.exists()


def test_refused_file_behind_a_truncated_one_still_stops_the_walk(tmp_path):
    save_checkpoint(tmp_path, 1, {"x": 1}, keep=3)
    refused = save_checkpoint(tmp_path, 2, {"x": 2}, keep=3)
    _write_refused_file(refused, tmp_path / "ran", legacy=False)
    newest = save_checkpoint(tmp_path, 3, {"x": 3}, keep=3)
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match="unreadable"), pytest.raises(CheckpointError, match="run code"):
        load_latest(tmp_path)
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("keep_bytes", [0, 20, 100, "half"])
def test_truncated_newest_falls_back_to_the_previous(tmp_path, keep_bytes):
    save_checkpoint(tmp_path, 1, {"x": 1, "factors": np.array([0.5, 1.5])}, keep=3)
    newest = save_checkpoint(tmp_path, 2, {"x": 2, "factors": np.array([2.5])}, keep=3)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2 if keep_bytes == "half" else keep_bytes])
    with pytest.warns(RuntimeWarning, match="unreadable"):
        state, path = load_latest(tmp_path)
    assert path.name == "step-000000001.pt" and state["x"] == 1
    _assert_same(state["factors"], np.array([0.5, 1.5]))
    with pytest.raises(CheckpointError, match="unreadable") as info:
        load_checkpoint(newest)
    assert "\n" not in str(info.value)


def test_resume_from_a_planted_checkpoint_runs_no_code(tmp_path):
    out = tmp_path / "run"
    # uniform: the fastest run that writes checkpoints; what the exploit needs is only the file.
    train = ["train", "--data", "digits", "--sampler", "uniform", "--steps", "4", "--eval-every", "2"]
    done = run_cli(*train, "--checkpoint-every", "2", *TINY_RUN, "--out", str(out))
    assert done.returncode == 0, done.stderr
    newest = list_checkpoints(out)[-1]
    # The run's own file, so the full loader is safe here; the planted one keeps every real entry.
    payload = torch.load(newest, map_location="cpu", weights_only=False)
    marker, sanity = tmp_path / "MARKER", tmp_path / "sanity"

    payload["state"]["sampler"]["note"] = _touch(sanity)
    torch.save(payload, tmp_path / "sanity.pt")
    torch.load(tmp_path / "sanity.pt", weights_only=False)  # the exploit works on an unsafe load
    assert sanity.exists()

    payload["state"]["sampler"]["note"] = _touch(marker)
    torch.save(payload, newest)
    proc = run_cli("train", "--resume", str(out))  # as a user runs it, with the run's saved settings
    assert not marker.exists()
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seqis: error:"), proc.stderr
    assert str(newest) in lines[0] and "could run code" in lines[0]
    assert "resuming from" not in proc.stdout  # not quietly resumed from the older checkpoint
