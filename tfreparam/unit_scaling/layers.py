"""Unit-scaled Keras layers: unit-variance weights at init and the scaled ops of `ops`."""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

import tfreparam.unit_scaling.ops as ops
from tfreparam.layers.low_rank import LowRankDense


def _read(variable, dtype):
    return tf.cast(tf.convert_to_tensor(variable), dtype)


@keras.utils.register_keras_serializable(package="tfreparam")
class UnitScaledDense(keras.layers.Dense):
    """`Dense` with unit-normal kernel init and `ops.linear` (÷√in forward, ÷√out / ÷√N backward).

    A drop-in for `keras.layers.Dense`: the same `kernel`/`bias` weights and
    config, so surgery and checkpoints treat it like a Dense layer.
    """

    def __init__(self, units, kernel_initializer=None, **kwargs):
        super().__init__(units, kernel_initializer=kernel_initializer or keras.initializers.RandomNormal(stddev=1.0),
                         **kwargs)

    def call(self, inputs):
        dtype = self.compute_dtype
        inputs = tf.cast(inputs, dtype)
        y = ops.linear(inputs, _read(self.kernel, dtype), _read(self.bias, dtype) if self.use_bias else None)
        if self.activation is not None:
            y = self.activation(y)
        return y


@keras.utils.register_keras_serializable(package="tfreparam")
class UnitScaledLowRankDense(LowRankDense):
    """`LowRankDense` (W = U·V) with unit-normal factors and `ops.low_rank`.

    Both matmuls are unit-scaled, so the rank-r intermediate is unit-variance
    too; the implied kernel U·V/√(in·r) equals a unit-scaled Dense's W/√in at
    the same init variance.
    """

    def _factor_initializer(self):
        return keras.initializers.RandomNormal(stddev=1.0)

    def call(self, inputs):
        dtype = self.compute_dtype
        inputs = tf.cast(inputs, dtype)
        u = _read(self.factor_weights["u"], dtype)
        v = _read(self.factor_weights["v"], dtype)
        y = ops.low_rank(inputs, u, v, _read(self.bias, dtype) if self.use_bias else None)
        if self.activation is not None:
            y = self.activation(y)
        return y


@keras.utils.register_keras_serializable(package="tfreparam")
class UnitScaledEmbedding(keras.layers.Layer):
    """Embedding lookup with a unit-normal table and `ops.embedding`'s gradient scale."""

    def __init__(self, input_dim, output_dim, **kwargs):
        super().__init__(**kwargs)
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            "embeddings", shape=(self.input_dim, self.output_dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
        )
        super().build(input_shape)

    def call(self, ids):
        return ops.embedding(ids, _read(self.embeddings, self.compute_dtype))

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape).concatenate([self.output_dim])

    def get_config(self):
        config = super().get_config()
        config.update(input_dim=self.input_dim, output_dim=self.output_dim)
        return config


@keras.utils.register_keras_serializable(package="tfreparam")
class ResidualAdd(keras.layers.Layer):
    """`[skip, residual] -> √(1-τ)·skip + √τ·residual` (see `ops.residual_add`)."""

    def __init__(self, tau=0.5, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < float(tau) < 1.0:
            raise ValueError(f"ResidualAdd tau must be in (0, 1), got {tau}.")
        self.tau = float(tau)

    def call(self, inputs):
        skip, residual = inputs
        return ops.residual_add(skip, residual, self.tau)

    def get_config(self):
        config = super().get_config()
        config.update(tau=self.tau)
        return config
