"""`Factorization`: the factors of one decomposed kernel, in the layers' layout."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfreparam.decompose._tensor import mode_dot

LAYERS = ("low_rank", "kronecker", "tensor_train", "tucker", "cp")


@dataclass(frozen=True, eq=False)
class Factorization:
    """Factors of a kernel W (in, out), named and shaped as the matching layer stores them.

    `factors` are float32 (what the layer loads); `relative_error` and
    `output_error` are measured for exactly those float32 factors against the
    original float64 W, so they describe what the layer will compute.
    `layer_kwargs` are the layer's constructor arguments besides `units`.
    """

    method: str
    layer: str
    factors: dict[str, np.ndarray]
    layer_kwargs: dict[str, Any]
    shape: tuple[int, int]
    relative_error: float
    output_error: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.layer not in LAYERS:
            raise ValueError(f"layer must be one of {LAYERS}; got {self.layer!r}.")

    @classmethod
    def from_factors(
        cls,
        *,
        method: str,
        layer: str,
        factors: dict[str, np.ndarray],
        layer_kwargs: dict[str, Any],
        kernel: np.ndarray,
        info: dict[str, Any],
        gram: np.ndarray | None = None,
    ) -> "Factorization":
        """Casts the factors to float32 and measures their errors against `kernel`."""
        stored = {name: np.ascontiguousarray(f, dtype=np.float32) for name, f in factors.items()}
        shape = (int(kernel.shape[0]), int(kernel.shape[1]))
        approx = reconstruct(layer, stored, shape)
        delta = kernel - approx
        rel = _ratio(np.linalg.norm(delta), np.linalg.norm(kernel))
        out = None if gram is None else output_error(kernel, approx, gram)
        return cls(method, layer, stored, dict(layer_kwargs), shape, rel, out, dict(info))

    def reconstruct(self) -> np.ndarray:
        """The approximated kernel Ŵ, shape (in, out), float64."""
        return reconstruct(self.layer, self.factors, self.shape)

    @property
    def num_params(self) -> int:
        """Total number of factor entries (the layer's weight count, bias excluded)."""
        return int(sum(np.size(f) for f in self.factors.values()))

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


def reconstruct(layer: str, factors: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """The (in, out) float64 kernel implied by `factors` in `layer`'s layout."""
    f = {name: np.asarray(value, dtype=np.float64) for name, value in factors.items()}
    if layer == "low_rank":
        return f["u"] @ f["v"]
    if layer == "kronecker":
        a, b = f["a"], f["b"]
        # kron(A, B)[(i1, i2), (o1, o2)] = A[i1, o1] B[i2, o2], summed over terms k.
        return np.einsum("kac,kbd->abcd", a, b).reshape(shape)
    if layer == "tensor_train":
        return _tt_kernel(f, shape)
    if layer == "tucker":
        tensor = f["core"]
        for j in range(tensor.ndim):
            tensor = mode_dot(tensor, f[f"factor_{j}"], j)
        return tensor.reshape(shape)
    if layer == "cp":
        modes = [f[f"factor_{j}"] for j in range(len(f))]
        rank_axis = len(modes)
        operands = []
        for j, factor in enumerate(modes):
            operands += [factor, [j, rank_axis]]
        return np.einsum(*operands, list(range(len(modes))), optimize=True).reshape(shape)
    raise ValueError(f"layer must be one of {LAYERS}; got {layer!r}.")


def _tt_kernel(f: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    # Grow (rows, cols, bond) one core at a time; rows and cols stay row-major.
    result = f["core_0"][0]
    for k in range(1, len(f)):
        core = f[f"core_{k}"]
        result = np.einsum("abr,rcds->acbds", result, core)
        s = result.shape
        result = result.reshape(s[0] * s[1], s[2] * s[3], s[4])
    return result.reshape(shape)
