"""CP (CANDECOMP/PARAFAC) kernels by alternating least squares (Kolda & Bader, 2009)."""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import numpy as np

import tfreparam.decompose.validation as validation
from tfreparam.decompose._tensor import leading_left_singular_vectors, max_block_terms, unfold
from tfreparam.decompose.budget import budget_params
from tfreparam.decompose.factorization import Factorization
from tfreparam.decompose.form import Form, register_form


def _resolve(shape, *, input_factors, output_factors, rank):
    ins, outs = validation.mode_factors(input_factors, output_factors, *shape)
    return {"input_factors": ins, "output_factors": outs, "rank": validation.positive_int(rank, "rank")}


def _limits(shape, config):
    modes = config["input_factors"] + config["output_factors"]
    cap = max_block_terms(modes, (1,) * len(modes))
    return {"rank": (cap, f"every tensor with modes {modes} has CP rank <= {cap}, the product of all modes but the largest")}


def _rebuild(f, shape, config):
    modes = [f[f"factor_{j}"] for j in range(len(f))]
    rank_axis = len(modes)
    operands = []
    for j, factor in enumerate(modes):
        operands += [factor, [j, rank_axis]]
    return np.einsum(*operands, list(range(len(modes))), optimize=True).reshape(shape)


CP = register_form(Form(
    "cp", _resolve,
    count=lambda shape, config: config["rank"] * sum(config["input_factors"] + config["output_factors"]),
    limits=_limits, rebuild=_rebuild, budget_size="rank",
))


def cp_rank_for_budget(input_factors: Sequence[int], output_factors: Sequence[int], fraction: float) -> int:
    """Largest CP rank R with R * sum(mode sizes) <= fraction*in*out, at least 1 and at most the cap."""
    ins = validation.int_tuple(input_factors, "input_factors")
    outs = validation.int_tuple(output_factors, "output_factors")
    shape = (math.prod(ins), math.prod(outs))
    return CP.size_for_budget(shape, budget_params(fraction, shape[0] * shape[1]), input_factors=ins, output_factors=outs)


def cp_als(
    W, input_factors, output_factors, rank, n_iter=200, tol=1e-7, seed=0, init="svd"
) -> Factorization:
    """Rank-`rank` CP form T ≈ Σ_r a_1r ∘ ... ∘ a_mr of W viewed as modes input_factors + output_factors.

    Each sweep solves for one factor at a time with the others fixed:
    A_j = T_(j) (⊙_{k≠j} A_k) (∗_{k≠j} A_kᵀA_k)⁺, i.e. the MTTKRP times the
    pseudo-inverse of the Hadamard product of the other Gram matrices, then
    normalises A_j's columns into weights λ. It stops when the fit
    1 - ||T - T̂||/||T|| changes by less than `tol` between sweeps, or after
    `n_iter` sweeps. `init="svd"` starts from the leading left singular vectors
    of each unfolding (random columns pad ranks above a mode size);
    `init="random"` from Gaussian factors drawn with `seed`. Components come out
    sorted by weight, with λ_r spread evenly as λ_r^(1/m) over the m factors.
    info: "converged", "n_iter" (sweeps run), "fit_history", "weights" (λ).
    """
    W = validation.kernel(W)
    config = CP.config(W.shape, input_factors=input_factors, output_factors=output_factors, rank=rank)
    modes, rank = config["input_factors"] + config["output_factors"], config["rank"]
    n_iter = validation.positive_int(n_iter, "n_iter")
    tol = validation.nonnegative_float(tol, "tol")
    if init not in ("svd", "random"):
        raise ValueError(f"init must be 'svd' or 'random'; got {init!r}.")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ValueError(f"seed must be an int or None; got {seed!r}.")

    tensor = W.reshape(modes)
    rng = np.random.default_rng(seed)
    factors, weights, history, converged = _als(tensor, rank, n_iter, tol, rng, init)

    order = np.argsort(-weights, kind="stable")
    weights = weights[order]
    spread = weights ** (1.0 / len(modes))
    named = {f"factor_{j}": factor[:, order] * spread for j, factor in enumerate(factors)}
    info = {
        "converged": converged,
        "n_iter": len(history),
        "fit_history": history,
        "weights": weights,
        "init": init,
    }
    return Factorization.from_factors(
        method="cp_als", form=CP, factors=named, layer_config=config, kernel=W, info=info,
    )


def _als(tensor: np.ndarray, rank: int, n_iter: int, tol: float, rng, init: str):
    """Returns (unit-column factors, weights λ, fit per sweep, converged)."""
    m = tensor.ndim
    norm_sq = float(np.sum(tensor**2))
    if norm_sq == 0.0:
        return [np.zeros((n, rank)) for n in tensor.shape], np.zeros(rank), [1.0], True
    factors = [_initial_factor(tensor, j, rank, rng, init) for j in range(m)]
    grams = [f.T @ f for f in factors]
    weights = np.ones(rank)
    history: list[float] = []
    for _ in range(n_iter):
        for j in range(m):
            hadamard = np.ones((rank, rank))
            for k in range(m):
                if k != j:
                    hadamard *= grams[k]
            mttkrp = _mttkrp(tensor, factors, j)
            solved = mttkrp @ np.linalg.pinv(hadamard)
            weights = np.linalg.norm(solved, axis=0)
            factors[j] = solved / np.where(weights > 0, weights, 1.0)
            grams[j] = factors[j].T @ factors[j]
        # After the last mode: <T, T̂> = Σ mttkrp ∘ solved, ||T̂||² = λᵀ (∗_k A_kᵀA_k) λ.
        inner = float(np.sum(mttkrp * solved))
        all_grams = np.prod(np.stack(grams), axis=0)
        approx_sq = float(weights @ all_grams @ weights)
        residual = np.sqrt(max(norm_sq + approx_sq - 2.0 * inner, 0.0))
        history.append(float(1.0 - residual / np.sqrt(norm_sq)))
        if len(history) > 1 and abs(history[-1] - history[-2]) < tol:
            return factors, weights, history, True
    return factors, weights, history, False


def _initial_factor(tensor: np.ndarray, j: int, rank: int, rng, init: str) -> np.ndarray:
    size = tensor.shape[j]
    if init == "random":
        return rng.standard_normal((size, rank))
    basis = leading_left_singular_vectors(unfold(tensor, j), min(rank, size))
    if rank > size:
        # A mode has at most `size` independent directions; fill the rest randomly.
        extra = rng.standard_normal((size, rank - size))
        basis = np.concatenate([basis, extra / np.linalg.norm(extra, axis=0)], axis=1)
    return basis


def _mttkrp(tensor: np.ndarray, factors: list[np.ndarray], j: int) -> np.ndarray:
    """T_(j) times the Khatri–Rao product of the other factors, shape (n_j, rank)."""
    m = tensor.ndim
    operands = [tensor, list(range(m))]
    for k, factor in enumerate(factors):
        if k != j:
            operands += [factor, [k, m]]
    return np.einsum(*operands, [j, m], optimize="greedy")
