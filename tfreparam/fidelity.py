"""How faithful a compressed encoder is to its original, on held-out inputs.

* `embedding_fidelity`: mean (and min) cosine between the two models'
  sentence embeddings, top-1 nearest-neighbour agreement (does each
  sentence's most similar other sentence stay the same?) and top-10
  overlap (`neighbour_overlap`: the share of each sentence's 10 nearest
  neighbours that stay among its 10 nearest).
* `linear_probe`: k-fold accuracy of a multinomial logistic regression (L2)
  trained on sentence embeddings: how much of a labelled task the embedding
  space still carries (`logistic_regression` fits one). `probe_correct`
  gives its per-example answers, and `paired_accuracy_difference` compares
  two models on the same examples with a bootstrap interval.
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


def neighbour_overlap(reference, compressed, k: int = 10) -> float:
    """Mean over rows of |k nearest of the row in `reference` ∩ k nearest in `compressed`| / k (self excluded).

    With fewer than k + 1 rows, k becomes rows - 1.
    """
    reference = _normalise(np.asarray(reference, np.float64))
    compressed = _normalise(np.asarray(compressed, np.float64))
    n = reference.shape[0]
    k = min(int(k), n - 1)
    if k < 1:
        raise ValueError(f"Neighbour overlap needs at least 2 rows; got {n}.")
    sets = []
    for unit in (reference, compressed):
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        sets.append(np.argpartition(-similarity, k - 1, axis=1)[:, :k])
    shared = [len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(*sets)]
    return float(np.mean(shared) / k)


def embedding_fidelity(reference, compressed) -> dict:
    """{"cosine", "cosine_min", "nn_agreement", "nn_agreement_top10"} of two (sentences, features) embedding sets."""
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
    return {"cosine": float(cosine.mean()), "cosine_min": float(cosine.min()), "nn_agreement": float(agreement),
            "nn_agreement_top10": neighbour_overlap(reference, compressed, 10)}


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


# -- linear probe ------------------------------------------------------------------------


def _softmax_loss(weights, x, onehot, l2):
    """Mean cross-entropy of softmax(x @ W) + l2/2 · ||W without its last (bias) row||²; and its gradient."""
    logits = x @ weights
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    total = exp.sum(axis=1, keepdims=True)
    n = x.shape[0]
    loss = -np.sum(onehot * (logits - np.log(total))) / n + 0.5 * l2 * np.sum(weights[:-1] ** 2)
    grad = x.T @ (exp / total - onehot) / n
    grad[:-1] += l2 * weights[:-1]
    return float(loss), grad


def _lbfgs(fn, x0, max_iter: int, tolerance: float, memory: int = 10):
    """Minimises fn(x) -> (value, gradient) from x0: L-BFGS with a backtracking (Armijo) line search."""
    x = x0
    value, grad = fn(x)
    steps, changes = [], []
    for _ in range(max_iter):
        if np.max(np.abs(grad)) <= tolerance:
            break
        direction = -grad
        alphas = []
        for s, y in reversed(list(zip(steps, changes))):
            alpha = np.sum(s * direction) / np.sum(y * s)
            alphas.append(alpha)
            direction = direction - alpha * y
        if steps:
            direction *= np.sum(steps[-1] * changes[-1]) / np.sum(changes[-1] ** 2)
        for (s, y), alpha in zip(zip(steps, changes), reversed(alphas)):
            beta = np.sum(y * direction) / np.sum(y * s)
            direction = direction + (alpha - beta) * s
        slope = np.sum(grad * direction)
        if slope >= 0:  # not a descent direction: restart from the gradient
            steps, changes, direction, slope = [], [], -grad, -np.sum(grad * grad)
        step = 1.0
        while True:
            candidate = x + step * direction
            new_value, new_grad = fn(candidate)
            if new_value <= value + 1e-4 * step * slope or step < 1e-10:
                break
            step *= 0.5
        s, y = candidate - x, new_grad - grad
        if np.sum(s * y) > 1e-12:
            steps.append(s)
            changes.append(y)
            if len(steps) > memory:
                steps.pop(0)
                changes.pop(0)
        if value - new_value <= 1e-12 * max(1.0, abs(value)):
            x, value, grad = candidate, new_value, new_grad
            break
        x, value, grad = candidate, new_value, new_grad
    return x, value, grad


def logistic_regression(features, labels, l2: float = 1e-2, max_iter: int = 300, tolerance: float = 1e-6):
    """A multinomial logistic regression (softmax, L2 on the weights, bias unpenalised), fitted by L-BFGS.

    Minimises mean cross-entropy + l2/2 · ||W||². `labels` are ints 0..C-1.
    Returns (W (features, C), b (C,)): class scores are features @ W + b.
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"logistic_regression needs (n, features) features and (n,) labels; got {x.shape} "
                         f"and {y.shape}.")
    classes = int(y.max()) + 1
    onehot = np.eye(classes)[y]
    x1 = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    start = np.zeros((x1.shape[1], classes))
    weights, _, _ = _lbfgs(lambda w: (lambda v, g: (v, g.ravel()))(
        *_softmax_loss(w.reshape(start.shape), x1, onehot, l2)), start.ravel(), max_iter, tolerance)
    weights = weights.reshape(start.shape)
    return weights[:-1], weights[-1]


def fold_indices(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """The fold (0..folds-1) of each of n examples: a seeded permutation dealt round-robin."""
    order = np.random.default_rng(seed).permutation(n)
    fold = np.empty(n, int)
    fold[order] = np.arange(n) % folds
    return fold


def probe_correct(embeddings, labels, folds: int = 5, l2: float = 1e-2, max_iter: int = 300,
                  seed: int = 0) -> np.ndarray:
    """Per example, whether `linear_probe`'s cross-validated classifier gets its label right (bool array).

    Each example is predicted by the classifier fitted on the other folds
    (features standardised on those folds). The folds depend only on `seed`
    and the number of examples, so two embedding sets of the same sentences
    are probed on the same folds and their answers pair up, example by
    example (`paired_accuracy_difference`).
    """
    x = np.asarray(embeddings, np.float64)
    names = sorted(set(labels))
    if x.ndim != 2 or len(labels) != x.shape[0]:
        raise ValueError(f"linear_probe needs one label per embedding row; got {x.shape} and {len(labels)} labels.")
    if len(names) < 2 or folds < 2 or x.shape[0] < folds:
        raise ValueError(f"linear_probe needs 2+ classes and at least `folds` ({folds} >= 2) examples; got "
                         f"{len(names)} classes, {x.shape[0]} examples.")
    index = {name: i for i, name in enumerate(names)}
    y = np.array([index[label] for label in labels])
    fold = fold_indices(len(y), folds, seed)
    correct = np.zeros(len(y), bool)
    for f in range(folds):
        train, test = fold != f, fold == f
        mean, std = x[train].mean(0), x[train].std(0) + 1e-8
        weights, bias = logistic_regression((x[train] - mean) / std, y[train], l2=l2, max_iter=max_iter)
        # Classes absent from the training folds get the zero scores they were initialised with.
        scores = ((x[test] - mean) / std) @ weights + bias
        if weights.shape[1] < len(names):
            scores = np.concatenate([scores, np.full((scores.shape[0], len(names) - weights.shape[1]), -np.inf)], 1)
        correct[test] = scores.argmax(1) == y[test]
    return correct


def linear_probe(embeddings, labels, folds: int = 5, l2: float = 1e-2, max_iter: int = 300, seed: int = 0) -> float:
    """k-fold cross-validated accuracy of `logistic_regression` on `embeddings` (standardised per fold).

    Labels may be any hashable values; the folds depend only on `seed` and
    the number of examples, so two embedding sets of the same sentences are
    probed on the same folds.
    """
    return float(np.mean(probe_correct(embeddings, labels, folds, l2, max_iter, seed)))


def paired_accuracy_difference(correct_a, correct_b, draws: int = 2000, level: float = 0.95,
                               seed: int = 0) -> dict:
    """Accuracy of a minus accuracy of b on the same examples, with a paired bootstrap interval.

    `correct_a`, `correct_b`: per-example correctness (bool arrays of one
    length), or lists of such pairs, one per labelled set: the difference is
    then the mean over sets of each set's difference (as a mean probe
    accuracy is), each set resampled on its own. The interval resamples
    examples only: it shows whether a difference is larger than what the
    choice of sentences explains, not the spread of retraining the probe.
    Returns {"difference", "low", "high", "examples"}.
    """
    sets_a, sets_b = ([x] if len(x) and np.ndim(x[0]) == 0 else list(x) for x in (correct_a, correct_b))
    if not sets_a or len(sets_a) != len(sets_b) or any(np.shape(a) != np.shape(b) or np.size(a) == 0
                                         for a, b in zip(sets_a, sets_b)):
        raise ValueError("paired_accuracy_difference needs the same non-empty example sets for both models; got "
                         f"sizes {[np.size(a) for a in sets_a]} and {[np.size(b) for b in sets_b]}.")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    rng = np.random.default_rng(seed)
    point, resampled = 0.0, np.zeros(draws)
    for a, b in zip(sets_a, sets_b):
        delta = np.asarray(a, np.float64) - np.asarray(b, np.float64)
        point += delta.mean()
        resampled += delta[rng.integers(0, len(delta), size=(draws, len(delta)))].mean(1)
    point, resampled = point / len(sets_a), resampled / len(sets_a)
    low, high = np.quantile(resampled, [(1 - level) / 2, (1 + level) / 2])
    return {"difference": float(point), "low": float(low), "high": float(high),
            "examples": int(sum(np.size(a) for a in sets_a))}
