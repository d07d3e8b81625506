"""Two gloo processes on localhost, launched by torchrun as a user would."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seqis.training.checkpoint import load_latest
from tests.conftest import run_cli

HERE = Path(__file__).parent
TINY = ["--hidden", "16", "--layers", "1", "--embed", "8", "--no-progress", "--threads", "1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, timeout=180):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_ddp_training_keeps_ranks_identical_and_resume_rules(tmp_path):
    out = tmp_path / "ddp"
    train = "-m seqis.cli train --data digits:rows --sampler fim --always-on --eval-every 20".split()
    base = [*train, "--checkpoint-every", "40", "--out", str(out), *TINY]
    proc = torchrun(*base, "--steps", "80")
    assert proc.returncode == 0, proc.stderr[-8000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and len(summary["rank_steps_per_s"]) == 2
    assert len(set(summary["rank_params_sha256"])) == 1  # identical parameters on both ranks
    assert summary["is_active_share"] > 0
    # same world size resumes; a single process refuses, with a clear message
    proc = torchrun(*base, "--steps", "100", "--resume")
    assert proc.returncode == 0, proc.stderr[-8000:]
    single = run_cli(*train[2:], "--steps", "120", "--resume", "--out", str(out), *TINY)
    assert single.returncode == 2 and "same number of processes" in single.stderr


def test_global_draw_and_unbiased_allreduced_gradient(tmp_path):
    result = tmp_path / "draws.json"
    proc = torchrun(str(HERE / "ddp_worker.py"), "draws", str(result))
    assert proc.returncode == 0, proc.stderr[-8000:]
    r = json.loads(result.read_text())
    assert r["world"] == 2 and r["same_draws"]
    assert r["max_rel_diff"] < 1e-10  # all-reduced slices == the global batch's weighted gradient


def test_stalled_rank_fails_survivor_within_timeout(tmp_path):
    result = tmp_path / "stall.json"
    torchrun(str(HERE / "ddp_worker.py"), "stall", str(result), timeout=90)
    r = json.loads(result.read_text())
    assert r["is_dist_error"], r["outcome"]
    assert r["seconds"] < 15  # the 3 s timeout, not the 20 s stall


def test_two_processes_match_one_process_of_the_same_global_batch(tmp_path):
    train = "train --data digits:rows --sampler uniform --eval-every 10 --target-loss 2.1".split()
    one, two = tmp_path / "one", tmp_path / "two"
    single = run_cli(*train, "--batch-size", "32", "--steps", "200", "--out", str(one), *TINY)
    assert single.returncode == 0, single.stderr[-8000:]
    proc = torchrun(
        "-m", "seqis.cli", *train, "--batch-size", "16", "--steps", "200", "--out", str(two), *TINY
    )
    assert proc.returncode == 0, proc.stderr[-8000:]
    a, b = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    # validation is split across ranks and all-reduced: the target stops both ranks at one step
    assert b["stopped_by"] == a["stopped_by"] == "target_loss" and b["steps"] == a["steps"] < 200
    assert b["final_val_loss"] == pytest.approx(a["final_val_loss"], abs=1e-5)
    pa, pb = (load_latest(d)[0]["model"] for d in (one, two))
    for name in pa:
        assert torch.allclose(pa[name], pb[name], atol=1e-5), name


def test_ranks_resume_from_the_checkpoint_rank_zero_chose(tmp_path):
    out = tmp_path / "resume"
    proc = torchrun(str(HERE / "ddp_worker.py"), "resume_choice", str(out))
    assert proc.returncode == 0, proc.stderr[-8000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 60 and len(set(summary["rank_params_sha256"])) == 1


def test_samplers_know_their_rank_in_a_users_own_loop(tmp_path):
    result = tmp_path / "ranks.json"
    proc = torchrun(str(HERE / "ddp_worker.py"), "rank_aware", str(result))
    assert proc.returncode == 0, proc.stderr[-8000:]
    r = json.loads(result.read_text())
    assert r == {
        "world": 2,
        "replicas": 2,  # taken from the process group
        "slices_ok": True,  # each rank iterates its slice of the one global draw
        "same_factors": True,  # record() exchanged the slices: one distribution everywhere
        "uniform_disjoint": True,  # uniform epochs: no sequence on two ranks
    }


def test_importance_loader_in_a_users_own_ddp_loop(tmp_path):
    result = tmp_path / "own_loop.json"
    proc = torchrun(str(HERE / "ddp_worker.py"), "own_loop", str(result))
    assert proc.returncode == 0, proc.stderr[-8000:]
    assert json.loads(result.read_text()) == {
        "world": 2,
        "active": True,
        "disjoint_warmup": True,  # uniform warm-up: slices of one global permutation
        "same_factors": True,  # one importance distribution on both ranks
        "same_parameters": True,
        "same_noise_scale_input": True,  # so every rank's switch judges the same B
        "refreshed": True,  # the forward-only scorer ran, split across ranks
    }


def test_validating_on_rank_zero_alone_is_safe_in_a_users_own_ddp_loop(tmp_path):
    result = tmp_path / "validation.json"
    proc = torchrun(str(HERE / "ddp_worker.py"), "validation_on_rank_zero", str(result), timeout=120)
    assert proc.returncode == 0, proc.stderr[-8000:]
    assert json.loads(result.read_text()) == {"same_watch": True, "best": pytest.approx(0.54)}
