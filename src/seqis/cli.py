"""The ``seqis`` command line: train, data, diagnose, compare.

torch is imported only after the thread policy is set: OpenMP reads
``OMP_WAIT_POLICY`` once, at start-up. Its default (spin-waiting) collapses throughput
on a shared machine when another process holds a core; PASSIVE threads sleep instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import MISSING, fields
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2, no usage dump
        self.exit(2, f"seqis: error: {message}\n")


# Annotations (as strings) -> how argparse reads a value; ranges are the dataclasses' to check.
_READERS = {"int": int, "float": float, "str": str}
# The config dataclass of each section of a TrainConfig; every flag comes from one of their fields.
_SECTIONS = ("train", "data_options", "model", "mining")


def _section_classes() -> dict:
    from seqis.data.registry import DataOptions
    from seqis.importance.config import MiningConfig
    from seqis.models.rnn import ModelConfig
    from seqis.training.config import TrainConfig

    return {"train": TrainConfig, "data_options": DataOptions, "model": ModelConfig, "mining": MiningConfig}


def _add_options(p: argparse.ArgumentParser, cls: type, section: str, command: str) -> None:
    """One flag per command-line field of ``cls``, with the field's default, choices and help."""
    from seqis.options import flag_name

    for f in fields(cls):
        meta = f.metadata
        if not meta.get("cli") or command not in meta["commands"]:
            continue
        default = f.default if f.default is not MISSING else None
        dest = f"{section}__{f.name}"
        kind = str(f.type).replace(" | None", "")
        if kind == "bool":
            flag = f"--no-{f.name.replace('_', '-')}" if default else flag_name(f)
            action = "store_false" if default else "store_true"
            text = f"switch off: {meta['help']}" if default else meta["help"]
            p.add_argument(flag, dest=dest, action=action, help=text)
            continue
        shown = (
            ""
            if default is None
            else f" (default: {default:g})"
            if isinstance(default, float)
            else f" (default: {default})"
        )
        p.add_argument(
            flag_name(f),
            dest=dest,
            metavar=None if meta["choices"] else flag_name(f).lstrip("-").replace("-", "_").upper(),
            type=_READERS[kind],
            default=default,
            choices=meta["choices"],
            help=meta["help"] + shown,
        )


def _add_run_args(p: argparse.ArgumentParser, command: str) -> None:
    for section, cls in _section_classes().items():
        _add_options(p, cls, section, command)


def build_parser() -> argparse.ArgumentParser:
    from seqis import __version__

    parser = _Parser(prog="seqis", description="Importance-sampled training for RNNs.")
    parser.add_argument("--version", action="version", version=f"seqis {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train one model")
    _add_run_args(p, "train")
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="RUN_DIR",
        help="continue from the newest good checkpoint: '--resume RUN_DIR' with the run's saved "
        "settings (only --steps, --time-budget, --target-loss may be added), or '--resume' with "
        "--out and the same settings as before",
    )

    p = sub.add_parser("data", help="print statistics of a dataset")
    p.add_argument("--data", dest="train__data", default="stdlib", help="data spec (see --list)")
    _add_options(p, _section_classes()["data_options"], "data_options", "train")
    p.add_argument("--list", action="store_true", help="list the data specs")

    p = sub.add_parser("diagnose", help="tell whether importance sampling can pay on this data")
    _add_run_args(p, "diagnose")
    p.add_argument(
        "--checkpoint",
        metavar="RUN_DIR",
        help="judge the newest checkpoint of this run instead of training briefly",
    )

    p = sub.add_parser("compare", help="race samplers on the same data, seeds and budget")
    _add_run_args(p, "compare")
    p.add_argument(
        "--samplers", default="uniform,fim", help="comma-separated sampler names (see train --help)"
    )
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument(
        "--lrs",
        help="comma-separated learning rates: every sampler runs at each, the report compares "
        "each at its own best (tuned vs tuned)",
    )
    p.add_argument("--targets", default="auto", help="'auto' or comma-separated losses")
    p.add_argument(
        "--budgets",
        help="the budget protocol: comma-separated shares of --steps/--epochs (e.g. 1,0.8,0.67,0.5); "
        "every sampler and seed trains once per budget, its schedule decayed over it",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = " ".join(["seqis", *argv])
    args.argv = argv
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch  # after the thread policy is set

    from seqis.errors import SeqisError

    torch.set_num_threads(getattr(args, "train__threads", None) or default_threads())
    try:
        return _COMMANDS[args.command](args)
    except SeqisError as e:
        print(f"seqis: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seqis: interrupted", file=sys.stderr)
        return 130


def default_threads() -> int:
    """All cores, at most 4: more threads than that slow these small RNNs down."""
    return min(4, os.cpu_count() or 1)


def _section(args, section: str) -> dict:
    prefix = f"{section}__"
    return {k[len(prefix) :]: v for k, v in vars(args).items() if k.startswith(prefix)}


def _data_options(args):
    from seqis.data.registry import DataOptions

    return DataOptions(**_section(args, "data_options"))


def train_config(args, **overrides):
    """A :class:`TrainConfig` from parsed CLI arguments (its classes validate every value)."""
    classes = _section_classes()
    values = _section(args, "train")
    values["threads"] = values.get("threads") or default_threads()
    nested = {name: classes[name](**_section(args, name)) for name in ("data_options", "model", "mining")}
    return classes["train"](**{**values, **nested, **overrides})


# With '--resume RUN_DIR' the saved settings stand; these only say when to stop or how to show it.
_RESUME_FLAGS = {"--resume", "--steps", "--stop-at", "--time-budget", "--target-loss", "--no-progress"}


def saved_config(args):
    """The configuration saved by the run in ``args.resume``, with new stopping flags applied."""
    from dataclasses import replace

    from seqis.errors import ConfigError
    from seqis.training.config import TrainConfig

    given = {token.split("=")[0] for token in args.argv if token.startswith("--")}
    extra = sorted(given - _RESUME_FLAGS)
    if extra:
        raise ConfigError(
            f"--resume RUN_DIR continues with the run's saved settings, threads included; "
            f"{', '.join(extra)} cannot be changed (only --steps, --stop-at, --time-budget, --target-loss)"
        )
    path = Path(args.resume) / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"no saved run configuration at {path}: is {args.resume} a seqis run folder?"
        ) from None
    try:
        config = TrainConfig.from_dict(saved)
    except TypeError:
        raise ConfigError(f"{path} was written by another version of seqis; it cannot be resumed") from None
    stops = {k: getattr(args, f"train__{k}") for k in ("steps", "time_budget", "target_loss")}
    stops = {k: v for k, v in stops.items() if v is not None}
    # A segment's --stop-at is not a setting of the run: the resumed one goes on to the plan's end.
    return replace(
        config, out=args.resume, progress=args.train__progress, stop_at=args.train__stop_at, **stops
    )


def _cmd_train(args) -> int:
    from seqis.experiments.plots import plot_run
    from seqis.training.trainer import train

    config = train_config(args) if not args.resume else saved_config(args)
    summary = train(config, resume=args.resume is not None)
    args.out = config.out
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports for all
        return 130 if summary["stopped_by"] == "signal" else 0
    out = Path(args.out)
    plot_run(out / "metrics.csv", out / "loss.png", title=f"{config.sampler_label} on {config.data}")
    ttt = summary["time_to_target_s"]
    print(
        f"{summary['steps']} steps in {summary['wall_time_s']:.1f}s, "
        f"final val loss {summary['final_val_loss']:.4f}"
        + (f", target reached at {ttt:.1f}s" if ttt is not None else "")
        + f", IS active {summary['is_active_share']:.0%} of steps, "
        f"mining {summary['mining_share']:.1%} of time"
    )
    print(f"outputs in {out}: summary.json, metrics.csv, loss.png, checkpoints/")
    if summary["stopped_by"] == "signal":
        print(
            f"stopped by signal; checkpoint saved to {summary['checkpoint']}; "
            f"continue with --resume --out {out}",
            file=sys.stderr,
        )
        return 130
    return 0


def _cmd_data(args) -> int:
    from seqis.data.registry import SPECS, load_data

    if args.list:
        for spec, text in SPECS.items():
            print(f"{spec:14s} {text}")
        return 0
    print(json.dumps(load_data(args.train__data, _data_options(args)).stats(), indent=2))
    return 0


def _cmd_diagnose(args) -> int:
    from seqis.experiments.diagnose import diagnose

    config = train_config(args)
    if config.mining.sampler == "uniform":  # uniform has no factor: judge the default, fim
        config = config.with_sampler("fim")
    report = diagnose(config, checkpoint=args.checkpoint)
    print(report["verdict"])
    print(f"details: {Path(config.out) / 'diagnosis.json'}, histogram: {report['histogram']}")
    return 0


def _cmd_compare(args) -> int:
    from seqis.errors import ConfigError
    from seqis.experiments.race import compare

    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    lrs = _learning_rates(args.lrs) if args.lrs else None
    budgets = _budgets(args.budgets) if args.budgets else None
    config = train_config(args)
    result = compare(config, samplers, args.seeds, args.targets, args.command_line, lrs, budgets)
    print(result["tables"]["val_loss"])
    print(f"report: {Path(config.out) / 'report.md'}")
    return 0


def _numbers(text: str, flag: str, upper: float = float("inf")) -> list[float]:
    """Comma-separated positive numbers (at most ``upper``)."""
    from seqis.errors import ConfigError

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not values or any(not 0 < v <= upper for v in values):
        raise ConfigError(f"{flag} must be numbers in (0, {upper:g}], got {text!r}")
    return values


def _budgets(text: str) -> list[float]:
    """``--budgets``: shares of the plan in (0, 1], the full budget 1 among them (the reference)."""
    from seqis.errors import ConfigError

    budgets = _numbers(text, "--budgets", upper=1.0)
    if 1.0 not in budgets:
        raise ConfigError(f"--budgets must include 1, the full budget savings are measured by; got {text!r}")
    return budgets


def _learning_rates(text: str) -> list[float] | dict[str, float]:
    """``--lrs``: a grid (``0.001,0.002``) or each sampler's own (``uniform=0.004,fim=0.003``)."""
    from seqis.errors import ConfigError

    if "=" not in text:
        return _numbers(text, "--lrs")
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(p) != 2 for p in pairs):
        raise ConfigError(f"--lrs must be all numbers or all SAMPLER=NUMBER, got {text!r}")
    return {name.strip(): _numbers(value, "--lrs")[0] for name, value in pairs}


_COMMANDS = {
    "train": _cmd_train,
    "data": _cmd_data,
    "diagnose": _cmd_diagnose,
    "compare": _cmd_compare,
}


if __name__ == "__main__":
    sys.exit(main())
