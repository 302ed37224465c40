"""Structured pruning of the flat BERT: whole attention heads and FFN neurons, physically removed.

Importance (Michel et al., 2019): a gate ξ multiplies each head's context
(and each FFN neuron's activation) on its way into the output projection;
the importance of a unit is Σ_batches |∂L/∂ξ| at ξ = 1, normalised per layer
by its L2 norm so that layers compare. The least important units are then
removed by rebuilding the functional model with `keras.models.clone_model`:
q/k/v and FFN-intermediate projections lose output columns, the attention
and FFN output projections lose input rows, `AttentionMath` gets fewer heads
(its head size is hidden // num_heads, and the hidden width shrinks with the
heads, so no new argument is needed). The result is a smaller, faster plain
model that computes exactly what the original computes with those units'
contributions zeroed.

Projections must be `Dense` or `LowRankDense` (columns of V / rows of U are
sliced); fold other reparameterized layers first with `tfreparam.fold`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

import tfreparam.sparsity.selection as selection
from tfreparam.layers import LowRankDense, ReparameterizedDense

_ATTENTION = ("query", "key", "value")


@dataclasses.dataclass(frozen=True)
class _Block:
    index: int
    num_heads: int
    head_size: int
    intermediate: int

    def name(self, part: str) -> str:
        """'query', 'key', 'value', 'output', 'math': attention layers; 'ffn/...': FFN layers."""
        if part.startswith("ffn/"):
            return f"layer_{self.index}/{part}"
        return f"layer_{self.index}/attention/{part}"


def _blocks(model) -> list[_Block]:
    selection.check_model(model, "Structured pruning")
    by_name = {layer.name: layer for layer in model.layers}
    indices = sorted(
        int(m.group(1)) for m in (re.fullmatch(r"layer_(\d+)/attention/math", n) for n in by_name) if m
    )
    if not indices:
        raise ValueError(
            f"'{model.name}' has no layers named 'layer_<i>/attention/math'; structured pruning "
            "needs the flat BERT of bert.build_encoder (ALBERT-style shared layers, named "
            "'shared/...', cannot lose heads per layer)."
        )
    blocks = []
    for i in indices:
        names = [f"layer_{i}/attention/{p}" for p in _ATTENTION + ("output",)]
        names += [f"layer_{i}/ffn/intermediate", f"layer_{i}/ffn/output"]
        for name in names:
            layer = by_name.get(name)
            if layer is None:
                raise ValueError(f"Block {i} of '{model.name}' has no layer '{name}'.")
            if not (type(layer) is keras.layers.Dense or type(layer) is LowRankDense):
                hint = (
                    "strip pruning wrappers first (tfreparam.sparsity.strip)"
                    if not isinstance(layer, ReparameterizedDense) and hasattr(layer, "layer")
                    else "fold them first with tfreparam.fold"
                )
                raise ValueError(
                    f"Structured pruning slices Dense and LowRankDense projections; '{name}' is a "
                    f"{type(layer).__name__}: {hint}."
                )
        math_layer = by_name[f"layer_{i}/attention/math"]
        query_units = by_name[f"layer_{i}/attention/query"].units
        if query_units % math_layer.num_heads:
            raise ValueError(f"Block {i}: {query_units} query units do not split into {math_layer.num_heads} heads.")
        blocks.append(
            _Block(i, math_layer.num_heads, query_units // math_layer.num_heads,
                   by_name[f"layer_{i}/ffn/intermediate"].units)  # noqa: E501
        )
    return blocks


# -- importance -------------------------------------------------------------------


class _InputGate(keras.layers.Wrapper):
    """Multiplies the input's last axis, in `groups` equal slices, by a gate of ones, then applies `layer`."""

    def __init__(self, layer, groups, **kwargs):
        super().__init__(layer, name=f"gate_{layer.name}", **kwargs)
        self.groups = int(groups)

    def build(self, input_shape):
        self.gate = self.add_weight("gate", shape=(self.groups,), initializer="ones", trainable=True)
        self.built = True

    def call(self, inputs):
        width = inputs.shape[-1]
        gate = tf.repeat(tf.cast(self.gate, inputs.dtype), width // self.groups)
        return self.layer(inputs * gate)


def head_and_neuron_importance(model, data: Iterable, loss_fn: Callable) -> tuple[dict, dict]:
    """Michel et al.'s importance of every head and FFN neuron, normalised per layer.

    Args:
      model: the flat BERT (or any model with its layer names).
      data: an iterable of batches, each `x` or `(x, y)` (what `model` takes
        as input, and the target given to `loss_fn`).
      loss_fn: `loss_fn(y, outputs)` for `(x, y)` batches, `loss_fn(outputs)`
        for bare `x`, returning a scalar.

    Returns:
      ({block: (num_heads,) array}, {block: (intermediate,) array}), each
      Σ_batches |∂L/∂ξ| divided by its L2 norm over the layer.
    """
    blocks = _blocks(model)
    gated = {}

    def clone(layer):  # shares every layer (and weight) with `model`
        for b in blocks:
            if layer.name == b.name("output"):
                gated[("head", b.index)] = _InputGate(layer, b.num_heads)
                return gated[("head", b.index)]
            if layer.name == b.name("ffn/output"):
                gated[("neuron", b.index)] = _InputGate(layer, b.intermediate)
                return gated[("neuron", b.index)]
        return layer

    probe = keras.models.clone_model(model, clone_function=clone)
    keys = sorted(gated)
    gates = [gated[k].gate for k in keys]
    totals = {k: np.zeros(g.shape, np.float64) for k, g in zip(keys, gates)}
    seen = False
    for batch in data:
        seen = True
        with tf.GradientTape() as tape:
            if isinstance(batch, (tuple, list)) and len(batch) == 2:
                loss = loss_fn(batch[1], probe(batch[0], training=False))
            else:
                loss = loss_fn(probe(batch, training=False))
        for key, grad in zip(keys, tape.gradient(loss, gates)):
            if grad is None:
                raise ValueError(f"The loss does not depend on {key[0]}s of block {key[1]}.")
            totals[key] += np.abs(grad.numpy())
    if not seen:
        raise ValueError("`data` yielded no batches; importance needs at least one.")
    heads, neurons = {}, {}
    for (kind, index), total in totals.items():
        norm = np.linalg.norm(total)
        (heads if kind == "head" else neurons)[index] = total / norm if norm > 0 else total
    return heads, neurons


# -- removal --------------------------------------------------------------------------


@dataclasses.dataclass
class StructuredPruning:
    """The pruned model and what was removed."""

    model: keras.Model
    removed_heads: dict  # block -> sorted head indices
    removed_neurons: dict  # block -> sorted neuron indices
    params_before: int
    params_after: int
    flops_before: int  # per example, at `seq_length`
    flops_after: int
    seq_length: int
    head_importance: Optional[dict] = None
    neuron_importance: Optional[dict] = None

    def __str__(self):
        heads = sum(len(v) for v in self.removed_heads.values())
        neurons = sum(len(v) for v in self.removed_neurons.values())
        return (
            f"removed {heads} heads and {neurons} FFN neurons; parameters "
            f"{self.params_before:,} -> {self.params_after:,} "
            f"({self.params_after / self.params_before:.3f}); FLOPs per example at seq "
            f"{self.seq_length}: {self.flops_before:,} -> {self.flops_after:,} "
            f"({self.flops_after / self.flops_before:.3f})"
        )


def remove_heads_and_neurons(
    model: keras.Model,
    heads: Mapping[int, Sequence[int]] = None,
    neurons: Mapping[int, Sequence[int]] = None,
    seq_length: int = 128,
) -> StructuredPruning:
    """A smaller copy of `model` without the given heads and FFN neurons ({block: indices}).

    Every block keeps at least one head and one neuron.
    """
    blocks = {b.index: b for b in _blocks(model)}
    heads = _check_units(heads or {}, blocks, "head", lambda b: b.num_heads)
    neurons = _check_units(neurons or {}, blocks, "neuron", lambda b: b.intermediate)
    by_name = {layer.name: layer for layer in model.layers}
    replacements = {}  # layer name -> (config, weights)
    for index, b in blocks.items():
        kept_heads = [h for h in range(b.num_heads) if h not in heads.get(index, ())]
        columns = np.concatenate([np.arange(h * b.head_size, (h + 1) * b.head_size) for h in kept_heads])
        kept_neurons = np.array([n for n in range(b.intermediate) if n not in neurons.get(index, ())])
        if len(kept_heads) < b.num_heads:
            for part in _ATTENTION:
                replacements[b.name(part)] = _slice_outputs(by_name[b.name(part)], columns)
            replacements[b.name("output")] = _slice_inputs(by_name[b.name("output")], columns)
            math_config = by_name[b.name("math")].get_config()
            math_config["num_heads"] = len(kept_heads)
            replacements[b.name("math")] = (math_config, [])
        if len(kept_neurons) < b.intermediate:
            for part, slicer in (("ffn/intermediate", _slice_outputs), ("ffn/output", _slice_inputs)):
                replacements[b.name(part)] = slicer(by_name[b.name(part)], kept_neurons)

    def clone(layer):
        config = replacements[layer.name][0] if layer.name in replacements else layer.get_config()
        return layer.__class__.from_config(config)

    pruned = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.name in replacements:
            weights = replacements[layer.name][1]
        else:
            weights = layer.get_weights()
        if weights:
            pruned.get_layer(layer.name).set_weights(weights)
    return StructuredPruning(
        model=pruned,
        removed_heads={k: sorted(v) for k, v in heads.items() if v},
        removed_neurons={k: sorted(v) for k, v in neurons.items() if v},
        params_before=model.count_params(),
        params_after=pruned.count_params(),
        flops_before=encoder_flops(model, seq_length),
        flops_after=encoder_flops(pruned, seq_length),
        seq_length=seq_length,
    )


def prune_heads_and_neurons(
    model: keras.Model,
    head_fraction: float,
    neuron_fraction: float,
    data: Iterable,
    loss_fn: Callable,
    seq_length: int = 128,
) -> StructuredPruning:
    """Removes the least important `head_fraction` of all heads and `neuron_fraction` of all FFN neurons.

    Units are ranked globally by per-layer-normalised importance
    (`head_and_neuron_importance`); every block keeps at least one head and
    one neuron, so the removed count can fall short of the fraction when a
    block would otherwise be emptied.
    """
    for value, name in ((head_fraction, "head_fraction"), (neuron_fraction, "neuron_fraction")):
        if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"`{name}` must be in [0, 1), got {value!r}.")
    head_scores, neuron_scores = head_and_neuron_importance(model, data, loss_fn)
    result = remove_heads_and_neurons(
        model,
        _least_important(head_scores, head_fraction),
        _least_important(neuron_scores, neuron_fraction),
        seq_length=seq_length,
    )
    result.head_importance, result.neuron_importance = head_scores, neuron_scores
    return result


def _least_important(scores: dict, fraction: float) -> dict:
    total = sum(len(s) for s in scores.values())
    budget = int(round(fraction * total))
    ranked = sorted((float(s), block, unit) for block, arr in scores.items() for unit, s in enumerate(arr))
    removed = {block: [] for block in scores}
    for _, block, unit in ranked:
        if budget == 0:
            break
        if len(removed[block]) < len(scores[block]) - 1:  # keep one unit per block
            removed[block].append(unit)
            budget -= 1
    return removed


def _check_units(units, blocks, kind, count):
    checked = {}
    for index, indices in units.items():
        if index not in blocks:
            raise ValueError(f"No block {index}; the model has blocks {sorted(blocks)}.")
        indices = sorted({int(i) for i in indices})
        limit = count(blocks[index])
        if indices and (indices[0] < 0 or indices[-1] >= limit):
            raise ValueError(f"Block {index} has {kind}s 0..{limit - 1}; got {indices}.")
        if len(indices) >= limit:
            raise ValueError(
                f"Removing all {limit} {kind}s of block {index} would disconnect it; keep at least one."
            )
        checked[index] = indices
    return checked


def _slice_outputs(layer, columns):
    """(config, weights) of `layer` keeping only output units `columns`."""
    columns = np.asarray(columns)
    config = layer.get_config()
    config["units"] = int(len(columns))
    bias = [layer.bias.numpy()[columns]] if layer.use_bias else []
    if isinstance(layer, LowRankDense):
        u, v = layer.u.numpy(), layer.v.numpy()[:, columns]
        if layer.rank > len(columns):  # rank <= units: refactor U·V exactly at rank len(columns)
            p, s, qt = np.linalg.svd(v, full_matrices=False)
            u, v = u @ (p * s), qt
        config["rank"] = int(v.shape[0])
        return config, [u, v] + bias
    return config, [layer.kernel.numpy()[:, columns]] + bias


def _slice_inputs(layer, rows):
    """(config, weights) of `layer` keeping only input features `rows`."""
    rows = np.asarray(rows)
    config = layer.get_config()
    bias = [layer.bias.numpy()] if layer.use_bias else []
    if isinstance(layer, LowRankDense):
        u, v = layer.u.numpy()[rows], layer.v.numpy()
        if layer.rank > len(rows):  # rank <= in_features
            p, s, qt = np.linalg.svd(u, full_matrices=False)
            u, v = p * s, qt @ v
        config["rank"] = int(u.shape[1])
        return config, [u, v] + bias
    return config, [layer.kernel.numpy()[rows]] + bias


def encoder_flops(model: keras.Model, seq_length: int) -> int:
    """FLOPs (2 per multiply-add) of one example's projections and attention products.

    Each top-level Dense / tfreparam layer counts its matmuls and bias add for
    every row it sees (`seq_length` tokens, or one row for the pooler); each
    `AttentionMath` counts QKᵀ and PV: 2 · 2 · seq² · hidden_of_its_heads.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Dense, ReparameterizedDense)):
            shape = tuple(layer.input_shape)
            rows = math.prod(seq_length if d is None else d for d in shape[1:-1])
            if isinstance(layer, ReparameterizedDense):
                total += layer.flops(batch_shape=(rows,))
            else:
                total += rows * (2 * shape[-1] * layer.units + (layer.units if layer.use_bias else 0))
        elif type(layer).__name__ == "AttentionMath":
            hidden = layer.input_shape[0][-1]
            total += 4 * seq_length * seq_length * hidden
    return int(total)
