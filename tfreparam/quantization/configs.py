"""QuantizeConfigs for tfreparam's layers and for generic Keras layers TFMOT lacks.

How a factorized layer is quantized, the ordinary TFMOT way: every factor
weight gets an 8-bit per-tensor symmetric fake-quant and `set_quantize_weights`
puts the quantized factors on the layer's factor attributes (as TFMOT's Dense
config does with `Dense.kernel`); the running activation gets an 8-bit
fake-quant after every contraction step but the last, through the layer's
documented `set_between_factors` hook (so the int8 TFLite model keeps the
factors as separate int8 weights and runs an integer matmul for each); the
output is quantized after the activation, like TFMOT's `Dense`.

`LoRADense` is quantized as what it deploys to: its merged kernel
`W_base + (alpha / rank) * A @ B` (`merged_kernel()`) is fake-quantized as one
weight through the layer's `set_kernel_hook` (the TFLite converter folds it
into a single int8 matrix), while QAT still trains A and B through the
straight-through estimator. Adapter dropout is not applied under QAT.
"""

from __future__ import annotations

import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras import quantize_config as tfmot_config

import tfreparam.quantization.quantizers as quantizers

_LINEAR = keras.activations.linear


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
            for i in range(layer.contraction_steps - 1)
        ]
        # The activation slot, if any, comes first.
        output = [(layer.activation, quantizers.activation_quantizer())] if _wrappable(layer.activation) else []
        return output + between

    def set_quantize_weights(self, layer, quantize_weights):
        names = layer.factor_names
        if len(quantize_weights) != len(names):
            raise ValueError(
                f"Layer '{layer.name}' has {len(names)} factors, got {len(quantize_weights)} quantized weights."
            )
        for name, weight in zip(names, quantize_weights):
            setattr(layer, name, weight)

    def set_quantize_activations(self, layer, quantize_activations):
        between = layer.contraction_steps - 1
        if len(quantize_activations) > between:
            layer.activation = quantize_activations[0]
        layer.set_between_factors(quantize_activations[len(quantize_activations) - between:] if between else None)

    def get_output_quantizers(self, layer):
        return [] if _wrappable(layer.activation) else [quantizers.activation_quantizer()]


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
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        layer.set_kernel_hook(quantize_activations[0])
        if len(quantize_activations) > 1:
            layer.activation = quantize_activations[1]

    def get_output_quantizers(self, layer):
        return [] if _wrappable(layer.activation) else [quantizers.activation_quantizer()]

    def initialize_ranges(self, wrapper):
        """The merged kernel is no variable, so its range is set here, from its current value."""
        quantizers.set_symmetric_range(wrapper._quantize_activations[0]._post_activation_vars,
                                       wrapper.layer.merged_kernel())

    def get_config(self):
        return {}

    def __eq__(self, other):
        return type(self) is type(other)


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
