"""The Lightning callback with a real Trainer on CPU: training, exact resume, DDP semantics."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pl = pytest.importorskip("pytorch_lightning")

from seqis.lightning import ImportanceSampling, weighted_mean  # noqa: E402

HERE = Path(__file__).parent
EXAMPLE = HERE.parent / "examples" / "lightning_loop.py"


@pytest.fixture(scope="module")
def example():
    return runpy.run_path(str(EXAMPLE))


class _Data(pl.LightningDataModule):
    def __init__(self, loader):
        super().__init__()
        self.loader = loader

    def train_dataloader(self):
        return self.loader


def _quiet_trainer(tmp_path, max_steps, callbacks, **kwargs):
    """A CPU Trainer without logger, checkpoints, progress bar or summary."""
    return pl.Trainer(
        max_steps=max_steps,
        callbacks=callbacks,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


def test_callback_trains_and_switches_on(example, tmp_path):
    result = example["main"](120, out=str(tmp_path / "run"))
    loader = result["importance"].loader
    assert loader.steps == 120 and loader.active and loader.miner.active_steps > 0
    assert result["val_loss"] < 0.5 * float(torch.log(torch.tensor(9.0)))


def test_resume_from_a_lightning_checkpoint_continues_the_same_draws(example, tmp_path):
    straight = example["main"](160, out=str(tmp_path / "straight"))
    example["main"](100, out=str(tmp_path / "split"))  # 100 steps: mid-epoch (18 batches an epoch)
    (checkpoint,) = (tmp_path / "split" / "checkpoints").glob("*step=100.ckpt")
    resumed = example["main"](160, out=str(tmp_path / "split"), resume=str(checkpoint))
    assert resumed["importance"].loader.steps == 160
    assert resumed["val_loss"] == straight["val_loss"]  # measured: bit-identical


def test_weighted_mean_without_the_callback_is_the_plain_mean(example):
    module = example["VowelClassifier"](12, 9)
    losses = torch.tensor([1.0, 2.0, 6.0])
    assert weighted_mean(module, losses) == pytest.approx(3.0)
    assert isinstance(ImportanceSampling("head"), pl.Callback)


def test_ddp_ranks_train_disjoint_slices_of_one_global_draw(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(HERE / "lightning_worker.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=HERE.parent,
    )
    assert proc.returncode == 0, proc.stderr[-8000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["active"] for r in ranks)
    assert len(ranks[0]["draws"]) == len(ranks[1]["draws"]) == 120
    # uniform warm-up: one global permutation sliced, so no sequence on both ranks
    warmup = zip(ranks[0]["draws"][:50], ranks[1]["draws"][:50], strict=True)
    assert all(not set(a) & set(b) for a, b in warmup)
    # one importance distribution everywhere: identical factors and coverage on both ranks
    assert ranks[0]["factors_sha"] == ranks[1]["factors_sha"] and ranks[0]["coverage"] == ranks[1]["coverage"]
    assert ranks[0]["val_loss"] == ranks[1]["val_loss"]


def test_loader_from_the_modules_own_train_dataloader_hook(example, tmp_path):
    import seqis

    data = seqis.load_data("ucr:JapaneseVowels")

    class WithLoader(example["VowelClassifier"]):
        def train_dataloader(self):
            dataset = example["Recordings"](data, data.train_idx.tolist())
            return torch.utils.data.DataLoader(dataset, batch_size=16, collate_fn=example["pad_collate"])

    importance = ImportanceSampling("head", seqis.MiningConfig(always_on=True))
    trainer = _quiet_trainer(tmp_path, 60, [importance])
    trainer.fit(WithLoader(data.input_size, data.num_outputs))
    assert importance.loader.steps == 60 and importance.loader.active
    assert importance.loader.sampler.batch_size == 16


class _Draws(pl.Callback):
    """What each training step got: a fingerprint of every sequence in its batch."""

    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x, lengths, _ = batch
        self.batches.append([round(float(v), 4) for v in x.sum(dim=(1, 2))])


def _fit(example, tmp_path, steps, module=None, resume=None, config=None, **trainer_args):
    import seqis

    data = seqis.load_data("ucr:JapaneseVowels")
    loader = torch.utils.data.DataLoader(
        example["Recordings"](data, data.train_idx.tolist()), batch_size=16, collate_fn=example["pad_collate"]
    )
    pl.seed_everything(0, verbose=False)
    own_module = module is not None  # a module of its own brings its own train_dataloader
    module = module or example["VowelClassifier"](data.input_size, data.num_outputs)
    config = config or seqis.MiningConfig(warmup_steps=1000)
    importance, draws = ImportanceSampling("head", config), _Draws()
    every = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=15, save_top_k=-1)
    trainer = pl.Trainer(
        max_steps=steps,
        callbacks=[importance, draws, every],  # draws after the callback has begun the batch
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **trainer_args,
    )
    trainer.fit(module, datamodule=None if own_module else _Data(loader), ckpt_path=resume)
    return importance, draws.batches


def test_mid_epoch_resume_while_importance_sampling_is_off_draws_the_same_batches(example, tmp_path):
    # warm-up (IS off) all along; 15 steps is mid-epoch (17 batches an epoch): Lightning calls
    # set_epoch() on the loader's sampler after restoring it, which used to reset its cursor
    _, straight = _fit(example, tmp_path / "straight", 30)
    (checkpoint,) = (tmp_path / "straight").glob("*step=15.ckpt")
    importance, resumed = _fit(example, tmp_path / "resumed", 30, resume=str(checkpoint))
    assert not importance.loader.active and importance.loader.steps == 30
    assert resumed == straight[15:]


def test_reloaded_dataloaders_keep_the_miner_and_the_hooks(example, tmp_path):
    import seqis

    data = seqis.load_data("ucr:JapaneseVowels")

    class Reloading(example["VowelClassifier"]):
        def train_dataloader(self):
            dataset = example["Recordings"](data, data.train_idx.tolist())
            return torch.utils.data.DataLoader(dataset, batch_size=64, collate_fn=example["pad_collate"])

    module = Reloading(data.input_size, data.num_outputs)
    importance, _ = _fit(example, tmp_path, 24, module=module, reload_dataloaders_every_n_epochs=1)
    loader = importance.loader
    assert loader.steps == 24  # one loader across epochs: the miner counted every step
    assert len(module.head._forward_hooks) == 0  # taken off at the end, and never piled up
    assert module.head is loader.output_layer and len(loader.norms._handles) == 0


def test_a_users_own_scheduler_runs_unchanged_under_the_callback(example, tmp_path):
    """The callback never touches the optimizer: a per-step OneCycleLR gives the same rates."""
    import seqis

    data = seqis.load_data("ucr:JapaneseVowels")

    class Scheduled(example["VowelClassifier"]):
        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.parameters(), lr=0.01)
            schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=40)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    class Rates(pl.Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    def fit(callbacks):
        rates = Rates()
        dataset = example["Recordings"](data, data.train_idx.tolist())
        loader = torch.utils.data.DataLoader(dataset, batch_size=16, collate_fn=example["pad_collate"])
        pl.seed_everything(0, verbose=False)
        trainer = _quiet_trainer(tmp_path, 40, [*callbacks, rates])
        trainer.fit(Scheduled(data.input_size, data.num_outputs), datamodule=_Data(loader))
        return rates.seen

    importance = ImportanceSampling("head", seqis.MiningConfig(always_on=True, warmup_steps=8, check_every=4))
    with_callback, plain = fit([importance]), fit([])
    assert importance.loader.steps == 40, importance.loader.steps
    assert importance.loader.miner.active_steps > 0 and len(with_callback) == 40
    assert with_callback == pytest.approx(plain) and max(plain) == pytest.approx(0.01, rel=0.05)


def test_planned_steps_count_batches_under_gradient_accumulation(example, tmp_path):
    """max_steps counts optimizer steps; the loader's anneal shares count batches."""
    import seqis

    config = seqis.MiningConfig(sampler="prune", prune_anneal=0.25)
    importance, _ = _fit(example, tmp_path, 10, accumulate_grad_batches=3, config=config)
    assert importance.loader.sampler.total_steps == 30 and importance.loader.steps == 30


def test_a_modules_own_importance_loader_is_driven_by_the_callback(example, tmp_path):
    import seqis

    data = seqis.load_data("ucr:JapaneseVowels")

    class OwnLoader(example["VowelClassifier"]):
        def train_dataloader(self):
            dataset = example["Recordings"](data, data.train_idx.tolist())
            plain = torch.utils.data.DataLoader(dataset, batch_size=16, collate_fn=example["pad_collate"])
            return seqis.ImportanceLoader(plain, self.head, seqis.MiningConfig(always_on=True))

    importance = ImportanceSampling("head")
    trainer = _quiet_trainer(tmp_path, 60, [importance])
    trainer.fit(OwnLoader(data.input_size, data.num_outputs))
    assert importance.loader is not None and importance.loader.steps == 60 and importance.loader.active


def test_train_dataloaders_passed_to_fit_is_refused_and_nothing_stays_patched(example, tmp_path):
    import seqis

    data = seqis.load_data("ucr:JapaneseVowels")
    loader = torch.utils.data.DataLoader(
        example["Recordings"](data, data.train_idx.tolist()), batch_size=16, collate_fn=example["pad_collate"]
    )
    module = example["VowelClassifier"](data.input_size, data.num_outputs)
    trainer = _quiet_trainer(tmp_path, 5, [ImportanceSampling("head")])
    with pytest.raises(RuntimeError, match="train_dataloader"):
        trainer.fit(module, train_dataloaders=loader)
    assert "train_dataloader" not in vars(module) and trainer.global_step == 0
    assert len(module.head._forward_hooks) == 0


def test_weighted_mean_with_the_callback_outside_fit_and_public_trainer():
    module = pl.LightningModule()
    losses = torch.tensor([1.0, 3.0])
    assert weighted_mean(module, losses) == pytest.approx(2.0)  # no trainer attached


def test_an_importance_loader_handed_to_fit_is_driven_by_the_callback(example, tmp_path):
    import seqis

    data = seqis.load_data("ucr:JapaneseVowels")
    loader = torch.utils.data.DataLoader(
        example["Recordings"](data, data.train_idx.tolist()), batch_size=16, collate_fn=example["pad_collate"]
    )
    module = example["VowelClassifier"](data.input_size, data.num_outputs)
    importance = ImportanceSampling("head")  # the loader's own settings stand
    config = seqis.MiningConfig(always_on=True, warmup_steps=4, check_every=4)
    trainer = _quiet_trainer(tmp_path, 12, [importance])
    trainer.fit(module, train_dataloaders=seqis.ImportanceLoader(loader, module.head, config))
    assert importance.loader.steps == 12 and importance.loader.active


def test_the_callback_buckets_by_the_lengths_it_is_given(example, tmp_path):
    import seqis

    data = seqis.load_data("ucr:JapaneseVowels")
    train = data.train_idx.tolist()

    class WithLoader(example["VowelClassifier"]):
        def train_dataloader(self):
            dataset = example["Recordings"](data, train)
            return torch.utils.data.DataLoader(
                dataset, batch_size=16, shuffle=True, collate_fn=example["pad_collate"]
            )

    spreads = []

    class Spread(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            spreads.append(int(batch[1].max() - batch[1].min()))

    config = seqis.MiningConfig(batching="bucket", bucket_pool=8)
    importance = ImportanceSampling("head", config, lengths=torch.as_tensor(data.lengths)[train])
    trainer = _quiet_trainer(tmp_path, 40, [importance, Spread()])
    trainer.fit(WithLoader(data.input_size, data.num_outputs))
    assert importance.loader.steps == 40
    random_spread = int(data.lengths[train].max() - data.lengths[train].min())
    # sorted pools: a batch is a narrow band of lengths (an epoch's short batch is a random one)
    assert sorted(spreads)[len(spreads) // 2] < random_spread / 4
