"""``seqis compare``: a fair wall-clock race between samplers.

Fairness rules: within a seed every sampler starts from the same initial parameters
(the model is built right after seeding, before any sampler exists; the summary's
``init_params_sha256`` proves it); runs execute one at a time; all runs share budget,
data split, model and optimizer settings.

Time-to-target is the training clock at the first validation at or below the target.
A run that never reaches a target is *censored*: its time is at least its whole run,
so the speedup computed with that time is a bound (an upper bound when the sampler
missed, a lower bound when uniform missed). Censored pairs are kept and counted.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from seqis.data.registry import load_data
from seqis.experiments.plots import plot_race, plot_speedups
from seqis.training.metrics import read_metrics
from seqis.training.trainer import TrainConfig, train

FRACTIONS = (0.3, 0.6, 0.9)


def time_to_target(rows: list[dict], target: float, key: str = "wall_time_s") -> float | None:
    """The clock (``wall_time_s`` or ``step``) of the first validation at or below ``target``."""
    for row in rows:
        if row["val_loss"] is not None and row["val_loss"] <= target:
            return row[key]
    return None


def loss_at(rows: list[dict], when: float, key: str = "wall_time_s") -> float:
    """Best validation loss reached by time (or step) ``when``."""
    seen = [r["val_loss"] for r in rows if r[key] <= when and r["val_loss"] is not None]
    return min(seen) if seen else rows[0]["val_loss"]


def auto_targets(uniform_runs: list[list[dict]], fractions=FRACTIONS) -> list[float]:
    """Losses uniform reaches at ~30/60/90% of its budget (median over seeds).

    When uniform has stopped improving early (a plateau, or overfitting: validation loss
    rising again), those losses coincide; then the targets are taken at 30/60/90% of the
    way from the initial loss to uniform's best, so the race still has three distinct ones.
    """
    targets = []
    for f in fractions:
        losses = [loss_at(rows, f * rows[-1]["wall_time_s"]) for rows in uniform_runs]
        targets.append(round(statistics.median(losses), 4))
    if len(set(targets)) == len(targets):
        return targets
    start = statistics.median(rows[0]["val_loss"] for rows in uniform_runs)
    best = statistics.median(min(r["val_loss"] for r in rows) for rows in uniform_runs)
    return [round(start - f * (start - best), 4) for f in fractions]


def speedups(records: list[dict], targets: list[float], key: str = "wall_time_s") -> dict:
    """``speedup[sampler][target]``: uniform's time-to-target / the sampler's, paired by seed.

    With ``key="step"`` the same in training steps: the algorithmic gain, free of per-step
    cost and of timing noise.
    """
    total = {"wall_time_s": "wall_time_s", "step": "steps"}[key]
    by_seed = {(r["sampler"], r["seed"]): r for r in records}
    samplers = sorted({r["sampler"] for r in records} - {"uniform"})
    seeds = sorted({r["seed"] for r in records})
    result: dict = {}
    for sampler in samplers:
        result[sampler] = {}
        for target in targets:
            ratios, censored, unresolved = [], 0, 0
            for seed in seeds:
                u, s = by_seed.get(("uniform", seed)), by_seed.get((sampler, seed))
                if u is None or s is None:
                    continue
                tu, ts = time_to_target(u["rows"], target, key), time_to_target(s["rows"], target, key)
                if (tu is None and ts is None) or tu == 0 or ts == 0:  # 0: met before training
                    unresolved += 1
                    continue
                if tu is None or ts is None:
                    censored += 1
                tu = tu if tu is not None else u[total]
                ts = ts if ts is not None else s[total]
                ratios.append(tu / ts)
            result[sampler][str(target)] = {
                "median": statistics.median(ratios) if ratios else None,
                "min": min(ratios) if ratios else None,
                "max": max(ratios) if ratios else None,
                "n": len(ratios),
                "censored": censored,
                "neither_reached": unresolved,
            }
    return result


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
    }


def compare(
    base: TrainConfig, samplers: list[str], seeds: int, targets: str = "auto", command: str = ""
) -> dict:
    """Run every sampler x seed one at a time; write summary.json, report.md and plots."""
    if "uniform" not in samplers:
        samplers = ["uniform", *samplers]
    base.validate()
    for s in samplers:
        replace(base, sampler=s).validate()
    out = Path(base.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(base.data, base.data_options)
    runs = [(seed, s) for seed in range(seeds) for s in samplers]
    records = []
    started = time.perf_counter()
    bar = tqdm(runs, desc="race", unit="run", disable=not base.progress)
    for i, (seed, sampler) in enumerate(bar):
        bar.set_postfix_str(f"{sampler} seed {seed}")
        run_out = out / "runs" / f"{sampler}-seed{seed}"
        config = replace(base, sampler=sampler, seed=seed, out=str(run_out), progress=False)
        summary = train(config, data=data)
        records.append({**_record(summary), "rows": read_metrics(run_out / "metrics.csv")})
        elapsed = time.perf_counter() - started
        bar.set_postfix_str(f"~{elapsed / (i + 1) * (len(runs) - i - 1):.0f}s left")
    bar.close()
    meta = {
        "command": command,
        "machine": machine(),
        "data": base.data,
        "model": base.model.cell,
        "samplers": samplers,
        "seeds": seeds,
        "time_budget": base.time_budget,
        "steps": base.steps,
        "targets": targets,
    }
    (out / "race.json").write_text(json.dumps(meta, indent=2) + "\n")
    return write_report(out)


def load_runs(out: Path) -> list[dict]:
    """Run records (summary fields plus metrics rows) from ``out/runs/*``."""
    records = []
    for run_dir in sorted((Path(out) / "runs").iterdir()):
        summary = json.loads((run_dir / "summary.json").read_text())
        records.append({**_record(summary), "rows": read_metrics(run_dir / "metrics.csv")})
    return records


def write_report(out: Path) -> dict:
    """Targets, speedups, plots, ``summary.json`` and ``report.md`` from a race's run folders."""
    out = Path(out)
    meta = json.loads((out / "race.json").read_text())
    records = load_runs(out)
    init: dict = {}
    for r in records:
        init.setdefault(r["seed"], set()).add(r["init_params_sha256"])
    if any(len(v) > 1 for v in init.values()):
        raise RuntimeError("samplers of one seed started from different parameters")
    samplers = meta["samplers"]
    uniform_rows = [r["rows"] for r in records if r["sampler"] == "uniform"]
    spec = meta["targets"]
    target_list = auto_targets(uniform_rows) if spec == "auto" else _parse_targets(spec)
    speed = speedups(records, target_list)
    result = {
        **meta,
        "targets_spec": spec,
        "targets": target_list,
        "speedup": speed,
        "step_speedup": speedups(records, target_list, key="step"),
        "runs": [{k: v for k, v in r.items() if k != "rows"} for r in records],
    }
    for r, rec in zip(result["runs"], records, strict=True):
        r["time_to_target"] = {str(t): time_to_target(rec["rows"], t) for t in target_list}
        r["steps_to_target"] = {str(t): time_to_target(rec["rows"], t, "step") for t in target_list}
    curves = {s: [r["rows"] for r in records if r["sampler"] == s] for s in samplers}
    title = f"{meta['data']}, {meta['model']}, {meta['seeds']} seeds"
    plot_race(curves, "wall_time_s", out / "loss_vs_time.png", title, target_list)
    plot_race(curves, "step", out / "loss_vs_steps.png", title, target_list)
    if speed:
        plot_speedups(speed, out / "speedups.png", title)
    result["table"] = table(result, "speedup")
    result["step_table"] = table(result, "step_speedup")
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (out / "report.md").write_text(report(result))
    return result


def _parse_targets(text: str) -> list[float]:
    from seqis.errors import ConfigError

    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--targets must be 'auto' or comma-separated numbers: {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise ConfigError(f"--targets must be positive numbers: {text!r}")
    return values


def _record(summary: dict) -> dict:
    keys = (
        "sampler",
        "seed",
        "steps",
        "wall_time_s",
        "final_val_loss",
        "mining_share",
        "mining_time_s",
        "is_active_share",
        "factor_ceiling",
        "estimated_gain_last",
        "init_params_sha256",
        "params_sha256",
        "steps_per_s",
    )
    return {k: summary.get(k) for k in keys}


def _fmt(stat: dict) -> str:
    if stat["median"] is None:
        return "n/a"
    text = f"{stat['median']:.2f} ({stat['min']:.2f}–{stat['max']:.2f})"
    return text + (f" [{stat['censored']} censored]" if stat["censored"] else "")


def table(result: dict, key: str = "speedup") -> str:
    targets = [str(t) for t in result["targets"]]
    lines = [
        "| sampler | " + " | ".join(f"target {t}" for t in targets) + " |",
        "|---|" + "---|" * len(targets),
    ]
    for sampler, per_target in result[key].items():
        lines.append(f"| {sampler} | " + " | ".join(_fmt(per_target[t]) for t in targets) + " |")
    return "\n".join(lines)


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def report(result: dict) -> str:
    m = result["machine"]
    per_sampler = []
    for s in result["samplers"]:
        runs = [r for r in result["runs"] if r["sampler"] == s]
        ceil = _median([r["factor_ceiling"] for r in runs])
        per_sampler.append(
            f"| {s} | {np.median([r['steps'] for r in runs]):.0f} | "
            f"{_median([r['steps_per_s'] for r in runs]):.2f} | "
            f"{_median([r['final_val_loss'] for r in runs]):.4f} | "
            f"{_median([r['mining_share'] for r in runs]):.1%} | "
            f"{_median([r['is_active_share'] for r in runs]):.0%} | "
            + (f"{ceil:.3f}" if ceil is not None else "–")
            + " |"
        )
    budget = (
        f"{result['time_budget']:.0f} s of training per run"
        if result["time_budget"]
        else f"{result['steps']} steps per run"
    )
    return f"""# {result["data"]}: importance sampling vs uniform

Command: `{result["command"]}`

Machine: {m["cpu"]}, {m["cores"]} cores, {m["threads"]} torch threads; torch {m["torch"]},
Python {m["python"]}; {m["date"]}. Budget: {budget}; {result["seeds"]} seeds; runs one at a time.

## Speedup in wall-clock time to a target validation loss

speedup = uniform's time-to-target / the sampler's, paired by seed: median (min–max).
Above 1 the sampler is faster. A censored pair had a run that never reached the target
within its budget; its time was taken as the whole run, so the ratio is a bound.
Targets: {", ".join(str(t) for t in result["targets"])} (validation loss).

{result["table"]}

The same in training steps (steps-to-target ratio): the algorithmic effect alone, free of
per-step cost and of timing noise. While the switch keeps a run uniform it draws exactly
uniform's batches, so its step ratio is 1.00.

{result["step_table"]}

## Runs (medians over seeds)

The ceiling is E[s²]/E[s]² of the harvested factors at the end of the run: the most
that importance sampling with p ∝ s could cut the per-sample gradient second moment.

| sampler | steps | steps/s | final val loss | mining share | IS active | ceiling |
|---|---|---|---|---|---|---|
{chr(10).join(per_sampler)}

![validation loss vs wall-clock](loss_vs_time.png)
![validation loss vs steps](loss_vs_steps.png)
![speedups](speedups.png)
"""
