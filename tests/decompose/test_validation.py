"""Bad kernels and bad rank/factor arguments raise ValueErrors that name the numbers."""

import numpy as np
import pytest

import tfreparam.decompose as decompose

EVERY_METHOD = {
    "svd": lambda W: decompose.svd(W, rank=1),
    "whitened_svd": lambda W: decompose.whitened_svd(W, np.eye(np.shape(W)[0]), rank=1),
    "fisher_svd": lambda W: decompose.fisher_svd(W, np.ones(np.shape(W)[0]), rank=1),
    "nearest_kronecker": lambda W: decompose.nearest_kronecker(W),
    "tt_svd": lambda W: decompose.tt_svd(W, (2, 2), (2, 2), ranks=1),
    "tucker": lambda W: decompose.tucker(W, (2, 2), (2, 2), ranks=1),
    "cp_als": lambda W: decompose.cp_als(W, (2, 2), (2, 2), rank=1),
}


@pytest.mark.parametrize("method", sorted(EVERY_METHOD))
@pytest.mark.parametrize(
    "W, match",
    [
        (np.ones(16), r"2-D kernel .* got an array with shape \(16,\) \(ndim=1\)"),
        (np.ones((2, 2, 4)), r"shape \(2, 2, 4\) \(ndim=3\).*Reshape it first"),
        (np.ones((0, 4)), r"shape \(0, 4\), which has no entries"),
        (np.array([["a"] * 4] * 4), r"must hold real numbers; got dtype <U1"),
        (np.where(np.eye(4) > 0, np.nan, 1.0), r"W contains 4 non-finite value\(s\) \(NaN or Inf\) out of 16"),
        (np.where(np.eye(4) > 0, np.inf, 1.0), r"4 non-finite value"),
    ],
)
def test_bad_kernels_are_rejected_by_every_method(method, W, match):
    with pytest.raises(ValueError, match=match):
        EVERY_METHOD[method](W)


@pytest.mark.parametrize(
    "rank, match",
    [
        (0, r"rank must be a positive integer; got 0"),
        (-2, r"rank must be a positive integer; got -2"),
        (2.5, r"rank must be a positive integer; got 2.5"),
        (True, r"rank must be a positive integer; got True"),
        ("3", r"rank must be a positive integer; got '3'"),
        (7, r"rank=7 exceeds its maximum 6 \(min\(in_features, out_features\) for a kernel of shape \(8, 6\)\); "
            r"use rank <= 6"),
    ],
)
@pytest.mark.parametrize("method", ["svd", "whitened_svd", "fisher_svd"])
def test_bad_low_rank_ranks(method, rank, match):
    W = np.ones((8, 6))
    call = {
        "svd": lambda: decompose.svd(W, rank=rank),
        "whitened_svd": lambda: decompose.whitened_svd(W, np.eye(8), rank=rank),
        "fisher_svd": lambda: decompose.fisher_svd(W, np.ones(8), rank=rank),
    }[method]
    with pytest.raises(ValueError, match=match):
        call()


def test_integral_float_rank_is_accepted():
    assert decompose.svd(np.eye(4), rank=2.0).layer_config == {"rank": 2}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, r"Pass exactly one of rank, energy, param_budget; got none"),
        ({"rank": 2, "energy": 0.9}, r"Pass exactly one of .* got rank, energy"),
        ({"energy": 0.0}, r"energy must be a number in \(0, 1\]"),
        ({"energy": 1.5}, r"energy must be a number in \(0, 1\].*got 1.5"),
        ({"param_budget": 1.5}, r"share of in\*out = 48 and must be in \(0, 1\]; got 1.5"),
        ({"param_budget": 13}, r"allows 13 parameters, but even rank 1 needs in_features \+ out_features = 14"),
        ({"param_budget": 0.1}, r"allows 4 parameters"),
        ({"param_budget": 0}, r"param_budget \(a parameter count\) must be a positive integer; got 0"),
        ({"param_budget": "all"}, r"param_budget must be an int .* or a float"),
    ],
)
def test_bad_rank_selectors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        decompose.svd(np.ones((8, 6)), **kwargs)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda W: decompose.tucker(W, (3, 3), (2, 2), ranks=1),
            r"input_factors=\(3, 3\) multiply to 9, but W has 4 input features"
            r".*balanced_factors\(4, 2\) = \(2, 2\)",
        ),
        (
            lambda W: decompose.cp_als(W, (2, 2), (8,), rank=1),
            r"output_factors=\(8,\) multiply to 8, but W has 4 output",
        ),
        (
            lambda W: decompose.cp_als(W, (2, 0), (2, 2), rank=1),
            r"input_factors\[1\] must be a positive integer; got 0",
        ),
        (
            lambda W: decompose.tucker(W, (2, 2.5), (2, 2), ranks=1),
            r"input_factors\[1\] must be a positive integer; got 2.5",
        ),
        (
            lambda W: decompose.tucker(W, 4, (2, 2), ranks=1),
            r"input_factors must be a sequence of positive integers; got 4",
        ),
        (lambda W: decompose.tucker(W, (), (2, 2), ranks=1), r"input_factors must have at least one entry"),
        (
            lambda W: decompose.nearest_kronecker(W, (2, 2), (2, 2), num_terms=1.5),
            r"num_terms must be a positive integer; got 1.5",
        ),
    ],
)
def test_bad_factor_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call(np.ones((4, 4)))
