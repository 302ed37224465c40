"""QAT of `keras.layers.LayerNormalization` as integer ops the int8 TFLite model runs faithfully.

The TFLite converter has no int8 LayerNorm kernel. Left to itself it lowers
Keras' LayerNorm to MEAN, SQUARED_DIFFERENCE, RSQRT, MUL, SUB and ADD, each
requantizing to int8 from representative-data ranges the QAT model never
simulated: SQUARED_DIFFERENCE forces the mean onto the input's (coarse)
scale, and an int8 variance cannot hold tokens whose variances differ by
100x (MiniLM's outlier dimensions), so per-token scales drift.

`quantize_model` wraps a `QuantizableLayerNormalization` in its place (the
same layer, with a QAT hook), and `LayerNormQuantizeConfig` sets that hook,
so that the layer computes

    mean     = fq(reduce_mean(x))
    centered = fq(x - mean)                      SUB, with its own scale
    unit     = fq_1/128(l2_normalize(centered))  L2_NORMALIZATION (int32 sum of squares inside;
                                                 TFLite fixes its int8 output at scale 1/128)
    output   = fq(fq(unit · sqrt(width)·γ) + β)  γ, β: constants the converter quantizes

which equals LayerNorm (`(x - mean)/std = sqrt(width) · (x - mean)/‖x - mean‖`,
epsilon aside) and converts op for op, with a range for every tensor.

Two fake-quants must never end up back to back on one tensor: the converter
then gives the tensor two scales, and a RESHAPE after it (every factorized
projection starts with one) fails with "quantization parameters violate the
same scale constraint". So without β the MUL's range is the output's own, and
an all-zero β (every freshly built LayerNorm; the converter drops the `+ β`)
gets the `scaled` range as its output range after calibration (`tie_ranges`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras import quantize_config as tfmot_config
from tensorflow_model_optimization.python.core.quantization.keras import quantizers as tfmot_quantizers

from tfreparam.export.int16_layer_norm import normalizes_last_axis_only
from tfreparam.quantization import quantizers

_LINEAR = keras.activations.linear
# The requantized intermediates, in call order.
POINTS = ("mean", "centered", "unit", "scaled")
# Guards an all-equal row only (tf.math.l2_normalize's default).
_L2_EPSILON = 1e-12


def supports(layer) -> bool:
    """Whether the decomposition applies: a LayerNormalization over the last axis only."""
    return normalizes_last_axis_only(layer)


@keras.utils.register_keras_serializable(package="tfreparam")
class QuantizableLayerNormalization(keras.layers.LayerNormalization):
    """A last-axis `LayerNormalization` with a QAT hook: `set_quantize_hooks(points)`.

    Without hooks (`None`, the default) it is `LayerNormalization`, bit for
    bit. With a mapping from each name in `POINTS` to a fake-quant callable it
    computes the decomposition of the module docstring. `quantize_model`
    substitutes it for a last-axis `LayerNormalization` (`quantizable`).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_quantize_hooks(None)

    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def set_quantize_hooks(self, points) -> None:
        if points is not None and set(points) != set(POINTS):
            raise ValueError(f"LayerNormalization '{self.name}' takes quantize hooks {POINTS}, got {sorted(points)}.")
        self.quantize_hooks = None if points is None else dict(points)

    def call(self, inputs):
        if self.quantize_hooks is None:
            return super().call(inputs)
        return _decomposed_layer_norm(self, inputs, self.quantize_hooks)


def quantizable(layer):
    """A `QuantizableLayerNormalization` copy of a plain last-axis `LayerNormalization`, else None."""
    if type(layer) is not keras.layers.LayerNormalization or not supports(layer):
        return None
    return QuantizableLayerNormalization.from_config(layer.get_config())


@keras.utils.register_keras_serializable(package="tfreparam")
class LayerNormQuantizeConfig(tfmot_config.QuantizeConfig):
    """8-bit QAT of a last-axis `LayerNormalization`, step by step (see the module docstring)."""

    supports_preservation = False

    def get_weights_and_quantizers(self, layer):
        # γ and β are folded into per-channel MUL / ADD constants that the converter quantizes itself.
        return []

    def get_activations_and_quantizers(self, layer):
        # TFLite's int8 L2_NORMALIZATION always outputs scale 1/128, zero point 0.
        unit = tfmot_quantizers.FixedQuantizer(num_bits=8, init_min=-1.0, init_max=127.0 / 128.0, narrow_range=False)
        return [(_LINEAR, quantizers.NamedQuantizer(unit if point == "unit" else quantizers.activation_quantizer(),
                                                    f"layer_norm_{point}")) for point in POINTS]

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        # Their `training` flag is set by the wrapper before each call.
        layer.set_quantize_hooks(dict(zip(POINTS, quantize_activations)))

    def get_output_quantizers(self, layer):
        return [quantizers.activation_quantizer()]

    def tie_ranges(self, wrapper):
        """After calibration: an all-zero β makes the output range the `scaled` one (see the module doc)."""
        layer = wrapper.layer
        if not layer.center or np.any(tf.convert_to_tensor(layer.beta).numpy()):
            return
        scaled = wrapper._quantize_activations[POINTS.index("scaled")]._post_activation_vars
        output = wrapper._output_quantizer_vars
        output["min_var"].assign(scaled["min_var"])
        output["max_var"].assign(scaled["max_var"])

    def get_config(self):
        return {}

    def __eq__(self, other):
        return type(self) is type(other)


def _decomposed_layer_norm(layer, inputs, fq):
    x = tf.convert_to_tensor(inputs)
    mean = fq["mean"](tf.reduce_mean(x, axis=-1, keepdims=True))
    centered = fq["centered"](x - mean)
    # (x - mean) / std = sqrt(width) * l2_normalize(x - mean); epsilon is below int8 resolution.
    # LiteRT's L2_NORMALIZATION has no epsilon, and the converter fuses l2_normalize into it only
    # for a small one (Keras' default LayerNorm epsilon, 1e-3, would leave five float ops).
    unit = fq["unit"](tf.math.l2_normalize(centered, axis=-1, epsilon=_L2_EPSILON))
    width = tf.cast(tf.shape(x)[-1], x.dtype)
    gain = tf.sqrt(width) * (layer.gamma if layer.scale else 1.0)
    y = unit * gain
    if layer.center:  # without β the wrapper's output fake-quant is the MUL's
        y = fq["scaled"](y) + layer.beta
    return y
