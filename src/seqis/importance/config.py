"""What to sample and how to mine: every importance-sampling option, validated in one place.

The *sampler* is a sampling scheme and the *factor* the score it ranks sequences by:

- ``uniform``: shuffled epochs, no factors;
- ``importance``: draws with p ~ factor (FIM's), unbiasing weights 1/(N p), the switch;
- ``presample``: Katharopoulos & Fleuret's presampling, fresh scores of a uniform candidate pool
  (r b candidates, r sized by the switch);
- ``prune``: InfoBatch's soft pruning of below-mean sequences per epoch;
- ``subset``: pruning's honest control, a random ``--subset-fraction`` of each epoch (RS2).

The old one-word spellings stay as shorthands: ``fim``, ``loss`` and ``exact`` are
``importance`` with that factor, ``gradnorm`` is ``presample`` with the gradnorm factor (its
bound is cheap enough to score every candidate), ``prune`` ranks by ``fim``.
Defaults and why: docs/method.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from seqis.importance.factors import FACTORS
from seqis.options import at_least_one, check, one_of, option, within

SCHEMES = ("uniform", "importance", "presample", "prune", "subset")
# shorthand -> (scheme, factor)
SHORTHANDS = {
    "fim": ("importance", "fim"),
    "loss": ("importance", "loss"),
    "exact": ("importance", "exact"),
    "gradnorm": ("presample", "gradnorm"),
}
SAMPLER_NAMES = (*SCHEMES, *SHORTHANDS)
# A variance cut g acts like a g times larger batch; larger batches take larger learning rates:
# linearly for SGD, about as the square root for Adam (Johnson & Guestrin 2018 scale by the gain).
# The multiplier's power of the delivered cut; "auto" is resolved by the run's schedule
# (TrainConfig): linear under a decaying one, where the races measured it best, else none.
LR_RULES = {"none": None, "sqrt": 0.5, "linear": 1.0, "auto": None}
# Presampling's pool is r b candidates, a forward pass each: r = 3 until the noise scale is
# known, then the r of PRESAMPLE_RATIOS whose predicted step gain beats its cost by the most.
PRESAMPLE_RATIO = 3
PRESAMPLE_RATIOS = range(2, 9)


@dataclass
class MiningConfig:
    """Sampling scheme, factor, switch, refresh and their costs; the defaults are the races'."""

    sampler: str = option(
        "importance",
        "sampling scheme (uniform, importance, presample, prune, subset) or a shorthand: fim, loss, exact "
        "(importance with that factor), gradnorm (presample with it)",
        choices=SAMPLER_NAMES,
        commands=("train", "diagnose"),
    )
    factor: str | None = option(
        None, "importance factor: fim (default), gradnorm, loss or exact", choices=FACTORS
    )
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
        one_of(self.sampler, SAMPLER_NAMES, "sampler")
        if self.sampler in SHORTHANDS:
            scheme, factor = SHORTHANDS[self.sampler]
            check(
                self.factor in (None, factor),
                f"--sampler {self.sampler} means --sampler {scheme} --factor {factor}; for the "
                f"{self.factor} factor use --sampler {scheme} --factor {self.factor}",
            )
            self.sampler, self.factor = scheme, factor
        self.factor = self.factor or "fim"
        one_of(self.factor, FACTORS, "factor")
        within(self.smoothing, 0, 1, "smoothing", closed_low=False)
        at_least_one(self.refresh_batch, "refresh-batch")
        check(
            self.forward_cost >= 0 and self.harvest_cost >= 0,
            f"forward_cost and harvest_cost must be >= 0, got {self.forward_cost} and {self.harvest_cost}",
        )
        for name in ("check_every", "warmup_steps", "switch_sample", "switch_every"):
            at_least_one(getattr(self, name), name.replace("_", "-"))
        check(self.min_gain > 0 and self.min_gain_off > 0, "--min-gain and --min-gain-off must be > 0")
        check(
            self.min_gain_off <= self.min_gain,
            "--min-gain-off must not exceed --min-gain (the switch would flap)",
        )
        one_of(self.lr_scale, tuple(LR_RULES), "lr-scale")
        check(self.lr_scale_max >= 1, f"--lr-scale-max must be >= 1, got {self.lr_scale_max}")
        within(self.prune_ratio, 0, 1, "prune-ratio", closed_high=False)
        within(self.prune_anneal, 0, 1, "prune-anneal")
        within(self.subset_fraction, 0, 1, "subset-fraction", closed_low=False)
        within(self.anneal, 0, 1, "anneal")
        check(self.val_patience >= 0, f"--val-patience must be >= 0, got {self.val_patience}")
        self._check_scheme_options()

    def _check_scheme_options(self) -> None:
        """Options that contradict the scheme are refused; options it has no use for are not
        (a race sets them once for all its samplers, uniform among them)."""
        if self.refresh_fraction is not None:
            check(self.refresh_fraction >= 0, f"--refresh-fraction must be >= 0, got {self.refresh_fraction}")
            check(
                self.refresh_fraction == 0 or self.sampler in ("importance", "uniform"),
                f"--refresh-fraction applies to --sampler importance; {self.sampler} keeps no factors "
                "to refresh",
            )
        if self.cost_aware:
            check(
                self.sampler in ("importance", "uniform"),
                f"--cost-aware shapes importance draws; {self.sampler} has none",
            )
        if self.anneal > 0:
            check(
                self.sampler not in ("prune", "subset"),
                f"--anneal applies to importance draws; {self.sampler} anneals with --prune-anneal",
            )
        if self.sampler == "prune":
            check(self.factor != "exact", "--sampler prune ranks by fim, loss or gradnorm, not exact")

    @property
    def refresh_share(self) -> float:
        """Sequences re-scored per trained sequence while IS is on: 0.1 by default, and only
        ``importance`` keeps a store that draws are made from."""
        if self.sampler != "importance":
            return 0.0
        return 0.1 if self.refresh_fraction is None else self.refresh_fraction

    @property
    def label(self) -> str:
        """The run's name for its sampler: a shorthand where one fits, else scheme:factor."""
        if self.sampler in ("uniform", "subset"):
            return self.sampler
        if self.sampler == "prune":
            return "prune" if self.factor == "fim" else f"prune:{self.factor}"
        for name, pair in SHORTHANDS.items():
            if pair == (self.sampler, self.factor):
                return name
        return f"{self.sampler}:{self.factor}"

    @property
    def has_switch(self) -> bool:
        """Whether the on/off switch decides (pruning starts after warm-up and stays on)."""
        return self.sampler in ("importance", "presample") and not self.always_on

    @property
    def scales_lr(self) -> bool:
        """Whether the learning rate follows the delivered cut (auto, unresolved, does not)."""
        return LR_RULES[self.lr_scale] is not None
