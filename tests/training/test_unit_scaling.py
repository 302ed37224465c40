"""Unit scaling: op numerics (forward values and hand-computed backward scales) and unit RMS in a deep BERT."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import bert
import tfreparam as tr
from bert import unit_scaled
from tfreparam.unit_scaling import ops

RNG = np.random.default_rng(0)


def _grads(fn, inputs, upstream):
    inputs = [tf.constant(x) for x in inputs]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        out = fn(*inputs)
    return out.numpy(), [g.numpy() for g in tape.gradient(out, inputs, output_gradients=tf.constant(upstream))]


def _normal(*shape):
    return RNG.normal(size=shape).astype("float32")


def test_matmul_and_linear_scales():
    x, w, b, g = _normal(6, 8), _normal(8, 4), _normal(4), _normal(6, 4)
    out, (gx, gw, gb) = _grads(ops.linear, [x, w, b], g)
    np.testing.assert_allclose(out, x @ w / math.sqrt(8) + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, g @ w.T / math.sqrt(4), rtol=1e-5, atol=1e-5)  # ÷√fan_out
    np.testing.assert_allclose(gw, x.T @ g / math.sqrt(6), rtol=1e-5, atol=1e-5)  # ÷√batch
    np.testing.assert_allclose(gb, g.sum(0) / math.sqrt(6), rtol=1e-5, atol=1e-5)


def test_low_rank_is_two_unit_scaled_matmuls():
    x, u, v, g = _normal(5, 8), _normal(8, 3), _normal(3, 4), _normal(5, 4)
    out, (gx, gu, gv) = _grads(lambda x, u, v: ops.low_rank(x, u, v), [x, u, v], g)
    middle = x @ u / math.sqrt(8)
    np.testing.assert_allclose(out, middle @ v / math.sqrt(3), rtol=1e-5, atol=1e-5)
    g_middle = g @ v.T / math.sqrt(4)
    np.testing.assert_allclose(gv, middle.T @ g / math.sqrt(5), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gu, x.T @ g_middle / math.sqrt(5), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, g_middle @ u.T / math.sqrt(3), rtol=1e-5, atol=1e-5)


def test_embedding_gradient_is_scaled_by_sqrt_vocab_over_tokens():
    table, ids, g = _normal(10, 4), np.array([[1, 3, 3], [0, 9, 1]], "int32"), _normal(2, 3, 4)
    t = tf.constant(table)
    with tf.GradientTape() as tape:
        tape.watch(t)
        out = ops.embedding(ids, t)
    grad = tf.convert_to_tensor(tape.gradient(out, t, output_gradients=tf.constant(g))).numpy()
    np.testing.assert_array_equal(out.numpy(), table[ids])
    expected = np.zeros_like(table)
    np.add.at(expected, ids.reshape(-1), g.reshape(-1, 4))
    np.testing.assert_allclose(grad, expected * math.sqrt(10 / 6), rtol=1e-5)


def test_residual_add_weights_forward_only_the_branch():
    skip, branch, g = _normal(3, 4), _normal(3, 4), _normal(3, 4)
    out, (g_skip, g_branch) = _grads(lambda a, b: ops.residual_add(a, b, 0.3), [skip, branch], g)
    np.testing.assert_allclose(out, math.sqrt(0.7) * skip + math.sqrt(0.3) * branch, rtol=1e-6)
    np.testing.assert_allclose(g_skip, math.sqrt(0.7) * g, rtol=1e-6)
    np.testing.assert_allclose(g_branch, g, rtol=1e-6)  # the √τ returns at the split: scale_gradient


def test_add_with_broadcast():
    a, b, g = _normal(4, 3, 2), _normal(1, 3, 2), _normal(4, 3, 2)
    out, (ga, gb) = _grads(lambda a, b: ops.add([a, b]), [a, b], g)
    np.testing.assert_allclose(out, (a + b) / math.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(ga, g, rtol=1e-6)
    np.testing.assert_allclose(gb, g.sum(0, keepdims=True) / math.sqrt(4), rtol=1e-5)  # 4 copies: ÷√4


def _gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def _gelu_grad(x):
    erf = np.vectorize(math.erf)
    return 0.5 * (1 + erf(x / math.sqrt(2))) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def test_activation_moments_match_gaussian_quadrature():
    nodes, weights = np.polynomial.hermite_e.hermegauss(120)
    weights = weights / weights.sum()  # E over z ~ N(0, 1)
    rms = lambda v: math.sqrt(float((weights * v * v).sum()))  # noqa: E731
    tanh_gelu = lambda z: 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))  # noqa: E731
    h = 1e-4
    expected = {
        "gelu": (rms(_gelu(nodes)), rms(_gelu_grad(nodes))),
        "gelu_tanh": (rms(tanh_gelu(nodes)), rms((tanh_gelu(nodes + h) - tanh_gelu(nodes - h)) / (2 * h))),
        "relu": (rms(np.maximum(nodes, 0)), rms((nodes > 0).astype(float))),
    }
    for name, moments in expected.items():
        np.testing.assert_allclose(ops.ACTIVATION_MOMENTS[name], moments, rtol=1e-4, err_msg=name)


def test_activation_scales():
    x, g = _normal(50, 8), _normal(50, 8)
    out, (gx,) = _grads(lambda x: ops.activation(x, lambda v: tf.nn.gelu(v, approximate=False), "gelu"), [x], g)
    out_rms, grad_rms = ops.ACTIVATION_MOMENTS["gelu"]
    np.testing.assert_allclose(out, _gelu(x) / out_rms, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gx, _gelu_grad(x) * g / grad_rms, rtol=1e-4, atol=1e-5)
    big = _normal(100_000)
    assert abs(float(tf.sqrt(tf.reduce_mean(ops.activation(big, tf.nn.relu, "relu") ** 2))) - 1) < 0.01


def test_softmax_cross_entropy_value_and_unit_gradient():
    logits, labels, weights = _normal(6, 5), np.array([0, 4, 2, 2, 1, 3]), np.array([1, 1, 0, 1, 1, 1], "float32")
    out, (g,) = _grads(lambda z: ops.softmax_cross_entropy(labels, z, weights), [logits], np.float32(1.0))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    nll = -np.log(p[np.arange(6), labels])
    np.testing.assert_allclose(out, (nll * weights).sum() / weights.sum(), rtol=1e-4)
    np.testing.assert_allclose(g, (p - np.eye(5)[labels]) * weights[:, None] * math.sqrt(5), rtol=1e-4, atol=1e-6)


def test_attention_forward_and_backward_scales():
    b, h, s, d = 2, 2, 5, 4
    q, k, v, g = _normal(b, h, s, d), _normal(b, h, s, d), _normal(b, h, s, d), _normal(b, h, s, d)
    bias = np.zeros((b, 1, 1, s), "float32")
    bias[1, ..., -1] = -1e4  # one padded key in the second example
    with tf.GradientTape() as tape:
        tensors = [tf.constant(t) for t in (q, k, v)]
        tape.watch(tensors)
        context, _ = ops.attention(*tensors, bias=tf.constant(bias))
    gq, gk, gv = (t.numpy() for t in tape.gradient(context, tensors, output_gradients=tf.constant(g)))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + bias
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(context.numpy(), p @ v, rtol=1e-4, atol=1e-5)
    dp = g @ v.transpose(0, 1, 3, 2) * (s / math.sqrt(math.e * d))  # the softmax shrinks it by ~S/√e
    np.testing.assert_allclose(gv, p.transpose(0, 1, 3, 2) @ g, rtol=1e-4, atol=1e-5)
    dscores = p * (dp - (p * dp).sum(-1, keepdims=True))
    np.testing.assert_allclose(gq, dscores @ k / math.sqrt(s), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gk, dscores.transpose(0, 1, 3, 2) @ q / math.sqrt(s), rtol=1e-4, atol=1e-5)


def test_layer_norm_and_output_bias_gradients_are_scaled_by_rsqrt_tokens():
    x, g = _normal(3, 4, 8), _normal(3, 4, 8)
    layer_norm, bias = unit_scaled.UnitScaledLayerNormalization(epsilon=1e-12), unit_scaled.UnitScaledBias()
    inputs = tf.constant(x)
    with tf.GradientTape() as tape:
        out = bias(layer_norm(inputs))
    grads = tape.gradient(out, [layer_norm.gamma, layer_norm.beta, bias.bias], output_gradients=tf.constant(g))
    normalized = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)
    np.testing.assert_allclose(out.numpy(), normalized, rtol=1e-4, atol=1e-4)  # gamma 1, betas 0 at init
    tokens = math.sqrt(12)
    np.testing.assert_allclose(grads[0].numpy(), (g * normalized).sum((0, 1)) / tokens, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads[1].numpy(), g.sum((0, 1)) / tokens, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads[2].numpy(), g.sum((0, 1)) / tokens, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="normalises the last axis only, got axis=1"):
        unit_scaled.UnitScaledLayerNormalization(axis=1)(inputs)


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match=r"tau must be in \(0, 1\), got 1.5"):
        ops.residual_add(tf.ones(2), tf.ones(2), 1.5)
    with pytest.raises(ValueError, match="No unit-scaling moments for activation 'swish'"):
        ops.activation(tf.ones(2), tf.nn.silu, "swish")
    with pytest.raises(ValueError, match="add needs at least one tensor"):
        ops.add([])
    with pytest.raises(ValueError, match="supports Dense and LowRank projections only; the layer_policy gives "
                                         "Kronecker for 'layer_0/ffn/output'"):
        bert.build_encoder(bert.BertConfig.named("tiny", unit_scaled=True),
                           layer_policy={r"layer_\d+/ffn/output": tr.Kronecker()})


# -- RMS of every layer's output and gradient at initialisation, 12-layer BERT -----------------

S, B, V = 32, 8, 128


def _features():
    rng = np.random.default_rng(0)
    return {
        "input_word_ids": rng.integers(0, V, (B, S)).astype("int32"),
        "input_mask": np.ones((B, S), "int32"),
        "input_type_ids": rng.integers(0, 2, (B, S)).astype("int32"),
        "masked_lm_positions": np.tile(np.arange(S, dtype="int32"), (B, 1)),
        "masked_lm_ids": rng.integers(0, V, (B, S)).astype("int32"),
        "masked_lm_weights": np.ones((B, S), "float32"),
        "next_sentence_labels": rng.integers(0, 2, (B, 1)).astype("int32"),
    }


def _layer_rms(pretrainer, features):
    """RMS of each layer's output and of the loss gradient wrt it (one forward/backward)."""
    acts, grads, originals = {}, {}, {}

    def probe(name, out):
        acts[name] = float(tf.sqrt(tf.reduce_mean(tf.cast(out, tf.float32) ** 2)))

        @tf.custom_gradient
        def identity(y):
            def grad(upstream):
                grads[name] = float(tf.sqrt(tf.reduce_mean(tf.cast(upstream, tf.float32) ** 2)))
                return upstream

            return tf.identity(y), grad

        return identity(out)

    for layer in pretrainer.network.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        originals[layer] = layer.call

        def call(*args, _original=layer.call, _name=layer.name, **kwargs):
            out = _original(*args, **kwargs)
            return probe(_name, out) if isinstance(out, tf.Tensor) and out.dtype.is_floating else out

        layer.call = call
    try:
        with tf.GradientTape() as tape:
            outputs = pretrainer(features, training=True)
            values = pretrainer._pretraining_losses(features, outputs)
            loss = values["mlm_loss"] + values["nsp_loss"]
        tape.gradient(loss, pretrainer.trainable_variables)
    finally:
        for layer, original in originals.items():
            layer.call = original
    return acts, grads


@pytest.fixture(scope="module")
def deep_bert_rms():
    config = bert.BertConfig(vocab_size=V, hidden_size=64, num_layers=12, num_heads=4, intermediate_size=256,
                             max_position_embeddings=S, hidden_dropout=0.0, attention_dropout=0.0)
    results = {}
    for scaled in (True, False):
        keras.utils.set_random_seed(1)
        c = config.replace(unit_scaled=scaled)
        pretrainer = bert.build_pretrainer(c, max_predictions_per_seq=S)
        results[scaled] = _layer_rms(pretrainer, _features())
    return results


def test_build_pretrainer_gives_a_unit_scaled_bert_its_unit_scaled_losses():
    # The one `bert.build_pretrainer` follows the config: its MLM loss gradient wrt the logits is
    # (softmax - one_hot) * weight * sqrt(vocab) per prediction, not the ordinary mean's / sum(weights).
    config = bert.BertConfig(vocab_size=V, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                             max_position_embeddings=S, hidden_dropout=0.0, attention_dropout=0.0, unit_scaled=True)
    pretrainer = bert.build_pretrainer(config, max_predictions_per_seq=S)
    features = _features()
    features["masked_lm_weights"][:, S // 2:] = 0.0
    with tf.GradientTape() as tape:
        outputs = pretrainer(features)
        loss = pretrainer._pretraining_losses(features, outputs)["mlm_loss"]
    gradient = tape.gradient(loss, outputs["mlm_logits"]).numpy()
    logits = outputs["mlm_logits"].numpy().astype("float64")
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    expected = (p - np.eye(V)[features["masked_lm_ids"]]) * features["masked_lm_weights"][..., None] * math.sqrt(V)
    np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-6)


_ATTENTION_INPUTS = ("attention/query", "attention/key", "attention/value", "attention/split")


def test_unit_scaled_bert_has_unit_activations_and_gradients(deep_bert_rms):
    acts, grads = deep_bert_rms[True]
    assert len(acts) > 200 and set(grads) == set(acts)
    # [0.4, 2], not [0.5, 2]: the lowest blocks' attention averages still-independent tokens (RMS
    # ~0.45), and the MLM head's plain GELU gives 0.48 (see README, Unit scaling).
    off = {k: round(v, 3) for k, v in acts.items() if not 0.4 <= v <= 2.0}
    assert not off, f"activation RMS outside [0.4, 2]: {off}"
    assert sum(0.5 <= v <= 2.0 for v in acts.values()) >= 0.95 * len(acts)
    # Residual stream, FFN, attention output, embeddings and heads: gradients within [0.4, 3.5]; the
    # top is the embeddings (measured 3.0-3.4), under a stack of post-LN LayerNorms whose inputs sit
    # a little below unit RMS, so each one's backward (÷ input RMS) amplifies the gradient a little.
    stream = {k: v for k, v in grads.items() if not k.endswith(_ATTENTION_INPUTS)}
    off = {k: round(v, 3) for k, v in stream.items() if not 0.4 <= v <= 3.5}
    assert not off, f"gradient RMS outside [0.4, 3.5]: {off}"
    # q/k/v gradients go through the softmax and the average over positions, whose fixed scales cannot
    # follow how alike the tokens are (data-dependent): they reach 0.03-3 (see README, Unit scaling).
    attention = {k: v for k, v in grads.items() if k.endswith(_ATTENTION_INPUTS)}
    off = {k: round(v, 3) for k, v in attention.items() if not 0.03 <= v <= 3.0}
    assert not off, f"attention-input gradient RMS outside [0.03, 3]: {off}"


def test_standard_bert_is_far_from_unit_scale(deep_bert_rms):
    acts, grads = deep_bert_rms[False]
    assert min(acts.values()) < 0.05  # e.g. the 0.02-initialised embeddings and projections
    assert max(grads.values()) < 0.2 and min(grads.values()) < 1e-5  # mean-reduced loss: tiny gradients


# -- pure float16 training without loss scaling --------------------------------------------

_FP16_SEQ, _FP16_BATCH, _FP16_PREDICTIONS, _FP16_STEPS = 16, 32, 8, 25


def _copy_task(batches, seed):
    """MLM on random tokens where the label is the (unmasked) token at the position: learnable fast."""
    rng = np.random.default_rng(seed)
    n = batches * _FP16_BATCH
    ids = rng.integers(1, V, (n, _FP16_SEQ)).astype("int32")
    positions = np.stack([rng.choice(_FP16_SEQ, _FP16_PREDICTIONS, replace=False) for _ in range(n)]).astype("int32")
    features = {
        "input_word_ids": ids, "input_mask": np.ones_like(ids), "input_type_ids": np.zeros_like(ids),
        "masked_lm_positions": positions, "masked_lm_ids": np.take_along_axis(ids, positions, 1),
        "masked_lm_weights": np.ones(positions.shape, "float32"),
        "next_sentence_labels": rng.integers(0, 2, (n, 1)).astype("int32"),
    }
    return tf.data.Dataset.from_tensor_slices(features).batch(_FP16_BATCH)


def _train_mlm_loss(scaled, policy):
    """Held-out MLM loss after 25 Adam steps; `policy` "float16" = float16 variables, activations and
    gradients, and no loss scaling (the pretrainer itself is float32 so compile adds no LossScaleOptimizer)."""
    keras.utils.set_random_seed(0)
    config = bert.BertConfig(vocab_size=V, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                             max_position_embeddings=_FP16_SEQ, hidden_dropout=0.0, attention_dropout=0.0,
                             unit_scaled=scaled)
    keras.mixed_precision.set_global_policy(policy)
    try:
        network = bert.build_pretraining_network(config, max_predictions_per_seq=_FP16_PREDICTIONS)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    pretrainer = (unit_scaled.UnitScaledPretrainer if scaled else bert.BertPretrainer)(network)
    # Unit-scaled weights are O(1), standard ones O(0.02): each gets the Adam step size that suits it.
    # epsilon 1e-4 for float16, where 1e-7 is below the smallest normal number.
    optimizer = keras.optimizers.Adam(1e-2 if scaled else 3e-3, epsilon=1e-4 if policy == "float16" else 1e-7)
    pretrainer.compile(optimizer=optimizer)
    # Adam's slots now, not in the first step (which would make `fit` trace its step twice).
    optimizer.build(pretrainer.trainable_variables)
    assert not isinstance(pretrainer.optimizer, keras.mixed_precision.LossScaleOptimizer)
    assert all(w.dtype == policy for w in network.weights)
    pretrainer.fit(_copy_task(_FP16_STEPS, seed=0), epochs=1, verbose=0)
    return pretrainer.evaluate(_copy_task(4, seed=1), verbose=0, return_dict=True)["mlm_loss"]


@pytest.fixture(scope="module")
def float16_losses():
    losses = {(scaled, policy): _train_mlm_loss(scaled, policy)
              for scaled in (True, False) for policy in ("float32", "float16")}
    print("held-out MLM losses (unit_scaled, policy):", losses)
    return losses


def test_unit_scaled_bert_trains_in_pure_float16_like_float32(float16_losses):
    chance = math.log(V)
    fp32, fp16 = float16_losses[True, "float32"], float16_losses[True, "float16"]
    assert fp32 < 0.6 * chance  # it learns (chance: 4.85)
    # Measured after 25 steps: 2.203 (float32) vs 2.224 (float16), +1.0 %.
    assert abs(fp16 - fp32) <= 0.03 * fp32, (fp32, fp16)


def test_standard_bert_in_pure_float16_does_worse(float16_losses):
    fp32, fp16 = float16_losses[False, "float32"], float16_losses[False, "float16"]
    assert fp32 < 0.6 * math.log(V)
    # Its mean-reduced gradients sit near float16's smallest normal number (6e-5) and lose precision
    # or underflow. Measured after 25 steps: 1.682 (float32) vs 1.840 (float16), +9.4 %.
    assert fp16 > 1.05 * fp32, (fp32, fp16)
    scaled_gap = abs(float16_losses[True, "float16"] / float16_losses[True, "float32"] - 1)
    assert fp16 / fp32 - 1 > 3 * scaled_gap
