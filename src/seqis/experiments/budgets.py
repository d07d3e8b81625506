"""The budget protocol: final validation quality per training budget, and what it saves.

Numbers only; their markdown is :mod:`seqis.experiments.tables`'s.

A budget race trains every sampler and seed once per budget (a share of the planned steps
or epochs), each with its schedule decayed over that budget, as InfoBatch and Kaddour et
al. measure. Two figures per sampler, from the mean final validation loss over seeds:

- **lossless saving**: the smallest budget at which uniform's own mean loss reaches uniform's
  full-budget loss plus a tolerance (half the min–max range of uniform's seeds there), over
  the smallest budget at which the sampler's does, interpolated linearly between measured
  budgets and never extrapolated below the smallest one (then it is a lower bound); a sampler
  identical to uniform saves exactly 1; in steps and in wall-clock time as well, since a
  pruned epoch has fewer steps;
- **equivalent uniform budget**: the budget at which uniform's loss equals the sampler's at
  the full budget (how much uniform training the sampler's run is worth).
"""

from __future__ import annotations

import statistics


def budget_of(summary: dict) -> float:
    """A run's budget share (1 for runs from before the budget protocol)."""
    return float(summary.get("config", {}).get("budget", 1.0))


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "n": len(values)}


def budget_table(records: list[dict]) -> dict[str, dict[float, dict]]:
    """sampler -> budget -> final val loss and accuracy (mean, min, max, n), mean steps and seconds."""
    table: dict[str, dict[float, dict]] = {}
    for sampler in dict.fromkeys(r["sampler"] for r in records):
        for budget in sorted({r["budget"] for r in records if r["sampler"] == sampler}):
            runs = [r for r in records if r["sampler"] == sampler and r["budget"] == budget]
            accs = [r["final_val_acc"] for r in runs if r.get("final_val_acc") is not None]
            table.setdefault(sampler, {})[budget] = {
                "loss": _stats([r["final_val_loss"] for r in runs]),
                "acc": _stats(accs) if accs else None,
                "steps": statistics.fmean(r["steps"] for r in runs),
                "seconds": statistics.fmean(r["wall_time_s"] for r in runs),
            }
    return table


def _crossing(points: list[tuple[float, float]], threshold: float) -> tuple[float | None, str]:
    """The smallest x at which y falls to ``threshold``, from (x, y) sorted by x, interpolated.

    Returns (x, kind): kind ``exact`` (measured or interpolated), ``at_most`` (already below
    at the smallest x: the crossing lies at or below it) or ``none`` (never at or below).
    """
    if points[0][1] <= threshold:
        return points[0][0], "at_most"
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if y1 <= threshold:
            return x0 + (threshold - y0) * (x1 - x0) / (y1 - y0), "exact"
    return None, "none"


def _interpolate(points: list[tuple[float, float]], x: float) -> float:
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 <= x <= x1:
            return y0 + (x - x0) * (y1 - y0) / (x1 - x0) if x1 > x0 else y0
    return points[0][1] if x <= points[0][0] else points[-1][1]


def lossless_saving(table: dict[str, dict[float, dict]], sampler: str) -> dict:
    """The budget uniform needs to match its own full-budget loss (within the tolerance) over the
    budget ``sampler`` needs: a sampler identical to uniform saves exactly 1 (see the rule)."""
    uniform_full = table["uniform"][1.0]
    tolerance = (uniform_full["loss"]["max"] - uniform_full["loss"]["min"]) / 2
    threshold = uniform_full["loss"]["mean"] + tolerance
    rows, uniform = table[sampler], table["uniform"]
    budget, kind = _crossing([(b, rows[b]["loss"]["mean"]) for b in sorted(rows)], threshold)
    own, own_kind = _crossing([(b, uniform[b]["loss"]["mean"]) for b in sorted(uniform)], threshold)
    # At or below the smallest budget a crossing is only an upper bound: the sampler's makes the
    # saving a lower bound (at_most), uniform's an upper one; both: no figure.
    if own_kind == "at_most":
        kind = "both" if kind == "at_most" else "upper" if budget is not None else kind
    result = {"threshold": threshold, "tolerance": tolerance, "budget": budget, "kind": kind}
    result["uniform_budget"] = own
    if kind == "both":
        return {**result, "saving": None, "steps_saving": None, "time_saving": None, "gap_at_full": None}
    if budget is None:
        result["gap_at_full"] = rows[max(rows)]["loss"]["mean"] - uniform_full["loss"]["mean"]
        return {**result, "saving": None, "steps_saving": None, "time_saving": None}

    def at(key: str, curve: dict, b: float) -> float:
        return _interpolate([(x, curve[x][key]) for x in sorted(curve)], b)

    return {
        **result,
        "saving": own / budget,
        "steps_saving": at("steps", uniform, own) / at("steps", rows, budget),
        "time_saving": at("seconds", uniform, own) / at("seconds", rows, budget),
    }


def equivalent_uniform_budget(table: dict[str, dict[float, dict]], sampler: str) -> dict:
    """The budget at which uniform's mean loss equals the sampler's at the full budget.

    ``steps_worth`` is uniform's steps at that budget over the sampler's full-budget steps:
    how many uniform steps each of the sampler's steps is worth (a pruned epoch is shorter,
    so a sampler can be worth more steps than budget).
    """
    full = table[sampler][max(table[sampler])]
    uniform_full = table["uniform"][1.0]["loss"]
    if abs(full["loss"]["mean"] - uniform_full["mean"]) <= (uniform_full["max"] - uniform_full["min"]) / 2:
        # within uniform's own seed spread at the full budget: no claim either way (kind "within")
        worth = table["uniform"][1.0]["steps"] / full["steps"]
        return {"budget": 1.0, "kind": "within", "steps_worth": worth}
    uniform = [(b, table["uniform"][b]["loss"]["mean"]) for b in sorted(table["uniform"])]
    budget, kind = _crossing(uniform, full["loss"]["mean"])
    if budget is None:
        return {"budget": None, "kind": "above", "steps_worth": None}  # above: > the full budget
    steps = [(b, table["uniform"][b]["steps"]) for b in sorted(table["uniform"])]
    uniform_steps = _interpolate(steps, budget)
    return {"budget": budget, "kind": kind, "steps_worth": uniform_steps / full["steps"]}


def analyse_budgets(records: list[dict]) -> dict:
    """The budget table and both figures for every sampler but uniform (at each one's own lr)."""
    table = budget_table(records)
    figures = {
        s: {"lossless": lossless_saving(table, s), "equivalent": equivalent_uniform_budget(table, s)}
        for s in table
        if s != "uniform"
    }
    return {
        "table": {s: {str(b): v for b, v in rows.items()} for s, rows in table.items()},
        "figures": figures,
    }
