"""Recurrent language models and sequence classifiers that report per-sequence losses.

Importance sampling needs more than a batch-mean loss: it needs one loss per sequence
(to weight it by 1/(N p_i)) and the output layer's inputs and outputs (to compute
importance factors without a second pass). :class:`ModelOutput` carries all three.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqis.data.base import LM, Batch
from seqis.options import at_least, one_of, option, within

CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


@dataclass
class ModelOutput:
    """What one forward pass yields, with a time axis even for classification.

    ``logits`` ``(B, T, K)`` and ``hidden`` ``(B, T, H)`` are the output layer's outputs
    and inputs at the steps that have a target; ``targets`` and ``mask`` are ``(B, T)``.
    For classification ``T == 1`` (only the final real step has a target).
    ``loss`` is ``(B,)``: each sequence's mean loss over its own target steps.
    """

    logits: Tensor
    hidden: Tensor
    targets: Tensor
    mask: Tensor
    loss: Tensor

    def head(self, k: int) -> ModelOutput:
        """The first ``k`` sequences' outputs."""
        return ModelOutput(self.logits[:k], self.hidden[:k], self.targets[:k], self.mask[:k], self.loss[:k])


@dataclass
class ModelConfig:
    cell: str = option("lstm", "recurrent cell", flag="--model", choices=tuple(CELLS))
    hidden_size: int = option(256, "hidden units per layer", flag="--hidden")
    num_layers: int = option(2, "stacked recurrent layers", flag="--layers")
    dropout: float = option(0.0, "dropout between layers and before the output layer, in [0, 1)")
    embed_size: int = option(64, "token embedding size (token inputs)", flag="--embed")
    # Packed sequences: the RNN's work follows the real lengths, not the longest.
    pack: bool = option(
        False, "run the RNN over packed sequences, so a step's cost follows the lengths it holds"
    )

    def __post_init__(self) -> None:
        one_of(self, "cell", CELLS)
        for field_name in ("hidden_size", "num_layers", "embed_size"):
            at_least(self, field_name)
        within(self, "dropout", 0, 1, closed_high=False)


class RecurrentModel(nn.Module):
    """An RNN/GRU/LSTM body with an embedding (token ids) or linear (features) input layer.

    Example:
        >>> model = RecurrentModel("lm", input_size=100, num_outputs=100)
        >>> out = model(data.batch(torch.arange(8)))     # doctest: +SKIP
        >>> out.loss.shape                                 # one loss per sequence
        torch.Size([8])
    """

    def __init__(
        self,
        task: str,
        input_size: int,
        num_outputs: int,
        config: ModelConfig | None = None,
        tokens: bool | None = None,
    ):
        super().__init__()
        cfg = config or ModelConfig()
        if cfg.cell not in CELLS:
            raise ValueError(f"unknown cell {cfg.cell!r}; choose from {', '.join(CELLS)}")
        self.task, self.config = task, cfg
        if task == LM if tokens is None else tokens:
            self.encoder: nn.Module = nn.Embedding(input_size, cfg.embed_size)
        else:
            self.encoder = nn.Linear(input_size, cfg.embed_size)
        self.rnn = CELLS[cfg.cell](
            cfg.embed_size,
            cfg.hidden_size,
            num_layers=cfg.num_layers,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden_size, num_outputs)

    def forward(self, batch: Batch) -> ModelOutput:
        states = self._run(self.encoder(batch.inputs), batch.lengths)
        states = self.drop(states)
        if self.task == LM:
            hidden, targets, mask = states, batch.targets, batch.mask
        else:
            # A unidirectional RNN's state at the last real step never sees the padding
            # after it (packing changes the work, not the result): gather that step and classify it.
            last = (batch.lengths - 1).clamp_min(0).to(states.device)
            hidden = states[torch.arange(len(states), device=states.device), last].unsqueeze(1)
            targets = batch.targets.unsqueeze(1)
            mask = torch.ones_like(targets, dtype=torch.bool)
        logits = self.head(hidden)
        loss = sequence_losses(logits, targets, mask)
        return ModelOutput(logits, hidden, targets, mask, loss)

    def _run(self, embedded: Tensor, lengths: Tensor) -> Tensor:
        """The RNN's states ``(B, T, H)``; zeros after each sequence's end when packed."""
        if not self.config.pack:
            return self.rnn(embedded)[0]
        packed = pack_padded_sequence(
            embedded, lengths.cpu().clamp_min(1), batch_first=True, enforce_sorted=False
        )
        states, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=embedded.shape[1])
        return states


def sequence_losses(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Per-sequence mean cross-entropy over real steps; padding never counts."""
    token = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    token = token.view(targets.shape) * mask
    return token.sum(1) / mask.sum(1).clamp_min(1)
