"""Schedules over a planned budget, AdamW, clipping off, exact resume, and users' own schedulers."""

import json
import math
import shutil

import pytest
import torch
from torch.utils.data import DataLoader

import seqis
from seqis.cli import main
from seqis.training.schedule import Schedule
from tests.test_own_loop import LastStep, pad_collate, per_sequence_loss, variable_length_items

TINY = ["--data", "digits:rows", "--hidden", "16", "--layers", "1", "--no-progress", "--threads", "1"]


def test_schedule_shapes():
    share = 1 / 100
    cosine = Schedule("cosine", warmup=0.1, floor=0.1, step_share=share)
    rise = [cosine.factor(i * share) for i in range(10)]
    assert rise[0] == pytest.approx(0.1) and rise[-1] == pytest.approx(1.0)  # linear warm-up
    assert all(a < b for a, b in zip(rise, rise[1:], strict=False))
    assert cosine.factor(0.55) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cosine.factor(1.0) == pytest.approx(0.1)
    linear = Schedule("linear", 0.0, 0.0, share)
    assert linear.factor(0.25) == pytest.approx(0.75) and linear.factor(1.0) == 0.0
    onecycle = Schedule("onecycle", 0.3, 0.0, share)
    assert onecycle.factor(0.0) == pytest.approx(1 / 25 + (1 - 1 / 25) * 0.5 * (1 - math.cos(math.pi / 30)))
    assert onecycle.factor(0.3) == pytest.approx(1.0) and onecycle.factor(0.999) < 1e-4
    assert Schedule("constant", 0.0, 0.0, share).factor(0.7) == 1.0


def _lrs(out) -> list[float]:
    return [float(line.split(",")[8]) for line in (out / "metrics.csv").read_text().splitlines()[2:]]


def test_cosine_decays_to_the_floor_over_the_budget(tmp_path):
    args = [*TINY, "--sampler", "uniform", "--steps", "40", "--eval-every", "5", "--lr", "0.01"]
    args += ["--schedule", "cosine", "--warmup", "4", "--lr-floor", "0.1", "--budget", "0.5"]
    assert main(["train", *args, "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["config"]["budget"] == 0.5  # half the plan, decayed over it
    lrs = _lrs(tmp_path)
    assert lrs[0] == pytest.approx(0.01)  # the 5th step: the warm-up (4 steps) is over
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] == pytest.approx(
        0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 15 / 16)))
    )


@pytest.mark.parametrize(
    "extra",
    [
        ["--schedule", "constant"],
        ["--schedule", "cosine", "--warmup", "0.1"],
        ["--schedule", "linear", "--lr-floor", "0.2", "--optimizer", "adamw", "--weight-decay", "0.05"],
        ["--schedule", "onecycle", "--warmup", "0.3", "--clip", "0", "--sampler", "fim", "--always-on"],
    ],
)
def test_straight_and_resumed_runs_end_equal_under_every_schedule(tmp_path, extra):
    common = [*TINY, "--steps", "30", "--eval-every", "10", "--checkpoint-every", "10", *extra]
    assert main(["train", *common, "--out", str(tmp_path / "straight")]) == 0
    assert main(["train", *common, "--stop-at", "15", "--out", str(tmp_path / "split")]) == 0
    assert json.loads((tmp_path / "split" / "summary.json").read_text())["stopped_by"] == "stop_at"
    assert main(["train", "--resume", str(tmp_path / "split"), "--no-progress"]) == 0
    ends = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("straight", "split")]
    assert ends[0]["params_sha256"] == ends[1]["params_sha256"] and ends[1]["steps"] == 30


def test_an_epoch_plan_follows_pruned_epochs(tmp_path):
    # digits:rows has 1,617 training sequences: 101 steps of 16 an epoch; pruning shortens epochs
    common = [*TINY, "--batch-size", "16", "--epochs", "3", "--eval-every", "50", "--schedule", "cosine"]
    common += ["--prune-anneal", "0", "--checkpoint-every", "60"]
    assert main(["train", *common, "--sampler", "uniform", "--out", str(tmp_path / "u")]) == 0
    assert main(["train", *common, "--sampler", "prune", "--out", str(tmp_path / "p")]) == 0
    uniform, pruned = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("u", "p"))
    assert uniform["stopped_by"] == "epochs" and uniform["steps"] == math.ceil(3 * 1617 / 16)
    assert pruned["steps"] < uniform["steps"] - 40  # epochs 2 and 3 pruned: fewer steps, same plan
    lrs = _lrs(tmp_path / "p")
    assert lrs[-1] < 0.01 * 0.002  # the cosine still ran to its end
    assert (
        main(["train", *common, "--sampler", "prune", "--stop-at", "150", "--out", str(tmp_path / "s")]) == 0
    )
    assert main(["train", "--resume", str(tmp_path / "s"), "--no-progress"]) == 0
    split = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert split["params_sha256"] == pruned["params_sha256"]


def test_the_random_subset_control_spends_the_steps_pruning_would(tmp_path):
    # 1,617 training sequences, 101 steps of 16 an epoch; subsets of 60% after the first epoch
    common = [*TINY, "--batch-size", "16", "--epochs", "3", "--eval-every", "50", "--schedule", "cosine"]
    common += ["--prune-anneal", "0", "--sampler", "subset", "--subset-fraction", "0.6"]
    assert main(["train", *common, "--out", str(tmp_path / "r")]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["steps"] == math.ceil((1617 + 2 * round(0.6 * 1617)) / 16)  # the first epoch whole
    assert summary["sampler"] == "subset"
    assert _lrs(tmp_path / "r")[-1] < 0.01 * 0.002  # the schedule followed the shorter epochs
    assert main(["train", *common, "--subset-fraction", "0", "--out", str(tmp_path / "x")]) == 2


def test_clipping_off_and_adamw(tmp_path):
    args = [*TINY, "--sampler", "uniform", "--steps", "12", "--eval-every", "6", "--clip", "0"]
    assert (
        main(["train", *args, "--optimizer", "adamw", "--weight-decay", "0.1", "--out", str(tmp_path)]) == 0
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["clipped_share"] == 0 and math.isfinite(summary["final_val_loss"])
    assert main(["train", *args, "--schedule", "cosine", "--epochs", "1", "--out", str(tmp_path / "x")]) == 2


def test_a_users_own_scheduler_with_importance_loader():
    torch.manual_seed(0)
    model = LastStep()
    loader = seqis.ImportanceLoader(
        DataLoader(variable_length_items(), batch_size=8, collate_fn=pad_collate),
        model.head,
        seqis.MiningConfig(always_on=True, warmup_steps=4, check_every=4),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=16)
    seen = []
    for _ in range(2):
        for batch in loader:
            optimizer.zero_grad()
            loader.weigh(per_sequence_loss(model, batch)).backward()
            optimizer.step()
            scheduler.step()
            loader.step()
            seen.append(optimizer.param_groups[0]["lr"])
    reference = torch.optim.AdamW(LastStep().parameters(), lr=0.01)
    expected = torch.optim.lr_scheduler.OneCycleLR(reference, max_lr=0.01, total_steps=16)
    lrs = []
    for _ in range(16):
        reference.step()
        expected.step()
        lrs.append(reference.param_groups[0]["lr"])
    assert seen == lrs and loader.active  # the loader leaves the user's learning rate alone


def test_uniform_replays_the_learning_rate_a_scaled_sampler_had(tmp_path):
    """The schedule-shape control: uniform draws at exactly the rate fim's --lr-scale gave it."""
    common = [*TINY, "--steps", "200", "--eval-every", "10", "--schedule", "cosine", "--lr", "0.01"]
    fim = tmp_path / "fim"
    args = ["--sampler", "fim", "--always-on", "--lr-scale", "linear"]
    assert main(["train", *common, *args, "--out", str(fim)]) == 0
    replay = tmp_path / "replay"
    replaying = ["--sampler", "uniform", "--lr-replay", str(fim)]
    assert main(["train", *common, *replaying, "--out", str(replay)]) == 0
    scaled, replayed = _lrs(fim), _lrs(replay)
    plain = _lrs_of_plain(tmp_path, common)
    assert scaled == pytest.approx(replayed, rel=1e-9)
    assert max(a / b for a, b in zip(scaled, plain, strict=True)) > 1.05  # the multiplier was at work
    summary = json.loads((replay / "summary.json").read_text())
    assert summary["is_active_share"] == 0.0
    # another plan would put the multipliers on other steps: refused
    other_plan = [*TINY, "--steps", "300", "--eval-every", "10", "--schedule", "cosine", "--lr", "0.01"]
    assert main(["train", *other_plan, *replaying, "--out", str(tmp_path / "other")]) == 2
    # and so would another peak rate: the control replays the very same one
    other_rate = [*TINY, "--steps", "200", "--eval-every", "10", "--schedule", "cosine", "--lr", "0.02"]
    assert main(["train", *other_rate, *replaying, "--out", str(tmp_path / "other-rate")]) == 2
    # a resume replays from its checkpoint: the source folder may have changed or gone since
    split = tmp_path / "split"
    segment = ["--stop-at", "100", "--checkpoint-every", "50", "--out", str(split)]
    assert main(["train", *common, *replaying, *segment]) == 0
    shutil.rmtree(fim)
    assert main(["train", *common, *replaying, "--out", str(split), "--resume"]) == 0
    assert _lrs(split) == pytest.approx(replayed, rel=1e-9)


def _lrs_of_plain(tmp_path, common):
    plain = tmp_path / "plain"
    assert main(["train", *common, "--sampler", "uniform", "--out", str(plain)]) == 0
    return _lrs(plain)
