"""Block-term decomposition: planted blocks, monotone error, the Tucker special case, the block cap."""

import numpy as np
import pytest

from tfreparam.decompose import block_term, param_count, tucker

from .reference import relative, tucker_tensor

MODES, RANKS = (4, 6, 3, 4), (2, 2, 1, 2)


def _planted(rng, scales):
    """Σ_b block_b with bases of block b in columns [b*R, (b+1)*R) of one orthonormal basis per mode."""
    bases = [np.linalg.qr(rng.normal(size=(n, n)))[0] for n in MODES]
    total = 0
    for b, scale in enumerate(scales):
        factors = [basis[:, b * r:(b + 1) * r] for basis, r in zip(bases, RANKS)]
        total = total + tucker_tensor(scale * rng.normal(size=RANKS), factors)
    return total.reshape(24, 12)


def test_blocks_in_orthogonal_subspaces_are_recovered_exactly():
    W = _planted(np.random.default_rng(0), (100.0, 1.0))  # the stronger block first, by a wide margin
    f = block_term(W, (4, 6), (3, 4), RANKS, num_blocks=2, n_iter=0)
    assert f.form.name == "block_term" and f.method == "block_term"
    assert f.relative_error < 1e-6
    # The stored layout rebuilds W by an independent einsum per block.
    rebuilt = sum(
        tucker_tensor(f.factors["core"][b], [f.factors[f"factor_{j}"][b] for j in range(4)]) for b in range(2)
    ).reshape(24, 12)
    assert relative(rebuilt, W) < 1e-6
    assert f.factors["core"].shape == (2,) + RANKS
    assert f.num_params == sum(a.size for a in f.factors.values())
    assert f.num_params == param_count("block_term", (24, 12), input_factors=(4, 6), output_factors=(3, 4),
                                       ranks=RANKS, num_blocks=2)


def test_more_blocks_and_back_fitting_never_increase_the_error():
    W = np.random.default_rng(1).normal(size=(24, 12))
    errors = [block_term(W, (4, 6), (3, 4), 2, num_blocks=b, n_iter=0).relative_error for b in (1, 2, 3, 4)]
    assert all(later <= earlier + 1e-12 for earlier, later in zip(errors, errors[1:])), errors
    fitted = block_term(W, (4, 6), (3, 4), 2, num_blocks=3, n_iter=20)
    history = fitted.info["error_history"]
    assert all(later <= earlier + 1e-12 for earlier, later in zip(history, history[1:])), history
    assert fitted.relative_error == pytest.approx(history[-1], abs=1e-6)
    assert fitted.relative_error < errors[2]


def test_one_block_is_tucker():
    W = np.random.default_rng(2).normal(size=(24, 12))
    one = block_term(W, (4, 6), (3, 4), RANKS, num_blocks=1, n_iter=0)
    assert one.relative_error == pytest.approx(tucker(W, (4, 6), (3, 4), RANKS).relative_error, rel=1e-9)


def test_more_blocks_than_needed_for_any_kernel_are_refused():
    W = np.ones((24, 12))
    # Full ranks: one block already writes every kernel.
    with pytest.raises(ValueError, match=r"num_blocks=2 exceeds its maximum 1"):
        block_term(W, (4, 6), (3, 4), (4, 6, 3, 4), num_blocks=2)
