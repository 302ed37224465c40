"""Truncated SVD: Eckart–Young optimality, rank selection, factor layout and balance."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfreparam.decompose import svd

from .reference import tail_error


def _kernel(seed, shape):
    rng = np.random.default_rng(seed)
    # Decaying spectrum so that truncation errors differ clearly between ranks.
    left = np.linalg.qr(rng.standard_normal((shape[0], shape[0])))[0]
    right = np.linalg.qr(rng.standard_normal((shape[1], shape[1])))[0]
    k = min(shape)
    return (left[:, :k] * np.geomspace(10.0, 0.1, k)) @ right[:, :k].T


@settings(max_examples=25, deadline=None)
@given(
    in_features=st.integers(2, 24),
    out_features=st.integers(2, 24),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_error_is_the_eckart_young_tail(in_features, out_features, seed, data):
    W = np.random.default_rng(seed).standard_normal((in_features, out_features))
    rank = data.draw(st.integers(1, min(in_features, out_features)))
    s = np.linalg.svd(W, compute_uv=False)

    f = svd(W, rank=rank)

    assert f.relative_error == pytest.approx(tail_error(s, rank), abs=1e-6)
    direct = np.linalg.norm(W - f.factors["u"].astype(np.float64) @ f.factors["v"]) / np.linalg.norm(W)
    assert direct == pytest.approx(tail_error(s, rank), abs=1e-6)


def test_reconstruction_equals_numpy_truncated_svd():
    W = _kernel(0, (20, 12))
    U, s, Vt = np.linalg.svd(W)
    expected = (U[:, :5] * s[:5]) @ Vt[:5]

    f = svd(W, rank=5)

    assert f.form.name == "low_rank" and f.method == "svd"
    assert f.layer_config == {"rank": 5}
    assert f.factors["u"].shape == (20, 5) and f.factors["v"].shape == (5, 12)
    assert f.factors["u"].dtype == np.float32 and f.factors["v"].dtype == np.float32
    np.testing.assert_allclose(f.factors["u"].astype(np.float64) @ f.factors["v"], expected, atol=1e-5)
    np.testing.assert_allclose(f.info["singular_values"], s, rtol=1e-12)


def test_singular_values_are_split_evenly_between_u_and_v():
    W = _kernel(1, (16, 10))
    s = np.linalg.svd(W, compute_uv=False)

    f = svd(W, rank=6)

    np.testing.assert_allclose(np.linalg.norm(f.factors["u"], axis=0), np.sqrt(s[:6]), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(f.factors["v"], axis=1), np.sqrt(s[:6]), rtol=1e-5)


def test_full_rank_is_exact():
    W = np.random.default_rng(2).standard_normal((9, 7))
    assert svd(W, rank=7).relative_error < 1e-6


@pytest.mark.parametrize("energy", [0.3, 0.5, 0.9, 0.99, 1.0])
def test_energy_selects_the_smallest_rank_reaching_it(energy):
    W = _kernel(3, (18, 14))
    s2 = np.linalg.svd(W, compute_uv=False) ** 2
    fractions = np.cumsum(s2) / s2.sum()
    expected = next(r + 1 for r, frac in enumerate(fractions) if frac >= energy - 1e-12)

    f = svd(W, energy=energy)

    assert f.layer_config["rank"] == expected
    assert f.info["energy_kept"] >= energy - 1e-12
    if expected > 1:
        assert fractions[expected - 2] < energy


@pytest.mark.parametrize("budget", [30, 31, 59, 60, 61, 150, 10_000])
def test_int_param_budget_is_a_parameter_cap(budget):
    W = _kernel(4, (18, 12))  # one rank costs 18 + 12 = 30 parameters
    expected = min(budget // 30, 12)

    f = svd(W, param_budget=budget)

    assert f.layer_config["rank"] == expected
    assert f.num_params == expected * 30 <= budget


@pytest.mark.parametrize("fraction", [0.2, 0.25, 0.5, 1.0])
def test_float_param_budget_is_a_share_of_the_dense_count(fraction):
    W = _kernel(5, (20, 20))  # 400 dense parameters, 40 per rank
    expected = int(np.floor(fraction * 400 + 1e-9)) // 40

    f = svd(W, param_budget=fraction)

    assert f.layer_config["rank"] == expected
    assert f.num_params <= fraction * 400


def test_zero_kernel_gives_zero_factors_and_zero_error():
    f = svd(np.zeros((6, 4)), rank=2)
    assert f.relative_error == 0.0
    assert not np.any(f.reconstruct())
