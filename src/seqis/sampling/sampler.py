"""Batch samplers over a dataset's training indices.

:class:`UniformBatchSampler` is the baseline: a fresh seeded permutation each epoch,
no sequence repeated within an epoch. :class:`ImportanceSampler` draws with
replacement from p_i = (1 - alpha) s_i / sum(s) + alpha / N and returns the weights
w_i = 1 / (N p_i) that keep the weighted loss an unbiased estimate of the mean loss.
While importance sampling is switched off it behaves exactly like the uniform one.

Both yield lists of ``(index, weight)`` pairs when iterated (for a ``DataLoader``
``batch_sampler`` together with :class:`seqis.sampling.loader.WeightedDataset`); the
training loop calls :meth:`draw` directly for tensors.

Their settings are :class:`~seqis.importance.config.MiningConfig`'s, validated there (seqis builds
samplers from it, :mod:`seqis.importance.schemes`); built by hand they take the same ranges:
``smoothing`` in (0, 1], a prune ratio in [0, 1), anneal shares in [0, 1], a subset fraction in
(0, 1]. They check only what no config knows: their indices, batch and costs.

The samplers are single-replica: ``batch_size`` is the *global* batch they draw, and they
know nothing of ranks. Under ``torch.distributed`` every rank holds an identical sampler
(same seed, same factors), :class:`seqis.sampling.loader.RankSlice` hands each rank its
slice of every global batch, and the caller gathers every rank's factors before
:meth:`record` (the miner does), so one importance distribution over all N sequences
serves every rank.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor

from seqis.sampling.sumtree import SumTree


class UniformBatchSampler(torch.utils.data.Sampler):
    """Seeded shuffled epochs over ``indices`` (no repeats within an epoch).

    Example:
        >>> sampler = UniformBatchSampler(range(10), batch_size=4, seed=0)
        >>> idx, w = sampler.draw()
        >>> w.tolist()
        [1.0, 1.0, 1.0, 1.0]
    """

    active = False  # never an importance draw (importance samplers switch this)
    importance_weights = False  # its weights are not 1 / (N p_i)
    draws_from_store = False  # importance draws (if any) do not come from recorded factors
    # Whether factors may reach it a few steps late: importance draws stay unbiased whatever
    # factors they follow, but pruning decides each epoch from the factors of the last one.
    records_may_lag = False

    def __init__(
        self,
        indices: Sequence[int] | Tensor,
        batch_size: int,
        seed: int = 0,
    ):
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        if len(self.indices) == 0:
            raise ValueError("no indices to sample from")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size  # the global batch: RankSlice splits it between ranks
        self.seed = seed
        self.epoch = 0
        self._progress_base = 0.0  # epochs done when this one began (an epoch may end early)
        self._progress_exact = Fraction(0)  # the same, exactly: whole sequences, never a float sum
        self._buckets: LengthBuckets | None = None  # length-aware batching (set_buckets)
        self._drawn = 0  # positions drawn from epoch orders: where the next batch starts
        self._offset = 0  # positions of this epoch that completed a batch begun in the last
        self._order = self._permutation()
        self._cursor = 0
        self._position: Tensor | None = None  # dataset index -> position, built on first use
        self.repaired = 0  # non-finite or negative factors dropped by record()

    @property
    def num_sequences(self) -> int:
        return len(self.indices)

    def __len__(self) -> int:
        return max(1, self.num_sequences // self.batch_size)

    def positions_of(self, dataset_indices: Tensor) -> np.ndarray:
        """Positions in ``indices`` of these dataset indices."""
        if self._position is None:
            self._position = np.full(int(self.indices.max()) + 1, -1, dtype=np.int64)
            self._position[self.indices.numpy()] = np.arange(self.num_sequences)
        idx = torch.as_tensor(dataset_indices, dtype=torch.long).cpu().numpy()
        if idx.size and (idx.min() < 0 or idx.max() >= len(self._position)):
            raise IndexError("an index is not among this sampler's indices")
        pos = self._position[idx]
        if (pos < 0).any():
            raise IndexError("an index is not among this sampler's indices")
        return pos

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` afresh (a new seeded order from its first batch); a no-op for the
        current epoch.

        PyTorch-compatible: ``DistributedSampler.set_epoch`` only sets the seed, so frameworks
        call it freely, Lightning with the current epoch right after restoring a checkpoint;
        keeping the order and cursor then resumes mid-epoch instead of re-training its start.

        Example:
            >>> sampler = UniformBatchSampler(range(10), batch_size=2, seed=0)
            >>> _ = sampler.draw()
            >>> sampler.set_epoch(0)              # the current epoch: order and cursor are kept
            >>> sampler.state_dict()["cursor"]
            2
        """
        if epoch != self.epoch:
            self._start_epoch(epoch)

    def _start_epoch(self, epoch: int, progress: float | None = None, exact: Fraction | None = None) -> None:
        """Begin ``epoch`` with ``progress`` epochs done (default: ``epoch``, whole epochs)."""
        self.epoch = epoch
        self._progress_base = float(epoch) if progress is None else progress
        self._progress_exact = Fraction(epoch if progress is None else progress) if exact is None else exact
        self._offset = -self._drawn % self.batch_size
        self._order, self._cursor = self._arranged(self._permutation()), 0

    def set_buckets(self, lengths: Sequence[int] | Tensor, pool: int = 50) -> None:
        """Length-aware batching: each epoch order is cut into pools of ``pool`` batches, each pool
        sorted by length and cut into batches, and the batches shuffled within their pool, so a
        batch pads little. ``lengths`` is one per index. The weights stay per sequence, and each
        batch is a uniformly random one of its pool's, so every step stays unbiased."""
        self._buckets = LengthBuckets(torch.as_tensor(lengths, dtype=torch.long), self.batch_size, pool)
        if self._cursor == 0:  # nothing drawn of this epoch yet: arrange it too
            self._order = self._arranged(self._order)

    def _arranged(self, order: Tensor) -> Tensor:
        """``order`` bucketed by length (when set), its first ``_offset`` positions left to complete
        the batch the last epoch began."""
        if self._buckets is None:
            return order
        seed = self.seed * 1_000_003 + self.epoch + 7_777
        return torch.cat([order[: self._offset], self._buckets.arrange(order[self._offset :], seed)])

    def _permutation(self) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_sequences, generator=g)

    def _take(self, most: int) -> Tensor:
        """Up to ``most`` next positions of one epoch, starting the next epoch if this one is spent."""
        if self._cursor >= len(self._order):  # an epoch may be shorter than N (pruning)
            self._start_epoch(self.epoch + 1, self._progress_base + 1.0, self._progress_exact + 1)
        take = self._order[self._cursor : self._cursor + most]
        self._cursor += len(take)
        self._drawn += len(take)
        return take

    def draw_positions(self, count: int | None = None) -> Tensor:
        """Positions (into ``indices``) of the next ``count`` (default: a batch), crossing epochs."""
        parts, need = [], count or self.batch_size
        while need:
            parts.append(self._take(need))
            need -= len(parts[-1])
        return torch.cat(parts)

    def draw(self) -> tuple[Tensor, Tensor]:
        pos = self.draw_positions()
        return self.indices[pos], torch.ones(len(pos))

    @property
    def epochs_done(self) -> float:
        """Epochs trained so far, fractional: what a schedule over ``--epochs`` follows.

        An epoch is a pass of the current order, so a pruned (shorter) epoch ends sooner; one
        ended early (pruning's full-data tail begins) counts the share of it that was trained.
        """
        return self._progress_base + self._cursor / max(1, len(self._order))

    @property
    def epochs_done_exact(self) -> Fraction:
        """:attr:`epochs_done` as an exact fraction of sequences: what a plan's end is judged by."""
        return self._progress_exact + Fraction(self._cursor, max(1, len(self._order)))

    def __iter__(self) -> Iterator[list[tuple[int, float]]]:
        """Whole batches as ``(index, weight)`` pairs (wrap in ``RankSlice`` to split them between ranks)."""
        for _ in range(len(self)):
            idx, w = self.draw()
            yield list(zip(idx.tolist(), w.tolist(), strict=True))

    def _usable(
        self, dataset_indices: Tensor, factors: Tensor, step: int | Tensor = 0
    ) -> tuple[np.ndarray, np.ndarray, int | np.ndarray]:
        """Positions, values and scoring steps of the recorded factors, bad ones dropped (warned once)."""
        pos = self.positions_of(dataset_indices)
        values, bad = repair_factors(torch.as_tensor(factors).detach().cpu().double().numpy())
        steps = step.cpu().numpy() if isinstance(step, Tensor) else step
        if not bad:
            return pos, values, steps
        if not self.repaired:
            warnings.warn(
                f"{bad} non-finite or negative importance factor(s) dropped; those "
                "sequences keep their previous factor (counted in 'repaired_factors')",
                RuntimeWarning,
                stacklevel=3,
            )
        self.repaired += bad
        keep = ~np.isnan(values)
        return pos[keep], values[keep], steps if np.ndim(steps) == 0 else steps[keep]

    def state_dict(self) -> dict:
        exact = [self._progress_exact.numerator, self._progress_exact.denominator]
        progress = self._progress_base
        return {
            "epoch": self.epoch,
            "cursor": self._cursor,
            "seed": self.seed,
            "progress": progress,
            "progress_exact": exact,
            "drawn": self._drawn,
            "offset": self._offset,
        }

    def load_state_dict(self, state: dict) -> None:
        self.seed = state["seed"]
        # Always a new epoch start (the seed may have changed), arranged as the saved one was.
        self._drawn = -state.get("offset", 0) % self.batch_size
        self._start_epoch(state["epoch"], state.get("progress"), _exact_progress(state))
        self._cursor = state["cursor"]
        self._drawn = state.get("drawn", 0)


class LengthBuckets:
    """Sorts pools of ``pool`` batches by length and shuffles the batches cut from them.

    Each batch's sequences are shuffled too: a batch is a band of lengths, and whoever takes a
    part of it (the switch's harvest sample, a rank's slice) must not always take its short end.
    """

    def __init__(self, lengths: Tensor, batch_size: int, pool: int):
        self.lengths, self.batch_size, self.pool = lengths, batch_size, pool

    def arrange(self, positions: Tensor, seed: int) -> Tensor:
        """``positions`` in pools, each sorted by length (ties keep their random order) and cut into
        batches that are shuffled within the pool; a short last batch stays last."""
        g = torch.Generator().manual_seed(seed)
        size, out = self.batch_size * self.pool, []
        for start in range(0, len(positions), size):
            pool = positions[start : start + size]
            # A short batch (an epoch's end) is a random part of the pool, not its longest sequences.
            short_count = len(pool) % self.batch_size
            short, pool = pool[:short_count], pool[short_count:]
            pool = pool[torch.argsort(self.lengths[pool], stable=True)]
            cut = pool.split(self.batch_size)
            batches = [batch[torch.randperm(len(batch), generator=g)] for batch in cut]
            out += [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()] + [short]
        return torch.cat(out) if out else positions

    def arrange_batches(self, positions: np.ndarray, weights: np.ndarray, generator: torch.Generator):
        """Importance draws of several batches, sorted by length and cut into batches in a shuffled
        order, each position keeping its weight."""
        order = np.argsort(self.lengths[torch.from_numpy(positions)].numpy(), kind="stable")
        k, b = len(positions) // self.batch_size, self.batch_size
        within = torch.argsort(torch.rand(k, b, generator=generator), dim=1).numpy()
        order = np.take_along_axis(order.reshape(k, b), within, axis=1)  # each batch shuffled
        shuffled = torch.randperm(k, generator=generator).numpy()
        return [positions[order[i]] for i in shuffled], [weights[order[i]] for i in shuffled]


def padding(lengths: Tensor, batch_size: int, pool: int | None = None, seed: int = 0) -> float:
    """Padded over real positions of an epoch's full batches of ``batch_size``, cut from a random
    order (``pool=None``) or from pools of ``pool`` batches sorted by length (``--batching bucket``);
    1.0 when there is no full batch to measure.

    Example:
        >>> random, bucketed = padding(data.lengths, 64), padding(data.lengths, 64, pool=50)
    """
    lengths = torch.as_tensor(lengths)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=g)
    if pool is not None:
        order = LengthBuckets(lengths, batch_size, pool).arrange(order, seed)
    full = len(order) // batch_size * batch_size
    if full == 0:
        return 1.0
    batches = lengths[order[:full]].view(-1, batch_size).double()
    return float(batches.max(dim=1).values.sum() * batch_size / batches.sum().clamp(min=1))


def _exact_progress(state: dict) -> Fraction | None:
    """A saved state's exact progress (from checkpoints before it existed: its float, as it is)."""
    if "progress_exact" in state:
        return Fraction(*state["progress_exact"])
    return Fraction(state["progress"]) if state.get("progress") is not None else None


def repair_factors(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace NaN, inf and negative factors by NaN markers; return them and the count."""
    values = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(values) | (values < 0)
    if not bad.any():  # the common case: callers copy what they keep
        return values, 0
    values = values.copy()
    values[bad] = np.nan
    return values, int(bad.sum())


class ImportanceSampler(UniformBatchSampler):
    """Draws sequences by importance factor, with unbiasing weights; O(b log N) a batch.

    With ``costs`` (one per index, e.g. lengths) draws follow s_i / sqrt(c_i) instead of s_i:
    the weights stay 1 / (N p_i), so the gradient stays unbiased, and a unit of work buys the
    least variance.

    Factors arrive through :meth:`record` (harvested from training steps or refreshed by
    the miner). A sequence never scored gets the mean of the known factors, so it is
    neither starved nor favoured. Mixing with uniform (``smoothing = alpha``) bounds every
    weight by ``1 / alpha`` without biasing the gradient.

    Draws walk the tree for ``lookahead`` batches at once (one walk costs about what a
    single batch's does). Each batch carries the weights of the distribution it was drawn
    from, so it stays unbiased; factors recorded meanwhile steer the next walk.

    Example:
        >>> sampler = ImportanceSampler(range(1000), batch_size=32, smoothing=0.2, seed=0)
        >>> sampler.record(torch.arange(1000), torch.rand(1000))
        >>> sampler.active = True
        >>> idx, weights = sampler.draw()     # multiply weights into per-sequence losses
    """

    importance_weights = True  # its weights are 1 / (N p_i): a noise-scale estimate can use them
    draws_from_store = True  # from the recorded factors, stale ones and never-scored ones included
    records_may_lag = True

    def __init__(
        self,
        indices: Sequence[int] | Tensor,
        batch_size: int,
        smoothing: float = 0.2,
        seed: int = 0,
        costs: Sequence[float] | Tensor | None = None,
        lookahead: int = 8,
    ):
        super().__init__(indices, batch_size, seed)
        if lookahead < 1:
            raise ValueError(f"lookahead must be >= 1 batch, got {lookahead}")
        self.smoothing = smoothing
        self.lookahead = lookahead
        self._ahead: deque[tuple[np.ndarray, np.ndarray]] = deque()  # drawn, not yet handed out
        # Cost-aware draws: minimising variance x expected cost gives p proportional to s / sqrt(c)
        # (a sequence's cost: its length, when the model runs over packed sequences).
        self._cost_scale: np.ndarray | None = None
        if costs is not None:
            c = np.asarray(torch.as_tensor(costs, dtype=torch.float64), dtype=np.float64)
            if c.shape != (len(self.indices),) or not (np.isfinite(c) & (c > 0)).all():
                raise ValueError(f"costs must be {len(self.indices)} positive finite numbers, one per index")
            self._cost_scale = 1.0 / np.sqrt(c)
        self._active = False
        self._tree_stale = False  # factors recorded while inactive, not yet in the tree
        n = self.num_sequences
        self.factors = np.full(n, np.nan)  # NaN: never scored
        self.scored_step = np.full(n, -1, dtype=np.int64)
        self._tree = SumTree(np.ones(n))
        self.importance_drawn = 0  # sequences drawn by importance (they leave the epoch order alone)
        self._generator = torch.Generator().manual_seed(seed + 7919)

    @property
    def active(self) -> bool:
        """Whether draws are by importance (True) or uniform epochs (False)."""
        return self._active

    @active.setter
    def active(self, value: bool) -> None:
        if value and self._tree_stale:
            self.rebuild()
        if bool(value) != self._active:
            self._ahead.clear()  # batches drawn for the other regime
        self._active = bool(value)

    def set_buckets(self, lengths: Sequence[int] | Tensor, pool: int = 50) -> None:
        """Length-aware batching for uniform epochs and importance draws alike: importance draws
        are made ``pool`` batches at a time (the lookahead), sorted by length and cut into batches
        in a shuffled order, each sequence keeping the weight of the distribution it was drawn from."""
        super().set_buckets(lengths, pool)
        self.lookahead = max(1, min(pool, self.num_sequences // self.batch_size))
        self._ahead.clear()

    def redraw(self) -> None:
        """Drop the batches drawn ahead: the next ones follow the factors as they stand now.

        Length buckets finish their pool first: its batches partition one draw, and leaving the
        rest of it untrained on a decision that the trained part informed would bias the run."""
        if self._buckets is None:
            self._ahead.clear()

    # -- factors ---------------------------------------------------------------------------
    def record(self, dataset_indices: Tensor, factors: Tensor, step: int | Tensor = 0) -> None:
        """Store new factors for these sequences; the tree is updated in O(b log N).

        ``step`` is when they were scored: one step, or one per sequence. It stores exactly
        what it is given: with several replicas the caller (the miner) gathers every rank's
        factors first, so the ranks' samplers stay identical.
        """
        pos, values, steps = self._usable(dataset_indices, factors, step)
        self.factors[pos] = values
        self.scored_step[pos] = steps
        if self._active:
            self._tree.update(pos, values if self._cost_scale is None else values * self._cost_scale[pos])
        else:  # nobody draws from the tree now: fold these in with one O(N) rebuild later
            self._tree_stale = True

    def rebuild(self) -> None:
        """Re-fill the tree in O(N): unscored sequences get the current mean factor."""
        scores = self.scores()
        self._tree.rebuild(scores if self._cost_scale is None else scores * self._cost_scale)
        self._tree_stale = False

    def scores(self) -> np.ndarray:
        """The factors used for p: known ones, else the mean of known ones (else 1)."""
        known = ~np.isnan(self.factors)
        prior = float(self.factors[known].mean()) if known.any() else 1.0
        scores = np.where(known, self.factors, prior)
        if scores.sum() <= 0:  # all-zero factors carry no information: stay uniform
            scores = np.ones_like(scores)
        return scores

    @property
    def coverage(self) -> float:
        return float((~np.isnan(self.factors)).mean())

    def median_factor_age(self, now: int) -> float | None:
        """Median steps since each stored factor was scored (O(N): for summaries only)."""
        scored = self.scored_step[self.scored_step >= 0]
        return float(np.median(now - scored)) if scored.size else None

    # -- probabilities ---------------------------------------------------------------------
    def _mixture(self) -> tuple[float, float]:
        total = self._tree.total
        if total <= 0 or not np.isfinite(total):
            return 0.0, 1.0
        return 1.0 - self.smoothing, total

    def probabilities(self) -> np.ndarray:
        """The full distribution p over positions (O(N); for checks and diagnostics)."""
        n = self.num_sequences
        if not self.active:
            return np.full(n, 1.0 / n)
        share, total = self._mixture()
        return share * (self._tree.values / total) + (1.0 - share) / n

    def weights_of(self, positions: np.ndarray) -> np.ndarray:
        """w_i = 1 / (N p_i) under the current distribution."""
        n = self.num_sequences
        share, total = self._mixture()
        p = share * (self._tree.values[positions] / total) + (1.0 - share) / n
        return 1.0 / (n * p)

    def draw(self) -> tuple[Tensor, Tensor]:
        """The next batch's dataset indices and their weights (all 1 while inactive)."""
        if not self.active:
            return super().draw()
        if not self._ahead:
            self._draw_ahead()
        pos, weights = self._ahead.popleft()
        self.importance_drawn += len(pos)
        return self.indices[torch.from_numpy(pos)], torch.from_numpy(weights)

    def _draw_ahead(self) -> None:
        """Walk the tree once for the next ``lookahead`` batches."""
        b, n, k = self.batch_size, self.num_sequences, self.lookahead
        share, total = self._mixture()
        coin = torch.rand(k * b, generator=self._generator, dtype=torch.float64).numpy()
        u = torch.rand(k * b, generator=self._generator, dtype=torch.float64).numpy()
        uniform_pos = np.minimum((u * n).astype(np.int64), n - 1)
        tree_pos = self._tree.find(u * total) if share > 0 else uniform_pos
        pos = np.where(coin < share, tree_pos, uniform_pos)
        weights = self.weights_of(pos).astype(np.float32)
        if self._buckets is not None:  # the lookahead is the pool: sorted by length, batches shuffled
            batches, weights = self._buckets.arrange_batches(pos, weights, self._generator)
            self._ahead.extend(zip(batches, weights, strict=True))
            return
        self._ahead.extend(zip(np.split(pos, k), np.split(weights, k), strict=True))

    @property
    def epochs_done(self) -> float:
        return super().epochs_done + self.importance_drawn / self.num_sequences

    @property
    def epochs_done_exact(self) -> Fraction:
        return super().epochs_done_exact + Fraction(self.importance_drawn, self.num_sequences)

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        b = self.batch_size
        state.update(
            importance_drawn=self.importance_drawn,
            active=self.active,
            smoothing=self.smoothing,
            factors=self.factors.copy(),
            scored_step=self.scored_step.copy(),
            tree_values=self._tree.values.copy(),
            tree_stale=self._tree_stale,
            repaired=self.repaired,
            generator=self._generator.get_state(),
            # batches drawn ahead, not yet handed out: (count, b) positions and weights
            ahead_positions=np.array([pos for pos, _ in self._ahead], dtype=np.int64).reshape(-1, b),
            ahead_weights=np.array([w for _, w in self._ahead], dtype=np.float32).reshape(-1, b),
        )
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if len(state["factors"]) != self.num_sequences:
            raise ValueError(
                f"sampler state is for {len(state['factors'])} sequences, not {self.num_sequences}"
            )
        self._active = state["active"]
        self._tree_stale = state["tree_stale"]
        self.smoothing = state["smoothing"]
        self.factors = np.array(state["factors"], dtype=np.float64)
        self.scored_step = np.array(state["scored_step"], dtype=np.int64)
        self._tree.rebuild(state["tree_values"])
        self.repaired = state["repaired"]
        self._generator.set_state(state["generator"])
        self.importance_drawn = state.get("importance_drawn", 0)
        ahead = zip(state.get("ahead_positions", []), state.get("ahead_weights", []), strict=True)
        self._ahead = deque((np.array(pos), np.array(w)) for pos, w in ahead)


class PresamplingSampler(ImportanceSampler):
    """Katharopoulos & Fleuret's presampling: score ``ratio * b`` uniform candidates in a
    forward pass, then draw ``b`` of them with probability mixed from their scores. The miner's
    switch sets ``ratio`` (the pool that pays best, :meth:`seqis.importance.switch.PoolSwitch.size_pool`).

    Weights are relative to the candidate pool, w_j = 1 / (B p_j), so the weighted batch is
    unbiased for the pool's mean, which is unbiased for the dataset's. ``score_fn`` maps
    dataset indices to factors (the trainer supplies a forward-only scorer). While inactive
    it draws plain uniform batches, like its parent.
    """

    draws_from_store = False  # from fresh scores of its candidates

    def __init__(self, *args, ratio: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        self.ratio = ratio
        self.score_fn = None
        self.candidates_not_trained = 0  # pool draws beyond the b trained: not epoch progress

    @property
    def epochs_done(self) -> float:
        """Epochs of *trained* sequences: a step scores ``ratio * b`` candidates but trains b,
        so a schedule over ``--epochs`` follows the b (counting candidates ended the plan at
        a third of uniform's sequences)."""
        return UniformBatchSampler.epochs_done.fget(self) - self.candidates_not_trained / self.num_sequences

    @property
    def epochs_done_exact(self) -> Fraction:
        untrained = Fraction(self.candidates_not_trained, self.num_sequences)
        return UniformBatchSampler.epochs_done_exact.fget(self) - untrained

    def draw(self) -> tuple[Tensor, Tensor]:
        if not self.active or self.score_fn is None:
            return UniformBatchSampler.draw(self)
        b = self.batch_size
        self.candidates_not_trained += (self.ratio - 1) * b
        pool = self.indices[self.draw_positions(self.ratio * b)]
        scores, _ = repair_factors(self.score_fn(pool).double().cpu().numpy())
        scores = np.nan_to_num(scores, nan=0.0)
        big = len(pool)
        share = 1.0 - self.smoothing if scores.sum() > 0 else 0.0
        p = share * (scores / max(scores.sum(), 1e-300)) + (1.0 - share) / big
        pick = torch.multinomial(torch.from_numpy(p), b, replacement=True, generator=self._generator)
        return pool[pick], torch.from_numpy(1.0 / (big * p[pick.numpy()])).float()

    def state_dict(self) -> dict:
        state = super().state_dict()
        return {**state, "candidates_not_trained": self.candidates_not_trained, "ratio": self.ratio}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.candidates_not_trained = state.get("candidates_not_trained", 0)
        self.ratio = state.get("ratio", self.ratio)


class PruningSampler(UniformBatchSampler):
    """InfoBatch's unbiased soft pruning (Qin et al., ICLR 2024), over shuffled epochs.

    At the start of each epoch, every sequence whose latest factor is below the mean of the
    known factors is skipped with probability ``ratio``; a kept one is weighted ``1 / (1 -
    ratio)``, so the expected gradient summed over an epoch is the full epoch's. Epochs get
    shorter, no sequence repeats within one, and the last ``anneal`` share of the planned
    ``total_steps`` trains on full, unweighted data: the draw that enters that share ends a
    pruned epoch early and starts a full one. Pruning starts once :attr:`active` is set (the
    miner sets it after warm-up, when factors exist).

    Example:
        >>> sampler = PruningSampler(range(1000), batch_size=32, ratio=0.5, seed=0)
        >>> sampler.record(torch.arange(1000), torch.rand(1000))
        >>> sampler.active = True
        >>> sampler.set_epoch(1)                  # pruning applies from the next epoch
        >>> idx, weights = sampler.draw()         # weights are 1 or 1 / (1 - ratio)
    """

    def __init__(
        self,
        indices: Sequence[int] | Tensor,
        batch_size: int,
        ratio: float = 0.5,
        seed: int = 0,
        total_steps: int | None = None,
        anneal: float = 0.125,
        total_epochs: float | None = None,
    ):
        self.ratio, self.anneal, self.total_steps, self.total_epochs = (
            ratio,
            anneal,
            total_steps,
            total_epochs,
        )
        self._active = False
        self.draws = 0
        self.factors = np.full(len(indices), np.nan)
        self._weights = torch.ones(len(indices))
        self._pruned = False  # whether the current epoch was pruned (and so is weighted)
        super().__init__(indices, batch_size, seed)

    @property
    def active(self) -> bool:
        return self._active

    @active.setter
    def active(self, value: bool) -> None:
        self._active = bool(value)

    @property
    def annealing(self) -> bool:
        """True in the final full-data share of the planned steps (or epochs)."""
        return self._annealing_at(self.epochs_done)

    def _annealing_at(self, epochs_done: float) -> bool:
        if self.total_steps is not None:
            return self.draws >= (1.0 - self.anneal) * self.total_steps
        if self.total_epochs is not None:  # InfoBatch's own rule: the last epochs are full
            return epochs_done >= (1.0 - self.anneal) * self.total_epochs - 1e-9
        return False

    @property
    def coverage(self) -> float:
        return float((~np.isnan(self.factors)).mean())

    def median_factor_age(self, now: int) -> float | None:
        """Pruning keeps no scoring steps: an epoch's pruning uses the latest factor of each."""
        return None

    def record(self, dataset_indices: Tensor, factors: Tensor, step: int | Tensor = 0) -> None:
        """Store the latest factors (exactly those given); they shape the pruning of the next epoch."""
        pos, values, _ = self._usable(dataset_indices, factors)
        self.factors[pos] = values

    def rebuild(self) -> None:
        """Nothing to rebuild: an epoch's pruning is decided when it starts."""

    def _permutation(self) -> Tensor:
        order = super()._permutation()
        self._weights, self._pruned = torch.ones(self.num_sequences), False
        known = ~np.isnan(self.factors)
        # At an epoch's start its progress base is the epochs done so far.
        if not (self._active and self.ratio > 0 and known.any()) or self._annealing_at(self._progress_base):
            return order
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 104_729)
        below = torch.from_numpy(known & (self.factors < self.factors[known].mean()))
        dropped = below & (torch.rand(self.num_sequences, generator=g) < self.ratio)
        self._weights[below] = 1.0 / (1.0 - self.ratio)
        self._pruned = bool(below.any())
        return order[~dropped[order]]

    def __len__(self) -> int:
        return max(1, len(self._order) // self.batch_size)

    def draw(self) -> tuple[Tensor, Tensor]:
        if self._pruned and self.annealing:  # checked per draw: a long epoch would eat the full-data tail
            # the tail follows on, not a whole epoch on
            self._start_epoch(self.epoch + 1, self.epochs_done, self.epochs_done_exact)
        positions, weights, need = [], [], self.batch_size
        while need:
            # Weights are read per part: crossing into a new epoch replaces self._weights, and
            # the old epoch's positions keep the weights of the epoch they were drawn from.
            positions.append(self._take(need))
            weights.append(self._weights[positions[-1]])
            need -= len(positions[-1])
        self.draws += 1
        return self.indices[torch.cat(positions)], torch.cat(weights)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(
            active=self._active,
            draws=self.draws,
            factors=self.factors.copy(),
            repaired=self.repaired,
            order=self._order.clone(),
            weights=self._weights.clone(),
            pruned=self._pruned,
        )
        return state

    def load_state_dict(self, state: dict) -> None:
        self.seed = state["seed"]
        self.epoch, self._cursor = state["epoch"], state["cursor"]
        self._progress_base = state.get("progress", float(self.epoch))
        exact = _exact_progress(state)
        self._progress_exact = Fraction(self.epoch) if exact is None else exact
        self._active, self.draws = state["active"], state["draws"]
        self.factors = np.array(state["factors"], dtype=np.float64)
        self.repaired = state["repaired"]
        self._order, self._weights = state["order"].clone(), state["weights"].clone()
        self._drawn, self._offset = state.get("drawn", 0), state.get("offset", 0)
        # Checkpoints from before the per-draw annealing lack it: a pruned epoch has weights above 1.
        self._pruned = bool(state.get("pruned", (self._weights != 1).any()))


class RandomSubsetSampler(PruningSampler):
    """The honest control for pruning: a fresh random subset of each epoch, of a fixed size.

    RS2 (Okanovic et al. 2023, repeated sampling of random subsets, here with replacement
    between epochs): every epoch after the first trains a seeded random ``fraction`` of the
    data, unweighted, and the last ``anneal`` share of the plan trains on full epochs, exactly
    as :class:`PruningSampler` does (whose first epoch is whole: it has no factors to prune
    by yet). Given the fraction pruning kept, it spends the same steps; a pruning rule that
    does not beat it is not selecting, only training less.

    Example:
        >>> sampler = RandomSubsetSampler(range(1000), batch_size=50, fraction=0.7, seed=0)
        >>> sampler.set_epoch(1)                  # the first epoch is whole, the next ones 70%
        >>> len(sampler)
        14
    """

    def __init__(
        self,
        indices: Sequence[int] | Tensor,
        batch_size: int,
        fraction: float = 0.75,
        seed: int = 0,
        total_steps: int | None = None,
        anneal: float = 0.125,
        total_epochs: float | None = None,
    ):
        self.fraction = fraction  # read by _permutation, which the base class calls
        super().__init__(indices, batch_size, 0.0, seed, total_steps, anneal, total_epochs)
        self._active = True

    def _permutation(self) -> Tensor:
        order = UniformBatchSampler._permutation(self)
        self._weights, self._pruned = torch.ones(self.num_sequences), False
        size = max(min(self.batch_size, self.num_sequences), round(self.fraction * self.num_sequences))
        if size >= self.num_sequences or self.epoch == 0 or self._annealing_at(self._progress_base):
            return order
        self._pruned = True  # a short epoch: the draw entering the full-data tail ends it
        return order[:size]

    def record(self, dataset_indices: Tensor, factors: Tensor, step: int | Tensor = 0) -> None:
        """A random subset keeps no factors."""
