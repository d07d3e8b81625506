"""One wiring: the sampler and the miner a :class:`MiningConfig` asks for, built together.

``seqis train``, :class:`~seqis.training.own_loop.ImportanceLoader` and the Lightning
callback all build their sampling here, so each honours every setting or refuses it here,
with the same one-line :class:`~seqis.errors.ConfigError`. The scheme (the registry in
:mod:`seqis.importance.schemes`) builds the sampler and prices the switch. One distributed
style: the sampler is single-replica (it draws the global batch), the caller trains its
rank's slice, and the miner gathers every rank's factors before recording them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from seqis.distributed import DistContext
from seqis.importance.config import MiningConfig
from seqis.importance.mining import Miner
from seqis.options import check, name
from seqis.plan import Plan
from seqis.sampling.sampler import UniformBatchSampler

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
    plan: Plan | None = None,
    grad_batch_size: int | None = None,
) -> tuple[Sampler, Miner | None]:
    """The sampler drawing global batches of ``batch_size`` from ``indices``, and its miner.

    ``score_fn`` (dataset indices -> factors, forward-only) refreshes importance factors and
    scores presampling's candidates; ``lengths`` (by dataset index) orders refresh batches and
    are cost-aware draws' costs; ``plan`` (default: none) places ``anneal``'s and
    ``prune_anneal``'s tails and the switch's horizon. Schemes without factors (uniform, the
    random-subset control) have no miner.

    Example:
        >>> sampler, miner = sampling_for(MiningConfig(sampler="fim"), torch.arange(1000), 64)
    """
    indices = torch.as_tensor(indices, dtype=torch.long)
    check(
        len(indices) >= batch_size,
        f"{len(indices)} training sequences are fewer than a batch of {batch_size} (all ranks together): "
        "lower the batch size",
    )
    plan = plan or Plan(len(indices), batch_size)
    scheme = config.scheme
    _check(config, score_fn, lengths, plan)
    scheme.check_wiring(config, score_fn, plan)
    sampler = scheme.build_sampler(config, indices, batch_size, seed, plan, lengths)
    if config.batching == "bucket":
        sampler.set_buckets(lengths[indices], config.bucket_pool)
    if not scheme.mined:
        return sampler, None
    miner = Miner(sampler, config, score_fn, lengths, ctx=ctx, plan=plan, grad_batch_size=grad_batch_size)
    scheme.connect(sampler, miner)
    return sampler, miner


def _check(config: MiningConfig, score_fn: Callable | None, lengths: Tensor | None, plan: Plan) -> None:
    """Settings this caller cannot honour are refused, never silently ignored."""
    if config.anneal > 0:
        check(
            plan.steps is not None,
            f"{name(config, 'anneal')} is a share of the planned steps: give the number of steps",
        )
    if config.cost_aware:
        check(lengths is not None, f"{name(config, 'cost_aware')} needs the sequences' lengths (its costs)")
    if config.batching == "bucket":
        check(lengths is not None, f"{name(config, 'batching')} bucket needs the sequences' lengths")
    if config.sweep and config.scheme.keeps_store:
        check(score_fn is not None, f"{name(config, 'sweep')} scores every sequence: it needs a scorer")
