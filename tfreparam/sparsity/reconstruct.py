"""Least-squares refit of each block's output projections after structured pruning (Kwon et al. 2022).

After heads or FFN neurons are removed, each residual branch of the flat BERT
computes `x̃ + h̃ W + b` (`layer_i/{attention,ffn}/residual`, before its
LayerNorm), where x̃ is the residual stream and h̃ the (narrower) input of the
branch's output projection in the pruned model. `refit_output_projections`
replaces W, b of every output projection, block by block and attention before
FFN, by

    argmin_{W, b} Σ_tokens ||x̃ + h̃ W + b − t||² + ridge · mean(diag h̃ᵀh̃) · ||W||²

where t is the same residual sum in the original model on the same tokens
(padding excluded). Each branch is fitted on the inputs the already-refitted
branches before it produce, so it also compensates their remaining error.
Only Dense output projections are refitted (fold reparameterized ones first).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

PARTS = ("attention", "ffn")


@dataclasses.dataclass
class RefitResult:
    """Per refitted projection: the relative error ||x̃ + h̃W + b − t||² / ||t||² before and after."""

    errors_before: dict
    errors_after: dict
    tokens: int


def _blocks(model) -> list[int]:
    found = sorted(int(m.group(1)) for m in (re.fullmatch(r"layer_(\d+)/attention/residual", layer.name)
                                              for layer in model.layers) if m)
    if not found:
        raise ValueError(f"'{model.name}' has no layers named 'layer_<i>/attention/residual'; the least-squares "
                         "refit needs the flat BERT of bert.build_encoder.")
    return found


def _branch_tensors(model, block: int, part: str):
    """(residual-stream input x, output-projection input h, the projection layer) of one branch."""
    residual = model.get_layer(f"layer_{block}/{part}/residual")
    projection = model.get_layer(f"layer_{block}/{part}/output")
    if type(projection) is not keras.layers.Dense:
        raise ValueError(f"The refit sets Dense kernels; '{projection.name}' is a {type(projection).__name__}: "
                         "fold it first with tfreparam.fold.")
    stream, branch = residual.input
    # The branch must be the projection's output, through inference-time no-ops (dropout) only.
    history = branch._keras_history.layer
    while isinstance(history, keras.layers.Dropout):
        history = history.input._keras_history.layer
    if history is not projection:
        raise ValueError(f"'{residual.name}' does not add '{projection.name}' (through dropout only) to the residual "
                         f"stream (it adds the output of '{history.name}'): the refit cannot model that branch.")
    return stream, projection.input, projection


def _tokens(tensor, mask):
    values = tf.cast(tensor, tf.float32)
    if mask is None:
        return tf.reshape(values, (-1, values.shape[-1]))
    return tf.boolean_mask(values, tf.cast(mask, tf.bool))


def refit_output_projections(student: keras.Model, teacher: keras.Model, data: Iterable, ridge: float = 1e-3,
                             parts: Sequence[str] = PARTS, mask_key: Optional[str] = "input_mask",
                             progress: Optional[Callable[[int, int], None]] = None) -> RefitResult:
    """Refits (in place) W, b of every output projection of `student` to match `teacher`'s residual sums.

    Args:
      student: the pruned flat BERT (Dense output projections), e.g. from
        `remove_heads_and_neurons`; modified in place.
      teacher: the original it was pruned from (same block names and width).
      data: input dicts (iterated once for the teacher, then once per branch).
      ridge: ridge weight relative to the mean diagonal of h̃ᵀh̃ (bias unpenalised).
      parts: which branches to refit: "attention", "ffn" or both.
      mask_key: input holding the 0/1 token mask (None: every position counts).
      progress: called with (branches done, branches in all) after each branch.

    Returns a `RefitResult` with each projection's relative error before and after.
    """
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise ValueError(f"parts must be a non-empty subset of {PARTS}; got {list(parts)}.")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}.")
    batches = [batch[0] if isinstance(batch, (tuple, list)) else batch for batch in data]
    if not batches:
        raise ValueError("`data` yielded no batches; the refit needs calibration inputs.")
    blocks = _blocks(student)
    missing = [b for b in blocks if f"layer_{b}/attention/residual" not in {l.name for l in teacher.layers}]
    if missing:
        raise ValueError(f"The teacher has no blocks {missing}; refit against the model the student came from.")
    branches = [(b, p) for b in blocks for p in PARTS if p in parts]

    def mask_of(x):
        return x.get(mask_key) if mask_key and isinstance(x, dict) else None

    sums = [teacher.get_layer(f"layer_{b}/{p}/residual").output for b, p in branches]
    targets_model = keras.Model(teacher.inputs, sums)
    targets = []
    for x in batches:
        values = targets_model(x, training=False)
        values = values if isinstance(values, (list, tuple)) else [values]
        targets.append([_tokens(v, mask_of(x)).numpy() for v in values])

    before, after, tokens = {}, {}, 0
    for index, (block, part) in enumerate(branches):
        stream, branch_input, projection = _branch_tensors(student, block, part)
        probe = keras.Model(student.inputs, [stream, branch_input])
        use_bias = projection.use_bias
        width = branch_input.shape[-1] + (1 if use_bias else 0)
        gram = np.zeros((width, width))
        cross = np.zeros((width, projection.units))
        target_energy = residual_energy = 0.0
        tokens = 0
        for x, target in zip(batches, targets):
            stream_value, branch_value = probe(x, training=False)
            mask = mask_of(x)
            h = _tokens(branch_value, mask).numpy().astype(np.float64)
            if use_bias:
                h = np.concatenate([h, np.ones((h.shape[0], 1))], axis=1)
            wanted = target[index].astype(np.float64) - _tokens(stream_value, mask).numpy().astype(np.float64)
            gram += h.T @ h
            cross += h.T @ wanted
            residual_energy += float(np.sum(wanted**2))
            target_energy += float(np.sum(target[index].astype(np.float64) ** 2))
            tokens += h.shape[0]

        def error(weights):  # ||h W − wanted||² from the accumulators
            return float(np.sum(weights * (gram @ weights)) - 2 * np.sum(weights * cross) + residual_energy)

        current = projection.kernel.numpy().astype(np.float64)
        if use_bias:
            current = np.concatenate([current, projection.bias.numpy()[None].astype(np.float64)])
        features = width - (1 if use_bias else 0)
        penalty = np.zeros(width)
        penalty[:features] = ridge * float(np.mean(np.diag(gram)[:features]))
        solved = np.linalg.solve(gram + np.diag(penalty), cross)
        before[projection.name] = error(current) / max(target_energy, 1e-30)
        after[projection.name] = error(solved) / max(target_energy, 1e-30)
        weights = [solved[:features].astype(np.float32)] + ([solved[features].astype(np.float32)] if use_bias else [])
        projection.set_weights(weights)
        if progress is not None:
            progress(index + 1, len(branches))
    return RefitResult(before, after, tokens)
