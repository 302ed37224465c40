"""Activation-whitened SVD: optimal output error, regularisation of singular Gram matrices."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfreparam.decompose import svd, whitened_svd

from .reference import sqrt_psd, tail_error


def _output_error(X, W, W_hat):
    return float(np.linalg.norm(X @ (W - W_hat)) / np.linalg.norm(X @ W))


def _correlated_inputs(rng, samples, features, condition=1e3):
    """X = Z @ M with M = Q1 diag(logspace) Q2: strongly correlated, ill-conditioned features."""
    q1 = np.linalg.qr(rng.standard_normal((features, features)))[0]
    q2 = np.linalg.qr(rng.standard_normal((features, features)))[0]
    M = (q1 * np.geomspace(1.0, 1.0 / condition, features)) @ q2
    return rng.standard_normal((samples, features)) @ M


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("rank", [2, 4, 8])
def test_beats_plain_svd_on_correlated_inputs(seed, rank):
    rng = np.random.default_rng(seed)
    X = _correlated_inputs(rng, 256, 32)
    W = rng.standard_normal((32, 24))

    plain = _output_error(X, W, svd(W, rank=rank).reconstruct())
    white = whitened_svd(W, X.T @ X, rank=rank)

    # Measured over seeds 0-19 and ranks 2/4/8: the ratio is 0.20-0.75.
    assert _output_error(X, W, white.reconstruct()) < 0.8 * plain
    assert white.info["damping"] == 0.0


def test_output_error_is_the_optimum_in_output_space():
    rng = np.random.default_rng(7)
    X = _correlated_inputs(rng, 200, 20, condition=100)
    W = rng.standard_normal((20, 15))
    G = X.T @ X
    # ||X Δ||_F = ||G^½ Δ||_F, so the best rank-r error is the tail of σ(G^½ W).
    whitened_spectrum = np.linalg.svd(sqrt_psd(G) @ W, compute_uv=False)

    f = whitened_svd(W, G, rank=5)

    assert f.output_error == pytest.approx(tail_error(whitened_spectrum, 5), abs=1e-5)
    assert f.output_error == pytest.approx(_output_error(X, W, f.reconstruct()), abs=1e-9)


@settings(max_examples=20, deadline=None)
@given(
    in_features=st.integers(2, 16),
    out_features=st.integers(2, 16),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_never_worse_than_plain_svd_in_output_error(in_features, out_features, seed, data):
    rng = np.random.default_rng(seed)
    rank = data.draw(st.integers(1, min(in_features, out_features)))
    X = _correlated_inputs(rng, 3 * in_features + 4, in_features, condition=30)
    W = rng.standard_normal((in_features, out_features))

    plain = _output_error(X, W, svd(W, rank=rank).reconstruct())
    white = _output_error(X, W, whitened_svd(W, X.T @ X, rank=rank).reconstruct())

    # Slack for the float32 rounding of the stored factors only.
    assert white <= plain + 1e-5


def test_identity_gram_reduces_to_plain_svd():
    W = np.random.default_rng(3).standard_normal((12, 9))
    a, b = svd(W, rank=4), whitened_svd(W, np.eye(12), rank=4)
    np.testing.assert_allclose(b.reconstruct(), a.reconstruct(), atol=1e-5)
    assert b.output_error == pytest.approx(a.relative_error, abs=1e-6)


def test_factor_layout_and_balance():
    rng = np.random.default_rng(4)
    X = _correlated_inputs(rng, 80, 10, condition=10)
    f = whitened_svd(rng.standard_normal((10, 6)), X.T @ X, rank=3)
    assert f.form.name == "low_rank" and f.method == "whitened_svd"
    assert f.factors["u"].shape == (10, 3) and f.factors["v"].shape == (3, 6)
    # v = √σ V_rᵀ: its rows have norm √σ of the whitened spectrum.
    np.testing.assert_allclose(
        np.linalg.norm(f.factors["v"], axis=1), np.sqrt(f.info["singular_values"][:3]), rtol=1e-5
    )


def test_energy_and_budget_use_the_whitened_spectrum():
    rng = np.random.default_rng(5)
    X = _correlated_inputs(rng, 100, 16)
    W = rng.standard_normal((16, 12))
    G = X.T @ X
    s2 = np.linalg.svd(sqrt_psd(G) @ W, compute_uv=False) ** 2
    expected = int(np.searchsorted(np.cumsum(s2) / s2.sum(), 0.9) + 1)

    assert whitened_svd(W, G, energy=0.9).layer_config["rank"] == expected
    assert whitened_svd(W, G, param_budget=0.5).layer_config["rank"] == int(0.5 * 16 * 12) // 28


def test_singular_gram_is_damped_with_a_warning():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((5, 12))  # 5 samples < 12 features: rank-5 Gram matrix
    W = rng.standard_normal((12, 8))

    with pytest.warns(UserWarning, match=r"singular or not positive definite.*damping"):
        f = whitened_svd(W, X.T @ X, rank=3)

    assert f.info["damping"] >= 1e-6
    assert f.info["damping_absolute"] == pytest.approx(f.info["damping"] * np.mean(np.diag(X.T @ X)))
    assert np.all(np.isfinite(f.reconstruct()))
    assert np.isfinite(f.output_error) and f.output_error <= 1.0
    assert f.output_error == pytest.approx(_output_error(X, W, f.reconstruct()), abs=1e-9)


def test_all_zero_gram_is_refused_as_no_calibration_signal():
    # Issue 16.15: it used to be damped with a warning into factors with entries around 25.
    W = np.random.default_rng(8).standard_normal((6, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"gram is all zero.*no calibration signal"):
            whitened_svd(W, np.zeros((6, 6)), rank=2)


def test_requested_damping_is_applied_silently():
    rng = np.random.default_rng(9)
    X = rng.standard_normal((50, 8))
    G = X.T @ X
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = whitened_svd(rng.standard_normal((8, 4)), G, rank=2, damping=0.01)
    assert f.info["damping"] == 0.01
    assert f.info["damping_absolute"] == pytest.approx(0.01 * np.mean(np.diag(G)))


def test_float32_gram_with_rounding_asymmetry_is_accepted():
    rng = np.random.default_rng(10)
    X = rng.standard_normal((64, 10)).astype(np.float32)
    G = X.T @ X
    G[0, 1] *= 1 + 1e-7  # float32 accumulation noise
    f = whitened_svd(rng.standard_normal((10, 5)), G, rank=2)
    assert np.isfinite(f.output_error)


@pytest.mark.parametrize(
    "gram, match",
    [
        (np.eye(5), r"shape \(in_features, in_features\) = \(6, 6\).*got shape \(5, 5\)"),
        (np.ones(6), r"got shape \(6,\)"),
        (np.triu(np.ones((6, 6))), r"not symmetric: max \|G - Gᵀ\| = 1"),
        (np.diag([1.0, 1, 1, -2, 1, 1]), r"negative diagonal entry G\[3, 3\] = -2"),
        (np.diag([1.0, 1, np.nan, 1, 1, 1]), r"1 non-finite value"),
    ],
)
def test_bad_gram_is_rejected(gram, match):
    with pytest.raises(ValueError, match=match):
        whitened_svd(np.ones((6, 3)), gram, rank=1)


def test_negative_damping_is_rejected():
    with pytest.raises(ValueError, match=r"damping must be a finite number >= 0; got -1"):
        whitened_svd(np.ones((3, 3)), np.eye(3), rank=1, damping=-1.0)


def test_strongly_indefinite_gram_is_rejected():
    G = -1e9 * np.ones((4, 4)) + np.diag([2e9] * 4)  # diag 1e9, eigenvalue -2e9
    with pytest.raises(ValueError, match=r"far from positive semi-definite \(smallest eigenvalue"):
        whitened_svd(np.ones((4, 2)), G, rank=1)
