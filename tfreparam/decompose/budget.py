"""Parameter budgets: a share of the dense kernel as a count, and any family's count by name.

A budget `fraction` is a share of the dense kernel's in*out parameters (bias
excluded). Each family's `*_for_budget` helper (next to its decomposition)
asks its form for the largest size that fits, and returns at least 1 even
when size 1 already exceeds the budget, so its answer is always usable.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Sequence

from tfreparam.decompose.form import get_form


def param_count(layer: str, shape: Sequence[int], **layer_config) -> int:
    """Exact factor-parameter count (bias excluded) of family `layer` for kernel `shape` = (in, out).

    `layer_config` are the layer's constructor arguments besides `units`, e.g.
    `param_count("low_rank", (768, 3072), rank=64)` or
    `param_count(f.form.name, f.shape, **f.layer_config)` for a `Factorization` f.
    """
    return get_form(layer).param_count(shape, **layer_config)


def budget_params(fraction: float, total: int) -> int:
    """floor(fraction * total), computed exactly from the fraction as written (0.29*100 -> 29)."""
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
        raise ValueError(f"fraction must be a number > 0; got {fraction!r}.")
    value = float(fraction)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"fraction must be a finite number > 0 (a share of the dense in*out parameters); got {fraction!r}."
        )
    # str() gives the shortest decimal that round-trips, i.e. what the caller typed.
    return int(math.floor(Fraction(str(value)) * total))


def budget_count(param_budget, dense_params: int, name: str = "param_budget") -> int:
    """A parameter count from an int count or a float share in (0, 1] of `dense_params`."""
    if isinstance(param_budget, bool) or not isinstance(param_budget, numbers.Real):
        raise ValueError(
            f"{name} must be an int (a parameter count) or a float in (0, 1] "
            f"(a share of in*out = {dense_params}); got {param_budget!r}."
        )
    if isinstance(param_budget, numbers.Integral):
        if param_budget <= 0:
            raise ValueError(f"{name} (a parameter count) must be a positive integer; got {param_budget!r}.")
        return int(param_budget)
    if not 0 < param_budget <= 1:
        raise ValueError(
            f"A float {name} is a share of in*out = {dense_params} and must be in (0, 1]; "
            f"got {param_budget!r}. Pass an int for an absolute parameter count."
        )
    return budget_params(param_budget, dense_params)
