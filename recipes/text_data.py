"""Text for the recipes: the built-in corpus or the user's files, split into parts that never overlap.

Sentences are tokenized once into model-input batches; every batch is cut to
its longest real sequence (most docstring sentences are ~20 tokens, so a
fixed 64-token padding would triple the work).

Text files come in two layouts, told apart per file (`is_wrapped`):
- one sentence (or a few) per line, the common case: every line break ends a
  sentence, and a line with several sentences is split at end punctuation;
- prose wrapped at a fixed width (most lines without end punctuation run to
  near the same width): the lines of each blank-line-separated paragraph are
  joined first, then split at end punctuation.
Splitting is `split_sentences`, a pure-Python twin of the in-graph
`bert.data.split_sentences` (same rule), so a file costs no TensorFlow calls.
"""

from __future__ import annotations

import codecs
import os
import re

import numpy as np
import tensorflow as tf

from recipes import corpus

DEFAULT_SPLIT = {"calibration": 0.2, "train": 0.6, "heldout": 0.2}
# Bytes looked at to tell text from binary data, and the share of undecodable bytes tolerated there.
_SNIFF_BYTES = 64 * 1024
_MAX_UNDECODABLE = 0.05

# `bert.data.split_sentences`'s rule: a sentence ends after a run of . ! ? or ..., optionally followed by
# closing quotes/brackets, where whitespace follows. RE2's \s is ASCII whitespace without \v.
_SENTENCE_END = re.compile(r"""([.!?\u2026]+["'\u201d\u2019\u00bb)\]]*)[ \t\n\f\r]+""")
_ASCII_SPACE = " \t\n\v\f\r"
_ENDS_SENTENCE = re.compile(r"""[.!?\u2026]+["'\u201d\u2019\u00bb)\]]*\s*$""")


def _is_binary(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if b"\0" in head:
        return True
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(head, final=False)
    return text.count("\ufffd") > _MAX_UNDECODABLE * max(len(text), 1)


def check_files(files, flag: str) -> list[str]:
    """The paths of a comma-separated flag value; each must exist and hold some (UTF-8) text."""
    paths = [p.strip() for p in (files.split(",") if isinstance(files, str) else files) if p.strip()]
    if not paths:
        raise ValueError(f"{flag} names no files.")
    for path in paths:
        if not os.path.isfile(path):
            raise ValueError(f"{flag}: {path!r} does not exist or is not a file.")
        if _is_binary(path):
            raise ValueError(f"{flag}: {path!r} is not a text file (binary data); give UTF-8 text files.")
        with open(path, encoding="utf-8", errors="replace") as f:
            if not f.read(4096).strip():
                raise ValueError(f"{flag}: {path!r} is empty; give text files with one or more sentences.")
    return paths


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` by `bert.data.split_sentences`'s rule, in Python."""
    pieces = _SENTENCE_END.sub("\\1\n", text).split("\n")
    return [p.strip(_ASCII_SPACE) for p in pieces if p.strip(_ASCII_SPACE)]


def is_wrapped(lines) -> bool:
    """Whether text lines are prose wrapped at a fixed width rather than one sentence (or a few) per line.

    In wrapped prose a line that runs on into the next one (no end punctuation,
    next line not blank) reaches close to the wrap width, and hardly any line
    is longer than that width. Here: width = the 90th-percentile line length,
    at least 40 characters; at most 1 % of lines longer than 1.15 x width; and
    at least 60 % of the run-on lines at 75 % of the width or more. Lists of
    sentences, glosses or titles vary in length and fail; a file whose
    paragraphs are single lines has no run-on lines and is read line by line.
    """
    lines = [line.rstrip() for line in lines]
    lengths = sorted(len(line) for line in lines if line.strip())
    run_on = [len(line) for line, following in zip(lines, lines[1:])
              if line.strip() and following.strip() and not _ENDS_SENTENCE.search(line)]
    if not run_on:
        return False
    width = lengths[int(0.9 * (len(lengths) - 1))]
    if width < 40 or sum(length > 1.15 * width for length in lengths) > 0.01 * len(lengths):
        return False
    return sum(length >= 0.75 * width for length in run_on) >= 0.6 * len(run_on)


def text_units(text: str) -> tuple[list[str], bool]:
    """(pieces to split into sentences, whether the text is wrapped prose): paragraphs or lines."""
    lines = text.splitlines()
    wrapped = is_wrapped(lines)
    if wrapped:
        units = [" ".join(p.split()) for p in re.split(r"\n[ \t]*\n", "\n".join(lines))]
    else:
        units = [" ".join(line.split()) for line in lines]
    return [u for u in units if u], wrapped


def file_sentences(paths, log=print) -> list[str]:
    """Unique non-empty sentences of text files, in file order; logs how many each file gave."""
    seen, result = set(), []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            units, wrapped = text_units(f.read())
        found = new = 0
        for unit in units:
            for sentence in split_sentences(unit):
                found += 1
                if sentence not in seen:
                    seen.add(sentence)
                    result.append(sentence)
                    new += 1
        layout = "wrapped prose: lines joined within paragraphs" if wrapped else "a line break ends a sentence"
        repeats = f", {found - new} repeats dropped" if found > new else ""
        log(f"[text] {path}: {new} sentences ({layout}{repeats})")
    return result


def sentence_parts(train_files=None, eval_files=None, fractions=None) -> dict[str, list[str]]:
    """{"calibration", "train", "heldout"} sentence lists that never overlap.

    No files: the stdlib-docstring corpus, split by hash. `train_files` only:
    those, split the same way. With `eval_files`, held-out sentences come from
    them (minus any that also occur in the training text) and the training
    text is split into calibration and train.
    """
    fractions = dict(fractions or DEFAULT_SPLIT)
    source = file_sentences(check_files(train_files, "--train_files")) if train_files else corpus.stdlib_sentences()
    if eval_files:
        heldout = file_sentences(check_files(eval_files, "--eval_files"))
        fractions.pop("heldout")
        parts = corpus.split(source, fractions)
        used = set(source)
        parts["heldout"] = [s for s in heldout if s not in used]
    else:
        parts = corpus.split(source, fractions)
    for name, sentences in parts.items():
        if not sentences:
            raise ValueError(
                f"The {name} part of the text is empty ({len(source)} sentences in the training text); "
                "give more text."
            )
    return parts


def trim(batch: dict) -> dict:
    """Cut a padded batch to its longest real sequence."""
    length = int(np.max(np.sum(np.asarray(batch["input_mask"]), axis=1)))
    return {k: v[:, :max(length, 1)] for k, v in batch.items()}


def tokenized(preprocessor, sentences, batch_size: int = 64) -> list[dict]:
    """Trimmed model-input batches for `sentences`, sorted by length so padding stays small."""
    lengths = [len(s) for s in sentences]
    order = np.argsort(lengths, kind="stable")
    ordered = [sentences[i] for i in order]
    return [trim(preprocessor(tf.constant(ordered[i:i + batch_size]))) for i in range(0, len(ordered), batch_size)]


def training_dataset(preprocessor, sentences, batch_size: int, seed: int = 0) -> tf.data.Dataset:
    """Endless shuffled batches of model inputs, each cut to its longest sequence in-graph."""
    features = preprocessor(tf.constant(sentences))
    features = {k: np.asarray(v) for k, v in features.items()}
    ds = tf.data.Dataset.from_tensor_slices(features).shuffle(len(sentences), seed=seed, reshuffle_each_iteration=True)

    def cut(batch):
        length = tf.maximum(tf.reduce_max(tf.reduce_sum(batch["input_mask"], axis=1)), 1)
        return {k: v[:, :length] for k, v in batch.items()}

    return ds.repeat().batch(batch_size, drop_remainder=True).map(cut).prefetch(2)
