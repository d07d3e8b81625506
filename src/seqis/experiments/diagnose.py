"""``seqis diagnose``: can importance sampling pay on this data, and by how much?

It trains briefly (uniform sampling with factor harvesting, as a real run starts), or loads a
run's newest checkpoint, then scores a uniform sample of training sequences with the model
and reports the factor spread, the ceiling E[s^2]/E[s]^2, the gain the smoothing keeps, the
noise scale the run recorded, and the verdict of the very switch ``seqis train`` uses
(:meth:`seqis.importance.switch.Switch.pays`, with the same predicted mining cost), so the
two cannot disagree. The measured cost of scoring against a training step is reported
beside it, with a histogram PNG of the factors.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from seqis.errors import CheckpointError
from seqis.experiments.plots import plot_histogram, plot_noise
from seqis.importance.factors import score
from seqis.importance.mining import NOISE_FACTORS
from seqis.importance.noise import NoiseScale, predicted_step_gain
from seqis.importance.switch import StoreState, Switch, ceiling, estimated_gain, mining_cost
from seqis.training.checkpoint import load_latest
from seqis.training.config import TrainConfig
from seqis.training.trainer import build, evaluate, train


def switch_for(config: TrainConfig) -> Switch:
    """The switch a ``seqis train`` run of ``config`` decides with (its trainer always refreshes)."""
    mining = config.mining
    return Switch(mining, config.batch_size, mining_cost(mining, refreshes=mining.refresh_share > 0))


def diagnose(config: TrainConfig, sample: int = 2048, checkpoint: str | None = None) -> dict:
    """Train briefly (or load the newest checkpoint of run ``checkpoint``), then judge."""
    config = replace(
        config,
        steps=config.steps or (None if config.time_budget else 300),
        mining=replace(config.mining, always_on=False),
    )
    Path(config.out).mkdir(parents=True, exist_ok=True)
    model_state = _trained_state(config, checkpoint)
    data, device, model, *_ = build(config)
    try:
        model.load_state_dict(model_state["model"])
    except RuntimeError:
        raise CheckpointError(
            f"checkpoint {model_state['path']} does not fit this model "
            "(--model, --hidden, --layers, --embed, --data)"
        ) from None
    if checkpoint is not None:
        model_state["final_val_loss"] = evaluate(model, data, data.val_idx, device)[0]
        model_state["train_per_seq"] = _time_training_step(model, data, config.batch_size, device)
    factors, score_per_seq, pool = _score_sample(config, model, data, device, sample)
    noise = model_state["noise"]
    costs = data.lengths[pool].double().numpy() if config.mining.cost_aware else None
    store = _store_state(config, model_state, len(data.train_idx))
    b_noise = noise.noise_scale if noise is not None else None
    report = judge(config, factors, b_noise, costs, store, model_state["quality"])
    report.update(
        trained_steps=model_state["step"],
        final_val_loss=model_state["final_val_loss"],
        score_cost_per_seq_s=score_per_seq,
        train_cost_per_seq_s=model_state["train_per_seq"],
        cost_ratio=score_per_seq / model_state["train_per_seq"],
        measured_refresh_overhead=config.mining.refresh_share * score_per_seq / model_state["train_per_seq"],
    )
    return _write(config, report, factors, model_state["noise_history"])


def judge(
    config: TrainConfig,
    factors: np.ndarray,
    noise_scale: float | None,
    costs: np.ndarray | None = None,
    store: StoreState | None = None,
    quality: float = 1.0,
) -> dict:
    """The switch's verdict on fresh ``factors`` and a recorded noise scale: what ``train`` decides.

    ``costs`` (the sequences' lengths) under ``--cost-aware``, whose draws and gain follow s/sqrt(c);
    ``store`` and ``quality``: the store importance draws would come from, as the switch sees it.
    """
    switch = switch_for(config)
    switch.quality = quality
    s = np.asarray(factors, dtype=np.float64)
    fresh = estimated_gain(s, config.mining.smoothing, costs)
    gain = switch.prediction(fresh, noise_scale, store)
    b_noise = noise_scale
    step_gain = switch.predicted_step_gain(gain, b_noise)  # what pays() judges: re-tuned under --lr-scale
    pays = switch.pays(gain, b_noise)
    return {
        "data": config.data,
        "sampler": config.sampler_label,
        "factor": config.mining.factor,
        "sampled_sequences": int(s.size),
        "factor_mean": float(s.mean()),
        "factor_std": float(s.std()),
        "spread": float(s.std() / s.mean()) if s.mean() > 0 else 0.0,
        "ceiling": ceiling(s),
        "estimated_gain": fresh,
        "predicted_cut": gain,
        "store": None if store is None else asdict(store),
        "noise_scale": b_noise,
        "predicted_step_gain": predicted_step_gain(b_noise, gain, config.batch_size),
        "predicted_step_gain_lr_retuned": predicted_step_gain(b_noise, gain, config.batch_size, True),
        "predicted_mining_cost": switch.cost,
        "pool_ratio": switch.pool_ratio if config.mining.sampler == "presample" else None,
        "is_pays": pays,
        "verdict": _verdict(config, s, gain, b_noise, step_gain, switch.cost, pays)
        + _store_note(store, fresh),
    }


def _verdict(config, s, gain, b_noise, step_gain, cost, pays) -> str:
    mining = config.mining
    text = (
        f"{config.data}: {mining.factor} factor spread std/mean = {s.std() / max(s.mean(), 1e-300):.3f}, "
        f"ceiling E[s²]/E[s]² = {ceiling(s):.3f}, cut predicted at smoothing {mining.smoothing}: {gain:.3f}. "
    )
    if b_noise is not None:
        text += (
            f"Gradient noise scale B = {b_noise:.0f} sequences at batch {config.batch_size}: the cut "
            "predicts "
            f"{step_gain:.3f}x fewer steps "
            + ("with the learning rate scaled" if mining.scales_lr else "at the same learning rate")
            + ", against a predicted mining cost of "
            f"{cost:.1%}. "
        )
    else:
        basis = (
            "not yet known" if mining.factor in NOISE_FACTORS else f"not defined for {mining.factor} factors"
        )
        text += f"The noise scale is {basis}, so the switch judges the gain against {mining.min_gain}. "
    if pays:
        return text + "Importance sampling can pay: seqis train switches it on."
    return (
        text + "Importance sampling cannot pay here: seqis train keeps sampling uniformly, paying only "
        "the harvest."
    )


def _store_note(store: StoreState | None, fresh: float) -> str:
    if store is None:
        return ""
    return f" (The store is {store.coverage:.0%} scored; fresh factors alone promise {fresh:.3f}.)"


def _store_state(config: TrainConfig, model_state: dict, n: int) -> StoreState | None:
    """The store switching on now would draw from, over the rest of the plan as ``train`` sees
    it (--steps or --epochs past the trained steps), or over the next epoch without one."""
    if config.mining.sampler != "importance":
        return None
    b = config.batch_size
    epochs = config.planned_epochs
    planned = config.planned_steps or (round(epochs * n / b) if epochs else None)
    left = planned - model_state["step"] if planned else 0
    horizon = left if left > 0 else -(-n // b)
    return StoreState.of(model_state["coverage"], n, b, config.mining.refresh_share, horizon)


def _trained_state(config: TrainConfig, checkpoint: str | None) -> dict:
    """Model weights, step, noise scale and the figures of a brief run or a saved one."""
    found = {}
    if checkpoint is None:
        summary = train(config)
        found["final_val_loss"] = summary["final_val_loss"]
        found["train_per_seq"] = summary["wall_time_s"] / max(1, summary["steps"] * config.batch_size)
    state, path = load_latest(Path(checkpoint or config.out))
    miner_state = state.get("miner") or {}
    noise = None
    if miner_state.get("noise"):
        noise = NoiseScale(config.batch_size)
        noise.load_state_dict(miner_state["noise"])
    factors = (state.get("sampler") or {}).get("factors")
    found.update(
        model=state["model"],
        path=path,
        step=state["run"]["step"],
        coverage=float(np.mean(~np.isnan(np.asarray(factors)))) if factors is not None else 0.0,
        quality=(miner_state.get("switch") or {}).get("quality", 1.0),
        noise=noise,
        noise_history=miner_state.get("noise_history", []),
    )
    return found


def _score_sample(
    config: TrainConfig, model, data, device, sample: int
) -> tuple[np.ndarray, float, torch.Tensor]:
    """Factors of a seeded uniform sample of training sequences, the seconds per sequence, the sample."""
    model.eval()
    g = torch.Generator().manual_seed(config.seed)
    pool = data.train_idx[torch.randperm(len(data.train_idx), generator=g)[:sample]]
    start = time.perf_counter()
    chunks = pool.split(config.mining.refresh_batch)
    factors = torch.cat([score(config.mining.factor, model, data.batch(c).to(device)).cpu() for c in chunks])
    return factors.double().numpy(), (time.perf_counter() - start) / len(pool), pool


def _write(config: TrainConfig, report: dict, factors: np.ndarray, history: list) -> dict:
    out = Path(config.out)
    noise_png = plot_noise(history, out / "noise.png", f"{config.data}, batch {config.batch_size}")
    title = f"{config.mining.factor} factors on {config.data} (ceiling {report['ceiling']:.3f})"
    report["histogram"] = str(plot_histogram(factors, out / "factors.png", title))
    report["noise_plot"] = str(noise_png) if noise_png else None
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
