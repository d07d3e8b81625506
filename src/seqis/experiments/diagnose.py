"""``seqis diagnose``: can importance sampling pay on this data, and by how much?

It trains the first ``--stop-at`` steps (300 by default, half the plan when that is shorter) of
the run ``seqis train`` would make, or restores a run's newest checkpoint, through the
trainer's own :class:`~seqis.training.trainer.Run`. The verdict is the judgement of that run's
very miner (:meth:`seqis.importance.mining.Miner.judge`): the same switch, cost, store horizon
and ``--anneal`` tail as in training, so the two cannot disagree. A uniform run keeps no
factors: its checkpoint is judged as the switch would judge turning ``fim`` on there, from
fresh factors and an empty store.
Beside it, a uniform sample of training sequences is scored afresh to show the factors' spread
and ceiling E[s^2]/E[s]^2 (a histogram PNG), and the measured cost of scoring against a
training step is reported.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from seqis.data.registry import load_data
from seqis.distributed import DistContext
from seqis.errors import CheckpointError
from seqis.experiments.plots import plot_histogram, plot_switch
from seqis.importance.factors import FACTORS
from seqis.importance.switch import HarvestSample, Judgement, StoreState, as_records, ceiling, estimated_gain
from seqis.options import name
from seqis.training.config import TrainConfig
from seqis.training.trainer import Run, buckets_could_help, buckets_pay, evaluate, length_lever

BRIEF_STEPS = 300  # what diagnose trains, and plans when the command plans nothing


def diagnosis_config(config: TrainConfig, sequences: int) -> TrainConfig:
    """The run diagnose trains: ``config``'s own (a plan's end is not judged: it stops at 300 steps,
    or half the plan when that is shorter), with the switch deciding (``--always-on`` would leave
    it nothing to judge). Without a plan the switch's horizon is an epoch, as in ``train``."""
    planned = config.plan(sequences).planned_steps
    stop_at = config.stop_at or (None if config.time_budget else min(BRIEF_STEPS, planned or BRIEF_STEPS))
    if config.stop_at is None and planned is not None and planned <= 2 * BRIEF_STEPS:
        stop_at = max(1, planned // 2)
    return replace(config, stop_at=stop_at, mining=replace(config.mining, always_on=False))


def diagnose(config: TrainConfig, sample: int = 2048, checkpoint: str | None = None) -> dict:
    """Train briefly (or restore the newest checkpoint of run folder ``checkpoint``), then judge."""
    if checkpoint is None:
        data = load_data(config.data, config.data_options)
        config = diagnosis_config(config, len(data.train_idx))
        run = Run(config, data, DistContext())
        summary = run.train()
        train_per_seq = summary["wall_time_s"] / max(1, summary["steps"] * config.batch_size)
        val_loss = summary["final_val_loss"]
    else:
        run = _restored(Path(checkpoint), config)
        config = run.config
        val_loss = evaluate(run.model, run.data, run.data.val_idx, run.device)[0]
        train_per_seq = _time_training_step(run.model, run.data, config.batch_size, run.device)
    factors, score_per_seq, pool = _score_sample(config, run, sample)
    costs = run.data.lengths[pool].double().numpy() if config.mining.cost_aware else None
    if run.miner is not None:
        judgement = run.miner.judge(run.state.step)
    else:
        judgement = _judge_switching_on(config, run, factors, costs)
    lever = length_lever(config, run.data.lengths[run.data.train_idx])
    report = {
        **_fresh_figures(config, factors, costs),
        "judgement": asdict(judgement),
        "is_on": judgement.active,
        "padded_over_real": lever,
        "verdict": verdict(config, judgement, factors) + _length_advice(config, lever),
        "final_val_loss": val_loss,
        "score_cost_per_seq_s": score_per_seq,
        "train_cost_per_seq_s": train_per_seq,
        "cost_ratio": score_per_seq / train_per_seq,
        "measured_refresh_overhead": config.mining.refresh_share * score_per_seq / train_per_seq,
    }
    history = as_records(run.miner.switch.history) if run.miner is not None else []
    return _write(Path(config.out), config, report, factors, history)


def _restored(run_dir: Path, options: TrainConfig) -> Run:
    """The run saved in ``run_dir`` (its own settings), restored from its newest checkpoint into a
    Run that writes to ``options.out``."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"no saved run configuration at {run_dir / 'config.json'}") from None
    config = replace(TrainConfig.from_dict(saved), out=options.out, progress=False)
    run = Run(config, None, DistContext())
    run.restore(run_dir, inspect_only=True)  # a torchrun run's too: rank 0's state
    return run


def _judge_switching_on(config: TrainConfig, run: Run, factors: np.ndarray, costs) -> Judgement:
    """A run without factors (uniform): the judgement of the switch a ``fim`` run would have, were
    it to start drawing by importance now, from fresh factors of a uniform sample (weights 1), an
    empty store and the rest of the plan; no noise scale was recorded."""
    mining = config.with_sampler("fim").mining
    plan, step = run.plan, run.state.step
    switch = mining.scheme.make_switch(mining, plan.batch_size, refreshes=True)
    mean = float(np.mean(factors)) or 1.0
    sample = HarvestSample(np.zeros_like(factors), factors / mean, np.ones_like(factors), costs)
    store = StoreState.of(0.0, plan.sequences, plan.batch_size, mining.refresh_share, plan.horizon(step - 1))
    judged = switch.judge(step, False, sample, None, store)
    return replace(judged, reason=f"{judged.reason}: a uniform run, judged for fim from fresh factors")


def _fresh_figures(config: TrainConfig, factors: np.ndarray, costs: np.ndarray | None) -> dict:
    """The spread of freshly scored factors: what fresh factors promise, whatever the store holds."""
    s = factors
    return {
        "data": config.data,
        "sampler": config.sampler_label,
        "factor": config.mining.factor,
        "sampled_sequences": int(s.size),
        "factor_mean": float(s.mean()),
        "factor_std": float(s.std()),
        "spread": float(s.std() / s.mean()) if s.mean() > 0 else 0.0,
        "ceiling": ceiling(s),
        "estimated_gain": estimated_gain(s, config.mining.smoothing, costs),
    }


def verdict(config: TrainConfig, j: Judgement, factors: np.ndarray) -> str:
    """The switch's judgement in words, then what the fresh factors show."""
    state = "on" if j.active else "off"
    text = f"{config.data}, {config.sampler_label}: after {j.step} steps the switch keeps importance "
    text += f"sampling {state} ({j.reason})."
    if j.judged:
        text += _weighed(config, j)
    factor, s = config.mining.factor, factors
    return text + (
        f" Fresh {factor} factors of {s.size} sequences: spread std/mean "
        f"{s.std() / max(s.mean(), 1e-300):.3f}, ceiling E[s²]/E[s]² {ceiling(s):.3f}."
    )


def _length_advice(config: TrainConfig, lever: dict[str, float]) -> str:
    """The other lever, where random batches pay for much padding (not a default: docs/method.md says why)."""
    if not (buckets_could_help(config) and buckets_pay(lever)):
        return ""
    random, bucket = lever["random"], lever["bucket"]
    return (
        f" Random batches of {config.batch_size} carry {random:.2f} padded positions per real one here, "
        f"length-sorted pools {bucket:.2f}: {name(config.mining, 'batching')} bucket would make a step "
        f"up to {random / bucket:.2f}x cheaper."
    )


def _weighed(config: TrainConfig, j: Judgement) -> str:
    """What a judgement weighed: the cut over the rest of the plan, and the step gain against the cost."""
    mining = config.mining
    text = f" Predicted cut over the rest of the plan {j.predicted:.3f}"
    if j.coverage is not None:
        text += f" (the store {j.coverage:.0%} scored; fresh factors promise {j.fresh:.3f})"
    if j.step_gain is None:
        known = FACTORS[mining.factor].gradient_of is not None
        basis = "not yet known" if known else f"not defined for {mining.factor} factors"
        return text + f"; the noise scale is {basis}: the cut is weighed against {name(mining, 'min_gain')}."
    rate = "with the learning rate scaled" if mining.scales_lr else "at the same learning rate"
    return text + (
        f"; with the noise scale B = {j.noise_scale:.0f} at batch {config.batch_size} it predicts "
        f"{j.step_gain:.3f}x fewer steps {rate}, against a mining cost of {j.cost:.1%}."
    )


def _score_sample(config: TrainConfig, run: Run, sample: int) -> tuple[np.ndarray, float, torch.Tensor]:
    """Factors of a seeded uniform sample of training sequences, the seconds per sequence, the sample."""
    model, data, device = run.model, run.data, run.device
    model.eval()
    g = torch.Generator().manual_seed(config.seed)
    pool = data.train_idx[torch.randperm(len(data.train_idx), generator=g)[:sample]]
    start = time.perf_counter()
    score = FACTORS[config.mining.factor].score
    chunks = pool.split(config.mining.refresh_batch)
    factors = torch.cat([score(model, data.batch(c).to(device)).cpu() for c in chunks])
    return factors.double().numpy(), (time.perf_counter() - start) / len(pool), pool


def _write(out: Path, config: TrainConfig, report: dict, factors: np.ndarray, history: list) -> dict:
    switch_png = plot_switch(history, out / "switch.png", f"{config.data}, {config.sampler_label}")
    title = f"{config.mining.factor} factors on {config.data} (ceiling {report['ceiling']:.3f})"
    report["histogram"] = str(plot_histogram(factors, out / "factors.png", title))
    report["switch_plot"] = str(switch_png) if switch_png else None
    (out / "diagnosis.json").write_text(json.dumps(report, indent=2) + "\n")
    np.save(out / "factors.npy", factors)
    return report


def _time_training_step(model, data, batch_size: int, device, repeats: int = 5) -> float:
    """Seconds per sequence of forward + backward (no optimizer step: weights stay as loaded)."""
    model.train()
    index = data.train_idx[:batch_size]
    batch = data.batch(index).to(device)
    start = time.perf_counter()
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        model(batch).loss.mean().backward()
    model.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / (repeats * len(index))
