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
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2, no usage dump
        self.exit(2, f"seqis: error: {message}\n")


def _checked(parse, valid, expected: str):
    """An argparse type: ``parse`` the text, then require ``valid(value)``."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not valid(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return convert


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_positive_float = _checked(float, lambda v: 0 < v < float("inf"), "a positive finite number")
_fraction = _checked(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="stdlib", help="data spec (see 'seqis data --list')")
    p.add_argument(
        "--seq-len",
        type=_positive_int,
        default=100,
        help="window length for character LMs, maximum length for line/word LMs",
    )
    p.add_argument(
        "--max-chars",
        type=_positive_int,
        default=2_000_000,
        help="character budget of text corpora",
    )
    p.add_argument(
        "--val-size",
        type=_positive_int,
        default=10_000,
        help="validation sequences at most (a seeded subset of an official test split)",
    )
    p.add_argument(
        "--encoding-errors",
        choices=["strict", "replace"],
        default="strict",
        help="undecodable bytes: fail (strict) or replace them",
    )


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=["lstm", "gru", "rnn"], default="lstm")
    p.add_argument("--hidden", type=_positive_int, default=256)
    p.add_argument("--layers", type=_positive_int, default=2)
    p.add_argument("--embed", type=_positive_int, default=64)
    p.add_argument(
        "--pack",
        action="store_true",
        help="run the RNN over packed sequences, so a step's cost follows the lengths it holds",
    )
    p.add_argument("--dropout", type=_fraction, default=0.0)


def _add_train_args(p: argparse.ArgumentParser, single_run: bool = True) -> None:
    _add_data_args(p)
    _add_model_args(p)
    if single_run:
        p.add_argument(
            "--sampler",
            default="uniform",
            choices=["uniform", "fim", "gradnorm", "loss", "exact", "prune"],
        )
        p.add_argument("--steps", type=_positive_int)
        p.add_argument("--target-loss", type=_positive_float)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument(
            "--resume",
            nargs="?",
            const="",
            metavar="RUN_DIR",
            help="continue from the newest good checkpoint: '--resume RUN_DIR' with the run's saved "
            "settings (only --steps, --time-budget, --target-loss may be added), or '--resume' with "
            "--out and the same settings as before",
        )
        p.add_argument(
            "--skip-nonfinite",
            action="store_true",
            help="skip steps with a NaN/inf loss instead of stopping",
        )
    p.add_argument("--time-budget", type=_positive_float, help="seconds of training per run")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--lr", type=_positive_float, default=2e-3)
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--clip", type=_positive_float, default=1.0)
    p.add_argument("--eval-every", type=_positive_int, default=50)
    p.add_argument(
        "--train-eval-size",
        type=_positive_int,
        default=2000,
        help="size of the fixed training subset whose loss is logged as train_eval_loss",
    )
    p.add_argument("--checkpoint-every", type=_positive_int, default=500)
    p.add_argument("--keep-checkpoints", type=_positive_int, default=2, help="newest K kept")
    p.add_argument(
        "--smoothing",
        type=_checked(float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
        default=0.2,
        help="alpha in (0, 1]: mix of uniform in p; weights stay <= 1/alpha",
    )
    p.add_argument(
        "--refresh-fraction",
        type=float,
        default=0.1,
        help="sequences re-scored per trained sequence while IS is on",
    )
    p.add_argument(
        "--min-gain",
        type=_positive_float,
        default=1.2,
        help="switch IS on when the estimated variance gain reaches this",
    )
    p.add_argument(
        "--min-gain-off",
        type=_positive_float,
        default=1.0,
        help="switch IS off when the variance cut it delivers falls below this",
    )
    p.add_argument("--always-on", action="store_true", help="never fall back to uniform")
    p.add_argument(
        "--refresh-batch",
        type=_positive_int,
        default=256,
        help="sequences re-scored in one forward-only refresh pass while IS is on",
    )
    p.add_argument(
        "--anneal",
        type=float,
        default=0.0,
        help="importance draws: the final share of --steps drawn uniformly (against late overfitting)",
    )
    p.add_argument(
        "--cost-aware",
        action="store_true",
        help="draw p proportional to factor / sqrt(length): least variance per unit of work",
    )
    p.add_argument(
        "--lr-scale",
        choices=["none", "sqrt", "linear"],
        default="none",
        help="while IS is on, scale the learning rate by rule(variance cut): sqrt suits Adam, linear SGD",
    )
    p.add_argument(
        "--lr-scale-max",
        type=_checked(float, lambda v: 1 <= v < float("inf"), "a number >= 1"),
        default=2.0,
        help="bound on the --lr-scale multiplier",
    )
    p.add_argument(
        "--factor",
        choices=["fim", "loss", "gradnorm"],
        default="fim",
        help="the factor that --sampler prune ranks sequences by",
    )
    p.add_argument(
        "--prune-ratio",
        type=_checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
        default=0.5,
        help="--sampler prune: probability of skipping a below-mean sequence in an epoch",
    )
    p.add_argument(
        "--prune-anneal",
        type=_fraction,
        default=0.125,
        help="--sampler prune: final share of --steps trained on full epochs",
    )
    p.add_argument("--out", default="runs/train")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=_positive_int, help="CPU threads (default: all cores, max 4)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--dist-timeout",
        type=_positive_float,
        default=300.0,
        help="under torchrun: seconds before a dead or stalled rank fails the others",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="seqis", description="Importance-sampled training for RNNs.")
    parser.add_argument("--version", action="version", version="seqis 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train one model")
    _add_train_args(p)

    p = sub.add_parser("data", help="print statistics of a dataset")
    _add_data_args(p)
    p.add_argument("--list", action="store_true", help="list the data specs")

    p = sub.add_parser("diagnose", help="tell whether importance sampling can pay on this data")
    _add_train_args(p)
    p.add_argument(
        "--checkpoint",
        metavar="RUN_DIR",
        help="judge the newest checkpoint of this run instead of training briefly",
    )

    p = sub.add_parser("compare", help="race samplers on the same data, seeds and budget")
    _add_train_args(p, single_run=False)
    p.add_argument("--samplers", default="uniform,fim")
    p.add_argument("--seeds", type=_positive_int, default=3)
    p.add_argument(
        "--lrs",
        help="comma-separated learning rates: every sampler runs at each, the report compares "
        "each at its own best (tuned vs tuned)",
    )
    p.add_argument("--steps", type=_positive_int)
    p.add_argument("--targets", default="auto", help="'auto' or comma-separated losses")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = " ".join(["seqis", *argv])
    args.argv = argv
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch  # after the thread policy is set

    from seqis.errors import SeqisError

    threads = getattr(args, "threads", None) or min(4, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    try:
        return _COMMANDS[args.command](args)
    except SeqisError as e:
        print(f"seqis: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seqis: interrupted", file=sys.stderr)
        return 130


def _data_options(args):
    from seqis.data.registry import DataOptions

    return DataOptions(
        seq_len=args.seq_len,
        max_chars=args.max_chars,
        val_size=args.val_size,
        encoding_errors=args.encoding_errors,
    )


def train_config(args, **overrides):
    """A :class:`TrainConfig` from parsed CLI arguments."""
    from seqis.importance.mining import MiningConfig
    from seqis.models.rnn import ModelConfig
    from seqis.training.trainer import TrainConfig

    values = dict(
        data=args.data,
        data_options=_data_options(args),
        model=ModelConfig(
            cell=args.model,
            hidden_size=args.hidden,
            num_layers=args.layers,
            dropout=args.dropout,
            embed_size=args.embed,
            pack=args.pack,
        ),
        sampler=getattr(args, "sampler", "uniform"),
        mining=MiningConfig(
            smoothing=args.smoothing,
            refresh_fraction=args.refresh_fraction,
            min_gain=args.min_gain,
            min_gain_off=args.min_gain_off,
            refresh_batch=args.refresh_batch,
            lr_scale=args.lr_scale,
            cost_aware=args.cost_aware,
            anneal=args.anneal,
            lr_scale_max=args.lr_scale_max,
            always_on=args.always_on,
            factor=args.factor,
            prune_ratio=args.prune_ratio,
            prune_anneal=args.prune_anneal,
        ),
        steps=args.steps,
        time_budget=args.time_budget,
        target_loss=getattr(args, "target_loss", None),
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        clip=args.clip,
        eval_every=args.eval_every,
        train_eval_size=args.train_eval_size,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        seed=getattr(args, "seed", 0),
        device=args.device,
        out=args.out,
        skip_nonfinite=getattr(args, "skip_nonfinite", False),
        progress=not args.no_progress,
        dist_timeout=args.dist_timeout,
    )
    values.update(overrides)
    return TrainConfig(**values)


# With '--resume RUN_DIR' the saved settings stand; these only say when to stop or how to run.
_RESUME_FLAGS = {"--resume", "--steps", "--time-budget", "--target-loss", "--threads", "--no-progress"}


def saved_config(args):
    """The configuration saved by the run in ``args.resume``, with new stopping flags applied."""
    from dataclasses import replace

    from seqis.errors import ConfigError
    from seqis.training.trainer import TrainConfig

    given = {token.split("=")[0] for token in args.argv if token.startswith("--")}
    extra = sorted(given - _RESUME_FLAGS)
    if extra:
        raise ConfigError(
            f"--resume RUN_DIR continues with the run's saved settings; {', '.join(extra)} cannot be "
            "changed (only --steps, --time-budget, --target-loss)"
        )
    path = Path(args.resume) / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"no saved run configuration at {path}: is {args.resume} a seqis run folder?"
        ) from None
    config = TrainConfig.from_dict(saved)
    stops = {k: getattr(args, k) for k in ("steps", "time_budget", "target_loss") if getattr(args, k)}
    return replace(config, out=args.resume, progress=not args.no_progress, **stops)


def _cmd_train(args) -> int:
    from seqis.experiments.plots import plot_run
    from seqis.training.trainer import train

    config = train_config(args) if not args.resume else saved_config(args)
    summary = train(config, resume=args.resume is not None)
    args.out = config.out
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports for all
        return 130 if summary["stopped_by"] == "signal" else 0
    out = Path(args.out)
    plot_run(out / "metrics.csv", out / "loss.png", title=f"{args.sampler} on {args.data}")
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
    print(json.dumps(load_data(args.data, _data_options(args)).stats(), indent=2))
    return 0


def _cmd_diagnose(args) -> int:
    from seqis.experiments.diagnose import diagnose

    sampler = args.sampler if args.sampler != "uniform" else "fim"
    report = diagnose(train_config(args, sampler=sampler), args.steps, checkpoint=args.checkpoint)
    print(report["verdict"])
    print(f"details: {Path(args.out) / 'diagnosis.json'}, histogram: {report['histogram']}")
    return 0


def _cmd_compare(args) -> int:
    from seqis.errors import ConfigError
    from seqis.experiments.compare import compare

    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    lrs = None
    if args.lrs:
        try:
            lrs = [float(x) for x in args.lrs.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--lrs must be comma-separated numbers, got {args.lrs!r}") from None
        if not lrs or any(not 0 < lr < float("inf") for lr in lrs):
            raise ConfigError(f"--lrs must be positive numbers, got {args.lrs!r}")
    result = compare(train_config(args), samplers, args.seeds, args.targets, args.command_line, lrs)
    print(result["tables"]["val_loss"])
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


_COMMANDS = {
    "train": _cmd_train,
    "data": _cmd_data,
    "diagnose": _cmd_diagnose,
    "compare": _cmd_compare,
}


if __name__ == "__main__":
    sys.exit(main())
