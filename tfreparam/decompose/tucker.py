"""Tucker kernels by HOSVD, optionally refined by HOOI (De Lathauwer et al., 2000)."""

from __future__ import annotations

import numpy as np

from tfreparam.decompose import _validate
from tfreparam.decompose._tensor import leading_left_singular_vectors, mode_dot, unfold
from tfreparam.decompose.factorization import Factorization


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
    W = _validate.kernel(W)
    ins, outs = _validate.mode_factors(input_factors, output_factors, *W.shape)
    modes = ins + outs
    ranks = _validate.rank_tuple(ranks, "ranks", modes)
    n_iter = _validate.nonnegative_int(n_iter, "n_iter")
    tol = _validate.nonnegative_float(tol, "tol")

    tensor = W.reshape(modes)
    norm = float(np.linalg.norm(tensor))
    bases = [leading_left_singular_vectors(unfold(tensor, j), ranks[j]) for j in range(len(modes))]
    core = _project(tensor, bases)
    history = [_error(tensor, core, bases, norm)]
    converged, sweeps = False, 0
    for _ in range(n_iter):
        for j in range(len(modes)):
            partial = _project(tensor, bases, skip=j)
            bases[j] = leading_left_singular_vectors(unfold(partial, j), ranks[j])
        core = _project(tensor, bases)
        history.append(_error(tensor, core, bases, norm))
        sweeps += 1
        if history[-2] - history[-1] < tol:
            converged = True
            break

    factors = {"core": core, **{f"factor_{j}": basis for j, basis in enumerate(bases)}}
    info = {
        "algorithm": "hooi" if n_iter else "hosvd",
        "error_history": history,
        "iterations": sweeps,
        "converged": converged,
    }
    return Factorization.from_factors(
        method="tucker",
        layer="tucker",
        factors=factors,
        layer_kwargs={"input_factors": ins, "output_factors": outs, "ranks": ranks},
        kernel=W,
        info=info,
    )


def _project(tensor: np.ndarray, bases: list[np.ndarray], skip: int | None = None) -> np.ndarray:
    """tensor ×_j U_jᵀ for every mode j except `skip`."""
    for j, basis in enumerate(bases):
        if j != skip:
            tensor = mode_dot(tensor, basis.T, j)
    return tensor


def _error(tensor, core, bases, norm) -> float:
    # Measured directly: norm² - ||core||² cancels badly once the error is small.
    approx = core
    for j, basis in enumerate(bases):
        approx = mode_dot(approx, basis, j)
    return float(np.linalg.norm(tensor - approx) / norm) if norm > 0 else 0.0
