"""Argument checks for the decompositions, with messages that name the numbers."""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import numpy as np


def kernel(W) -> np.ndarray:
    """Returns `W` as a finite float64 (in, out) array, or raises."""
    array = np.asarray(W)
    if array.ndim != 2:
        raise ValueError(
            f"W must be a 2-D kernel of shape (in_features, out_features); got an array "
            f"with shape {array.shape} (ndim={array.ndim}). Reshape it first, e.g. a "
            "conv kernel (kh, kw, c_in, c_out) to (kh*kw*c_in, c_out)."
        )
    if array.size == 0:
        raise ValueError(f"W has shape {array.shape}, which has no entries to decompose.")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"W must hold real numbers; got dtype {array.dtype}.")
    array = array.astype(np.float64)
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise ValueError(
            f"W contains {bad} non-finite value(s) (NaN or Inf) out of {array.size}; "
            "fix or clip the kernel before decomposing it."
        )
    return array


def positive_int(value, name: str, hint: str = "") -> int:
    """Returns `value` as an int if it is a positive integer (2.0 is accepted), else raises."""
    suffix = f" {hint}" if hint else ""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive integer; got {value!r}.{suffix}")
    if not isinstance(value, numbers.Integral):
        if not (math.isfinite(value) and float(value).is_integer()):
            raise ValueError(f"{name} must be a positive integer; got {value!r}.{suffix}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.{suffix}")
    return int(value)


def nonnegative_int(value, name: str) -> int:
    """Like `positive_int`, but 0 is allowed."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and value == 0:
        return 0
    return positive_int(value, name, "(0 is also allowed.)")


def nonnegative_float(value, name: str) -> float:
    """Returns `value` as a finite float >= 0, or raises."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a non-negative number; got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}.")
    return value


def int_tuple(values, name: str) -> tuple[int, ...]:
    """A non-empty sequence of positive integers as a tuple of ints."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise ValueError(f"{name} must be a sequence of positive integers; got {values!r}.")
    result = tuple(positive_int(v, f"{name}[{i}]") for i, v in enumerate(values))
    if not result:
        raise ValueError(f"{name} must have at least one entry; got {values!r}.")
    return result


def factors(values, size: int, name: str, side: str, length: int | None = None) -> tuple[int, ...]:
    """Checks that `values` are positive integers whose product is `size`."""
    from tfreparam.decompose.budget import balanced_factors  # budget imports this module

    result = int_tuple(values, name)
    if length is not None and len(result) != length:
        raise ValueError(
            f"{name} must have exactly {length} entries; got {len(result)}: {result}."
        )
    product = math.prod(result)
    if product != size:
        raise ValueError(
            f"{name}={result} multiply to {product}, but W has {size} {side} features. "
            f"Choose factors whose product is {size}, e.g. "
            f"balanced_factors({size}, {len(result)}) = {balanced_factors(size, len(result))}."
        )
    return result


def rank_tuple(ranks, name: str, caps: Sequence[int]) -> tuple[int, ...]:
    """Expands an int to one rank per cap (capped); checks a tuple against the caps.

    An int is a ceiling for every entry; an explicit tuple must fit, since a rank
    above its cap cannot be realised (this matches the layers' rule).
    """
    caps = tuple(int(c) for c in caps)
    if isinstance(ranks, numbers.Real) and not isinstance(ranks, (bool, np.bool_)):
        rank = positive_int(ranks, name)
        return tuple(min(rank, cap) for cap in caps)
    result = int_tuple(ranks, name)
    if len(result) != len(caps):
        raise ValueError(
            f"{name} must be an int or a tuple of {len(caps)} ranks; got {len(result)}: {result}."
        )
    too_big = [f"{name}[{i}]={r} > {c}" for i, (r, c) in enumerate(zip(result, caps)) if r > c]
    if too_big:
        raise ValueError(
            f"{name}={result} exceeds the largest possible ranks {caps} ({', '.join(too_big)}); "
            "lower those entries, or pass an int to cap every rank automatically."
        )
    return result


def one_of(**selectors) -> str:
    """Name of the single selector that is not None; raises unless exactly one is."""
    given = [name for name, value in selectors.items() if value is not None]
    if len(given) != 1:
        names = ", ".join(selectors)
        got = ", ".join(given) if given else "none"
        raise ValueError(f"Pass exactly one of {names}; got {got}.")
    return given[0]


def mode_factors(input_factors, output_factors, in_features: int, out_features: int):
    """Validated (input_factors, output_factors) for a kernel of shape (in, out)."""
    ins = factors(input_factors, in_features, "input_factors", "input")
    outs = factors(output_factors, out_features, "output_factors", "output")
    return ins, outs


def paired_factors(input_factors, output_factors, in_features: int, out_features: int):
    """Like `mode_factors`, plus the tensor-train rule: equal lengths d >= 2."""
    ins, outs = mode_factors(input_factors, output_factors, in_features, out_features)
    if len(ins) != len(outs) or len(ins) < 2:
        raise ValueError(
            f"A tensor train pairs input and output modes, so input_factors {ins} and "
            f"output_factors {outs} need the same length d >= 2 (pad the shorter one with 1s)."
        )
    return ins, outs
