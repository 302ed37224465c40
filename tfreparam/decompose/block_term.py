"""Block-term kernels: a sum of Tucker blocks (De Lathauwer, 2008), fitted by deflation and back-fitting."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

import tfreparam.decompose.validation as validation
from tfreparam.decompose._tensor import leading_left_singular_vectors, max_block_terms, unfold
from tfreparam.decompose.budget import budget_params
from tfreparam.decompose.factorization import Factorization
from tfreparam.decompose.form import Form, register_form
from tfreparam.decompose.tucker import hooi, tucker_tensor


def _resolve(shape, *, input_factors, output_factors, ranks, num_blocks=1):
    ins, outs = validation.mode_factors(input_factors, output_factors, *shape)
    return {"input_factors": ins, "output_factors": outs,
            "ranks": validation.rank_tuple(ranks, "ranks", ins + outs),
            "num_blocks": validation.positive_int(num_blocks, "num_blocks")}


def _limits(shape, config):
    modes, ranks = config["input_factors"] + config["output_factors"], config["ranks"]
    blocks = max_block_terms(modes, ranks)
    return {
        "ranks": (modes, "each mode's size"),
        "num_blocks": (blocks, f"{blocks} blocks of ranks {ranks} already write every kernel with modes {modes} exactly"),
    }


def _count(shape, config):
    modes, ranks = config["input_factors"] + config["output_factors"], config["ranks"]
    return config["num_blocks"] * (math.prod(ranks) + sum(n * r for n, r in zip(modes, ranks)))


def _rebuild(f, shape, config):
    m = f["core"].ndim - 1
    blocks = f["core"].shape[0]
    return sum(tucker_tensor(f["core"][b], [f[f"factor_{j}"][b] for j in range(m)]) for b in range(blocks)).reshape(shape)


BLOCK_TERM = register_form(Form("block_term", _resolve, _count, _limits, _rebuild, budget_size="num_blocks"))


def block_term_blocks_for_budget(input_factors: Sequence[int], output_factors: Sequence[int], ranks,
                                 fraction: float) -> int:
    """Most blocks of `ranks` within the budget, at least 1 and at most the cap."""
    ins = validation.int_tuple(input_factors, "input_factors")
    outs = validation.int_tuple(output_factors, "output_factors")
    shape = (math.prod(ins), math.prod(outs))
    return BLOCK_TERM.size_for_budget(
        shape, budget_params(fraction, shape[0] * shape[1]), input_factors=ins, output_factors=outs, ranks=ranks)


def block_term(W, input_factors, output_factors, ranks, num_blocks=2, n_iter=10, tol=1e-8) -> Factorization:
    """T ≈ Σ_b core_b ×_1 U_1^b ··· ×_m U_m^b of W viewed as modes input_factors + output_factors.

    Deflation: each block is the HOSVD of what the earlier blocks leave over,
    so adding a block never increases the error (a multilinear projection is
    an orthogonal projection). Then up to `n_iter` back-fitting sweeps re-fit
    each block to W minus the other blocks by one HOOI sweep started from its
    current bases, which again never increases the error; they stop once a
    sweep improves it by less than `tol`. One block is `tucker`; blocks whose
    bases span mutually orthogonal subspaces of decreasing energy are
    recovered exactly. info: "error_history" (after deflation, then per
    sweep), "iterations", "converged".
    """
    W = validation.kernel(W)
    config = BLOCK_TERM.config(W.shape, input_factors=input_factors, output_factors=output_factors,
                               ranks=ranks, num_blocks=num_blocks)
    modes, ranks, count = config["input_factors"] + config["output_factors"], config["ranks"], config["num_blocks"]
    n_iter = validation.nonnegative_int(n_iter, "n_iter")
    tol = validation.nonnegative_float(tol, "tol")

    tensor = W.reshape(modes)
    norm = float(np.linalg.norm(tensor))
    blocks = []
    residual = tensor
    for _ in range(count):
        bases = [leading_left_singular_vectors(unfold(residual, j), ranks[j]) for j in range(len(modes))]
        core, bases, _, _ = hooi(residual, bases, 0, tol)
        blocks.append((core, bases))
        residual = residual - tucker_tensor(core, bases)
    history = [_error(residual, norm)]
    converged = False
    for _ in range(n_iter):
        for b, (core, bases) in enumerate(blocks):
            target = residual + tucker_tensor(core, bases)  # W minus the other blocks
            core, bases, _, _ = hooi(target, bases, 1, 0.0)
            blocks[b] = (core, bases)
            residual = target - tucker_tensor(core, bases)
        history.append(_error(residual, norm))
        if history[-2] - history[-1] < tol:
            converged = True
            break

    factors = {"core": np.stack([core for core, _ in blocks])}
    for j in range(len(modes)):
        factors[f"factor_{j}"] = np.stack([bases[j] for _, bases in blocks])
    info = {"error_history": history, "iterations": len(history) - 1, "converged": converged}
    return Factorization.from_factors(
        method="block_term", form=BLOCK_TERM, factors=factors, layer_config=config, kernel=W, info=info,
    )


def _error(residual, norm) -> float:
    return float(np.linalg.norm(residual) / norm) if norm > 0 else 0.0
