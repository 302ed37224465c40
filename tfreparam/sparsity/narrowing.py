"""Narrower attention heads for the flat BERT, from the trained weights by a whitened per-head SVD.

A head h of width d_h acts on its input x (with a 1 appended for the biases,
x̃ = [x, 1]) through two products of rank d_h:

* its attention logits x̃_i · M_h · x̃_jᵀ / √d_h, with M_h = [W_q; b_q]_h [W_k; b_k]_hᵀ;
* its contribution to the output Σ_j p_ij x̃_j · N_h, with N_h = [W_v; b_v]_h W_o,h.

`narrow_heads` replaces each by the rank-r product that is nearest on the
block's own inputs: with C the second moment E[x̃ x̃ᵀ] over real tokens, the
truncated SVD of C^½ M_h C^½ (and of C^½ N_h) is the best rank r in the norm
that weighs errors by how the inputs spread (Eckart–Young in whitened
coordinates). The head keeps all its attention pattern's inputs but computes
them in r dimensions: q/k get r_qk columns per head, v and the output
projection's rows r_vo. Removing whole heads (`remove_heads_and_neurons`)
saves as much time per unit but loses each removed head's pattern; on
MiniLM-L6, narrowing every head to 21 of 32 kept held-out cosine 0.916 and
the probe within 0.6 points, where removing 4 heads per block (the same
projection time) gave 0.879 and 2.2 points (docs/compression.md).

The result is a plain model (Dense projections, the same `AttentionMath`),
so export, QAT and `remove_heads_and_neurons` apply to it unchanged.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional, Union

import numpy as np
import tf_keras as keras

from tfreparam.sparsity import structured

Widths = Union[int, Mapping[int, int]]
_EIGEN_FLOOR = 1e-6  # relative: directions the inputs never take are not inverted to huge values


def attention_input_moments(model: keras.Model, batches: Iterable[dict], mask_key: str = "input_mask") -> dict:
    """{block: E[x̃ x̃ᵀ]} over real tokens, x̃ = [x, 1] and x the block's attention input ((hidden+1)², float64)."""
    blocks = structured._blocks(model)
    inputs = [model.get_layer(b.name("query")).input for b in blocks]
    probe = keras.Model(model.inputs, inputs)
    width = int(inputs[0].shape[-1])
    sums = {b.index: np.zeros((width + 1, width + 1)) for b in blocks}
    tokens = 0
    for batch in batches:
        if mask_key not in batch:
            raise ValueError(f"Calibration batches need '{mask_key}' (1 for real tokens); got keys {sorted(batch)}.")
        mask = np.asarray(batch[mask_key]).astype(bool)
        outputs = probe(batch, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for b, x in zip(blocks, outputs):
            rows = np.asarray(x, np.float64)[mask]
            rows = np.concatenate([rows, np.ones((len(rows), 1))], axis=1)
            sums[b.index] += rows.T @ rows
        tokens += int(mask.sum())
    if not tokens:
        raise ValueError("The calibration batches hold no real tokens; narrowing needs some text.")
    moments = {k: v / tokens for k, v in sums.items()}
    if not all(np.all(np.isfinite(m)) for m in moments.values()):
        raise ValueError("The attention inputs hold NaN or Inf on the calibration text; check the model's weights.")
    return moments


def head_widths(model: keras.Model) -> dict:
    """{block: (query/key width, value/output width)} of every head of the block."""
    return {b.index: (b.head_size, b.value_size) for b in structured._blocks(model)}


def narrow_heads(model: keras.Model, qk_width: Widths, vo_width: Widths,
                 moments: Optional[Mapping[int, np.ndarray]] = None) -> keras.Model:
    """A copy of `model` whose heads compute attention in `qk_width` and values in `vo_width` dimensions.

    Widths are one int for every block or {block: int} (blocks left out keep
    theirs); each must lie between 1 and the head's present width. `moments`
    ({block: E[x̃ x̃ᵀ]}, from `attention_input_moments`) weighs the
    approximation by the inputs; without them it is the plain SVD (x̃ taken
    as white), good enough for timing a structure, not for accuracy.
    """
    blocks = structured._blocks(model)
    qk = _widths(qk_width, blocks, "qk_width", lambda b: b.head_size)
    vo = _widths(vo_width, blocks, "vo_width", lambda b: b.value_size)
    replacements = {}
    for b in blocks:
        if qk[b.index] == b.head_size and vo[b.index] == b.value_size:
            continue
        layers = {part: model.get_layer(b.name(part)) for part in ("query", "key", "value", "output")}
        for part, layer in layers.items():
            if type(layer) is not keras.layers.Dense or not layer.use_bias:
                raise ValueError(f"Narrowing heads needs plain Dense projections with biases; '{layer.name}' is a "
                                 f"{type(layer).__name__}{'' if layer.use_bias else ' without a bias'}: fold "
                                 "factorized layers first with tfreparam.fold (unit-scaled models are not supported).")
        whiten, unwhiten = _whitening(moments, b, int(layers["query"].kernel.shape[0]))
        weights = {part: [np.asarray(w, np.float64) for w in layer.get_weights()] for part, layer in layers.items()}
        query, key, value, output = _narrow_block(weights, b, qk[b.index], vo[b.index], whiten, unwhiten)
        for part, new in (("query", query), ("key", key), ("value", value), ("output", output)):
            replacements[b.name(part)] = new

    def clone(layer):
        config = layer.get_config()
        if layer.name in replacements and not layer.name.endswith("/output"):
            config["units"] = int(replacements[layer.name][0].shape[1])
        return layer.__class__.from_config(config)

    narrowed = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        weights = replacements.get(layer.name) or layer.get_weights()
        if weights:
            narrowed.get_layer(layer.name).set_weights([np.asarray(w, np.float32) for w in weights])
    return narrowed


def _widths(widths: Widths, blocks, name: str, present) -> dict:
    by_index = {b.index: b for b in blocks}
    if isinstance(widths, Mapping):
        unknown = sorted(set(widths) - set(by_index))
        if unknown:
            raise ValueError(f"{name}: no blocks {unknown}; the model has blocks {sorted(by_index)}.")
        chosen = {i: widths.get(i, present(b)) for i, b in by_index.items()}
    else:
        chosen = {i: widths for i in by_index}
    for i, width in chosen.items():
        limit = present(by_index[i])
        if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or not 1 <= width <= limit:
            raise ValueError(f"{name} of block {i} must be an integer from 1 to the head's present width {limit}; "
                             f"got {width!r}.")
    return {i: int(w) for i, w in chosen.items()}


def _whitening(moments, block, width: int):
    """(C^½, C^-½) of the block's input moments, or identities without them."""
    if moments is None:
        eye = np.eye(width + 1)
        return eye, eye
    if block.index not in moments:
        raise ValueError(f"No input moments for block {block.index}; pass attention_input_moments(model, ...).")
    moment = np.asarray(moments[block.index], np.float64)
    if moment.shape != (width + 1, width + 1) or not np.all(np.isfinite(moment)):
        raise ValueError(f"The input moments of block {block.index} must be a finite ({width + 1}, {width + 1}) "
                         f"matrix (hidden width plus the bias); got shape {moment.shape}.")
    values, vectors = np.linalg.eigh((moment + moment.T) / 2)
    values = np.maximum(values, _EIGEN_FLOOR * max(values.max(), 1e-30))
    return (vectors * np.sqrt(values)) @ vectors.T, (vectors / np.sqrt(values)) @ vectors.T


def _narrow_block(weights, block, r_qk: int, r_vo: int, whiten, unwhiten):
    """New [kernel, bias] of query, key, value and output for one block (float64)."""
    (wq, bq), (wk, bk), (wv, bv), (wo, bo) = (weights[p] for p in ("query", "key", "value", "output"))
    qs, ks, vs, os_ = [], [], [], []
    for h in range(block.num_heads):
        qk_cols = slice(h * block.head_size, (h + 1) * block.head_size)
        vo_cols = slice(h * block.value_size, (h + 1) * block.value_size)
        # Logits: x̃ Q Kᵀ x̃ᵀ / √d. The new head divides by √r, so Q is rescaled by √(r/d) to keep the logits.
        q, k = np.vstack([wq[:, qk_cols], bq[qk_cols]]), np.vstack([wk[:, qk_cols], bk[qk_cols]])
        u, s, vt = np.linalg.svd(whiten @ q @ k.T @ whiten)
        root = np.sqrt(s[:r_qk])
        qs.append(unwhiten @ u[:, :r_qk] * root * np.sqrt(r_qk / block.head_size))
        ks.append(unwhiten @ vt[:r_qk].T * root)
        # Values: softmax rows sum to one, so the value bias passes through as a constant; it rides in x̃.
        n = np.vstack([wv[:, vo_cols], bv[vo_cols]]) @ wo[vo_cols]
        u, s, vt = np.linalg.svd(whiten @ n, full_matrices=False)
        vs.append(unwhiten @ u[:, :r_vo] * s[:r_vo])
        os_.append(vt[:r_vo])
    q, k, v = (np.concatenate(x, axis=1) for x in (qs, ks, vs))
    return [q[:-1], q[-1]], [k[:-1], k[-1]], [v[:-1], v[-1]], [np.concatenate(os_, axis=0), bo]
