"""The quantizers tfreparam's QuantizeConfigs use, built on TFMOT's.

Weights: 8-bit symmetric, narrow range ([-127, 127], so zero stays exactly
zero), per tensor -- what TFLite's int8 FULLY_CONNECTED and BATCH_MATMUL
kernels take for every factor shape. Activations: 8-bit asymmetric with
moving-average ranges, TFMOT's default. Two collaborative variants preserve
what pruning or clustering produced (PQAT / CQAT), and `NamedQuantizer` lets
one layer own several activation quantizers with distinct variable names.
"""

from __future__ import annotations

import contextlib
import contextvars

import tensorflow as tf
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras import quant_ops
from tensorflow_model_optimization.python.core.quantization.keras import quantizers as tfmot_quantizers
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.cluster_preserve import (
    cluster_preserve_quantize_registry as cluster_preserve,
)

# What to keep intact while quantizing weights.
PRESERVE_NONE, PRESERVE_SPARSITY, PRESERVE_CLUSTERS = None, "sparsity", "clusters"
PRESERVE_MODES = (PRESERVE_NONE, PRESERVE_SPARSITY, PRESERVE_CLUSTERS)


# Set (to a set of already-seen range variables) while `calibrating()` is active.
_CALIBRATION = contextvars.ContextVar("tfreparam_quantization_calibration", default=None)


@contextlib.contextmanager
def calibrating():
    """Eager forward passes inside this context set activation ranges to the observed min / max.

    TFMOT's moving averages start at [-6, 6] and move by 0.1 % a step, so a
    short QAT run would otherwise keep ranges unrelated to the data.
    """
    token = _CALIBRATION.set(set())
    try:
        yield
    finally:
        _CALIBRATION.reset(token)


def observe_range(inputs, weights):
    """Widens (or, the first time in a calibration, sets) the range variables to cover `inputs`.

    Only inside `calibrating()`."""
    seen = _CALIBRATION.get()
    low = tf.minimum(tf.reduce_min(inputs), 0.0)
    high = tf.maximum(tf.reduce_max(inputs), 0.0)
    key = id(weights["min_var"])
    if key in seen:
        low, high = tf.minimum(low, weights["min_var"]), tf.maximum(high, weights["max_var"])
    seen.add(key)
    weights["min_var"].assign(tf.reshape(low, weights["min_var"].shape))
    weights["max_var"].assign(tf.reshape(high, weights["max_var"].shape))


@keras.utils.register_keras_serializable(package="tfreparam")
class ActivationQuantizer(tfmot_quantizers.MovingAverageQuantizer):
    """TFMOT's moving-average activation quantizer, plus range calibration (see `calibrating`)."""

    def __init__(self, num_bits=8, per_axis=False, symmetric=False, narrow_range=False):
        super().__init__(num_bits=num_bits, per_axis=per_axis, symmetric=symmetric, narrow_range=narrow_range)

    def __call__(self, inputs, training, weights, **kwargs):
        if _CALIBRATION.get() is not None and tf.executing_eagerly():
            observe_range(inputs, weights)
            training = False
        return super().__call__(inputs, training, weights, **kwargs)


def activation_quantizer():
    """8-bit asymmetric, per-tensor, moving-average range (TFMOT's default for activations)."""
    return ActivationQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)


def set_symmetric_range(weights, tensor):
    """Sets a weight quantizer's range to +-max|tensor| (what LastValueQuantize computes in training)."""
    bound = tf.reduce_max(tf.abs(tf.convert_to_tensor(tensor)))
    weights["min_var"].assign(tf.reshape(-bound, weights["min_var"].shape))
    weights["max_var"].assign(tf.reshape(bound, weights["max_var"].shape))


def weight_quantizer(preserve=PRESERVE_NONE):
    """8-bit symmetric narrow-range per-tensor weights, optionally preserving zeros or clusters."""
    if preserve == PRESERVE_SPARSITY:
        return SparsityPreservingWeightQuantizer()
    if preserve == PRESERVE_CLUSTERS:
        return ClusterPreservingWeightQuantizer()
    if preserve is not None:
        raise ValueError(f"preserve must be one of {PRESERVE_MODES}, got {preserve!r}.")
    return tfmot_quantizers.LastValueQuantizer(num_bits=8, per_axis=False, symmetric=True, narrow_range=True)


@keras.utils.register_keras_serializable(package="tfreparam")
class NamedQuantizer(tfmot_quantizers.Quantizer):
    """Delegates to `quantizer` but names its variables `name_*`.

    TFMOT builds each activation quantizer of a wrapper under the same name
    ("post_activation"); a layer with several quantized intermediates needs
    distinct names so its weights save and load unambiguously.
    """

    def __init__(self, quantizer, name):
        if isinstance(quantizer, dict):
            quantizer = keras.utils.deserialize_keras_object(
                quantizer, module_objects=vars(tfmot_quantizers), custom_objects=_custom_quantizers()
            )
        self.quantizer = quantizer
        self.name = str(name)

    def build(self, tensor_shape, name, layer):
        return self.quantizer.build(tensor_shape, self.name, layer)

    def __call__(self, inputs, training, weights, **kwargs):
        return self.quantizer(inputs, training, weights, **kwargs)

    def get_config(self):
        return {"quantizer": keras.utils.serialize_keras_object(self.quantizer), "name": self.name}

    def __eq__(self, other):
        return isinstance(other, NamedQuantizer) and other.get_config() == self.get_config()


def _weight_variable(wrapper, name):
    """The wrapped layer's weight called `name` (the last part of its variable name)."""
    for weight in wrapper.layer.weights:
        if weight.name.split(":")[0].split("/")[-1] == name:
            return weight
    raise ValueError(f"Layer '{wrapper.layer.name}' has no weight named {name!r}.")


@keras.utils.register_keras_serializable(package="tfreparam")
class SparsityPreservingWeightQuantizer(tfmot_quantizers.LastValueQuantizer):
    """PQAT for any weight: zeros present when QAT starts stay exactly zero.

    Like TFMOT's `PrunePreserveDefaultWeightsQuantizer`, but finds the weight
    by variable name (TFMOT looks for a layer attribute, which our factors,
    kept in a dict, are not) and keeps the mask in a non-trainable variable,
    so it survives `.keras` save / load.
    """

    def __init__(self, num_bits=8, per_axis=False, symmetric=True, narrow_range=True):
        super().__init__(num_bits=num_bits, per_axis=per_axis, symmetric=symmetric, narrow_range=narrow_range)

    def build(self, tensor_shape, name, layer):
        weight = _weight_variable(layer, name)
        mask = layer.add_weight(
            f"{name}_sparsity_mask",
            shape=weight.shape,
            initializer=keras.initializers.Constant(tf.cast(tf.not_equal(weight, 0), weight.dtype).numpy()),
            dtype=weight.dtype,
            trainable=False,
        )
        result = super().build(tensor_shape, name, layer)
        result["sparsity_mask"] = mask
        return result

    def __call__(self, inputs, training, weights, **kwargs):
        return quant_ops.LastValueQuantize(
            inputs * weights["sparsity_mask"],
            weights["min_var"],
            weights["max_var"],
            is_training=training,
            num_bits=self.num_bits,
            per_channel=self.per_axis,
            symmetric=self.symmetric,
            narrow_range=self.narrow_range,
        )

    def get_config(self):
        return {
            "num_bits": self.num_bits,
            "per_axis": self.per_axis,
            "symmetric": self.symmetric,
            "narrow_range": self.narrow_range,
        }


class _LayerByWeightName:
    """Presents a wrapped layer to TFMOT's CQAT quantizer, which reads weights as attributes."""

    def __init__(self, wrapper):
        self._wrapper = wrapper

    def __getattr__(self, name):
        try:
            return _weight_variable(self._wrapper, name)
        except ValueError as error:  # getattr(view, "data_format", None) must see an AttributeError
            raise AttributeError(str(error)) from None


class _WrapperView:
    """What TFMOT's `_build_clusters` expects of the wrapper: `.layer`, `.name`, `add_weight`."""

    def __init__(self, wrapper):
        self.layer = _LayerByWeightName(wrapper)
        self.name = wrapper.name
        self.add_weight = wrapper.add_weight


@keras.utils.register_keras_serializable(package="tfreparam")
class ClusterPreservingWeightQuantizer(cluster_preserve.ClusterPreserveDefaultWeightsQuantizer):
    """CQAT for any weight: the weight keeps its set of unique values (trainable centroids).

    TFMOT's quantizer, given a view of our layer in which factor weights are
    attributes. Per-tensor clustering (per-channel clustering is Conv2D-only).
    """

    def __init__(self, num_bits=8, per_axis=False, symmetric=True, narrow_range=True, preserve_sparsity=False):
        super().__init__(
            num_bits=num_bits,
            per_axis=per_axis,
            symmetric=symmetric,
            narrow_range=narrow_range,
            preserve_sparsity=preserve_sparsity,
        )

    def build(self, tensor_shape, name, layer):
        result = self._build_clusters(name, _WrapperView(layer))
        result.update(tfmot_quantizers.LastValueQuantizer.build(self, tensor_shape, name, layer))
        return result

    def get_config(self):
        return {
            "num_bits": self.num_bits,
            "per_axis": self.per_axis,
            "symmetric": self.symmetric,
            "narrow_range": self.narrow_range,
            "preserve_sparsity": self.preserve_sparsity,
        }


def _custom_quantizers():
    return {
        "ActivationQuantizer": ActivationQuantizer,
        "NamedQuantizer": NamedQuantizer,
        "SparsityPreservingWeightQuantizer": SparsityPreservingWeightQuantizer,
        "ClusterPreservingWeightQuantizer": ClusterPreservingWeightQuantizer,
    }
