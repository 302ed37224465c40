"""Per-layer data statistics for activation-aware decompositions, in one streaming pass.

`gram`: the input Gram matrix XᵀX / n of each layer (whitened SVD).
`row_importance`: accumulated squared loss gradients of each kernel, summed
over the output axis (Fisher-weighted SVD). `paired_grams`: for sequential
(error-correcting) whitening, the Gram matrix of a *compressed* model's layer
inputs X̃ and their cross product X̃ᵀX with the original model's inputs.
Batches are consumed one at a time; only the (in, in) and (in,) accumulators
are kept.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

_DEFAULT_BATCH = 32


@dataclasses.dataclass
class LayerStats:
    gram: Optional[np.ndarray] = None  # (in, in), XᵀX / rows
    row_importance: Optional[np.ndarray] = None  # (in,)
    rows: int = 0
    # Sequential whitening: gram is then X̃ᵀX̃ / n of the compressed model's
    # inputs X̃, and cross = X̃ᵀX / n with the original model's inputs X.
    cross: Optional[np.ndarray] = None


def as_dataset(data, model: Optional[keras.Model] = None, argument: str = "calibration_data") -> tf.data.Dataset:
    """Accepts a `tf.data.Dataset` (batched) or arrays / dicts / (x, y) tuples of arrays.

    With `model`, arrays are checked against its inputs first (a batch axis,
    then each input's rank), so a wrong shape is named here, not as a
    broadcasting error deep inside the model.
    """
    if isinstance(data, tf.data.Dataset):
        return data
    if model is not None:
        _check_against_inputs(model, _split(data)[0] if isinstance(data, tuple) else data, argument)
    try:
        return tf.data.Dataset.from_tensor_slices(data).batch(_DEFAULT_BATCH)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"{argument} must be a batched tf.data.Dataset or arrays (x, or (x, y)); "
            f"got {type(data).__name__}: {error}"
        ) from error


def _check_against_inputs(model, x, argument):
    """Raises unless each array of `x` has the rank of the model input it feeds."""
    inputs = model.inputs
    if isinstance(x, dict):
        by_name = {tensor.name.split(":")[0]: tensor for tensor in inputs}
        by_name.update({layer.name: layer.output for layer in getattr(model, "_input_layers", [])})
        pairs = [(f"{argument}[{key!r}]", value, by_name.get(key)) for key, value in x.items()]
    elif isinstance(x, (list, tuple)) and len(inputs) > 1:
        pairs = [(f"{argument}[{i}]", value, tensor) for i, (value, tensor) in enumerate(zip(x, inputs))]
    else:
        pairs = [(argument, x, inputs[0] if len(inputs) == 1 else None)]
    for name, value, tensor in pairs:
        if tensor is None or not (hasattr(value, "shape") or isinstance(value, (list, tuple))):
            continue
        shape = np.shape(value)
        expected = tensor.shape
        if len(shape) != expected.rank:
            raise ValueError(
                f"{name} has shape {tuple(shape)}, but the model input '{tensor.name.split(':')[0]}' takes batches "
                f"of shape {tuple(expected)}: give one row per example (samples first), e.g. x[None] for a "
                "single example."
            )


def _split(batch):
    if isinstance(batch, tuple):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def layer_input(layer):
    """The input tensor of `layer` in its model's graph (the layer must be called once)."""
    try:
        return layer.input
    except AttributeError as error:
        raise ValueError(
            f"Layer '{layer.name}' is called more than once (shared), so its inputs are "
            "ambiguous; calibrate a model where each projection is its own layer."
        ) from error


def _token_rows(activation, token_mask):
    """(rows, features) of `activation`, dropping padded positions when a mask is known."""
    features = activation.shape[-1]
    activation = tf.cast(activation, tf.float32)
    if token_mask is not None and activation.shape.rank == 3:
        return tf.boolean_mask(activation, tf.cast(token_mask, tf.bool))
    return tf.reshape(activation, (-1, features))


def input_grams(model: keras.Model, layers, data, mask_key: Optional[str] = "input_mask") -> dict[str, LayerStats]:
    """XᵀX / n of every layer's input over `data`, accumulated in float64.

    For token models fed dicts, positions where `x[mask_key] == 0` (padding)
    are left out of the statistics of (batch, seq, features) activations.
    """
    probe = keras.Model(model.inputs, [layer_input(layer) for layer in layers])
    stats = {layer.name: LayerStats() for layer in layers}
    for batch in as_dataset(data, model):
        x, _ = _split(batch)
        token_mask = x.get(mask_key) if isinstance(x, dict) and mask_key else None
        activations = probe(x, training=False)
        if len(layers) == 1:
            activations = [activations]
        for layer, activation in zip(layers, activations):
            flat = _token_rows(activation, token_mask)
            gram = tf.matmul(flat, flat, transpose_a=True).numpy().astype(np.float64)
            entry = stats[layer.name]
            entry.gram = gram if entry.gram is None else entry.gram + gram
            entry.rows += int(flat.shape[0])
    for entry in stats.values():
        if entry.rows == 0:
            raise ValueError("calibration_data is empty: no batches were produced.")
        entry.gram /= entry.rows
    return stats


def paired_grams(original: keras.Model, compressed: keras.Model, names, data,
                 mask_key: Optional[str] = "input_mask") -> dict[str, LayerStats]:
    """X̃ᵀX̃ / n and X̃ᵀX / n for each named layer, X̃ / X its inputs in `compressed` / `original`.

    Both models see the same batches; padded positions are left out as in
    `input_grams`. With these, the rank-r kernel minimising ||X̃ Ŵ − X W||_F
    (the original layer's output, from the compressed model's actual inputs)
    is the whitened truncation of Ŵ* = (X̃ᵀX̃)⁻¹ X̃ᵀX W.
    """
    names = list(names)
    probes = [keras.Model(m.inputs, [layer_input(m.get_layer(n)) for n in names]) for m in (original, compressed)]
    stats = {name: LayerStats() for name in names}
    for batch in as_dataset(data, original):
        x, _ = _split(batch)
        token_mask = x.get(mask_key) if isinstance(x, dict) and mask_key else None
        outputs = []
        for probe in probes:
            values = probe(x, training=False)
            outputs.append([values] if len(names) == 1 else values)
        for name, source, current in zip(names, *outputs):
            x_orig, x_comp = _token_rows(source, token_mask), _token_rows(current, token_mask)
            gram = tf.matmul(x_comp, x_comp, transpose_a=True).numpy().astype(np.float64)
            cross = tf.matmul(x_comp, x_orig, transpose_a=True).numpy().astype(np.float64)
            entry = stats[name]
            entry.gram = gram if entry.gram is None else entry.gram + gram
            entry.cross = cross if entry.cross is None else entry.cross + cross
            entry.rows += int(x_comp.shape[0])
    for entry in stats.values():
        if entry.rows == 0:
            raise ValueError("calibration_data is empty: no batches were produced.")
        entry.gram /= entry.rows
        entry.cross /= entry.rows
    return stats


def fisher_row_importance(model, layers, kernels, data, loss_fn=None, objective=None) -> dict[str, LayerStats]:
    """Σ over batches of (∂L/∂W)², summed over the output axis: (in,) per layer.

    Uses per-batch gradients (the usual FWSVD approximation of the empirical
    Fisher). `kernels` maps layer name -> the kernel variable. The loss is
    `loss_fn(y, model(x))` on (x, y) batches (default: the compiled loss), or
    `objective(model, x)` for unlabelled data (e.g. a contrastive objective).
    """
    if objective is None:
        loss_fn = loss_fn or getattr(model, "loss", None)
        if loss_fn is None:
            raise ValueError(
                "Fisher-weighted SVD needs a loss: compile the model, pass loss_fn=..., or "
                "pass objective=callable(model, x) for unlabelled data."
            )
        loss_fn = keras.losses.get(loss_fn)
    stats = {layer.name: LayerStats() for layer in layers}
    variables = [kernels[layer.name] for layer in layers]
    for batch in as_dataset(data, model):
        x, y = _split(batch)
        if objective is None and y is None:
            raise ValueError("Fisher-weighted SVD needs labelled calibration data: (x, y) batches.")
        with tf.GradientTape() as tape:
            loss = objective(model, x) if objective is not None else loss_fn(y, model(x, training=False))
        for layer, grad in zip(layers, tape.gradient(loss, variables)):
            if grad is None:
                raise ValueError(f"The loss does not depend on layer '{layer.name}'.")
            importance = tf.reduce_sum(tf.square(tf.cast(grad, tf.float32)), axis=1).numpy()
            entry = stats[layer.name]
            entry.row_importance = importance if entry.row_importance is None else entry.row_importance + importance
            entry.rows += 1
    return stats
