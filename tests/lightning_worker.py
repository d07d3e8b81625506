"""Run examples/lightning_loop.py under Lightning's DDP on CPU and record what each rank drew."""

import json
import runpy
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

out = Path(sys.argv[1])
example = runpy.run_path(str(Path(__file__).parents[1] / "examples" / "lightning_loop.py"))


class RecordDraws(pl.Callback):
    def __init__(self):
        self.draws = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loader = next(c for c in trainer.callbacks if hasattr(c, "loader")).loader
        self.draws.append(loader.index.tolist())


record = RecordDraws()
original_trainer = pl.Trainer


def trainer_with_recorder(*args, callbacks=(), **kwargs):
    return original_trainer(*args, callbacks=[*callbacks, record], **kwargs)


example["pl"].Trainer = trainer_with_recorder
result = example["main"](120, devices=2, out=str(out), always_on=True)
loader = result["importance"].loader
rank = result["trainer"].global_rank
sampler = loader.sampler
(out / f"rank{rank}.json").write_text(
    json.dumps(
        {
            "draws": record.draws,
            "world": loader.ctx.world,
            "active": loader.active,
            "factors_sha": float(torch.from_numpy(sampler.factors).nan_to_num(-1).sum()),
            "coverage": sampler.coverage,
            "val_loss": result["val_loss"],
        }
    )
)
