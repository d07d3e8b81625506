"""The readers of the race data (IDX images, labelled text, WordNet) on small fixture files."""

import gzip

import numpy as np
import pytest
import torch

from seqis.cli import main
from seqis.data import images, labeled
from seqis.data.registry import DataOptions, load_data
from seqis.errors import DataError


def write_idx(path, array: np.ndarray, gz: bool = False, magic: bytes | None = None) -> None:
    header = magic or bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "idx"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (40, 6, 5)), gz=True)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(40) % 3, gz=True)
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (10, 6, 5)))
    write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(10) % 3)
    return folder


def test_idx_rows_pixels_and_official_split(idx_dir):
    rows = load_data(f"idx:{idx_dir}")
    assert rows.inputs.shape == (50, 6, 5) and rows.classes == ["0", "1", "2"]
    assert rows.train_idx.tolist() == list(range(40)) and rows.val_idx.tolist() == list(range(40, 50))
    train_pixels = rows.inputs[:40]
    assert abs(float(train_pixels.mean())) < 1e-5 and float(train_pixels.std()) == pytest.approx(1, abs=1e-3)
    pixels = load_data(f"idx:{idx_dir}:pixels")
    assert pixels.inputs.shape == (50, 30, 1)
    assert torch.equal(pixels.inputs.view(50, 6, 5), rows.inputs)
    capped = load_data(f"idx:{idx_dir}", DataOptions(val_size=4))
    assert len(capped.val_idx) == 4 and set(capped.val_idx.tolist()) <= set(range(40, 50))


def test_idx_without_test_split_is_split_stratified(idx_dir):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (idx_dir / name).unlink()
    data = load_data(f"idx:{idx_dir}", DataOptions(val_fraction=0.3))
    assert len(data.val_idx) == 12
    assert torch.bincount(data.targets[data.val_idx]).tolist() == [4, 4, 4]


@pytest.mark.parametrize(
    "damage,message",
    [
        ("magic", "not an IDX file"),
        ("count", "40 images but 39 labels"),
        ("truncate", "truncated"),
        ("labels", "train-labels-idx1-ubyte[.gz] is missing"),
        ("gzip", "not a readable gzip file"),
    ],
)
def test_idx_bad_input(idx_dir, damage, message):
    labels = idx_dir / "train-labels-idx1-ubyte.gz"
    if damage == "magic":
        write_idx(labels, np.arange(40) % 3, gz=True, magic=bytes([0, 0, 0x0D, 1]))
    elif damage == "count":
        write_idx(labels, np.arange(39) % 3, gz=True)
    elif damage == "truncate":
        raw = gzip.decompress((idx_dir / "train-images-idx3-ubyte.gz").read_bytes())
        (idx_dir / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-7]))
    elif damage == "labels":
        labels.unlink()
    else:
        labels.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_data(f"idx:{idx_dir}")


def test_missing_debian_packages_are_named(tmp_path, capsys):
    with pytest.raises(DataError, match="Debian package dataset-fashion-mnist"):
        images.fashion_mnist(folder=tmp_path)
    assert main(["data", "--data", f"idx:{tmp_path / 'none'}"]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_labeled_tab_and_fasttext_lines(tmp_path):
    path = tmp_path / "reviews.txt"
    lines = []
    for i in range(60):
        label = ["pos", "neg", "meh"][i % 3]
        text = f"item {i} was {'good ' * (i % 4)}enough"
        lines.append(f"{label}\t{text}" if i % 2 else f"__label__{label} {text}")
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    data = load_data(f"labeled:{path}", DataOptions(seq_len=12, val_fraction=0.25))
    assert data.classes == ["meh", "neg", "pos"] and data.tokens and len(data) == 60
    assert int(data.lengths.max()) == 12  # truncated to --seq-len
    assert torch.bincount(data.targets[data.val_idx]).tolist() == [5, 5, 5]  # stratified
    first = "".join(data.vocab[i] for i in data.inputs[0, : data.lengths[0]])
    assert first == "item 0 was e"
    words = load_data(f"labeled:{path}:words", DataOptions(seq_len=50))
    assert "good" in words.vocab and "<unk>" in words.vocab and words.stats()["vocab"] == len(words.vocab)


@pytest.mark.parametrize(
    "content,message",
    [
        ("pos\tfine\nno tab here\n", ":2: expected 'label<TAB>text'"),
        ("pos\tfine\n\tno label\n", ":2: missing label"),
        ("pos\tfine\nneg\t   \n", ":2: label 'neg' has no text"),
        ("pos\tfine\npos\talso fine\n", "only one class"),
        ("", "is empty"),
    ],
)
def test_labeled_bad_input(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_data(f"labeled:{path}")


def test_labeled_undecodable_and_binary(tmp_path, capsys):
    path = tmp_path / "latin1.txt"
    path.write_bytes("pos\tcaf\u00e9\nneg\tna\u00efve\n".encode("latin-1"))
    assert main(["data", "--data", f"labeled:{path}"]) == 2
    assert "not valid UTF-8" in capsys.readouterr().err
    replaced = load_data(f"labeled:{path}", DataOptions(encoding_errors="replace", val_size=1))
    assert replaced.classes == ["neg", "pos"]
    path.write_bytes(b"pos\t\x00\x01\x02")
    with pytest.raises(DataError, match="looks binary"):
        load_data(f"labeled:{path}")


def _wordnet_line(offset: int, lex: int, words: str, gloss: str) -> str:
    return f"{offset:08d} {lex:02d} n 01 {words} 0 000 | {gloss}  "


def test_wordnet_glosses_by_lexicographer_file(tmp_path, monkeypatch):
    licence = "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    for part, lex in (("noun", 5), ("verb", 38), ("adj", 0), ("adv", 2)):
        lines = [_wordnet_line(100 + i, lex, f"{part}{i}", f"a {part} gloss number {i}") for i in range(4)]
        (tmp_path / f"data.{part}").write_text(licence + "\n".join(lines) + "\n")
    data = load_data(f"wordnet:{tmp_path}", DataOptions(seq_len=100, val_size=4))
    assert data.classes == ["adj.all", "adv.all", "noun.animal", "verb.motion"]
    assert len(data) == 16 and data.stats()["classes"] == 4
    noun = data.classes.index("noun.animal")
    i = int((data.targets == noun).nonzero()[0])
    assert "".join(data.vocab[t] for t in data.inputs[i, : data.lengths[i]]) == "a noun gloss number 0"
    (tmp_path / "data.adv").write_text("00000001 zz n 01 x 0 000 | broken\n")
    with pytest.raises(DataError, match="not a WordNet data line"):
        load_data(f"wordnet:{tmp_path}")
    with pytest.raises(DataError, match="needs data.noun"):
        load_data(f"wordnet:{tmp_path / 'nothing'}")
    monkeypatch.setattr(labeled, "WORDNET_DIR", tmp_path / "not-installed")
    with pytest.raises(DataError, match="Debian package wordnet-base"):
        load_data("wordnet")
