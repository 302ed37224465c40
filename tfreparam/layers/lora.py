"""`LoRADense`: a frozen dense layer plus a trainable low-rank update (Hu et al., 2021).

A wrapper in the manner of PEFT's `LoraLayer` and Keras 3's `Dense.enable_lora`:
the update is `delta_kernel() = (alpha / rank) · A B`; `merge()` adds it into
the base kernel in place and `unmerge()` takes it out again; the base layer is
deserialized in `from_config`.
"""

from __future__ import annotations

import math

import tensorflow as tf
import tf_keras as keras

from tfreparam.decompose.lora import LORA
from tfreparam.layers.base import ReparameterizedDense
from tfreparam.layers.contraction import Operand

# ReparameterizedDense arguments that belong to the base layer, not to the wrapper.
_BASE_ARGUMENTS = ("units", "activation", "use_bias", "bias_initializer", "bias_regularizer", "bias_constraint")


@keras.utils.register_keras_serializable(package="tfreparam")
class LoRADense(ReparameterizedDense):
    """y = act(x W + b + (alpha / rank) · dropout(x) A B), W, b and act those of `base_layer`.

    Wraps a `keras.layers.Dense` or any `ReparameterizedDense`. Only A: (in,
    rank) and B: (rank, units) are trainable; the base's weights are reported
    as non-trainable whatever its `trainable` flag (the caller's layer is not
    modified). A starts uniform in ±1/sqrt(in) and B at zero, so at init the
    layer computes exactly what the base layer does. `rank` is at most
    min(in_features, units).

    `merge()` adds the update into a Dense base's kernel in place (then the
    layer runs as the base alone); `unmerge()` restores the kernel bit for bit.
    `to_dense()` (or `tfreparam.fold`) gives a plain `Dense` with the update
    folded in.
    """

    form = LORA

    def __init__(self, base_layer, rank, alpha=None, dropout=0.0, merged=False, **kwargs):
        if isinstance(base_layer, LoRADense):
            raise ValueError(
                f"'{base_layer.name}' is already a LoRADense; fold it (to_dense() or tfreparam.fold) "
                "before stacking another adapter."
            )
        if not isinstance(base_layer, (keras.layers.Dense, ReparameterizedDense)):
            raise ValueError(
                "LoRADense wraps a tf_keras Dense or a tfreparam ReparameterizedDense, "
                f"got {type(base_layer).__name__}."
            )
        kwargs.setdefault("name", f"{base_layer.name}_lora")
        super().__init__(base_layer.units, activation=base_layer.activation, use_bias=False, **kwargs)
        self.base_layer = base_layer
        # The input size (and so the full cap) is known at build; units already bound the rank.
        sizes = LORA.resolve(None, rank=rank, alpha=alpha, dropout=dropout)
        self.rank, self.alpha, self.dropout = sizes["rank"], sizes["alpha"], sizes["dropout"]
        if self.rank > self.units:
            raise ValueError(f"rank={self.rank} exceeds units={self.units} of the base layer; use rank <= {self.units}.")
        self.merged = bool(merged)
        self.kernel_hook = None
        self._dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self._set_untracked("_kernel_before_merge", None)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["base_layer"] = keras.layers.deserialize(config["base_layer"])
        return cls(**config)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    # The base stays frozen whatever `trainable` flags Keras propagates to
    # sublayers (`model.trainable = True` sets them all): its weights are
    # simply never reported as trainable.
    @property
    def trainable_weights(self):
        frozen = {id(w) for w in self.base_layer.weights}
        return [w for w in super().trainable_weights if id(w) not in frozen]

    @property
    def non_trainable_weights(self):
        kept = {id(w) for w in self.trainable_weights}
        own = [w for w in super().non_trainable_weights if id(w) not in kept]
        frozen = [w for w in self.base_layer.weights if id(w) not in {id(v) for v in own}]
        return own + frozen

    # -- weights ----------------------------------------------------------------

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        if not self.base_layer.built:
            # The base only ever sees flattened (N, in) inputs.
            self.base_layer.build(tf.TensorShape([None, input_shape[-1]]))
        base_in = _in_features(self.base_layer)
        if base_in != input_shape[-1]:
            raise ValueError(
                f"LoRADense '{self.name}': base layer expects {base_in} input features, got input shape {input_shape}."
            )
        super().build(input_shape)

    def _configure(self, in_features):
        self._check_sizes(in_features, rank=self.rank, alpha=self.alpha, dropout=self.dropout)

    def _factor_specs(self):
        return {"lora_a": (self.in_features, self.rank), "lora_b": (self.rank, self.units)}

    def _factor_initializer_for(self, name):
        if name == "lora_b":
            return keras.initializers.Zeros()
        bound = 1.0 / math.sqrt(self.in_features)
        return keras.initializers.RandomUniform(-bound, bound)

    def _network(self):
        operands = [
            Operand(("i", "r"), (self.in_features, self.rank)),
            Operand(("r", "o"), (self.rank, self.units)),
        ]
        return ("i",), (self.in_features,), operands, ("o",)

    # -- the computation ----------------------------------------------------------

    def linear(self, x, training=None):
        if self.kernel_hook is not None:
            # The deployed form: one matmul with the (e.g. fake-quantized) merged kernel.
            return tf.matmul(x, self.kernel_hook(self.merged_kernel()))
        y = _base_linear(self.base_layer, x)
        if self.merged:
            return y
        update = self.apply_factors(self._dropout_layer(x, training=training))
        return y + tf.cast(self.scaling, update.dtype) * update

    def delta_kernel(self) -> tf.Tensor:
        """The update (alpha / rank) · A B, shape (in, units)."""
        self._require_built("update")
        a, b = (tf.convert_to_tensor(getattr(self, name)) for name in ("lora_a", "lora_b"))
        return tf.cast(self.scaling, a.dtype) * tf.matmul(a, b)

    def merged_kernel(self) -> tf.Tensor:
        """The kernel this layer computes with: base + update (the base alone once merged)."""
        base = _base_kernel(self.base_layer)
        return base if self.merged else base + self.delta_kernel()

    def dense_kernel(self) -> tf.Tensor:
        return self.merged_kernel()

    def dense_bias(self):
        return _base_bias(self.base_layer)

    def set_kernel_hook(self, hook) -> None:
        """QAT hook: a callable applied to `merged_kernel()`; the layer then runs as x @ hook(W + ΔW).

        What the int8 model deploys is one merged matrix, so that is what gets
        fake-quantized. `None` restores the two-branch computation.
        """
        self._set_untracked("kernel_hook", hook)

    # -- merging -------------------------------------------------------------------

    def merge(self) -> None:
        """Adds the update into the base kernel in place; the layer then computes with the base alone."""
        self._require_built("kernel")
        if self.merged:
            raise ValueError(f"LoRADense '{self.name}' is already merged; unmerge() it first.")
        if not isinstance(self.base_layer, keras.layers.Dense):
            raise ValueError(
                f"LoRADense '{self.name}' wraps a {type(self.base_layer).__name__}, whose factored kernel cannot "
                "hold the update; use to_dense() or tfreparam.fold for a merged plain Dense."
            )
        kernel = self.base_layer.kernel
        self._set_untracked("_kernel_before_merge", kernel.numpy())
        kernel.assign(kernel + self.delta_kernel())
        self.merged = True

    def unmerge(self) -> None:
        """Takes the update out of the base kernel again, restoring the kernel from before `merge()`."""
        if not self.merged:
            raise ValueError(f"LoRADense '{self.name}' is not merged.")
        kernel = self.base_layer.kernel
        if self._kernel_before_merge is not None:
            kernel.assign(self._kernel_before_merge)
        else:
            # Loaded in the merged state: the kernel from before is not known exactly.
            kernel.assign(kernel - self.delta_kernel())
        self._set_untracked("_kernel_before_merge", None)
        self.merged = False

    # -- accounting ---------------------------------------------------------------

    @property
    def num_params(self):
        self._require_built("parameter count")
        return self.base_layer.count_params() + self.trainable_num_params

    @property
    def trainable_num_params(self) -> int:
        self._require_built("parameter count")
        return self.rank * (self.in_features + self.units)

    @property
    def dense_num_params(self):
        self._require_built("parameter count")
        return self.in_features * self.units + (self.units if self.base_layer.use_bias else 0)

    def flops(self, batch_shape=(1,)):
        self._require_built("FLOP count")
        base = (
            self.base_layer.flops(batch_shape)
            if isinstance(self.base_layer, ReparameterizedDense)
            else self.dense_flops(batch_shape)
        )
        if self.merged:
            return base
        rows = math.prod(tuple(batch_shape))
        return base + rows * (self._plan.flops_per_example + self.units)  # + scale-and-add

    def get_config(self):
        config = super().get_config()
        for key in _BASE_ARGUMENTS:
            config.pop(key, None)
        config.update(
            base_layer=keras.layers.serialize(self.base_layer),
            rank=self.rank,
            alpha=self.alpha,
            dropout=self.dropout,
            merged=self.merged,
        )
        return config


def _in_features(layer) -> int:
    if isinstance(layer, ReparameterizedDense):
        return layer.in_features
    return int(layer.kernel.shape[0])


def _base_kernel(layer) -> tf.Tensor:
    if isinstance(layer, ReparameterizedDense):
        return layer.dense_kernel()
    return tf.convert_to_tensor(layer.kernel)


def _base_bias(layer):
    return layer.dense_bias() if isinstance(layer, ReparameterizedDense) else layer.bias


def _base_linear(layer, x):
    """The base layer's pre-bias, pre-activation output x @ W for rank-2 `x`."""
    if isinstance(layer, ReparameterizedDense):
        return layer.linear(x)
    return tf.matmul(x, layer.kernel)

