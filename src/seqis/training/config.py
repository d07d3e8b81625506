"""A training run's settings: one dataclass, validated where it is built, saved with the run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace

from seqis.data.registry import DataOptions
from seqis.importance import lr_scale
from seqis.importance.config import MiningConfig
from seqis.importance.schemes import SCHEMES
from seqis.models.rnn import ModelConfig
from seqis.options import (
    KEEP,
    MAY_CHANGE,
    PLAN,
    at_least,
    check,
    name,
    one_of,
    option,
    positive,
    resume_rule,
    within,
)
from seqis.plan import Plan
from seqis.training.schedule import SCHEDULES

OPTIMIZERS = ("adam", "adamw", "sgd")
SINGLE_RUN = ("train", "diagnose", "demo")


@dataclass
class TrainConfig:
    """Everything that decides what a run trains, when it stops and where it writes."""

    data: str = option("stdlib", "data spec (see 'seqis data --list')")
    data_options: DataOptions = option(default_factory=DataOptions, cli=False)
    model: ModelConfig = option(default_factory=ModelConfig, cli=False)
    mining: MiningConfig = option(default_factory=MiningConfig, cli=False)
    steps: int | None = option(
        None, "planned training steps: what --schedule, --anneal and --prune-anneal divide", resume=PLAN
    )
    epochs: float | None = option(
        None,
        "planned epochs instead of --steps: a pruned epoch is shorter, and the schedule follows epochs",
        resume=PLAN,
    )
    budget: float = option(
        1.0,
        "train this share of the planned --steps/--epochs, the schedule decayed over it",
        commands=SINGLE_RUN,
        resume=PLAN,
    )
    stop_at: int | None = option(
        None,
        "stop after this many steps, keeping the plan (a segment of a longer run)",
        commands=SINGLE_RUN,
        resume=MAY_CHANGE,
    )
    time_budget: float | None = option(None, "seconds of training per run", resume=MAY_CHANGE)
    target_loss: float | None = option(
        None, "stop once the validation loss reaches this", commands=SINGLE_RUN, resume=MAY_CHANGE
    )
    batch_size: int = option(64, "sequences per step (all ranks together under torchrun: per rank)")
    optimizer: str = option("adam", "optimizer", choices=OPTIMIZERS)
    lr: float = option(2e-3, "peak learning rate")
    schedule: str = option("constant", "learning-rate schedule over the plan", choices=SCHEDULES)
    warmup: float = option(
        0.0, "learning-rate warm-up: a share of the plan (< 1) or a number of steps (>= 1)"
    )
    lr_floor: float = option(0.0, "final learning rate as a share of the peak (linear, cosine, onecycle)")
    lr_replay: str | None = option(
        None,
        "a finished run's folder: train with the --lr-scale multiplier its switch set, decision by "
        "decision (the schedule-shape control: the sampler's learning rate without its draws); "
        "it must have the same plan and peak --lr",
        commands=SINGLE_RUN,
    )
    label: str | None = option(None, "the run's name in a race, when not its sampler's", cli=False)
    weight_decay: float = option(0.0, "weight decay (decoupled with adamw)")
    clip: float = option(1.0, "gradient-norm clipping threshold; 0 switches clipping off")
    eval_every: int = option(50, "steps between validations", resume=MAY_CHANGE)
    train_eval_size: int = option(
        2000, "size of the fixed training subset logged as train_eval_loss", resume=MAY_CHANGE
    )
    checkpoint_every: int = option(500, "steps between checkpoints", resume=MAY_CHANGE)
    keep_checkpoints: int = option(2, "newest K checkpoints kept", resume=MAY_CHANGE)
    seed: int = option(0, "seed of initial parameters and draws", commands=SINGLE_RUN)
    device: str = option("auto", "auto, cpu, cuda or cuda:N", resume=MAY_CHANGE)
    out: str = option(
        "runs/train",
        "output folder",
        command_defaults={"diagnose": "runs/diagnose", "compare": "runs/compare"},
        resume=MAY_CHANGE,
    )
    skip_nonfinite: bool = option(
        False, "skip steps with a NaN/inf loss instead of stopping", commands=SINGLE_RUN, resume=MAY_CHANGE
    )
    dist_timeout: float = option(
        300.0, "under torchrun: seconds before a dead or stalled rank fails the others", resume=MAY_CHANGE
    )
    progress: bool = option(True, "progress bar", resume=MAY_CHANGE)
    tensorboard: bool = option(
        True, "TensorBoard logs (with the [tensorboard] extra installed)", cli=False, resume=MAY_CHANGE
    )
    # CPU threads change the order of floating-point sums: saved with the run and restored.
    threads: int | None = option(None, "CPU threads (default: all cores, max 4); saved and kept on resume")

    def __post_init__(self) -> None:
        for field_name in ("steps", "stop_at", "batch_size", "eval_every", "checkpoint_every"):
            at_least(self, field_name)
        for field_name in ("train_eval_size", "threads", "keep_checkpoints"):
            at_least(self, field_name)
        for field_name in ("epochs", "time_budget", "target_loss", "lr", "dist_timeout"):
            positive(self, field_name)
        for field_name in ("clip", "weight_decay", "warmup"):
            at_least(self, field_name, 0)
        within(self, "budget", 0, 1, closed_low=False)
        within(self, "lr_floor", 0, 1)
        one_of(self, "schedule", SCHEDULES)
        one_of(self, "optimizer", OPTIMIZERS)
        steps, epochs = name(self, "steps"), name(self, "epochs")
        check(self.steps is None or self.epochs is None, f"give {steps} or {epochs}, not both")
        planned = self.steps is not None or self.epochs is not None
        check(
            planned or (self.schedule == "constant" and self.warmup == 0),
            f"a schedule or a warm-up runs over a plan: give {steps} or {epochs}",
        )
        check(
            self.schedule != "onecycle" or self.warmup > 0,
            f"{name(self, 'schedule')} onecycle needs {name(self, 'warmup')} (its rise)",
        )
        check(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            f"{name(self, 'device')} must be auto, cpu, cuda or cuda:N, got {self.device!r}",
        )
        self.mining = replace(self.mining, lr_scale=lr_scale.resolve(self.mining.lr_scale, self.schedule))
        # Randomly cut padded batches cost their longest sequence whatever is drawn: cost-aware
        # draws would only add variance there. Packed or length-bucketed ones cost their lengths.
        check(
            not self.mining.cost_aware or self.model.pack or self.mining.batching == "bucket",
            f"{name(MiningConfig, 'cost_aware')} needs {name(ModelConfig, 'pack')} or "
            f"{name(MiningConfig, 'batching')} bucket: a padded batch costs its longest sequence",
        )

    def validate(self) -> None:
        """What a run needs beyond valid fields: a way to stop."""
        check(
            self.steps is not None or self.epochs is not None or self.time_budget is not None,
            f"give {name(self, 'steps')} N, {name(self, 'epochs')} E or {name(self, 'time_budget')} SECONDS",
        )

    def plan(self, sequences: int, world: int = 1) -> Plan:
        """This run's plan over ``sequences`` training sequences, with ``world`` ranks' batches."""
        return Plan(sequences, self.batch_size * world, self.planned_steps, self.planned_epochs)

    def plan_dependence(self) -> str | None:
        """Why this run depends on its plan (its steps or epochs), or None when nothing does."""
        if self.schedule != "constant":
            return f"the learning rate follows the plan ({name(self, 'schedule')} {self.schedule})"
        if self.warmup > 0:
            return f"the warm-up ({name(self, 'warmup')}) is a share of the plan"
        if self.mining.anneal > 0:
            return f"the uniform tail ({name(self.mining, 'anneal')}) is a share of the plan"
        return self.mining.scheme.plan_dependence(self.mining)

    @property
    def planned_steps(self) -> int | None:
        """The steps this run plans (its --budget share of --steps), or None without --steps."""
        return max(1, round(self.budget * self.steps)) if self.steps is not None else None

    @property
    def planned_epochs(self) -> float | None:
        return self.budget * self.epochs if self.epochs is not None else None

    def with_sampler(self, name: str) -> TrainConfig:
        """This configuration with sampler ``name``: a scheme, a shorthand or ``scheme:factor``, with
        an optional ``@random`` or ``@bucket`` for its batching, ``+cost`` for cost-aware draws
        (``fim@bucket+cost``; the run is then named ``name``).

        A plain scheme keeps this configuration's ``--factor``; a shorthand or ``scheme:factor``
        names its own.
        """
        sampler, _, how = name.partition("@")
        batching, plus, extra = how.partition("+")
        check(extra in ("", "cost"), f"unknown sampler option +{extra} in {name!r}: +cost is the one")
        check(not plus or batching, f"{name!r}: +cost follows a batching (fim@random+cost, fim@bucket+cost)")
        scheme, _, factor = sampler.partition(":")
        if not factor and scheme in SCHEMES:
            factor = self.mining.factor
        mining = replace(self.mining, sampler=scheme, factor=factor or None)
        if batching:
            mining = replace(mining, batching=batching, cost_aware=extra == "cost" or self.mining.cost_aware)
        return replace(self, mining=mining, label=name if batching else self.label)

    @property
    def sampler_label(self) -> str:
        return self.label or self.mining.label

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))

    def changes_from(self, saved: dict, rules: tuple[str, ...] = (KEEP,)) -> list[str]:
        """Settings of the resume ``rules`` that differ from a saved configuration.

        By default those that would change what the run trains (data, model, sampler, optimizer,
        learning rate, clipping, mining, threads...); stopping, output and measurement settings
        may change on resume, the plan only where nothing depends on it (:meth:`plan_dependence`).
        """
        now, before = _flat(self.to_dict()), _flat(saved)
        return [
            f"{key} {before.get(key)!r} -> {now.get(key)!r}"
            for key in sorted(set(now) | set(before))
            if RESUME_RULES.get(key, KEEP) in rules and now.get(key) != before.get(key)
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


def _resume_rules(cls: type, prefix: str = "") -> dict[str, str]:
    """Every field's resume rule by its flattened name (``data_options.val_size``), nested included."""
    rules = {}
    for f in fields(cls):
        nested = {"data_options": DataOptions, "model": ModelConfig, "mining": MiningConfig}.get(f.name)
        if nested is not None and cls is TrainConfig:
            rules.update(_resume_rules(nested, f"{f.name}."))
        else:
            rules[prefix + f.name] = resume_rule(f)
    return rules


# Each setting's resume rule (the options' metadata): keep, may change, or the plan.
RESUME_RULES = _resume_rules(TrainConfig)


def _flat(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
