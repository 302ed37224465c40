"""`Factorization`: the factors of one decomposed kernel, in the layers' layout."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfreparam.decompose.form import Form, get_form


@dataclass(frozen=True, eq=False)
class Factorization:
    """Factors of a kernel W (in, out), named and shaped as the matching layer stores them.

    `form` is the family's numpy side (`form.name` is e.g. "low_rank"); the
    factorization rebuilds its kernel through it (`reconstruct()`).
    `factors` are float32 (what the layer loads); `relative_error` and
    `output_error` are measured for exactly those float32 factors against the
    original float64 W, so they describe what the layer will compute.
    `layer_config` are the layer's constructor arguments besides `units`.
    """

    method: str
    form: Form
    factors: dict[str, np.ndarray]
    layer_config: dict[str, Any]
    shape: tuple[int, int]
    relative_error: float
    output_error: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        # A registered family name is accepted for the form.
        object.__setattr__(self, "form", get_form(self.form))

    @classmethod
    def from_factors(
        cls,
        *,
        method: str,
        form,
        factors: dict[str, np.ndarray],
        layer_config: dict[str, Any],
        kernel: np.ndarray,
        info: dict[str, Any],
        gram: np.ndarray | None = None,
    ) -> "Factorization":
        """Casts the factors to float32 and measures their errors against `kernel`."""
        form = get_form(form)
        stored = {name: np.ascontiguousarray(f, dtype=np.float32) for name, f in factors.items()}
        shape = (int(kernel.shape[0]), int(kernel.shape[1]))
        approx = form.reconstruct(stored, shape, layer_config)
        delta = kernel - approx
        rel = _ratio(np.linalg.norm(delta), np.linalg.norm(kernel))
        out = None if gram is None else output_error(kernel, approx, gram)
        return cls(method, form, stored, dict(layer_config), shape, rel, out, dict(info))

    def reconstruct(self) -> np.ndarray:
        """The approximated kernel Ŵ, shape (in, out), float64."""
        return self.form.reconstruct(self.factors, self.shape, self.layer_config)

    @property
    def num_params(self) -> int:
        """The layer's weight count (bias excluded), from its form."""
        return int(self.form.count(self.shape, self.layer_config))

    @property
    def compression_ratio(self) -> float:
        """Dense parameter count in*out divided by `num_params`."""
        return self.shape[0] * self.shape[1] / self.num_params


def output_error(kernel: np.ndarray, approx: np.ndarray, gram: np.ndarray) -> float:
    """||X(W − Ŵ)||_F / ||XW||_F from the Gram matrix G = XᵀX alone, without X."""
    delta = np.asarray(kernel, np.float64) - np.asarray(approx, np.float64)
    # ||X Δ||_F^2 = tr(Δᵀ G Δ); clip tiny negatives from rounding.
    num = max(float(np.sum(delta * (gram @ delta))), 0.0)
    den = max(float(np.sum(kernel * (gram @ kernel))), 0.0)
    return _ratio(math.sqrt(num), math.sqrt(den))


def _ratio(num: float, den: float) -> float:
    # A zero kernel is reproduced exactly by zero factors: call that error 0.
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return float(num / den)
