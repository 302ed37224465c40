"""Structured pruning of the flat BERT: whole attention heads and FFN neurons, physically removed.

Importance (Michel et al., 2019): a gate ξ multiplies each head's context
(and each FFN neuron's activation) on its way into the output projection;
the importance of a unit is Σ_batches |∂L/∂ξ| at ξ = 1, normalised per layer
by its L2 norm so that layers compare. The least important units are then
removed by rebuilding the functional model with `keras.models.clone_model`:
q/k/v and FFN-intermediate projections lose output columns, the attention
and FFN output projections lose input rows, `AttentionMath` gets fewer heads
(its head widths are the query and value widths // num_heads, which shrink
with the heads, so no new argument is needed). The result is a smaller, faster plain
model that computes exactly what the original computes with those units'
contributions zeroed.

For unlabelled text, `output_sensitivity` scores every head and neuron by
how much the model's output moves with it (a Gaussian-output Fisher, no
labels), and `search_structure` picks the units to keep under a linear cost
budget (e.g. a latency model fitted on the target machine), retaining the
most total score. `tfreparam.sparsity.reconstruct` then refits the output
projections by least squares.

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
    head_size: int  # query/key width of a head
    intermediate: int
    value_size: int  # value width of a head (narrower than head_size after `narrowing.narrow_heads`)

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
        value_units = by_name[f"layer_{i}/attention/value"].units
        for part, units in (("query", query_units), ("value", value_units)):
            if units % math_layer.num_heads:
                raise ValueError(f"Block {i}: {units} {part} units do not split into {math_layer.num_heads} heads.")
        blocks.append(
            _Block(i, math_layer.num_heads, query_units // math_layer.num_heads,
                   by_name[f"layer_{i}/ffn/intermediate"].units, value_units // math_layer.num_heads)
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


def _gated_probe(model, blocks):
    """A clone of `model` sharing its layers, with a gate of ones in front of every output projection.

    Returns (probe, keys, gates): keys are ("head" | "neuron", block) in sorted order, gates their variables.
    """
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
    return probe, keys, [gated[k].gate for k in keys]


def _split_scores(keys, totals) -> tuple[dict, dict]:
    heads, neurons = {}, {}
    for (kind, index), total in zip(keys, totals):
        (heads if kind == "head" else neurons)[index] = total
    return heads, neurons


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
    probe, keys, gates = _gated_probe(model, _blocks(model))
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
    normalised = []
    for key in keys:
        norm = np.linalg.norm(totals[key])
        normalised.append(totals[key] / norm if norm > 0 else totals[key])
    return _split_scores(keys, normalised)


OUTPUT_TARGETS = ("sequence", "embedding", "hidden")


def output_sensitivity(model, data: Iterable, target: str = "sequence", draws: int = 2, seed: int = 0,
                       mask_key: str = "input_mask",
                       progress: Optional[Callable[[int, int], None]] = None) -> tuple[dict, dict]:
    """Fisher-style importance of every head and FFN neuron for unlabelled text: how much the output moves.

    For a gate ξ_u on unit u (ξ = 1), the score is Σ_examples ||∂y/∂ξ_u||²:
    the empirical Fisher of ξ_u under a unit-variance Gaussian model of the
    output y, which needs no labels. It is estimated without Jacobians: for
    r ~ N(0, I) drawn afresh for every output coordinate, E[(∂(r·y)/∂ξ_u)²]
    = Σ_j (∂y_j/∂ξ_u)² (cross terms vanish), averaged over `draws` draws per
    batch. Scores of heads and neurons are in the same units (squared
    output change), so they can be ranked together (`search_structure`).

    Args:
      model: the flat BERT (Dense or LowRankDense projections).
      data: an iterable of input dicts (re-iterated once per draw).
      target: the output y: "sequence" (`sequence_output` at real tokens),
        "embedding" (its mean over real tokens) or "hidden" (every block's
        output, `hidden_states[1:]`, at real tokens; the model must output them).
      draws: random projections per batch (more: less variance).
      seed: seed of the projections.
      mask_key: input holding the 0/1 token mask.
      progress: called with (batches done, batches in all) after each batch.

    Returns:
      ({block: (num_heads,) array}, {block: (intermediate,) array}), not normalised.
    """
    if target not in OUTPUT_TARGETS:
        raise ValueError(f"target must be one of {OUTPUT_TARGETS}, got {target!r}.")
    if not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}.")
    outputs = model.output if isinstance(model.output, dict) else {}
    wanted = "hidden_states" if target == "hidden" else "sequence_output"
    if wanted not in outputs:
        raise ValueError(f"target={target!r} needs the model to output '{wanted}'"
                         + ("; build the encoder with output_hidden_states=True." if target == "hidden" else "."))
    probe, keys, gates = _gated_probe(model, _blocks(model))
    generator = tf.random.Generator.from_seed(seed)

    def projected(tensor, mask):
        noise = generator.normal(tf.shape(tensor), dtype=tensor.dtype)
        return tf.reduce_sum(noise * tensor * mask[..., None])

    @tf.function(reduce_retracing=True, autograph=False)  # no tensor-dependent Python control flow
    def step(x):
        mask = tf.cast(x[mask_key], tf.float32)
        with tf.GradientTape() as tape:
            out = probe(x, training=False)
            if target == "embedding":
                weights = mask[..., None]
                pooled = tf.reduce_sum(tf.cast(out["sequence_output"], tf.float32) * weights, 1)
                pooled /= tf.maximum(tf.reduce_sum(weights, 1), 1.0)
                loss = tf.reduce_sum(generator.normal(tf.shape(pooled)) * pooled)
            elif target == "hidden":
                loss = tf.add_n([projected(tf.cast(h, tf.float32), mask) for h in out["hidden_states"][1:]])
            else:
                loss = projected(tf.cast(out["sequence_output"], tf.float32), mask)
        return [tf.square(g) for g in tape.gradient(loss, gates)]

    batches = [batch[0] if isinstance(batch, (tuple, list)) else batch for batch in data]
    if not batches:
        raise ValueError("`data` yielded no batches; importance needs at least one.")
    totals = [np.zeros(g.shape, np.float64) for g in gates]
    done = 0
    for _ in range(draws):
        for x in batches:
            for total, square in zip(totals, step({k: tf.convert_to_tensor(v) for k, v in x.items()})):
                total += square.numpy()
            done += 1
            if progress is not None:
                progress(done, draws * len(batches))
    return _split_scores(keys, [t / draws for t in totals])


@dataclasses.dataclass
class UnitSelection:
    """Which heads and FFN neurons to keep ({block: sorted indices}) and to remove, and what it costs."""

    kept_heads: dict
    kept_neurons: dict
    removed_heads: dict
    removed_neurons: dict
    cost: float  # head_cost · kept heads + neuron_cost · kept neurons
    retained_score: float  # share of the total score kept

    @property
    def heads_per_block(self) -> dict:
        return {b: len(v) for b, v in self.kept_heads.items()}

    @property
    def neurons_per_block(self) -> dict:
        return {b: len(v) for b, v in self.kept_neurons.items()}


def search_structure(head_scores: Mapping[int, Sequence[float]], neuron_scores: Mapping[int, Sequence[float]],
                     head_cost: float, neuron_cost: float, budget: float, min_heads: int = 1) -> UnitSelection:
    """The heads and neurons to keep that retain the most total score at cost <= `budget`.

    Scores are additive and non-negative (e.g. `output_sensitivity`); the cost
    is linear, head_cost per kept head plus neuron_cost per kept neuron (e.g.
    fitted latency per unit). Every block keeps at least `min_heads` heads and
    one neuron. For every total number of kept heads H, the best set is each
    block's best `min_heads` heads plus the best of the rest, and the neurons
    that fill the remaining budget the same way (Kwon et al. 2022's search
    for a linear cost); the best H wins. Exact for these assumptions.
    """
    if head_cost <= 0 or neuron_cost <= 0:
        raise ValueError(f"head_cost and neuron_cost must be > 0; got {head_cost} and {neuron_cost}.")
    blocks = sorted(head_scores)
    if blocks != sorted(neuron_scores) or not blocks:
        raise ValueError(f"head_scores and neuron_scores must cover the same blocks; got {sorted(head_scores)} "
                         f"and {sorted(neuron_scores)}.")
    fewest = min(len(head_scores[b]) for b in blocks)
    if not 1 <= min_heads <= fewest:
        raise ValueError(f"min_heads must be between 1 and the heads of a block ({fewest}); got {min_heads}.")

    def order(scores, floor=1):
        """(units in the order they are added: each block's best `floor` first, then the rest by score), scores."""
        arrays = {b: np.asarray(scores[b], np.float64) for b in blocks}
        if any(np.any(a < 0) or not np.all(np.isfinite(a)) for a in arrays.values()):
            raise ValueError("Scores must be finite and non-negative.")
        first = [(b, int(u)) for b in blocks for u in np.argsort(-arrays[b], kind="stable")[:floor]]
        chosen = set(first)
        rest = sorted(((float(arrays[b][u]), b, u) for b in blocks for u in range(len(arrays[b]))
                       if (b, u) not in chosen), key=lambda t: (-t[0], t[1], t[2]))
        units = first + [(b, u) for _, b, u in rest]
        values = np.array([arrays[b][u] for b, u in units])
        return units, np.concatenate([[0.0], np.cumsum(values)]), float(sum(a.sum() for a in arrays.values()))

    head_units, head_cum, head_total = order(head_scores, min_heads)
    neuron_units, neuron_cum, neuron_total = order(neuron_scores)
    b = len(blocks)
    best = None
    for h in range(b * min_heads, len(head_units) + 1):
        left = budget - head_cost * h
        n = min(int(np.floor(left / neuron_cost + 1e-9)), len(neuron_units))
        if n < b:
            break  # more heads only leave less for neurons
        value = head_cum[h] + neuron_cum[n]
        if best is None or value > best[0]:
            best = (value, h, n)
    if best is None:
        minimum = b * (min_heads * head_cost + neuron_cost)
        heads = "one head" if min_heads == 1 else f"{min_heads} heads"
        raise ValueError(f"The budget {budget:.4g} cannot keep {heads} and one neuron per block (that costs "
                         f"{minimum:.4g}); ask for less compression" + (" or a smaller min_heads." if min_heads > 1
                                                                        else "."))
    value, h, n = best

    def grouped(units, total_per_block):
        kept = {blk: [] for blk in blocks}
        for blk, unit in units:
            kept[blk].append(unit)
        kept = {blk: sorted(v) for blk, v in kept.items()}
        removed = {blk: sorted(set(range(total_per_block[blk])) - set(kept[blk])) for blk in blocks}
        return kept, removed

    kept_heads, removed_heads = grouped(head_units[:h], {blk: len(head_scores[blk]) for blk in blocks})
    kept_neurons, removed_neurons = grouped(neuron_units[:n], {blk: len(neuron_scores[blk]) for blk in blocks})
    total = head_total + neuron_total
    return UnitSelection(kept_heads, kept_neurons, removed_heads, removed_neurons,
                         cost=head_cost * h + neuron_cost * n, retained_score=float(value / total) if total else 1.0)


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
        value_columns = np.concatenate([np.arange(h * b.value_size, (h + 1) * b.value_size) for h in kept_heads])
        kept_neurons = np.array([n for n in range(b.intermediate) if n not in neurons.get(index, ())])
        if len(kept_heads) < b.num_heads:
            for part in _ATTENTION:
                replacements[b.name(part)] = _slice_outputs(by_name[b.name(part)],
                                                            value_columns if part == "value" else columns)
            replacements[b.name("output")] = _slice_inputs(by_name[b.name("output")], value_columns)
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
    `AttentionMath` counts QKᵀ and PV: 2 · seq² · (query width + value width of its heads).
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
            query_width, value_width = layer.input_shape[0][-1], layer.input_shape[2][-1]
            total += 2 * seq_length * seq_length * (query_width + value_width)
    return int(total)
