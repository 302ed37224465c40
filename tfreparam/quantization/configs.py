"""QuantizeConfigs for tfreparam's layers and for generic Keras layers TFMOT lacks.

How a factorized layer is quantized: every factor weight gets an 8-bit
per-tensor symmetric fake-quant, the running activation gets an 8-bit fake-quant
after every contraction step but the last (so the int8 TFLite model keeps the
factors as separate int8 weights and runs an integer matmul for each), and the
output is quantized after the activation, like TFMOT's `Dense`. The layer's
own contraction plan runs with these fake-quants passed as its `between` hooks
(`_quantized_apply_factors`); the wrapped layer's variables are untouched.

`LoRADense` is quantized as what it deploys to: its merged kernel
`W_base + (alpha / rank) * A @ B` is fake-quantized as one weight (the TFLite
converter folds it into a single int8 matrix), while QAT still trains A and B
through the straight-through estimator. Adapter dropout is not applied under
QAT. Call `merge()` first if you want a plain `Dense` in the QAT model.
"""

from __future__ import annotations

import types

import tensorflow as tf
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras import quantize_config as tfmot_config

from tfreparam.layers.base import ReparameterizedDense
from tfreparam.layers.lora import LoRADense, _base_kernel
from tfreparam.quantization import quantizers

_LINEAR = keras.activations.linear


def _set_untracked(layer, name, value):
    """Sets an attribute without Keras tracking (it holds graph tensors, not state)."""
    object.__setattr__(layer, name, value)


# Activations TFMOT's QuantizeAwareActivation can wrap; others get an output quantizer instead.
_WRAPPABLE_ACTIVATIONS = frozenset({"linear", "relu", "swish", "gelu", "softmax", "sigmoid", "tanh"})


def _wrappable(activation) -> bool:
    return getattr(activation, "__name__", type(activation).__name__) in _WRAPPABLE_ACTIVATIONS


class _PreservingConfig(tfmot_config.QuantizeConfig):
    """A QuantizeConfig whose weight quantizers can preserve sparsity or clusters (PQAT / CQAT)."""

    supports_preservation = True

    def __init__(self, preserve=None):
        if preserve not in quantizers.PRESERVE_MODES:
            raise ValueError(f"preserve must be one of {quantizers.PRESERVE_MODES}, got {preserve!r}.")
        self.preserve = preserve

    def _weight_quantizer(self):
        return quantizers.weight_quantizer(self.preserve)

    def get_config(self):
        return {"preserve": self.preserve}

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()


@keras.utils.register_keras_serializable(package="tfreparam")
class DenseQuantizeConfig(_PreservingConfig):
    """`keras.layers.Dense`: TFMOT's default 8-bit scheme (per-tensor kernel, post-activation output),
    with calibratable ranges, PQAT / CQAT kernels, and any activation function."""

    def get_weights_and_quantizers(self, layer):
        return [(layer.kernel, self._weight_quantizer())]

    def get_activations_and_quantizers(self, layer):
        return [(layer.activation, quantizers.activation_quantizer())] if _wrappable(layer.activation) else []

    def set_quantize_weights(self, layer, quantize_weights):
        layer.kernel = quantize_weights[0]

    def set_quantize_activations(self, layer, quantize_activations):
        if quantize_activations:
            layer.activation = quantize_activations[0]

    def get_output_quantizers(self, layer):
        return [] if _wrappable(layer.activation) else [quantizers.activation_quantizer()]


@keras.utils.register_keras_serializable(package="tfreparam")
class ReparameterizedDenseQuantizeConfig(_PreservingConfig):
    """8-bit QAT of a `ReparameterizedDense`: factors, intermediate activations and output."""

    def get_weights_and_quantizers(self, layer):
        return [(layer.factor_weights[name], self._weight_quantizer()) for name in layer.factor_names]

    def get_activations_and_quantizers(self, layer):
        between = [
            (_LINEAR, quantizers.NamedQuantizer(quantizers.activation_quantizer(), f"between_factors_{i}"))
            for i in range(len(layer._plan.steps) - 1)
        ]
        # The activation slot, if any, comes first.
        output = [(layer.activation, quantizers.activation_quantizer())] if _wrappable(layer.activation) else []
        return output + between

    def set_quantize_weights(self, layer, quantize_weights):
        if len(quantize_weights) != len(layer.factor_names):
            raise ValueError(
                f"Layer '{layer.name}' has {len(layer.factor_names)} factors, "
                f"got {len(quantize_weights)} quantized weights."
            )
        _set_untracked(layer, "_tfreparam_quantized_factors", list(quantize_weights))
        _set_untracked(layer, "apply_factors", types.MethodType(_quantized_apply_factors, layer))

    def set_quantize_activations(self, layer, quantize_activations):
        between = len(layer._plan.steps) - 1
        if len(quantize_activations) > between:
            layer.activation = quantize_activations[0]
        _set_untracked(layer, "_tfreparam_between_quantizers", list(quantize_activations[-between:] if between else []))

    def get_output_quantizers(self, layer):
        return [] if _wrappable(layer.activation) else [quantizers.activation_quantizer()]


def _quantized_apply_factors(layer, x):
    """The layer's contraction plan on fake-quantized factors, with a fake-quant after each inner step."""
    return layer._plan(x, layer._tfreparam_quantized_factors, between=layer._tfreparam_between_quantizers)


@keras.utils.register_keras_serializable(package="tfreparam")
class LoRAQuantizeConfig(tfmot_config.QuantizeConfig):
    """8-bit QAT of a `LoRADense` as its merged kernel (see the module docstring)."""

    supports_preservation = False

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        kernel_quantizer = quantizers.NamedQuantizer(quantizers.weight_quantizer(), "merged_kernel")
        output = [(layer.activation, quantizers.activation_quantizer())] if _wrappable(layer.activation) else []
        return [(_LINEAR, kernel_quantizer)] + output

    def set_quantize_weights(self, layer, quantize_weights):
        _set_untracked(layer, "call", types.MethodType(_quantized_lora_call, layer))

    def set_quantize_activations(self, layer, quantize_activations):
        _set_untracked(layer, "_tfreparam_kernel_quantizer", quantize_activations[0])
        if len(quantize_activations) > 1:
            layer.activation = quantize_activations[1]

    def get_output_quantizers(self, layer):
        return [] if _wrappable(layer.activation) else [quantizers.activation_quantizer()]

    def initialize_ranges(self, wrapper):
        """The merged kernel is no variable, so its range is set here, from its current value."""
        layer = wrapper.layer
        kernel = _base_kernel(layer.base_layer) + layer.scaling * tf.matmul(
            layer.factor_weights["lora_a"], layer.factor_weights["lora_b"])
        quantizers.set_symmetric_range(wrapper._quantize_activations[0]._post_activation_vars, kernel)

    def get_config(self):
        return {}

    def __eq__(self, other):
        return type(self) is type(other)


def _quantized_lora_call(layer, inputs, training=None):
    rank = inputs.shape.rank
    x = inputs if rank == 2 else tf.reshape(inputs, (-1, layer.in_features))
    factors = {name: tf.convert_to_tensor(w) for name, w in layer.factor_weights.items()}
    kernel = _base_kernel(layer.base_layer) + layer.scaling * tf.matmul(factors["lora_a"], factors["lora_b"])
    y = tf.matmul(x, layer._tfreparam_kernel_quantizer(kernel))
    bias = layer.dense_bias()
    if bias is not None:
        y = tf.nn.bias_add(y, bias)
    if rank != 2:
        y = tf.reshape(y, tf.concat([tf.shape(inputs)[:-1], [layer.units]], axis=0))
        y.set_shape(inputs.shape[:-1].concatenate([layer.units]))
    return layer.activation(y)


@keras.utils.register_keras_serializable(package="tfreparam")
class OutputQuantizeConfig(tfmot_config.QuantizeConfig):
    """Quantizes only the layer's output (8-bit, moving-average range).

    For layers without weights whose integer kernels need only input and output
    scales: residual `Add`, GELU / tanh `Activation`, `LayerNormalization`
    (its gamma / beta and inner statistics are quantized by the converter's
    calibration on the representative data).
    """

    supports_preservation = False

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [quantizers.activation_quantizer()]

    def get_config(self):
        return {}

    def __eq__(self, other):
        return type(self) is type(other)


@keras.utils.register_keras_serializable(package="tfreparam")
class NoOpQuantizeConfig(OutputQuantizeConfig):
    """Wraps a layer without adding fake-quants: ops that move values without changing their scale
    (gather, slice, reshape), whose int8 output takes its input's scale."""

    def get_output_quantizers(self, layer):
        return []


@keras.utils.register_keras_serializable(package="tfreparam")
class WeightsQuantizeConfig(tfmot_config.QuantizeConfig):
    """Fake-quantizes the named weight attributes (8-bit per-tensor symmetric); no output quantizer.

    For lookup tables (`Embedding`, position / word embeddings): int8 GATHER
    returns values at the table's own scale, so the output needs no range of its own.
    """

    supports_preservation = False

    def __init__(self, weight_attrs, quantize_output=False):
        self.weight_attrs = list(weight_attrs)
        self.quantize_output = bool(quantize_output)

    def get_weights_and_quantizers(self, layer):
        return [(getattr(layer, name), quantizers.weight_quantizer()) for name in self.weight_attrs]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        for name, weight in zip(self.weight_attrs, quantize_weights):
            setattr(layer, name, weight)

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [quantizers.activation_quantizer()] if self.quantize_output else []

    def get_config(self):
        return {"weight_attrs": self.weight_attrs, "quantize_output": self.quantize_output}

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()


def serializable_objects() -> dict:
    """The custom objects a saved QAT model needs (see `quantize_scope`)."""
    return {
        cls.__name__: cls
        for cls in (
            ReparameterizedDenseQuantizeConfig,
            LoRAQuantizeConfig,
            OutputQuantizeConfig,
            NoOpQuantizeConfig,
            WeightsQuantizeConfig,
            DenseQuantizeConfig,
            quantizers.ActivationQuantizer,
            quantizers.NamedQuantizer,
            quantizers.SparsityPreservingWeightQuantizer,
            quantizers.ClusterPreservingWeightQuantizer,
        )
    }


__all__ = [
    "LoRAQuantizeConfig",
    "NoOpQuantizeConfig",
    "OutputQuantizeConfig",
    "ReparameterizedDenseQuantizeConfig",
    "WeightsQuantizeConfig",
]
