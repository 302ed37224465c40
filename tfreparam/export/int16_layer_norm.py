"""LayerNormalization written so that the 16x8 TFLite model can run it.

Keras computes LayerNorm's variance with SQUARED_DIFFERENCE, which the
converter quantizes to int16 in 16x8 mode although LiteRT has no int16
kernel for it. The same function as MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL,
ADD has an int16 kernel for every op, so a BERT exports fully integer with
16-bit activations: the precision MiniLM's residual-stream outliers (|x| ~ 200
next to values ~ 1) need, which per-tensor int8 cannot give.

Used by `tfreparam.export.tflite` on a copy of the model; the caller's model
is left alone.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras


class MultiplyVarianceLayerNorm(keras.layers.LayerNormalization):
    """`LayerNormalization` over the last axis, its variance taken as mean((x - mean)²) with MUL."""

    def call(self, inputs):
        x = tf.convert_to_tensor(inputs)
        centered = x - tf.reduce_mean(x, axis=-1, keepdims=True)
        variance = tf.reduce_mean(centered * centered, axis=-1, keepdims=True)
        y = centered * tf.math.rsqrt(variance + self.epsilon)
        if self.scale:
            y = y * self.gamma
        if self.center:
            y = y + self.beta
        return y


def normalizes_last_axis_only(layer: keras.layers.LayerNormalization) -> bool:
    """Whether a (built) LayerNormalization normalizes over the last axis and no other."""
    axes = list(layer.axis) if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    shape = getattr(layer, "_build_input_shape", None)
    rank = len(shape) if shape is not None else None
    return len(axes) == 1 and (axes[0] == -1 or (rank is not None and axes[0] == rank - 1))


def _replaceable(layer) -> bool:
    return type(layer) is keras.layers.LayerNormalization and normalizes_last_axis_only(layer)


def with_int16_layer_norm(model: keras.Model) -> keras.Model:
    """A copy of `model` with each last-axis `LayerNormalization` as `MultiplyVarianceLayerNorm`.

    Returns `model` itself when it has none, or when Keras cannot clone it (a
    subclassed model): its SQUARED_DIFFERENCE is then reported by the exporter.
    """
    if not any(_replaceable(layer) for layer in model.layers):
        return model

    def clone(layer):
        cls = MultiplyVarianceLayerNorm if _replaceable(layer) else layer.__class__
        return cls.from_config(layer.get_config())

    try:
        copy = keras.models.clone_model(model, clone_function=clone)
    except (ValueError, TypeError, NotImplementedError):
        return model
    copy.set_weights(model.get_weights())
    return copy
