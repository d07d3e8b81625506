"""Text classification: one labelled example per line, or WordNet's glosses.

``labeled:PATH`` reads ``label<TAB>text`` lines (fastText's ``__label__NAME text`` too) and
classifies characters (default) or words (``:words``). ``wordnet`` reads the glosses of
WordNet 3.0's ``data.noun/verb/adj/adv`` (Debian package ``wordnet-base``) and labels each
with its lexicographer file (noun.animal, verb.motion, ...): 45 skewed classes of uneven
difficulty. Inputs are token ids; sequences longer than ``max_len`` keep their first tokens.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from seqis.data.base import CLASSIFY, SequenceData, pad_sequences
from seqis.data.text import UNK, read_text_file
from seqis.errors import DataError

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_PARTS = ("noun", "verb", "adj", "adv")
# The lexicographer files of WordNet 3.0, in file-number order (lexnames(5WN)).
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather "
    "adj.ppl"
).split()
_FASTTEXT = "__label__"


def parse_labeled(text: str, source: str) -> tuple[list[str], list[str]]:
    """Labels and texts of ``label<TAB>text`` or ``__label__NAME text`` lines (blank lines skipped)."""
    labels, texts = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if line.startswith(_FASTTEXT):
            label, _, body = line[len(_FASTTEXT) :].partition(" ")
        elif "\t" in line:
            label, _, body = line.partition("\t")
        else:
            raise DataError(f"{source}:{lineno}: expected 'label<TAB>text' or '__label__NAME text'")
        label, body = label.strip(), body.strip()
        if not label:
            raise DataError(f"{source}:{lineno}: missing label")
        if not body:
            raise DataError(f"{source}:{lineno}: label {label!r} has no text")
        labels.append(label)
        texts.append(body)
    if not labels:
        raise DataError(f"{source}: no labelled lines")
    return labels, texts


def text_classification(
    name: str,
    labels: list[str],
    texts: list[str],
    max_len: int,
    words: bool = False,
    min_count: int = 2,
    classes: list[str] | None = None,
) -> SequenceData:
    """Token-id sequences (characters or words) with class ids; classes sorted unless given."""
    classes = classes or sorted(set(labels))
    if len(set(labels)) < 2:
        raise DataError(f"{name}: only one class ({labels[0]!r}); classification needs at least two")
    tokens = [t.split() for t in texts] if words else [list(t) for t in texts]
    counts = Counter(tok for toks in tokens for tok in toks)
    floor = min_count if words else 1  # every character is kept; rare words become <unk>
    vocab = [UNK] + sorted(tok for tok, c in counts.items() if c >= floor and tok != UNK)
    lookup = {tok: i for i, tok in enumerate(vocab)}
    seqs = [torch.tensor([lookup.get(tok, 0) for tok in toks[:max_len]] or [0]) for toks in tokens]
    inputs, lengths = pad_sequences(seqs)
    class_id = {c: i for i, c in enumerate(classes)}
    targets = torch.tensor([class_id[label] for label in labels], dtype=torch.long)
    return SequenceData(name, CLASSIFY, inputs, targets, lengths, vocab=vocab, classes=classes)


def labeled_file(spec: str, path: Path, max_len: int, words: bool, encoding_errors: str) -> SequenceData:
    if not path.exists():
        raise DataError(f"no such file: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a directory; labeled: takes one file")
    text = read_text_file(path, encoding_errors)
    if not text.strip():
        raise DataError(f"{path} is empty")
    labels, texts = parse_labeled(text, str(path))
    return text_classification(spec, labels, texts, max_len, words)


def wordnet_glosses(folder: Path) -> tuple[list[str], list[str]]:
    """(lexicographer file, gloss) of every synset in ``folder``'s ``data.*`` files."""
    labels, texts = [], []
    for part in WORDNET_PARTS:
        path = folder / f"data.{part}"
        for lineno, line in enumerate(read_text_file(path).splitlines(), start=1):
            if not line or line.startswith("  "):  # the licence header is indented
                continue
            fields, bar, gloss = line.partition(" | ")
            head = fields.split(" ", 2)
            if not bar or len(head) < 3 or not head[1].isdigit() or int(head[1]) >= len(LEXNAMES):
                raise DataError(f"{path}:{lineno}: not a WordNet data line")
            if gloss.strip():
                labels.append(LEXNAMES[int(head[1])])
                texts.append(gloss.strip())
    return labels, texts


def wordnet(max_len: int, folder: Path | None = None) -> SequenceData:
    folder = folder or WORDNET_DIR
    if not all((folder / f"data.{p}").is_file() for p in WORDNET_PARTS):
        if folder == WORDNET_DIR:
            raise DataError(
                f"wordnet needs the Debian package wordnet-base (no data.noun/verb/adj/adv in {folder}): "
                "apt-get install wordnet-base, or give wordnet:DIR"
            )
        raise DataError(f"{folder}: needs data.noun, data.verb, data.adj and data.adv")
    labels, texts = wordnet_glosses(folder)
    present = set(labels)
    classes = [c for c in LEXNAMES if c in present]
    return text_classification("wordnet", labels, texts, max_len, classes=classes)
