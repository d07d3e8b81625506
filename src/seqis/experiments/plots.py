"""PNG plots: a run's loss curve, a race's curves and speedups, a factor histogram."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from seqis.training.metrics import read_metrics  # noqa: E402


def plot_run(metrics_csv: Path, png: Path, title: str = "") -> Path:
    rows = [r for r in read_metrics(metrics_csv) if r["val_loss"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["wall_time_s"] for r in rows], [r["val_loss"] for r in rows], marker=".")
    ax.set(xlabel="training wall-clock (s)", ylabel="validation loss", title=title)
    ax.grid(alpha=0.3)
    return _save(fig, png)


def plot_race(
    curves: dict[str, list[list[dict]]],
    x_key: str,
    png: Path,
    title: str,
    targets: list[float] | None = None,
    metric: str = "val_loss",
    label: str = "validation loss",
) -> Path:
    """Mean of ``metric`` per sampler against ``x_key``, with a min-max band over seeds."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for sampler, runs in curves.items():
        grid_max = min(max(r[x_key] for r in rows) for rows in runs)
        grid = np.linspace(0, grid_max, 100)
        ys = np.array(
            [_step_interp(grid, [r[x_key] for r in rows], [r[metric] for r in rows]) for rows in runs]
        )
        (line,) = ax.plot(grid, np.nanmean(ys, 0), label=sampler)
        ax.fill_between(grid, np.nanmin(ys, 0), np.nanmax(ys, 0), color=line.get_color(), alpha=0.2)
    for t in targets or []:
        ax.axhline(t, color="grey", lw=0.7, ls="--")
    if targets:  # zoom onto the targets (losses): the race is decided there, not at the start
        rows = [r for runs in curves.values() for run in runs for r in run]
        values = [r[metric] for r in rows if r[metric] is not None]
        low, high = min(*values, *targets), max(targets)
        pad = 0.6 * (high - low) + 1e-9
        ax.set_ylim(low - 0.1 * pad, high + pad)
    ax.set(
        xlabel="training wall-clock (s)" if x_key == "wall_time_s" else "steps",
        ylabel=label,
        title=title,
    )
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, png)


def _step_interp(grid: np.ndarray, xs: list[float], ys: list[float]) -> np.ndarray:
    """The last measured loss at or before each grid point (NaN before the first)."""
    idx = np.searchsorted(np.asarray(xs), grid, side="right") - 1
    out = np.asarray(ys, dtype=float)[np.clip(idx, 0, None)]
    out[idx < 0] = np.nan
    return out


def plot_speedups(
    speedup: dict[str, dict[str, dict]], noise: dict[str, dict[str, str]], png: Path, title: str, unit: str
) -> Path:
    """Bars of median speedup per sampler and target, whiskers at min and max over seeds; a bar
    ``noise`` names (a time ratio whose steps are the same, or whose seeds fall on both sides of
    1) is drawn hollow and labelled, not as a gain."""
    samplers = list(speedup)
    targets = list(next(iter(speedup.values()), {}))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(samplers))
    handles = []
    for i, sampler in enumerate(samplers):
        # A target no seed pair resolved has no ratio: NaN leaves its bar out.
        med, lo, hi = (
            np.array([speedup[sampler][t][k] for t in targets], dtype=float) for k in ("median", "min", "max")
        )
        x = np.arange(len(targets)) + i * width
        errors = [np.subtract(med, lo), np.subtract(hi, med)]
        bars = ax.bar(x, med, width, yerr=errors, capsize=3)
        handles.append(Patch(color=bars.patches[0].get_facecolor(), label=sampler))
        for bar, target in zip(bars, targets, strict=True):
            why = noise.get(sampler, {}).get(target)
            if why:
                bar.set_edgecolor(bar.get_facecolor())
                bar.set_fill(False)
                bar.set_hatch("//")
                middle = bar.get_x() + bar.get_width() / 2
                ax.annotate(f"noise:\n{why}", (middle, 1.0), ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="black", lw=0.8)
    ticks = [f"{float(t):.4f}" for t in targets]
    ax.set_xticks(np.arange(len(targets)) + width * (len(samplers) - 1) / 2, ticks)
    ax.set(xlabel="target validation loss", ylabel=f"speedup vs uniform ({unit})", title=title)
    if any(noise.values()):
        handles.append(Patch(fill=False, hatch="//", label="noise, not a gain"))
    ax.legend(handles=handles)
    return _save(fig, png)


def plot_budgets(
    table: dict[str, dict[str, dict]], labels: dict[str, str], threshold: float, png: Path, title: str
) -> Path:
    """The budget protocol: final validation loss against the training budget (mean over seeds, a
    min-max band), per sampler, with the loss a sampler must reach to be lossless (``threshold``);
    ``labels`` name each sampler's curve (its lossless saving)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for sampler, rows in table.items():
        budgets = sorted(rows, key=float)
        mean, lo, hi = ([rows[b]["loss"][k] for b in budgets] for k in ("mean", "min", "max"))
        x = [float(b) for b in budgets]
        (line,) = ax.plot(x, mean, marker="o", label=labels.get(sampler, sampler))
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
    lossless = "lossless: uniform's full budget + its seed spread"
    ax.axhline(threshold, color="grey", ls="--", lw=0.8, label=lossless)
    xlabel = "training budget (share of the plan, schedule decayed over it)"
    ax.set(xlabel=xlabel, ylabel="final validation loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, png)


def plot_demo(
    curves: dict[str, list[list[dict]]], on: list[list[tuple[float, float]]], png: Path, title: str
) -> Path:
    """Validation loss against training wall-clock: per sampler the mean over seeds with a min-max
    band; the spans with importance sampling on shaded, one layer a seed (darker: more seeds);
    the title carries the verdict."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for seed_spans in on:
        for start, end in seed_spans:
            ax.axvspan(start, end, color="tab:green", alpha=0.08, lw=0)
    for label, runs in curves.items():
        runs = [[r for r in rows if r["val_loss"] is not None] for rows in runs]
        grid = np.linspace(0, min(rows[-1]["wall_time_s"] for rows in runs), 200)
        clocks = [[r["wall_time_s"] for r in rows] for rows in runs]
        losses = [[r["val_loss"] for r in rows] for rows in runs]
        ys = np.array([_step_interp(grid, xs, vs) for xs, vs in zip(clocks, losses, strict=True)])
        (line,) = ax.plot(grid, np.nanmean(ys, 0), label=f"{label} (mean of {len(runs)} seeds)")
        ax.fill_between(grid, np.nanmin(ys, 0), np.nanmax(ys, 0), color=line.get_color(), alpha=0.15)
    ax.axvspan(0, 0, color="tab:green", alpha=0.25, label="importance sampling on (one layer a seed)")
    finals = [rows[-1]["val_loss"] for rows in curves.get("uniform", []) if rows]
    if finals:
        target = float(np.median(finals))
        ax.axhline(target, color="grey", ls="--", lw=0.8, label="uniform's final loss (median)")
    ends = [rows[-1]["wall_time_s"] for runs in curves.values() for rows in runs if rows]
    ax.set_xlim(0, max(ends) if ends else None)
    ax.set(xlabel="training wall-clock (s)", ylabel="validation loss")
    ax.set_title(textwrap.fill(title, 90), fontsize=8.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, png)


def plot_histogram(factors: np.ndarray, png: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(factors, bins=50)
    ax.axvline(float(np.mean(factors)), color="black", ls="--", label="mean")
    ax.set(xlabel="importance factor", ylabel="sequences", title=title)
    ax.legend()
    return _save(fig, png)


def plot_switch(history: list[dict], png: Path, title: str) -> Path | None:
    """The switch's decisions over a run: the step gain it predicted and weighed at each (the cut
    itself while the noise scale was unknown), on and off marked; what its verdict rests on.

    ``history`` holds the switch's decision records (``step``, ``gain``, ``active``, ``predicted``,
    ``step_gain``).
    """
    rows = [r for r in history if r.get("predicted") is not None]
    if not rows:
        return None
    steps = np.array([r["step"] for r in rows], dtype=float)
    weighed = [r["step_gain"] if r.get("step_gain") is not None else r["predicted"] for r in rows]
    active = np.array([bool(r["active"]) for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, weighed, color="grey", lw=0.8)
    ax.scatter(steps[active], np.array(weighed)[active], color="tab:green", label="on after this decision")
    ax.scatter(steps[~active], np.array(weighed)[~active], color="tab:red", label="off after this decision")
    ax.axhline(1.0, color="black", lw=0.8)
    kind = "step gain" if any(r.get("step_gain") is not None for r in rows) else "variance cut"
    ax.set(xlabel="step", ylabel=f"predicted {kind}", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, png)


def _save(fig, png: Path) -> Path:
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
