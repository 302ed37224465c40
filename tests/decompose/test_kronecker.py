"""Nearest Kronecker sum: exact on planted sums, optimal otherwise, np.kron layout."""

import numpy as np
import pytest

from tfreparam.decompose import balanced_factors, nearest_kronecker

from .reference import kron_sum, relative, tail_error


def _blocks_rearranged(W, in_factors, out_factors):
    """Van Loan's R(W), built block by block: row (i1, o1) is the flattened block."""
    (in1, in2), (out1, out2) = in_factors, out_factors
    rows = []
    for i1 in range(in1):
        for o1 in range(out1):
            rows.append(W[i1 * in2 : (i1 + 1) * in2, o1 * out2 : (o1 + 1) * out2].ravel())
    return np.array(rows)


@pytest.mark.parametrize("terms", [1, 2, 3])
@pytest.mark.parametrize("in_factors, out_factors", [((3, 4), (5, 2)), ((6, 6), (4, 8)), ((2, 7), (3, 3))])
def test_planted_kronecker_sums_are_recovered_exactly(terms, in_factors, out_factors):
    rng = np.random.default_rng(terms)
    A = rng.standard_normal((terms, in_factors[0], out_factors[0]))
    B = rng.standard_normal((terms, in_factors[1], out_factors[1]))
    W = kron_sum(A, B)

    f = nearest_kronecker(W, in_factors, out_factors, num_terms=terms)

    assert f.form.name == "kronecker" and f.method == "nearest_kronecker"
    assert f.layer_config == {"input_factors": in_factors, "output_factors": out_factors, "num_terms": terms}
    assert f.factors["a"].shape == (terms, in_factors[0], out_factors[0])
    assert f.factors["b"].shape == (terms, in_factors[1], out_factors[1])
    assert f.relative_error < 1e-5
    assert relative(kron_sum(f.factors["a"], f.factors["b"]), W) < 1e-5


def test_general_kernel_gets_the_van_loan_optimum():
    W = np.random.default_rng(4).standard_normal((12, 10))
    s = np.linalg.svd(_blocks_rearranged(W, (3, 4), (2, 5)), compute_uv=False)

    for terms in (1, 2, 4):
        f = nearest_kronecker(W, (3, 4), (2, 5), num_terms=terms)
        assert f.relative_error == pytest.approx(tail_error(s, terms), abs=1e-6)
        assert relative(kron_sum(f.factors["a"], f.factors["b"]), f.reconstruct()) < 1e-6


def test_each_term_is_balanced_between_a_and_b():
    W = np.random.default_rng(5).standard_normal((8, 9)) * 50
    f = nearest_kronecker(W, (2, 4), (3, 3), num_terms=3)
    s = np.linalg.svd(_blocks_rearranged(W, (2, 4), (3, 3)), compute_uv=False)
    a_norms = np.linalg.norm(f.factors["a"].reshape(3, -1), axis=1)
    b_norms = np.linalg.norm(f.factors["b"].reshape(3, -1), axis=1)
    np.testing.assert_allclose(a_norms, np.sqrt(s[:3]), rtol=1e-5)
    np.testing.assert_allclose(b_norms, np.sqrt(s[:3]), rtol=1e-5)


def test_missing_factors_default_to_balanced_splits():
    W = np.random.default_rng(6).standard_normal((24, 18))
    f = nearest_kronecker(W, num_terms=2)
    assert f.layer_config["input_factors"] == balanced_factors(24) == (4, 6)
    assert f.layer_config["output_factors"] == balanced_factors(18) == (3, 6)
    g = nearest_kronecker(W, input_factors=(2, 12))
    assert g.layer_config["input_factors"] == (2, 12) and g.layer_config["output_factors"] == (3, 6)


def test_all_terms_reproduce_any_kernel():
    W = np.random.default_rng(7).standard_normal((6, 4))
    f = nearest_kronecker(W, (2, 3), (2, 2), num_terms=4)  # min(2*2, 3*2) = 4
    assert f.relative_error < 1e-6


def test_errors_name_the_limits():
    W = np.ones((6, 4))
    with pytest.raises(ValueError, match=r"num_terms=5 exceeds its maximum 4 \(min\(in1\*out1, in2\*out2\) = min\(4, 6\)"):
        nearest_kronecker(W, (2, 3), (2, 2), num_terms=5)
    with pytest.raises(ValueError, match=r"input_factors must have exactly 2 entries; got 3: \(1, 2, 3\)"):
        nearest_kronecker(W, (1, 2, 3), (2, 2))
    with pytest.raises(ValueError, match=r"output_factors=\(3, 2\) multiply to 6, but W has 4 output features"):
        nearest_kronecker(W, (2, 3), (3, 2))
