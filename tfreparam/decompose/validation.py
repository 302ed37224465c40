"""Argument checks shared by the decompositions and the layers, with messages that name the numbers.

Pure Python and numpy, so `tfreparam.decompose` and `tfreparam.layers` use
the same rules and words. `balanced_factors` lives here because it is the
default split the factor checks suggest.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import numpy as np


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def positive_int(value, name: str, hint: str = "") -> int:
    """Returns `value` as an int if it is a positive integer (2.0 is accepted), else raises."""
    suffix = f" {hint}" if hint else ""
    if not _is_real(value):
        raise ValueError(f"{name} must be a positive integer; got {value!r}.{suffix}")
    if not isinstance(value, numbers.Integral):
        if not (math.isfinite(value) and float(value).is_integer()):
            raise ValueError(f"{name} must be a positive integer; got {value!r}.{suffix}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.{suffix}")
    return int(value)


def nonnegative_int(value, name: str) -> int:
    """Like `positive_int`, but 0 is allowed."""
    if _is_real(value) and value == 0:
        return 0
    return positive_int(value, name, "(0 is also allowed.)")


def nonnegative_float(value, name: str) -> float:
    """Returns `value` as a finite float >= 0, or raises."""
    if not _is_real(value):
        raise ValueError(f"{name} must be a non-negative number; got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}.")
    return value


def int_tuple(values, name: str, length: int | None = None) -> tuple[int, ...]:
    """A non-empty sequence of positive integers as a tuple of ints (of `length` entries, if given)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise ValueError(f"{name} must be a sequence of positive integers; got {values!r}.")
    result = tuple(positive_int(v, f"{name}[{i}]") for i, v in enumerate(values))
    if not result:
        raise ValueError(f"{name} must have at least one entry; got {values!r}.")
    if length is not None and len(result) != length:
        raise ValueError(f"{name} must have exactly {length} entries; got {len(result)}: {result}.")
    return result


def at_most(value: int, limit: int, name: str, why: str) -> int:
    """Returns `value` if it is <= `limit`; else raises, saying why `limit` is the largest useful value."""
    if value > limit:
        raise ValueError(f"{name}={value} exceeds its maximum {limit} ({why}); use {name} <= {limit}.")
    return value


def balanced_factors(n: int, num_factors: int = 2) -> tuple[int, ...]:
    """Splits `n` into `num_factors` integer factors as equal as possible, ascending.

    "As equal as possible" means the smallest largest factor, then the largest
    smallest factor, e.g. 768 -> (24, 32), 3072 -> (48, 64), 384 -> (16, 24).
    A prime n gives (1, ..., 1, n).
    """
    n = positive_int(n, "n")
    num_factors = positive_int(num_factors, "num_factors")
    best = None
    for candidate in _ascending_splits(n, num_factors, 1):
        key = (candidate[-1], -candidate[0])
        if best is None or key < best[0]:
            best = (key, candidate)
    return best[1]


def _ascending_splits(n: int, parts: int, smallest: int):
    """Every non-decreasing tuple of `parts` integers >= `smallest` whose product is n."""
    if parts == 1:
        if n >= smallest:
            yield (n,)
        return
    for first in range(smallest, math.isqrt(n) + 1):
        if first**parts > n:
            break
        if n % first == 0:
            for rest in _ascending_splits(n // first, parts - 1, first):
                yield (first,) + rest


def factors(values, size: int, name: str, side: str, length: int | None = None) -> tuple[int, ...]:
    """Checks that `values` are positive integers whose product is `size` (the `side` feature count)."""
    result = int_tuple(values, name, length)
    product = math.prod(result)
    if product != size:
        raise ValueError(
            f"{name}={result} multiply to {product}, but W has {size} {side} features. "
            f"Choose factors whose product is {size}, e.g. "
            f"balanced_factors({size}, {len(result)}) = {balanced_factors(size, len(result))}."
        )
    return result


def mode_factors(input_factors, output_factors, in_features: int, out_features: int):
    """Validated (input_factors, output_factors) for a kernel of shape (in, out)."""
    ins = factors(input_factors, in_features, "input_factors", "input")
    outs = factors(output_factors, out_features, "output_factors", "output")
    return ins, outs


def paired_factors(input_factors, output_factors, in_features: int, out_features: int):
    """Like `mode_factors`, plus the tensor-train rule: equal lengths d >= 2."""
    ins, outs = mode_factors(input_factors, output_factors, in_features, out_features)
    check_paired(ins, outs)
    return ins, outs


def check_paired(ins: tuple[int, ...], outs: tuple[int, ...]) -> None:
    if len(ins) != len(outs) or len(ins) < 2:
        raise ValueError(
            f"A tensor train pairs input and output modes, so input_factors {ins} and "
            f"output_factors {outs} need the same length d >= 2 (pad the shorter one with 1s)."
        )


def rank_tuple(ranks, name: str, caps: Sequence[int]) -> tuple[int, ...]:
    """Expands an int to one rank per cap (capped); checks a tuple against the caps.

    An int is a ceiling for every entry; an explicit tuple must fit, since a rank
    above its cap cannot be realised.
    """
    caps = tuple(int(c) for c in caps)
    if _is_real(ranks):
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


def shape(value) -> tuple[int, int]:
    """A kernel shape (in_features, out_features) of two positive ints."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"shape must be the kernel shape (in_features, out_features); got {value!r}.")
    return (positive_int(value[0], "shape[0] (in_features)"), positive_int(value[1], "shape[1] (out_features)"))
