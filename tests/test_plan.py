"""One Plan: what a run plans, read alike by the trainer, the miner, diagnose and the replay."""

import json
import math
from fractions import Fraction

import pytest
import torch

from seqis.cli import main
from seqis.plan import Plan
from seqis.sampling.sampler import ImportanceSampler, PruningSampler
from seqis.training.config import TrainConfig

TINY = ["--data", "digits:rows", "--hidden", "8", "--layers", "1", "--no-progress", "--threads", "1"]


def test_a_plan_in_steps_or_epochs_or_none():
    steps, epochs, none = Plan(1000, 64, steps=300), Plan(60_000, 64, epochs=2.0), Plan(1000, 64)
    assert (steps.length, steps.planned_steps, steps.progress(150, 9.9)) == (300, 300, 0.5)
    assert epochs.length == 1875.0 and epochs.planned_steps == 1875 and epochs.progress(7, 0.5) == 0.25
    assert none.length == math.inf and none.planned_steps is None and none.progress(7, 3.0) == 0.0
    assert not none.done(10**9, Fraction(10**6))
    # the switch's horizon: the rest of the plan (before --anneal's tail), an epoch without a plan
    assert steps.horizon(99) == 200 and steps.horizon(99, steps.tail_start(0.25)) == 125
    assert none.horizon(99) == math.ceil(1000 / 64) and steps.horizon(299) == 1
    assert steps.tail_start(0.0) is None and epochs.tail_start(0.3) is None
    with pytest.raises(ValueError, match="not both"):
        Plan(10, 2, steps=5, epochs=1.0)


def test_train_config_builds_the_plan_its_budget_and_ranks_ask_for():
    config = TrainConfig(epochs=2.0, budget=0.8, batch_size=32)
    assert config.plan(60_000, world=2) == Plan(60_000, 64, epochs=1.6)
    assert TrainConfig(steps=1000, budget=0.67).plan(500) == Plan(500, 64, steps=670)


def test_an_epoch_plan_ends_at_its_last_sequence_under_importance_draws():
    """1.6 epochs of 60,000 at batch 64 are 1,500 steps. Summed as floats, two importance batches
    and the uniform rest fell short of 1.6 and the run took a 1,501st step (as committed runs did)."""
    sampler = ImportanceSampler(range(60_000), batch_size=64, seed=0)
    plan = Plan(60_000, 64, epochs=1.6)
    steps = 0
    while not plan.done(steps, sampler.epochs_done_exact):
        sampler.active = steps < 2
        sampler.draw()
        steps += 1
    assert steps == 1500
    assert sampler.epochs_done < 1.6  # the float the old check compared: one more step


def test_exact_epochs_survive_a_checkpoint_and_pruning_s_early_end():
    sampler = PruningSampler(range(100), batch_size=10, ratio=0.5, seed=0, total_epochs=2.0, anneal=0.5)
    sampler.record(torch.arange(100), torch.rand(100))
    sampler.active = True
    for _ in range(13):
        sampler.draw()
    copy = PruningSampler(range(100), batch_size=10, ratio=0.5, seed=0, total_epochs=2.0, anneal=0.5)
    copy.load_state_dict(sampler.state_dict())
    assert copy.epochs_done_exact == sampler.epochs_done_exact
    assert float(sampler.epochs_done_exact) == pytest.approx(sampler.epochs_done)


def test_resuming_with_a_changed_plan_is_refused_where_the_run_depends_on_it(tmp_path, capsys):
    """--resume DIR --steps 400 under a decayed schedule re-planned the rest: the rate at step 30 was
    0.00197 against the straight 40-step run's 0.00035. It is refused, with how to do it right."""
    decayed = tmp_path / "decayed"
    args = [*TINY, "--sampler", "uniform", "--schedule", "cosine", "--steps", "40", "--eval-every", "10"]
    assert main(["train", *args, "--stop-at", "20", "--out", str(decayed)]) == 0
    assert main(["train", "--resume", str(decayed), "--steps", "400", "--stop-at", "30"]) == 2
    err = capsys.readouterr().err
    assert "steps 40 -> 400" in err and "the learning rate follows the plan" in err
    assert "train the new plan from the start" in err
    assert json.loads((decayed / "config.json").read_text())["steps"] == 40  # the refusal wrote nothing
    # continuing the same plan is fine, and so is extending one that nothing depends on
    assert main(["train", "--resume", str(decayed), "--stop-at", "30"]) == 0
    constant = tmp_path / "constant"
    args = [*TINY, "--sampler", "uniform", "--steps", "20", "--eval-every", "10"]
    assert main(["train", *args, "--out", str(constant)]) == 0
    assert main(["train", "--resume", str(constant), "--steps", "30"]) == 0
    assert json.loads((constant / "summary.json").read_text())["steps"] == 30


@pytest.mark.parametrize(
    "extra, reason",
    [
        (["--warmup", "5"], "warm-up"),
        (["--sampler", "fim", "--anneal", "0.5"], "uniform tail"),
        (["--sampler", "prune"], "full-data tail"),
        (["--sampler", "fim"], "over the rest of the plan"),
    ],
)
def test_each_plan_dependence_names_itself(tmp_path, capsys, extra, reason):
    out = tmp_path / "run"
    assert main(["train", *TINY, *extra, "--steps", "20", "--stop-at", "10", "--out", str(out)]) == 0
    assert main(["train", "--resume", str(out), "--steps", "40"]) == 2
    assert reason in capsys.readouterr().err


def test_diagnose_takes_an_epoch_plan(tmp_path):
    """diagnose --epochs 1 failed with 'give --steps or --epochs, not both'."""
    out = tmp_path / "diag"
    assert main(["diagnose", *TINY, "--epochs", "4", "--out", str(out)]) == 0
    report = json.loads((out / "diagnosis.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 4 and config["steps"] is None
    assert report["judgement"]["step"] == round(4 * 1617 / 64) // 2  # half of 4 epochs of digits


def test_the_first_metrics_row_logs_the_rate_the_first_step_uses(tmp_path):
    """Under a warm-up the step-0 row logged the peak (the optimizer's construction value)."""
    out = tmp_path / "warm"
    args = [*TINY, "--sampler", "uniform", "--steps", "40", "--warmup", "10", "--lr", "0.01"]
    assert main(["train", *args, "--eval-every", "10", "--out", str(out)]) == 0
    rows = (out / "metrics.csv").read_text().splitlines()
    lr = rows[0].split(",").index("lr")
    assert float(rows[1].split(",")[lr]) == pytest.approx(0.01 / 10)  # the warm-up's first step
    assert float(rows[2].split(",")[lr]) == pytest.approx(0.01)  # step 10: the warm-up is over


def test_resume_run_dir_accepts_what_may_change_and_refuses_the_rest(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*TINY, "--sampler", "uniform", "--steps", "20", "--eval-every", "10", "--out", str(out)]
    assert main(["train", *args]) == 0
    # the validation cap moves sequences into training where a set has no test split: kept
    assert main(["train", "--resume", str(out), "--val-size", "100"]) == 2
    assert "--val-size cannot be changed" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--out", str(tmp_path / "elsewhere")]) == 2
    assert "--out cannot be changed" in capsys.readouterr().err
    # a plan in epochs replaces one in steps (uniform at a constant rate depends on no plan)
    assert main(["train", "--resume", str(out), "--epochs", "1", "--eval-every", "5"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["epochs"] == 1 and summary["config"]["steps"] is None
    assert summary["steps"] == math.ceil(1617 / 64)


def test_diagnose_judges_a_uniform_run_and_a_torchrun_checkpoint(tmp_path, capsys):
    from seqis.training.checkpoint import load_latest, save_checkpoint

    out = tmp_path / "uniform"
    assert main(["train", *TINY, "--sampler", "uniform", "--steps", "60", "--out", str(out)]) == 0
    state, _ = load_latest(out)
    state["world_size"] = 2  # as if two processes had written it: inspected, not resumed
    state["torch_rng"], state["cuda_rng"] = state["torch_rng"] * 2, state["cuda_rng"] * 2
    save_checkpoint(out, 61, state, keep=3)
    assert main(["diagnose", "--checkpoint", str(out), "--out", str(tmp_path / "diag")]) == 0
    judgement = json.loads((tmp_path / "diag" / "diagnosis.json").read_text())["judgement"]
    assert judgement["step"] == 60 and judgement["coverage"] == 0.0
    assert "a uniform run, judged for fim from fresh factors" in judgement["reason"]
