"""Do no harm: when importance sampling's faster fitting stops paying on validation, back to uniform."""

import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch

from seqis.cli import main
from seqis.errors import ConfigError
from seqis.importance.config import MiningConfig
from seqis.importance.mining import Miner
from seqis.importance.switch import HarvestSample, Switch, ValidationWatch
from seqis.lightning import ImportanceSampling
from seqis.sampling.sampler import ImportanceSampler


def _feed(watch, rows, active=True):
    return [watch.observe(step, val, train, active) for step, (val, train) in enumerate(rows)]


def test_the_watch_trips_on_a_stall_with_a_widening_gap_and_stays_tripped():
    watch = ValidationWatch(patience=2)
    improving = [(1.0, 0.9), (0.8, 0.7), (0.6, 0.5)]
    assert _feed(watch, improving) == [False] * 3 and watch.stalled == 0
    assert _feed(watch, [(0.61, 0.40), (0.62, 0.30)]) == [False, True]
    assert not watch.observe(9, 0.1, 0.0, True)  # it trips once, and stays tripped
    assert watch.tripped and watch.tripped_at == 1
    assert watch.best == 0.6 and watch.gap_at_best == pytest.approx(0.1)
    assert ValidationWatch(patience=2).state_dict()["best"] is None  # JSON-safe before any validation


def test_a_stall_without_a_wider_gap_is_a_plateau_not_overfitting():
    watch = ValidationWatch(patience=2)
    _feed(watch, [(0.6, 0.3)])
    assert _feed(watch, [(0.61, 0.35), (0.62, 0.40), (0.63, 0.45)]) == [False] * 3  # both rise alike
    assert _feed(watch, [(0.64, 0.2)]) == [True]  # now the training loss falls away from it


def test_stalls_under_uniform_do_not_count_and_patience_zero_never_trips():
    watch = ValidationWatch(patience=2)
    _feed(watch, [(0.5, 0.4), (0.6, 0.3), (0.7, 0.2)], active=False)
    assert watch.stalled == 0 and not watch.tripped
    assert _feed(watch, [(0.7, 0.1), (0.7, 0.0)]) == [False, True]
    never = ValidationWatch(patience=0)
    assert not any(_feed(never, [(0.5, 0.4)] + [(0.9, 0.0)] * 10))
    without_train = ValidationWatch(patience=1)  # no training loss: the stall alone decides
    assert _feed(without_train, [(0.5, None), (0.6, None)]) == [False, True]
    restored = ValidationWatch(patience=1)
    restored.load_state_dict(without_train.state_dict())
    assert restored.tripped_at == 1 and restored.best == 0.5
    with pytest.raises(ConfigError, match="MiningConfig.val_patience"):
        MiningConfig(val_patience=-1)


def test_a_tripped_watch_keeps_the_switch_off_and_turns_the_sampler_off():
    sampler = ImportanceSampler(range(200), batch_size=8)
    sampler.record(torch.arange(200), torch.linspace(0.01, 10.0, 200) ** 3)
    sampler.active = True
    miner = Miner(sampler, MiningConfig(val_patience=1))
    miner.observe_validation(100, 0.5, 0.4)
    miner.observe_validation(200, 0.7, 0.1)
    assert not sampler.active and miner.summary()["validation_watch"]["tripped_at"] == 200
    heavy = HarvestSample(
        torch.arange(64.0).numpy(), (torch.linspace(0.01, 10.0, 64) ** 3).numpy(), torch.ones(64).numpy()
    )
    assert not miner.switch.decide(300, False, heavy, None)  # a gain that would switch on: refused
    assert miner.judge(300).reason == "the validation watch tripped"  # what diagnose reports
    fresh = Switch(MiningConfig(), 8, 0.07)
    assert fresh.decide(300, False, heavy, None)
    always = Miner(ImportanceSampler(range(200), batch_size=8), MiningConfig(always_on=True, val_patience=1))
    always.sampler.active = True
    always.observe_validation(100, 0.5, 0.4)
    always.observe_validation(200, 0.7, 0.1)
    assert always.sampler.active  # --always-on means no switch, the watch included


def _vowels(tmp_path, patience):
    out = tmp_path / f"patience{patience}"
    flags = (
        "train --data ucr:JapaneseVowels --hidden 64 --layers 1 --batch-size 16 --sampler fim --seed 0 "
        f"--steps 400 --eval-every 20 --no-progress --threads 1 --val-patience {patience} --out {out}"
    )
    assert main(flags.split()) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    return json.loads((out / "summary.json").read_text()), rows


def test_an_overfitting_run_returns_to_uniform(tmp_path):
    # 576 sequences: the training loss falls to ~0.01 while validation stalls near 0.1
    summary, rows = _vowels(tmp_path, patience=2)
    tripped = summary["validation_watch"]["tripped_at"]
    assert tripped is not None
    after = [int(r["is_active"]) for r in rows if int(r["step"]) > tripped]
    assert after and not any(after) and any(int(r["is_active"]) for r in rows)
    on, _ = _vowels(tmp_path, patience=0)
    assert on["validation_watch"]["tripped_at"] is None and on["is_active_share"] > summary["is_active_share"]


def test_the_lightning_callback_hands_the_logged_validation_loss_to_the_loader():
    seen = []
    callback = ImportanceSampling("head", train_monitor="train_loss")
    observe = lambda val, train, every_rank: seen.append((val, train, every_rank))  # noqa: E731
    callback.loader = SimpleNamespace(observe_validation=observe)
    metrics = {"val_loss": torch.tensor(0.5), "train_loss": torch.tensor(0.25)}
    callback.on_validation_end(SimpleNamespace(callback_metrics=metrics, sanity_checking=True), None)
    assert seen == []  # Lightning's sanity check is not a validation of training
    callback.on_validation_end(SimpleNamespace(callback_metrics=metrics, sanity_checking=False), None)
    callback.on_validation_end(SimpleNamespace(callback_metrics={}, sanity_checking=False), None)
    assert seen[0] == (0.5, 0.25, True) and math.isnan(seen[1][0]) and seen[1][1] is None  # all ranks call
