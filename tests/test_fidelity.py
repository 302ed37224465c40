"""`tfreparam.fidelity`: top-10 neighbour overlap and the logistic-regression linear probe, against references."""

import numpy as np
import pytest

from tfreparam import fidelity


def _overlap_by_hand(a, b, k):
    def neighbours(x):
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        sim = unit @ unit.T
        return [set(sorted((j for j in range(len(x)) if j != i), key=lambda j: -sim[i, j])[:k]) for i in range(len(x))]

    return np.mean([len(p & q) / k for p, q in zip(neighbours(a), neighbours(b))])


def test_neighbour_overlap_matches_a_sort_by_hand():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 6))
    b = a + 0.5 * rng.normal(size=a.shape)
    for k in (1, 3, 10):
        assert fidelity.neighbour_overlap(a, b, k) == pytest.approx(_overlap_by_hand(a, b, k))
    assert fidelity.neighbour_overlap(a, 3.0 * a, 10) == 1.0
    assert fidelity.neighbour_overlap(a[:5], b[:5], 10) == pytest.approx(_overlap_by_hand(a[:5], b[:5], 4))


def test_embedding_fidelity_reports_top1_and_top10():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(30, 5))
    result = fidelity.embedding_fidelity(a, a + 0.1 * rng.normal(size=a.shape))
    assert set(result) == {"cosine", "cosine_min", "nn_agreement", "nn_agreement_top10"}
    assert fidelity.embedding_fidelity(a, a)["nn_agreement_top10"] == 1.0


def _objective(weights, bias, x, y, l2):
    logits = x @ weights + bias
    logits = logits - logits.max(1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -np.mean(log_p[np.arange(len(y)), y]) + 0.5 * l2 * np.sum(weights**2)


def test_logistic_regression_reaches_the_optimum_of_its_objective():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, 4))
    y = (x @ rng.normal(size=(4, 3)) + rng.normal(size=(120, 3))).argmax(1)
    weights, bias = fidelity.logistic_regression(x, y, l2=0.05)
    # The gradient, by central differences of the objective alone, vanishes at the solution.
    base = _objective(weights, bias, x, y, 0.05)
    eps = 1e-5
    for index in np.ndindex(weights.shape):
        step = np.zeros_like(weights)
        step[index] = eps
        slope = (_objective(weights + step, bias, x, y, 0.05) - _objective(weights - step, bias, x, y, 0.05)) / (2 * eps)
        assert abs(slope) < 1e-5
    for c in range(3):
        step = np.zeros(3)
        step[c] = eps
        assert abs(_objective(weights, bias + step, x, y, 0.05) - _objective(weights, bias - step, x, y, 0.05)) < 2e-10
    # ... and no random nearby point is better.
    for _ in range(20):
        assert _objective(weights + 1e-2 * rng.normal(size=weights.shape), bias, x, y, 0.05) >= base


def test_logistic_regression_agrees_with_scipy_when_available():
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 6))
    y = rng.integers(0, 4, 200)
    weights, bias = fidelity.logistic_regression(x, y, l2=0.1, tolerance=1e-9, max_iter=1000)

    def flat(w):
        return _objective(w[:24].reshape(6, 4), w[24:], x, y, 0.1)

    reference = optimize.minimize(flat, np.zeros(28), method="L-BFGS-B", options={"maxiter": 5000, "gtol": 1e-10})
    np.testing.assert_allclose(np.concatenate([weights.ravel(), bias]), reference.x, atol=1e-4)


def test_linear_probe_separates_clusters_and_is_at_chance_on_noise():
    rng = np.random.default_rng(4)
    centres = 4.0 * rng.normal(size=(5, 8))
    labels = [f"class {i % 5}" for i in range(250)]
    clustered = centres[[i % 5 for i in range(250)]] + rng.normal(size=(250, 8))
    assert fidelity.linear_probe(clustered, labels) > 0.95
    noise = rng.normal(size=(250, 8))
    assert fidelity.linear_probe(noise, labels) < 0.35
    # The folds depend on the seed and the count only: the same result twice.
    assert fidelity.linear_probe(noise, labels, seed=1) == fidelity.linear_probe(noise, labels, seed=1)


def test_probe_correct_is_the_per_example_form_of_linear_probe():
    rng = np.random.default_rng(5)
    labels = [i % 3 for i in range(90)]
    x = 2.0 * np.eye(3)[labels] @ rng.normal(size=(3, 6)) + rng.normal(size=(90, 6))
    correct = fidelity.probe_correct(x, labels, folds=3, l2=0.1)
    assert correct.dtype == bool and correct.shape == (90,)
    assert fidelity.linear_probe(x, labels, folds=3, l2=0.1) == correct.mean()


def test_paired_accuracy_difference_against_closed_forms():
    # Always right against always wrong: a difference of exactly 1 whatever is resampled.
    assert fidelity.paired_accuracy_difference(np.ones(50, bool), np.zeros(50, bool)) == {
        "difference": 1.0, "low": 1.0, "high": 1.0, "examples": 50}
    # Independent answers: the bootstrap interval is ~ ±1.96 standard errors of the mean paired difference.
    rng = np.random.default_rng(6)
    a, b = rng.random(4000) < 0.6, rng.random(4000) < 0.55
    d = a.astype(float) - b.astype(float)
    result = fidelity.paired_accuracy_difference(a, b, draws=4000)
    assert result["difference"] == pytest.approx(d.mean())
    half_width = 1.96 * d.std() / np.sqrt(len(d))
    assert (result["high"] - result["low"]) / 2 == pytest.approx(half_width, rel=0.1)
    assert result["low"] < d.mean() < result["high"]
    # Pairing matters: b = a with 2 % of answers flipped differs by little, and the interval is narrow.
    flipped = a.copy()
    flipped[:80] = ~flipped[:80]
    narrow = fidelity.paired_accuracy_difference(a, flipped)
    assert narrow["high"] - narrow["low"] < 0.25 * (result["high"] - result["low"])
    # Several sets: the mean of the per-set differences (as a mean probe accuracy is).
    two = fidelity.paired_accuracy_difference([np.ones(10, bool), a], [np.zeros(10, bool), b])
    assert two["difference"] == pytest.approx((1.0 + d.mean()) / 2) and two["examples"] == 4010


def test_paired_accuracy_difference_checks_its_inputs():
    with pytest.raises(ValueError, match="same non-empty example sets"):
        fidelity.paired_accuracy_difference(np.ones(5, bool), np.ones(4, bool))
    with pytest.raises(ValueError, match="same non-empty example sets"):
        fidelity.paired_accuracy_difference([], [])
    with pytest.raises(ValueError, match="level must be in"):
        fidelity.paired_accuracy_difference(np.ones(5, bool), np.ones(5, bool), level=1.5)


def test_linear_probe_checks_its_inputs():
    with pytest.raises(ValueError, match="one label per embedding row"):
        fidelity.linear_probe(np.zeros((4, 2)), ["a", "b"])
    with pytest.raises(ValueError, match="2\\+ classes"):
        fidelity.linear_probe(np.zeros((10, 2)), ["a"] * 10)
