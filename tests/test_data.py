import pytest
import torch

from seqis.data.base import CLASSIFY, LM
from seqis.data.registry import DataOptions, load_data
from seqis.errors import ConfigError, DataError
from tests.conftest import TS_HEADER

SMALL = DataOptions(seq_len=50, max_chars=20_000)


@pytest.mark.parametrize("spec", ["stdlib", "shakespeare"])
def test_char_corpora_are_windows(spec):
    data = load_data(spec, SMALL)
    assert data.task == LM and data.inputs.shape[1] == 50
    # targets are the inputs shifted by one character
    assert torch.equal(data.inputs[0, 1:], data.targets[0, :-1])
    assert torch.equal(data.targets[0, -1:], data.inputs[1, :1])
    assert len(data) == (20_000 - 1) // 50


def test_stdlib_is_deterministic():
    a, b = load_data("stdlib", SMALL), load_data("stdlib", SMALL)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.val_idx, b.val_idx)


def test_split_is_disjoint_and_seeded():
    data = load_data("digits")
    train, val = set(data.train_idx.tolist()), set(data.val_idx.tolist())
    assert not train & val and len(train | val) == len(data)
    other = load_data("digits", DataOptions(split_seed=1))
    assert not torch.equal(data.val_idx, other.val_idx)


def test_japanese_vowels_variable_length():
    data = load_data("ucr:JapaneseVowels")
    stats = data.stats()
    assert stats["classes"] == 9 and stats["channels"] == 12
    assert stats["length_min"] == 7 and stats["length_max"] == 29
    assert stats["sequences"] == 640  # train + test merged
    batch = data.batch(torch.arange(16))
    assert batch.mask.sum(1).tolist() == batch.lengths.tolist()
    # padding is zero, never information
    assert (batch.inputs[~batch.mask] == 0).all()


@pytest.mark.parametrize("spec,steps,channels", [("digits", 64, 1), ("digits:rows", 8, 8)])
def test_digits(spec, steps, channels):
    data = load_data(spec)
    assert data.task == CLASSIFY and data.inputs.shape[1:] == (steps, channels)
    assert len(data.classes) == 10


def test_text_file_and_directory(text_file, tmp_path):
    a = load_data(f"text:{text_file}", DataOptions(seq_len=20))
    assert a.task == LM and a.inputs.shape[1] == 20
    (tmp_path / "binary.bin").write_bytes(b"\x00\x01\x02")  # skipped inside a directory
    b = load_data(f"text:{tmp_path}", DataOptions(seq_len=20))
    assert len(b) == len(a)


def test_lines_and_words_are_variable_length(text_file):
    lines = load_data(f"lines:{text_file}", DataOptions(seq_len=30))
    words = load_data(f"words:{text_file}", DataOptions(seq_len=30))
    for data in (lines, words):
        assert data.lengths.min() < data.lengths.max()
        batch = data.batch(torch.arange(8))
        assert batch.mask.sum().item() == batch.lengths.sum().item()
    assert "<unk>" in words.vocab and "<eos>" in words.vocab


def test_ts_file(ts_file):
    data = load_data(f"ts:{ts_file}")
    assert data.stats()["classes"] == 2 and data.stats()["channels"] == 2
    assert data.lengths.min() == 3 and data.lengths.max() == 7


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p / "missing.txt", "no such file"),
        (lambda p: _write(p / "empty.txt", b""), "is empty"),
        (lambda p: _write(p / "bin.txt", b"abc\x00\x01def"), "binary"),
        (lambda p: _write(p / "bad.txt", b"hello \xff\xfe world" * 10), "byte offset 6"),
        (lambda p: _write(p / "short.txt", b"tiny"), "shorter than two windows"),
    ],
)
def test_bad_text_inputs(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(DataError, match=message):
        load_data(f"text:{path}", DataOptions(seq_len=50))


def test_undecodable_accepted_with_replace(tmp_path):
    path = _write(tmp_path / "bad.txt", b"hello \xff world " * 40)
    data = load_data(f"text:{path}", DataOptions(seq_len=20, encoding_errors="replace"))
    assert "\ufffd" in data.vocab


def test_directory_without_text(tmp_path):
    _write(tmp_path / "a.bin", b"\x00\x00")
    with pytest.raises(DataError, match="no readable"):
        load_data(f"text:{tmp_path}")


@pytest.mark.parametrize(
    "body,message",
    [
        ("1,2:3,4:a\n1,2,x:3,4,5:b\n", "malformed number"),
        ("1,2:3,4:a\n1,2:b\n", "1 channels"),
        ("1,2:3,4:a\n1,2:3,4:c\n", "unknown class label"),
        ("1,2:3,4:a\n1,2:3,4:\n", "missing class label"),
        ("1,2:3:a\n", "differ in length"),
        ("", "no instances"),
    ],
)
def test_bad_ts(tmp_path, body, message):
    path = tmp_path / "bad.ts"
    path.write_text(TS_HEADER + body)
    with pytest.raises(DataError, match=message):
        load_data(f"ts:{path}")


@pytest.mark.parametrize("spec", ["nope", "ucr:NoSuchSet", "text:", "digits:cols"])
def test_unknown_specs(spec):
    with pytest.raises(DataError):
        load_data(spec)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("spec", ["stdlib:lines", "shakespeare:lines", "shakespeare:words"])
def test_builtin_line_and_word_variants(spec):
    data = load_data(spec, DataOptions(seq_len=40, max_chars=30_000))
    assert data.task == LM and data.lengths.min() < data.lengths.max() <= 40


def test_train_size_keeps_a_seeded_subset_and_the_same_validation():
    full = load_data("digits")
    small = load_data("digits", DataOptions(train_size=100))
    again = load_data("digits", DataOptions(train_size=100))
    assert len(small.train_idx) == 100 and torch.equal(small.train_idx, again.train_idx)
    assert torch.equal(small.val_idx, full.val_idx)
    assert set(small.train_idx.tolist()) <= set(full.train_idx.tolist())
    assert len(load_data("digits", DataOptions(train_size=10**6)).train_idx) == len(full.train_idx)
    with pytest.raises(ConfigError, match="DataOptions.train_size"):
        DataOptions(train_size=0)
