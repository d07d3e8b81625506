"""Resume under changed settings, exact resume in the active phase, signals and torn outputs."""

import json
import signal
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from seqis.cli import main
from seqis.data.registry import load_data
from seqis.importance.config import MiningConfig
from seqis.importance.mining import Miner
from seqis.importance.switch import Switch
from seqis.sampling.sampler import ImportanceSampler
from seqis.training import checkpoint, trainer
from seqis.training.checkpoint import list_checkpoints, load_latest, save_checkpoint
from seqis.training.trainer import _COLLECTIVE_FAILURE, TrainConfig, _StopSignal

TINY = ["--hidden", "16", "--layers", "1", "--embed", "8", "--no-progress", "--threads", "1"]
FIM = ["train", "--data", "digits:rows", "--sampler", "fim", "--eval-every", "10", *TINY]


def _summary(out):
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize(
    "flag,value,named",
    [
        ("--lr", "0.01", "lr 0.002 -> 0.01"),
        ("--optimizer", "sgd", "optimizer 'adam' -> 'sgd'"),
        ("--clip", "0.5", "clip 1.0 -> 0.5"),
        ("--smoothing", "0.5", "mining.smoothing 0.2 -> 0.5"),
        ("--hidden", "32", "model.hidden_size 16 -> 32"),
    ],
)
def test_resume_refuses_changed_settings_by_name(tmp_path, capsys, flag, value, named):
    out = str(tmp_path / "run")
    assert main([*FIM, "--steps", "5", "--out", out]) == 0
    assert main([*FIM, "--steps", "10", "--resume", "--out", out, flag, value]) == 2
    err = capsys.readouterr().err
    assert named in err and f"seqis train --resume {out}" in err and len(err.strip().splitlines()) == 1


def test_resume_dir_continues_with_saved_settings(tmp_path, capsys):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    settings = ["--lr", "0.005", "--smoothing", "0.3", "--always-on", "--seed", "4"]
    assert main([*FIM, *settings, "--steps", "40", "--out", straight]) == 0
    assert main([*FIM, *settings, "--steps", "20", "--out", split]) == 0
    # no --threads: the run's own (saved) thread count comes back with the rest of its settings
    assert main(["train", "--resume", split, "--steps", "40", "--no-progress"]) == 0
    assert _summary(tmp_path / "split")["params_sha256"] == _summary(tmp_path / "straight")["params_sha256"]
    assert _summary(tmp_path / "split")["threads"] == 1
    saved = json.loads((tmp_path / "split" / "config.json").read_text())
    assert saved["lr"] == 0.005 and saved["mining"]["smoothing"] == 0.3 and saved["steps"] == 40
    assert main(["train", "--resume", split, "--steps", "50", "--lr", "0.1"]) == 2
    assert "--lr cannot be changed" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing"), "--steps", "50"]) == 2
    assert "no saved run configuration" in capsys.readouterr().err


@pytest.mark.parametrize(
    "sampler,extra", [("fim", []), ("gradnorm", []), ("prune", []), ("fim", ["--lr-scale", "sqrt"])]
)
def test_resume_is_bit_exact_in_the_active_phase(tmp_path, sampler, extra):
    # IS on from step 50; refresh every 5 steps; digits has 101 steps an epoch, so prune's
    # second (pruned) epoch runs from step ~101 across the split at 110.
    common = [*FIM, "--sampler", sampler, "--batch-size", "16", "--always-on", "--refresh-batch", "8", *extra]
    common += ["--prune-anneal", "0", "--checkpoint-every", "110", "--seed", "1"]
    assert main([*common, "--steps", "160", "--out", str(tmp_path / "straight")]) == 0
    assert main([*common, "--steps", "110", "--out", str(tmp_path / "split")]) == 0
    state, _ = load_latest(tmp_path / "split")
    assert state["sampler"]["active"]
    if sampler == "fim":  # 60 active steps x 1.6 credit: about 12 refresh passes of 8
        assert state["miner"]["sweep_cursor"] >= 80
    elif sampler == "prune":
        assert state["sampler"]["epoch"] >= 1 and len(state["sampler"]["order"]) < 1617
    assert main([*common, "--steps", "160", "--out", str(tmp_path / "split"), "--resume"]) == 0
    a, b = _summary(tmp_path / "straight"), _summary(tmp_path / "split")
    assert a["params_sha256"] == b["params_sha256"] and a["final_val_loss"] == b["final_val_loss"]


def test_cuda_rng_states_are_saved_and_restored(tmp_path, monkeypatch):
    fake_state = [torch.arange(8, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: fake_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    config = TrainConfig(
        data="digits:rows", steps=8, stop_at=6, device="cpu", out=str(tmp_path), progress=False
    ).with_sampler("fim")
    config.model.hidden_size, config.model.num_layers = 8, 1
    trainer.train(config)
    state, _ = load_latest(tmp_path)
    assert torch.equal(state["cuda_rng"][0][0], fake_state[0])
    config.stop_at = None
    trainer.train(config, resume=True)
    assert len(restored) == 1 and torch.equal(restored[0][0], fake_state[0])


def test_second_signal_gets_the_default_handler():
    # Sent to the main thread itself: a process-wide kill may land on another thread (loader
    # workers, gloo), whose handler then trips the main thread only after the check below.
    main_thread = threading.main_thread().ident
    # An earlier test (or a library it loaded) may have left its own SIGINT handler installed:
    # start from Python's default, which the second signal must reach.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with _StopSignal() as stop:
            signal.pthread_kill(main_thread, signal.SIGINT)
            assert stop.received == signal.SIGINT
            with pytest.raises(KeyboardInterrupt):  # a stuck loop can still be interrupted
                signal.pthread_kill(main_thread, signal.SIGINT)
                for _ in range(200):  # Python runs the handler at a later bytecode
                    time.sleep(0.005)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_failed_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"x": 1})

    def full_disk(obj, f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 2, {"x": 2})
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000000001.pt"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000001.pt"]


def test_failed_resumed_run_leaves_no_stale_summary(tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main([*FIM, "--steps", "40", "--stop-at", "20", "--out", str(out)]) == 0
    assert (out / "summary.json").exists()
    calls = []

    def failing_evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("evaluation crashed")
        return 1.0, 0.5

    monkeypatch.setattr(trainer, "evaluate", failing_evaluate)
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        main([*FIM, "--steps", "40", "--out", str(out), "--resume"])
    assert not (out / "summary.json").exists()
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_only_lost_peers_read_as_collective_failures():
    assert _COLLECTIVE_FAILURE.search("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer")
    assert _COLLECTIVE_FAILURE.search("Timed out waiting 3000ms for recv operation to complete")
    assert not _COLLECTIVE_FAILURE.search("ProcessGroupGloo: out of memory allocating 4 GB")
    assert not _COLLECTIVE_FAILURE.search("gloo all_reduce: tensors must have the same shape")


def test_lr_scaling_is_bounded_and_only_while_importance_sampling_is_on(tmp_path):
    out = tmp_path / "scaled"
    # the delivered cut is measured afresh after switching on (below 1 here until step 200)
    args = [*FIM, "--steps", "260", "--always-on", "--lr-scale", "linear", "--lr-scale-max", "1.5"]
    assert main([*args, "--out", str(out)]) == 0
    rows = load_latest(out)[0]["metrics"]
    assert all(0.002 <= r["lr"] <= 0.002 * 1.5 + 1e-12 for r in rows)
    assert all(r["lr"] == 0.002 for r in rows if r["step"] <= 50)  # importance sampling still off
    assert any(r["lr"] > 0.002 for r in rows if r["is_active"])
    assert main([*FIM, "--steps", "5", "--lr-scale-max", "0.5", "--out", str(out)]) == 2  # a bad flag


def test_lr_multiplier_follows_the_rule_bounded_and_smoothed():
    data = load_data("digits")
    sampler = ImportanceSampler(data.train_idx, batch_size=64, smoothing=0.2, seed=0)
    config = MiningConfig(factor="loss", lr_scale="sqrt", lr_scale_max=1.5, refresh_fraction=0.0)
    miner = Miner(sampler, config)

    def predicted(lr_retuned: bool = False) -> float:
        return 3.0 if lr_retuned else 2.0

    miner.noise = SimpleNamespace(noise_scale=10.0, variance_cut=9.0, predicted_step_gain=predicted)
    miner.decide(49)  # no harvest yet: the switch stays off, so the multiplier stays 1
    assert not sampler.active and miner.lr_multiplier == 1.0
    sampler.active, miner.config.always_on = True, True
    miner.decide(99)
    assert miner.lr_multiplier == pytest.approx(0.7 + 0.3 * 1.5)  # sqrt(9) = 3, bounded at 1.5
    for step in range(20):
        miner.decide(149 + 50 * step)
    assert miner.lr_multiplier == pytest.approx(1.5, abs=1e-3)
    last = miner.noise_history[-1]
    assert (last.active, last.noise_scale, last.variance_cut) == (True, 10.0, 9.0)
    assert (last.predicted_step_gain, last.predicted_step_gain_lr_retuned) == (2.0, 3.0)


def test_lr_multiplier_is_one_as_soon_as_importance_sampling_is_off():
    """Off, the run draws uniformly and trains at the user's rate: the multiplier decayed 1.70 ->
    1.49 -> 1.34 over ~150 uniform steps before; it snaps to 1, and rises smoothly again when on."""
    switch = Switch(MiningConfig(lr_scale="linear"), batch_size=64, cost=0.05)
    for _ in range(10):
        switch.update_lr_multiplier(2.5, active=True)
    assert switch.lr_multiplier == pytest.approx(2.0, abs=0.05)
    switch.update_lr_multiplier(2.5, active=False)
    assert switch.lr_multiplier == 1.0
    switch.update_lr_multiplier(2.5, active=True)
    assert switch.lr_multiplier == pytest.approx(0.7 + 0.3 * 2.0)
