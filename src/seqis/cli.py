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
# What a "may change on --resume" rule adds to a train flag's help.
_RESUME_NOTES = {
    "may change": "; may change on --resume",
    "plan": "; may change on --resume only where nothing depends on the plan",
}


def _section_classes() -> dict:
    """The config dataclass of each section of a command's options; every flag is one of their fields."""
    from seqis.data.registry import DataOptions
    from seqis.experiments.race import RaceConfig
    from seqis.importance.config import MiningConfig
    from seqis.models.rnn import ModelConfig
    from seqis.training.config import TrainConfig

    return {
        "train": TrainConfig,
        "data_options": DataOptions,
        "model": ModelConfig,
        "mining": MiningConfig,
        "race": RaceConfig,
    }


def _option_fields(cls: type, command: str):
    """The fields of ``cls`` that ``command`` offers as flags."""
    return [f for f in fields(cls) if f.metadata.get("cli") and command in f.metadata["commands"]]


def _help(f, command: str, default) -> str:
    text = f.metadata["help"]
    text = text() if callable(text) else text
    if command == "train":
        text += _RESUME_NOTES.get(f.metadata.get("resume"), "")
    if default is None or isinstance(default, bool):
        return text
    return text + (f" (default: {default:g})" if isinstance(default, float) else f" (default: {default})")


def _add_options(
    p: argparse.ArgumentParser, cls: type, section: str, command: str, preset: dict | None = None
) -> None:
    """One flag per command-line field of ``cls``, with the field's default (or the command's
    ``preset`` of it), choices and help."""
    from seqis.options import flag_name

    for f in _option_fields(cls, command):
        meta = f.metadata
        default = f.default if f.default is not MISSING else None
        default = (preset or {}).get(f.name, meta["command_defaults"].get(command, default))
        dest = f"{section}__{f.name}"
        kind = str(f.type).replace(" | None", "")
        if kind == "bool":
            flag = f"--no-{f.name.replace('_', '-')}" if default else flag_name(f)
            action = "store_false" if default else "store_true"
            text = _help(f, command, default)
            p.add_argument(flag, dest=dest, action=action, help=f"switch off: {text}" if default else text)
            continue
        p.add_argument(
            flag_name(f),
            dest=dest,
            metavar=None if meta["choices"] else flag_name(f).lstrip("-").replace("-", "_").upper(),
            type=meta["reader"] or _READERS[kind],
            default=default,
            choices=meta["choices"],
            help=_help(f, command, default),
        )


def _add_run_args(p: argparse.ArgumentParser, command: str, presets: dict | None = None) -> None:
    for section, cls in _section_classes().items():
        _add_options(p, cls, section, command, (presets or {}).get(section))


def resume_flags() -> set[str]:
    """The flags ``--resume RUN_DIR`` accepts: those whose options may change on resume."""
    from seqis.options import KEEP, flag_name

    flags = {"--resume"}
    for cls in _section_classes().values():
        for f in _option_fields(cls, "train"):
            if f.metadata.get("resume", KEEP) != KEEP and f.name != "out":  # RUN_DIR is the out
                bool_on = str(f.type) == "bool" and f.default
                flags.add(f"--no-{f.name.replace('_', '-')}" if bool_on else flag_name(f))
    return flags


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
        "settings (add only flags whose help says they may change on --resume), or '--resume' with "
        "--out and the same settings as before",
    )

    p = sub.add_parser("data", help="print statistics of a dataset")
    p.add_argument("--data", dest="train__data", default="stdlib", help="data spec (see --list)")
    _add_options(p, _section_classes()["data_options"], "data_options", "train")
    p.add_argument("--list", action="store_true", help="list the data specs")

    p = sub.add_parser(
        "diagnose",
        help="tell whether importance sampling can pay on this data",
        description="Train the first --stop-at steps (default 300) of the run 'seqis train' would make "
        "(its plan: --steps or --epochs; 300 steps without one), or restore a run's newest checkpoint, "
        "and report what that run's own switch concludes there, with the factors' spread.",
    )
    _add_run_args(p, "diagnose")
    p.add_argument(
        "--checkpoint",
        metavar="RUN_DIR",
        help="judge the newest checkpoint of this run (with its saved settings) instead of training",
    )

    p = sub.add_parser("compare", help="race samplers on the same data, seeds and budget")
    _add_run_args(p, "compare")

    from seqis.experiments.demo import PRESET

    p = sub.add_parser(
        "demo",
        help="uniform and importance sampling side by side, in one picture",
        description="Train uniform and the default sampler on the same plan and seed (embedded "
        "pixel-by-pixel digits unless told otherwise) and draw both validation curves over "
        "wall-clock, the spans with importance sampling on shaded, the verdict in the title.",
    )
    _add_run_args(p, "demo", PRESET)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = " ".join(["seqis", *argv])
    args.argv = argv
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch  # after the thread policy is set

    from seqis.errors import SeqisError
    from seqis.options import spelled_as_flags

    torch.set_num_threads(getattr(args, "train__threads", None) or default_threads())
    try:
        with spelled_as_flags():  # messages name options by their flags
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
    """A :class:`~seqis.training.config.TrainConfig` from parsed arguments (its classes validate them)."""
    classes = _section_classes()
    values = _section(args, "train")
    values["threads"] = values.get("threads") or default_threads()
    nested = {name: classes[name](**_section(args, name)) for name in ("data_options", "model", "mining")}
    return classes["train"](**{**values, **nested, **overrides})


def saved_config(args):
    """The configuration saved by the run in ``args.resume``, with the flags given that may change
    on resume applied (the plan's are checked against the run's dependence on it when it loads)."""
    from seqis.errors import ConfigError
    from seqis.training.config import TrainConfig

    given = {token.split("=")[0] for token in args.argv if token.startswith("--")}
    allowed = resume_flags()
    extra = sorted(given - allowed)
    if extra:
        raise ConfigError(
            f"--resume RUN_DIR continues with the run's saved settings, threads included; "
            f"{', '.join(extra)} cannot be changed (only {', '.join(sorted(allowed - {'--resume'}))})"
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
    return _with_given(config, args, given)


def _with_given(config, args, given: set[str]):
    """``config`` with the options of the ``given`` flags replaced by their parsed values."""
    from dataclasses import replace

    from seqis.options import flag_name

    classes = _section_classes()
    changes: dict[str, dict] = {}
    for section in ("train", "data_options", "model", "mining"):
        for f in _option_fields(classes[section], "train"):
            spelled = {flag_name(f), f"--no-{f.name.replace('_', '-')}"}
            if spelled & given:
                changes.setdefault(section, {})[f.name] = getattr(args, f"{section}__{f.name}")
    # A plan is in steps or in epochs: the one given replaces the other.
    if {"--steps", "--epochs"} & given:
        changes.setdefault("train", {}).setdefault("epochs" if "--steps" in given else "steps", None)
    # A segment's --stop-at is not a setting of the run: the resumed one goes on to the plan's end.
    top = {**changes.get("train", {}), "out": args.resume, "stop_at": args.train__stop_at}
    top["progress"] = args.train__progress  # a bar now, whatever the saved run showed
    nested = {s: replace(getattr(config, s), **v) for s, v in changes.items() if s != "train"}
    return replace(config, **top, **nested)


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
    if not config.mining.scheme.mined:  # uniform keeps no factors: judge the default, fim
        config = config.with_sampler("fim")
    report = diagnose(config, checkpoint=args.checkpoint)
    print(report["verdict"])
    print(f"details: {Path(config.out) / 'diagnosis.json'}, histogram: {report['histogram']}")
    return 0


def _cmd_compare(args) -> int:
    from seqis.experiments.race import RaceConfig, compare

    race = RaceConfig(**_section(args, "race"))
    config = train_config(args)
    result = compare(config, race, args.command_line)
    print(result["headline"])
    pictures = ("budget.png", "step_speedups.png", "val_loss_vs_time.png")
    first = next((p for p in pictures if (Path(config.out) / p).exists()), None)
    picture = f", first picture: {Path(config.out) / first}" if first else ""
    print(f"report: {Path(config.out) / 'report.md'}{picture}")
    return 0


def _cmd_demo(args) -> int:
    from seqis.experiments.demo import demo

    result = demo(train_config(args))
    print(result["verdict"])
    print(f"picture: {result['picture']}")
    return 0


_COMMANDS = {
    "train": _cmd_train,
    "data": _cmd_data,
    "diagnose": _cmd_diagnose,
    "compare": _cmd_compare,
    "demo": _cmd_demo,
}


if __name__ == "__main__":
    sys.exit(main())
