"""Use a seqis sampler with your own ``Dataset`` and ``DataLoader``.

The batch samplers yield ``(index, weight)`` pairs; :class:`WeightedDataset` unwraps
them, so each item arrives with the index to report factors for and the weight to
multiply into its loss. The weight is fixed when the batch is drawn, so it stays
correct even when loader workers prefetch batches ahead of the training step.

Example:
    >>> sampler = ImportanceSampler(range(len(ds)), batch_size=32)
    >>> loader = DataLoader(WeightedDataset(ds), batch_sampler=sampler)
    >>> for batch in loader:
    ...     per_seq = loss_fn(model(batch["item"]))          # reduction="none"
    ...     (batch["weight"] * per_seq).mean().backward()
    ...     sampler.record(batch["index"], factors)          # e.g. OutputLayerNorms(...).compute()

Under ``torch.distributed`` wrap the sampler in :class:`RankSlice`: every rank draws the same
global batch and loads only its own slice of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import default_collate

from seqis.distributed import replicas


class WeightedDataset(torch.utils.data.Dataset):
    """Wraps a map-style dataset so items come with their index and sampling weight."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, float] | int) -> dict[str, Any]:
        index, weight = key if isinstance(key, tuple) else (key, 1.0)
        return {"item": self.dataset[index], "index": index, "weight": torch.tensor(weight)}


def weighted_collate(collate_fn: Callable[[list], Any] = default_collate) -> Callable[[list[dict]], tuple]:
    """Wrap your ``collate_fn`` for a :class:`WeightedDataset` loader: batches become
    ``(collate_fn(items), indices, weights)``, and ``collate_fn`` sees your dataset's items
    exactly as without seqis (padding variable-length sequences, for example).

    Example:
        >>> loader = DataLoader(WeightedDataset(ds), batch_sampler=sampler,
        ...                     collate_fn=weighted_collate(pad_collate))
        >>> for batch, index, weight in loader:
        ...     (weight * per_sequence_loss(model, batch)).mean().backward()
    """

    def collate(rows: list[dict]) -> tuple:
        index = torch.tensor([row["index"] for row in rows], dtype=torch.long)
        weight = torch.stack([row["weight"] for row in rows]).float()
        return collate_fn([row["item"] for row in rows]), index, weight

    return collate


class RankSlice(torch.utils.data.Sampler):
    """This rank's contiguous slice of every global batch a batch sampler yields.

    ``DistributedSampler`` semantics: ``num_replicas`` and ``rank`` default from the
    initialised ``torch.distributed`` group. The wrapped sampler is single-replica and
    identical on every rank (same seed, same factors), so the ranks' slices are disjoint
    and together cover each global batch; its ``batch_size`` is the global batch, and every
    batch it yields must be full (seqis samplers' batches are; a ``BatchSampler`` needs
    ``drop_last=True``).

    Example:
        >>> sampler = ImportanceSampler(range(len(ds)), batch_size=64)   # 64 over all ranks
        >>> loader = DataLoader(WeightedDataset(ds), batch_sampler=RankSlice(sampler))
        >>> # with 4 ranks each loads 16 of every 64; gather the factors, then sampler.record
    """

    def __init__(
        self,
        batch_sampler: torch.utils.data.Sampler,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        self.num_replicas, self.rank = replicas(num_replicas, rank)
        batch_size = batch_sampler.batch_size
        if batch_size % self.num_replicas:
            raise ValueError(
                f"the global batch of {batch_size} does not split evenly over {self.num_replicas} replicas"
            )
        self.batch_sampler = batch_sampler
        self.batch_size = batch_size // self.num_replicas  # per rank, as a DataLoader reports it

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list]:
        start = self.rank * self.batch_size
        for batch in self.batch_sampler:
            yield batch[start : start + self.batch_size]

    def set_epoch(self, epoch: int) -> None:
        """Passed on to the wrapped sampler (Lightning calls it on a loader's batch sampler)."""
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)
