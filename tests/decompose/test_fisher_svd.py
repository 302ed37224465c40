"""Fisher-weighted SVD: row weighting by sqrt(importance), optimal in the weighted norm."""

import numpy as np
import pytest

from tfreparam.decompose import fisher_svd, svd

from .reference import tail_error


@pytest.mark.parametrize("level", [1.0, 3.7, 1e-4])
def test_uniform_importance_equals_plain_svd(level):
    W = np.random.default_rng(0).standard_normal((14, 10))
    plain = svd(W, rank=4)

    f = fisher_svd(W, np.full(14, level), rank=4)

    assert f.method == "fisher_svd" and f.form.name == "low_rank"
    np.testing.assert_allclose(f.reconstruct(), plain.reconstruct(), atol=1e-5)
    assert f.relative_error == pytest.approx(plain.relative_error, abs=1e-6)
    assert f.info["floored_rows"] == 0


def test_uniform_unit_importance_gives_the_same_factors_as_svd():
    W = np.random.default_rng(1).standard_normal((8, 6))
    a, b = svd(W, rank=3), fisher_svd(W, np.ones(8), rank=3)
    # Singular vectors are defined up to sign: compare per-component outer products.
    for k in range(3):
        np.testing.assert_allclose(
            np.outer(a.factors["u"][:, k], a.factors["v"][k]),
            np.outer(b.factors["u"][:, k], b.factors["v"][k]),
            atol=1e-5,
        )


def test_error_is_optimal_in_the_importance_weighted_norm():
    rng = np.random.default_rng(2)
    W = rng.standard_normal((16, 12))
    importance = rng.gamma(0.5, size=16)  # very uneven
    d = np.sqrt(importance)[:, None]

    f = fisher_svd(W, importance, rank=5)
    weighted = np.linalg.norm(d * (W - f.reconstruct())) / np.linalg.norm(d * W)
    plain = np.linalg.norm(d * (W - svd(W, rank=5).reconstruct())) / np.linalg.norm(d * W)

    assert weighted == pytest.approx(tail_error(np.linalg.svd(d * W, compute_uv=False), 5), abs=1e-5)
    assert weighted < plain
    # v = √σ V_rᵀ of the weighted matrix.
    np.testing.assert_allclose(
        np.linalg.norm(f.factors["v"], axis=1), np.sqrt(f.info["singular_values"][:5]), rtol=1e-5
    )


def test_zero_importance_rows_are_floored_and_reported():
    rng = np.random.default_rng(3)
    W = rng.standard_normal((10, 7))
    importance = rng.uniform(0.5, 2.0, size=10)
    importance[[2, 5]] = 0.0

    f = fisher_svd(W, importance, rank=3)

    assert f.info["floored_rows"] == 2
    assert f.info["importance_floor"] == pytest.approx(1e-6 * np.sqrt(importance.max()))
    assert np.all(np.isfinite(f.reconstruct()))
    # A floored row is projected onto the kept right-singular subspace: never longer than before.
    rows = f.reconstruct()[[2, 5]]
    assert np.all(np.linalg.norm(rows, axis=1) <= np.linalg.norm(W[[2, 5]], axis=1) + 1e-5)


@pytest.mark.parametrize(
    "importance, match",
    [
        (np.ones(5), r"shape \(in_features,\) = \(6,\).*got shape \(5,\)"),
        (np.ones((6, 1)), r"got shape \(6, 1\)"),
        (np.array([1.0, 1, -0.5, 1, 1, 1]), r"row_importance\[2\] = -0.5 is negative"),
        (np.array([1.0, 1, np.inf, 1, 1, 1]), r"NaN or Inf"),
        (np.zeros(6), r"all zero"),
    ],
)
def test_bad_importance_is_rejected(importance, match):
    with pytest.raises(ValueError, match=match):
        fisher_svd(np.ones((6, 4)), importance, rank=1)
