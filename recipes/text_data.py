"""Text for the recipes: the built-in corpus or the user's files, split into parts that never overlap.

Sentences are tokenized once into model-input batches; every batch is cut to
its longest real sequence (most docstring sentences are ~20 tokens, so a
fixed 64-token padding would triple the work).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from recipes import corpus

DEFAULT_SPLIT = {"calibration": 0.2, "train": 0.6, "heldout": 0.2}


def check_files(files, flag: str) -> list[str]:
    """The paths of a comma-separated flag value; each must exist and hold some text."""
    paths = [p.strip() for p in (files.split(",") if isinstance(files, str) else files) if p.strip()]
    if not paths:
        raise ValueError(f"{flag} names no files.")
    for path in paths:
        if not os.path.isfile(path):
            raise ValueError(f"{flag}: {path!r} does not exist or is not a file.")
        with open(path, encoding="utf-8", errors="replace") as f:
            if not f.read(4096).strip():
                raise ValueError(f"{flag}: {path!r} is empty; give text files with one or more sentences.")
    return paths


def file_sentences(paths) -> list[str]:
    """Unique non-empty sentences of text files (sentence-split like `bert.split_sentences`)."""
    from bert.data import split_sentences

    seen, result = set(), []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for paragraph in f.read().split("\n\n"):
                text = " ".join(paragraph.split())
                if not text:
                    continue
                for sentence in split_sentences(text).numpy():
                    sentence = sentence.decode("utf-8", errors="replace").strip()
                    if sentence and sentence not in seen:
                        seen.add(sentence)
                        result.append(sentence)
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
