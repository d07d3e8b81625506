"""A training run's settings: one dataclass, validated where it is built, saved with the run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from seqis.data.registry import DataOptions
from seqis.importance.config import SCHEMES, MiningConfig
from seqis.models.rnn import ModelConfig
from seqis.options import at_least_one, check, one_of, option, positive, within
from seqis.training.schedule import SCHEDULES

OPTIMIZERS = ("adam", "adamw", "sgd")
SINGLE_RUN = ("train", "diagnose")


@dataclass
class TrainConfig:
    """Everything that decides what a run trains, when it stops and where it writes."""

    data: str = option("stdlib", "data spec (see 'seqis data --list')")
    data_options: DataOptions = option(default_factory=DataOptions, cli=False)
    model: ModelConfig = option(default_factory=ModelConfig, cli=False)
    mining: MiningConfig = option(default_factory=MiningConfig, cli=False)
    steps: int | None = option(
        None, "planned training steps: what --schedule, --anneal and --prune-anneal divide"
    )
    epochs: float | None = option(
        None, "planned epochs instead of --steps: a pruned epoch is shorter, and the schedule follows epochs"
    )
    budget: float = option(
        1.0,
        "train this share of the planned --steps/--epochs, the schedule decayed over it",
        commands=SINGLE_RUN,
    )
    stop_at: int | None = option(
        None, "stop after this many steps, keeping the plan (a segment of a longer run)", commands=SINGLE_RUN
    )
    time_budget: float | None = option(None, "seconds of training per run")
    target_loss: float | None = option(
        None, "stop once the validation loss reaches this", commands=SINGLE_RUN
    )
    batch_size: int = option(64, "sequences per step (all ranks together under torchrun: per rank)")
    optimizer: str = option("adam", "optimizer", choices=OPTIMIZERS)
    lr: float = option(2e-3, "peak learning rate")
    schedule: str = option("constant", "learning-rate schedule over the plan", choices=SCHEDULES)
    warmup: float = option(
        0.0, "learning-rate warm-up: a share of the plan (< 1) or a number of steps (>= 1)"
    )
    lr_floor: float = option(0.0, "final learning rate as a share of the peak (linear, cosine, onecycle)")
    weight_decay: float = option(0.0, "weight decay (decoupled with adamw)")
    clip: float = option(1.0, "gradient-norm clipping threshold; 0 switches clipping off")
    eval_every: int = option(50, "steps between validations")
    train_eval_size: int = option(2000, "size of the fixed training subset logged as train_eval_loss")
    checkpoint_every: int = option(500, "steps between checkpoints")
    keep_checkpoints: int = option(2, "newest K checkpoints kept")
    seed: int = option(0, "seed of initial parameters and draws", commands=SINGLE_RUN)
    device: str = option("auto", "auto, cpu or cuda")
    out: str = option("runs/train", "output folder")
    skip_nonfinite: bool = option(
        False, "skip steps with a NaN/inf loss instead of stopping", commands=SINGLE_RUN
    )
    dist_timeout: float = option(
        300.0, "under torchrun: seconds before a dead or stalled rank fails the others"
    )
    progress: bool = option(True, "progress bar")
    tensorboard: bool = option(True, "TensorBoard logs (when installed)", cli=False)
    # CPU threads change the order of floating-point sums: saved with the run and restored.
    threads: int | None = option(None, "CPU threads (default: all cores, max 4); saved and kept on resume")

    def __post_init__(self) -> None:
        for name in (
            "steps",
            "stop_at",
            "batch_size",
            "eval_every",
            "checkpoint_every",
            "train_eval_size",
            "threads",
        ):
            at_least_one(getattr(self, name), name.replace("_", "-"))
        for name in ("epochs", "time_budget", "target_loss", "lr", "dist_timeout"):
            positive(getattr(self, name), name.replace("_", "-"))
        check(self.clip >= 0, f"--clip must be >= 0 (0: no clipping), got {self.clip}")
        check(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        check(self.warmup >= 0, f"--warmup must be >= 0, got {self.warmup}")
        within(self.budget, 0, 1, "budget", closed_low=False)
        within(self.lr_floor, 0, 1, "lr-floor")
        one_of(self.schedule, SCHEDULES, "schedule")
        check(self.steps is None or self.epochs is None, "give --steps or --epochs, not both")
        planned = self.steps is not None or self.epochs is not None
        check(
            planned or (self.schedule == "constant" and self.warmup == 0),
            "a schedule or a warm-up runs over a plan: give --steps or --epochs",
        )
        check(self.schedule != "onecycle" or self.warmup > 0, "--schedule onecycle needs --warmup (its rise)")
        at_least_one(self.keep_checkpoints, "keep-checkpoints")
        one_of(self.optimizer, OPTIMIZERS, "optimizer")
        check(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}",
        )
        if self.mining.lr_scale == "auto":
            # Under a decay the cut comes late, at a low rate; scaled with it, the rate keeps the
            # cut's worth (Fashion-MNIST 1.16x lossless against 1.09x, its 8,000 rows 1.07x against
            # 0.99x). At a constant rate the scaled one fits sooner and generalises worse.
            scaled = "linear" if self.schedule != "constant" else "none"
            self.mining = replace(self.mining, lr_scale=scaled)
        # Padded batches cost the longest sequence whatever is drawn: cost-aware draws would only
        # add variance there.
        check(
            not self.mining.cost_aware or self.model.pack,
            "--cost-aware needs --pack: padded batches cost their longest sequence whatever is drawn",
        )

    def validate(self) -> None:
        """What a run needs beyond valid fields: a way to stop."""
        check(
            self.steps is not None or self.epochs is not None or self.time_budget is not None,
            "give --steps N, --epochs E or --time-budget SECONDS",
        )

    @property
    def planned_steps(self) -> int | None:
        """The steps this run plans (its --budget share of --steps), or None without --steps."""
        return max(1, round(self.budget * self.steps)) if self.steps is not None else None

    @property
    def planned_epochs(self) -> float | None:
        return self.budget * self.epochs if self.epochs is not None else None

    def with_sampler(self, name: str) -> TrainConfig:
        """This configuration with sampler ``name`` (a scheme, a shorthand, or ``scheme:factor``).

        A plain scheme keeps this configuration's ``--factor``; a shorthand or ``scheme:factor``
        names its own.
        """
        scheme, _, factor = name.partition(":")
        if not factor and scheme in SCHEMES:
            factor = self.mining.factor
        return replace(self, mining=replace(self.mining, sampler=scheme, factor=factor or None))

    @property
    def sampler_label(self) -> str:
        return self.mining.label

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))

    def changes_from(self, saved: dict) -> list[str]:
        """Settings that differ from a saved configuration and would change the run.

        Stopping, output and measurement settings may change on resume; everything else
        (data, model, sampler, optimizer, learning rate, clipping, mining, threads...) must not.
        """
        now, before = _flat(self.to_dict()), _flat(saved)
        return [
            f"{key} {before.get(key)!r} -> {now.get(key)!r}"
            for key in sorted(set(now) | set(before))
            if key not in RESUME_MAY_CHANGE and now.get(key) != before.get(key)
        ]

    @classmethod
    def from_dict(cls, saved: dict) -> TrainConfig:
        """The configuration a run saved (``config.json`` or a checkpoint's ``config``)."""
        nested = {
            "data_options": DataOptions(**saved["data_options"]),
            "model": ModelConfig(**saved["model"]),
            "mining": MiningConfig(**saved["mining"]),
        }
        return cls(**{**saved, **nested})


# Changing these on resume changes when a run stops, where it writes or what it measures, not
# what it trains; every other setting must match the checkpoint.
RESUME_MAY_CHANGE = {
    "steps",
    "stop_at",
    "time_budget",
    "target_loss",
    "out",
    "progress",
    "tensorboard",
    "device",
    "dist_timeout",
    "eval_every",
    "train_eval_size",
    "checkpoint_every",
    "keep_checkpoints",
    "skip_nonfinite",
    "data_options.val_size",
}


def _flat(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
