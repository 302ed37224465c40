"""`LoRADense`: a frozen dense layer plus a trainable low-rank update (Hu et al., 2021)."""

from __future__ import annotations

import math

import tensorflow as tf
import tf_keras as keras

from tfreparam.layers import validation
from tfreparam.layers.base import ReparameterizedDense
from tfreparam.layers.contraction import Operand


@keras.utils.register_keras_serializable(package="tfreparam")
class LoRADense(ReparameterizedDense):
    """y = act(base_linear(x) + (alpha / rank) · B(A(dropout(x)))).

    Wraps a `keras.layers.Dense` or any `ReparameterizedDense` (its kernel, bias
    and activation are reused; its weights stay frozen). A: (in, rank) starts
    uniform in ±1/sqrt(in) and B: (rank, units) at zero, so at init the layer
    computes exactly what the base layer does. `merge()` folds the update into
    a plain `Dense`.
    """

    def __init__(self, base_layer, rank, alpha=None, dropout=0.0, **kwargs):
        if isinstance(base_layer, dict):
            base_layer = keras.layers.deserialize(base_layer)
        if isinstance(base_layer, LoRADense):
            raise ValueError(
                f"'{base_layer.name}' is already a LoRADense; call its merge() first "
                "to stack another adapter."
            )
        if not isinstance(base_layer, (keras.layers.Dense, ReparameterizedDense)):
            raise ValueError(
                "LoRADense wraps a tf_keras Dense or a tfreparam ReparameterizedDense, "
                f"got {type(base_layer).__name__}."
            )
        kwargs.setdefault("name", f"{base_layer.name}_lora")
        super().__init__(base_layer.units, activation=base_layer.activation, use_bias=False, **kwargs)
        self.base_layer = base_layer
        self.base_layer.trainable = False
        self.rank = validation.positive_int(rank, "rank")
        self.alpha = float(self.rank if alpha is None else alpha)
        self.dropout = float(dropout)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout}.")
        if self.rank > self.units:
            raise ValueError(f"LoRA `rank`={self.rank} exceeds `units`={self.units}.")
        self._dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

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

    def _configure(self, in_features):
        if self.rank > in_features:
            raise ValueError(
                f"LoRA `rank`={self.rank} exceeds the input size {in_features} of '{self.name}'."
            )

    def build(self, input_shape):
        if not self.base_layer.built:
            # The base only ever sees flattened (N, in) inputs in `call`.
            self.base_layer.build(tf.TensorShape([None, tf.TensorShape(input_shape)[-1]]))
        base_in = _base_in_features(self.base_layer)
        if base_in != tf.TensorShape(input_shape)[-1]:
            raise ValueError(
                f"LoRADense '{self.name}': base layer expects {base_in} input features, "
                f"got input shape {tf.TensorShape(input_shape)}."
            )
        super().build(input_shape)

    def _factor_specs(self):
        return {"lora_a": (self.in_features, self.rank), "lora_b": (self.rank, self.units)}

    def _build_factors(self):
        bound = 1.0 / self.in_features**0.5
        self.factor_weights = {
            "lora_a": self.add_weight(
                "lora_a",
                shape=(self.in_features, self.rank),
                initializer=keras.initializers.RandomUniform(-bound, bound),
                regularizer=self.factor_regularizer,
                constraint=self.factor_constraint,
                dtype=self.dtype,
            ),
            "lora_b": self.add_weight(
                "lora_b",
                shape=(self.rank, self.units),
                initializer="zeros",
                regularizer=self.factor_regularizer,
                constraint=self.factor_constraint,
                dtype=self.dtype,
            ),
        }

    def _network(self):
        operands = [
            Operand(("i", "r"), (self.in_features, self.rank)),
            Operand(("r", "o"), (self.rank, self.units)),
        ]
        return ("i",), (self.in_features,), operands, ("o",)

    def _init_terms(self):  # not used: LoRA initialises to equal its base layer
        return self.rank, 2

    def call(self, inputs, training=None):
        rank = inputs.shape.rank
        x = inputs if rank == 2 else tf.reshape(inputs, (-1, self.in_features))
        update = self.apply_factors(self._dropout_layer(x, training=training))
        y = _base_linear(self.base_layer, x) + tf.cast(self.scaling, update.dtype) * update
        if rank != 2:
            y = tf.reshape(y, tf.concat([tf.shape(inputs)[:-1], [self.units]], axis=0))
            y.set_shape(inputs.shape[:-1].concatenate([self.units]))
        if self.activation is not None:
            y = self.activation(y)
        return y

    def _kernel_from_factors(self, factors):
        base = _base_kernel(self.base_layer)
        return base + self.scaling * tf.matmul(factors["lora_a"], factors["lora_b"])

    def dense_bias(self):
        return self.base_layer.dense_bias() if isinstance(self.base_layer, ReparameterizedDense) else self.base_layer.bias

    @property
    def num_params(self):
        self._require_built("parameter count")
        base = self.base_layer.count_params()
        return base + self.rank * (self.in_features + self.units)

    @property
    def trainable_num_params(self) -> int:
        self._require_built("parameter count")
        return self.rank * (self.in_features + self.units)

    @property
    def dense_num_params(self):
        self._require_built("parameter count")
        use_bias = self.base_layer.use_bias
        return self.in_features * self.units + (self.units if use_bias else 0)

    def flops(self, batch_shape=(1,)):
        self._require_built("FLOP count")
        base = (
            self.base_layer.flops(batch_shape)
            if isinstance(self.base_layer, ReparameterizedDense)
            else self.dense_flops(batch_shape)
        )
        rows = math.prod(tuple(batch_shape))
        return base + rows * (self._plan.flops_per_example + self.units)  # + scale-and-add

    def merge(self) -> keras.layers.Dense:
        """A plain `Dense` (named like the base layer) with the update folded into its kernel."""
        return self.to_dense(name=self.base_layer.name)

    def get_config(self):
        config = keras.layers.Layer.get_config(self)
        config.update(
            base_layer=keras.layers.serialize(self.base_layer),
            rank=self.rank,
            alpha=self.alpha,
            dropout=self.dropout,
        )
        return config


def _base_in_features(layer) -> int:
    if isinstance(layer, ReparameterizedDense):
        return layer.in_features
    return int(layer.kernel.shape[0])


def _base_kernel(layer):
    if isinstance(layer, ReparameterizedDense):
        return layer.dense_kernel()
    return tf.convert_to_tensor(layer.kernel)


def _base_linear(layer, x):
    """The base layer's pre-activation output for rank-2 `x`."""
    if isinstance(layer, ReparameterizedDense):
        y = layer.apply_factors(x)
        bias = layer.dense_bias()
    else:
        y = tf.matmul(x, layer.kernel)
        bias = layer.bias
    return y if bias is None else tf.nn.bias_add(y, bias)
