"""Low-rank factorisations W ≈ u @ v: plain, activation-whitened and Fisher-weighted SVD.

All three pick the rank the same way (exactly one of `rank`, `energy`,
`param_budget`) and split each kept singular value as sqrt(σ) into u and v so
that the two factors have balanced scales.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

import tfreparam.decompose.validation as validation
from tfreparam.decompose.budget import budget_count, budget_params
from tfreparam.decompose.factorization import Factorization
from tfreparam.decompose.form import Form, register_form

# Default first relative damping tried on a singular Gram matrix (× mean(diag G)).
DEFAULT_DAMPING = 1e-6
# A Cholesky pivot below this × mean(diag G) means G is numerically singular
# (condition number around 1e10 or worse): un-whitening would amplify noise.
_PIVOT_FLOOR = 1e-10
# A PSD Gram matrix always factorises once mean(diag G) is added; needing more
# means G is not XᵀX at all, which is reported rather than papered over.
_MAX_DAMPING = 1.0
# Rows of Fisher importance below this × the largest weight are floored to it.
_IMPORTANCE_FLOOR = 1e-6


def _resolve(shape, *, rank):
    return {"rank": validation.positive_int(rank, "rank")}


def _limits(shape, config):
    return {"rank": (min(shape), f"min(in_features, out_features) for a kernel of shape {tuple(shape)}")}


LOW_RANK = register_form(Form(
    name="low_rank",
    resolve=_resolve,
    count=lambda shape, config: config["rank"] * (shape[0] + shape[1]),
    limits=_limits,
    rebuild=lambda f, shape, config: f["u"] @ f["v"],
    budget_size="rank",
))


def low_rank_rank_for_budget(in_features: int, out_features: int, fraction: float) -> int:
    """Largest r with r*(in+out) <= fraction*in*out, at least 1 and at most min(in, out)."""
    shape = validation.shape((in_features, out_features))
    return LOW_RANK.size_for_budget(shape, budget_params(fraction, shape[0] * shape[1]))


def svd(W, rank=None, energy=None, param_budget=None) -> Factorization:
    """Truncated SVD, the best rank-r approximation in Frobenius norm (Eckart–Young).

    Exactly one of: `rank`; `energy`, the fraction of Σσ² to keep (0 < energy <= 1,
    smallest rank reaching it); `param_budget`, the most parameters r*(in+out)
    allowed, an int count or a float in (0, 1] meaning that share of in*out.
    """
    W = validation.kernel(W)
    u_mat, s, vt = np.linalg.svd(W, full_matrices=False)
    r, selected_by = _select_rank(s, W.shape, rank, energy, param_budget)
    u = u_mat[:, :r] * np.sqrt(s[:r])
    return _low_rank("svd", W, u, s, vt, r, selected_by, extra={})


def whitened_svd(W, gram, rank=None, energy=None, param_budget=None, damping=None) -> Factorization:
    """Activation-aware SVD (SVD-LLM): minimises the output error ||X W − X Ŵ||_F.

    `gram` is G = XᵀX over calibration inputs X (samples, in). With G = S Sᵀ
    (Cholesky, S lower-triangular), ||X Δ||_F = ||Sᵀ Δ||_F, so truncating the SVD
    of SᵀW = U Σ Vᵀ is optimal in output space; un-whitening gives
    u = S⁻ᵀ U_r √Σ_r and v = √Σ_r V_rᵀ. `energy` and `param_budget` select the
    rank on the whitened spectrum.

    `damping` (relative, × mean(diag G)) is added to G's diagonal when given.
    If G is still singular or not positive definite, damping starting at
    1e-6 grows ×10 until the Cholesky factor is usable; that is reported with
    a warning and in `info["damping"]`. `output_error` uses the undamped G.
    """
    W = validation.kernel(W)
    G = _gram(gram, W.shape[0])
    requested = None if damping is None else validation.nonnegative_float(damping, "damping")
    S, applied, absolute = _whitening_factor(G, requested)
    u_mat, s, vt = np.linalg.svd(S.T @ W, full_matrices=False)
    r, selected_by = _select_rank(s, W.shape, rank, energy, param_budget)
    u = np.linalg.solve(S.T, u_mat[:, :r] * np.sqrt(s[:r]))
    extra = {"damping": applied, "damping_absolute": absolute}
    return _low_rank("whitened_svd", W, u, s, vt, r, selected_by, extra, gram=G)


def fisher_svd(W, row_importance, rank=None, energy=None, param_budget=None) -> Factorization:
    """Fisher-weighted SVD (FWSVD, Hsu et al. 2022).

    `row_importance` (in,) is the squared gradient of the loss w.r.t. W,
    accumulated over data and summed over the output dimension. Rows are
    weighted by d_i = sqrt(row_importance_i) before the SVD, so the truncation
    favours rows the loss is sensitive to, and un-weighted after:
    u = diag(1/d) U_r √Σ_r. Zero weights are floored to 1e-6 × max(d)
    (counted in `info["floored_rows"]`); the truncation then simply projects
    those rows onto the kept subspace.
    """
    W = validation.kernel(W)
    weights = np.sqrt(_importance(row_importance, W.shape[0]))
    floor = _IMPORTANCE_FLOOR * float(weights.max())
    floored = int(np.count_nonzero(weights < floor))
    weights = np.maximum(weights, floor)
    u_mat, s, vt = np.linalg.svd(weights[:, None] * W, full_matrices=False)
    r, selected_by = _select_rank(s, W.shape, rank, energy, param_budget)
    u = (u_mat[:, :r] * np.sqrt(s[:r])) / weights[:, None]
    extra = {"importance_floor": floor, "floored_rows": floored}
    return _low_rank("fisher_svd", W, u, s, vt, r, selected_by, extra)


def _low_rank(method, W, u, s, vt, r, selected_by, extra, gram=None) -> Factorization:
    """Pairs the left factor `u` (already holding √σ) with v = √σ V_rᵀ; records the spectrum."""
    v = np.sqrt(s[:r])[:, None] * vt[:r]
    total = float(np.sum(s**2))
    info = {
        "singular_values": s.copy(),
        "rank": r,
        "selected_by": selected_by,
        "energy_kept": float(np.sum(s[:r] ** 2) / total) if total > 0 else 1.0,
        **extra,
    }
    return Factorization.from_factors(
        method=method, form=LOW_RANK, factors={"u": u, "v": v},
        layer_config={"rank": r}, kernel=W, info=info, gram=gram,
    )


def _select_rank(s: np.ndarray, shape, rank, energy, param_budget) -> tuple[int, str]:
    """The rank from exactly one of rank / energy / param_budget, and which one chose it."""
    which = validation.one_of(rank=rank, energy=energy, param_budget=param_budget)
    in_features, out_features = shape
    max_rank = min(in_features, out_features)
    if which == "rank":
        return LOW_RANK.config(shape, rank=rank)["rank"], which
    if which == "energy":
        if isinstance(energy, bool) or not isinstance(energy, numbers.Real) or not 0 < energy <= 1:
            raise ValueError(
                f"energy must be a number in (0, 1], the fraction of Σσ² to keep; got {energy!r}."
            )
        squares = s**2
        total = float(squares.sum())
        if total == 0.0:
            return 1, which
        # Relative slack so that energy=1.0 is not defeated by rounding in the sum.
        reached = np.cumsum(squares) >= float(energy) * total * (1 - 1e-12)
        return int(np.argmax(reached)) + 1, which
    budget = budget_count(param_budget, in_features * out_features)
    per_rank = in_features + out_features
    if budget < per_rank:
        raise ValueError(
            f"param_budget={param_budget!r} allows {budget} parameters, but even rank 1 needs "
            f"in_features + out_features = {per_rank} for W of shape {tuple(shape)}; "
            f"raise the budget to at least {per_rank}."
        )
    return min(budget // per_rank, max_rank), which


def _gram(gram, in_features: int) -> np.ndarray:
    """Validated, symmetrised float64 Gram matrix XᵀX of shape (in, in)."""
    G = np.asarray(gram)
    if G.ndim != 2 or G.shape != (in_features, in_features):
        raise ValueError(
            f"gram must be the input Gram matrix XᵀX of shape (in_features, in_features) = "
            f"({in_features}, {in_features}) to match W; got shape {G.shape}."
        )
    if not (np.issubdtype(G.dtype, np.floating) or np.issubdtype(G.dtype, np.integer)):
        raise ValueError(f"gram must hold real numbers; got dtype {G.dtype}.")
    G = G.astype(np.float64)
    bad = int(G.size - np.count_nonzero(np.isfinite(G)))
    if bad:
        raise ValueError(f"gram contains {bad} non-finite value(s) (NaN or Inf); recompute XᵀX.")
    scale = float(np.max(np.abs(G)))
    asymmetry = float(np.max(np.abs(G - G.T)))
    # float32 accumulation leaves asymmetry near 1e-7 × scale; allow ample room.
    if asymmetry > 1e-5 * scale:
        raise ValueError(
            f"gram is not symmetric: max |G - Gᵀ| = {asymmetry:.3g} against max |G| = {scale:.3g}. "
            "Pass G = XᵀX accumulated over inputs X of shape (samples, in_features)."
        )
    diagonal = np.diag(G)
    if np.any(diagonal < 0):
        worst = int(np.argmin(diagonal))
        raise ValueError(
            f"gram has a negative diagonal entry G[{worst}, {worst}] = {diagonal[worst]:.3g}; "
            "the diagonal of XᵀX is a sum of squares and cannot be negative."
        )
    if not np.any(diagonal > 0):
        # A PSD matrix with a zero diagonal is zero: the inputs carried no signal to whiten by.
        raise ValueError(
            "gram is all zero, so the calibration inputs of this layer were all zero: there is no "
            "calibration signal to whiten by. Check calibration_data (real, non-padding inputs), "
            "or use the plain svd()."
        )
    return (G + G.T) / 2


def _whitening_factor(G: np.ndarray, requested: float | None):
    """Lower Cholesky factor S of G + λ·mean(diag G)·I; returns (S, λ, λ·mean(diag G))."""
    n = G.shape[0]
    mean_diag = float(np.mean(np.diag(G)))
    scale = mean_diag if mean_diag > 0 else 1.0
    damping = 0.0 if requested is None else requested
    while True:
        S = _usable_cholesky(G + damping * scale * np.eye(n), scale)
        if S is not None:
            break
        if damping >= max(_MAX_DAMPING, requested or 0.0):
            smallest = float(np.linalg.eigvalsh(G)[0])
            raise ValueError(
                f"gram is far from positive semi-definite (smallest eigenvalue {smallest:.3g}, "
                f"mean diagonal {mean_diag:.3g}); even damping {damping:g} × mean(diag G) did not "
                "make it factorisable, which never happens for a Gram matrix. Pass G = XᵀX "
                "accumulated over real inputs X."
            )
        damping = DEFAULT_DAMPING if damping < DEFAULT_DAMPING else damping * 10
    if damping != (0.0 if requested is None else requested):
        warnings.warn(
            f"gram ({n}x{n}) is singular or not positive definite, so whitened_svd added "
            f"damping {damping:g} × mean(diag G) = {damping * scale:.3g} to its diagonal. Use more "
            f"calibration samples than input features ({n}) to avoid this, or pass damping=.",
            UserWarning,
            stacklevel=3,
        )
    return S, damping, damping * scale


def _usable_cholesky(G: np.ndarray, scale: float) -> np.ndarray | None:
    try:
        S = np.linalg.cholesky(G)
    except np.linalg.LinAlgError:
        return None
    pivots = np.diag(S) ** 2
    if not np.all(np.isfinite(S)) or float(pivots.min()) < _PIVOT_FLOOR * scale:
        return None
    return S


def _importance(row_importance, in_features: int) -> np.ndarray:
    values = np.asarray(row_importance)
    if values.shape != (in_features,):
        raise ValueError(
            f"row_importance must have shape (in_features,) = ({in_features},), one accumulated "
            f"squared gradient per input row of W; got shape {values.shape}."
        )
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
        raise ValueError(f"row_importance must hold real numbers; got dtype {values.dtype}.")
    values = values.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("row_importance contains NaN or Inf; recompute the accumulated squared gradients.")
    if np.any(values < 0):
        worst = int(np.argmin(values))
        raise ValueError(
            f"row_importance[{worst}] = {values[worst]:.3g} is negative; squared gradients are >= 0."
        )
    if not np.any(values > 0):
        raise ValueError(
            "row_importance is all zero, so every row would get zero weight; accumulate squared "
            "gradients over at least one batch with a non-zero loss gradient (or use svd())."
        )
    return values
