"""A race's numbers: pure functions over run records (no plots, no markdown, no training).

A run record is a run's ``summary.json`` fields (see ``load_runs``) plus ``rows``, its
``metrics.csv``. Time-to-target is the training clock at the first validation at or below
the target. A run that never reaches a target is *censored*: its time is at least its whole
run, so the speedup computed with that time is a bound (an upper bound when the sampler
missed, a lower bound when uniform missed). Censored pairs are kept and counted.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from seqis.errors import ConfigError
from seqis.experiments.budgets import analyse_budgets, budget_of
from seqis.importance.lr_scale import LrMultiplier
from seqis.importance.noise import fixed_lr_step_gain, scheduled_step_gain
from seqis.training.config import TrainConfig
from seqis.training.metrics import read_metrics
from seqis.training.schedule import Schedule

FRACTIONS = (0.3, 0.6, 0.9, 1.0)
# Each race metric and whether lower or higher is better.
METRICS = {"val_loss": min, "train_eval_loss": min, "val_acc": max}
# The fields of the switch's histories in a run's summary, in the order old summaries listed them.
NOISE_FIELDS = (
    "step",
    "active",
    "noise_scale",
    "variance_cut",
    "predicted_step_gain",
    "predicted_step_gain_lr_retuned",
)
GAIN_FIELDS = ("step", "gain", "active")
# The summary fields a run record keeps.
RECORD_KEYS = (
    "sampler",
    "seed",
    "steps",
    "wall_time_s",
    "final_val_loss",
    "final_val_acc",
    "final_train_eval_loss",
    "mining_share",
    "mining_time_s",
    "is_active_share",
    "clipped_share",
    "factor_ceiling",
    "estimated_gain_last",
    "init_params_sha256",
    "params_sha256",
    "steps_per_s",
    "padded_over_real",
    "sequences_per_s",
)


def reached(value: float, target: float, metric: str = "val_loss") -> bool:
    """Whether ``value`` is at or past ``target`` in the metric's better direction."""
    return value >= target if METRICS[metric] is max else value <= target


def time_to_target(
    rows: list[dict], target: float, key: str = "wall_time_s", metric: str = "val_loss"
) -> float | None:
    """The clock (``wall_time_s`` or ``step``) of the first evaluation that reaches ``target``."""
    for row in rows:
        value = row.get(metric)
        if value is not None and reached(value, target, metric):
            return row[key]
    return None


def running_best(rows: list[dict], when: float, key: str = "step", metric: str = "val_loss") -> float | None:
    """The best value of ``metric`` evaluated by ``when`` (a step or a time)."""
    seen = [r[metric] for r in rows if r[key] <= when and r.get(metric) is not None]
    return METRICS[metric](seen) if seen else None


def auto_targets(
    uniform_runs: list[list[dict]], metric: str = "val_loss", fractions: tuple[float, ...] = FRACTIONS
) -> list[float]:
    """Uniform's running best at each fraction of its steps, median over seeds.

    The last (100%) target is uniform's best: about half of uniform's own seeds reach it.
    Where uniform stopped improving (it overfits), later targets repeat earlier ones.
    """
    targets: list[float] = []
    for f in fractions:
        values = [running_best(rows, f * rows[-1]["step"], "step", metric) for rows in uniform_runs]
        # Never rounded: a rounded target can fall below a seed's own best, which then "misses" it.
        targets.append(statistics.median(v for v in values if v is not None))
    return targets


def parse_targets(text: str, label: str = "--targets") -> list[float]:
    """Targets as comma-separated positive numbers (``auto`` is handled by the caller); ``label``
    names the option in a message."""
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"{label} must be 'auto' or comma-separated numbers: {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise ConfigError(f"{label} must be positive numbers: {text!r}")
    return values


def _pair_stats(ratios: list[float], lower: int, upper: int, unresolved: int) -> dict:
    """Median and range of the pairs' ratios, with what kind of figure the median is.

    A pair where uniform never reached the target has a lower bound (its whole run stands for
    its time); one where the sampler never did, an upper bound. A median over exact values and
    lower bounds is a lower bound, likewise for upper; over both kinds of bound it says nothing
    (``kind`` "mixed", no median).
    """
    kind = "mixed" if lower and upper else "lower" if lower else "upper" if upper else "exact"
    known = bool(ratios) and kind != "mixed"
    return {
        "median": statistics.median(ratios) if known else None,
        "min": min(ratios) if ratios else None,
        "max": max(ratios) if ratios else None,
        "n": len(ratios),
        "kind": kind if ratios else "none",
        "censored": lower + upper,
        "lower_bounds": lower,
        "upper_bounds": upper,
        "neither_reached": unresolved,
    }


def _paired_ratios(pairs: list[tuple[dict, dict]], target: float, key: str, metric: str) -> dict:
    """Uniform's time-to-target / the sampler's for each (uniform, sampler) pair of one seed."""
    total = {"wall_time_s": "wall_time_s", "step": "steps"}[key]
    ratios, lower, upper, unresolved = [], 0, 0, 0
    for u, s in pairs:
        tu = time_to_target(u["rows"], target, key, metric)
        ts = time_to_target(s["rows"], target, key, metric)
        if (tu is None and ts is None) or tu == 0 or ts == 0:  # 0: met before training
            unresolved += 1
            continue
        lower += tu is None  # uniform's whole run stands for a longer time: the ratio is at least this
        upper += ts is None
        tu = tu if tu is not None else u[total]
        ts = ts if ts is not None else s[total]
        ratios.append(tu / ts)
    return _pair_stats(ratios, lower, upper, unresolved)


def speedups(
    records: list[dict], targets: list[float], key: str = "wall_time_s", metric: str = "val_loss"
) -> dict:
    """``speedup[sampler][target]``: uniform's time-to-target / the sampler's, paired by seed.

    With ``key="step"`` the same in training steps: the algorithmic gain, free of per-step
    cost and of timing noise.
    """
    by_seed = {(r["sampler"], r["seed"]): r for r in records}
    samplers = [s for s in dict.fromkeys(r["sampler"] for r in records) if s != "uniform"]
    seeds = sorted({r["seed"] for r in records})
    result: dict = {}
    for sampler in samplers:
        pairs = [(by_seed.get(("uniform", seed)), by_seed.get((sampler, seed))) for seed in seeds]
        pairs = [(u, s) for u, s in pairs if u is not None and s is not None]
        result[sampler] = {str(t): _paired_ratios(pairs, t, key, metric) for t in targets}
    return result


def best_lrs(records: list[dict], metric: str = "val_loss") -> dict[str, float]:
    """Each sampler's learning rate with the best median (over seeds) of its best ``metric``."""
    scores: dict[str, dict[float, list[float]]] = {}
    for r in records:
        best = running_best(r["rows"], float("inf"), metric=metric)
        if best is not None:
            scores.setdefault(r["sampler"], {}).setdefault(r["lr"], []).append(best)
    pick = METRICS[metric]
    return {
        sampler: pick(per_lr, key=lambda lr: statistics.median(per_lr[lr]))
        for sampler, per_lr in scores.items()
    }


def history_record(row: list | tuple | dict, fields: tuple[str, ...] = NOISE_FIELDS) -> dict:
    """One row of a summary's ``noise_history`` (or, with ``GAIN_FIELDS``, ``gain_history``), named.

    Newer summaries store rows as records already; older ones as lists in ``fields``' order,
    and the oldest noise rows lack the prediction at uniform's learning rate (they hold only
    the re-tuned gain, fifth), which becomes None.
    """
    if isinstance(row, dict):
        return {f: row.get(f) for f in fields}
    values = list(row)
    if fields == NOISE_FIELDS and len(values) == len(fields) - 1:
        values.insert(fields.index("predicted_step_gain"), None)
    return dict(zip(fields, values, strict=True))


def predicted_while_on(summary: dict) -> dict:
    """Median predicted step gains (uniform's lr, lr re-tuned) over decisions that left IS on.

    The gain at uniform's lr is computed from the median re-tuned one (2 - 1/G), so that runs
    recorded before the fixed-lr prediction existed report it too.
    """
    records = [history_record(row) for row in summary.get("noise_history", [])]
    retuned = [
        r["predicted_step_gain_lr_retuned"]
        for r in records
        if r["active"] and r["predicted_step_gain_lr_retuned"] is not None
    ]
    tuned = statistics.median(retuned) if retuned else None
    return {
        "predicted_step_gain": fixed_lr_step_gain(tuned) if tuned is not None else None,
        "predicted_step_gain_lr_retuned": tuned,
    }


def scheduled_prediction(summary: dict) -> float | None:
    """The run's step gain under its own schedule (:func:`scheduled_step_gain`), replayed from the
    decisions it recorded: each decision's re-tuned G holds until the next (1 while IS is off),
    and under ``--lr-scale`` the multiplier follows the switch's own rule. None without a history."""
    records = [history_record(row) for row in summary.get("noise_history", [])]
    steps, saved = summary.get("steps"), summary.get("config", {})
    if not records or not steps or "schedule" not in saved:
        return None
    config = TrainConfig.from_dict(saved)  # the trainer's own schedule over the run's own plan
    plan = config.plan(summary["data_stats"]["train"], summary.get("world_size", 1))
    schedule = Schedule.over(plan, config.schedule, config.warmup, config.lr_floor)
    multiplier = LrMultiplier(config.mining.lr_scale, config.mining.lr_scale_max)  # the switch's rule
    factors, gains, multipliers = [], [], []
    gain, at = 1.0, 0
    for step in range(steps):
        while at < len(records) and records[at]["step"] <= step:
            record, at = records[at], at + 1
            on = bool(record["active"]) and record["predicted_step_gain_lr_retuned"] is not None
            gain = record["predicted_step_gain_lr_retuned"] if on else 1.0
            multiplier.update(record["variance_cut"], on)
        factors.append(schedule.factor(step * schedule.step_share))
        gains.append(gain)
        multipliers.append(multiplier.value)
    return scheduled_step_gain(factors, gains, multipliers)


def run_record(summary: dict, rows: list[dict]) -> dict:
    """A run record: the summary's ``RECORD_KEYS``, its lr, its predicted gains (at a kept rate,
    re-tuned, and under its schedule) and its metrics rows."""
    return {
        **{k: summary.get(k) for k in RECORD_KEYS},
        "lr": summary["config"]["lr"],
        # the rule the run scaled its rate by (auto resolved when the run was configured)
        "lr_scale": summary["config"].get("mining", {}).get("lr_scale", "none"),
        "budget": budget_of(summary),
        **predicted_while_on(summary),
        "scheduled_step_gain": scheduled_prediction(summary),
        "rows": rows,
    }


def load_runs(out: Path) -> list[dict]:
    """Run records from ``out/runs/*`` (finished runs only: those with a ``summary.json``)."""
    records = []
    for run_dir in sorted((Path(out) / "runs").iterdir()):
        if (run_dir / "summary.json").exists():
            summary = json.loads((run_dir / "summary.json").read_text())
            records.append(run_record(summary, read_metrics(run_dir / "metrics.csv")))
    if not records:
        raise RuntimeError(f"no finished runs in {Path(out) / 'runs'}")
    return records


def check_same_init(records: list[dict]) -> None:
    """Refuse a race whose samplers of one seed and lr started from different parameters."""
    init: dict = {}
    for r in records:
        init.setdefault((r["seed"], r["lr"]), set()).add(r["init_params_sha256"])
    if any(len(v) > 1 for v in init.values()):
        raise RuntimeError("samplers of one seed started from different parameters")


def run_label(name: str) -> str:
    """The label a ``--samplers`` name's runs carry (``presample`` -> ``presample:fim``)."""
    return TrainConfig().with_sampler(name).sampler_label


def tuned_runs(records: list[dict], best_lr: dict[str, float]) -> list[dict]:
    """The records of each sampler at its own best learning rate."""
    return [r for r in records if r["lr"] == best_lr[r["sampler"]]]


def analyse(meta: dict, records: list[dict]) -> dict:
    """A race's summary (without its markdown tables): ``race.json``'s fields, then the numbers.

    Tuned vs tuned: every sampler is compared at its own best learning rate, to targets taken
    from uniform's runs at its best one.
    """
    check_same_init(records)
    everything, records = records, [r for r in records if r["budget"] == 1.0]  # time to target: full budget
    tuned = best_lrs(records)
    chosen = tuned_runs(records, tuned)
    uniform_rows = [r["rows"] for r in chosen if r["sampler"] == "uniform"]
    metrics = [m for m in METRICS if any(row.get(m) is not None for rows in uniform_rows for row in rows)]
    spec = meta["targets"]
    targets = {m: auto_targets(uniform_rows, m) for m in metrics}
    if spec != "auto":
        targets["val_loss"] = parse_targets(spec)
    result = {
        **meta,
        # Runs are named by label (presample -> presample:fim): the tables' rows follow them.
        "samplers": meta.get("labels") or [run_label(s) for s in meta["samplers"]],
        "targets_spec": spec,
        "best_lr": tuned,
        "metrics": metrics,
        "targets": targets,
        "speedup": {m: speedups(chosen, targets[m], "wall_time_s", m) for m in metrics},
        "step_speedup": {m: speedups(chosen, targets[m], "step", m) for m in metrics},
        "runs": [{k: v for k, v in r.items() if k != "rows"} for r in everything],
    }
    for r, rec in zip(result["runs"], everything, strict=True):
        r["tuned"] = rec["lr"] == tuned[rec["sampler"]] and rec["budget"] == 1.0
        r["best"] = {m: running_best(rec["rows"], float("inf"), metric=m) for m in metrics}
    if meta.get("budgets"):
        result["budget_protocol"] = analyse_budgets([r for r in everything if r["lr"] == tuned[r["sampler"]]])
    return result
