"""A race's report: markdown tables, ``report.md``, plots, and ``write_report`` that ties them.

``write_report`` rebuilds everything from a race's folder alone (``race.json`` and the run
folders), so a report can be regenerated, or changed, without training again.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from seqis.experiments.analysis import FRACTIONS, METRICS, analyse, load_runs, tuned_runs
from seqis.experiments.budgets import budget_section
from seqis.experiments.plots import plot_race, plot_speedups

LABELS = {
    "val_loss": "validation loss",
    "train_eval_loss": "training loss (fixed subset)",
    "val_acc": "validation accuracy",
}
RUN_HEADER = (
    "| sampler | lr | steps | steps/s | best val loss | final val loss | best train_eval loss "
    "| best val acc | mining share | IS active | clipped | ceiling | predicted step gain (lr re-tuned) |\n"
    + "|---" * 13
    + "|"
)


BOUND_MARK = {"exact": "", "lower": "≥", "upper": "≤"}
CELL_RULE = (
    "Each cell: median over the seeds' pairs, n = pairs it stands on. ≥ marks a lower bound (in some "
    "pair uniform never reached the target, its whole run taken as its time), ≤ an upper bound (the "
    "sampler never reached it); a cell whose pairs are bounds of both kinds shows no median. Pairs "
    "where neither run reached the target are counted as 'neither', never dropped silently."
)


def cell(stat: dict, digits: int = 2) -> str:
    """``≥1.21 n=3``, ``– (bounds both ways) n=3`` or ``– (neither reached: 3 of 3)``."""
    neither = stat.get("neither_reached", 0)
    total = stat["n"] + neither
    if stat["n"] == 0:
        return f"– (neither reached: {neither} of {total})"
    kind = stat.get("kind", "lower" if stat.get("censored") else "exact")
    text = (
        "– (bounds both ways)" if stat["median"] is None else f"{BOUND_MARK[kind]}{stat['median']:.{digits}f}"
    )
    return text + f" n={stat['n']}" + (f", {neither} neither" if neither else "")


def _fmt(stat: dict) -> str:
    text = cell(stat)
    return text if stat["median"] is None else text + f" ({stat['min']:.2f}–{stat['max']:.2f})"


def table(result: dict, key: str = "speedup", metric: str = "val_loss") -> str:
    """Speedups (``key``: speedup or step_speedup) of every sampler at every target of ``metric``."""
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
    """Median over seeds of each run's best validation loss, sampler x learning rate.

    Per-sampler learning rates (``--lrs uniform=…,fim=…``) give one column per distinct rate;
    a sampler's cell at a rate it did not run is empty.
    """
    lrs = result["lrs"]
    lrs = sorted(set(lrs.values())) if isinstance(lrs, dict) else lrs
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


def _run_row(result: dict, sampler: str) -> str:
    """One sampler's line of the runs table: medians over its seeds at its best learning rate."""
    runs = [r for r in result["runs"] if r["sampler"] == sampler and r["tuned"]]

    def med(key):
        return _median([r[key] for r in runs])

    best = {k: _median([r["best"].get(k) for r in runs]) for k in result["metrics"]}
    cells = [
        sampler,
        f"{result['best_lr'][sampler]:g}",
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
    return "| " + " | ".join(cells) + " |"


def _metric_section(result: dict, metric: str) -> str:
    """A metric's time and step speedup tables, under its heading."""
    direction = "at or above" if METRICS[metric] is max else "at or below"
    return f"""### {LABELS[metric]} (`{metric}`)

Time to the first evaluation {direction} each target, uniform's / the sampler's:

{result["tables"][metric]}

The same in training steps:

{result["step_tables"][metric]}
"""


def report(result: dict) -> str:
    """``report.md`` of a race's summary (with its ``tables`` and ``step_tables``)."""
    m = result["machine"]
    per_sampler = [_run_row(result, s) for s in result["samplers"]]
    if result["steps"]:
        budget = f"{result['steps']} steps per run"
    elif result.get("epochs"):
        budget = f"{result['epochs']:g} epochs per run (the full budget)"
    elif result.get("time_budget"):
        budget = f"{result['time_budget']:.0f} s of training per run"
    else:
        budget = "as planned in the command"
    sections = [_metric_section(result, metric) for metric in result["metrics"]]
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
