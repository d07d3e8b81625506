"""What to sample and how to mine: every importance-sampling option, validated in one place.

The *sampler* is a sampling scheme (:mod:`seqis.importance.schemes`: uniform, importance,
presample, prune, subset, or one registered later) and the *factor* the score it ranks
sequences by (:mod:`seqis.importance.factors`: fim, gradnorm, loss, exact, ...). One-word
shorthands name both: ``fim``, ``loss`` and ``exact`` are ``importance`` with that factor,
``gradnorm`` is ``presample`` with the gradnorm factor. The options each scheme refuses are
the scheme's to say. Defaults and why: docs/method.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from seqis.importance.factors import FACTORS
from seqis.importance.lr_scale import LR_RULES, scales
from seqis.importance.schemes import SAMPLER_NAMES, Scheme, resolve, sampler_help
from seqis.options import at_least, check, name, one_of, option, positive, within

BATCHINGS = ("random", "bucket")


def _factor_help() -> str:
    return "importance factor: " + "; ".join(f"{f.name}: {f.help}" for f in FACTORS.values())


@dataclass
class MiningConfig:
    """Sampling scheme, factor, switch, refresh and their costs; the defaults are the races'."""

    sampler: str = option("importance", sampler_help, choices=SAMPLER_NAMES, commands=("train", "diagnose"))
    factor: str | None = option(None, _factor_help, choices=FACTORS)
    smoothing: float = option(0.2, "alpha in (0, 1]: mix of uniform in p; weights stay <= 1/alpha")
    refresh_fraction: float | None = option(
        None, "importance: sequences re-scored per trained sequence while IS is on (default 0.1)"
    )
    refresh_batch: int = option(256, "sequences re-scored in one forward-only refresh pass")
    min_gain: float = option(1.2, "switch IS on at this estimated gain while the noise scale is unknown")
    forward_cost: float = option(1 / 3, "a forward-only pass, in training steps per sequence", cli=False)
    harvest_cost: float = option(0.035, "harvest and bookkeeping while IS is on, share of a step", cli=False)
    min_gain_off: float = option(1.0, "switch IS off when the variance cut it delivers falls below this")
    check_every: int = option(50, "steps between switch decisions", cli=False)
    warmup_steps: int = option(50, "uniform steps before the first decision", cli=False)
    switch_sample: int = option(8, "while IS is off: sequences harvested every switch_every steps", cli=False)
    switch_every: int = option(4, "while IS is off: steps between harvests", cli=False)
    always_on: bool = option(False, "never fall back to uniform (no switch)")
    cost_aware: bool = option(False, "draw p ~ factor / sqrt(length): least variance per unit of work")
    sweep: bool = option(
        False,
        "importance: score every sequence fresh (forward-only, --sweep-batch at a time) once fresh "
        "factors promise a cut that pays for it over the rate left to use it, and again as they age",
    )
    sweep_batch: int = option(256, "sweep: sequences scored in one forward-only pass")
    # Measured on Fashion-MNIST's GRU 1x128, one CPU thread: a sequence scored at batch 256 costs
    # 0.27-0.29 of a sequence trained at batch 64 (0.32-0.34 at 1,024, 0.38-0.43 at 4,096).
    sweep_cost: float = option(
        0.3, "a sweep's forward-only pass, in trained sequences' cost per sequence scored", cli=False
    )
    batching: str = option(
        "random",
        "random: batches as drawn; bucket: pools of --bucket-pool batches sorted by length and cut into "
        "batches in a shuffled order (little padding; every sequence keeps its weight: still unbiased)",
        choices=BATCHINGS,
    )
    bucket_pool: int = option(50, "bucket: batches per pool sorted by length")
    lr_scale: str = option(
        "auto",
        "while IS is on, scale the lr by rule(variance cut); auto: linear under a decaying --schedule, "
        "none at a constant rate (and in your own loop, whose learning rate is yours)",
        choices=tuple(LR_RULES),
    )
    lr_scale_max: float = option(2.0, "bound on the --lr-scale multiplier (>= 1)")
    prune_ratio: float = option(0.5, "prune: probability of skipping a below-mean sequence in an epoch")
    prune_anneal: float = option(0.125, "prune, subset: final share of the planned steps on full epochs")
    subset_fraction: float = option(
        0.75, "subset: share of each epoch trained (set it to the share prune keeps, to compare)"
    )
    anneal: float = option(0.0, "importance: final share of the planned steps drawn uniformly")
    val_patience: int = option(
        3,
        "importance: validations with IS on that set no new best validation loss (the train-val "
        "gap widening) before the run returns to uniform for good; 0: never",
    )

    def __post_init__(self) -> None:
        one_of(self, "sampler", SAMPLER_NAMES)
        scheme, implied = resolve(self.sampler)
        if implied is not None:
            check(
                self.factor in (None, implied),
                f"{name(self, 'sampler')} {self.sampler} means {name(self, 'sampler')} {scheme.name} "
                f"{name(self, 'factor')} {implied}; for the {self.factor} factor use "
                f"{name(self, 'sampler')} {scheme.name} {name(self, 'factor')} {self.factor}",
            )
            self.sampler, self.factor = scheme.name, implied
        self.factor = self.factor or "fim"
        one_of(self, "factor", FACTORS)
        within(self, "smoothing", 0, 1, closed_low=False)
        at_least(self, "refresh_batch")
        for cost in ("forward_cost", "harvest_cost"):
            at_least(self, cost, 0)
        for steps in ("check_every", "warmup_steps", "switch_sample", "switch_every"):
            at_least(self, steps)
        positive(self, "min_gain")
        positive(self, "min_gain_off")
        check(
            self.min_gain_off <= self.min_gain,
            f"{name(self, 'min_gain_off')} must not exceed {name(self, 'min_gain')} (the switch would flap)",
        )
        one_of(self, "lr_scale", LR_RULES)
        at_least(self, "lr_scale_max", 1)
        within(self, "prune_ratio", 0, 1, closed_high=False)
        within(self, "prune_anneal", 0, 1)
        within(self, "subset_fraction", 0, 1, closed_low=False)
        within(self, "anneal", 0, 1)
        at_least(self, "val_patience", 0)
        at_least(self, "refresh_fraction", 0)
        one_of(self, "batching", BATCHINGS)
        at_least(self, "sweep_batch")
        at_least(self, "sweep_cost", 0)
        at_least(self, "bucket_pool")
        self.scheme.check(self)

    @property
    def scheme(self) -> Scheme:
        """The sampling scheme, from the registry."""
        return resolve(self.sampler)[0]

    @property
    def refresh_share(self) -> float:
        """Sequences re-scored per trained sequence while IS is on (0 unless the scheme keeps a store)."""
        return self.scheme.refresh_share(self)

    @property
    def label(self) -> str:
        """The run's name for its sampler: a shorthand where one fits, else scheme:factor."""
        return self.scheme.label(self)

    @property
    def has_switch(self) -> bool:
        """Whether the on/off switch decides (pruning starts after warm-up and stays on)."""
        return self.scheme.switched and not self.always_on

    @property
    def scales_lr(self) -> bool:
        """Whether the learning rate follows the delivered cut (auto, unresolved, does not)."""
        return scales(self.lr_scale)
