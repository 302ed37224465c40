"""Tucker by HOSVD/HOOI: layout, exactness at full ranks, HOOI never worse than HOSVD."""

import math

import numpy as np
import pytest

from tfreparam.decompose import tucker

from .reference import relative, tucker_tensor


def _factors(f):
    return [f.factors[f"factor_{j}"] for j in range(len(f.factors) - 1)]


@pytest.mark.parametrize(
    "in_factors, out_factors", [((4, 6), (3, 5)), ((2, 3, 4), (5, 6)), ((12,), (2, 2, 3))]
)
def test_full_ranks_are_exact(in_factors, out_factors):
    modes = in_factors + out_factors
    W = np.random.default_rng(0).standard_normal((math.prod(in_factors), math.prod(out_factors)))

    f = tucker(W, in_factors, out_factors, ranks=modes)

    assert f.form.name == "tucker" and f.method == "tucker"
    assert f.layer_config == {"input_factors": in_factors, "output_factors": out_factors, "ranks": modes}
    assert f.factors["core"].shape == modes
    assert [u.shape for u in _factors(f)] == [(n, n) for n in modes]
    assert f.relative_error < 1e-5
    assert relative(tucker_tensor(f.factors["core"], _factors(f)).reshape(W.shape), W) < 1e-5


def test_planted_multilinear_rank_is_recovered_with_orthonormal_factors():
    rng = np.random.default_rng(1)
    modes, ranks = (4, 5, 6, 3), (2, 3, 2, 2)
    core = rng.standard_normal(ranks)
    W = tucker_tensor(core, [rng.standard_normal((n, r)) for n, r in zip(modes, ranks)]).reshape(20, 18)

    f = tucker(W, (4, 5), (6, 3), ranks=ranks)

    assert f.relative_error < 1e-5
    assert relative(tucker_tensor(f.factors["core"], _factors(f)).reshape(20, 18), W) < 1e-5
    for u in _factors(f):
        np.testing.assert_allclose(u.T.astype(np.float64) @ u, np.eye(u.shape[1]), atol=1e-5)


def test_hosvd_factors_are_the_leading_singular_subspaces():
    W = np.random.default_rng(2).standard_normal((20, 18))
    tensor = W.reshape(4, 5, 6, 3)
    f = tucker(W, (4, 5), (6, 3), ranks=(2, 3, 4, 2))
    for j, u in enumerate(_factors(f)):
        unfolding = np.moveaxis(tensor, j, 0).reshape(tensor.shape[j], -1)
        reference = np.linalg.svd(unfolding)[0][:, : u.shape[1]]
        # Same subspace: the projectors agree (columns may differ in sign).
        np.testing.assert_allclose(u @ u.T, reference @ reference.T, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_hooi_is_never_worse_than_hosvd(seed):
    W = np.random.default_rng(seed).standard_normal((24, 30))
    hosvd = tucker(W, (4, 6), (5, 6), ranks=3)
    hooi = tucker(W, (4, 6), (5, 6), ranks=3, n_iter=25, tol=0.0)

    history = hooi.info["error_history"]
    assert hooi.info["algorithm"] == "hooi" and hosvd.info["algorithm"] == "hosvd"
    assert history[0] == pytest.approx(hosvd.relative_error, abs=1e-6)
    assert all(b <= a + 1e-12 for a, b in zip(history, history[1:]))
    assert hooi.relative_error <= hosvd.relative_error + 1e-6
    assert hooi.relative_error == pytest.approx(history[-1], abs=1e-6)


def test_hooi_stops_at_tol_and_reports_it():
    W = np.random.default_rng(5).standard_normal((24, 30))
    f = tucker(W, (4, 6), (5, 6), ranks=3, n_iter=500, tol=1e-3)
    assert f.info["converged"]
    assert f.info["iterations"] == len(f.info["error_history"]) - 1 < 500
    assert f.info["error_history"][-2] - f.info["error_history"][-1] < 1e-3


def test_int_rank_is_capped_at_each_mode_size():
    f = tucker(np.random.default_rng(6).standard_normal((6, 20)), (2, 3), (4, 5), ranks=4)
    assert f.layer_config["ranks"] == (2, 3, 4, 4)


def test_rank_above_a_sibling_product_still_works():
    # Mode 0 has 8 entries but the other modes only allow rank 2 * 1 = 2 in its unfolding.
    W = np.random.default_rng(7).standard_normal((8, 2))
    f = tucker(W, (8,), (2,), ranks=(8, 2))
    assert f.factors["factor_0"].shape == (8, 8)
    assert f.relative_error < 1e-5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ranks=(2, 2, 2)), r"tuple of 4 ranks; got 3"),
        (dict(ranks=(5, 2, 2, 2)), r"ranks\[0\]=5 > 4"),
        (dict(ranks=2.5), r"ranks must be a positive integer; got 2.5"),
        (dict(ranks=2, n_iter=-1), r"n_iter must be a positive integer; got -1"),
        (dict(ranks=2, tol=float("nan")), r"tol must be a finite number >= 0"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tucker(np.ones((12, 10)), (4, 3), (2, 5), **kwargs)
