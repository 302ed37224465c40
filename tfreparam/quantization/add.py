"""QAT of a `keras.layers.Add` of more than two inputs: a range for every partial sum.

Keras sums an Add's inputs left to right, and the TFLite converter turns an
Add of n inputs into n - 1 two-input ADDs. The QAT wrapper's output
fake-quant gives the last of them a range, but not the running sums before
it, so without representative data those stay float ADDs (a BERT's
word + type + position embedding sum is one). `quantize_model` therefore
wraps a `PartialSumAdd` in place of such an Add -- the same sum in the same
order, with a QAT hook after each partial sum -- and `AddQuantizeConfig`
puts an 8-bit fake-quant on each hook, so the int8 model has a range for
every ADD. The float model is not touched.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras import quantize_config as tfmot_config

from tfreparam.quantization import quantizers

_LINEAR = keras.activations.linear


@keras.utils.register_keras_serializable(package="tfreparam")
class PartialSumAdd(keras.layers.Add):
    """`keras.layers.Add` of `num_inputs` tensors with a QAT hook after each partial sum.

    `set_quantize_hooks(hooks)` takes `num_inputs - 2` callables: hook i is
    applied to `inputs[0] + ... + inputs[i + 1]`. Without hooks (`None`, the
    default) it is `keras.layers.Add`, bit for bit.
    """

    def __init__(self, num_inputs, **kwargs):
        super().__init__(**kwargs)
        self.num_inputs = int(num_inputs)
        if self.num_inputs < 2:
            raise ValueError(f"PartialSumAdd '{self.name}' needs num_inputs >= 2, got {num_inputs}.")
        self.set_quantize_hooks(None)

    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def set_quantize_hooks(self, hooks) -> None:
        hooks = None if hooks is None else tuple(hooks)
        if hooks is not None and len(hooks) != self.num_inputs - 2:
            raise ValueError(
                f"PartialSumAdd '{self.name}' sums {self.num_inputs} inputs, so it takes {self.num_inputs - 2} "
                f"partial-sum hooks; got {len(hooks)}."
            )
        self.partial_sum_hooks = hooks

    def build(self, input_shape):
        if len(input_shape) != self.num_inputs:
            raise ValueError(f"PartialSumAdd '{self.name}' expects {self.num_inputs} inputs, got {len(input_shape)}.")
        super().build(input_shape)

    def _merge_function(self, inputs):
        hooks = self.partial_sum_hooks or ()
        output = inputs[0]
        for i in range(1, len(inputs)):
            output += inputs[i]
            if i <= len(hooks):
                output = hooks[i - 1](output)
        return output

    def get_config(self):
        return dict(super().get_config(), num_inputs=self.num_inputs)


def quantizable(layer):
    """A `PartialSumAdd` copy of a plain `keras.layers.Add` of more than two inputs, else None."""
    if type(layer) is not keras.layers.Add:
        return None
    try:
        inputs = layer.input
    except AttributeError:  # never called, or shared between calls
        return None
    if not isinstance(inputs, (list, tuple)) or len(inputs) <= 2:
        return None
    return PartialSumAdd.from_config(dict(layer.get_config(), num_inputs=len(inputs)))


@keras.utils.register_keras_serializable(package="tfreparam")
class AddQuantizeConfig(tfmot_config.QuantizeConfig):
    """8-bit QAT of a `PartialSumAdd`: every partial sum and the output get a moving-average range."""

    supports_preservation = False

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return [(_LINEAR, quantizers.NamedQuantizer(quantizers.activation_quantizer(), f"partial_sum_{i}"))
                for i in range(layer.num_inputs - 2)]

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        # Their `training` flag is set by the wrapper before each call.
        layer.set_quantize_hooks(quantize_activations)

    def get_output_quantizers(self, layer):
        return [quantizers.activation_quantizer()]

    def get_config(self):
        return {}

    def __eq__(self, other):
        return type(self) is type(other)
