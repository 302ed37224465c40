"""Structured head / FFN-neuron pruning of the flat BERT: exact savings, masked-original parity, importance."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import bert
import tfreparam as tr
from tfreparam import sparsity

from tests.sparsity.tiny_bert import CONFIG, HEAD, INPUTS, MASK, SEQ
HEADS = {0: [1, 3], 1: [0]}
NEURONS = {0: [0, 5, 47], 1: list(range(20))}


@pytest.fixture(scope="module")
def encoder():
    # keras' seed also seeds Python's `random`, which draws the seeds of unseeded initializers: the
    # weights (and so the finite differences below) do not depend on which tests ran before.
    keras.utils.set_random_seed(1)
    return bert.build_encoder(CONFIG)


def _masked_reference(model, heads, neurons):
    """The original with the heads' / neurons' contributions zeroed: rows of the output projections."""
    reference = tr.fold(model)  # an independent copy (no reparameterized layers here)
    for block, removed in heads.items():
        layer = reference.get_layer(f"layer_{block}/attention/output")
        kernel = _kernel(layer)
        for h in removed:
            kernel[h * HEAD:(h + 1) * HEAD] = 0
        _set_kernel(layer, kernel)
    for block, removed in neurons.items():
        layer = reference.get_layer(f"layer_{block}/ffn/output")
        kernel = _kernel(layer)
        kernel[removed] = 0
        _set_kernel(layer, kernel)
    return reference


def _kernel(layer):
    return layer.kernel.numpy().copy()


def _set_kernel(layer, kernel):
    layer.kernel.assign(kernel)


def _expected_savings(heads, neurons):
    """Parameters and FLOPs per example removed, counted from the config by hand."""
    h, f, s = CONFIG.hidden_size, CONFIG.intermediate_size, SEQ
    params = flops = 0
    for removed in heads.values():
        width = len(removed) * HEAD
        params += 3 * (h * width + width) + width * h  # q, k, v columns (+bias), output rows
        flops += s * (3 * (2 * h * width + width) + 2 * width * h)
        flops += 4 * s * s * width  # QK^T and PV
    for removed in neurons.values():
        n = len(removed)
        params += h * n + n + n * h
        flops += s * (2 * h * n + n + 2 * n * h)
    return params, flops


def test_removing_heads_and_neurons_saves_exactly_and_matches_masked_original(encoder):
    result = sparsity.remove_heads_and_neurons(encoder, HEADS, NEURONS, seq_length=SEQ)
    params, flops = _expected_savings(HEADS, NEURONS)
    assert encoder.count_params() - result.model.count_params() == params
    assert result.params_before - result.params_after == params
    assert result.flops_before - result.flops_after == flops
    assert result.model.get_layer("layer_0/attention/math").num_heads == 2
    assert result.model.get_layer("layer_1/ffn/intermediate").units == CONFIG.intermediate_size - 20
    pruned = result.model(INPUTS)
    reference = _masked_reference(encoder, HEADS, NEURONS)(INPUTS)
    real = MASK.astype(bool)
    np.testing.assert_allclose(
        pruned["sequence_output"].numpy()[real], reference["sequence_output"].numpy()[real], atol=2e-5
    )
    np.testing.assert_allclose(pruned["pooled_output"], reference["pooled_output"], atol=2e-5)


def test_low_rank_projections_are_sliced():
    tf.random.set_seed(2)
    policy = {r"layer_\d+/(attention/(query|output)|ffn/.*)": tr.LowRank(rank=4)}
    model = bert.build_encoder(CONFIG, layer_policy=policy)
    result = sparsity.remove_heads_and_neurons(model, HEADS, NEURONS, seq_length=SEQ)
    query = result.model.get_layer("layer_0/attention/query")
    assert isinstance(query, tr.LowRankDense) and query.units == 2 * HEAD
    folded = tr.fold(model)
    reference = _masked_reference(folded, HEADS, NEURONS)(INPUTS)
    pruned = result.model(INPUTS)
    real = MASK.astype(bool)
    np.testing.assert_allclose(
        pruned["sequence_output"].numpy()[real], reference["sequence_output"].numpy()[real], atol=2e-5
    )
    # LowRank parameter savings: v columns of the query, u rows of the output.
    assert result.params_before - result.params_after < _expected_savings(HEADS, NEURONS)[0]


def test_other_factorizations_and_bad_units_are_refused(encoder):
    model = bert.build_encoder(CONFIG, layer_policy={r"layer_0/ffn/output": tr.Kronecker(num_terms=1)})
    with pytest.raises(ValueError, match="KroneckerDense: fold them first with tfreparam.fold"):
        sparsity.remove_heads_and_neurons(model, {0: [0]})
    with pytest.raises(ValueError, match="keep at least one"):
        sparsity.remove_heads_and_neurons(encoder, {0: [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="heads 0..3"):
        sparsity.remove_heads_and_neurons(encoder, {0: [4]})


TARGET = np.random.default_rng(1).normal(size=(3, SEQ, CONFIG.hidden_size)).astype("float32")


def _loss(outputs):
    # A sum (not a mean) keeps finite differences well above float32 rounding.
    return tf.reduce_sum(tf.square(outputs["sequence_output"] - TARGET))


def test_head_importance_matches_finite_differences(encoder):
    heads, neurons = sparsity.head_and_neuron_importance(encoder, [INPUTS], _loss)
    # Independent check: ∂L/∂ξ_h by central differences, scaling head h's rows
    # of the output projection (= its context) by 1 ± eps, in float64 numpy sums.
    eps = 0.05
    for block in range(CONFIG.num_layers):
        layer = encoder.get_layer(f"layer_{block}/attention/output")
        original = layer.kernel.numpy()
        grads = []
        for h in range(CONFIG.num_heads):
            values = []
            for sign in (1, -1):
                kernel = original.copy()
                kernel[h * HEAD:(h + 1) * HEAD] *= 1 + sign * eps
                layer.kernel.assign(kernel)
                values.append(float(_loss(encoder(INPUTS))))
            layer.kernel.assign(original)
            grads.append(abs(values[0] - values[1]) / (2 * eps))
        grads = np.array(grads)
        np.testing.assert_allclose(heads[block], grads / np.linalg.norm(grads), rtol=0.05, atol=5e-3)
        assert neurons[block].shape == (CONFIG.intermediate_size,)


def test_prune_by_importance_removes_the_least_important(encoder):
    result = sparsity.prune_heads_and_neurons(encoder, 0.25, 0.5, [INPUTS], _loss, seq_length=SEQ)
    assert sum(len(v) for v in result.removed_heads.values()) == 2  # 25 % of 8 heads
    assert sum(len(v) for v in result.removed_neurons.values()) == 48  # 50 % of 96 neurons
    scores = np.concatenate([result.head_importance[b] for b in sorted(result.head_importance)])
    removed = np.concatenate([np.array(result.removed_heads.get(b, []), int) + b * CONFIG.num_heads
                              for b in range(CONFIG.num_layers)])
    assert set(removed) == set(np.argsort(scores)[:2])
    assert result.params_after < result.params_before and result.flops_after < result.flops_before
