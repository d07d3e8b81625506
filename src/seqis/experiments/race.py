"""``seqis compare``: a fair wall-clock race between samplers.

Fairness rules: within a seed every sampler starts from the same initial parameters
(the model is built right after seeding, before any sampler exists; the summary's
``init_params_sha256`` proves it); runs execute one at a time; all runs share budget,
data split, model and optimizer settings. The race writes ``race.json`` (its command,
machine and run order) before the first run, one folder per run under ``runs/``, and
then the report (``seqis.experiments.report.write_report``).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from seqis.data.registry import load_data
from seqis.errors import ConfigError
from seqis.experiments.report import write_report
from seqis.training.trainer import TrainConfig, train


def machine() -> dict:
    """The CPU, core and thread counts, GPU and versions a race ran on, and the date."""
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


def run_name(sampler: str, lr: float, seed: int, budget: float | None = None) -> str:
    """A run's folder under ``runs/``: ``fim-lr0.002-seed1`` (``-b0.8`` in a budget race)."""
    return f"{sampler}-lr{lr:g}-seed{seed}" + (f"-b{budget:g}" if budget is not None else "")


LearningRates = list[float] | dict[str, float]


def run_order(
    samplers: list[str], seeds: int, lrs: LearningRates, budgets: list[float] | None = None
) -> list[tuple[int, float, str, float | None]]:
    """(seed, lr, sampler, budget) in the order they run.

    Within a seed the samplers' order is rotated, so a drift of the machine's speed over the
    race falls on every sampler alike. ``lrs`` is a grid every sampler runs, or each sampler's own.
    """
    runs = []
    for seed in range(seeds):
        rotated = samplers[seed % len(samplers) :] + samplers[: seed % len(samplers)]
        for budget in budgets or [None]:
            if isinstance(lrs, dict):
                runs += [(seed, lrs[s], s, budget) for s in rotated]
            else:
                runs += [(seed, lr, s, budget) for lr in lrs for s in rotated]
    return runs


def compare(
    base: TrainConfig,
    samplers: list[str],
    seeds: int,
    targets: str = "auto",
    command: str = "",
    lrs: LearningRates | None = None,
    budgets: list[float] | None = None,
) -> dict:
    """Run every sampler x learning rate x seed (x budget) one at a time; write the report.

    ``samplers`` are ``TrainConfig.with_sampler`` names; uniform, the baseline, is added
    when missing. ``lrs`` is a grid (tuned vs tuned: the report compares each sampler at its
    best) or each sampler's own learning rate. With ``budgets`` (shares of the planned steps or
    epochs), every run trains once per budget with its schedule decayed over that budget.
    """
    if "uniform" not in samplers:
        samplers = ["uniform", *samplers]
    lrs = lrs or [base.lr]
    if isinstance(lrs, dict):
        missing = [s for s in samplers if s not in lrs]
        if missing:
            raise ConfigError(f"--lrs gives no learning rate for {', '.join(missing)}")
    base.validate()
    for s in samplers:
        base.with_sampler(s).validate()  # every sampler's mistakes before the first run
    out = Path(base.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(base.data, base.data_options)
    runs = run_order(samplers, seeds, lrs, budgets)
    meta = {
        "command": command,
        "machine": machine(),
        "data": base.data,
        "model": base.model.cell,
        "samplers": samplers,
        "labels": [base.with_sampler(s).sampler_label for s in samplers],  # what the runs are named
        "seeds": seeds,
        "lrs": lrs,
        "time_budget": base.time_budget,
        "steps": base.steps,
        "epochs": base.epochs,
        "targets": targets,
        "run_order": [run_name(s, lr, seed, b) for seed, lr, s, b in runs],
    }
    if budgets:
        meta["budgets"] = budgets
    (out / "race.json").write_text(json.dumps(meta, indent=2) + "\n")
    started = time.perf_counter()
    bar = tqdm(runs, desc="race", unit="run", disable=not base.progress)
    for i, (seed, lr, sampler, budget) in enumerate(bar):
        bar.set_postfix_str(f"{sampler} lr {lr:g} seed {seed}" + (f" budget {budget:g}" if budget else ""))
        run_out = out / "runs" / run_name(sampler, lr, seed, budget)
        config = replace(base.with_sampler(sampler), seed=seed, lr=lr, out=str(run_out), progress=False)
        if budget is not None:
            config = replace(config, budget=budget)
        if train(config, data=data)["stopped_by"] == "signal":
            # The run saved its checkpoint and stopped; the signal was meant for the whole race.
            bar.close()
            print(f"race stopped by a signal after {i} complete run(s); they are in {out / 'runs'}")
            raise KeyboardInterrupt
        elapsed = time.perf_counter() - started
        bar.set_postfix_str(f"~{elapsed / (i + 1) * (len(runs) - i - 1):.0f}s left")
    bar.close()
    return write_report(out)
