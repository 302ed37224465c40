"""TT-SVD: MPO core layout, exactness at full ranks, the eps error guarantee, rank caps."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfreparam.decompose import tt_svd

from .reference import relative, tt_entry, tt_kernel

CONFIGS = [
    ((4, 6), (3, 5)),
    ((2, 3, 4), (3, 2, 2)),
    ((2, 2, 2, 3), (2, 3, 1, 2)),
]


def _max_ranks(in_factors, out_factors):
    """Bond k can carry at most min(prod of the pair sizes left, prod right)."""
    pairs = [i * o for i, o in zip(in_factors, out_factors)]
    return tuple(min(math.prod(pairs[: k + 1]), math.prod(pairs[k + 1 :])) for k in range(len(pairs) - 1))


def _cores(f):
    return [f.factors[f"core_{k}"] for k in range(len(f.factors))]


@pytest.mark.parametrize("in_factors, out_factors", CONFIGS)
def test_full_ranks_are_exact_and_cores_follow_the_mpo_layout(in_factors, out_factors):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((math.prod(in_factors), math.prod(out_factors)))
    ranks = _max_ranks(in_factors, out_factors)

    f = tt_svd(W, in_factors, out_factors, ranks=ranks)

    assert f.form.name == "tensor_train" and f.method == "tt_svd"
    assert f.layer_config == {"input_factors": in_factors, "output_factors": out_factors, "ranks": ranks}
    bonds = (1,) + ranks + (1,)
    for k, core in enumerate(_cores(f)):
        assert core.shape == (bonds[k], in_factors[k], out_factors[k], bonds[k + 1])
        assert core.dtype == np.float32
    assert f.relative_error < 1e-5
    assert relative(tt_kernel(_cores(f), in_factors, out_factors), W) < 1e-5
    for row, col in zip(rng.integers(0, W.shape[0], 10), rng.integers(0, W.shape[1], 10)):
        assert tt_entry(_cores(f), in_factors, out_factors, row, col) == pytest.approx(W[row, col], abs=1e-4)


@settings(max_examples=15, deadline=None)
@given(config=st.sampled_from(CONFIGS), eps=st.floats(0.01, 0.9), seed=st.integers(0, 2**16))
def test_eps_bounds_the_relative_error(config, eps, seed):
    in_factors, out_factors = config
    W = np.random.default_rng(seed).standard_normal((math.prod(in_factors), math.prod(out_factors)))

    f = tt_svd(W, in_factors, out_factors, eps=eps)

    assert f.info["error_bound"] <= eps + 1e-12
    assert f.relative_error <= f.info["error_bound"] + 1e-6
    assert relative(tt_kernel(_cores(f), in_factors, out_factors), W) <= eps + 1e-6


def test_eps_picks_small_ranks_for_a_planted_low_rank_train():
    rng = np.random.default_rng(1)
    in_factors, out_factors, ranks = (3, 4, 2), (2, 3, 5), (2, 3)
    bonds = (1,) + ranks + (1,)
    cores = [rng.standard_normal((bonds[k], in_factors[k], out_factors[k], bonds[k + 1])) for k in range(3)]
    W = tt_kernel(cores, in_factors, out_factors)

    f = tt_svd(W, in_factors, out_factors, eps=1e-6)

    assert f.layer_config["ranks"] == ranks
    assert f.relative_error < 1e-5


def test_int_rank_caps_every_bond_at_its_maximum():
    in_factors, out_factors = (2, 3, 4), (3, 2, 2)  # pair sizes 6, 6, 8 -> maxima (6, 8)
    W = np.random.default_rng(2).standard_normal((24, 12))
    assert tt_svd(W, in_factors, out_factors, ranks=7).layer_config["ranks"] == (6, 7)
    assert tt_svd(W, in_factors, out_factors, ranks=100).layer_config["ranks"] == (6, 8)
    assert tt_svd(W, in_factors, out_factors, ranks=100).relative_error < 1e-5


def test_ranks_and_eps_together_take_the_smaller_rank():
    W = np.random.default_rng(3).standard_normal((24, 12))
    capped = tt_svd(W, (2, 3, 4), (3, 2, 2), ranks=2, eps=1e-9)
    assert capped.layer_config["ranks"] == (2, 2)
    assert capped.info["error_bound"] > 1e-9  # the cap, not eps, decided


def test_truncated_error_is_accounted_by_the_dropped_singular_values():
    W = np.random.default_rng(4).standard_normal((20, 15))
    f = tt_svd(W, (4, 5), (3, 5), ranks=3)
    # With d = 2 the train is one SVD of the (in1*out1, in2*out2) pair matrix.
    pair_matrix = W.reshape(4, 5, 3, 5).transpose(0, 2, 1, 3).reshape(12, 25)
    s = np.linalg.svd(pair_matrix, compute_uv=False)
    expected = np.sqrt(np.sum(s[3:] ** 2)) / np.linalg.norm(W)
    assert f.relative_error == pytest.approx(expected, abs=1e-6)
    assert f.info["error_bound"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(input_factors=(6, 4), output_factors=(15,), ranks=2), r"same length d >= 2"),
        (dict(input_factors=(24,), output_factors=(15,), ranks=2), r"same length d >= 2"),
        (dict(input_factors=(6, 4), output_factors=(3, 5)), r"needs ranks=.*eps=.*\(18,\)"),
        (dict(input_factors=(6, 4), output_factors=(3, 5), ranks=(19,)), r"ranks\[0\]=19 > 18"),
        (dict(input_factors=(6, 4), output_factors=(3, 5), ranks=(2, 2)), r"tuple of 1 ranks; got 2"),
        (dict(input_factors=(6, 4), output_factors=(3, 5), ranks=0), r"ranks must be a positive integer; got 0"),
        (dict(input_factors=(6, 4), output_factors=(3, 5), eps=-0.1), r"eps must be a finite number >= 0"),
        (dict(input_factors=(6, 4), output_factors=(3, 4), ranks=2), r"multiply to 12, but W has 15 output"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tt_svd(np.ones((24, 15)), **kwargs)


def test_unreachable_rank_tuple_is_rejected():
    # Pair sizes (2, 2, 2, 2): maxima (2, 4, 2), but bond 1 can't exceed 1 * 2 after bond 0 = 1.
    with pytest.raises(ValueError, match=r"ranks\[1\]=4 exceeds ranks\[0\] \* in_1\*out_1 = 1 \* 2 = 2"):
        tt_svd(np.ones((16, 1)), (2, 2, 2, 2), (1, 1, 1, 1), ranks=(1, 4, 2))
