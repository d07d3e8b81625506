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
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from seqis.data.registry import load_data
from seqis.experiments.analysis import parse_targets
from seqis.experiments.report import write_report
from seqis.options import at_least, check, name, option
from seqis.training.trainer import TrainConfig, train

RACE = ("compare",)
LearningRates = list[float] | dict[str, float]
# ``replay:NAME`` in --samplers: uniform draws at the learning rate NAME's run of the same seed,
# rate and budget had (its --lr-scale multiplier): the schedule-shape control.
REPLAY = "replay:"


@dataclass
class RaceConfig:
    """What ``seqis compare`` races: samplers, seeds, learning rates, targets and budgets.

    Text fields take the command line's spelling (``"uniform,fim"``, ``"uniform=0.004,fim=0.003"``)
    or the parsed value (a list, a dict); either way they hold the parsed value after validation.

    Example:
        >>> race = RaceConfig(samplers="fim,prune", lrs="0.002,0.004", budgets="1,0.5")
        >>> race.samplers, race.lrs, race.budgets
        (['uniform', 'fim', 'prune'], [0.002, 0.004], [1.0, 0.5])
    """

    samplers: list[str] | str = option(
        "uniform,fim",
        "comma-separated sampler names: schemes, shorthands or scheme:factor (see train --help), or "
        "replay:NAME (uniform at NAME's recorded --lr-scale multiplier); uniform is added when missing",
        commands=RACE,
        reader=str,
    )
    seeds: int = option(
        3, "seeds 0..N-1: within a seed every sampler starts from the same parameters", commands=RACE
    )
    lrs: LearningRates | str | None = option(
        None,
        "learning rates: a grid every sampler runs (0.001,0.002; the report compares each sampler at its "
        "own best) or each sampler's own (uniform=0.004,fim=0.003); default --lr",
        commands=RACE,
        reader=str,
    )
    targets: list[float] | str = option(
        "auto",
        "validation-loss targets for time to target: 'auto' (uniform's running best at 30/60/90/100%% of "
        "its steps) or comma-separated losses",
        commands=RACE,
        reader=str,
    )
    budgets: list[float] | str | None = option(
        None,
        "the budget protocol: comma-separated shares of --steps/--epochs, 1 among them (e.g. "
        "1,0.8,0.67,0.5); every sampler and seed trains once per budget, its schedule decayed over it",
        commands=RACE,
        reader=str,
    )

    def __post_init__(self) -> None:
        if isinstance(self.samplers, str):
            self.samplers = [s.strip() for s in self.samplers.split(",") if s.strip()]
        check(bool(self.samplers), f"{name(self, 'samplers')} names no sampler")
        if "uniform" not in self.samplers:
            self.samplers = ["uniform", *self.samplers]
        for sampler in self.samplers:
            source = sampler[len(REPLAY) :] if sampler.startswith(REPLAY) else None
            check(
                source is None or source in self.samplers,
                f"{name(self, 'samplers')}: {sampler} replays {source}'s learning rate: race {source} too",
            )
        at_least(self, "seeds")
        if isinstance(self.lrs, str):
            self.lrs = _learning_rates(self, self.lrs)
        if isinstance(self.lrs, dict):
            missing = [s for s in self.samplers if s not in self.lrs]
            check(not missing, f"{name(self, 'lrs')} gives no learning rate for {', '.join(missing)}")
            for sampler in self.samplers:  # a replay is the control of its source's very rate
                source = sampler[len(REPLAY) :] if sampler.startswith(REPLAY) else None
                check(
                    source is None or self.lrs[sampler] == self.lrs[source],
                    f"{name(self, 'lrs')}: {sampler} must train at {source}'s peak rate "
                    f"({self.lrs.get(source)}), got {self.lrs[sampler]}",
                )
        if isinstance(self.targets, str) and self.targets != "auto":
            self.targets = parse_targets(self.targets, name(self, "targets"))
        if isinstance(self.budgets, str):
            self.budgets = _numbers(self, "budgets", self.budgets, upper=1.0)
        if self.budgets is not None:
            check(
                1.0 in self.budgets,
                f"{name(self, 'budgets')} must include 1, the full budget savings are measured by; "
                f"got {self.budgets}",
            )

    @property
    def targets_spec(self) -> str:
        """The targets as the report records them: 'auto' or the comma-separated losses."""
        return self.targets if isinstance(self.targets, str) else ",".join(str(t) for t in self.targets)


def _numbers(race: RaceConfig, field_name: str, text: str, upper: float = float("inf")) -> list[float]:
    """Comma-separated positive numbers (at most ``upper``)."""
    flag = name(race, field_name)
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        check(False, f"{flag} must be comma-separated numbers, got {text!r}")
    check(
        bool(values) and all(0 < v <= upper for v in values),
        f"{flag} must be numbers in (0, {upper:g}], got {text!r}",
    )
    return values


def _learning_rates(race: RaceConfig, text: str) -> LearningRates:
    """``lrs``: a grid (``0.001,0.002``) or each sampler's own (``uniform=0.004,fim=0.003``)."""
    if "=" not in text:
        return _numbers(race, "lrs", text)
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    check(
        all(len(p) == 2 for p in pairs),
        f"{name(race, 'lrs')} must be all numbers or all SAMPLER=NUMBER, got {text!r}",
    )
    return {sampler.strip(): _numbers(race, "lrs", value)[0] for sampler, value in pairs}


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
        replays = [s for s in rotated if s.startswith(REPLAY)]  # each follows the run it replays
        rotated = [s for s in rotated if s not in replays] + replays
        for budget in budgets or [None]:
            if isinstance(lrs, dict):
                runs += [(seed, lrs[s], s, budget) for s in rotated]
            else:
                runs += [(seed, lr, s, budget) for lr in lrs for s in rotated]
    return runs


def run_config(
    base: TrainConfig, sampler: str, seed: int, lr: float, budget: float | None, out: Path, lrs: LearningRates
) -> TrainConfig:
    """One run of a race: ``base`` with ``sampler`` (a ``replay:NAME`` replays the learning rate of
    NAME's run of the same seed, rate and budget), seeded, at ``lr``, in its folder under ``out``."""
    if sampler.startswith(REPLAY):  # uniform, batched as the run it replays
        source = sampler[len(REPLAY) :]
        batching = source.partition("@")[2].partition("+")[0]
        config = base.with_sampler("uniform" + (f"@{batching}" if batching else ""))
        source_lr = lrs[source] if isinstance(lrs, dict) else lr
        replayed = out / "runs" / run_name(source, source_lr, seed, budget)
        config = replace(config, label=sampler, lr_replay=str(replayed))
    else:
        config = base.with_sampler(sampler)
    run_out = out / "runs" / run_name(sampler, lr, seed, budget)
    config = replace(config, seed=seed, lr=lr, out=str(run_out), progress=False)
    return config if budget is None else replace(config, budget=budget)


def compare(base: TrainConfig, race: RaceConfig, command: str = "") -> dict:
    """Run every sampler x learning rate x seed (x budget) one at a time; write the report.

    ``race.samplers`` are ``TrainConfig.with_sampler`` names. ``race.lrs`` is a grid (tuned vs
    tuned: the report compares each sampler at its best) or each sampler's own learning rate.
    With ``race.budgets`` (shares of the planned steps or epochs), every run trains once per
    budget with its schedule decayed over that budget.
    """
    samplers, seeds, budgets = race.samplers, race.seeds, race.budgets
    lrs = race.lrs or [base.lr]
    base.validate()
    out = Path(base.out)
    for s in samplers:
        run_config(base, s, 0, base.lr, None, out, lrs).validate()  # every sampler's mistakes first
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(base.data, base.data_options)
    runs = run_order(samplers, seeds, lrs, budgets)
    meta = {
        "command": command,
        "machine": machine(),
        "data": base.data,
        "model": base.model.cell,
        "samplers": samplers,
        "labels": [run_config(base, s, 0, base.lr, None, out, lrs).sampler_label for s in samplers],
        "seeds": seeds,
        "lrs": lrs,
        "time_budget": base.time_budget,
        "steps": base.steps,
        "epochs": base.epochs,
        "targets": race.targets_spec,
        "run_order": [run_name(s, lr, seed, b) for seed, lr, s, b in runs],
    }
    if budgets:
        meta["budgets"] = budgets
    (out / "race.json").write_text(json.dumps(meta, indent=2) + "\n")
    started = time.perf_counter()
    bar = tqdm(runs, desc="race", unit="run", disable=not base.progress)
    for i, (seed, lr, sampler, budget) in enumerate(bar):
        bar.set_postfix_str(f"{sampler} lr {lr:g} seed {seed}" + (f" budget {budget:g}" if budget else ""))
        config = run_config(base, sampler, seed, lr, budget, out, lrs)
        if train(config, data=data)["stopped_by"] == "signal":
            # The run saved its checkpoint and stopped; the signal was meant for the whole race.
            bar.close()
            print(f"race stopped by a signal after {i} complete run(s); they are in {out / 'runs'}")
            raise KeyboardInterrupt
        elapsed = time.perf_counter() - started
        bar.set_postfix_str(f"~{elapsed / (i + 1) * (len(runs) - i - 1):.0f}s left")
    bar.close()
    return write_report(out)
