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

import torch
from tqdm.auto import tqdm

from seqis.data.registry import load_data
from seqis.experiments.plots import plot_race, plot_speedups
from seqis.importance.noise import fixed_lr_step_gain
from seqis.training.metrics import read_metrics
from seqis.training.trainer import TrainConfig, train

FRACTIONS = (0.3, 0.6, 0.9, 1.0)
# Each race metric and whether lower or higher is better.
METRICS = {"val_loss": min, "train_eval_loss": min, "val_acc": max}
LABELS = {
    "val_loss": "validation loss",
    "train_eval_loss": "training loss (fixed subset)",
    "val_acc": "validation accuracy",
}


def reached(value: float, target: float, metric: str = "val_loss") -> bool:
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
    uniform_runs: list[list[dict]], metric: str = "val_loss", fractions=FRACTIONS
) -> list[float]:
    """Uniform's running best at each fraction of its steps, median over seeds.

    The last (100%) target is uniform's best: about half of uniform's own seeds reach it.
    Where uniform stopped improving (it overfits), later targets repeat earlier ones.
    """
    targets: list[float] = []
    for f in fractions:
        values = [running_best(rows, f * rows[-1]["step"], "step", metric) for rows in uniform_runs]
        targets.append(round(statistics.median(v for v in values if v is not None), 6))
    return targets


def speedups(
    records: list[dict], targets: list[float], key: str = "wall_time_s", metric: str = "val_loss"
) -> dict:
    """``speedup[sampler][target]``: uniform's time-to-target / the sampler's, paired by seed.

    With ``key="step"`` the same in training steps: the algorithmic gain, free of per-step
    cost and of timing noise.
    """
    total = {"wall_time_s": "wall_time_s", "step": "steps"}[key]
    by_seed = {(r["sampler"], r["seed"]): r for r in records}
    samplers = [s for s in dict.fromkeys(r["sampler"] for r in records) if s != "uniform"]
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
                tu = time_to_target(u["rows"], target, key, metric)
                ts = time_to_target(s["rows"], target, key, metric)
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
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
    }


def compare(
    base: TrainConfig,
    samplers: list[str],
    seeds: int,
    targets: str = "auto",
    command: str = "",
    lrs: list[float] | None = None,
) -> dict:
    """Run every sampler x learning rate x seed one at a time; write summary.json, report.md, plots.

    Within a seed the samplers' order is rotated, so a drift of the machine's speed over the
    race falls on every sampler alike.
    """
    if "uniform" not in samplers:
        samplers = ["uniform", *samplers]
    lrs = lrs or [base.lr]
    base.validate()
    for s in samplers:
        replace(base, sampler=s).validate()
    out = Path(base.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(base.data, base.data_options)
    runs = [
        (seed, lr, sampler)
        for seed in range(seeds)
        for lr in lrs
        for sampler in samplers[seed % len(samplers) :] + samplers[: seed % len(samplers)]
    ]
    meta = {
        "command": command,
        "machine": machine(),
        "data": base.data,
        "model": base.model.cell,
        "samplers": samplers,
        "seeds": seeds,
        "lrs": lrs,
        "time_budget": base.time_budget,
        "steps": base.steps,
        "targets": targets,
        "run_order": [run_name(s, lr, seed) for seed, lr, s in runs],
    }
    (out / "race.json").write_text(json.dumps(meta, indent=2) + "\n")
    started = time.perf_counter()
    bar = tqdm(runs, desc="race", unit="run", disable=not base.progress)
    for i, (seed, lr, sampler) in enumerate(bar):
        bar.set_postfix_str(f"{sampler} lr {lr:g} seed {seed}")
        run_out = out / "runs" / run_name(sampler, lr, seed)
        config = replace(base, sampler=sampler, seed=seed, lr=lr, out=str(run_out), progress=False)
        if train(config, data=data)["stopped_by"] == "signal":
            # The run saved its checkpoint and stopped; the signal was meant for the whole race.
            bar.close()
            print(f"race stopped by a signal after {i} complete run(s); they are in {out / 'runs'}")
            raise KeyboardInterrupt
        elapsed = time.perf_counter() - started
        bar.set_postfix_str(f"~{elapsed / (i + 1) * (len(runs) - i - 1):.0f}s left")
    bar.close()
    return write_report(out)


def run_name(sampler: str, lr: float, seed: int) -> str:
    return f"{sampler}-lr{lr:g}-seed{seed}"


def load_runs(out: Path) -> list[dict]:
    """Run records (summary fields plus metrics rows) from ``out/runs/*`` (finished runs only)."""
    records = []
    for run_dir in sorted((Path(out) / "runs").iterdir()):
        if (run_dir / "summary.json").exists():
            summary = json.loads((run_dir / "summary.json").read_text())
            records.append({**_record(summary), "rows": read_metrics(run_dir / "metrics.csv")})
    if not records:
        raise RuntimeError(f"no finished runs in {Path(out) / 'runs'}")
    return records


def write_report(out: Path) -> dict:
    """Targets, speedups, plots, ``summary.json`` and ``report.md`` from a race's run folders."""
    out = Path(out)
    meta = json.loads((out / "race.json").read_text())
    records = load_runs(out)
    init: dict = {}
    for r in records:
        init.setdefault((r["seed"], r["lr"]), set()).add(r["init_params_sha256"])
    if any(len(v) > 1 for v in init.values()):
        raise RuntimeError("samplers of one seed started from different parameters")
    samplers = [s for s in meta["samplers"] if any(r["sampler"] == s for r in records)]
    tuned = best_lrs(records)
    chosen = [r for r in records if r["lr"] == tuned[r["sampler"]]]
    uniform_rows = [r["rows"] for r in chosen if r["sampler"] == "uniform"]
    metrics = [m for m in METRICS if any(row.get(m) is not None for rows in uniform_rows for row in rows)]
    spec = meta["targets"]
    targets = {m: auto_targets(uniform_rows, m) for m in metrics}
    if spec != "auto":
        targets["val_loss"] = _parse_targets(spec)
    result = {
        **meta,
        "targets_spec": spec,
        "best_lr": tuned,
        "metrics": metrics,
        "targets": targets,
        "speedup": {m: speedups(chosen, targets[m], "wall_time_s", m) for m in metrics},
        "step_speedup": {m: speedups(chosen, targets[m], "step", m) for m in metrics},
        "runs": [{k: v for k, v in r.items() if k != "rows"} for r in records],
    }
    for r, rec in zip(result["runs"], records, strict=True):
        r["tuned"] = rec["lr"] == tuned[rec["sampler"]]
        r["best"] = {m: running_best(rec["rows"], float("inf"), metric=m) for m in metrics}
    curves = {s: [r["rows"] for r in chosen if r["sampler"] == s] for s in samplers}
    title = f"{meta['data']}, {meta['model']}, {meta['seeds']} seeds, each sampler at its best lr"
    for m in ("val_loss", "train_eval_loss"):
        if m in metrics:
            plot_race(curves, "wall_time_s", out / f"{m}_vs_time.png", title, targets[m], m, LABELS[m])
            plot_race(curves, "step", out / f"{m}_vs_steps.png", title, targets[m], m, LABELS[m])
    if len(samplers) > 1:
        plot_speedups(result["speedup"]["val_loss"], out / "speedups.png", title)
    result["tables"] = {m: table(result, "speedup", m) for m in metrics}
    result["step_tables"] = {m: table(result, "step_speedup", m) for m in metrics}
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
    )
    return {
        **{k: summary.get(k) for k in keys},
        "lr": summary["config"]["lr"],
        **_predicted_while_on(summary),
    }


def _predicted_while_on(summary: dict) -> dict:
    """Median predicted step gains (uniform's lr, lr re-tuned) over decisions that left IS on."""
    retuned = []
    for row in summary.get("noise_history", []):
        # (step, on, B, g, at uniform's lr, re-tuned); runs before the fixed-lr prediction
        # recorded only the re-tuned gain, fifth.
        gain = row[5] if len(row) > 5 else row[4]
        if row[1] and gain is not None:
            retuned.append(gain)
    tuned = statistics.median(retuned) if retuned else None
    return {
        "predicted_step_gain": fixed_lr_step_gain(tuned) if tuned is not None else None,
        "predicted_step_gain_lr_retuned": tuned,
    }


def _fmt(stat: dict) -> str:
    if stat["median"] is None:
        return "n/a"
    text = f"{stat['median']:.2f} ({stat['min']:.2f}–{stat['max']:.2f})"
    return text + (f" [{stat['censored']} censored]" if stat["censored"] else "")


def table(result: dict, key: str = "speedup", metric: str = "val_loss") -> str:
    targets = [str(t) for t in result["targets"][metric]]
    header = [f"{f:.0%}: {float(t):.4f}" for f, t in zip(FRACTIONS, targets, strict=True)]
    lines = ["| sampler | " + " | ".join(header) + " |", "|---|" + "---|" * len(targets)]
    for sampler, per_target in result[key][metric].items():
        lines.append(f"| {sampler} | " + " | ".join(_fmt(per_target[t]) for t in targets) + " |")
    return "\n".join(lines)


def _predicted_cell(at_uniform_lr: float | None, retuned: float | None) -> str:
    """'2 - 1/G (G)', or – before the noise scale is known."""
    if at_uniform_lr is None:
        return "–"
    return f"{at_uniform_lr:.2f} ({retuned:.2f})"


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _num(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def grid_table(result: dict) -> str:
    """Median over seeds of each run's best validation loss, sampler x learning rate."""
    lrs = result["lrs"]
    lines = ["| sampler | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "|---|" + "---|" * len(lrs)]
    for s in result["samplers"]:
        cells = []
        for lr in lrs:
            best = _median(
                [r["best"]["val_loss"] for r in result["runs"] if r["sampler"] == s and r["lr"] == lr]
            )
            mark = " **(best)**" if result["best_lr"].get(s) == lr and len(lrs) > 1 else ""
            cells.append(_num(best, ".4f") + mark)
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


RUN_HEADER = (
    "| sampler | lr | steps | steps/s | best val loss | final val loss | best train_eval loss "
    "| best val acc | mining share | IS active | clipped | ceiling | predicted step gain (lr re-tuned) |\n"
    + "|---" * 13
    + "|"
)


def report(result: dict) -> str:
    m = result["machine"]
    per_sampler = []
    for s in result["samplers"]:
        runs = [r for r in result["runs"] if r["sampler"] == s and r["tuned"]]

        def med(key, runs=runs):
            return _median([r[key] for r in runs])

        best = {k: _median([r["best"].get(k) for r in runs]) for k in result["metrics"]}
        cells = [
            s,
            f"{result['best_lr'][s]:g}",
            f"{med('steps'):.0f}",
            _num(med("steps_per_s"), ".2f"),
            _num(best["val_loss"], ".4f"),
            _num(med("final_val_loss"), ".4f"),
            _num(best.get("train_eval_loss"), ".4f"),
            _num(best.get("val_acc"), ".4f"),
            _num(med("mining_share"), ".1%"),
            _num(med("is_active_share"), ".0%"),
            _num(med("clipped_share"), ".0%"),
            _num(med("factor_ceiling"), ".3f"),
            _predicted_cell(med("predicted_step_gain"), med("predicted_step_gain_lr_retuned")),
        ]
        per_sampler.append("| " + " | ".join(cells) + " |")
    budget = (
        f"{result['steps']} steps per run"
        if result["steps"]
        else f"{result['time_budget']:.0f} s of training per run"
    )
    sections = []
    for metric in result["metrics"]:
        direction = "at or above" if METRICS[metric] is max else "at or below"
        sections.append(
            f"""### {LABELS[metric]} (`{metric}`)

Time to the first evaluation {direction} each target, uniform's / the sampler's:

{result["tables"][metric]}

The same in training steps:

{result["step_tables"][metric]}
"""
        )
    lrs = ", ".join(f"{lr:g}" for lr in result["lrs"])
    return f"""# {result["data"]}: importance sampling vs uniform

Command: `{result["command"]}`

Machine: {m["cpu"]}, {m["cores"]} cores, {m["threads"]} torch threads; torch {m["torch"]},
Python {m["python"]}; {m["date"]}. Budget: {budget}; {result["seeds"]} seeds; learning rates {lrs};
runs one at a time, the samplers' order rotated per seed.

## Speedups, tuned vs tuned

Each sampler runs at its own best learning rate (lowest median best validation loss over
seeds). speedup = uniform's time-to-target / the sampler's, paired by seed: median
(min–max); above 1 the sampler is faster. Targets are uniform's running best at
30/60/90/100% of its steps (median over seeds), so about half of uniform's own seeds miss
the 100% one. A censored pair had a run that never reached the target; its whole run was
taken as its time, so the ratio is a bound. Evaluation is outside the clock.

{chr(10).join(sections)}
## Runs (medians over seeds, each sampler at its best learning rate)

Best = the best value over the run's evaluations. Clipped = share of steps whose gradient
norm was clipped (a clipped weighted gradient is no longer unbiased). The ceiling is
E[s²]/E[s]² of the fresh factors at the end of the run. The predicted step gain is
2 − 1/G at the learning rate tuned for uniform draws, and in brackets G = (1 + B/b)/(1 + B/(b g))
with the learning rate re-tuned for the cut, from the output layer's noise scale B and the
variance cut g the distribution delivered, median over the switch decisions that kept
importance sampling on; compare it with the measured step speedups above.

{RUN_HEADER}
{chr(10).join(per_sampler)}

## Learning-rate grid: median best validation loss

{grid_table(result)}

![validation loss vs wall-clock](val_loss_vs_time.png)
![training loss on a fixed subset vs wall-clock](train_eval_loss_vs_time.png)
![validation loss vs steps](val_loss_vs_steps.png)
![speedups](speedups.png)
"""
