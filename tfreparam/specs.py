"""Policy specs: which reparameterization a layer gets and how it is initialised.

A spec turns a trained kernel W (in, out) into a `Factorization` whose factors
load into the matching layer. Specs are small frozen dataclasses, so policies
are plain data that can be printed, compared and reused.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from tfreparam import decompose


class Spec:
    """Base of all specs. `needs` names the calibration statistics it uses."""

    needs: Optional[str] = None  # None | "gram" | "fisher"

    def factorize(self, kernel: np.ndarray, stats=None) -> decompose.Factorization:
        """Factors of a trained kernel (in, out), for `reparameterize`."""
        raise NotImplementedError

    def layer_kwargs(self, in_features: int, units: int) -> tuple[str, dict]:
        """(layer family, constructor kwargs) for a fresh layer of this shape (no weights)."""
        raise NotImplementedError

    def make_layer(self, in_features: int, units: int, **dense_kwargs):
        """A freshly initialised layer of this spec's type, for building models from scratch."""
        from tfreparam.surgery import LAYER_CLASSES  # surgery imports specs

        family, kwargs = self.layer_kwargs(in_features, units)
        return LAYER_CLASSES[family](units, **kwargs, **dense_kwargs)


def spec_for(policy, name: str) -> Optional[Spec]:
    """The spec a name-based policy gives layer `name` (None: keep a plain Dense).

    `policy` is None, a spec (every projection), a dict of regex (full match,
    first wins) -> spec, or a callable(name) -> spec or None.
    """
    import re

    if policy is None:
        return None
    if isinstance(policy, Spec):
        spec = policy
    elif isinstance(policy, dict):
        spec = next((s for pattern, s in policy.items() if re.fullmatch(pattern, name)), None)
    elif callable(policy):
        spec = policy(name)
    else:
        raise ValueError(f"A layer policy must be a spec, a dict or a callable; got {type(policy).__name__}.")
    if spec is not None and not isinstance(spec, Spec):
        raise ValueError(f"The policy gives {spec!r} for '{name}', which is not a spec.")
    return None if isinstance(spec, Keep) else spec


# Ridge (× mean(diag G)) that keeps the least-squares correction well posed
# along input directions the calibration data barely excites.
CORRECTION_RIDGE = 1e-4


def corrected_kernel(kernel: np.ndarray, gram: np.ndarray, cross: np.ndarray, ridge: float = CORRECTION_RIDGE):
    """argmin_W' ||X̃ W' − X W||_F = (X̃ᵀX̃)⁻¹ X̃ᵀX W, from gram = X̃ᵀX̃ and cross = X̃ᵀX.

    X̃ are a layer's inputs in the partly compressed model, X the original
    model's; the result re-targets the layer at the original's outputs so
    errors of earlier layers are compensated rather than compounded.
    """
    gram = np.asarray(gram, np.float64)
    scale = float(np.mean(np.diag(gram))) or 1.0
    regularised = gram + ridge * scale * np.eye(gram.shape[0])
    return np.linalg.solve(regularised, np.asarray(cross, np.float64) @ np.asarray(kernel, np.float64))


def _modes(spec, in_features: int, units: int, count: int = 2):
    """The spec's input/output factors, or the most balanced `count`-way splits."""
    ins = tuple(spec.input_factors or decompose.balanced_factors(in_features, count))
    outs = tuple(spec.output_factors or decompose.balanced_factors(units, count))
    return ins, outs


def _fraction(budget, spec) -> float:
    if not isinstance(budget, float) or not 0.0 < budget <= 1.0:
        raise ValueError(
            f"{type(spec).__name__}: building a layer from scratch takes param_budget as a "
            f"fraction in (0, 1], got {budget!r}."
        )
    return budget


def _needs_weights(spec, field):
    raise ValueError(
        f"{type(spec).__name__}({field}=...) chooses its size from trained weights; to build a "
        "layer from scratch give an explicit size or a param_budget fraction."
    )


def _exactly_one(spec, names):
    given = [name for name in names if getattr(spec, name) is not None]
    if len(given) != 1:
        raise ValueError(
            f"{type(spec).__name__} needs exactly one of {', '.join(names)}; got "
            f"{', '.join(f'{n}={getattr(spec, n)!r}' for n in given) if given else 'none'}."
        )


@dataclasses.dataclass(frozen=True)
class Keep(Spec):
    """Leave the layer as it is (useful to exempt layers from a broad pattern)."""


@dataclasses.dataclass(frozen=True)
class LowRank(Spec):
    """`LowRankDense` by truncated SVD ("svd"), activation-aware SVD ("whitened",
    needs calibration data) or Fisher-weighted SVD ("fisher", needs labelled
    calibration data and a loss). Rank from `rank`, kept `energy`, or
    `param_budget` (a fraction of in·out, or a parameter count)."""

    rank: Optional[int] = None
    energy: Optional[float] = None
    param_budget: Optional[float] = None
    method: str = "svd"

    _METHODS = {"svd": None, "whitened": "gram", "fisher": "fisher"}

    def __post_init__(self):
        if self.method not in self._METHODS:
            raise ValueError(f"LowRank method must be one of {sorted(self._METHODS)}, got {self.method!r}.")
        _exactly_one(self, ("rank", "energy", "param_budget"))

    @property
    def needs(self):
        return self._METHODS[self.method]

    def factorize(self, kernel, stats=None):
        selection = dict(rank=self.rank, energy=self.energy, param_budget=self.param_budget)
        if self.method == "svd":
            return decompose.svd(kernel, **selection)
        if self.method == "whitened":
            if getattr(stats, "cross", None) is not None:
                kernel = corrected_kernel(kernel, stats.gram, stats.cross)
            return decompose.whitened_svd(kernel, stats.gram, **selection)
        return decompose.fisher_svd(kernel, stats.row_importance, **selection)

    def layer_kwargs(self, in_features, units):
        if self.energy is not None:
            _needs_weights(self, "energy")
        rank = self.rank
        if self.param_budget is not None:
            rank = decompose.low_rank_rank_for_budget(in_features, units, _fraction(self.param_budget, self))
        return "low_rank", {"rank": rank}


@dataclasses.dataclass(frozen=True)
class Kronecker(Spec):
    """`KroneckerDense` by the nearest Kronecker product (Van Loan–Pitsianis).
    Factors default to the most balanced split; `num_terms` or `param_budget`."""

    input_factors: Optional[Sequence[int]] = None
    output_factors: Optional[Sequence[int]] = None
    num_terms: Optional[int] = None
    param_budget: Optional[float] = None

    def __post_init__(self):
        if self.num_terms is not None and self.param_budget is not None:
            raise ValueError("Kronecker takes num_terms or param_budget, not both.")

    def factorize(self, kernel, stats=None):
        ins, outs = _modes(self, *kernel.shape)
        terms = self.num_terms or 1
        if self.param_budget is not None:
            terms = decompose.kronecker_terms_for_budget(ins, outs, self.param_budget)
        return decompose.nearest_kronecker(kernel, ins, outs, num_terms=terms)

    def layer_kwargs(self, in_features, units):
        ins, outs = _modes(self, in_features, units)
        terms = self.num_terms or 1
        if self.param_budget is not None:
            terms = decompose.kronecker_terms_for_budget(ins, outs, _fraction(self.param_budget, self))
        return "kronecker", {"input_factors": ins, "output_factors": outs, "num_terms": terms}


@dataclasses.dataclass(frozen=True)
class TensorTrain(Spec):
    """`TTDense` by TT-SVD. Factors default to balanced splits into `num_cores`;
    `ranks` (int or tuple), `eps` (relative error bound) or `param_budget`."""

    input_factors: Optional[Sequence[int]] = None
    output_factors: Optional[Sequence[int]] = None
    ranks: Optional[object] = None
    eps: Optional[float] = None
    param_budget: Optional[float] = None
    num_cores: int = 3

    def __post_init__(self):
        _exactly_one(self, ("ranks", "eps", "param_budget"))

    def factorize(self, kernel, stats=None):
        ins, outs = _modes(self, *kernel.shape, count=self.num_cores)
        ranks = self.ranks
        if self.param_budget is not None:
            ranks = decompose.tt_rank_for_budget(ins, outs, self.param_budget)
        return decompose.tt_svd(kernel, ins, outs, ranks=ranks, eps=self.eps)

    def layer_kwargs(self, in_features, units):
        if self.eps is not None:
            _needs_weights(self, "eps")
        ins, outs = _modes(self, in_features, units, count=self.num_cores)
        ranks = self.ranks
        if self.param_budget is not None:
            ranks = decompose.tt_rank_for_budget(ins, outs, _fraction(self.param_budget, self))
        return "tensor_train", {"input_factors": ins, "output_factors": outs, "ranks": ranks}


@dataclasses.dataclass(frozen=True)
class Tucker(Spec):
    """`TuckerDense` by HOSVD (+ `n_iter` HOOI sweeps); `ranks` or `param_budget`."""

    input_factors: Optional[Sequence[int]] = None
    output_factors: Optional[Sequence[int]] = None
    ranks: Optional[object] = None
    param_budget: Optional[float] = None
    n_iter: int = 0

    def __post_init__(self):
        _exactly_one(self, ("ranks", "param_budget"))

    def factorize(self, kernel, stats=None):
        ins, outs = _modes(self, *kernel.shape)
        ranks = self.ranks
        if self.param_budget is not None:
            ranks = decompose.tucker_rank_for_budget(ins, outs, self.param_budget)
        return decompose.tucker(kernel, ins, outs, ranks, n_iter=self.n_iter)

    def layer_kwargs(self, in_features, units):
        ins, outs = _modes(self, in_features, units)
        ranks = self.ranks
        if self.param_budget is not None:
            ranks = decompose.tucker_rank_for_budget(ins, outs, _fraction(self.param_budget, self))
        return "tucker", {"input_factors": ins, "output_factors": outs, "ranks": ranks}


@dataclasses.dataclass(frozen=True)
class CP(Spec):
    """`CPDense` by CP-ALS; `rank` or `param_budget`."""

    input_factors: Optional[Sequence[int]] = None
    output_factors: Optional[Sequence[int]] = None
    rank: Optional[int] = None
    param_budget: Optional[float] = None
    n_iter: int = 200
    seed: int = 0

    def __post_init__(self):
        _exactly_one(self, ("rank", "param_budget"))

    def factorize(self, kernel, stats=None):
        ins, outs = _modes(self, *kernel.shape)
        rank = self.rank
        if self.param_budget is not None:
            rank = decompose.cp_rank_for_budget(ins, outs, self.param_budget)
        return decompose.cp_als(kernel, ins, outs, rank, n_iter=self.n_iter, seed=self.seed)

    def layer_kwargs(self, in_features, units):
        ins, outs = _modes(self, in_features, units)
        rank = self.rank
        if self.param_budget is not None:
            rank = decompose.cp_rank_for_budget(ins, outs, _fraction(self.param_budget, self))
        return "cp", {"input_factors": ins, "output_factors": outs, "rank": rank}
