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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import default_collate


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
