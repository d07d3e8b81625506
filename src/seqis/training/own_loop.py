"""The whole method in your own loop: wrap your DataLoader, weigh the loss, call ``step()``.

:class:`ImportanceLoader` takes the ``DataLoader`` you already have (its dataset, batch
size, ``collate_fn``, workers) and the model's output ``nn.Linear``. Iterating it yields
your batches unchanged; behind them it draws by importance, hooks the output layer for
the factors (any loss), and runs the miner (harvest, refresh, switch). Three lines change:

    loader = seqis.ImportanceLoader(loader, model.head)       # was: loader = DataLoader(...)
    loss = loader.weigh(per_sequence_loss)                      # was: loss = per_sequence_loss.mean()
    loader.step()                                               # new: after backward (and optimizer.step)

Under DDP (``torchrun``) it joins the initialised process group: one importance
distribution over all N sequences, each rank its slice of every global batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from seqis.distributed import DistContext
from seqis.importance.hooks import OutputLayerNorms
from seqis.importance.mining import Miner, MiningConfig
from seqis.importance.scoring import PerSequenceLoss, output_layer_scorer, to_device
from seqis.sampling.loader import WeightedDataset, weighted_collate
from seqis.sampling.sampler import ImportanceSampler

# DataLoader settings carried over to the importance-drawing loader (batching is ours).
_KEPT = (
    "num_workers",
    "pin_memory",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "persistent_workers",
)


class ImportanceLoader:
    """Your ``DataLoader``, drawing sequences by importance; batches arrive unchanged.

    Args:
        dataloader: the loader you train with (map-style dataset, ``batch_size`` set).
        output_layer: the model's output ``nn.Linear``; its hooks yield the factors.
        config: mining settings (smoothing, switch, refresh); the defaults are the races'.
        loss_fn: optional ``(model, batch) -> per-sequence losses``; with it (and ``model``)
            stale factors are refreshed by forward-only passes, without it only by training.
        model: the model ``loss_fn`` runs (needed with ``loss_fn``).
        lengths: optional per-sequence lengths (dataset order), so refresh batches pad little.
        seed: seeds the draws; every rank must use the same.

    Example:
        >>> loader = ImportanceLoader(DataLoader(ds, batch_size=32, collate_fn=pad), model.head)
        >>> for x, y in loader:
        ...     loss = loader.weigh(F.cross_entropy(model(x), y, reduction="none"))
        ...     optimizer.zero_grad(); loss.backward(); optimizer.step()
        ...     loader.step()
    """

    def __init__(
        self,
        dataloader: DataLoader,
        output_layer: nn.Linear,
        config: MiningConfig | None = None,
        *,
        loss_fn: PerSequenceLoss | None = None,
        model: nn.Module | None = None,
        lengths: Tensor | None = None,
        seed: int = 0,
    ):
        if not isinstance(dataloader, DataLoader):
            raise TypeError(f"ImportanceLoader wraps a torch DataLoader, got {type(dataloader).__name__}")
        if dataloader.batch_size is None:
            raise ValueError("ImportanceLoader needs the DataLoader's batch_size (it brings its own sampler)")
        if not hasattr(dataloader.dataset, "__getitem__"):
            raise TypeError("ImportanceLoader needs a map-style dataset (one with __getitem__ and __len__)")
        if (loss_fn is None) != (model is None):
            raise ValueError("refresh needs both loss_fn and model (or neither)")
        self.dataset = dataloader.dataset
        self.collate_fn = dataloader.collate_fn
        self.config = config or MiningConfig()
        self.output_layer = output_layer
        ctx = DistContext.current()
        self.sampler = ImportanceSampler(
            range(len(self.dataset)), dataloader.batch_size, self.config.smoothing, seed=seed
        )
        kept = {name: getattr(dataloader, name) for name in _KEPT}
        if dataloader.num_workers > 0:
            kept["prefetch_factor"] = dataloader.prefetch_factor
        self._in_flight: deque[tuple[Tensor, Tensor]] = deque()  # drawn, still with the workers
        self._loader = DataLoader(
            WeightedDataset(self.dataset),
            batch_sampler=_LoggedDraws(self.sampler, self._in_flight),
            collate_fn=weighted_collate(self.collate_fn),
            **kept,
        )
        self.norms = OutputLayerNorms(output_layer)
        score_fn = None
        if loss_fn is not None:
            device = next(output_layer.parameters()).device
            scorer = output_layer_scorer(
                model, output_layer, loss_fn, lambda i: to_device(self.fetch(i), device)
            )

            def score_fn(index: Tensor) -> Tensor:
                with self.norms.paused():
                    return scorer(index)

        self.miner = Miner(self.sampler, self.config, score_fn, lengths, ctx)
        self.ctx = ctx
        self.steps = 0
        self.index: Tensor | None = None  # the batch being trained: its dataset indices
        self.weight: Tensor | None = None  # and its sampling weights 1 / (N p)
        self._drawn: deque[tuple[Tensor, Tensor]] = deque()  # drawn, not yet begun
        self._replay: list[tuple[Tensor, Tensor]] = []  # drawn before a checkpoint, not trained
        self._reduction = "mean"
        # Trainers that fetch ahead (Lightning) call begin_batch() themselves.
        self.fetches_ahead = False

    def __len__(self) -> int:
        return len(self.sampler)

    def fetch(self, index: Tensor) -> Any:
        """The batch of these dataset indices, collated as your loader would."""
        return self.collate_fn([self.dataset[i] for i in index.tolist()])

    def __iter__(self) -> Iterator[Any]:
        self._drawn.clear()
        self._in_flight.clear()
        replay, self._replay = self._replay, []
        for index, weight in replay:  # batches drawn before a checkpoint, exactly as drawn
            yield self._arrived(self.fetch(index), index, weight)
        for batch, index, weight in self._loader:
            self._in_flight.popleft()  # batches arrive in the order they were drawn
            yield self._arrived(batch, index, weight)

    def _arrived(self, batch: Any, index: Tensor, weight: Tensor) -> Any:
        self._drawn.append((index, weight))
        if not self.fetches_ahead:
            self.begin_batch()
        return batch

    def begin_batch(self) -> None:
        """Make the oldest fetched batch the one being trained (called by fetch-ahead trainers)."""
        if not self._drawn:
            raise RuntimeError("begin_batch(): no batch has been fetched")
        self.index, self.weight = self._drawn.popleft()

    # -- per step --------------------------------------------------------------------------
    def weigh(self, per_sequence_loss: Tensor, reduction: str = "mean") -> Tensor:
        """The loss to backpropagate: each sequence's loss times its weight, averaged (or summed)."""
        if self.weight is None:
            raise RuntimeError("weigh() before a batch: iterate the loader first")
        if per_sequence_loss.dim() != 1 or len(per_sequence_loss) != len(self.weight):
            raise ValueError(
                f"weigh() needs one loss per sequence ({len(self.weight)}), got shape "
                f"{tuple(per_sequence_loss.shape)}: compute the loss with reduction='none'"
            )
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self._reduction = reduction
        weighted = self.weight.to(per_sequence_loss) * per_sequence_loss
        return weighted.mean() if reduction == "mean" else weighted.sum()

    def step(self, batch_grad_sq: float | None = None, read_grad: bool = True) -> None:
        """After the backward pass: record this batch's factors, then refresh and switch.

        The noise scale reads the output layer's gradient as it is now (before ``zero_grad``;
        after clipping, if you clip); pass ``batch_grad_sq`` yourself, or ``read_grad=False``
        when ``.grad`` is not this batch's own (gradient accumulation).
        """
        if self.index is None:
            raise RuntimeError("step() before a batch: iterate the loader first")
        if batch_grad_sq is None and read_grad:
            grads = [p.grad for p in self.output_layer.parameters() if p.grad is not None]
            batch_grad_sq = float(sum(g.pow(2).sum() for g in grads)) if grads else None
        weight, reduction = self.weight, self._reduction
        self.miner.harvest(
            self.index,
            lambda k: self.norms.compute(weight, reduction, count=k),
            self.steps,
            weight,
            batch_grad_sq,
        )
        self.miner.after_step(self.steps)
        self.steps += 1

    @property
    def active(self) -> bool:
        """Whether importance sampling is on now (the switch may keep it uniform)."""
        return self.sampler.active

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Sampler, miner, step count and the batches drawn but not yet trained (every rank's).

        Those batches (fetched ahead by the trainer or the loader's workers) are trained first
        on resume, as they were drawn; with ``num_workers=0`` the run then continues bit-exactly.
        """
        pending = list(self._drawn) + list(self._in_flight)
        state = {
            "sampler": self.sampler.state_dict(),
            "miner": self.miner.state_dict(),
            "steps": self.steps,
            "pending": self.ctx.gather_object(pending),  # collective under DDP: all ranks save
        }
        return _weights_only_safe(state)

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next batches are the ones drawn before the checkpoint, then new draws."""
        state = _from_weights_only_safe(state)
        pending = state["pending"]
        if len(pending) != self.ctx.world:
            raise ValueError(
                f"this state was saved by {len(pending)} process(es), this run has {self.ctx.world}"
            )
        self.sampler.load_state_dict(state["sampler"])
        self.miner.load_state_dict(state["miner"])
        self.steps = state["steps"]
        self._replay = [(torch.as_tensor(i), torch.as_tensor(w)) for i, w in pending[self.ctx.rank]]


class _LoggedDraws(torch.utils.data.Sampler):
    """The sampler's batches, each also logged until it arrives: a checkpoint must know what
    the workers hold, or those draws would be lost on resume."""

    def __init__(self, sampler: ImportanceSampler, log: deque):
        self.sampler, self.log = sampler, log

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, float]]]:
        for pairs in self.sampler:
            index, weight = zip(*pairs, strict=True)
            self.log.append((torch.tensor(index), torch.tensor(weight)))
            yield pairs


# Checkpoints (Lightning's among them) load with torch.load(weights_only=True), which refuses
# numpy objects: arrays travel as tensors in a marked dict, numpy scalars as Python numbers.
_ARRAY = "__seqis_ndarray__"


def _weights_only_safe(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {_ARRAY: torch.from_numpy(obj.copy())}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _weights_only_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_weights_only_safe(v) for v in obj)
    return obj


def _from_weights_only_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_ARRAY}:
            return obj[_ARRAY].numpy()
        return {k: _from_weights_only_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_from_weights_only_safe(v) for v in obj)
    return obj
