"""Images read as sequences, from MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST, ...).

An image of H rows and W columns becomes H steps of W features (``rows``, the default) or
H*W steps of one pixel (``pixels``: the classic long-range RNN benchmark). The official
``t10k`` split, when present, is the validation set. Pixels are standardised with the
training images' mean and standard deviation.

IDX layout: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions,
then one big-endian 32-bit size per dimension, then the values in row-major order.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from seqis.data.base import CLASSIFY, SequenceData
from seqis.errors import DataError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
_UBYTE = 0x08


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The unsigned-byte array stored in one IDX file (``.gz`` or plain)."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:  # BadGzipFile is an OSError: first
        raise DataError(f"{path} is not a readable gzip file ({e})") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    header = 4 + 4 * ndim
    if len(raw) < header or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE or raw[3] != ndim:
        magic = raw[:4].hex() if len(raw) >= 4 else "too short"
        raise DataError(
            f"{path}: not an IDX file of {ndim}-D unsigned bytes (magic {magic}, expected 000008{ndim:02x})"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape))
    if len(raw) - header < size:
        raise DataError(f"{path}: truncated: {len(raw) - header} bytes of data, shape {shape} needs {size}")
    return np.frombuffer(raw, dtype=np.uint8, count=size, offset=header).reshape(shape)


def _find(folder: Path, split: str, kind: str, ndim: int) -> Path | None:
    for stem in (f"{split}-{kind}-idx{ndim}-ubyte", f"{split}-{kind}.idx{ndim}-ubyte"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    images_path, labels_path = _find(folder, split, "images", 3), _find(folder, split, "labels", 1)
    if images_path is None and labels_path is None:
        return None
    if images_path is None or labels_path is None:
        missing = f"{split}-images-idx3-ubyte" if images_path is None else f"{split}-labels-idx1-ubyte"
        raise DataError(f"{folder}: {missing}[.gz] is missing")
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise DataError(f"{folder}: {split} has {len(images)} images but {len(labels)} labels")
    return images, labels


def idx_data(name: str, folder: Path, pixels: bool = False, classes: list[str] | None = None) -> SequenceData:
    """Images and labels of an IDX folder as a classification :class:`SequenceData`."""
    if not folder.is_dir():
        raise DataError(f"no such directory: {folder}")
    train = _read_split(folder, "train")
    if train is None:
        raise DataError(f"{folder}: no train-images-idx3-ubyte[.gz] / train-labels-idx1-ubyte[.gz]")
    test = _read_split(folder, "t10k")
    images = np.concatenate([train[0], test[0]]) if test else train[0]
    labels = np.concatenate([train[1], test[1]]) if test else train[1]
    if test and train[0].shape[1:] != test[0].shape[1:]:
        raise DataError(f"{folder}: train images are {train[0].shape[1:]}, t10k images {test[0].shape[1:]}")
    n_train = len(train[0])
    x = torch.from_numpy(images.astype(np.float32))
    mean, std = x[:n_train].mean(), x[:n_train].std().clamp_min(1e-6)
    x = (x - mean) / std
    x = x.reshape(len(x), -1, 1) if pixels else x
    n_classes = int(labels.max()) + 1
    classes = classes if classes and len(classes) >= n_classes else [str(i) for i in range(n_classes)]
    if len(np.unique(labels)) < 2:
        raise DataError(f"{folder}: every image has the same label; classification needs two classes")
    lengths = torch.full((len(x),), x.shape[1], dtype=torch.long)
    data = SequenceData(
        name, CLASSIFY, x, torch.from_numpy(labels.astype(np.int64)), lengths, classes=classes
    )
    if test:  # the official split: every t10k image is a validation sequence
        data.train_idx = torch.arange(n_train)
        data.val_idx = torch.arange(n_train, len(x))
    return data


def fashion_mnist(pixels: bool = False, folder: Path = FASHION_MNIST_DIR) -> SequenceData:
    if not _find(folder, "train", "images", 3):
        raise DataError(
            f"fashion-mnist needs the Debian package dataset-fashion-mnist (no IDX files in {folder}): "
            "apt-get install dataset-fashion-mnist, or give idx:DIR"
        )
    name = "fashion-mnist:pixels" if pixels else "fashion-mnist"
    return idx_data(name, folder, pixels, FASHION_MNIST_CLASSES)
