"""A race's report: ``report.md`` (its tables from :mod:`seqis.experiments.tables`), its plots, and
``write_report`` that ties them.

``write_report`` rebuilds everything from a race's folder alone (``race.json`` and the run
folders), so a report can be regenerated, or changed, without training again.
"""

from __future__ import annotations

import json
from pathlib import Path

from seqis.experiments.analysis import analyse, load_runs, tuned_runs
from seqis.experiments.plots import plot_race, plot_speedups
from seqis.experiments.tables import (
    CELL_RULE,
    LABELS,
    RUN_HEADER,
    budget_section,
    grid_table,
    metric_section,
    run_row,
    table,
)


def report(result: dict) -> str:
    """``report.md`` of a race's summary (with its ``tables`` and ``step_tables``)."""
    m = result["machine"]
    per_sampler = [run_row(result, s) for s in result["samplers"]]
    if result["steps"]:
        budget = f"{result['steps']} steps per run"
    elif result.get("epochs"):
        budget = f"{result['epochs']:g} epochs per run (the full budget)"
    elif result.get("time_budget"):
        budget = f"{result['time_budget']:.0f} s of training per run"
    else:
        budget = "as planned in the command"
    sections = [metric_section(result, metric) for metric in result["metrics"]]
    lrs = result["lrs"]
    lrs = (
        ", ".join(f"{s} {lr:g}" for s, lr in lrs.items())
        if isinstance(lrs, dict)
        else ", ".join(f"{lr:g}" for lr in lrs)
    )
    headline = budget_section(result) + "\n" if "budget_protocol" in result else ""
    commit = f"; code at commit {result['commit']}" if result.get("commit") else ""
    return f"""# {result["data"]}: importance sampling vs uniform

Command: `{result["command"]}`

Machine: {m["cpu"]}, {m["cores"]} cores, {m["threads"]} torch threads; torch {m["torch"]},
Python {m["python"]}; {m["date"]}{commit}. Budget: {budget}; {result["seeds"]} seeds; learning rates {lrs};
runs one at a time, the samplers' order rotated per seed.

{headline}## Speedups, tuned vs tuned

Each sampler runs at its own best learning rate (lowest median best validation loss over
seeds). speedup = uniform's time-to-target / the sampler's, paired by seed: median
(min–max); above 1 the sampler is faster. Targets are uniform's running best at
30/60/90/100% of its steps (median over seeds), so about half of uniform's own seeds miss
the 100% one. {CELL_RULE} Evaluation is outside the clock.

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


def _plot(result: dict, records: list[dict], out: Path) -> None:
    """The race's curves (each sampler at its best lr) against time and steps, and its speedups."""
    samplers = [s for s in result["samplers"] if any(r["sampler"] == s for r in records)]
    chosen = tuned_runs(records, result["best_lr"])
    curves = {s: [r["rows"] for r in chosen if r["sampler"] == s] for s in samplers}
    title = f"{result['data']}, {result['model']}, {result['seeds']} seeds, each sampler at its best lr"
    targets, metrics = result["targets"], result["metrics"]
    for m in ("val_loss", "train_eval_loss"):
        if m in metrics:
            plot_race(curves, "wall_time_s", out / f"{m}_vs_time.png", title, targets[m], m, LABELS[m])
            plot_race(curves, "step", out / f"{m}_vs_steps.png", title, targets[m], m, LABELS[m])
    if len(samplers) > 1:
        plot_speedups(result["speedup"]["val_loss"], out / "speedups.png", title)


def write_report(out: Path) -> dict:
    """Targets, speedups, plots, ``summary.json`` and ``report.md`` from a race's run folders."""
    out = Path(out)
    meta = json.loads((out / "race.json").read_text())
    records = load_runs(out)
    result = analyse(meta, records)
    _plot(result, records, out)
    result["tables"] = {m: table(result, "speedup", m) for m in result["metrics"]}
    result["step_tables"] = {m: table(result, "step_speedup", m) for m in result["metrics"]}
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (out / "report.md").write_text(report(result))
    return result
