"""Every layer computes act(x @ W + b) for the W its factors imply, with matching gradients.

W comes from two independent places: the layer's `dense_kernel()` (used as the
differentiable reference for outputs and gradients) and a plain-numpy rebuild
from the factors in the registry (checked against `dense_kernel()`).
"""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from tests.layers.registry import MATRIX_IN, layer_params, randomize_lora


def _affine_reference(layer, x):
    """act(x @ dense_kernel() + bias), differentiable w.r.t. the factors."""
    y = tf.tensordot(x, layer.dense_kernel(), axes=1)
    bias = layer.dense_bias()
    if bias is not None:
        y = y + bias
    return layer.activation(y)


def _check_against_materialised(layer, x):
    layer(x)  # builds the layer
    randomize_lora(layer)
    x = tf.constant(x)
    probe = tf.constant(
        np.random.default_rng(1).normal(size=x.shape[:-1] + (layer.units,)).astype("float32")
    )
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = layer(x)
        y_ref = _affine_reference(layer, x)
        loss, loss_ref = tf.reduce_sum(y * probe), tf.reduce_sum(y_ref * probe)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y.numpy(), y_ref.numpy(), atol=1e-5, rtol=1e-5)
    sources = [x] + layer.trainable_variables
    for source, grad, grad_ref in zip(
        sources, tape.gradient(loss, sources), tape.gradient(loss_ref, sources)
    ):
        np.testing.assert_allclose(
            grad.numpy(), grad_ref.numpy(), atol=1e-4, rtol=1e-4,
            err_msg=getattr(source, "name", "input"),
        )


def _check_numpy_kernel(case, layer):
    np.testing.assert_allclose(
        layer.dense_kernel().numpy(), case.reference_kernel(layer), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("case", layer_params())
@pytest.mark.parametrize("batch_shape", [(6,), (3, 5), (2, 2, 3)], ids=["rank2", "rank3", "rank4"])
def test_default_config_matches_materialised_kernel(case, batch_shape):
    layer = case.make(activation="tanh")
    x = np.random.default_rng(0).normal(size=batch_shape + (MATRIX_IN,)).astype("float32")
    _check_against_materialised(layer, x)
    _check_numpy_kernel(case, layer)


@pytest.mark.parametrize("case", layer_params())
def test_random_configs_match_materialised_kernel(case):
    @given(config=case.draw_config(), input_rank=st.sampled_from([2, 3]), seed=st.integers(0, 2**16))
    def check(config, input_rank, seed):
        n_in, units, kwargs = config
        layer = case.build(n_in, units, kwargs)
        batch = (4,) if input_rank == 2 else (2, 3)
        x = np.random.default_rng(seed).normal(size=batch + (n_in,)).astype("float32")
        _check_against_materialised(layer, x)
        _check_numpy_kernel(case, layer)

    check()


@pytest.mark.parametrize("case", layer_params())
def test_dynamic_batch_and_sequence_in_tf_function(case):
    layer = case.make()
    fn = tf.function(layer, input_signature=[tf.TensorSpec((None, None, MATRIX_IN), tf.float32)])
    for shape in [(2, 3, MATRIX_IN), (5, 1, MATRIX_IN)]:
        x = np.random.default_rng(0).normal(size=shape).astype("float32")
        y = fn(tf.constant(x))
        assert y.shape == shape[:-1] + (layer.units,)
        np.testing.assert_allclose(y.numpy(), _affine_reference(layer, x).numpy(), atol=1e-5)


@pytest.mark.parametrize("case", layer_params())
def test_integer_inputs_are_cast_like_dense(case):
    # Issue 16.14: Dense casts int inputs to its compute dtype; our layers failed on them.
    layer = case.make()
    ints = np.arange(2 * MATRIX_IN, dtype="int32").reshape(2, MATRIX_IN) % 5 - 2
    layer.build((None, MATRIX_IN))
    randomize_lora(layer)
    bias = layer.dense_bias()
    expected = ints @ case.reference_kernel(layer) + (0.0 if bias is None else bias.numpy())
    np.testing.assert_allclose(layer(ints).numpy(), expected, rtol=1e-4, atol=1e-4)
