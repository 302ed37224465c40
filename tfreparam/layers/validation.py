"""Argument checks shared by the layers, with messages that name the numbers."""

from __future__ import annotations

import math
import numbers
from typing import Sequence

from tfreparam.decompose.budget import balanced_factors  # noqa: F401  (re-exported)


def positive_int(value, name: str) -> int:
    """Returns `value` as an int, or raises if it is not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and float(value).is_integer() and not isinstance(value, bool):
            value = int(value)
        else:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    if value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, got {value}.")
    return int(value)


def int_tuple(values, name: str, length: int | None = None) -> tuple[int, ...]:
    """Validates a sequence of positive integers (optionally of a given length)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"`{name}` must be a sequence of positive integers, got {values!r}.")
    result = tuple(positive_int(v, f"{name}[{i}]") for i, v in enumerate(values))
    if length is not None and len(result) != length:
        raise ValueError(f"`{name}` must have {length} entries, got {len(result)}: {result}.")
    return result


def check_factors(factors: tuple[int, ...], size: int, name: str, feature: str) -> None:
    """Raises unless the factors multiply to the feature size."""
    if math.prod(factors) != size:
        raise ValueError(
            f"`{name}`={factors} multiply to {math.prod(factors)}, but the {feature} "
            f"size is {size}. Choose factors whose product is {size} "
            f"(e.g. tfreparam.layers.balanced_factors({size}, {len(factors)}))."
        )


def rank_tuple(ranks, name: str, length: int, caps: Sequence[int]) -> tuple[int, ...]:
    """Expands an int rank to `length` entries capped by `caps`; checks a tuple against them.

    An int is a ceiling applied everywhere (bonds that cannot use it are capped
    at their maximum); an explicit tuple must fit exactly, since a rank above
    the maximum only adds redundant parameters.
    """
    if isinstance(ranks, numbers.Integral) and not isinstance(ranks, bool):
        rank = positive_int(ranks, name)
        return tuple(min(rank, cap) for cap in caps)
    result = int_tuple(ranks, name, length)
    too_big = [(i, r, cap) for i, (r, cap) in enumerate(zip(result, caps)) if r > cap]
    if too_big:
        details = ", ".join(f"{name}[{i}]={r} > {cap}" for i, r, cap in too_big)
        raise ValueError(
            f"`{name}`={result} exceeds the largest useful rank ({details}); "
            f"the maxima for these factors are {tuple(caps)}."
        )
    return result
