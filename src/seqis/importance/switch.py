"""The on/off switch: one home for the gains, the noise scale's use, ``pays()`` and the lr rule.

Under uniform draws the harvested factors are a uniform sample of the factor distribution,
so they estimate, for free, how much importance sampling would cut the per-sample gradient
second moment:

    gain = E[s^2] / E[s^2 / ((1 - alpha) s / E[s] + alpha)]    (= E[s^2]/E[s]^2 at alpha=0)

That cut becomes fewer steps only where gradient noise limits progress: with the noise scale
B (:mod:`seqis.importance.noise`) it predicts 2 - 1/G fewer steps at the learning rate the run
keeps, G = (1 + B/b)/(1 + B/(b g)) with the learning rate re-tuned. The switch turns importance
sampling on when that predicted step gain beats mining's predicted cost (:func:`mining_cost`),
and, while B is unknown (or meaningless for the factor: B needs gradient norms), when
``gain >= min_gain``. While on, the harvest is importance-drawn with weights w = 1/(N p), and
the cut the current (partly stale) distribution delivers is

    gain = E_p[w s^2] / E_p[w^2 s^2]    (uniform's second moment / importance sampling's)

Fresh factors promise more than a store delivers: draws come from stored factors, and a
sequence never scored sits at the mean. With a share c of sequences scored and stored factors
of quality q (1: as good as fresh), the cut is about 1 / (1 - c q (1 - 1/gain)), and c grows
only while IS is on (every drawn sequence and the refresh sweep are scored). So the switch
predicts the cut over the rest of the planned run from the coverage it will reach
(:func:`coverage_ahead`), with q learnt from the cut each on-period delivered
(:meth:`Switch.learn_quality`): on data seen less than once (names) c stays near 0 and the
switch stays off; on Fashion-MNIST it predicts the ~2 measured where fresh factors promise ~5.
IS switches off when the delivered cut falls below ``min_gain_off`` or the predicted step gain
no longer beats half the mining cost (on needs all of it: hysteresis). With cost-aware draws (p ~ s/sqrt(c))
both gains are of variance x expected cost per step, so the on- and the off-decision judge the
same distribution and the switch does not flap.

Presampling draws from fresh scores of a uniform pool of r b candidates, so its cut is bounded by
the pool's own noise (:func:`pool_gain`: 1/g_pool = 1/r + 1/g in covariance) and its cost grows
with r (a forward pass per candidate). Katharopoulos & Fleuret switch on when the variance
reduction pays for the pool; here the switch also sizes the pool (:meth:`PoolSwitch.size_pool`): the
r whose predicted step gain beats its cost by the most.

Beside the gains, :class:`ValidationWatch` watches what the user cares about: less gradient
noise at the same learning rate fits the training objective sooner, and can overfit sooner.
When, with importance sampling on, the validation loss has not set a new best for
``val_patience`` validations while the gap to the training loss widened, the run returns to
uniform for good.

Every decision is a :class:`Judgement` (:meth:`Switch.judge`, free of side effects) that
:meth:`Switch.decide` then keeps; ``seqis diagnose`` reports the judgement of the very miner a
run decides with, so the two cannot disagree. Every decision depends on step counts and
factors, never on measured time, so a run is reproducible and resumes bit-exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from seqis.importance.lr_scale import LrMultiplier
from seqis.importance.noise import covariance_cut, predicted_step_gain, second_moment_cut

if TYPE_CHECKING:  # the config names the scheme, whose switch this is: only its type is read here
    from seqis.importance.config import MiningConfig

# Presampling's pool is r b candidates, a forward pass each: r = 3 until the noise scale is
# known, then the r of PRESAMPLE_RATIOS whose predicted step gain beats its cost by the most.
PRESAMPLE_RATIO = 3
PRESAMPLE_RATIOS = range(2, 9)


@dataclass(frozen=True)
class Decision:
    """One switch decision: after ``step`` steps, the gain it judged and the state it chose."""

    step: int
    gain: float  # the predicted cut while off, the delivered one while on
    active: bool
    predicted: float | None = None  # the cut predicted over the rest of the run
    step_gain: float | None = None  # the predicted step gain the decision weighed (B unknown: None)


@dataclass(frozen=True)
class StoreState:
    """What the switch needs to know of a store that draws are made from."""

    coverage: float  # share of sequences ever scored
    scored_per_step: float  # share of sequences scored per step while IS is on (harvest + refresh)
    horizon: int  # steps left in the plan (an epoch when there is no plan)

    @classmethod
    def of(
        cls, coverage: float, sequences: int, batch_size: int, refresh_share: float, horizon: int
    ) -> StoreState:
        """A store of ``sequences`` where, while IS is on, each step scores its batch (the harvest)
        and ``refresh_share`` of a batch more (the refresh sweep)."""
        return cls(coverage, min(1.0, (1.0 + refresh_share) * batch_size / sequences), horizon)


def coverage_ahead(coverage: float, scored_per_step: float, horizon: int) -> float:
    """Mean coverage over the next ``horizon`` steps if a share ``scored_per_step`` of the
    sequences, drawn at random, is scored every step: 1 - (1 - c0)(1 - e^-kH)/(kH)."""
    k_h = scored_per_step * max(horizon, 1)
    if k_h < 1e-9:
        return coverage
    return 1.0 - (1.0 - coverage) * (1.0 - math.exp(-k_h)) / k_h


def store_gain(fresh_gain: float, coverage: float, quality: float) -> float:
    """The cut of draws from a store with this coverage and quality: 1 / (1 - c q (1 - 1/g))."""
    return 1.0 / (1.0 - coverage * quality * (1.0 - 1.0 / max(fresh_gain, 1.0)))


@dataclass(frozen=True)
class NoiseRecord:
    """The noise figures after a decision (None while not yet identifiable)."""

    step: int
    active: bool
    noise_scale: float | None
    variance_cut: float | None
    predicted_step_gain: float | None
    predicted_step_gain_lr_retuned: float | None


def as_records(rows: list) -> list[dict]:
    """History rows as JSON-ready dicts."""
    return [asdict(row) for row in rows]


# -- gains ------------------------------------------------------------------------------------
def estimated_gain(
    factors: np.ndarray, smoothing: float, costs: np.ndarray | None = None, weights: np.ndarray | None = None
) -> float:
    """Uniform's second moment / importance sampling's, for p mixed with uniform, from a uniform sample
    (or one drawn with ``weights`` w = 1/(N p), whose weighted means are uniform's).

    With ``costs`` p follows s/sqrt(c), and the gain is of variance x expected cost per step.
    """
    s = np.asarray(factors, dtype=np.float64)
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64)
    good = np.isfinite(s) & (s >= 0) & np.isfinite(w)
    s, w = s[good], w[good]

    def mean(x: np.ndarray) -> float:
        return float(np.sum(w * x) / np.sum(w))

    if s.size < 2 or mean(s) <= 0:
        return 1.0
    if costs is None:
        mix = (1.0 - smoothing) * s / mean(s) + smoothing
        return mean(s**2) / mean(s**2 / mix)
    c = np.asarray(costs, dtype=np.float64)[good]
    r = s / np.sqrt(c)
    n_p = (1.0 - smoothing) * r / mean(r) + smoothing  # N p_i
    return mean(s**2) * mean(c) / (mean(s**2 / n_p) * mean(n_p * c))


def ceiling(factors: np.ndarray) -> float:
    """E[s^2] / E[s]^2: the most importance sampling with p proportional to s could gain."""
    return estimated_gain(factors, 0.0)


def delivered_gain(factors: np.ndarray, weights: np.ndarray, costs: np.ndarray | None = None) -> float:
    """E_p[w s^2] / E_p[w^2 s^2] from importance-drawn factors ``s`` with weights ``w = 1/(N p)``.

    With ``costs``, times E_p[w c] / E_p[c]: uniform's expected cost per step over the drawn one.
    """
    s2 = np.asarray(factors, dtype=np.float64) ** 2
    w = np.asarray(weights, dtype=np.float64)
    denominator = float(np.sum(w * w * s2))
    if denominator <= 0:
        return 1.0
    gain = float(np.sum(w * s2)) / denominator
    if costs is not None:
        c = np.asarray(costs, dtype=np.float64)
        gain *= float(np.mean(w * c)) / float(np.mean(c))
    return gain


def weighted_ceiling(factors: np.ndarray, weights: np.ndarray) -> float:
    """E[s^2] / E[s]^2 under uniform sampling, from a sample drawn with weights ``w = 1/(N p)``."""
    s, w = np.asarray(factors, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    mean = float(np.sum(w * s) / np.sum(w))
    return float(np.sum(w * s * s) / np.sum(w)) / mean**2 if mean > 0 else 1.0


def mining_cost(config: MiningConfig, refreshes: bool) -> float:
    """Mining's predicted share of step time while IS is on: the harvest's bookkeeping, and the
    refresh's ``refresh_fraction`` forward passes per trained sequence (when a scorer exists).
    Presampling's pool adds its candidates' passes (:meth:`PoolSwitch.pool_cost`)."""
    cost = config.harvest_cost
    if refreshes:
        cost += config.refresh_share * config.forward_cost
    return cost


def pool_gain(gain: float, ratio: int, noise_scale: float | None = None) -> float:
    """The second-moment cut of b importance draws from fresh scores of a uniform pool of ratio b.

    The pool's mean is itself a uniform estimate from ratio b sequences: its covariance, 1/ratio
    of a uniform batch's, adds to that of the draws within the pool, so in covariance
    1/g_pool = 1/ratio + 1/g (a pool no larger than the batch can only lose). With the noise
    scale B known the sum is taken in covariance (:func:`covariance_cut`), else on second moments.
    """
    if noise_scale is None:
        return 1.0 / (1.0 / ratio + 1.0 / max(gain, 1e-12))
    cut = 1.0 / (1.0 / ratio + 1.0 / max(covariance_cut(noise_scale, gain), 1e-12))
    return second_moment_cut(noise_scale, cut)


class ValidationWatch:
    """Says when importance sampling's faster fitting has stopped paying on validation.

    It keeps the best validation loss and the validation-training gap at that best. Each
    validation with importance sampling on that sets no new best counts; ``patience`` of them in
    a row, the last with a wider gap than at the best, trip the watch, and it stays tripped
    (validations with it off reset the count: a stall under uniform is not importance
    sampling's doing). Without a training loss the stall alone decides. ``patience`` 0: never.

    Example:
        >>> watch = ValidationWatch(patience=2)
        >>> [watch.observe(s, val, train, active=True) for s, val, train in
        ...  [(100, 0.50, 0.45), (200, 0.52, 0.40), (300, 0.53, 0.35)]]
        [False, False, True]
    """

    def __init__(self, patience: int):
        self.patience = patience
        self.best: float | None = None
        self.gap_at_best: float | None = None
        self.stalled = 0
        self.tripped_at: int | None = None

    @property
    def tripped(self) -> bool:
        return self.tripped_at is not None

    def observe(self, step: int, val_loss: float, train_loss: float | None, active: bool) -> bool:
        """One validation after ``step`` steps; True when it trips the watch (once)."""
        if self.patience == 0 or self.tripped or not math.isfinite(val_loss):
            return False
        gap = val_loss - train_loss if train_loss is not None and math.isfinite(train_loss) else None
        if self.best is None or val_loss < self.best:
            self.best, self.gap_at_best, self.stalled = val_loss, gap, 0
            return False
        self.stalled = self.stalled + 1 if active else 0
        widened = gap is None or self.gap_at_best is None or gap > self.gap_at_best
        if self.stalled >= self.patience and widened:
            self.tripped_at = step
        return self.tripped

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("best", "gap_at_best", "stalled", "tripped_at")}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass(frozen=True)
class Judgement:
    """What the switch concludes after ``step`` steps, and every figure it weighed.

    ``decide`` applies a judgement; ``seqis diagnose`` reports one, so the two cannot disagree.
    """

    step: int
    active: bool  # the state chosen
    reason: str  # why, in a few words
    gain: float = 1.0  # the cut judged: predicted while off, delivered (its sample) while on
    predicted: float | None = None  # the cut predicted over the rest of the run
    fresh: float | None = None  # fresh factors' promise (the harvest's estimated gain)
    step_gain: float | None = None  # the predicted step gain weighed (None: the noise scale unknown)
    cost: float = 0.0  # mining's predicted share of step time while on
    noise_scale: float | None = None
    quality: float = 1.0  # of stored factors, as learnt with this judgement
    coverage: float | None = None  # of the store draws come from (None: fresh scores)
    horizon: int | None = None  # steps the store's cut is predicted over
    coverage_before: float | None = None
    pool_ratio: int | None = None  # presampling's pool for the next period
    judged: bool = True  # False: nothing to weigh (no switch, or the run is uniform to the end)


class Switch:
    """Decides when importance sampling pays, and the learning-rate multiplier that goes with it.

    Draws come from a store of factors (``store`` given) or from fresh scores; presampling's
    pool is :class:`PoolSwitch`'s.

    Example:
        >>> switch = Switch(MiningConfig(), batch_size=64, cost=0.07)
        >>> switch.pays(gain=1.5, noise_scale=300.0)
        True
    """

    pool_ratio: int | None = None  # presampling's pool, in batches (PoolSwitch)

    def __init__(self, config: MiningConfig, batch_size: int, cost: float):
        self.config, self.batch_size, self.cost = config, batch_size, cost
        self.history: list[Decision] = []
        self.predicted_gain = 1.0  # the latest predicted cut, while IS is off
        self.lr = LrMultiplier(config.lr_scale, config.lr_scale_max)
        self.quality = 1.0  # of stored factors, learnt from delivered cuts; no evidence yet: 1
        self._coverage_before: float | None = None  # at the previous on-state decision
        self.watch = ValidationWatch(config.val_patience if config.has_switch else 0)
        self.last: Judgement | None = None  # the latest decision's judgement

    @property
    def lr_multiplier(self) -> float:
        return self.lr.value

    def predicted_step_gain(self, gain: float, noise_scale: float | None) -> float | None:
        """Fewer steps that a second-moment ``gain`` buys, at the learning rate this run keeps."""
        return predicted_step_gain(noise_scale, gain, self.batch_size, self.config.scales_lr)

    def keeps_paying(self, gain: float, noise_scale: float | None, cost: float | None = None) -> bool:
        """Stay on: the step gain still beats half the mining cost (on needs all of it)."""
        step_gain = self.predicted_step_gain(gain, noise_scale)
        if step_gain is None:
            return True  # B unknown: min_gain_off alone decides
        return step_gain >= 1.0 + (self.cost if cost is None else cost) / 2

    def pays(self, gain: float, noise_scale: float | None, cost: float | None = None) -> bool:
        """Switch on: the predicted step gain beats mining's cost; by ``min_gain`` while B is unknown."""
        step_gain = self.predicted_step_gain(gain, noise_scale)
        if step_gain is None:
            return gain >= self.config.min_gain
        return step_gain >= 1.0 + (self.cost if cost is None else cost)

    def learnt_quality(self, delivered: float, fresh: float, coverage: float) -> tuple[float, float]:
        """q from an on-state harvest, and the coverage to remember: the delivered cut against what
        coverage alone explains (the mean coverage over the harvest's window: the delivered cut is
        of all its draws)."""
        before = self._coverage_before
        if before is None:  # the window began as IS switched on: its coverage grew from c0
            return self.quality, coverage
        explained = 0.5 * (before + coverage) * (1.0 - 1.0 / max(fresh, 1.0))
        if explained < 0.1:  # too little of the store scored to tell quality from noise
            return self.quality, coverage
        seen = min(max((1.0 - 1.0 / max(delivered, 1e-9)) / explained, 0.0), 1.0)
        return 0.5 * self.quality + 0.5 * seen, coverage

    def learn_quality(self, delivered: float, fresh: float, coverage: float) -> None:
        self.quality, self._coverage_before = self.learnt_quality(delivered, fresh, coverage)

    def predicted_cut(self, fresh: float, store: StoreState | None, quality: float | None = None) -> float:
        """The cut over the rest of the run: the store's, or fresh factors' where draws use them."""
        if store is None:
            return fresh
        coverage = coverage_ahead(store.coverage, store.scored_per_step, store.horizon)
        return store_gain(fresh, coverage, self.quality if quality is None else quality)

    def prediction(
        self, fresh: float, noise_scale: float | None, store: StoreState | None, quality: float | None = None
    ) -> tuple[float, dict]:
        """The cut this switch's draws will deliver, and what the switch would change to get it."""
        return self.predicted_cut(fresh, store, quality), {}

    def delivered(self, sample: HarvestSample, noise_scale: float | None) -> float:
        """The cut the draws in use deliver, from their (importance-drawn) harvest."""
        return delivered_gain(sample.factors, sample.weights, sample.costs)

    def judge(
        self,
        step: int,
        active: bool,
        sample: HarvestSample,
        noise_scale: float | None,
        store: StoreState | None = None,
    ) -> Judgement:
        """The state after ``step`` steps, from the fresh harvest of the regime in use; no side effects.

        ``store``: the coverage and scoring rate of the store draws come from (None when draws
        are made from fresh scores, as presampling's are).
        """
        base = {"step": step, "cost": self.cost, "noise_scale": noise_scale, "quality": self.quality}
        if not self.config.has_switch:  # always on (pruning, --always-on): nothing to judge
            return Judgement(active=True, reason="always on: no switch", judged=False, **base)
        if self.watch.tripped:  # validation said faster fitting stopped paying: uniform to the end
            return Judgement(active=False, reason="the validation watch tripped", judged=False, **base)
        # Cost-aware: the gain of the distribution the sampler draws (p ~ s/sqrt(c)); while on the
        # harvest is importance-drawn, and its weights turn its means into uniform's.
        fresh = estimated_gain(sample.factors, self.config.smoothing, sample.costs, sample.weights)
        quality, coverage_before = self.quality, None
        if active:
            gain = self.delivered(sample, noise_scale)
            if store is not None:
                quality, coverage_before = self.learnt_quality(gain, fresh, store.coverage)
            else:
                coverage_before = self._coverage_before
            predicted, changes = self.prediction(fresh, noise_scale, store, quality)
            cost = changes.get("cost", self.cost)
            step_gain = self.predicted_step_gain(predicted, noise_scale)
            now = gain >= self.config.min_gain_off and self.keeps_paying(predicted, noise_scale, cost)
            reason = "keeps paying" if now else "no longer pays"
        else:
            predicted, changes = self.prediction(fresh, noise_scale, store, quality)
            gain, cost = predicted, changes.get("cost", self.cost)
            step_gain = self.predicted_step_gain(gain, noise_scale)
            now = self.pays(gain, noise_scale, cost)
            reason = "pays" if now else "does not pay"
        base.update(cost=cost, quality=quality)
        if store is not None:
            base.update(coverage=store.coverage, horizon=store.horizon)
        return Judgement(
            active=now,
            reason=reason,
            gain=gain,
            predicted=predicted,
            fresh=fresh,
            step_gain=step_gain,
            coverage_before=coverage_before,
            pool_ratio=changes.get("pool_ratio", self.pool_ratio),
            **base,
        )

    def decide(
        self,
        step: int,
        active: bool,
        sample: HarvestSample,
        noise_scale: float | None,
        store: StoreState | None = None,
    ) -> bool:
        """Judge (:meth:`judge`) and keep what the judgement learnt; the state after ``step`` steps."""
        judgement = self.judge(step, active, sample, noise_scale, store)
        if judgement.judged:
            self.apply(judgement, was_active=active)
        return judgement.active

    def apply(self, judgement: Judgement, was_active: bool) -> None:
        """Keep a judgement: its learnt quality, its pool and cost, and the decision in the history."""
        self.quality, self.cost = judgement.quality, judgement.cost
        self._coverage_before = judgement.coverage_before if was_active else None
        if not was_active:
            self.predicted_gain = judgement.gain
        j = judgement
        self.history.append(Decision(j.step, j.gain, j.active, j.predicted, j.step_gain))
        self.last = judgement

    def update_lr_multiplier(self, variance_cut: float | None, active: bool) -> None:
        """Move the lr multiplier towards rule(g) while IS is on (1 while off), bounded, smoothed."""
        self.lr.update(variance_cut, active)

    def state_dict(self) -> dict:
        return {
            "history": as_records(self.history),
            "predicted_gain": self.predicted_gain,
            "lr_multiplier": self.lr.value,
            "quality": self.quality,
            "coverage_before": self._coverage_before,
            "watch": self.watch.state_dict(),
            "pool_ratio": self.pool_ratio,
            "last": asdict(self.last) if self.last is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.history = [Decision(**row) for row in state["history"]]
        self.predicted_gain = state["predicted_gain"]
        self.lr.value = state["lr_multiplier"]
        self.quality = state.get("quality", 1.0)
        self._coverage_before = state.get("coverage_before")
        if "watch" in state:
            self.watch.load_state_dict(state["watch"])
        last = state.get("last")
        self.last = Judgement(**last) if last else None


class PoolSwitch(Switch):
    """Presampling's switch: its draws come from fresh scores of a pool of ``pool_ratio`` batches,
    which it sizes (:meth:`size_pool`) and pays for (a forward pass per candidate)."""

    def __init__(self, config: MiningConfig, batch_size: int, cost: float):
        super().__init__(config, batch_size, cost)
        self.base_cost = cost  # harvest and bookkeeping, without the pool
        self.pool_ratio = PRESAMPLE_RATIO
        self.cost = self.pool_cost(self.pool_ratio)

    def pool_cost(self, ratio: int) -> float:
        """Mining's share of step time with a pool of ``ratio`` batches: a forward pass per candidate."""
        return self.base_cost + ratio * self.config.forward_cost

    def size_pool(self, fresh: float, noise_scale: float | None) -> tuple[int, float]:
        """Presampling's pool ratio r (the most step gain per unit of cost) and the cut it
        predicts; r = ``PRESAMPLE_RATIO`` while the noise scale is unknown."""
        if noise_scale is None:
            return PRESAMPLE_RATIO, pool_gain(fresh, PRESAMPLE_RATIO)

        def net(ratio: int) -> float:
            step_gain = self.predicted_step_gain(pool_gain(fresh, ratio, noise_scale), noise_scale)
            return step_gain / (1.0 + self.pool_cost(ratio))

        ratio = max(PRESAMPLE_RATIOS, key=net)
        return ratio, pool_gain(fresh, ratio, noise_scale)

    def prediction(
        self, fresh: float, noise_scale: float | None, store: StoreState | None, quality: float | None = None
    ) -> tuple[float, dict]:
        """The pool that pays best for the next period, and its cut."""
        ratio, cut = self.size_pool(fresh, noise_scale)
        return cut, {"pool_ratio": ratio, "cost": self.pool_cost(ratio)}

    def delivered(self, sample: HarvestSample, noise_scale: float | None) -> float:
        """Within the pool in use; the pool's own noise adds to it."""
        return pool_gain(super().delivered(sample, noise_scale), self.pool_ratio, noise_scale)

    def apply(self, judgement: Judgement, was_active: bool) -> None:
        super().apply(judgement, was_active)
        self.pool_ratio = judgement.pool_ratio

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.pool_ratio = state.get("pool_ratio") or PRESAMPLE_RATIO
        self.cost = self.pool_cost(self.pool_ratio)


@dataclass
class HarvestSample:
    """Scale-normalised factors, weights and costs of the recent harvests (the switch's sample)."""

    steps: np.ndarray
    factors: np.ndarray
    weights: np.ndarray
    costs: np.ndarray | None = None

    @classmethod
    def empty(cls) -> HarvestSample:
        return cls(np.empty(0), np.empty(0), np.empty(0))

    def __len__(self) -> int:
        return int(self.factors.size)


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
