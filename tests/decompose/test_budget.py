"""balanced_factors, param_count and the *_for_budget helpers against brute force."""

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfreparam.decompose import (
    balanced_factors,
    cp_rank_for_budget,
    kronecker_terms_for_budget,
    low_rank_rank_for_budget,
    param_count,
    tt_max_ranks,
    tt_rank_for_budget,
    tucker_rank_for_budget,
)

from .reference import brute_force_balanced


@pytest.mark.parametrize(
    "n, parts, expected",
    [
        (768, 2, (24, 32)),
        (3072, 2, (48, 64)),
        (384, 2, (16, 24)),
        (64, 3, (4, 4, 4)),
        (7, 2, (1, 7)),
        (1, 3, (1, 1, 1)),
        (30, 1, (30,)),
    ],
)
def test_balanced_factors_examples(n, parts, expected):
    assert balanced_factors(n, parts) == expected


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 600), parts=st.integers(1, 3))
def test_balanced_factors_match_brute_force(n, parts):
    result = balanced_factors(n, parts)
    assert math.prod(result) == n
    assert list(result) == sorted(result)
    assert result == brute_force_balanced(n, parts)


def _tt_caps(ins, outs):
    pairs = [i * o for i, o in zip(ins, outs)]
    return [min(math.prod(pairs[: k + 1]), math.prod(pairs[k + 1 :])) for k in range(len(pairs) - 1)]


def _tt_params(ins, outs, rank):
    pairs = [i * o for i, o in zip(ins, outs)]
    bonds = [1] + [min(rank, cap) for cap in _tt_caps(ins, outs)] + [1]
    return sum(bonds[k] * pairs[k] * bonds[k + 1] for k in range(len(pairs)))


def test_tt_max_ranks():
    assert tt_max_ranks((2, 3, 4), (3, 2, 2)) == tuple(_tt_caps((2, 3, 4), (3, 2, 2))) == (6, 8)


def _tucker_params(modes, rank):
    ranks = [min(rank, n) for n in modes]
    return math.prod(ranks) + sum(n * r for n, r in zip(modes, ranks))


def test_param_count_formulas():
    assert param_count("low_rank", (768, 3072), rank=64) == 64 * (768 + 3072)
    assert param_count("kronecker", (768, 3072), num_terms=3) == 3 * (24 * 48 + 32 * 64)
    assert param_count("kronecker", (12, 10), input_factors=(3, 4), output_factors=(5, 2)) == 15 + 8
    tt = dict(input_factors=(2, 3, 4), output_factors=(3, 2, 2))
    assert param_count("tensor_train", (24, 12), ranks=(4, 5), **tt) == 1 * 6 * 4 + 4 * 6 * 5 + 5 * 8 * 1
    assert param_count("tensor_train", (24, 12), ranks=100, **tt) == _tt_params((2, 3, 4), (3, 2, 2), 100)
    modes = dict(input_factors=(3, 4), output_factors=(2, 5))
    assert param_count("tucker", (12, 10), ranks=(2, 3, 2, 4), **modes) == (
        2 * 3 * 2 * 4 + 3 * 2 + 4 * 3 + 2 * 2 + 5 * 4
    )
    assert param_count("tucker", (12, 10), ranks=3, **modes) == _tucker_params((3, 4, 2, 5), 3)
    assert param_count("cp", (12, 10), rank=7, **modes) == 7 * 14


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("dense", (4, 4)), {}, r"Unknown factorization family 'dense'; registered: .*low_rank"),
        (("low_rank", (4, 4)), {}, r"low_rank form needs the keyword argument 'rank'"),
        (("low_rank", (4, 4)), {"rank": 2, "units": 4}, r"unexpected arguments \['units'\]"),
        (("low_rank", (4,)), {"rank": 2}, r"shape must be the kernel shape"),
        (
            ("cp", (12, 10)),
            {"input_factors": (3, 3), "output_factors": (2, 5), "rank": 1},
            r"multiply to 9, but W has 12 input",
        ),
        (
            ("tensor_train", (12, 10)),
            {"input_factors": (3, 4), "output_factors": (10,), "ranks": 1},
            r"same length d >= 2",
        ),
    ],
)
def test_param_count_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        param_count(*args, **kwargs)


def _largest(candidates, cost, budget):
    fitting = [r for r in candidates if cost(r) <= budget]
    return max(fitting) if fitting else 1


@settings(max_examples=40, deadline=None)
@given(in_features=st.integers(1, 200), out_features=st.integers(1, 200), fraction=st.floats(0.01, 1.0))
def test_low_rank_budget_matches_brute_force(in_features, out_features, fraction):
    budget = math.floor(Fraction(str(fraction)) * in_features * out_features)
    ranks = range(1, min(in_features, out_features) + 1)
    expected = _largest(ranks, lambda r: r * (in_features + out_features), budget)
    assert low_rank_rank_for_budget(in_features, out_features, fraction) == expected


def test_budget_fraction_is_read_as_written():
    # 0.58 * 100 is 57.99999999999999 in floating point; the budget is still 58 = 2 * (25 + 4).
    assert 0.58 * 100 < 58
    assert cp_rank_for_budget((25,), (4,), 0.58) == 2


FACTOR_CASES = [((4, 6), (3, 5)), ((2, 3, 4), (3, 2, 2)), ((8, 8), (8, 8))]


@pytest.mark.parametrize("ins, outs", FACTOR_CASES)
@pytest.mark.parametrize("fraction", [0.001, 0.05, 0.2, 0.5, 1.0, 3.0])
def test_tensor_budgets_match_brute_force(ins, outs, fraction):
    dense = math.prod(ins) * math.prod(outs)
    budget = math.floor(fraction * dense + 1e-9)
    modes = ins + outs
    tucker_expected = _largest(range(1, max(modes) + 1), lambda r: _tucker_params(modes, r), budget)
    cp_expected = max(1, budget // sum(modes))
    assert tucker_rank_for_budget(ins, outs, fraction) == tucker_expected
    assert cp_rank_for_budget(ins, outs, fraction) == cp_expected
    if len(ins) == len(outs):
        ranks = range(1, max(_tt_caps(ins, outs)) + 1)
        tt_expected = _largest(ranks, lambda r: _tt_params(ins, outs, r), budget)
        assert tt_rank_for_budget(ins, outs, fraction) == tt_expected


@pytest.mark.parametrize("ins, outs", [((3, 4), (5, 2)), ((24, 32), (48, 64)), ((1, 7), (2, 2))])
@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.1, 0.5, 1.0])
def test_kronecker_budget_matches_brute_force(ins, outs, fraction):
    dense = math.prod(ins) * math.prod(outs)
    per_term = ins[0] * outs[0] + ins[1] * outs[1]
    max_terms = min(ins[0] * outs[0], ins[1] * outs[1])
    expected = _largest(range(1, max_terms + 1), lambda k: k * per_term, math.floor(fraction * dense + 1e-9))
    assert kronecker_terms_for_budget(ins, outs, fraction) == expected


def test_budget_helpers_never_return_less_than_one():
    assert low_rank_rank_for_budget(768, 3072, 1e-6) == 1
    assert kronecker_terms_for_budget((24, 32), (48, 64), 1e-6) == 1
    assert tt_rank_for_budget((4, 4), (4, 4), 1e-6) == 1
    assert tucker_rank_for_budget((4, 4), (4, 4), 1e-6) == 1
    assert cp_rank_for_budget((4, 4), (4, 4), 1e-6) == 1


def test_budget_counts_agree_with_param_count():
    for fraction in (0.05, 0.3):
        r = tt_rank_for_budget((4, 8, 4), (4, 8, 4), fraction)
        factors = dict(input_factors=(4, 8, 4), output_factors=(4, 8, 4))
        count = param_count("tensor_train", (128, 128), ranks=r, **factors)
        assert count <= fraction * 128 * 128


@pytest.mark.parametrize("fraction", [0, -0.5, float("nan"), float("inf"), "half", True])
def test_bad_fractions_are_rejected(fraction):
    with pytest.raises(ValueError, match=r"fraction must be a"):
        low_rank_rank_for_budget(10, 10, fraction)


def test_bad_balanced_factor_arguments():
    with pytest.raises(ValueError, match=r"n must be a positive integer; got 0"):
        balanced_factors(0)
    with pytest.raises(ValueError, match=r"num_factors must be a positive integer; got 2.5"):
        balanced_factors(12, 2.5)
    with pytest.raises(ValueError, match=r"input_factors must have exactly 2 entries"):
        kronecker_terms_for_budget((2, 2, 2), (4, 2), 0.5)
