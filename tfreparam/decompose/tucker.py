"""Tucker kernels by HOSVD, optionally refined by HOOI (De Lathauwer et al., 2000)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

import tfreparam.decompose.validation as validation
from tfreparam.decompose._tensor import leading_left_singular_vectors, mode_dot, unfold
from tfreparam.decompose.budget import budget_params
from tfreparam.decompose.factorization import Factorization
from tfreparam.decompose.form import Form, register_form


def _resolve(shape, *, input_factors, output_factors, ranks):
    ins, outs = validation.mode_factors(input_factors, output_factors, *shape)
    return {"input_factors": ins, "output_factors": outs, "ranks": validation.rank_tuple(ranks, "ranks", ins + outs)}


def _limits(shape, config):
    return {"ranks": (config["input_factors"] + config["output_factors"], "each mode's size")}


def _count(shape, config):
    modes = config["input_factors"] + config["output_factors"]
    return math.prod(config["ranks"]) + sum(n * r for n, r in zip(modes, config["ranks"]))


def tucker_tensor(core: np.ndarray, bases) -> np.ndarray:
    """core ×_1 U_1 ··· ×_m U_m."""
    tensor = core
    for j, basis in enumerate(bases):
        tensor = mode_dot(tensor, basis, j)
    return tensor


def _rebuild(f, shape, config):
    return tucker_tensor(f["core"], [f[f"factor_{j}"] for j in range(f["core"].ndim)]).reshape(shape)


TUCKER = register_form(Form("tucker", _resolve, _count, _limits, _rebuild, budget_size="ranks"))


def tucker_rank_for_budget(input_factors: Sequence[int], output_factors: Sequence[int], fraction: float) -> int:
    """Largest uniform Tucker rank (each mode capped at its size) within the budget, at least 1."""
    ins = validation.int_tuple(input_factors, "input_factors")
    outs = validation.int_tuple(output_factors, "output_factors")
    shape = (math.prod(ins), math.prod(outs))
    return TUCKER.size_for_budget(
        shape, budget_params(fraction, shape[0] * shape[1]), input_factors=ins, output_factors=outs)


def tucker(W, input_factors, output_factors, ranks, n_iter=0, tol=1e-8) -> Factorization:
    """Tucker form T ≈ core ×_1 U_1 ··· ×_m U_m of W viewed as modes input_factors + output_factors.

    HOSVD takes each U_j as the R_j leading left singular vectors of the mode-j
    unfolding; `n_iter` > 0 then runs HOOI sweeps (each U_j re-fitted with the
    others fixed), which never increase the error, stopping once it drops by
    less than `tol`. `ranks` is an int (capped at each mode size) or a tuple of
    m ranks. Factors are orthonormal; the core holds the scale. Full ranks are
    exact. info: "error_history" (HOSVD first, then one entry per sweep),
    "iterations", "converged" (True when a sweep improved by < tol).
    """
    W = validation.kernel(W)
    config = TUCKER.config(W.shape, input_factors=input_factors, output_factors=output_factors, ranks=ranks)
    modes, ranks = config["input_factors"] + config["output_factors"], config["ranks"]
    n_iter = validation.nonnegative_int(n_iter, "n_iter")
    tol = validation.nonnegative_float(tol, "tol")

    tensor = W.reshape(modes)
    bases = [leading_left_singular_vectors(unfold(tensor, j), ranks[j]) for j in range(len(modes))]
    core, bases, history, converged = hooi(tensor, bases, n_iter, tol)
    sweeps = len(history) - 1

    factors = {"core": core, **{f"factor_{j}": basis for j, basis in enumerate(bases)}}
    info = {
        "algorithm": "hooi" if n_iter else "hosvd",
        "error_history": history,
        "iterations": sweeps,
        "converged": converged,
    }
    return Factorization.from_factors(
        method="tucker", form=TUCKER, factors=factors, layer_config=config, kernel=W, info=info,
    )


def hooi(tensor: np.ndarray, bases: list[np.ndarray], n_iter: int, tol: float):
    """Up to `n_iter` HOOI sweeps from `bases`: (core, bases, error history, converged).

    Each sweep re-fits every U_j with the others fixed (its leading left
    singular vectors of the tensor projected on the other bases), so the error
    never increases; it stops once a sweep improves it by less than `tol`.
    The history starts with the error of the starting bases.
    """
    bases = list(bases)
    ranks = [basis.shape[1] for basis in bases]
    norm = float(np.linalg.norm(tensor))
    core = project(tensor, bases)
    history = [_error(tensor, core, bases, norm)]
    converged = False
    for _ in range(n_iter):
        for j in range(len(bases)):
            partial = project(tensor, bases, skip=j)
            bases[j] = leading_left_singular_vectors(unfold(partial, j), ranks[j])
        core = project(tensor, bases)
        history.append(_error(tensor, core, bases, norm))
        if history[-2] - history[-1] < tol:
            converged = True
            break
    return core, bases, history, converged


def project(tensor: np.ndarray, bases: list[np.ndarray], skip: int | None = None) -> np.ndarray:
    """tensor ×_j U_jᵀ for every mode j except `skip`."""
    for j, basis in enumerate(bases):
        if j != skip:
            tensor = mode_dot(tensor, basis.T, j)
    return tensor


def _error(tensor, core, bases, norm) -> float:
    # Measured directly: norm² - ||core||² cancels badly once the error is small.
    return float(np.linalg.norm(tensor - tucker_tensor(core, bases)) / norm) if norm > 0 else 0.0
