"""PyTorch Lightning: importance sampling as a callback (``pip install seqis[lightning]``).

The callback swaps your training DataLoader for an :class:`~seqis.training.own_loop.ImportanceLoader`
(same dataset, batch size, ``collate_fn`` and workers; batches reach ``training_step``
unchanged), reads the factors from hooks on your output layer after each backward, and
keeps sampler and miner state in Lightning's checkpoints, so ``fit(ckpt_path=...)``
continues the same draws. Your ``training_step`` returns the weighted loss:

    from seqis.lightning import ImportanceSampling, weighted_mean

    def training_step(self, batch, batch_idx):
        x, y = batch
        return weighted_mean(self, F.cross_entropy(self(x), y, reduction="none"))

    trainer = L.Trainer(callbacks=[ImportanceSampling("head")])

Under ``strategy="ddp"`` every rank draws the same global batch and trains its slice; the
loader is not a ``DataLoader``, so Lightning does not replace its sampler.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from seqis.importance.mining import MiningConfig
from seqis.importance.scoring import PerSequenceLoss
from seqis.training.own_loop import ImportanceLoader

try:  # the standalone package first (seqis[lightning]), else the unified one
    import pytorch_lightning as pl
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import lightning.pytorch as pl
    except ImportError:
        raise ImportError("seqis.lightning needs PyTorch Lightning: pip install 'seqis[lightning]'") from None


class ImportanceSampling(pl.Callback):
    """Importance-sampled training for a LightningModule, with the miner's switch.

    Args:
        output_layer: the module's output ``nn.Linear``, or its name (``"head"``).
        config: mining settings; the defaults are the races'.
        loss_fn: optional ``(module, batch) -> per-sequence losses`` for forward-only refresh.
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
    ):
        self.output_layer, self.config, self.loss_fn, self.seed = output_layer, config, loss_fn, seed
        self.total_steps = total_steps
        self.monitor, self.train_monitor = monitor, train_monitor
        self.loader: ImportanceLoader | None = None
        self._source: Any = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.loader = None  # a new fit draws afresh (fit(ckpt_path=...) restores the state)
        layer = self.output_layer
        if isinstance(layer, str):
            layer = pl_module.get_submodule(layer)
        source = getattr(trainer.fit_loop, "_data_source", None)
        if source is None or not hasattr(source, "dataloader"):
            raise RuntimeError(f"seqis.lightning does not support this Lightning version ({pl.__version__})")
        request = source.dataloader

        def importance_dataloader() -> ImportanceLoader:
            loader = request()
            if isinstance(loader, ImportanceLoader):  # the module built its own: drive that one
                self.loader = loader
                loader.fetches_ahead = True
                return loader
            if self.loader is not None:  # reloaded (reload_dataloaders_every_n_epochs): keep all state
                self.loader.rebind(loader)
                return self.loader
            self.loader = ImportanceLoader(
                loader,
                layer,
                self.config,
                loss_fn=self.loss_fn,
                model=pl_module if self.loss_fn is not None else None,
                seed=self.seed,
                total_steps=self.total_steps or _planned_steps(trainer),
            )
            self.loader.fetches_ahead = True  # Lightning fetches the next batch before this one trains
            return self.loader

        # Lightning asks this source for the train loader; ours wraps whatever it returns.
        source.dataloader = importance_dataloader
        self._source = source

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._source is not None:
            del self._source.dataloader  # back to the class's own method
            self._source = None
        if self.loader is not None:
            self.loader.close()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ):
        self.loader.begin_batch()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Under gradient accumulation .grad sums several batches: no noise-scale reading then.
        self.loader.step(read_grad=trainer.accumulate_grad_batches == 1)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.loader is None or trainer.sanity_checking:
            return
        # Every rank calls in, a missing metric as NaN (the watch skips it): under DDP the
        # miner averages the figures over ranks, and a rank that stayed out would hang the rest.
        metrics = trainer.callback_metrics
        val = float(metrics.get(self.monitor, math.nan))
        train = metrics.get(self.train_monitor) if self.train_monitor else None
        self.loader.observe_validation(val, None if train is None else float(train))


def _planned_steps(trainer: pl.Trainer) -> int | None:
    """The planned *batches*: ``max_steps`` counts optimizer steps, each of which takes
    ``accumulate_grad_batches`` batches, and the loader (its anneal shares) counts batches."""
    if not trainer.max_steps or trainer.max_steps <= 0:
        return None
    return trainer.max_steps * trainer.accumulate_grad_batches


def weighted_mean(module: pl.LightningModule, per_sequence_loss: Tensor) -> Tensor:
    """The loss for ``training_step``: importance-weighted mean, or the plain mean without the callback."""
    trainer = getattr(module, "_trainer", None)
    callbacks = trainer.callbacks if trainer is not None else []
    for callback in callbacks:
        if isinstance(callback, ImportanceSampling) and callback.loader is not None and module.training:
            return callback.loader.weigh(per_sequence_loss)
    return per_sequence_loss.mean()
