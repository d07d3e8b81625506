"""PyTorch Lightning: importance sampling as a callback (``pip install seqis[lightning]``).

The callback wraps the ``train_dataloader()`` of your LightningModule (or of the
LightningDataModule given to ``fit``) so that the DataLoader it returns becomes an
:class:`~seqis.training.own_loop.ImportanceLoader` (same dataset, batch size, ``collate_fn``
and workers; batches reach ``training_step`` unchanged); it reads the factors from hooks on
your output layer after each backward, and keeps sampler and miner state in Lightning's
checkpoints, so ``fit(ckpt_path=...)`` continues the same draws. Your ``training_step``
returns the weighted loss:

    from seqis.lightning import ImportanceSampling, weighted_mean

    def training_step(self, batch, batch_idx):
        x, y = batch
        return weighted_mean(self, F.cross_entropy(self(x), y, reduction="none"))

    trainer = L.Trainer(callbacks=[ImportanceSampling("head")])

A loader handed to ``fit(train_dataloaders=...)`` is out of any callback's public reach: pass
``seqis.ImportanceLoader(loader, model.head)`` there instead (the callback drives it), or
return the loader from ``train_dataloader()``. Only Lightning's public hooks and attributes
are used. Under ``strategy="ddp"`` every rank draws the same global batch and trains its
slice; the loader is not a ``DataLoader``, so Lightning does not replace its sampler.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from torch import Tensor, nn

from seqis.importance.config import MiningConfig
from seqis.importance.scoring import PerSequenceLoss
from seqis.training.own_loop import ImportanceLoader

try:  # the standalone package first (seqis[lightning]), else the unified one
    import pytorch_lightning as pl
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import lightning.pytorch as pl
    except ImportError:
        raise ImportError("seqis.lightning needs PyTorch Lightning: pip install 'seqis[lightning]'") from None


_UNSET = object()


class ImportanceSampling(pl.Callback):
    """Importance-sampled training for a LightningModule, with the miner's switch.

    Args:
        output_layer: the module's output ``nn.Linear``, or its name (``"head"``).
        config: mining settings; the defaults are the races'.
        loss_fn: optional ``(module, batch) -> per-sequence losses`` for forward-only refresh
            (and ``MiningConfig.sweep``'s whole-store sweeps).
        lengths: optional per-sequence lengths (dataset order): refresh batches pad little, and
            ``MiningConfig.batching="bucket"`` and ``cost_aware`` need them.
        seed: seeds the draws.
        total_steps: the planned batches for ``anneal`` and ``prune_anneal`` (default: the
            trainer's ``max_steps`` times ``accumulate_grad_batches`` when it sets one).
        monitor: the logged validation loss the switch's validation watch reads after each
            validation (absent: the watch stays idle); ``train_monitor``, a logged training
            loss of the same model, for the train-validation gap.

    Example:
        >>> trainer = pl.Trainer(max_steps=1000, callbacks=[ImportanceSampling("head")])
        >>> trainer.fit(model)            # training_step returns weighted_mean(self, per_seq)
    """

    def __init__(
        self,
        output_layer: str | nn.Linear,
        config: MiningConfig | None = None,
        loss_fn: PerSequenceLoss | None = None,
        seed: int = 0,
        total_steps: int | None = None,
        monitor: str = "val_loss",
        train_monitor: str | None = None,
        lengths: Tensor | None = None,
    ):
        self.output_layer, self.config, self.loss_fn, self.seed = output_layer, config, loss_fn, seed
        self.lengths = lengths
        self.total_steps = total_steps
        self.monitor, self.train_monitor = monitor, train_monitor
        self.loader: ImportanceLoader | None = None
        self._patched: list[tuple[Any, Any]] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.loader = None  # a new fit draws afresh (fit(ckpt_path=...) restores the state)
        # Lightning asks the datamodule given to fit() for the loader, else the module. Both are
        # wrapped: ``trainer.datamodule`` may be left over from an earlier fit on this Trainer.
        owners = [pl_module] if trainer.datamodule is None else [pl_module, trainer.datamodule]
        for owner in owners:
            self._patched.append((owner, vars(owner).get("train_dataloader", _UNSET)))
            owner.train_dataloader = self._wrap(owner.train_dataloader, trainer, pl_module)

    def _wrap(self, request, trainer: pl.Trainer, pl_module: pl.LightningModule):
        """``train_dataloader`` returning an :class:`ImportanceLoader` around the user's loader."""

        @functools.wraps(request)  # Lightning's is_overridden() still sees the user's own method
        def train_dataloader():
            loader = request()
            if isinstance(loader, ImportanceLoader):  # the module built its own: drive that one
                return self._adopt(loader)
            if self.loader is not None:  # reloaded (reload_dataloaders_every_n_epochs): keep all state
                self.loader.rebind(loader)
                return self.loader
            layer = self.output_layer
            layer = pl_module.get_submodule(layer) if isinstance(layer, str) else layer
            return self._adopt(
                ImportanceLoader(
                    loader,
                    layer,
                    self.config,
                    loss_fn=self.loss_fn,
                    model=pl_module if self.loss_fn is not None else None,
                    lengths=self.lengths,
                    seed=self.seed,
                    total_steps=self.total_steps or _planned_steps(trainer),
                )
            )

        return train_dataloader

    def _adopt(self, loader: ImportanceLoader) -> ImportanceLoader:
        self.loader = loader
        loader.fetches_ahead = True  # Lightning fetches the next batch before this one trains
        return loader

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        if isinstance(loader, ImportanceLoader):
            if loader is not self.loader:  # handed to fit(train_dataloaders=...) by the user
                self._adopt(loader)
            return
        raise RuntimeError(
            "ImportanceSampling cannot reach a loader passed as trainer.fit(train_dataloaders=loader): "
            "pass seqis.ImportanceLoader(loader, model.head) there, or return the loader from "
            "train_dataloader() of your LightningModule or LightningDataModule"
        )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._unpatch()
        if self.loader is not None:
            self.loader.close()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.teardown(trainer, pl_module, "fit")  # Lightning calls no teardown() when fit() raises

    def _unpatch(self) -> None:
        while self._patched:
            owner, own = self._patched.pop()
            if own is _UNSET:
                del owner.train_dataloader  # back to the class's own method
            else:
                owner.train_dataloader = own

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ):
        self.loader.begin_batch()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Every micro-batch under gradient accumulation; the loader reads the noise scale's
        # gradient only where .grad held no earlier micro-batch's.
        self.loader.step()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.loader is None or trainer.sanity_checking:
            return
        # Every rank calls in after the same step, a missing metric as NaN (the watch skips it):
        # under DDP the ranks exchange their figures at once and judge their mean.
        metrics = trainer.callback_metrics
        val = float(metrics.get(self.monitor, math.nan))
        train = metrics.get(self.train_monitor) if self.train_monitor else None
        self.loader.observe_validation(val, None if train is None else float(train), every_rank=True)


def _planned_steps(trainer: pl.Trainer) -> int | None:
    """The planned *batches*: ``max_steps`` counts optimizer steps, each of which takes
    ``accumulate_grad_batches`` batches, and the loader (its anneal shares) counts batches."""
    if not trainer.max_steps or trainer.max_steps <= 0:
        return None
    return trainer.max_steps * trainer.accumulate_grad_batches


def weighted_mean(module: pl.LightningModule, per_sequence_loss: Tensor) -> Tensor:
    """The loss for ``training_step``: importance-weighted mean, or the plain mean without the callback."""
    try:
        trainer = module.trainer
    except RuntimeError:  # "<Module> is not attached to a `Trainer`."
        trainer = None
    # getattr: under Fabric, module.trainer is a shim that raises AttributeError for .callbacks
    callbacks = getattr(trainer, "callbacks", None) or []
    for callback in callbacks:
        if isinstance(callback, ImportanceSampling) and callback.loader is not None and module.training:
            return callback.loader.weigh(per_sequence_loss)
    return per_sequence_loss.mean()
