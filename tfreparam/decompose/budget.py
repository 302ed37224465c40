"""Parameter counts of each factored layout, and the largest rank that fits a budget.

A budget `fraction` is a share of the dense kernel's in*out parameters (bias
excluded). Every `*_for_budget` helper returns at least 1 even when rank 1
already exceeds the budget, so its answer is always usable.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Sequence

from tfreparam.decompose import _validate


def balanced_factors(n: int, num_factors: int = 2) -> tuple[int, ...]:
    """Splits `n` into `num_factors` integer factors as equal as possible, ascending.

    "As equal as possible" means the smallest largest factor, then the largest
    smallest factor (the same rule as the layers use), e.g. 768 -> (24, 32),
    3072 -> (48, 64), 384 -> (16, 24). A prime n gives (1, ..., 1, n).
    """
    n = _validate.positive_int(n, "n")
    num_factors = _validate.positive_int(num_factors, "num_factors")
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
        if first ** parts > n:
            break
        if n % first == 0:
            for rest in _ascending_splits(n // first, parts - 1, first):
                yield (first,) + rest


def tt_max_ranks(input_factors: Sequence[int], output_factors: Sequence[int]) -> tuple[int, ...]:
    """Largest useful inner ranks of a TT/MPO kernel: min(prod n[:k+1], prod n[k+1:]), n_k = in_k*out_k."""
    pairs = [i * o for i, o in zip(input_factors, output_factors)]
    return tuple(
        min(math.prod(pairs[: k + 1]), math.prod(pairs[k + 1 :])) for k in range(len(pairs) - 1)
    )


_REQUIRED = object()  # marks a keyword argument param_count cannot default


def param_count(layer: str, shape: Sequence[int], **layer_kwargs) -> int:
    """Exact factor-parameter count (bias excluded) of `layer` for kernel `shape` = (in, out).

    `layer_kwargs` are the layer's constructor arguments besides `units`, e.g.
    `param_count("low_rank", (768, 3072), rank=64)` or
    `param_count(f.layer, f.shape, **f.layer_kwargs)` for a `Factorization` f.
    """
    in_features, out_features = _shape(shape)
    kwargs = dict(layer_kwargs)

    def pop(name, default=_REQUIRED):
        if name in kwargs:
            return kwargs.pop(name)
        if default is _REQUIRED:
            raise ValueError(f"param_count({layer!r}, ...) needs the keyword argument {name!r}.")
        return default

    if layer == "low_rank":
        count = _validate.positive_int(pop("rank"), "rank") * (in_features + out_features)
    elif layer == "kronecker":
        (in1, in2), (out1, out2) = _kron_factors(
            pop("input_factors", None), pop("output_factors", None), in_features, out_features
        )
        count = _validate.positive_int(pop("num_terms", 1), "num_terms") * (in1 * out1 + in2 * out2)
    elif layer == "tensor_train":
        ins, outs = _validate.paired_factors(
            pop("input_factors"), pop("output_factors"), in_features, out_features
        )
        ranks = (1,) + _validate.rank_tuple(pop("ranks"), "ranks", tt_max_ranks(ins, outs)) + (1,)
        count = sum(ranks[k] * ins[k] * outs[k] * ranks[k + 1] for k in range(len(ins)))
    elif layer in ("tucker", "cp"):
        ins, outs = _validate.mode_factors(
            pop("input_factors"), pop("output_factors"), in_features, out_features
        )
        modes = ins + outs
        if layer == "tucker":
            ranks = _validate.rank_tuple(pop("ranks"), "ranks", modes)
            count = math.prod(ranks) + sum(n * r for n, r in zip(modes, ranks))
        else:
            count = _validate.positive_int(pop("rank"), "rank") * sum(modes)
    else:
        raise ValueError(
            f"layer must be one of 'low_rank', 'kronecker', 'tensor_train', 'tucker', 'cp'; got {layer!r}."
        )
    if kwargs:
        raise ValueError(f"param_count({layer!r}, ...) got unexpected arguments {sorted(kwargs)}.")
    return int(count)


def low_rank_rank_for_budget(in_features: int, out_features: int, fraction: float) -> int:
    """Largest r with r*(in+out) <= fraction*in*out, at least 1 and at most min(in, out)."""
    in_features, out_features = _shape((in_features, out_features))
    budget = budget_params(fraction, in_features * out_features)
    rank = budget // (in_features + out_features)
    return int(max(1, min(rank, in_features, out_features)))


def kronecker_terms_for_budget(
    input_factors: Sequence[int], output_factors: Sequence[int], fraction: float
) -> int:
    """Largest number of Kronecker terms K with K*(in1*out1 + in2*out2) <= fraction*in*out.

    At least 1, and at most min(in1*out1, in2*out2), the most terms the
    rearranged kernel's SVD can provide.
    """
    ins = _pair(input_factors, "input_factors")
    outs = _pair(output_factors, "output_factors")
    per_term = ins[0] * outs[0] + ins[1] * outs[1]
    budget = budget_params(fraction, math.prod(ins) * math.prod(outs))
    return int(max(1, min(budget // per_term, ins[0] * outs[0], ins[1] * outs[1])))


def tt_rank_for_budget(input_factors: Sequence[int], output_factors: Sequence[int], fraction: float) -> int:
    """Largest uniform inner TT rank (each bond capped at its maximum) within the budget, at least 1."""
    ins = _validate.int_tuple(input_factors, "input_factors")
    outs = _validate.int_tuple(output_factors, "output_factors")
    ins, outs = _validate.paired_factors(ins, outs, math.prod(ins), math.prod(outs))
    budget = budget_params(fraction, math.prod(ins) * math.prod(outs))
    shape = (math.prod(ins), math.prod(outs))
    return _largest_fitting(
        max(tt_max_ranks(ins, outs)),
        lambda r: param_count("tensor_train", shape, input_factors=ins, output_factors=outs, ranks=r),
        budget,
    )


def tucker_rank_for_budget(input_factors: Sequence[int], output_factors: Sequence[int], fraction: float) -> int:
    """Largest uniform Tucker rank (each mode capped at its size) within the budget, at least 1."""
    ins = _validate.int_tuple(input_factors, "input_factors")
    outs = _validate.int_tuple(output_factors, "output_factors")
    shape = (math.prod(ins), math.prod(outs))
    budget = budget_params(fraction, shape[0] * shape[1])
    return _largest_fitting(
        max(ins + outs),
        lambda r: param_count("tucker", shape, input_factors=ins, output_factors=outs, ranks=r),
        budget,
    )


def cp_rank_for_budget(input_factors: Sequence[int], output_factors: Sequence[int], fraction: float) -> int:
    """Largest CP rank R with R * sum(mode sizes) <= fraction*in*out, at least 1."""
    ins = _validate.int_tuple(input_factors, "input_factors")
    outs = _validate.int_tuple(output_factors, "output_factors")
    budget = budget_params(fraction, math.prod(ins) * math.prod(outs))
    return int(max(1, budget // sum(ins + outs)))


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


def _largest_fitting(max_rank: int, count, budget: int) -> int:
    # Counts grow with the rank, so scan up until the next one no longer fits.
    rank = 1
    while rank < max_rank and count(rank + 1) <= budget:
        rank += 1
    return rank


def _shape(shape) -> tuple[int, int]:
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or len(shape) != 2:
        raise ValueError(f"shape must be the kernel shape (in_features, out_features); got {shape!r}.")
    return (_validate.positive_int(shape[0], "shape[0] (in_features)"),
            _validate.positive_int(shape[1], "shape[1] (out_features)"))


def _pair(values, name: str) -> tuple[int, int]:
    result = _validate.int_tuple(values, name)
    if len(result) != 2:
        raise ValueError(f"{name} must have exactly 2 entries; got {len(result)}: {result}.")
    return result


def _kron_factors(input_factors, output_factors, in_features, out_features):
    if input_factors is None:
        input_factors = balanced_factors(in_features, 2)
    if output_factors is None:
        output_factors = balanced_factors(out_features, 2)
    ins = _validate.factors(input_factors, in_features, "input_factors", "input", length=2)
    outs = _validate.factors(output_factors, out_features, "output_factors", "output", length=2)
    return ins, outs
