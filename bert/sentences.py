"""Sentence-level helpers: tokenized batches and mean-pooled sentence embeddings."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def tokenize_batches(preprocessor, sentences, batch_size: int = 64) -> list[dict]:
    """Model-input dicts for `sentences`, `batch_size` at a time."""
    return [preprocessor(tf.constant(sentences[i:i + batch_size])) for i in range(0, len(sentences), batch_size)]


def as_dataset(batches) -> tf.data.Dataset:
    """A `tf.data.Dataset` over already-tokenized batches (e.g. for calibration)."""
    if not batches:
        raise ValueError("No batches: give at least one sentence.")
    return tf.data.Dataset.from_generator(
        lambda: iter(batches),
        output_signature={k: tf.TensorSpec((None, None), v.dtype) for k, v in batches[0].items()},
    )


def mean_pooled_embeddings(encoder, batches) -> np.ndarray:
    """Mean of `sequence_output` over real tokens: the sentence-transformers pooling."""
    pooled = []
    for x in batches:
        hidden = encoder(x, training=False)["sequence_output"].numpy().astype(np.float64)
        mask = x["input_mask"].numpy()[..., None]
        pooled.append((hidden * mask).sum(1) / mask.sum(1))
    return np.concatenate(pooled)
