"""A race's markdown: table cells, speedup and grid tables, the budget protocol's section.

Pure formatting of :mod:`seqis.experiments.analysis`' and :mod:`seqis.experiments.budgets`'
numbers; ``report.md`` is assembled from these in :mod:`seqis.experiments.report`.
"""

from __future__ import annotations

import statistics

from seqis.experiments.analysis import FRACTIONS, METRICS

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


def run_row(result: dict, sampler: str) -> str:
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


def metric_section(result: dict, metric: str) -> str:
    """A metric's time and step speedup tables, under its heading."""
    direction = "at or above" if METRICS[metric] is max else "at or below"
    return f"""### {LABELS[metric]} (`{metric}`)

Time to the first evaluation {direction} each target, uniform's / the sampler's:

{result["tables"][metric]}

The same in training steps:

{result["step_tables"][metric]}
"""


TOLERANCE_RULE = (
    "A sampler matches uniform when its mean final validation loss is at most uniform's mean at the "
    "full budget plus a tolerance of half the min–max range of uniform's seeds at the full budget. "
    "Lossless saving = the smallest budget at which uniform itself matches / the smallest at which "
    "the sampler does (so a sampler identical to uniform saves exactly 1). "
    "Budgets between measured ones are interpolated linearly; below the smallest measured budget "
    "nothing is extrapolated (≥ marks a lower bound)."
)


def saving_cell(lossless: dict) -> str:
    """``1.32× (steps 1.30×, time 1.41×)``, ``≥ 2.00×`` as a bound, ``< 1 (+0.012)`` when never matched."""
    if lossless["kind"] == "both":
        return "– (uniform and the sampler both match at the smallest budget: run smaller ones)"
    if lossless["saving"] is None:
        return f"< 1 (loss {lossless['gap_at_full']:+.4f} at the full budget)"
    bound = {"at_most": "≥ ", "upper": "≤ "}.get(lossless["kind"], "")
    return (
        f"{bound}{lossless['saving']:.2f}× (steps {bound}{lossless['steps_saving']:.2f}×, "
        f"time {bound}{lossless['time_saving']:.2f}×)"
    )


def equivalent_cell(equivalent: dict) -> str:
    """``0.92 (steps worth 1.21×)``; ``> 1`` when uniform's full budget is worse by more than its
    seeds' spread, ``≈ 1`` within it."""
    if equivalent["kind"] == "above":
        return "> 1 (better than uniform's full budget, beyond its seeds' spread)"
    if equivalent["kind"] == "within":
        return "≈ 1 (within uniform's seed spread at the full budget)"
    bound = "≤ " if equivalent["kind"] == "at_most" else ""
    worth = equivalent.get("steps_worth")
    steps = f" (steps worth {bound}{worth:.2f}×)" if worth is not None else ""
    return f"{bound}{equivalent['budget']:.2f}{steps}"


def budget_section(result: dict) -> str:
    """Markdown: the budget table, then lossless saving and equivalent uniform budget per sampler."""
    budgets = result["budget_protocol"]
    table, figures = budgets["table"], budgets["figures"]
    shares = sorted({float(b) for rows in table.values() for b in rows}, reverse=True)
    head = "| sampler | " + " | ".join(f"budget {b:g}" for b in shares) + " |"
    lines = [
        "## Budget protocol (the headline)",
        "",
        TOLERANCE_RULE,
        "",
        head,
        "|---" * (len(shares) + 1) + "|",
    ]
    for sampler, rows in table.items():
        cells = []
        for b in shares:
            row = rows.get(str(b))
            if row is None:
                cells.append("–")
                continue
            loss, acc = row["loss"], row["acc"]
            text = f"{loss['mean']:.4f} [{loss['min']:.4f}–{loss['max']:.4f}] n={loss['n']}"
            text += f", acc {acc['mean']:.4f} [{acc['min']:.4f}–{acc['max']:.4f}]" if acc else ""
            cells.append(text + f", {row['steps']:.0f} steps, {row['seconds']:.0f} s")
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    lines += ["", "| sampler | lossless saving | equivalent uniform budget |", "|---|---|---|"]
    for sampler, fig in figures.items():
        saving = saving_text(fig["lossless"], step_speed(result, sampler))
        lines.append(f"| {sampler} | {saving} | {equivalent_cell(fig['equivalent'])} |")
    return "\n".join(lines) + "\n"


# -- what compare prints first ------------------------------------------------------------------
SAME_STEPS = 0.005  # a step ratio within this of 1: the same steps, whatever the clock says
SAME_SPEED = 0.03  # per-step speeds within 3% of each other, seed by seed: the same cost a step


def step_speed(result: dict, sampler: str) -> tuple[float, float] | None:
    """The sampler's steps a second over uniform's, seed by seed at the full budget: (min, max)."""
    runs = [
        r for r in result.get("runs", []) if r.get("tuned", True) and r.get("budget", 1.0) in (1, 1.0, None)
    ]
    speed = {(r["sampler"], r["seed"]): r.get("steps_per_s") for r in runs}
    ratios = [
        speed[(sampler, seed)] / speed[("uniform", seed)]
        for (name, seed) in speed
        if name == sampler and speed.get(("uniform", seed)) and speed[(sampler, seed)]
    ]
    return (min(ratios), max(ratios)) if ratios else None


def _cheaper_steps(speed: tuple[float, float] | None) -> bool:
    return speed is not None and (speed[0] > 1 + SAME_SPEED or speed[1] < 1 - SAME_SPEED)


def time_verdict(time_stat: dict, step_stat: dict | None, speed: tuple[float, float] | None = None) -> str:
    """Why a time ratio is not a gain: ``"same steps"`` when the step ratio is 1.00 and the steps
    cost the same (the clock then measures timing noise), ``"spread covers 1"`` when the seeds
    disagree on its side of 1; ``""`` when it stands (a step ratio of 1.00 with steps consistently
    cheaper, as bucketed batches' are, is a real saving)."""
    steps = None if step_stat is None else step_stat.get("median")
    if steps is not None and abs(steps - 1.0) < SAME_STEPS and not _cheaper_steps(speed):
        return "same steps"
    low, high = time_stat.get("min"), time_stat.get("max")
    if low is not None and high is not None and low <= 1.0 <= high:
        return "spread covers 1"
    return ""


def headline(result: dict) -> str:
    """compare's summary at a glance: the budget protocol's lossless saving when it ran, else the
    speedup to uniform's best validation loss; a time ratio that is noise says so."""
    lines = [
        f"{result['data']}, {result['seeds']} seed(s), each sampler at its own best learning rate "
        f"({', '.join(f'{s} {lr:g}' for s, lr in result['best_lr'].items())}):"
    ]
    if "budget_protocol" in result:
        table, figures = result["budget_protocol"]["table"], result["budget_protocol"]["figures"]
        uniform = table["uniform"]["1.0"]["loss"]
        for sampler, fig in figures.items():
            loss = table[sampler]["1.0"]["loss"]
            lines.append(
                f"  {sampler}: lossless saving {saving_text(fig['lossless'], step_speed(result, sampler))}; "
                f"full-budget val loss {loss['mean']:.4f} (uniform's {uniform['mean']:.4f} "
                f"± {fig['lossless']['tolerance']:.4f} over its seeds)"
            )
        return "\n".join(lines)
    target = str(result["targets"]["val_loss"][-1])
    for sampler in result["speedup"]["val_loss"]:
        time_stat = result["speedup"]["val_loss"][sampler][target]
        step_stat = result["step_speedup"]["val_loss"][sampler][target]
        text = _speedup_text(time_stat, step_stat, step_speed(result, sampler))
        lines.append(f"  {sampler}: to uniform's best val loss {float(target):.4f}, {text}")
    return "\n".join(lines)


def saving_text(lossless: dict, speed: tuple[float, float] | None = None) -> str:
    """:func:`saving_cell`, marked when the steps are the same: its time ratio is then noise, or,
    where each step is consistently cheaper (or dearer), per-step cost."""
    text = saving_cell(lossless)
    if lossless.get("steps_saving") is None or abs(lossless["steps_saving"] - 1.0) >= SAME_STEPS:
        return text
    if _cheaper_steps(speed):
        each = f"{speed[0]:.2f}-{speed[1]:.2f}x"
        return text + f" [same steps, each {each} as fast: the saving is per-step cost]"
    return text + " [same steps: the time ratio is noise, not a gain]"


def _speedup_text(time_stat: dict, step_stat: dict, speed: tuple[float, float] | None) -> str:
    exact = time_stat.get("kind") == step_stat.get("kind") == "exact"
    if not exact or step_stat["median"] is None or time_stat["median"] is None:
        return f"steps {cell(step_stat)}, time {cell(time_stat)}"  # bounds, or nothing reached
    text = f"{step_stat['median']:.2f}x in steps, {time_stat['median']:.2f}x in time"
    noise = time_verdict(time_stat, step_stat, speed)
    marked = f" [{noise}: the time ratio is noise, not a gain]" if noise else ""
    return f"{text}{marked} (n={time_stat['n']})"
