"""Names by country: ~984,000 last names (or first names) classified by their most likely country.

The data come from the ``names-dataset`` package (PyPI, version 3.3.1; its metadata says MIT,
its LICENSE file is Apache-2.0): ``v3/last_names.pkl.gz`` and ``v3/first_names.pkl.gz`` map a
name to ``{"country": {alpha-2 code: share}, "gender": ..., "rank": ...}``. A name's label is
its largest country share (ties to the alphabetically first code), its input its characters:
the PyTorch char-RNN tutorial's task at 100 times its size, large enough that a run of a few
thousand steps sees a fraction of it once.

The files are pickles. They are read with an unpickler that refuses every global, so a file
of this format from anywhere (``names:PATH``) can hold dicts, strings and numbers but never
code.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import zlib
from pathlib import Path

from seqis.data.base import SequenceData
from seqis.data.labeled import text_classification
from seqis.errors import DataError

PACKAGE = "names-dataset"
INSTALL = "pip install --no-deps names-dataset==3.3.1; make data installs it"


class _PlainUnpickler(pickle.Unpickler):
    """Dicts, lists, strings and numbers only: no global may be loaded, so no code can run."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def package_file(first: bool) -> Path:
    """The installed package's file, found without importing the package (it imports pycountry)."""
    spec = importlib.util.find_spec("names_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"names needs the {PACKAGE} package ({INSTALL})")
    folder = Path(list(spec.submodule_search_locations)[0]) / "v3"
    return folder / ("first_names.pkl.gz" if first else "last_names.pkl.gz")


def read_names(path: Path) -> dict:
    """The name -> attributes dict of a ``.pkl.gz`` file of the package's format."""
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty")
    try:
        with gzip.open(path, "rb") as f:
            table = _PlainUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{path} holds more than plain data ({e}); refused, as it could run code") from None
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise DataError(f"{path} is not a gzip'd pickle of names ({e.__class__.__name__})") from None
    if not isinstance(table, dict) or not all(
        isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("country"), dict)
        for k, v in list(table.items())[:100]
    ):
        raise DataError(f"{path} is not a names table (name -> {{'country': {{code: share}}}})")
    return table


def labelled(table: dict) -> tuple[list[str], list[str]]:
    """(country, name) pairs: names without a country, or empty once stripped, are dropped."""
    labels, texts = [], []
    for name, attrs in table.items():
        shares = attrs.get("country") or {}
        name = name.strip()
        if not shares or not name:
            continue
        top = max(shares.values())
        labels.append(min(code for code, share in shares.items() if share == top))
        texts.append(name)
    return labels, texts


def names(max_len: int, first: bool = False, path: Path | None = None) -> SequenceData:
    """Names as character sequences, classified by their most likely country."""
    source = path or package_file(first)
    if path is None and not source.is_file():
        raise DataError(f"names needs the {PACKAGE} package ({INSTALL}); {source} is missing")
    labels, texts = labelled(read_names(source))
    if not labels:
        raise DataError(f"{source}: no name has a country")
    spec = f"names:{path}" if path else ("names:first" if first else "names")
    return text_classification(spec, labels, texts, max_len)
