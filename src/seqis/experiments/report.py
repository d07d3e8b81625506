"""A race's report: ``report.md`` (its tables from :mod:`seqis.experiments.tables`), its plots, and
``write_report`` that ties them.

``write_report`` rebuilds everything from a race's folder alone (``race.json`` and the run
folders), so a report can be regenerated, or changed, without training again.
"""

from __future__ import annotations

import json
from pathlib import Path

from seqis.experiments.analysis import analyse, load_runs, tuned_runs
from seqis.experiments.plots import plot_budgets, plot_race, plot_speedups
from seqis.experiments.tables import (
    CELL_RULE,
    LABELS,
    RUN_HEADER,
    budget_section,
    grid_table,
    headline,
    metric_section,
    run_row,
    saving_text,
    step_speed,
    table,
    time_verdict,
)


def report(result: dict, images: list[str] | None = None) -> str:
    """``report.md`` of a race's summary (with its ``tables`` and ``step_tables``): the headline
    and its picture first, then the budget protocol, the speedups, the runs and the grid."""
    images = images or []
    sections = [metric_section(result, metric) for metric in result["metrics"]]
    protocol = budget_section(result) + "\n" if "budget_protocol" in result else ""
    first = images[0] + "\n\n" if images else ""
    return f"""# {result["data"]}: importance sampling vs uniform

{_setting(result)}

```
{headline(result)}
```

{first}{protocol}## Speedups, tuned vs tuned

Each sampler runs at its own best learning rate (lowest median best validation loss over
seeds). speedup = uniform's time-to-target / the sampler's, paired by seed: median
(min–max); above 1 the sampler is faster. Targets are uniform's running best at
30/60/90/100% of its steps (median over seeds), so about half of uniform's own seeds miss
the 100% one. {CELL_RULE} A time ratio whose step ratio is 1.00, or whose seeds fall on both
sides of 1, is per-step cost and timing noise, not a gain: the plots draw it hollow.
Evaluation is outside the clock.

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
{chr(10).join(run_row(result, s) for s in result["samplers"])}

## Learning-rate grid: median best validation loss

{grid_table(result)}

{chr(10).join(images[1:])}
"""


def _setting(result: dict) -> str:
    """The race's command, machine, budget, seeds and learning rates."""
    m = result["machine"]
    if result["steps"]:
        budget = f"{result['steps']} steps per run"
    elif result.get("epochs"):
        budget = f"{result['epochs']:g} epochs per run (the full budget)"
    elif result.get("time_budget"):
        budget = f"{result['time_budget']:.0f} s of training per run"
    else:
        budget = "as planned in the command"
    lrs = result["lrs"]
    if isinstance(lrs, dict):
        lrs = ", ".join(f"{s} {lr:g}" for s, lr in lrs.items())
    else:
        lrs = ", ".join(f"{lr:g}" for lr in lrs)
    commit = f"; code at commit {result['commit']}" if result.get("commit") else ""
    return f"""Command: `{result["command"]}`

Machine: {m["cpu"]}, {m["cores"]} cores, {m["threads"]} torch threads; torch {m["torch"]},
Python {m["python"]}; {m["date"]}{commit}. Budget: {budget}; {result["seeds"]} seeds; learning rates {lrs};
runs one at a time, the samplers' order rotated per seed."""


def _plot(result: dict, records: list[dict], out: Path) -> list[str]:
    """The race's plots, the headline's first: the budget protocol when it ran, the speedups, then
    the curves of each sampler at its best lr and full budget against time and steps. Returns the
    report's image lines."""
    images = []
    title = f"{result['data']}, {result['model']}, {result['seeds']} seeds, each sampler at its best lr"
    if "budget_protocol" in result:
        plot_budget_protocol(result, out / "budget.png", title)
        images.append("![final validation loss against the budget](budget.png)")
    samplers = [s for s in result["samplers"] if any(r["sampler"] == s for r in records)]
    if len(samplers) > 1:
        time, steps = result["speedup"]["val_loss"], result["step_speedup"]["val_loss"]
        noise = {
            s: {t: time_verdict(stat, steps[s][t], step_speed(result, s)) for t, stat in time[s].items()}
            for s in time
        }
        plot_speedups(steps, {}, out / "step_speedups.png", title, "steps")
        plot_speedups(time, noise, out / "speedups.png", title, "time")
        images += ["![speedups in steps](step_speedups.png)", "![speedups in time](speedups.png)"]
    full = [r for r in tuned_runs(records, result["best_lr"]) if r["budget"] == 1.0]
    curves = {s: [r["rows"] for r in full if r["sampler"] == s] for s in samplers}
    for m in ("val_loss", "train_eval_loss"):
        if m not in result["metrics"]:
            continue
        for key, unit in (("wall_time_s", "time"), ("step", "steps")):
            png = out / f"{m}_vs_{unit}.png"
            plot_race(curves, key, png, f"{title}, full budget", result["targets"][m], m, LABELS[m])
            images.append(f"![{LABELS[m]} vs {unit}, full budget]({png.name})")
    return images


def plot_budget_protocol(result: dict, png: Path, title: str) -> Path:
    protocol = result["budget_protocol"]
    figures = protocol["figures"]
    labels = {
        s: f"{s}: lossless {saving_text(f['lossless'], step_speed(result, s))}" for s, f in figures.items()
    }
    threshold = next(iter(figures.values()))["lossless"]["threshold"] if figures else float("nan")
    return plot_budgets(protocol["table"], labels, threshold, png, title)


def write_report(out: Path) -> dict:
    """Targets, speedups, plots, ``summary.json`` and ``report.md`` from a race's run folders."""
    out = Path(out)
    meta = json.loads((out / "race.json").read_text())
    records = load_runs(out)
    result = analyse(meta, records)
    images = _plot(result, records, out)
    result["tables"] = {m: table(result, "speedup", m) for m in result["metrics"]}
    result["step_tables"] = {m: table(result, "step_speedup", m) for m in result["metrics"]}
    result["headline"] = headline(result)
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (out / "report.md").write_text(report(result, images))
    return result
