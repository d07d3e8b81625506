"""The whole method in your own loop: wrap your DataLoader, weigh the loss, call ``step()``.

:class:`ImportanceLoader` takes the ``DataLoader`` you already have (its dataset, batch
size, ``collate_fn``, workers) and the model's output ``nn.Linear``. Iterating it yields
your batches unchanged; behind them it draws by importance, hooks the output layer for
the factors (any loss), and runs the miner (harvest, refresh, switch). Three lines change:

    loader = seqis.ImportanceLoader(loader, model.head)       # was: loader = DataLoader(...)
    loss = loader.weigh(per_sequence_loss)                      # was: loss = per_sequence_loss.mean()
    loader.step()                                               # new: after backward (and optimizer.step)

Under DDP (``torchrun``) it joins the initialised process group: one importance
distribution over all N sequences, each rank its slice of every global batch. The sampler
and miner come from :func:`seqis.training.wiring.sampling_for`, as in ``seqis train``: every
:class:`MiningConfig` setting is honoured or refused with a one-line error.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler

from seqis.distributed import DistContext
from seqis.importance.config import MiningConfig
from seqis.importance.factors import FACTORS
from seqis.importance.hooks import BatchGradient, LossCoefficients, OutputLayerNorms
from seqis.importance.scoring import PerSequenceLoss, output_layer_scorer, to_device
from seqis.options import check, name
from seqis.plan import Plan
from seqis.sampling.loader import RankSlice, WeightedDataset, weighted_collate
from seqis.training.checkpoint import decode_state, encode_state
from seqis.training.wiring import sampling_for

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
        config: sampler and mining settings; the default is importance sampling with the switch.
        loss_fn: optional ``(model, batch) -> per-sequence losses``; with it (and ``model``)
            stale factors are refreshed by forward-only passes, without it only by training.
        model: the model ``loss_fn`` runs (needed with ``loss_fn``).
        lengths: optional per-sequence lengths (dataset order), so refresh batches pad little;
            what ``batching="bucket"`` sorts each pool of draws by; the costs of ``cost_aware``
            draws.
        seed: seeds the draws; every rank must use the same.
        total_steps: the planned steps, for ``anneal`` and pruning's ``prune_anneal``.

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
        total_steps: int | None = None,
    ):
        _check_loader(dataloader, loss_fn, model)
        self.config = config or MiningConfig()
        _check_config(self.config)
        self.output_layer = output_layer
        self.factor = FACTORS[self.config.factor]
        self.norms = OutputLayerNorms(output_layer, self.factor.from_hooks)
        self.grad_sq = BatchGradient(output_layer)
        self.coefficients = LossCoefficients()
        self.ctx = DistContext.current()
        self._source(dataloader)
        score_fn = self._scorer(loss_fn, model) if loss_fn is not None else None
        global_batch = dataloader.batch_size * self.ctx.world
        self.sampler, self.miner = sampling_for(
            self.config,
            torch.arange(len(self.dataset)),
            global_batch,
            seed=seed,
            score_fn=score_fn,
            lengths=lengths,
            ctx=self.ctx,
            plan=Plan(len(self.dataset), global_batch, steps=total_steps),
            grad_batch_size=dataloader.batch_size,  # .grad averages this rank's slice
        )
        self._in_flight: deque[tuple[Tensor, Tensor, bool]] = deque()  # drawn, still with the workers
        self._loader = self._weighted_loader()
        self.steps = 0
        self.index: Tensor | None = None  # the batch being trained: its dataset indices
        self.weight: Tensor | None = None  # and its sampling weights 1 / (N p)
        self._drawn_active = False  # whether that batch was an importance draw
        self._drawn: deque[tuple[Tensor, Tensor, bool]] = deque()  # drawn, not yet begun
        self._replay: list[tuple[Tensor, Tensor, bool]] = []  # drawn before a checkpoint, not trained
        self._weighed = self._stepped = False  # for the batch being trained
        self._warned: set[str] = set()  # each misuse is said once
        self._layer_checked = False
        # Trainers that fetch ahead (Lightning) call begin_batch() themselves.
        self.fetches_ahead = False

    def _source(self, dataloader: DataLoader) -> None:
        """Take the dataset, collate function and worker settings of ``dataloader``."""
        self.dataset = dataloader.dataset
        self.collate_fn = dataloader.collate_fn
        self._kept = {name: getattr(dataloader, name) for name in _KEPT}
        if dataloader.num_workers > 0:
            self._kept["prefetch_factor"] = dataloader.prefetch_factor

    def _weighted_loader(self) -> DataLoader:
        return DataLoader(
            WeightedDataset(self.dataset),
            batch_sampler=_LoggedDraws(
                self.sampler, RankSlice(self.sampler, self.ctx.world, self.ctx.rank), self._in_flight
            ),
            collate_fn=weighted_collate(self.collate_fn),
            **self._kept,
        )

    def _scorer(self, loss_fn: PerSequenceLoss, model: nn.Module):
        device = next(self.output_layer.parameters()).device

        def fetch(index: Tensor) -> Any:
            return to_device(self.fetch(index), device)

        scorer = output_layer_scorer(model, self.output_layer, loss_fn, fetch, self.factor.from_hooks)

        def score_fn(index: Tensor) -> Tensor:
            with self.norms.paused(), self.grad_sq.paused():
                return scorer(index)

        return score_fn

    def rebind(self, dataloader: DataLoader) -> None:
        """Draw from a reloaded ``DataLoader`` of the same dataset size, keeping every factor.

        Lightning's ``reload_dataloaders_every_n_epochs`` builds a new loader each time; the
        sampler, the miner and the hooks stay, so the switch and the factors carry on.
        """
        _check_loader(dataloader, None, None)
        check(
            len(dataloader.dataset) == len(self.dataset),
            f"the reloaded dataset has {len(dataloader.dataset)} sequences, not {len(self.dataset)}: seqis "
            "keeps a factor per sequence, so the training set may not change size between epochs",
        )
        self._source(dataloader)
        self._loader = self._weighted_loader()

    def __len__(self) -> int:
        return len(self.sampler)

    def fetch(self, index: Tensor) -> Any:
        """The batch of these dataset indices, collated as your loader would."""
        return self.collate_fn([self.dataset[i] for i in index.tolist()])

    def __iter__(self) -> Iterator[Any]:
        self._drawn.clear()
        self._in_flight.clear()
        replay, self._replay = self._replay, []
        for drawn in replay:  # batches drawn before a checkpoint, exactly as drawn
            yield self._arrived(self.fetch(drawn[0]), drawn)
        for batch, _, _ in self._loader:
            drawn = self._in_flight.popleft()  # batches arrive in the order they were drawn
            yield self._arrived(batch, drawn)

    def _arrived(self, batch: Any, drawn: tuple[Tensor, Tensor, bool]) -> Any:
        self._drawn.append(drawn)
        if not self.fetches_ahead:
            self.begin_batch()
        return batch

    def begin_batch(self) -> None:
        """Make the oldest fetched batch the one being trained (called by fetch-ahead trainers)."""
        if not self._drawn:
            raise RuntimeError("begin_batch(): no batch has been fetched")
        if self.index is not None and not self._stepped:
            self._warn_once(
                "step",
                "a batch went by without loader.step(): its factors were not recorded and the switch "
                "cannot decide; call loader.step() after every backward (every micro-batch under "
                "gradient accumulation)",
            )
        self.index, self.weight, self._drawn_active = self._drawn.popleft()
        self._weighed = self._stepped = False
        self.norms.reset()
        self.grad_sq.reset()
        self.coefficients.reset()

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
        if not self._layer_checked and per_sequence_loss.requires_grad:
            self._check_layer(per_sequence_loss)
        self._weighed = True
        self.coefficients.watch(per_sequence_loss)  # what each loss weighs in what is backpropagated
        weighted = self.weight.to(per_sequence_loss) * per_sequence_loss
        return weighted.mean() if reduction == "mean" else weighted.sum()

    def _check_layer(self, per_sequence_loss: Tensor) -> None:
        """Once: the hooked layer must be the one the loss reads (not, say, the input layer)."""
        self._layer_checked = True
        if not self.norms.read_by(per_sequence_loss):
            raise ValueError(
                "the loss does not read the layer ImportanceLoader hooks (another trained layer lies "
                "between them): pass the model's output nn.Linear, the one whose outputs the loss takes"
            )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"ImportanceLoader: {message}", RuntimeWarning, stacklevel=3)

    def step(self, batch_grad_sq: float | Tensor | None = None, read_grad: bool = True) -> None:
        """After each backward pass (each micro-batch under gradient accumulation): record this
        batch's factors, then refresh and switch.

        The noise scale reads the output layer's gradient as this backward pass left it, before
        any clipping (hooks; a gradient mixed with an earlier micro-batch's is skipped); pass
        ``batch_grad_sq`` yourself (the squared norm of the mean-loss gradient), or
        ``read_grad=False`` to skip it.
        """
        if self.index is None:
            raise RuntimeError("step() before a batch: iterate the loader first")
        if self._drawn_active and not self._weighed:
            self._warn_once(
                "weigh",
                "importance sampling is on, and this batch's loss was not weighed: its gradient is "
                "biased; compute the loss with loader.weigh(per_sequence_loss)",
            )
        coefficients, weight = self.coefficients.value, self.weight
        if batch_grad_sq is None and read_grad:
            batch_grad_sq = self._mean_loss_grad_sq(coefficients)
        if self.miner is not None:
            self.miner.harvest(
                self.index,
                lambda k: self.norms.compute(weight, count=k, coefficients=coefficients),
                self.steps,
                weight,
                batch_grad_sq,
                drawn_active=self._drawn_active,
            )
            self.miner.after_step(self.steps)
        self._stepped = True
        self.steps += 1

    def _mean_loss_grad_sq(self, coefficients: Tensor | None) -> Tensor | None:
        """|G_b|^2 of the weighted mean loss: the layer's gradient rescaled from what the loop
        backpropagated (a sum, a 1/k for accumulation: coefficients c_i = kappa w_i / B)."""
        grad_sq = self.grad_sq.value()
        if grad_sq is None or coefficients is None:
            return grad_sq
        weight = self.weight.to(coefficients)
        kappa = (coefficients * len(weight) / weight).mean()
        return grad_sq / kappa.to(grad_sq).pow(2)

    def observe_validation(
        self, val_loss: float, train_loss: float | None = None, every_rank: bool = False
    ) -> None:
        """After each validation: your validation loss and (for the gap) the training loss of the
        same model. When importance sampling's faster fitting stops paying on validation, the
        loader draws uniformly for the rest of the run (``MiningConfig.val_patience``).

        Under DDP you may call it on rank 0 alone: the figures reach every rank at the switch's
        next decision. Pass ``every_rank=True`` when every rank calls it after the same step (the
        ranks then exchange at once, as a single process would judge)."""
        if self.miner is not None:
            train = None if train_loss is None else float(train_loss)
            self.miner.observe_validation(self.steps, float(val_loss), train, every_rank)

    @property
    def active(self) -> bool:
        """Whether importance sampling is on now (the switch may keep it uniform)."""
        return self.sampler.active

    def close(self) -> None:
        """Take seqis's hooks off the output layer."""
        self.norms.remove()
        self.grad_sq.remove()

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Sampler, miner, step count and the batches drawn but not yet trained (every rank's).

        Those batches (fetched ahead by the trainer or the loader's workers) are trained first
        on resume, as they were drawn; with ``num_workers=0`` the run then continues bit-exactly.
        """
        pending = list(self._drawn) + list(self._in_flight)
        state = {
            "sampler": self.sampler.state_dict(),
            "miner": self.miner.state_dict() if self.miner is not None else None,
            "steps": self.steps,
            "pending": self.ctx.gather_object(pending),  # collective under DDP: all ranks save
        }
        return encode_state(state)

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next batches are the ones drawn before the checkpoint, then new draws."""
        state = decode_state(state)
        pending = state["pending"]
        if len(pending) != self.ctx.world:
            raise ValueError(
                f"this state was saved by {len(pending)} process(es), this run has {self.ctx.world}"
            )
        self.sampler.load_state_dict(state["sampler"])
        if self.miner is not None:
            self.miner.load_state_dict(state["miner"])
        self.steps = state["steps"]
        self._replay = [
            (torch.as_tensor(i), torch.as_tensor(w), bool(a)) for i, w, a in pending[self.ctx.rank]
        ]


def _check_loader(dataloader: DataLoader, loss_fn: Any, model: Any) -> None:
    """What the loader's own sampling would replace is refused, never silently dropped."""
    if not isinstance(dataloader, DataLoader):
        raise TypeError(f"ImportanceLoader wraps a torch DataLoader, got {type(dataloader).__name__}")
    if isinstance(dataloader.dataset, IterableDataset) or not hasattr(dataloader.dataset, "__getitem__"):
        raise TypeError(
            "ImportanceLoader needs a map-style dataset (one with __getitem__ and __len__): it draws "
            f"sequences by index, and {type(dataloader.dataset).__name__} is iterable only"
        )
    if dataloader.batch_size is None:
        raise ValueError("ImportanceLoader needs the DataLoader's batch_size, not a batch_sampler")
    if type(dataloader.sampler) is SequentialSampler:  # DataLoader's default: no intent to keep
        warnings.warn(
            "ImportanceLoader: the DataLoader's order (shuffle=False) is replaced by seqis's own draws: "
            "shuffled epochs while importance sampling is off, importance draws while it is on",
            RuntimeWarning,
            stacklevel=3,
        )
    elif type(dataloader.sampler) is not RandomSampler:
        raise ValueError(
            f"ImportanceLoader draws its own batches, so your {type(dataloader.sampler).__name__} would be "
            "replaced: build the DataLoader with shuffle=True and no sampler"
        )
    if (loss_fn is None) != (model is None):
        raise ValueError("refresh needs both loss_fn and model (or neither)")


def _check_config(config: MiningConfig) -> None:
    """What a loop seqis does not own cannot be honoured here: refused, not ignored."""
    hooked = [f.name for f in FACTORS.values() if f.from_hooks is not None]
    check(
        FACTORS[config.factor].from_hooks is not None,
        f"ImportanceLoader reads factors off your output layer's hooks ({', '.join(hooked)}, for any "
        f"loss); the {config.factor} factor needs seqis train",
    )
    check(
        not config.scales_lr,  # "auto" is none here: the learning rate is the loop's
        f"{name(config, 'lr_scale')} changes the learning rate, which your loop (or scheduler) owns: "
        "refused here",
    )


class _LoggedDraws(torch.utils.data.Sampler):
    """This rank's slices of the sampler's batches, each also logged (with whether it was an
    importance draw) until it arrives: a checkpoint must know what the workers hold, or those
    draws would be lost on resume."""

    def __init__(self, sampler: Any, slices: RankSlice, log: deque):
        self.sampler, self.slices, self.log = sampler, slices, log

    def __len__(self) -> int:
        return len(self.slices)

    def __iter__(self) -> Iterator[list[tuple[int, float]]]:
        for pairs in self.slices:
            index, weight = zip(*pairs, strict=True)
            self.log.append((torch.tensor(index), torch.tensor(weight), self.sampler.active))
            yield pairs
