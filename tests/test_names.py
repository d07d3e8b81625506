"""The names reader on small fixture files of the names-dataset format (never the real package)."""

import gzip
import os
import pickle

import pytest

from seqis.data import names
from seqis.data.registry import DataOptions, load_data
from seqis.errors import DataError

TABLE = {
    **{f"Garcia{i}": {"country": {"ES": 0.7, "MX": 0.3}, "gender": {}, "rank": {}} for i in range(12)},
    **{f"Nguyen{i}": {"country": {"VN": 0.9, "US": 0.1}, "gender": {}, "rank": {}} for i in range(12)},
    **{f"Smith{i}": {"country": {"US": 0.6, "GB": 0.4}, "gender": {}, "rank": {}} for i in range(12)},
    "Tie": {"country": {"US": 0.5, "ES": 0.5}, "gender": {}, "rank": {}},
    "Nowhere": {"country": {}, "gender": {}, "rank": {}},
    "  Padded  ": {"country": {"GB": 1.0}, "gender": {}, "rank": {}},
    "A" * 40: {"country": {"GB": 1.0}, "gender": {}, "rank": {}},
}


def _write(path, obj):
    with gzip.open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


def test_labels_are_the_most_likely_country(tmp_path):
    labels, texts = names.labelled(TABLE)
    by_name = dict(zip(texts, labels, strict=True))
    assert by_name["Garcia0"] == "ES" and by_name["Nguyen3"] == "VN" and by_name["Smith5"] == "US"
    assert by_name["Tie"] == "ES"  # a tie goes to the alphabetically first code
    assert "Nowhere" not in by_name and by_name["Padded"] == "GB"


def test_load_data_reads_a_file_of_the_format(tmp_path):
    path = _write(tmp_path / "last.pkl.gz", TABLE)
    data = load_data(f"names:{path}", DataOptions(seq_len=10, val_fraction=0.25))
    assert data.classes == ["ES", "GB", "US", "VN"] and len(data) == len(TABLE) - 1
    assert int(data.lengths.max()) == 10  # truncated to --seq-len characters
    assert len(data.val_idx) > 0 and len(data.train_idx) + len(data.val_idx) == len(data)


def test_names_and_names_first_read_the_packages_two_files(tmp_path, monkeypatch):
    folder = tmp_path / "names_dataset"
    (folder / "v3").mkdir(parents=True)
    _write(folder / "v3" / "last_names.pkl.gz", TABLE)
    first = {f"Maria{i}": {"country": {"ES": 1.0}, "gender": {}, "rank": {}} for i in range(8)}
    first.update({f"John{i}": {"country": {"US": 1.0}, "gender": {}, "rank": {}} for i in range(8)})
    _write(folder / "v3" / "first_names.pkl.gz", first)
    spec = type("Spec", (), {"submodule_search_locations": [str(folder)]})()
    monkeypatch.setattr(names.importlib.util, "find_spec", lambda name: spec)
    options = DataOptions(seq_len=10, val_fraction=0.25)
    assert load_data("names", options).classes == ["ES", "GB", "US", "VN"]
    assert load_data("names:first", options).classes == ["ES", "US"]


def test_missing_package_names_it(monkeypatch):
    monkeypatch.setattr(names.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="names-dataset package"):
        load_data("names")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("case", ["missing", "empty", "not gzip", "not a pickle", "not a table", "code"])
def test_bad_files_are_one_line_errors(tmp_path, case):
    path, marker = tmp_path / "x.pkl.gz", tmp_path / "MARKER"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "not gzip":
        path.write_bytes(b"plain text, not gzip")
    elif case == "not a pickle":
        path.write_bytes(gzip.compress(b"gzip'd text, not a pickle"))
    elif case == "not a table":
        _write(path, ["a", "list"])
    elif case == "code":
        _write(path, {"Smith": {"country": {"US": 1.0}, "x": _Exploit(marker)}})
    with pytest.raises(DataError) as error:
        load_data(f"names:{path}")
    assert "\n" not in str(error.value) and not marker.exists()
