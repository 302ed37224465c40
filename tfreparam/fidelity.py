"""How faithful a compressed encoder is to its original, on held-out inputs.

* `embedding_fidelity`: mean (and min) cosine between the two models'
  sentence embeddings, and top-1 nearest-neighbour agreement (does each
  sentence's most similar other sentence stay the same?).
* `mean_pooled`: sentence embeddings as sentence-transformers pools them
  (mean of `sequence_output` over real tokens).
* `mlm_accuracy`: masked-token accuracy of a network with an MLM head, on
  `bert.pretraining_dataset`-style batches.

Pure numpy on the metric side, so tests can check them against closed forms.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def _normalise(a: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.maximum(norms, 1e-12)


def nearest_neighbours(embeddings: np.ndarray) -> np.ndarray:
    """Index of each row's most cosine-similar *other* row."""
    unit = _normalise(np.asarray(embeddings, np.float64))
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(axis=1)


def embedding_fidelity(reference, compressed) -> dict:
    """{"cosine", "cosine_min", "nn_agreement"} of two (sentences, features) embedding sets."""
    reference = np.asarray(reference, np.float64)
    compressed = np.asarray(compressed, np.float64)
    if reference.ndim != 2 or reference.shape != compressed.shape:
        raise ValueError(
            "embedding_fidelity needs two (sentences, features) arrays of the same shape; got "
            f"{reference.shape} and {compressed.shape}."
        )
    if reference.shape[0] < 2:
        raise ValueError(f"Nearest-neighbour agreement needs at least 2 sentences; got {reference.shape[0]}.")
    cosine = np.sum(_normalise(reference) * _normalise(compressed), axis=1)
    agreement = np.mean(nearest_neighbours(reference) == nearest_neighbours(compressed))
    return {"cosine": float(cosine.mean()), "cosine_min": float(cosine.min()), "nn_agreement": float(agreement)}


def mean_pooled(encoder, batches, output: str = "sequence_output", mask_key: str = "input_mask") -> np.ndarray:
    """Mean of `encoder(x)[output]` over real tokens, for every batch dict in `batches`."""
    pooled = []
    for x in batches:
        hidden = encoder(x, training=False)
        hidden = (hidden[output] if isinstance(hidden, dict) else hidden).numpy().astype(np.float64)
        mask = np.asarray(x[mask_key])[..., None].astype(np.float64)
        pooled.append((hidden * mask).sum(1) / np.maximum(mask.sum(1), 1.0))
    if not pooled:
        raise ValueError("No batches to embed: give at least one batch of sentences.")
    return np.concatenate(pooled)


def encoder_fidelity(original, compressed, batches) -> dict:
    """`embedding_fidelity` of two encoders' mean-pooled embeddings of the same batches."""
    return embedding_fidelity(mean_pooled(original, batches), mean_pooled(compressed, batches))


def mlm_accuracy(network, batches) -> float:
    """Share of masked positions whose argmax `mlm_logits` is the original token.

    `batches` yield feature dicts (or (features, labels)) with `masked_lm_ids`
    and `masked_lm_weights`, as `bert.pretraining_dataset` makes them.
    """
    if not _has_mlm(network):
        raise ValueError("mlm_accuracy needs a network with an `mlm_logits` output (an MLM head).")
    correct = total = 0.0
    for batch in batches:
        features = batch[0] if isinstance(batch, tuple) else batch
        inputs = {name: features[name] for name in network.input_names}
        logits = network(inputs, training=False)["mlm_logits"]
        predicted = tf.argmax(logits, -1, output_type=tf.int32).numpy()
        ids = np.asarray(features["masked_lm_ids"])
        weights = np.asarray(features["masked_lm_weights"], np.float64)
        correct += float(np.sum((predicted == ids) * weights))
        total += float(np.sum(weights))
    if total == 0:
        raise ValueError("No masked positions in the batches: mlm_accuracy is undefined.")
    return correct / total


def _has_mlm(network) -> bool:
    outputs = getattr(network, "output", None)
    return isinstance(outputs, dict) and "mlm_logits" in outputs
