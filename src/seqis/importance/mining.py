"""Fast-Importance-Mining: keep every sequence's factor fresh at a small, fixed cost.

Three mechanisms, each chosen so the mining cost survives a wall-clock comparison:

- **Harvest.** A training step already ran the forward pass of the sequences it drew;
  their factors are computed from that pass's logits and hidden states (no extra
  forward, no per-sample backward). While importance sampling is off, only
  ``switch_sample`` (8) sequences every ``switch_every`` (4) steps are scored: the switch
  needs a sample, not all.
- **Refresh.** Factors go stale as the model learns. While importance sampling is on,
  a sweep re-scores ``refresh_fraction`` sequences per trained sequence in batched
  forward-only passes, in length order so batches carry little padding. A forward pass
  costs about a third of a training step, so the default 0.1 costs ~3% of step time.
- **Switch.** Under uniform sampling the harvested factors are a uniform sample of the
  current factor distribution, so they estimate, for free, how much importance sampling
  would cut the per-sample gradient second moment:

      gain = E[s^2] / E[s^2 / ((1 - alpha) s / E[s] + alpha)]    (= E[s^2]/E[s]^2 at alpha=0)

  That cut becomes fewer steps only where gradient noise limits progress: with the output
  layer's noise scale B (see :mod:`seqis.importance.noise`) it predicts at most
  G = (1 + B/b) / (1 + B/(b g)) fewer steps with the learning rate re-tuned, and 2 - 1/G at
  the learning rate the run keeps. Importance sampling is switched on only when that
  predicted step gain beats mining's predicted cost (refresh: ``refresh_fraction`` forward
  passes at ``forward_cost`` of a step each, plus ``harvest_cost``); until B is known, when
  ``gain >= min_gain``. Otherwise the run stays uniform and pays only the harvest (a few
  small tensor ops a step). While it is
  on, the harvest is an importance-drawn sample with weights w = 1/(N p), and the cut that
  the current (partly stale) distribution really delivers is

      gain = E_p[w s^2] / E_p[w^2 s^2]    (uniform's second moment / importance sampling's)

  estimated from the fresh harvest alone: the store holds factors of many ages, and the
  fall of the loss over training would read as spread between sequences. The harvest
  sample is cleared at every switch, so each decision reads samples of its own regime.
  Right after switching on, the distribution is built mostly from stale factors and
  delivers less than the fresh estimate promised, until harvest and refresh catch up (on
  Fashion-MNIST: 1.01-1.1 for a few hundred steps, then 1.2-1.4). So IS switches off only
  when what it delivers falls below ``min_gain_off`` (1: it would add variance), which
  keeps the switch from flapping every decision.

Every decision depends on step counts and factors, never on measured time, so a run is
reproducible and resumes bit-exactly.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from seqis.distributed import DistContext
from seqis.importance.factors import FACTORS
from seqis.importance.noise import NoiseScale, predicted_step_gain


@dataclass
class MiningConfig:
    """Defaults and why: see the module docstring and docs/method.md."""

    factor: str = "fim"
    smoothing: float = 0.2  # alpha: weights stay <= 1/alpha = 5
    refresh_fraction: float = 0.1  # sequences re-scored per trained sequence while IS is on
    refresh_batch: int = 256
    min_gain: float = 1.2  # switch on when the estimated gain reaches this (until B is known)
    forward_cost: float = 1 / 3  # a forward-only pass, in training steps per sequence
    harvest_cost: float = 0.035  # harvest and bookkeeping while IS is on, share of a step (measured)
    min_gain_off: float = 1.0  # switch off when the distribution in use delivers less than this
    check_every: int = 50  # steps between switch decisions (and O(N) tree rebuilds)
    warmup_steps: int = 50  # uniform steps before the first decision
    switch_sample: int = 8  # while IS is off: sequences harvested every switch_every steps,
    switch_every: int = 4  # so a decision sees 100 of them
    always_on: bool = False  # skip the switch (for experiments)
    cost_aware: bool = False  # p proportional to s / sqrt(cost): least variance per unit of work
    lr_scale: str = "none"  # while IS is on, scale the lr by the variance cut: none, sqrt, linear
    lr_scale_max: float = 2.0  # bound on that multiplier
    prune_ratio: float = 0.5  # --sampler prune: skip probability of a below-mean sequence
    prune_anneal: float = 0.125  # --sampler prune: final share of steps on full epochs
    anneal: float = 0.0  # importance draws: final share of the planned steps drawn uniformly

    def __post_init__(self) -> None:
        if self.factor not in FACTORS:
            raise ValueError(f"unknown importance factor {self.factor!r}; choose from {FACTORS}")
        if self.lr_scale not in LR_RULES:
            raise ValueError(f"unknown lr scaling {self.lr_scale!r}; choose from {', '.join(LR_RULES)}")


# A variance cut g acts like a g times larger batch; larger batches take larger learning rates:
# linearly for SGD, about as the square root for Adam (Johnson & Guestrin 2018 scale by the gain).
LR_RULES = {"none": None, "sqrt": 0.5, "linear": 1.0}


def estimated_gain(factors: np.ndarray, smoothing: float) -> float:
    """Per-sample second-moment ratio uniform / importance for p mixed with uniform."""
    s = np.asarray(factors, dtype=np.float64)
    s = s[np.isfinite(s) & (s >= 0)]
    if s.size < 2 or s.mean() <= 0:
        return 1.0
    mix = (1.0 - smoothing) * s / s.mean() + smoothing
    return float(np.mean(s**2) / np.mean(s**2 / mix))


def ceiling(factors: np.ndarray) -> float:
    """E[s^2] / E[s]^2: the most importance sampling with p proportional to s could gain."""
    return estimated_gain(factors, 0.0)


def delivered_gain(factors: np.ndarray, weights: np.ndarray) -> float:
    """E_p[w s^2] / E_p[w^2 s^2] from importance-drawn factors ``s`` with weights ``w = 1/(N p)``."""
    s2 = np.asarray(factors, dtype=np.float64) ** 2
    w = np.asarray(weights, dtype=np.float64)
    denominator = float(np.sum(w * w * s2))
    return float(np.sum(w * s2)) / denominator if denominator > 0 else 1.0


def weighted_ceiling(factors: np.ndarray, weights: np.ndarray) -> float:
    """E[s^2] / E[s]^2 under uniform sampling, from a sample drawn with weights ``w = 1/(N p)``."""
    s, w = np.asarray(factors, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    mean = float(np.sum(w * s) / np.sum(w))
    return float(np.sum(w * s * s) / np.sum(w)) / mean**2 if mean > 0 else 1.0


class Miner:
    """Owns factor harvesting, refresh and the IS switch for one sampler, for any model and data.

    The caller supplies the factors of what it trained on (:meth:`harvest`: a tensor, or a
    function giving the factors of the batch's first k sequences, so that nothing is computed
    that the miner does not need) and, for refresh, ``score_fn``: dataset indices -> factors
    from a forward-only pass (without it, stored factors are refreshed only by training).
    ``lengths`` (indexed by dataset index) orders the refresh sweep so that its batches carry
    little padding. ``seqis train`` uses exactly this interface.

    Example:
        >>> miner = Miner(sampler, MiningConfig(), score_fn=my_forward_only_factors)
        >>> for step, (batch, index, weight) in enumerate(loader):
        ...     ...                                          # forward, weighted loss, backward, step
        ...     miner.harvest(index, norms.compute(weight), step, weight)
        ...     miner.after_step(step)                        # refresh, switch
    """

    def __init__(
        self,
        sampler: torch.utils.data.Sampler,
        config: MiningConfig,
        score_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        lengths: torch.Tensor | None = None,
        ctx: DistContext | None = None,
        total_steps: int | None = None,
    ):
        self.sampler, self.config, self.score_fn = sampler, config, score_fn
        # With ``anneal``, the last share of the planned steps is uniform: importance sampling
        # speeds up the hard sequences, and, left on to the end, memorises them sooner.
        self.uniform_from = (
            math.ceil((1.0 - config.anneal) * total_steps) if total_steps and config.anneal > 0 else None
        )
        # Under DDP or Lightning the miner joins the caller's process group: every rank must
        # see every rank's factors, or their switch decisions could differ.
        self.ctx = ctx or DistContext.current()
        # Sweep order: by length, so a refresh batch has little padding.
        order = torch.argsort(lengths[sampler.indices], stable=True) if lengths is not None else None
        self._sweep = sampler.indices[order] if order is not None else sampler.indices
        self._sweep_cursor = 0
        self._refresh_credit = 0.0
        # (step, factor / scale, weight) rows of recent harvests: the switch's sample.
        self._recent: deque[np.ndarray] = deque(maxlen=max(1, config.check_every))
        self._scale: float | None = None
        self.mining_time_s = 0.0  # refresh and switch: work outside the training step
        self.harvest_time_s = 0.0  # factor arithmetic inside the step, on its forward pass
        self.active_steps = 0
        self.steps = 0
        self.gain_history: list[tuple[int, float, bool]] = []
        # The noise scale needs importance weights 1/(N p); pruning's 1/(1 - r) are not those.
        importance = getattr(sampler, "importance_weights", False)
        self.noise = NoiseScale(sampler.batch_size) if importance else None
        # (step, IS on, B, g, predicted step gain, the same with the lr re-tuned) after each decision
        self.noise_history: list[tuple] = []
        self._predicted_gain = 1.0  # the switch's latest fresh-factor gain, while IS is off
        self.lr_multiplier = 1.0  # --lr-scale: the learning rate's factor, updated at decisions

    # -- per step ----------------------------------------------------------------------------
    def harvest(
        self,
        index: torch.Tensor,
        factors: torch.Tensor | Callable[[int], torch.Tensor],
        step: int,
        weights: torch.Tensor | None = None,
        batch_grad_sq: float | None = None,
    ) -> None:
        """Record factors of the sequences just trained on (this rank's slice of the batch).

        ``factors`` are theirs, or a function ``k -> factors of the first k``; ``weights`` are the
        sampling weights the batch was drawn with (1 under uniform draws); ``batch_grad_sq`` is
        the squared norm of the step's output-layer gradient before clipping (noise scale).
        """
        weights = torch.ones(len(index)) if weights is None else weights
        if self.noise is not None and batch_grad_sq is not None:
            self.noise.observe_batch(batch_grad_sq)
        if not self.sampler.active:
            # Nothing is drawn from the factors while IS is off; the switch needs only a
            # uniform sample of them, and the rest of the harvest would be pure overhead.
            if step % self.config.switch_every:
                return
            index, weights = index[: self.config.switch_sample], weights[: self.config.switch_sample]
        start = time.perf_counter()
        factors = factors(len(index)) if callable(factors) else factors[: len(index)]
        # Every rank records every rank's factors, so all samplers stay identical.
        index = self.ctx.gather(index.to(factors.device)).cpu()
        weights = self.ctx.gather(weights.to(factors.device, factors.dtype)).cpu()
        factors = self.ctx.gather(factors).cpu()
        self.sampler.record(index, factors, step, gathered=True)
        # Divided by a moving average of the factors' scale (~3 harvests), so the gain estimate
        # sees the spread across sequences, not the drift of the scale as the model learns.
        s, w = factors.double().numpy(), weights.double().numpy()
        good = np.isfinite(s) & (s >= 0)
        s, w = s[good], w[good]
        if self.noise is not None:
            self.noise.observe_samples(s, w, 1.0 if self.sampler.active else self._predicted_gain)
        mean = float(np.sum(w * s) / np.sum(w)) if s.size else 0.0  # uniform's mean, unbiased
        if mean > 0:
            self._scale = mean if self._scale is None else 0.7 * self._scale + 0.3 * mean
            self._recent.append(np.stack([np.full_like(s, step), s / self._scale, w]))
        self.harvest_time_s += time.perf_counter() - start

    def after_step(self, step: int) -> None:
        """Refresh stale factors and revisit the switch; call once per training step."""
        self.steps += 1
        self.active_steps += int(self.sampler.active)
        cfg = self.config
        if self.sampler.active and cfg.refresh_fraction > 0 and self.score_fn is not None:
            self._refresh_credit += cfg.refresh_fraction * self.sampler.batch_size
            if self._refresh_credit >= cfg.refresh_batch:
                self._refresh_credit -= cfg.refresh_batch
                self.refresh(cfg.refresh_batch, step)
        if self.uniform_from is not None and step + 1 >= self.uniform_from:
            self.sampler.active = False  # annealed: uniform to the end, no more decisions
        elif step + 1 >= cfg.warmup_steps and (step + 1) % cfg.check_every == 0:
            self.decide(step)

    def decide(self, step: int) -> None:
        """Switch importance sampling on or off from the fresh harvest; O(harvest), never O(N)."""
        start = time.perf_counter()
        if self.config.always_on:  # no switch; the noise figures and the lr still follow the run
            self.sampler.active = True
        else:
            _, s, w = self._harvest_sample()
            was_active = self.sampler.active
            if was_active:
                gain = delivered_gain(s, w)
                self.sampler.active = gain >= self.config.min_gain_off
            else:
                gain = estimated_gain(s, self.config.smoothing)
                self._predicted_gain = gain
                self.sampler.active = self._pays(gain)
            if self.sampler.active != was_active:
                self._recent.clear()  # the other regime's sample is biased for this one
            self.gain_history.append((step + 1, gain, self.sampler.active))
        if self.noise is not None:
            self.noise_history.append((step + 1, self.sampler.active, *self.noise_figures().values()))
        self._update_lr_multiplier()
        self.mining_time_s += time.perf_counter() - start

    @property
    def predicted_cost(self) -> float:
        """Mining's share of step time while IS is on: refresh passes plus the harvest."""
        refresh = (
            self.config.refresh_fraction * self.config.forward_cost if self.score_fn is not None else 0.0
        )
        return refresh + self.config.harvest_cost

    def _pays(self, gain: float) -> bool:
        """Switch on when the predicted step gain beats mining's cost; by ``min_gain`` until B is known.

        The gain is predicted at the learning rate the run keeps (uniform's), or re-tuned for
        the variance cut when ``lr_scale`` raises it.
        """
        retuned = self.config.lr_scale != "none"
        noise_scale = self.noise.noise_scale if self.noise else None
        step_gain = predicted_step_gain(noise_scale, gain, self.sampler.batch_size, retuned)
        if step_gain is None:
            return gain >= self.config.min_gain
        return step_gain >= 1.0 + self.predicted_cost

    def _update_lr_multiplier(self) -> None:
        """Move the lr multiplier towards rule(g) while IS is on (1 while off), bounded, smoothed."""
        power = LR_RULES[self.config.lr_scale]
        if power is None:
            return
        cut = self.noise.variance_cut if self.noise is not None and self.sampler.active else None
        target = 1.0 if cut is None else min(max(cut, 1.0) ** power, self.config.lr_scale_max)
        self.lr_multiplier = 0.7 * self.lr_multiplier + 0.3 * target

    def noise_figures(self) -> dict:
        """B, g and the predicted step gain now, at uniform's and at a re-tuned learning rate."""
        noise = self.noise
        return {
            "noise_scale": noise.noise_scale if noise else None,
            "variance_cut": noise.variance_cut if noise else None,
            "predicted_step_gain": noise.predicted_step_gain() if noise else None,
            "predicted_step_gain_lr_retuned": noise.predicted_step_gain(lr_retuned=True) if noise else None,
        }

    def _harvest_sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Steps, scale-normalised factors and weights of the recent harvests."""
        if not self._recent:
            return np.empty(0), np.empty(0), np.empty(0)
        steps, s, w = np.concatenate(list(self._recent), axis=1)
        return steps, s, w

    def refresh(self, count: int, step: int) -> None:
        """Re-score the next ``count`` sequences of the sweep in one forward-only pass."""
        n = len(self._sweep)
        take = torch.arange(self._sweep_cursor, self._sweep_cursor + min(count, n)) % n
        self._sweep_cursor = int(take[-1] + 1) % n
        index = self._sweep[take]
        if self.ctx.enabled:  # each rank scores its share, then all share the factors
            per = -(-len(index) // self.ctx.world)
            index = torch.cat([index, index[-1:].expand(per * self.ctx.world - len(index))])
            mine = index[self.ctx.rank * per : (self.ctx.rank + 1) * per]
            factors = self.ctx.gather(self.score(mine).to(self.ctx.comm_device)).cpu()
        else:
            factors = self.score(index)
        self.sampler.record(index, factors, step, gathered=True)

    def score(self, index: torch.Tensor) -> torch.Tensor:
        """``score_fn(index)``, timed as mining (refresh, presampling)."""
        start = time.perf_counter()
        factors = self.score_fn(index).cpu()
        self.mining_time_s += time.perf_counter() - start
        return factors

    # -- reporting and state -------------------------------------------------------------------
    def summary(self) -> dict:
        """Settings, costs and the factors' state; the ceiling comes from fresh factors only."""
        steps, s, w = self._harvest_sample()
        last_gain = self.gain_history[-1][1] if self.gain_history else None
        return {
            "mining": asdict(self.config),
            "mining_time_s": self.mining_time_s,
            "harvest_time_s": self.harvest_time_s,
            "is_active_share": self.active_steps / max(1, self.steps),
            "factor_coverage": self.sampler.coverage,
            "factor_ceiling": weighted_ceiling(s, w) if s.size > 1 else None,
            "factor_ceiling_sample": {
                "sequences": int(s.size),
                "first_step": int(steps.min()) if s.size else None,
                "last_step": int(steps.max()) if s.size else None,
            },
            "factor_age_median_steps": self._median_age(),
            "estimated_gain_last": last_gain,
            **self.noise_figures(),
            "repaired_factors": self.sampler.repaired,
        }

    def _median_age(self) -> float | None:
        """Median steps since each stored factor was scored (O(N): for the summary only)."""
        scored = getattr(self.sampler, "scored_step", None)
        if scored is None or not (scored >= 0).any():
            return None
        return float(np.median(self.steps - 1 - scored[scored >= 0]))

    def state_dict(self) -> dict:
        return {
            "sweep_cursor": self._sweep_cursor,
            "refresh_credit": self._refresh_credit,
            "recent": list(self._recent),
            "scale": self._scale,
            "mining_time_s": self.mining_time_s,
            "harvest_time_s": self.harvest_time_s,
            "active_steps": self.active_steps,
            "steps": self.steps,
            "gain_history": list(self.gain_history),
            "noise": self.noise.state_dict() if self.noise else None,
            "noise_history": list(self.noise_history),
            "predicted_gain": self._predicted_gain,
            "lr_multiplier": self.lr_multiplier,
        }

    def load_state_dict(self, state: dict) -> None:
        self._sweep_cursor = state["sweep_cursor"]
        self._refresh_credit = state["refresh_credit"]
        self._recent.clear()
        self._recent.extend(state["recent"])
        self._scale = state["scale"]
        self.mining_time_s = state["mining_time_s"]
        self.harvest_time_s = state["harvest_time_s"]
        self.active_steps = state["active_steps"]
        self.steps = state["steps"]
        self.gain_history = [tuple(x) for x in state["gain_history"]]
        if self.noise is not None:
            self.noise.load_state_dict(state["noise"])
        self.noise_history = [tuple(x) for x in state["noise_history"]]
        self._predicted_gain = state["predicted_gain"]
        self.lr_multiplier = state["lr_multiplier"]
