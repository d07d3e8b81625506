"""A NaN loss stops the run with a checkpoint of the last good state, or is skipped."""

import json

import pytest
import torch

from seqis.errors import SeqisError
from seqis.models.rnn import ModelConfig, RecurrentModel
from seqis.training import trainer
from seqis.training.checkpoint import load_latest
from seqis.training.trainer import TrainConfig, train


class PoisonedModel(RecurrentModel):
    """Returns a NaN loss on training forward passes 5 and 6 (counted from 1)."""

    calls = 0

    def forward(self, batch):
        out = super().forward(batch)
        if self.training and torch.is_grad_enabled():
            PoisonedModel.calls += 1
            if PoisonedModel.calls in (5, 6):
                out.loss = out.loss * float("nan")
        return out


@pytest.fixture
def poisoned(monkeypatch):
    PoisonedModel.calls = 0
    monkeypatch.setattr(trainer, "RecurrentModel", PoisonedModel)


def _config(tmp_path, **kw):
    return TrainConfig(
        data="digits:rows",
        steps=12,
        eval_every=4,
        out=str(tmp_path),
        progress=False,
        tensorboard=False,
        model=ModelConfig(hidden_size=8, num_layers=1, embed_size=8),
        **kw,
    ).with_sampler("fim")


def test_nan_loss_stops_with_last_good_checkpoint(tmp_path, poisoned):
    with pytest.raises(SeqisError, match="non-finite training loss at step 4"):
        train(_config(tmp_path))
    state, path = load_latest(tmp_path)
    assert state["run"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "summary.json").exists()  # nothing that looks like a result


def test_skip_nonfinite_counts_and_continues(tmp_path, poisoned):
    summary = train(_config(tmp_path, skip_nonfinite=True))
    assert summary["skipped_nonfinite_steps"] == 2 and summary["steps"] == 12
    assert json.loads((tmp_path / "summary.json").read_text())["final_val_loss"] < 10
