"""Sequence classification data: UCR/UEA ``.ts`` files and scikit-learn's digits.

The ``.ts`` format is simple enough to parse directly, which keeps pandas and
scikit-learn out of our dependencies: ``@key value`` header lines, then after ``@data``
one instance per line, its channels separated by ``:`` and the class label last.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import torch

from seqis.data.base import CLASSIFY, SequenceData, pad_sequences
from seqis.data.text import read_text_file
from seqis.errors import DataError


def parse_ts(text: str, source: str) -> tuple[list[torch.Tensor], list[str], list[str] | None]:
    """Parse ``.ts`` text into per-instance ``(T, C)`` tensors, labels, declared classes."""
    dims: int | None = None
    declared: list[str] | None = None
    in_data = False
    series, labels = [], []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise DataError(f"{source}:{lineno}: expected a @header line before @data")
            key, _, value = line[1:].partition(" ")
            key = key.lower()
            if key == "data":
                in_data = True
            elif key == "dimensions":
                dims = _int(value, source, lineno)
            elif key == "classlabel":
                words = value.split()
                if not words or words[0].lower() != "true":
                    raise DataError(f"{source}:{lineno}: only labelled data (@classLabel true)")
                declared = words[1:] or None
            elif key == "timestamps" and value.strip().lower() == "true":
                raise DataError(f"{source}:{lineno}: timestamped .ts data is not supported")
            continue
        fields = line.split(":")
        if len(fields) < 2:
            raise DataError(f"{source}:{lineno}: a data line needs channels and a label")
        label = fields[-1].strip()
        if not label:
            raise DataError(f"{source}:{lineno}: missing class label")
        if declared is not None and label not in declared:
            raise DataError(f"{source}:{lineno}: unknown class label {label!r}")
        channels = fields[:-1]
        if dims is not None and len(channels) != dims:
            raise DataError(f"{source}:{lineno}: {len(channels)} channels, header says @dimensions {dims}")
        if series and len(channels) != series[0].shape[1]:
            raise DataError(
                f"{source}:{lineno}: {len(channels)} channels, earlier lines have {series[0].shape[1]}"
            )
        try:
            values = [[float(v) for v in ch.split(",")] for ch in channels]
        except ValueError:
            raise DataError(f"{source}:{lineno}: malformed number") from None
        length = len(values[0])
        if any(len(v) != length for v in values):
            raise DataError(f"{source}:{lineno}: channels of one instance differ in length")
        x = torch.tensor(values, dtype=torch.float32).T
        if not torch.isfinite(x).all():
            raise DataError(f"{source}:{lineno}: missing or non-finite values are not supported")
        series.append(x)
        labels.append(label)
    if not in_data:
        raise DataError(f"{source}: no @data section")
    if not series:
        raise DataError(f"{source}: no instances after @data")
    return series, labels, declared


def _int(value: str, source: str, lineno: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{source}:{lineno}: expected an integer, got {value!r}") from None


def classification_data(
    name: str, series: list[torch.Tensor], labels: list[str], declared: list[str] | None
) -> SequenceData:
    """Pad series and map labels to ids. Channels are standardised later, on train stats."""
    classes = declared or sorted(set(labels), key=_label_order)
    lookup = {c: i for i, c in enumerate(classes)}
    inputs, lengths = pad_sequences(series)
    targets = torch.tensor([lookup[label] for label in labels], dtype=torch.long)
    return SequenceData(name, CLASSIFY, inputs, targets, lengths, classes=classes)


def _label_order(label: str):
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def standardise(data: SequenceData) -> None:
    """Scale every channel to zero mean and unit variance using training steps only."""
    mask = torch.arange(data.inputs.shape[1]).unsqueeze(0) < data.lengths.unsqueeze(1)
    train_mask = mask[data.train_idx]
    values = data.inputs[data.train_idx][train_mask]
    mean, std = values.mean(0), values.std(0).clamp_min(1e-6)
    data.inputs = torch.where(mask.unsqueeze(-1), (data.inputs - mean) / std, 0.0)


def load_ts_files(name: str, paths: list[Path]) -> SequenceData:
    series, labels, declared = [], [], None
    for path in paths:
        s, lab, dec = parse_ts(read_text_file(path), str(path))
        if series and s[0].shape[1] != series[0].shape[1]:
            raise DataError(f"{path}: channel count differs from {paths[0]}")
        series += s
        labels += lab
        declared = declared or dec
    return classification_data(name, series, labels, declared)


def ucr_paths(dataset: str) -> list[Path]:
    """The bundled train and test ``.ts`` files of a UCR/UEA set inside the sktime wheel."""
    spec = importlib.util.find_spec("sktime")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("ucr: data needs the sktime package: pip install --no-deps sktime")
    root = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    folder = root / dataset
    files = sorted(folder.glob("*.ts")) if folder.is_dir() else []
    if not files:
        known = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.ts")))
        raise DataError(f"unknown UCR dataset {dataset!r}; bundled: {', '.join(known)}")
    return files


def digits_data(rows: bool) -> SequenceData:
    """scikit-learn's 8x8 digits as 64 one-pixel steps, or as 8 rows of 8 channels."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("digits data needs scikit-learn: pip install --no-deps scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets/data/digits.csv.gz"
    with gzip.open(path, "rt") as f:
        table = torch.tensor([[float(v) for v in line.split(",")] for line in f if line.strip()])
    pixels, labels = table[:, :64] / 16.0, table[:, 64].long()
    inputs = pixels.view(-1, 8, 8) if rows else pixels.view(-1, 64, 1)
    lengths = torch.full((len(inputs),), inputs.shape[1], dtype=torch.long)
    name = "digits:rows" if rows else "digits"
    classes = [str(i) for i in range(10)]
    return SequenceData(name, CLASSIFY, inputs, labels, lengths, classes=classes)
