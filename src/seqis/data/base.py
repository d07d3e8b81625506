"""The in-memory sequence container shared by every data source.

All sequences of a dataset live in padded tensors, so gathering a mini-batch is one
tensor index (no per-item Python collate on the hot path). Index ``i`` of the dataset
is the same sequence for the whole run: the importance sampler keys its factors on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from seqis.errors import DataError

LM = "lm"
CLASSIFY = "classify"


@dataclass
class Batch:
    """A mini-batch, trimmed to the longest sequence it holds.

    ``inputs`` is ``(B, T)`` token ids for language models or ``(B, T, C)`` floats for
    classification; ``targets`` is ``(B, T)`` next tokens or ``(B,)`` class ids;
    ``mask`` is ``(B, T)`` and true on real (non-padding) steps.
    """

    inputs: Tensor
    targets: Tensor
    mask: Tensor
    lengths: Tensor
    index: Tensor

    def to(self, device: torch.device | str) -> Batch:
        if torch.device(device).type == "cpu":
            return self
        return Batch(*(t.to(device, non_blocking=True) for t in self._fields()))

    def _fields(self) -> tuple[Tensor, ...]:
        return (self.inputs, self.targets, self.mask, self.lengths, self.index)

    def head(self, count: int) -> Batch:
        """The first ``count`` sequences, trimmed to the longest of them (as ``SequenceData.batch``)."""
        t_max = int(self.lengths[:count].max())
        targets = self.targets[:count, :t_max] if self.targets.dim() == 2 else self.targets[:count]
        parts = (self.inputs[:count, :t_max], targets, self.mask[:count, :t_max], self.lengths[:count])
        return Batch(*(t.contiguous() for t in parts), self.index[:count].contiguous())


@dataclass
class SequenceData(torch.utils.data.Dataset):
    """Padded sequences plus their lengths, labels and a fixed train/validation split.

    Example:
        >>> data = load_data("digits")              # doctest: +SKIP
        >>> batch = data.batch(torch.tensor([0, 5, 7]))
        >>> batch.inputs.shape                      # (3, 64, 1)
    """

    name: str
    task: str
    inputs: Tensor
    targets: Tensor
    lengths: Tensor
    vocab: list[str] | None = None
    classes: list[str] | None = None
    train_idx: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    val_idx: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))

    def __post_init__(self) -> None:
        if len(self.inputs) == 0:
            raise DataError(f"{self.name}: no sequences")
        if self.lengths.min() < 1:
            raise DataError(f"{self.name}: a sequence has length 0")

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        n = int(self.lengths[i])
        target = self.targets[i, :n] if self.task == LM else self.targets[i]
        return {"inputs": self.inputs[i, :n], "targets": target, "index": torch.tensor(i)}

    @property
    def tokens(self) -> bool:
        """Whether inputs are token ids (LMs, text classification) rather than float features."""
        return self.vocab is not None

    @property
    def input_size(self) -> int:
        """Vocabulary size for token inputs, channel count for float features."""
        return len(self.vocab) if self.tokens else self.inputs.shape[-1]

    @property
    def num_outputs(self) -> int:
        return len(self.vocab) if self.task == LM else len(self.classes)

    def batch(self, index: Tensor) -> Batch:
        """Gather sequences ``index`` into a :class:`Batch` trimmed to its longest one."""
        index = torch.as_tensor(index, dtype=torch.long)
        lengths = self.lengths[index]
        t_max = int(lengths.max())
        inputs = self.inputs[index, :t_max]
        mask = torch.arange(t_max).unsqueeze(0) < lengths.unsqueeze(1)
        targets = self.targets[index, :t_max] if self.task == LM else self.targets[index]
        return Batch(inputs, targets, mask, lengths, index)

    def split(self, val_fraction: float = 0.1, seed: int = 0, max_val: int = 10_000) -> None:
        """Fix a seeded train/validation split; validation is capped at ``max_val``.

        A split the data brought along (an official test set) is kept: only a seeded subset
        of at most ``max_val`` of its validation sequences is used. Classification splits are
        stratified, so every class keeps its share in both parts.
        """
        n = len(self)
        if n < 2:
            raise DataError(f"{self.name}: need at least 2 sequences for a train/val split, got {n}")
        g = torch.Generator().manual_seed(seed)
        if len(self.val_idx):
            keep = torch.randperm(len(self.val_idx), generator=g)[:max_val]
            self.val_idx = self.val_idx[keep].sort().values
            return
        n_val = min(max(1, round(n * val_fraction)), max_val, n - 1)
        perm = torch.randperm(n, generator=g)
        if self.task != LM:
            # Interleave classes by their rank within the class: any prefix is stratified.
            order = torch.argsort(self.targets[perm], stable=True)
            by_class = perm[order]
            counts = torch.bincount(self.targets[by_class])
            starts = torch.cumsum(counts, 0) - counts
            rank = torch.arange(n) - starts[self.targets[by_class]]
            frac = (rank.double() + 0.5) / counts[self.targets[by_class]].double()
            perm = by_class[torch.argsort(frac, stable=True)]
        self.val_idx = perm[:n_val].sort().values
        self.train_idx = perm[n_val:].sort().values

    def keep_train(self, size: int, seed: int = 0) -> None:
        """Train on a seeded subset of at most ``size`` training sequences (validation unchanged)."""
        if size < len(self.train_idx):
            keep = torch.randperm(len(self.train_idx), generator=torch.Generator().manual_seed(seed + 1))
            self.train_idx = self.train_idx[keep[:size]].sort().values

    def stats(self) -> dict:
        lengths = self.lengths.float()
        out = {
            "data": self.name,
            "task": self.task,
            "sequences": len(self),
            "train": len(self.train_idx),
            "val": len(self.val_idx),
            "length_min": int(lengths.min()),
            "length_mean": round(float(lengths.mean()), 2),
            "length_max": int(lengths.max()),
        }
        if self.tokens:
            out["vocab"] = len(self.vocab)
        if self.task != LM:
            out["classes"] = len(self.classes)
            if not self.tokens:
                out["channels"] = int(self.inputs.shape[-1])
            counts = torch.bincount(self.targets[self.train_idx], minlength=len(self.classes))
            out["largest_class_share"] = round(float(counts.max()) / max(1, len(self.train_idx)), 4)
        return out


def pad_sequences(seqs: list[Tensor], pad_value: float = 0) -> tuple[Tensor, Tensor]:
    """Stack variable-length sequences (first dim is time) into a padded tensor."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    padded = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_value)
    return padded, lengths
