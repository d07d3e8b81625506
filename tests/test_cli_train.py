import json
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

from seqis.cli import main
from seqis.training.checkpoint import list_checkpoints, load_latest, save_checkpoint
from tests.conftest import run_cli

TINY = ["--hidden", "16", "--layers", "1", "--embed", "8", "--no-progress", "--threads", "1"]
SUMMARY_KEYS = {
    "data",
    "model",
    "sampler",
    "seed",
    "steps",
    "wall_time_s",
    "final_val_loss",
    "time_to_target_s",
    "device",
    "torch_version",
    "params_sha256",
    "mining_time_s",
    "mining_share",
    "is_active_share",
}


def run(args, capsys=None):
    code = main(args)
    return code


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def test_train_writes_contract(tmp_path):
    out = tmp_path / "run"
    assert (
        run(
            [
                "train",
                "--data",
                "digits:rows",
                "--sampler",
                "fim",
                "--steps",
                "60",
                "--eval-every",
                "20",
                "--target-loss",
                "0.01",
                "--out",
                str(out),
                *TINY,
            ]
        )
        == 0
    )
    s = _summary(out)
    assert SUMMARY_KEYS <= set(s)
    assert s["steps"] == 60 and s["time_to_target_s"] is None and len(s["params_sha256"]) == 64
    assert (out / "metrics.csv").read_text().startswith("step,wall_time_s,train_loss,val_loss")
    assert (out / "loss.png").stat().st_size > 1000
    assert any((out / "tensorboard").iterdir())  # event files, since tensorboard is installed
    assert list_checkpoints(out)


def test_target_loss_stops_run(tmp_path):
    out = tmp_path / "run"
    run(
        [
            "train",
            "--data",
            "digits:rows",
            "--steps",
            "400",
            "--eval-every",
            "10",
            "--target-loss",
            "2.0",
            "--out",
            str(out),
            *TINY,
        ]
    )
    s = _summary(out)
    assert s["stopped_by"] == "target_loss" and s["time_to_target_s"] is not None
    assert s["final_val_loss"] <= 2.0 and s["steps"] < 400


@pytest.mark.parametrize("sampler", ["uniform", "fim"])
def test_resume_is_bit_exact(tmp_path, sampler):
    common = [
        "train",
        "--data",
        "ucr:JapaneseVowels",
        "--sampler",
        sampler,
        "--eval-every",
        "10",
        "--checkpoint-every",
        "30",
        "--seed",
        "3",
        "--always-on",
        *TINY,
    ]
    run([*common, "--steps", "60", "--out", str(tmp_path / "straight")])
    run([*common, "--steps", "30", "--out", str(tmp_path / "split")])
    run([*common, "--steps", "60", "--out", str(tmp_path / "split"), "--resume"])
    a, b = _summary(tmp_path / "straight"), _summary(tmp_path / "split")
    assert a["params_sha256"] == b["params_sha256"]
    sa, _ = load_latest(tmp_path / "straight")
    sb, _ = load_latest(tmp_path / "split")
    assert sa["sampler"].keys() == sb["sampler"].keys()
    for key, value in sa["sampler"].items():
        other = sb["sampler"][key]
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), key
        elif isinstance(value, np.ndarray):
            assert np.array_equal(value, other, equal_nan=value.dtype.kind == "f"), key
        else:
            assert value == other, key
    assert a["final_val_loss"] == b["final_val_loss"]


def test_corrupted_checkpoint_falls_back(tmp_path):
    save_checkpoint(tmp_path, 1, {"x": 1}, keep=3)
    newest = save_checkpoint(tmp_path, 2, {"x": 2}, keep=3)
    newest.write_bytes(newest.read_bytes()[:20])  # truncated
    with pytest.warns(RuntimeWarning, match="unreadable"):
        state, path = load_latest(tmp_path)
    assert state == {"x": 1} and path.name == "step-000000001.pt"


def test_keep_last_k(tmp_path):
    for step in range(5):
        save_checkpoint(tmp_path, step, {"s": step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000003.pt", "step-000000004.pt"]


KILL_SCRIPT = """
import os, signal, sys, torch
from seqis.training.checkpoint import save_checkpoint
out = sys.argv[1]
save_checkpoint(out, 1, {"good": True}, keep=5)

def dying_save(obj, f):  # the process is killed half-way through writing the next checkpoint
    f.write(b"partial" * 1000)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = dying_save
save_checkpoint(out, 2, {"good": False}, keep=5)
"""


def test_sigkill_during_write_leaves_previous_checkpoint(tmp_path):
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tmp_path)], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000001.pt"]  # no torn final file
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing unreadable is even looked at
        state, path = load_latest(tmp_path)
    assert state == {"good": True} and path.name == "step-000000001.pt"


def test_sigterm_saves_and_exits(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "seqis.cli",
            "train",
            "--data",
            "digits",
            "--steps",
            "100000",
            "--eval-every",
            "1000000",
            "--out",
            str(out),
            *TINY,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while not (out / "metrics.csv").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"checkpoint saved" in err and b"Traceback" not in err
    assert list_checkpoints(out) and _summary(out)["stopped_by"] == "signal"
    # the checkpoint came first and no closing validation ran after the signal
    state, _ = load_latest(out)
    assert state["run"]["step"] > 0 and [r["step"] for r in state["metrics"]] == [0]


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--steps", "0"], "--steps must be >= 1, got 0"),
        (["train", "--steps", "ten"], "invalid int value"),
        (["train", "--time-budget", "-5"], "positive"),
        (["train", "--lr", "nan", "--steps", "1"], "positive"),
        (["train", "--sampler", "magic", "--steps", "1"], "invalid choice"),
        (["train", "--model", "transformer", "--steps", "1"], "invalid choice"),
        (["train", "--data", "nope", "--steps", "1"], "unknown data spec"),
        (["train", "--data", "text:/no/such/file", "--steps", "1"], "no such file"),
        (["train", "--device", "cuda", "--steps", "1"], "CUDA is not available"),
        (["train", "--device", "tpu", "--steps", "1"], "--device must be auto, cpu, cuda or cuda:N"),
        (["train", "--data", "digits"], "--epochs E or --time-budget"),
        (["train", "--data", "digits", "--steps", "1", "--resume"], "no checkpoint"),
        (["train", "--smoothing", "0", "--steps", "1"], "(0, 1]"),
        (["train", "--min-gain-off", "2", "--steps", "1"], "must not exceed --min-gain"),
        (["train", "--cost-aware", "--steps", "1"], "--cost-aware needs --pack"),
        (["train", "--sampler", "prune", "--refresh-fraction", "0.2", "--steps", "1"], "keeps no factors"),
        (["train", "--sampler", "fim", "--factor", "loss", "--steps", "1"], "importance --factor loss"),
        (["train", "--sampler", "prune", "--time-budget", "5"], "--prune-anneal is a share of the plan"),
        (["train", "--batch-size", "0", "--steps", "1"], "--batch-size must be >= 1"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    proc = run_cli(*args, "--out", str(tmp_path / "o"), "--no-progress")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "o" / "summary.json").exists()


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_cli("train", "--data", "digits", "--steps", "1", "--out", str(blocker / "sub"))
    assert proc.returncode == 2 and "not writable" in proc.stderr


def test_data_command(capsys):
    assert main(["data", "--data", "ucr:JapaneseVowels"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["classes"] == 9 and stats["channels"] == 12


def test_bucketed_batches_pad_less_and_say_so(tmp_path, ts_file):
    """Every run records what its steps paid for: padded over real positions, sequences a second."""
    ratios = {}
    for batching in ("random", "bucket"):
        out = tmp_path / batching
        args = ["train", "--data", f"ts:{ts_file}", "--steps", "30", "--batch-size", "4"]
        args += ["--sampler", "uniform"]
        assert main([*args, "--batching", batching, "--bucket-pool", "3", "--out", str(out), *TINY]) == 0
        summary = _summary(out)
        assert summary["sequences_per_s"] > 0
        ratios[batching] = summary["padded_over_real"]
    assert 1.0 <= ratios["bucket"] < ratios["random"]
