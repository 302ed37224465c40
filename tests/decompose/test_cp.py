"""CP-ALS: recovers planted low-rank tensors, reports convergence, balanced factor layout."""

import math

import numpy as np
import pytest

from tfreparam.decompose import cp_als

from .reference import cp_tensor, relative


def _planted(seed, modes, rank):
    rng = np.random.default_rng(seed)
    factors = [rng.standard_normal((n, rank)) for n in modes]
    return cp_tensor(factors)


def _factors(f):
    return [f.factors[f"factor_{j}"] for j in range(len(f.factors))]


@pytest.mark.parametrize("init", ["svd", "random"])
@pytest.mark.parametrize(
    "in_factors, out_factors, rank", [((4, 5), (6, 3), 3), ((6,), (5, 4), 2), ((3, 4, 2), (5,), 4)]
)
def test_planted_rank_is_recovered(in_factors, out_factors, rank, init):
    modes = in_factors + out_factors
    W = _planted(rank, modes, rank).reshape(math.prod(in_factors), math.prod(out_factors))

    f = cp_als(W, in_factors, out_factors, rank, n_iter=500, tol=1e-10, init=init)

    assert f.form.name == "cp" and f.method == "cp_als"
    assert f.layer_config == {"input_factors": in_factors, "output_factors": out_factors, "rank": rank}
    assert [u.shape for u in _factors(f)] == [(n, rank) for n in modes]
    assert f.relative_error < 1e-4
    assert relative(cp_tensor(_factors(f)).reshape(W.shape), W) < 1e-4
    assert f.info["converged"] is True
    assert f.info["n_iter"] == len(f.info["fit_history"]) < 500
    assert f.info["fit_history"][-1] == pytest.approx(1 - f.relative_error, abs=1e-4)


def test_weights_are_sorted_and_spread_evenly_over_the_modes():
    W = _planted(9, (4, 5, 6), 3).reshape(20, 6)
    f = cp_als(W, (4, 5), (6,), 3, tol=1e-10)
    weights = f.info["weights"]
    assert np.all(np.diff(weights) <= 0)
    for u in _factors(f):
        np.testing.assert_allclose(np.linalg.norm(u, axis=0), weights ** (1 / 3), rtol=1e-5)


def test_iteration_limit_is_reported_as_not_converged():
    W = np.random.default_rng(1).standard_normal((12, 10))
    f = cp_als(W, (3, 4), (2, 5), rank=5, n_iter=3, tol=0.0)
    assert f.info == {**f.info, "converged": False, "n_iter": 3}
    assert len(f.info["fit_history"]) == 3


def test_fit_history_tracks_the_true_error():
    W = np.random.default_rng(2).standard_normal((12, 10))
    f = cp_als(W, (3, 4), (2, 5), rank=4, n_iter=40)
    assert f.info["fit_history"][-1] == pytest.approx(1 - f.relative_error, abs=1e-5)
    # ALS never lowers the fit from one sweep to the next (up to rounding).
    history = f.info["fit_history"]
    assert all(b >= a - 1e-9 for a, b in zip(history, history[1:]))


def test_random_init_is_seeded():
    W = np.random.default_rng(3).standard_normal((12, 10))
    a = cp_als(W, (3, 4), (2, 5), rank=3, n_iter=5, init="random", seed=11)
    b = cp_als(W, (3, 4), (2, 5), rank=3, n_iter=5, init="random", seed=11)
    np.testing.assert_array_equal(a.factors["factor_0"], b.factors["factor_0"])


def test_rank_above_a_mode_size_is_allowed():
    # The SVD init pads mode 0 (size 2) with random columns. ALS may crawl
    # ("swamp") on such tensors, so only require a clear gain over rank 1.
    W = _planted(4, (2, 5, 6), 3).reshape(10, 6)
    f = cp_als(W, (2, 5), (6,), rank=3, n_iter=100)
    single = cp_als(W, (2, 5), (6,), rank=1, n_iter=100)
    assert f.factors["factor_0"].shape == (2, 3)
    assert f.relative_error < 0.2 * single.relative_error
    history = f.info["fit_history"]
    assert all(b >= a - 1e-9 for a, b in zip(history, history[1:]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rank=0), r"rank must be a positive integer; got 0"),
        (dict(rank=2, n_iter=0), r"n_iter must be a positive integer; got 0"),
        (dict(rank=2, init="hosvd"), r"init must be 'svd' or 'random'; got 'hosvd'"),
        (dict(rank=2, seed=1.5), r"seed must be an int or None; got 1.5"),
        (dict(rank=2, tol=-1.0), r"tol must be a finite number >= 0; got -1.0"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cp_als(np.ones((12, 10)), (4, 3), (2, 5), **kwargs)
