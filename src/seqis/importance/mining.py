"""Fast-Importance-Mining: keep every sequence's factor fresh at a small, fixed cost.

Two mechanisms, each chosen so the mining cost survives a wall-clock comparison; the third
part of the method, the on/off switch, lives in :mod:`seqis.importance.switch`.

- **Harvest.** A training step already ran the forward pass of the sequences it drew;
  their factors are computed from that pass's logits and hidden states (no extra
  forward, no per-sample backward). While importance sampling is off, only
  ``switch_sample`` (8) sequences every ``switch_every`` (4) steps are scored: the switch
  needs a sample, not all.
- **Refresh.** Factors go stale as the model learns. While importance sampling is on,
  a sweep re-scores ``refresh_fraction`` sequences per trained sequence in batched
  forward-only passes, in length order so batches carry little padding. A forward pass
  costs about a third of a training step, so the default 0.1 costs ~3% of step time.

The harvest sample is cleared at every switch, so each decision reads samples of its own
regime; a batch drawn in the other regime (prefetched by loader workers before a switch)
updates the stored factors but not the switch's sample or the noise scale.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from seqis.distributed import DistContext
from seqis.importance.config import MiningConfig
from seqis.importance.factors import FACTORS, PendingFactors
from seqis.importance.noise import NoiseScale
from seqis.importance.sweep import StoreSweeps
from seqis.importance.switch import (
    HarvestSample,
    Judgement,
    NoiseRecord,
    StoreState,
    as_records,
    estimated_gain,
    store_gain,
    weighted_ceiling,
)
from seqis.plan import Plan


class FactorStore(Protocol):
    """What the miner needs of a sampler: its sequences, its batch, its state and a store."""

    indices: Tensor
    batch_size: int
    active: bool
    importance_weights: bool  # weights are 1/(N p): a noise-scale estimate can use them
    draws_from_store: bool  # importance draws come from the recorded factors (not fresh scores)
    records_may_lag: bool  # factors may arrive a few steps late (held harvests)
    repaired: int

    def record(
        self, dataset_indices: Tensor, factors: Tensor, step: int | Tensor | np.ndarray = 0
    ) -> None: ...

    @property
    def coverage(self) -> float: ...

    def median_factor_age(self, now: int) -> float | None: ...


@dataclass
class PendingHarvest:
    """One step's harvest, held until the miner flushes; on a GPU its copies to the host in flight."""

    step: int
    same_regime: bool  # drawn in the regime in use: it joins the switch's sample and the noise scale
    grad_sq: float | Tensor | None = None
    index: Tensor | None = None  # None: a step whose factors were not harvested
    factors: Tensor | PendingFactors | None = None  # pending: computed at the flush, with the others'
    weights: Tensor | None = None
    copied: torch.cuda.Event | None = None

    def to_host(self) -> PendingHarvest:
        """The same harvest on the CPU, in tensors of its own (a caller may reuse its buffers;
        pending factors hold the step's own outputs, which the trainer never reuses); copies
        from a GPU are queued on that GPU's stream, not awaited."""
        parts = (self.grad_sq, self.index, self.factors, self.weights)
        devices = {t.device.type for t in parts if isinstance(t, Tensor)}
        if devices <= {"cpu"}:  # the hot path of a CPU step: copies, nothing to queue
            return PendingHarvest(self.step, self.same_regime, *[_cpu_copy(t) for t in parts])
        host = [_host_copy(t) if isinstance(t, Tensor) else t for t in parts]
        held = PendingHarvest(self.step, self.same_regime, *host)
        gpu = next((t.device for t in parts if isinstance(t, Tensor) and t.is_cuda), None)
        if gpu is not None:  # other accelerators' copies (MPS, XPU) are synchronous
            held.copied = torch.cuda.Event()
            held.copied.record(torch.cuda.current_stream(gpu))
        return held

    def wait(self) -> None:
        """Block until the copies to the host have landed (at once on the CPU)."""
        if self.copied is not None:
            self.copied.synchronize()
            self.copied = None

    def state_dict(self) -> dict:
        self.wait()
        _compute_pending([self])  # a checkpoint holds factors, not the outputs they come from
        if isinstance(self.factors, Tensor):
            self.factors = self.factors.clone()  # not a view that would save its neighbours' too
        return {k: v for k, v in asdict(self).items() if k != "copied"}


def _compute_pending(harvests: list[PendingHarvest]) -> None:
    """The held classifier factors of all these harvests, in one call (see PendingFactors)."""
    waiting = [h for h in harvests if isinstance(h.factors, PendingFactors)]
    if waiting:
        computed = PendingFactors.compute([h.factors for h in waiting])
        for harvest, factors in zip(waiting, computed, strict=True):
            harvest.factors = factors


def _cpu_copy(part: Tensor | PendingFactors | float | None) -> Tensor | PendingFactors | float | None:
    if not isinstance(part, Tensor):
        return part  # a float, a PendingFactors (whose tensors are the step's own), or None
    if part.dim() == 0:
        return float(part)  # |G_b|^2: on the CPU reading it waits for nothing
    return part.detach().clone() if part.requires_grad else part.clone()


def _host_copy(tensor: Tensor) -> Tensor:
    if tensor.device.type == "cpu":
        return tensor.detach().clone()
    return tensor.detach().to("cpu", non_blocking=tensor.is_cuda)


class Miner:
    """Owns factor harvesting, refresh and the IS switch for one sampler, for any model and data.

    The caller supplies the factors of what it trained on (:meth:`harvest`: a tensor, or a
    function giving the factors of the batch's first k sequences, so that nothing is computed
    that the miner does not need) and, for refresh, ``score_fn``: dataset indices -> factors
    from a forward-only pass (without it, stored factors are refreshed only by training).
    ``lengths`` (indexed by dataset index) orders the refresh sweep so that its batches carry
    little padding, and are the costs of cost-aware draws. ``grad_batch_size`` is the number of
    sequences the gradient passed to :meth:`harvest` averages (default: the sampler's batch).
    ``plan`` places ``anneal``'s uniform tail and the horizon the switch predicts over (without
    one: no tail, and an epoch). Under ``torch.distributed`` every rank passes its own slice and
    the miner gathers. :func:`seqis.training.wiring.sampling_for` builds sampler and miner together.

    Example:
        >>> miner = Miner(sampler, MiningConfig(), score_fn=my_forward_only_factors)
        >>> for step, (batch, index, weight) in enumerate(loader):
        ...     ...                                          # forward, weighted loss, backward, step
        ...     miner.harvest(index, norms.compute(weight), step, weight)
        ...     miner.after_step(step)                        # refresh, switch
    """

    def __init__(
        self,
        sampler: FactorStore,
        config: MiningConfig,
        score_fn: Callable[[Tensor], Tensor] | None = None,
        lengths: Tensor | None = None,
        *,
        ctx: DistContext | None = None,
        plan: Plan | None = None,
        grad_batch_size: int | None = None,
        record_every: int = 8,
    ):
        self.sampler, self.config, self.score_fn, self.lengths = sampler, config, score_fn, lengths
        self.plan = plan or Plan(len(sampler.indices), sampler.batch_size)
        # With ``anneal``, the last share of the planned steps is uniform: importance sampling
        # speeds up the hard sequences, and, left on to the end, memorises them sooner.
        self.uniform_from = self.plan.tail_start(config.anneal)
        # Under DDP or Lightning the miner joins the caller's process group: every rank must
        # see every rank's factors, or their switch decisions could differ.
        self.ctx = ctx or DistContext.current()
        order = torch.argsort(lengths[sampler.indices], stable=True) if lengths is not None else None
        self._sweep = sampler.indices[order] if order is not None else sampler.indices
        self._sweep_cursor = 0
        self._refresh_credit = 0.0
        # (step, factor / scale, weight, cost) rows of recent harvests: the switch's sample.
        self._recent: deque[np.ndarray] = deque(maxlen=max(1, config.check_every))
        self._scale: float | None = None
        # Pruning decides each epoch from the factors recorded in the last one: none may be held.
        self.record_every = max(1, record_every) if sampler.records_may_lag else 1
        self._pending: list[PendingHarvest] = []
        self.mining_time_s = 0.0  # refresh and switch: work outside the training step
        self.harvest_time_s = 0.0  # factor arithmetic inside the step, on its forward pass
        self.active_steps = 0
        self.steps = 0
        refreshes = score_fn is not None and config.refresh_share > 0
        self.switch = config.scheme.make_switch(config, sampler.batch_size, refreshes)
        self._base_cost = self.switch.cost
        self.sweeps = None  # --sweep: the whole store scored fresh while importance sampling pays
        # The learning rate's share of its peak at a step (the trainer's schedule), for pricing sweeps.
        self.rate_at: Callable[[int], float] | None = None
        if config.sweep and score_fn is not None and sampler.draws_from_store:
            n, b = len(sampler.indices), sampler.batch_size
            self.sweeps = StoreSweeps(n, b, config.sweep_cost, config.check_every)
        # B is defined for factors that are gradient norms of what the batch gradient reads.
        noisy = sampler.importance_weights and FACTORS[config.factor].gradient_of is not None
        self.noise = NoiseScale(grad_batch_size or sampler.batch_size) if noisy else None
        self.noise_history: list[NoiseRecord] = []
        self._validations: list[tuple[int, float, float]] = []  # held until every rank meets (DDP)

    @property
    def lr_multiplier(self) -> float:
        """--lr-scale: the learning rate's factor now (1 unless importance sampling scales it)."""
        return self.switch.lr_multiplier

    # -- per step ----------------------------------------------------------------------------
    def harvest(
        self,
        index: Tensor,
        factors: Tensor | PendingFactors | Callable[[int], Tensor | PendingFactors],
        step: int,
        weights: Tensor | None = None,
        batch_grad_sq: float | Tensor | None = None,
        drawn_active: bool | None = None,
    ) -> None:
        """Record factors of the sequences just trained on (this rank's slice of the batch).

        ``factors`` are theirs, or a function ``k -> factors of the first k``; ``weights`` are the
        sampling weights the batch was drawn with (1 under uniform draws); ``batch_grad_sq`` is
        the squared norm of the step's gradient before clipping, of the same parameters the
        factors are norms for (the output layer's for ``fim``); ``drawn_active`` says whether the
        batch was drawn by importance (default: whether importance sampling is on now).

        Harvests reach the sampler ``record_every`` steps at a time (and before every decision,
        refresh and :meth:`flush`): one tree update for all of them, and on a GPU their copies to
        the host run in the background instead of making each step wait for them.
        """
        active = self.sampler.active
        drawn_active = active if drawn_active is None else drawn_active
        if self.switch.watch.tripped and not drawn_active:
            return  # uniform to the end: nothing will be drawn from factors again
        same_regime = drawn_active == active
        grad_sq = batch_grad_sq if self.noise is not None and same_regime else None
        weights = torch.ones(index.shape[0]) if weights is None else weights
        if not drawn_active and step % self.config.switch_every:
            # Nothing is drawn from the factors while IS is off; the switch needs only a
            # uniform sample of them, and the rest of the harvest would be pure overhead.
            self._hold(PendingHarvest(step, same_regime, grad_sq).to_host())
            return
        if not drawn_active:
            index, weights = index[: self.config.switch_sample], weights[: self.config.switch_sample]
        start = time.perf_counter()
        count = index.shape[0]
        if callable(factors):
            factors = factors(count)
        else:
            factors = factors.first(count) if isinstance(factors, PendingFactors) else factors[:count]
        if self.ctx.enabled:  # every rank records every rank's factors, so all samplers stay identical
            if isinstance(factors, PendingFactors):
                factors = PendingFactors.compute([factors])[0]  # the gather needs them now
            index = self.ctx.gather(index.to(factors.device))
            weights = self.ctx.gather(weights.to(factors.device, factors.dtype))
            factors = self.ctx.gather(factors)
        factors = factors if isinstance(factors, PendingFactors) else factors.detach()
        held = PendingHarvest(step, same_regime, grad_sq, index, factors, weights).to_host()
        self.harvest_time_s += time.perf_counter() - start  # flush() times itself
        self._hold(held)

    def _hold(self, harvest: PendingHarvest) -> None:
        self._pending.append(harvest)
        if len(self._pending) >= self.record_every:
            self.flush()

    def flush(self) -> None:
        """Hand the held harvests to the sampler, the switch's sample and the noise scale."""
        if not self._pending:
            return
        start = time.perf_counter()
        pending, self._pending = self._pending, []
        for harvest in pending:
            harvest.wait()
        _compute_pending(pending)
        scored = [h for h in pending if h.index is not None]
        if scored:
            steps = np.repeat(np.array([h.step for h in scored]), [h.index.shape[0] for h in scored])
            self.sampler.record(
                torch.cat([h.index for h in scored]), torch.cat([h.factors for h in scored]), steps
            )
        self._observe_batches(pending)
        observed = [h for h in scored if h.same_regime]
        if observed:
            self._observe(observed)
        self.harvest_time_s += time.perf_counter() - start

    def _observe_batches(self, pending: list[PendingHarvest]) -> None:
        """Each step's pre-clip gradient norm, into the noise scale, averaged over ranks: in a
        user's own DDP loop the hooks read this rank's gradient before DDP averages it, and ranks
        with different noise scales would decide differently and their samplers part."""
        if self.noise is None:
            return
        slots = [h for h in pending if h.same_regime]  # the same harvests on every rank
        if not slots:
            return
        values = [math.nan if h.grad_sq is None else float(h.grad_sq) for h in slots]
        if self.ctx.enabled:  # a rank without a value: NaN, ignored
            values = (self.ctx.sum(torch.tensor(values, dtype=torch.float64)) / self.ctx.world).tolist()
        for value in values:
            self.noise.observe_batch(value)

    def _observe(self, harvests: list[PendingHarvest]) -> None:
        """Add harvests of the regime in use, in order, to the switch's sample and the noise scale
        (array work once for all of them; only the moving averages step harvest by harvest)."""
        n = len(harvests)
        sizes = [len(h.index) for h in harvests]
        s = torch.cat([h.factors for h in harvests]).double().numpy()
        w = torch.cat([h.weights for h in harvests]).double().numpy()
        costs = self._costs(harvests, len(s))
        steps = np.repeat(np.array([h.step for h in harvests], dtype=np.float64), sizes)
        group = np.repeat(np.arange(n), sizes)
        good = np.isfinite(s) & (s >= 0) & np.isfinite(w)
        if not good.all():
            s, w, costs, steps, group = s[good], w[good], costs[good], steps[good], group[good]
        count = np.bincount(group, minlength=n)
        ws, w_sum = np.bincount(group, w * s, n), np.bincount(group, w, n)
        if self.noise is not None:
            predicted = None if self.sampler.active else self.switch.predicted_gain
            uniform_sq = np.bincount(group, w * s * s, n)
            drawn_sq = np.bincount(group, w * w * s * s, n)
            seen = np.flatnonzero(count)
            uniform_means, drawn_means = uniform_sq[seen] / count[seen], drawn_sq[seen] / count[seen]
            moments = zip(uniform_means.tolist(), drawn_means.tolist(), strict=True)
            for uniform, drawn in moments:
                self.noise.observe_moments(uniform, drawn, predicted)
        # Divided by a moving average of the factors' scale (~3 harvests), so the gain estimate
        # sees the spread across sequences, not the drift of the scale as the model learns.
        means = np.divide(ws, w_sum, out=np.zeros(n), where=count > 0)  # uniform's mean, unbiased
        scales = np.zeros(n)
        for i, mean in enumerate(means.tolist()):
            if mean > 0:
                self._scale = mean if self._scale is None else 0.7 * self._scale + 0.3 * mean
                scales[i] = self._scale
        kept = scales[group] > 0
        if not kept.all():
            steps, s, w, costs, group = steps[kept], s[kept], w[kept], costs[kept], group[kept]
        if len(s):
            rows = np.stack([steps, s / scales[group], w, costs])
            ends = np.cumsum(count[scales > 0]).tolist()
            self._recent.extend(rows[:, start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True))

    def _costs(self, harvests: list[PendingHarvest], count: int) -> np.ndarray:
        """Per-sequence costs of cost-aware draws (lengths), else ones."""
        if self.config.cost_aware and self.lengths is not None:
            return self.lengths[torch.cat([h.index for h in harvests])].double().numpy()
        return np.ones(count)

    def after_step(self, step: int) -> None:
        """Refresh stale factors and revisit the switch; call once per training step."""
        self.steps += 1
        self.active_steps += int(self.sampler.active)
        cfg = self.config
        if self.sampler.active and cfg.refresh_share > 0 and self.score_fn is not None:
            self._refresh_credit += cfg.refresh_share * self.sampler.batch_size
            if self._refresh_credit >= cfg.refresh_batch:
                self._refresh_credit -= cfg.refresh_batch
                self.flush()  # held harvests are older than the refresh: they must not overwrite it
                self.refresh(cfg.refresh_batch, step)
        if self._in_tail(step + 1):
            self._uniform_to_the_end()  # annealed: no more decisions
        elif self._decides_after(step + 1):
            self.decide(step)

    def _in_tail(self, steps_done: int) -> bool:
        return self.uniform_from is not None and steps_done >= self.uniform_from

    def _decides_after(self, steps_done: int) -> bool:
        cfg = self.config
        return steps_done >= cfg.warmup_steps and steps_done % cfg.check_every == 0

    def judge(self, steps_done: int) -> Judgement:
        """What the switch concludes after ``steps_done`` steps, as :meth:`decide` would, without
        deciding: ``seqis diagnose`` reports it. In the uniform tail (``anneal``), after a tripped
        validation watch and before the first decision the run is uniform, and the judgement says
        why; after a step the switch already decided at, that decision stands. Under
        ``torch.distributed`` every rank must call it (it hands held harvests over, a collective)."""
        if self._in_tail(steps_done):
            return Judgement(steps_done, False, "the uniform tail of the plan (anneal)", judged=False)
        if self.switch.watch.tripped:
            return Judgement(steps_done, False, "the validation watch tripped", judged=False)
        last = self.switch.last
        if last is not None and last.step == steps_done:
            return last
        if steps_done < self.config.warmup_steps:
            warmup = f"the first {self.config.warmup_steps} steps are uniform"
            return Judgement(steps_done, False, warmup, judged=False)
        self.flush()
        noise_scale = self.noise.noise_scale if self.noise is not None else None
        store = self._store_state(steps_done - 1)
        return self.switch.judge(steps_done, self.sampler.active, self._harvest_sample(), noise_scale, store)

    def decide(self, step: int) -> None:
        """Switch importance sampling on or off from the fresh harvest (and the store's coverage,
        one O(N) count every ``check_every`` steps)."""
        self.flush()
        self._exchange_validations()
        noise_scale = self.noise.noise_scale if self.noise is not None else None
        self._maybe_sweep(step, noise_scale)  # times itself (its scoring is mining time)
        start = time.perf_counter()
        sample, store = self._harvest_sample(), self._store_state(step)
        self._set_active(self.switch.decide(step + 1, self.sampler.active, sample, noise_scale, store))
        if self.switch.pool_ratio is not None:  # presampling: the pool the switch sized for the next period
            self.sampler.ratio = self.switch.pool_ratio
            self._tell_noise_the_pool()
        if self.noise is not None:
            self.noise_history.append(
                NoiseRecord(step + 1, self.sampler.active, *self.noise_figures().values())
            )
        cut = self.noise.variance_cut if self.noise is not None else None
        self.switch.update_lr_multiplier(cut, self.sampler.active)
        self.mining_time_s += time.perf_counter() - start

    def observe_validation(
        self, step: int, val_loss: float, train_loss: float | None = None, every_rank: bool = False
    ) -> None:
        """A validation after ``step`` steps (``train_loss``: the training loss of the same model,
        for the gap). When importance sampling's faster fitting stops paying on validation, the
        run returns to uniform for good (:class:`seqis.importance.switch.ValidationWatch`).

        Under ``torch.distributed`` any ranks may call it (rank 0 alone, or all): the figures wait
        until the next switch decision, which every rank reaches at the same step, and there every
        rank's watch judges the mean of what was reported. A caller whose every rank validates at
        the same step (the trainer, the Lightning callback) passes ``every_rank``: the ranks then
        exchange at once, as a single process judges at once.
        """
        train = math.nan if train_loss is None else float(train_loss)
        self._validations.append((step, float(val_loss), train))
        if every_rank or not self.ctx.enabled:
            self._exchange_validations()

    def _exchange_validations(self) -> None:
        """Hand the held validations to the watch (under DDP: every rank's, averaged per step)."""
        held, self._validations = self._validations, []
        if self.ctx.enabled:
            held = _mean_per_step([row for rank in self.ctx.gather_object(held) for row in rank])
        for step, val_loss, train in held:
            train_loss = None if math.isnan(train) else train
            if self.switch.watch.observe(step, val_loss, train_loss, self.sampler.active):
                self._uniform_to_the_end()

    def _uniform_to_the_end(self) -> None:
        """Importance sampling off for good (--anneal's tail, a tripped validation watch)."""
        self.flush()
        self._set_active(False)
        self.switch.lr.reset()  # the uniform rest trains at the user's learning rate

    def _set_active(self, active: bool) -> None:
        if active == self.sampler.active:
            return
        self.sampler.active = active
        self._recent.clear()  # the other regime's sample is biased for this one
        if self.noise is not None:
            self.noise.regime_changed()
            self._tell_noise_the_pool()

    def _tell_noise_the_pool(self) -> None:
        """Presampled batches carry their pool mean's noise too: the noise scale must know r."""
        if self.noise is not None and self.switch.pool_ratio is not None:
            self.noise.pool_ratio = self.sampler.ratio if self.sampler.active else None

    def noise_figures(self) -> dict:
        """B, g and the predicted step gain now, at uniform's and at a re-tuned learning rate."""
        noise = self.noise
        return {
            "noise_scale": noise.noise_scale if noise else None,
            "variance_cut": noise.variance_cut if noise else None,
            "predicted_step_gain": noise.predicted_step_gain() if noise else None,
            "predicted_step_gain_lr_retuned": noise.predicted_step_gain(lr_retuned=True) if noise else None,
        }

    def _store_state(self, step: int) -> StoreState | None:
        """Coverage and scoring rate of the store that importance draws come from, if any."""
        if not self.sampler.draws_from_store:
            return None
        n, b = len(self.sampler.indices), self.sampler.batch_size
        refreshed = self.config.refresh_share if self.score_fn is not None else 0.0
        horizon = self.plan.horizon(step, self.uniform_from)  # --anneal: uniform after its start
        return StoreState.of(self.sampler.coverage, n, b, refreshed, horizon)

    def _harvest_sample(self) -> HarvestSample:
        """Steps, scale-normalised factors, weights and costs of the recent harvests."""
        if not self._recent:
            return HarvestSample.empty()
        steps, s, w, c = np.concatenate(list(self._recent), axis=1)
        return HarvestSample(steps, s, w, c if self.config.cost_aware else None)

    def _maybe_sweep(self, step: int, noise_scale: float | None) -> None:
        """Sweep the store when fresh factors first promise a cut that pays for it (judged as the
        switch judges, the sweeps' share of step time added to mining's cost), and again when the
        factors have aged by the measured cadence while importance sampling is on."""
        sweeps = self.sweeps
        if sweeps is None or (sweeps.last is not None and not (self.sampler.active and sweeps.due(step + 1))):
            return
        if self.noise is not None and noise_scale is None:  # B unread yet (early, or |G| ~ 0)
            return
        sample = self._harvest_sample()
        fresh = estimated_gain(sample.factors, self.config.smoothing, sample.costs, sample.weights)
        gain = store_gain(fresh, 1.0, self.switch.quality)
        horizon = self.rate_weighted_horizon(step)  # a sweep must pay within what is left
        cost = self._base_cost + sweeps.share(horizon)
        if self.noise is None:  # factors without a B (loss, gradnorm): the switch's min_gain, and the
            pays = self.switch.pays(gain, None) and gain >= 1.0 + cost  # cut itself bounds the step gain
        else:
            pays = self.switch.pays(gain, noise_scale, cost)
        if pays:
            self.sweep(step, horizon)

    def rate_weighted_horizon(self, step: int) -> int | None:
        """The steps a sweep now has to repay itself: those left (before ``--anneal``'s tail) up
        to the next sweep, each counted at its learning rate over the rate now, since a cut is
        worth what the rate lets it buy and a decayed tail repays little. Without ``rate_at``
        (the trainer's schedule: the own loop and Lightning have none) each step counts in full."""
        horizon = self.plan.horizon(step, self.uniform_from)
        if horizon is None:
            return None
        ahead = range(step + 1, step + 1 + min(horizon, self.sweeps.every if self.sweeps else horizon))
        if self.rate_at is None:
            return max(1, len(ahead))
        now = self.rate_at(step)
        if now <= 0:
            return 1
        return max(1, round(sum(self.rate_at(t) for t in ahead) / now))

    def sweep(self, step: int, horizon: int | None = None) -> None:
        """Score every sequence fresh, ``sweep_batch`` at a time, in length order; learn the cadence
        from how far the factors moved since the last sweep; later draws follow the fresh store."""
        start, mined = time.perf_counter(), self.mining_time_s
        n, batch = len(self._sweep), self.config.sweep_batch
        for first in range(0, n, batch):
            self.refresh(min(batch, n - first), step)
        self.sweeps.learn(np.asarray(self.sampler.factors, dtype=np.float64), step + 1)
        self.switch.cost = self._base_cost + self.sweeps.share(horizon)
        self.sampler.redraw()
        # all of it is mining time: the scoring, and the exchange and bookkeeping around it
        self.mining_time_s = mined + time.perf_counter() - start

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
        self.sampler.record(index, factors, step)

    def score(self, index: Tensor) -> Tensor:
        """``score_fn(index)``, timed as mining (refresh, presampling)."""
        start = time.perf_counter()
        factors = self.score_fn(index).cpu()
        self.mining_time_s += time.perf_counter() - start
        return factors

    # -- reporting and state -------------------------------------------------------------------
    def summary(self) -> dict:
        """Settings, costs and the factors' state; the ceiling comes from fresh factors only."""
        self.flush()
        sample = self._harvest_sample()
        history = self.switch.history
        return {
            "mining": asdict(self.config),
            "mining_time_s": self.mining_time_s,
            "harvest_time_s": self.harvest_time_s,
            "is_active_share": self.active_steps / max(1, self.steps),
            "factor_coverage": self.sampler.coverage,
            "factor_ceiling": weighted_ceiling(sample.factors, sample.weights) if len(sample) > 1 else None,
            "factor_ceiling_sample": {
                "sequences": len(sample),
                "first_step": int(sample.steps.min()) if len(sample) else None,
                "last_step": int(sample.steps.max()) if len(sample) else None,
            },
            "factor_age_median_steps": self.sampler.median_factor_age(self.steps - 1),
            "estimated_gain_last": history[-1].gain if history else None,
            "noise_scale_basis": self._noise_basis(),
            **self.noise_figures(),
            "repaired_factors": self.sampler.repaired,
            "validation_watch": self.switch.watch.state_dict(),
            "sweeps": self.sweeps.history if self.sweeps is not None else None,
            "gain_history": as_records(history),
            "noise_history": as_records(self.noise_history),
        }

    def _noise_basis(self) -> str:
        if self.noise is None:
            return (
                f"none: B needs gradient norms, not {self.config.factor} factors; the switch judges the gain"
            )
        return FACTORS[self.config.factor].gradient_of

    def state_dict(self) -> dict:
        _compute_pending(self._pending)  # a checkpoint holds factors, not the outputs they come from
        return {
            "sweep_cursor": self._sweep_cursor,
            "refresh_credit": self._refresh_credit,
            "recent": list(self._recent),
            "scale": self._scale,
            "mining_time_s": self.mining_time_s,
            "harvest_time_s": self.harvest_time_s,
            "active_steps": self.active_steps,
            "steps": self.steps,
            "switch": self.switch.state_dict(),
            "noise": self.noise.state_dict() if self.noise else None,
            "noise_history": as_records(self.noise_history),
            "pending": [harvest.state_dict() for harvest in self._pending],
            "validations": list(self._validations),
            "sweeps": self.sweeps.state_dict() if self.sweeps is not None else None,
            "sweep_share": self.switch.cost - self._base_cost,
        }

    def load_state_dict(self, state: dict) -> None:
        self._sweep_cursor = state["sweep_cursor"]
        self._refresh_credit = state["refresh_credit"]
        self._recent.clear()
        self._recent.extend(np.asarray(rows) for rows in state["recent"])
        self._scale = state["scale"]
        self.mining_time_s = state["mining_time_s"]
        self.harvest_time_s = state["harvest_time_s"]
        self.active_steps = state["active_steps"]
        self.steps = state["steps"]
        self.switch.load_state_dict(state["switch"])
        if self.noise is not None:
            self.noise.load_state_dict(state["noise"])
        self.noise_history = [NoiseRecord(**row) for row in state["noise_history"]]
        self._pending = [PendingHarvest(**row) for row in state.get("pending", [])]
        self._validations = [tuple(row) for row in state.get("validations", [])]
        if self.sweeps is not None and state.get("sweeps"):
            self.sweeps.load_state_dict(state["sweeps"])
            if self.sweeps.last is not None:  # charged from the first sweep on
                self.switch.cost = self._base_cost + state.get("sweep_share", self.sweeps.share())


def _mean_per_step(rows: list[tuple[int, float, float]]) -> list[tuple[int, float, float]]:
    """Validations reported by several ranks for the same step, averaged (NaN: not reported)."""
    by_step: dict[int, list[tuple[float, float]]] = {}
    for step, val, train in rows:
        by_step.setdefault(step, []).append((val, train))
    merged = []
    for step in sorted(by_step):
        vals = np.array(by_step[step], dtype=np.float64)
        trains = vals[:, 1][~np.isnan(vals[:, 1])]
        merged.append((step, float(vals[:, 0].mean()), float(trains.mean()) if trains.size else math.nan))
    return merged
