"""The family forms: one cap rule for every family, budgets within the cap, reconstruction through the form."""

import math

import numpy as np
import pytest

import tfreparam.decompose as decompose

SHAPE, INS, OUTS = (24, 12), (4, 6), (3, 4)

# Largest size of each family for a 24x12 kernel with modes (4, 6) x (3, 4), from its algebra:
# matrix rank, rank of the rearranged kernel, rank of each TT unfolding, each mode's size,
# the product of all modes but the largest (CP), one full-rank block, min(in, out).
CAPS = {
    "low_rank": ("rank", {}, 12),
    "kronecker": ("num_terms", dict(input_factors=INS, output_factors=OUTS), min(4 * 3, 6 * 4)),
    "cp": ("rank", dict(input_factors=INS, output_factors=OUTS), 4 * 3 * 4),
    "block_term": ("num_blocks", dict(input_factors=INS, output_factors=OUTS, ranks=(4, 6, 3, 4)), 1),
    "lora": ("rank", {}, 12),
}


@pytest.mark.parametrize("family", sorted(CAPS))
def test_every_scalar_size_is_capped_at_its_algebraic_maximum(family):
    name, arguments, cap = CAPS[family]
    form = decompose.get_form(family)
    assert form.config(SHAPE, **arguments, **{name: cap})[name] == cap
    with pytest.raises(ValueError, match=rf"{name}={cap + 1} exceeds its maximum {cap} \("):
        form.config(SHAPE, **arguments, **{name: cap + 1})


def test_rank_tuples_are_capped_per_entry():
    tt = decompose.get_form("tensor_train")
    assert tt.config(SHAPE, input_factors=INS, output_factors=OUTS, ranks=1000)["ranks"] == (12,)
    with pytest.raises(ValueError, match=r"ranks\[0\]=13 > 12"):
        tt.config(SHAPE, input_factors=INS, output_factors=OUTS, ranks=(13,))
    tucker = decompose.get_form("tucker")
    assert tucker.config(SHAPE, input_factors=INS, output_factors=OUTS, ranks=5)["ranks"] == (4, 5, 3, 4)


def test_cp_als_refuses_a_rank_past_the_cap():
    # Issue 16.6: CP accepted any rank (rank 10000 is 590x the dense parameters here).
    with pytest.raises(ValueError, match=r"rank=10000 exceeds its maximum 48"):
        decompose.cp_als(np.ones(SHAPE), INS, OUTS, rank=10000)


@pytest.mark.parametrize("fraction", [0.5, 1.0, 5.0])
def test_budgets_never_buy_more_than_the_cap(fraction):
    assert decompose.cp_rank_for_budget(INS, OUTS, fraction) <= 48
    assert decompose.kronecker_terms_for_budget(INS, OUTS, fraction) <= 12
    assert decompose.low_rank_rank_for_budget(*SHAPE, fraction) <= 12
    blocks = decompose.block_term_blocks_for_budget(INS, OUTS, 2, fraction)
    per_block = 2 ** 4 + 2 * sum(INS + OUTS)
    assert blocks == max(1, min(math.floor(fraction * 288) // per_block, 4 * 6))


def test_every_registered_form_rebuilds_its_factorization():
    W = np.random.default_rng(0).normal(size=SHAPE)
    results = {
        "low_rank": decompose.svd(W, rank=3),
        "kronecker": decompose.nearest_kronecker(W, INS, OUTS, num_terms=2),
        "tensor_train": decompose.tt_svd(W, INS, OUTS, ranks=3),
        "tucker": decompose.tucker(W, INS, OUTS, ranks=2),
        "cp": decompose.cp_als(W, INS, OUTS, rank=3, n_iter=5),
        "block_term": decompose.block_term(W, INS, OUTS, ranks=2, num_blocks=2, n_iter=1),
        "lora": decompose.lora(W, rank=3),
    }
    assert set(results) == set(decompose.form_names())
    for name, f in results.items():
        assert f.form is decompose.get_form(name)
        approx = f.reconstruct()
        assert f.relative_error == pytest.approx(np.linalg.norm(W - approx) / np.linalg.norm(W), rel=1e-9)
        assert f.num_params == decompose.param_count(name, SHAPE, **f.layer_config)


def test_lora_starts_at_the_kernel():
    W = np.random.default_rng(1).normal(size=SHAPE)
    f = decompose.lora(W, rank=4, alpha=8, seed=3)
    assert f.relative_error < 1e-7 and f.layer_config == {"rank": 4, "alpha": 8.0, "dropout": 0.0}  # float32 base
    np.testing.assert_array_equal(f.factors["lora_b"], np.zeros((4, 12)))
    assert np.abs(f.factors["lora_a"]).max() <= 1 / np.sqrt(24)
    np.testing.assert_array_equal(f.factors["base"], W.astype(np.float32))
    with pytest.raises(ValueError, match=r"rank=13 exceeds its maximum 12"):
        decompose.lora(W, rank=13)
