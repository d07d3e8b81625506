"""Sampling schemes, one class each, in one registry: where to add the next one.

A :class:`Scheme` owns everything that differs between schemes: the sampler it builds, whether a
miner harvests factors for it and whether the switch decides, the switch that prices it (its
cost and predicted cut), its run label, the options that contradict it, and whether a run of it
depends on its plan. Everything else (``MiningConfig``, the wiring, the miner, the trainer,
``ImportanceLoader``, ``diagnose``) asks the scheme instead of testing its name, so a new
scheme is one class here with :func:`register_scheme`, plus its tests.

Example (a scheme that draws like uniform but keeps a miner's statistics):
    >>> @register_scheme
    ... class Watched(Scheme):
    ...     name, help = "watched", "uniform draws; the miner harvests factors (diagnostics)"
    ...     sampler_class = UniformBatchSampler                        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor

from seqis.importance.factors import FACTORS
from seqis.importance.switch import PRESAMPLE_RATIO, PoolSwitch, Switch, mining_cost
from seqis.options import check, name
from seqis.plan import Plan
from seqis.sampling.sampler import (
    ImportanceSampler,
    PresamplingSampler,
    PruningSampler,
    RandomSubsetSampler,
    UniformBatchSampler,
)

if TYPE_CHECKING:  # MiningConfig validates itself through this registry
    from seqis.importance.config import MiningConfig
    from seqis.importance.mining import Miner


class Scheme:
    """How one sampling scheme draws, mines and switches. Subclass, set the class attributes,
    override what differs, and :func:`register_scheme` it."""

    name: ClassVar[str]
    help: ClassVar[str]
    sampler_class: ClassVar[type[UniformBatchSampler]] = UniformBatchSampler
    shorthands: ClassVar[dict[str, str]] = {}  # a one-word sampler name -> the factor it implies
    mined: ClassVar[bool] = True  # a miner harvests factors for it
    switched: ClassVar[bool] = False  # the on/off switch decides (unless always_on)
    keeps_store: ClassVar[bool] = False  # refresh re-scores the stored factors draws come from
    uses_factor: ClassVar[bool] = True  # its label names a factor
    bare_factor: ClassVar[str | None] = None  # the factor its bare name stands for in a label

    @property
    def draws_from_store(self) -> bool:
        """Whether importance draws come from stored (possibly stale) factors."""
        return self.sampler_class.draws_from_store

    def check(self, config: MiningConfig) -> None:
        """Refuse options that contradict the scheme (options it has no use for are accepted:
        a race sets them once for all its samplers, uniform among them)."""

    def check_wiring(self, config: MiningConfig, score_fn: Callable | None, plan: Plan) -> None:
        """Refuse what this caller cannot give the scheme (a scorer, a plan), never ignore it."""

    def label(self, config: MiningConfig) -> str:
        """The run's name for it: a shorthand where one fits, else ``scheme:factor``."""
        if not self.uses_factor or config.factor == self.bare_factor:
            return self.name
        for short, factor in self.shorthands.items():
            if factor == config.factor:
                return short
        return f"{self.name}:{config.factor}"

    def refresh_share(self, config: MiningConfig) -> float:
        """Sequences re-scored per trained sequence while importance sampling is on."""
        return 0.0

    def plan_dependence(self, config: MiningConfig) -> str | None:
        """Why a run of this scheme depends on its plan (so the plan may not change on resume)."""
        return None

    def build_sampler(
        self, config: MiningConfig, indices: Tensor, batch_size: int, seed: int, plan: Plan, lengths
    ) -> UniformBatchSampler:
        return self.sampler_class(indices, batch_size, seed=seed)

    def make_switch(self, config: MiningConfig, batch_size: int, refreshes: bool) -> Switch:
        """The switch that prices this scheme: its predicted cut and mining's cost."""
        return Switch(config, batch_size, mining_cost(config, refreshes))

    def connect(self, sampler: UniformBatchSampler, miner: Miner) -> None:
        """Whatever the sampler needs from its miner once both exist."""


SCHEMES: dict[str, Scheme] = {}


def register_scheme(cls: type[Scheme]) -> type[Scheme]:
    """Add a scheme (a class decorator): ``--sampler NAME`` and its shorthands take it."""
    taken = set(SCHEMES) | {short for scheme in SCHEMES.values() for short in scheme.shorthands}
    clash = ({cls.name} | set(cls.shorthands)) & taken
    if clash:
        raise ValueError(f"sampler name(s) {sorted(clash)} are registered already")
    SCHEMES[cls.name] = cls()
    return cls


class _SamplerNames:
    """Every name ``--sampler`` takes, schemes and shorthands: a live view of the registry."""

    def __contains__(self, sampler: object) -> bool:
        return sampler in SCHEMES or any(sampler in s.shorthands for s in SCHEMES.values())

    def __iter__(self) -> Iterator[str]:
        yield from SCHEMES
        for scheme in SCHEMES.values():
            yield from scheme.shorthands


SAMPLER_NAMES = _SamplerNames()


def resolve(sampler: str) -> tuple[Scheme, str | None]:
    """The scheme a ``--sampler`` name means, and the factor a shorthand implies (else None)."""
    if sampler in SCHEMES:
        return SCHEMES[sampler], None
    for scheme in SCHEMES.values():
        if sampler in scheme.shorthands:
            return scheme, scheme.shorthands[sampler]
    raise KeyError(sampler)


def sampler_help() -> str:
    """``--sampler``'s help, from the registry."""
    schemes = ", ".join(SCHEMES)
    shorts = "; ".join(
        f"{short} ({scheme.name} with the {factor} factor)"
        for scheme in SCHEMES.values()
        for short, factor in scheme.shorthands.items()
    )
    return f"sampling scheme ({schemes}) or a shorthand: {shorts}"


# -- refusals shared by several schemes -----------------------------------------------------------
def _refuse_refresh(config: MiningConfig, scheme: str) -> None:
    check(
        not config.refresh_fraction,
        f"{name(config, 'refresh_fraction')} applies to {name(config, 'sampler')} importance; "
        f"{scheme} keeps no factors to refresh",
    )


def _refuse_sweep(config: MiningConfig, scheme: str) -> None:
    check(not config.sweep, f"{name(config, 'sweep')} scores a store of factors; {scheme} draws from none")


def _refuse_cost_aware(config: MiningConfig, scheme: str) -> None:
    check(not config.cost_aware, f"{name(config, 'cost_aware')} shapes importance draws; {scheme} has none")


def _refuse_anneal(config: MiningConfig, scheme: str) -> None:
    check(
        config.anneal == 0,
        f"{name(config, 'anneal')} applies to importance draws; {scheme} anneals with "
        f"{name(config, 'prune_anneal')}",
    )


def _needs_plan_for_tail(config: MiningConfig, plan: Plan) -> None:
    check(
        config.prune_anneal == 0 or plan.planned,
        f"{name(config, 'prune_anneal')} is a share of the plan: give the run its planned steps or epochs",
    )


# -- the schemes ------------------------------------------------------------------------------------
@register_scheme
class Uniform(Scheme):
    name, help = "uniform", "shuffled epochs, no factors: the baseline"
    mined, uses_factor = False, False


@register_scheme
class Importance(Scheme):
    name = "importance"
    help = "draws with p ~ factor from a store of factors, unbiasing weights 1/(N p), the switch"
    sampler_class = ImportanceSampler
    shorthands = {"fim": "fim", "loss": "loss", "exact": "exact"}
    switched, keeps_store = True, True

    def refresh_share(self, config: MiningConfig) -> float:
        return 0.1 if config.refresh_fraction is None else config.refresh_fraction

    def plan_dependence(self, config: MiningConfig) -> str | None:
        if config.has_switch:
            return "the switch predicts the store's cut over the rest of the plan"
        return None

    def build_sampler(self, config, indices, batch_size, seed, plan, lengths) -> ImportanceSampler:
        costs = lengths[indices] if config.cost_aware else None
        return ImportanceSampler(indices, batch_size, config.smoothing, seed=seed, costs=costs)


@register_scheme
class Presample(Scheme):
    name = "presample"
    help = "Katharopoulos & Fleuret: fresh scores of a uniform pool of r b candidates (r sized by the switch)"
    sampler_class = PresamplingSampler
    shorthands = {"gradnorm": "gradnorm"}  # its bound is cheap enough to score every candidate
    switched = True

    def check(self, config: MiningConfig) -> None:
        for refuse in (_refuse_refresh, _refuse_sweep, _refuse_cost_aware):
            refuse(config, self.name)

    def check_wiring(self, config, score_fn, plan) -> None:
        check(score_fn is not None, "presampling scores candidates: it needs a forward-only score_fn")

    def build_sampler(self, config, indices, batch_size, seed, plan, lengths) -> PresamplingSampler:
        return PresamplingSampler(indices, batch_size, config.smoothing, seed=seed, ratio=PRESAMPLE_RATIO)

    def make_switch(self, config: MiningConfig, batch_size: int, refreshes: bool) -> Switch:
        return PoolSwitch(config, batch_size, mining_cost(config, refreshes))

    def connect(self, sampler: PresamplingSampler, miner: Miner) -> None:
        sampler.score_fn = lambda index: miner.score(index)


@register_scheme
class Prune(Scheme):
    name = "prune"
    help = "InfoBatch: each epoch skips below-mean sequences with probability r, weights the kept 1/(1 - r)"
    sampler_class = PruningSampler
    bare_factor = "fim"

    def check(self, config: MiningConfig) -> None:
        for refuse in (_refuse_refresh, _refuse_sweep, _refuse_cost_aware, _refuse_anneal):
            refuse(config, self.name)
        harvested = [f.name for f in FACTORS.values() if not f.own_pass]
        check(
            not FACTORS[config.factor].own_pass,
            f"{name(config, 'sampler')} prune ranks by factors of the training pass "
            f"({', '.join(harvested)}), not {config.factor}",
        )

    def check_wiring(self, config, score_fn, plan) -> None:
        _needs_plan_for_tail(config, plan)

    def plan_dependence(self, config: MiningConfig) -> str | None:
        return "the full-data tail is a share of the plan" if config.prune_anneal > 0 else None

    def build_sampler(self, config, indices, batch_size, seed, plan, lengths) -> PruningSampler:
        return PruningSampler(
            indices,
            batch_size,
            config.prune_ratio,
            seed=seed,
            total_steps=plan.steps,
            anneal=config.prune_anneal,
            total_epochs=plan.epochs,
        )


@register_scheme
class Subset(Scheme):
    name = "subset"
    help = "pruning's honest control (RS2): a random share of each epoch, unweighted"
    sampler_class = RandomSubsetSampler
    mined, uses_factor = False, False

    def check(self, config: MiningConfig) -> None:
        for refuse in (_refuse_refresh, _refuse_sweep, _refuse_cost_aware, _refuse_anneal):
            refuse(config, self.name)

    def check_wiring(self, config, score_fn, plan) -> None:
        _needs_plan_for_tail(config, plan)

    def plan_dependence(self, config: MiningConfig) -> str | None:
        return "the full-data tail is a share of the plan" if config.prune_anneal > 0 else None

    def build_sampler(self, config, indices, batch_size, seed, plan, lengths) -> RandomSubsetSampler:
        return RandomSubsetSampler(
            indices, batch_size, config.subset_fraction, seed, plan.steps, config.prune_anneal, plan.epochs
        )
