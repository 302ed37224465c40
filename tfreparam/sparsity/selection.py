"""Which layers of a model get pruned, and which of their weights.

A pruning policy picks top-level layers of a Functional or Sequential model:
`None` (every projection: `Dense` and tfreparam layers; never embeddings,
LayerNorm or biases), a regex (full match on the layer name), a sequence of
regexes, or a callable(layer) -> bool.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence, Union

import tf_keras as keras

from tfreparam.layers import LoRADense, LowRankDense, ReparameterizedDense

Policy = Union[None, str, Sequence[str], Callable[[keras.layers.Layer], bool]]


def check_model(model, what: str = "Pruning") -> None:
    if not isinstance(model, keras.Model):
        raise TypeError(f"{what} needs a tf_keras Model, got {type(model).__name__}.")
    if not (isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False)):
        raise ValueError(
            f"{what} needs a Functional or Sequential tf_keras model; '{model.name}' is a "
            "subclassed model, whose layers TFMOT cannot wrap. Build it functionally "
            "(e.g. bert.build_encoder) instead."
        )


def is_projection(layer) -> bool:
    """A `Dense` or a tfreparam layer: what the default policy prunes."""
    return isinstance(layer, (keras.layers.Dense, ReparameterizedDense))


def prunable_weights(layer) -> list[tuple[str, object]]:
    """(attribute name, variable) of each weight that pruning may zero (never a bias)."""
    if isinstance(layer, ReparameterizedDense):
        return list(layer.get_clusterable_weights())
    if isinstance(layer, keras.layers.Dense):
        return [("kernel", layer.kernel)]
    raise ValueError(
        f"Layer '{layer.name}' ({type(layer).__name__}) is not a projection, so it has no "
        "prunable weights; only Dense and tfreparam layers can be pruned. Exclude it "
        "from the policy."
    )


def m_by_n_weights(layer) -> list[str]:
    """Names of `layer`'s weights that are (contracted, output) matrices, where m:n applies.

    TFMOT's m:n sparsity needs rank-2 weights and groups n consecutive entries
    along axis 0, the contracted axis of `x @ W`: true for a Dense kernel,
    LowRank u (in, rank) and v (rank, units), and LoRA's A and B. The other
    layers' factors are rank 3+ (Kronecker, TT, Tucker core) or are mode
    matrices (CP, Tucker factors) whose axis 0 is not contracted by a matmul,
    so a 2:4 pattern on them would not map to sparse hardware.
    """
    if isinstance(layer, (LowRankDense, LoRADense)):
        return list(layer.factor_names)
    if type(layer) is keras.layers.Dense:
        return ["kernel"]
    return []


def select_layers(model, policy: Policy = None) -> list[keras.layers.Layer]:
    """The top-level layers of `model` that `policy` selects, in model order."""
    check_model(model)
    if policy is None:
        chosen = [layer for layer in model.layers if is_projection(layer)]
    elif isinstance(policy, str) or (
        isinstance(policy, Sequence) and all(isinstance(p, str) for p in policy)
    ):
        patterns = [policy] if isinstance(policy, str) else list(policy)
        chosen = [l for l in model.layers if any(re.fullmatch(p, l.name) for p in patterns)]
        if not chosen:
            names = ", ".join(l.name for l in model.layers if is_projection(l))
            raise ValueError(
                f"The pruning policy {patterns} matches no layer of '{model.name}' (full-match "
                f"regexes on layer names). Its projections are: {names}."
            )
    elif callable(policy):
        chosen = [layer for layer in model.layers if policy(layer)]
    else:
        raise TypeError(
            "A pruning policy is None, a regex string, a list of regexes or a "
            f"callable(layer) -> bool; got {type(policy).__name__}."
        )
    for layer in chosen:
        if isinstance(layer, keras.Model):
            raise ValueError(
                f"The policy selects the nested model '{layer.name}'; TFMOT only wraps "
                "top-level layers. Flatten the model or select its layers in a flat model."
            )
        prunable_weights(layer)  # raises a clear error for non-projections
    return chosen
