"""QAT of `keras.layers.LayerNormalization` as the integer ops the int8 TFLite model runs.

The TFLite converter has no int8 LayerNorm kernel: it lowers the layer to
MEAN, SQUARED_DIFFERENCE, RSQRT, MUL, SUB and ADD, each requantizing its
output to int8. Left to the converter, those intermediates get ranges from
the representative data only, SQUARED_DIFFERENCE forces the mean onto the
input's (coarse) scale, and the `beta - mean * scale` branch is clipped --
so the int8 model drifts from the QAT model it came from.

`LayerNormQuantizeConfig` replaces the layer's call by an explicit
decomposition with a fake-quant after every step an int8 kernel requantizes:

    mean     = fq(reduce_mean(x))
    centered = fq(x - mean)                   SUB (its own scale, unlike SQUARED_DIFFERENCE)
    variance = fq(reduce_mean(fq(centered²)))
    inverse  = fq(rsqrt(max(variance, epsilon)))
    normed   = fq(centered · inverse)
    output   = fq(fq(normed · γ) + β)         γ, β: 8-bit weights

so QAT trains (and `calibrate` sets ranges) against the same rounding the
int8 model applies, and the converter finds a range for every tensor.
"""

from __future__ import annotations

import types

import tensorflow as tf
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras import quantize_config as tfmot_config

from tfreparam.quantization import quantizers

_LINEAR = keras.activations.linear
# The requantized intermediates, in call order.
POINTS = ("mean", "centered", "squared", "variance", "inverse", "normed", "scaled")


def supports(layer) -> bool:
    """Whether the decomposition applies: a LayerNormalization over the last axis only."""
    axes = list(layer.axis) if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    shape = getattr(layer, "_build_input_shape", None)
    rank = len(shape) if shape is not None else None
    return len(axes) == 1 and (axes[0] == -1 or (rank is not None and axes[0] == rank - 1))


@keras.utils.register_keras_serializable(package="tfreparam")
class LayerNormQuantizeConfig(tfmot_config.QuantizeConfig):
    """8-bit QAT of a last-axis `LayerNormalization`, step by step (see the module docstring)."""

    supports_preservation = False

    def get_weights_and_quantizers(self, layer):
        weights = []
        if layer.scale:
            weights.append((layer.gamma, quantizers.weight_quantizer()))
        if layer.center:
            weights.append((layer.beta, quantizers.weight_quantizer()))
        return weights

    def get_activations_and_quantizers(self, layer):
        return [(_LINEAR, quantizers.NamedQuantizer(quantizers.activation_quantizer(), f"layer_norm_{point}"))
                for point in POINTS]

    def set_quantize_weights(self, layer, quantize_weights):
        weights = list(quantize_weights)
        object.__setattr__(layer, "_tfreparam_gamma", weights.pop(0) if layer.scale else None)
        object.__setattr__(layer, "_tfreparam_beta", weights.pop(0) if layer.center else None)

    def set_quantize_activations(self, layer, quantize_activations):
        object.__setattr__(layer, "_tfreparam_points", dict(zip(POINTS, quantize_activations)))
        object.__setattr__(layer, "call", types.MethodType(_quantized_layer_norm_call, layer))

    def get_output_quantizers(self, layer):
        return [quantizers.activation_quantizer()]

    def get_config(self):
        return {}

    def __eq__(self, other):
        return type(self) is type(other)


def _quantized_layer_norm_call(layer, inputs):
    fq = layer._tfreparam_points  # their `training` flag is set by the wrapper
    x = tf.convert_to_tensor(inputs)
    mean = fq["mean"](tf.reduce_mean(x, axis=-1, keepdims=True))
    centered = fq["centered"](x - mean)
    squared = fq["squared"](centered * centered)
    variance = fq["variance"](tf.reduce_mean(squared, axis=-1, keepdims=True))
    # MAXIMUM keeps the variance's scale (an ADD of epsilon would need a range of its own); in int8 the
    # epsilon rounds to 0 and a zero variance saturates the inverse, as the fake-quant does here.
    inverse = fq["inverse"](tf.math.rsqrt(tf.maximum(variance, layer.epsilon)))
    y = fq["normed"](centered * inverse)
    if layer._tfreparam_gamma is not None:
        y = fq["scaled"](y * layer._tfreparam_gamma)
    if layer._tfreparam_beta is not None:
        y = y + layer._tfreparam_beta
    return y
