"""Mixed precision keeps float32 variables and computes in the compute dtype; XLA agrees."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.layers.registry import MATRIX_IN, layer_params, randomize_lora

# Relative tolerance of a half-precision result vs float32 on O(1) activations.
_TOLERANCE = {"mixed_float16": 1e-2, "mixed_bfloat16": 4e-2}


def _x(batch=(3, 4)):
    return np.random.default_rng(4).normal(size=batch + (MATRIX_IN,)).astype("float32")


@pytest.mark.parametrize("case", layer_params())
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(case, policy):
    reference = case.make(activation="tanh")
    reference.build((None, MATRIX_IN))
    randomize_lora(reference)
    layer = case.make(activation="tanh", dtype=keras.mixed_precision.Policy(policy))
    layer.build((None, MATRIX_IN))
    layer.set_weights(reference.get_weights())
    x = tf.constant(_x())
    with tf.GradientTape() as tape:
        y = layer(x)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
    compute = keras.mixed_precision.Policy(policy).compute_dtype
    assert y.dtype == compute
    assert all(w.dtype == tf.float32 for w in layer.weights)
    scale = np.abs(reference(x).numpy()).max()
    np.testing.assert_allclose(
        y.numpy().astype("float32"), reference(x).numpy(), atol=_TOLERANCE[policy] * scale
    )
    grads = tape.gradient(loss, layer.trainable_variables)
    assert all(g is not None and g.dtype == tf.float32 for g in grads)
    assert all(np.isfinite(g.numpy()).all() for g in grads)


@pytest.mark.parametrize("case", layer_params())
def test_xla_forward_and_gradient_match_eager(case):
    layer = case.make(activation="gelu")
    x = tf.constant(_x())
    layer(x)
    randomize_lora(layer)

    def forward_and_grads(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = layer(inputs)
            loss = tf.reduce_sum(y * y)
        return y, tape.gradient(loss, [inputs] + layer.trainable_variables)

    y_eager, g_eager = forward_and_grads(x)
    y_xla, g_xla = tf.function(forward_and_grads, jit_compile=True)(x)
    np.testing.assert_allclose(y_xla.numpy(), y_eager.numpy(), atol=1e-5, rtol=1e-5)
    for a, b in zip(g_xla, g_eager):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4, rtol=1e-4)
