"""One wiring: the sampler and the miner a :class:`MiningConfig` asks for, built together.

``seqis train``, :class:`~seqis.training.own_loop.ImportanceLoader` and the Lightning
callback all build their sampling here, so each honours every setting or refuses it here,
with the same one-line :class:`~seqis.errors.ConfigError`. One distributed style: the
sampler is single-replica (it draws the global batch), the caller trains its rank's slice,
and the miner gathers every rank's factors before recording them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from seqis.distributed import DistContext
from seqis.importance.config import PRESAMPLE_RATIO, MiningConfig
from seqis.importance.mining import Miner
from seqis.options import check
from seqis.sampling.sampler import (
    ImportanceSampler,
    PresamplingSampler,
    PruningSampler,
    RandomSubsetSampler,
    UniformBatchSampler,
)

Sampler = UniformBatchSampler  # every sampler derives from it


def sampling_for(
    config: MiningConfig,
    indices: Tensor,
    batch_size: int,
    *,
    seed: int = 0,
    score_fn: Callable[[Tensor], Tensor] | None = None,
    lengths: Tensor | None = None,
    ctx: DistContext | None = None,
    total_steps: int | None = None,
    total_epochs: float | None = None,
    grad_batch_size: int | None = None,
) -> tuple[Sampler, Miner | None]:
    """The sampler drawing global batches of ``batch_size`` from ``indices``, and its miner.

    ``score_fn`` (dataset indices -> factors, forward-only) refreshes importance factors and
    scores presampling's candidates; ``lengths`` (by dataset index) orders refresh batches and
    are cost-aware draws' costs; ``total_steps`` places ``anneal`` and ``prune_anneal`` (or
    ``total_epochs``, for pruning planned in epochs).
    Uniform sampling and the random-subset control have no miner.

    Example:
        >>> sampler, miner = sampling_for(MiningConfig(sampler="fim"), torch.arange(1000), 64)
    """
    indices = torch.as_tensor(indices, dtype=torch.long)
    _check(config, score_fn, lengths, total_steps, total_epochs)
    if config.sampler == "uniform":
        return UniformBatchSampler(indices, batch_size, seed=seed), None
    if config.sampler == "subset":
        subset = RandomSubsetSampler(
            indices, batch_size, config.subset_fraction, seed, total_steps, config.prune_anneal, total_epochs
        )
        return subset, None
    if config.sampler == "prune":
        sampler = PruningSampler(
            indices,
            batch_size,
            config.prune_ratio,
            seed=seed,
            total_steps=total_steps,
            anneal=config.prune_anneal,
            total_epochs=total_epochs,
        )
    elif config.sampler == "presample":
        sampler = PresamplingSampler(indices, batch_size, config.smoothing, seed=seed, ratio=PRESAMPLE_RATIO)
    else:
        costs = lengths[indices] if config.cost_aware else None
        sampler = ImportanceSampler(indices, batch_size, config.smoothing, seed=seed, costs=costs)
    # Pruning is decided per epoch from the latest factor of every trained sequence and
    # presampling scores fresh candidates: neither refreshes a store (refresh_share is 0).
    planned = total_steps or (round(total_epochs * len(indices) / batch_size) if total_epochs else None)
    miner = Miner(sampler, config, score_fn, lengths, ctx, total_steps, grad_batch_size, planned)
    if config.sampler == "presample":
        sampler.score_fn = lambda index: miner.score(index)
    return sampler, miner


def _check(
    config: MiningConfig,
    score_fn: Callable | None,
    lengths: Tensor | None,
    total_steps: int | None,
    total_epochs: float | None,
) -> None:
    """Settings this caller cannot honour are refused, never silently ignored."""
    if config.anneal > 0:
        check(total_steps is not None, "--anneal is a share of the planned steps: give the number of steps")
    if config.sampler in ("prune", "subset") and config.prune_anneal > 0:
        check(
            total_steps is not None or total_epochs is not None,
            "--prune-anneal is a share of the planned steps or epochs: give --steps or --epochs",
        )
    if config.cost_aware:
        check(lengths is not None, "--cost-aware needs the sequences' lengths (its costs)")
    if config.sampler == "presample":
        check(score_fn is not None, "presampling scores candidates: it needs a forward-only score_fn")
