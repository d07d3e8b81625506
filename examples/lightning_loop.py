"""Importance sampling in a PyTorch Lightning script: the lines that change are marked (*).

The same variable-length JapaneseVowels task as own_loop.py, as a LightningModule with a
custom padding collate_fn and label smoothing. The callback swaps in seqis's loader, reads
the factors from hooks on ``head``, and keeps its state in Lightning checkpoints.

Run: python examples/lightning_loop.py [--steps 300] [--devices 2]   (--devices 2: DDP on CPU)
"""

import argparse

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

import seqis
from seqis.lightning import ImportanceSampling, weighted_mean  # (*)


class Recordings(Dataset):
    def __init__(self, data, index):
        self.sequences = [data.inputs[i, : data.lengths[i]] for i in index]
        self.labels = [data.targets[i] for i in index]

    def __len__(self):
        return len(self.sequences)

    def __getitem__(self, i):
        return self.sequences[i], self.labels[i]


def pad_collate(items):
    sequences, labels = zip(*items, strict=True)
    lengths = torch.tensor([len(s) for s in sequences])
    return pad_sequence(list(sequences), batch_first=True), lengths, torch.stack(list(labels))


class Vowels(pl.LightningDataModule):
    """The loaders come from train_dataloader(): the callback wraps what it returns."""

    def __init__(self, train, val):
        super().__init__()
        self.train, self.val = train, val

    def train_dataloader(self):
        return self.train

    def val_dataloader(self):
        return self.val


class VowelClassifier(pl.LightningModule):
    def __init__(self, features, classes, label_smoothing=0.1, hidden=64, embed=32):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.encoder = nn.Linear(features, embed)
        self.rnn = nn.GRU(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x, lengths):
        states, _ = self.rnn(self.encoder(x))
        return self.head(states[torch.arange(len(x)), lengths - 1])

    def training_step(self, batch, batch_idx):
        x, lengths, y = batch
        per_seq = F.cross_entropy(self(x, lengths), y, reduction="none", label_smoothing=self.label_smoothing)
        loss = weighted_mean(self, per_seq)  # (*) was: per_seq.mean()
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, lengths, y = batch
        self.log("val_loss", F.cross_entropy(self(x, lengths), y), batch_size=len(y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def main(steps=300, devices=1, out="runs/lightning", resume=None, always_on=False):
    pl.seed_everything(0, verbose=False)
    data = seqis.load_data("ucr:JapaneseVowels")
    train = DataLoader(
        Recordings(data, data.train_idx.tolist()), batch_size=32, shuffle=True, collate_fn=pad_collate
    )
    val = DataLoader(Recordings(data, data.val_idx.tolist()), batch_size=256, collate_fn=pad_collate)
    model = VowelClassifier(data.input_size, data.num_outputs)
    importance = ImportanceSampling("head", seqis.MiningConfig(always_on=always_on))  # (*)
    trainer = pl.Trainer(
        max_steps=steps,
        callbacks=[importance],  # (*)
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        default_root_dir=out,
        val_check_interval=100,
        check_val_every_n_epoch=None,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
    )
    trainer.fit(model, datamodule=Vowels(train, val), ckpt_path=resume)
    val_loss = trainer.validate(model, val, verbose=False)[0]["val_loss"]
    if trainer.is_global_zero:
        print(f"validation loss after {trainer.global_step} steps: {val_loss:.4f}, "
              f"importance sampling {'on' if importance.loader.active else 'off'}")  # fmt: skip
    if torch.distributed.is_initialized():
        # Lightning leaves its process group open; at interpreter exit gloo's worker threads
        # then sometimes abort the process ("terminate called without an active exception").
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return {"val_loss": val_loss, "trainer": trainer, "importance": importance}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--devices", type=int, default=1, help="CPU processes (DDP when more than 1)")
    parser.add_argument("--out", default="runs/lightning")
    args = parser.parse_args()
    main(args.steps, args.devices, args.out)
