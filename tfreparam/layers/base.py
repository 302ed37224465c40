"""`ReparameterizedDense`: the common base of every factorized dense layer."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfreparam.decompose.validation import positive_int
from tfreparam.layers.contraction import ContractionPlan


class ReparameterizedDense(keras.layers.Layer):
    """A drop-in for `keras.layers.Dense` whose kernel is stored in factored form.

    Subclasses describe their factors as a tensor network (`_factor_specs` and
    `_network`); this base creates the weights, applies the factors to the
    input one after another in the cheapest order (see `ContractionPlan`),
    adds the bias and activation, and handles inputs of any rank
    `(..., in_features)`. The full kernel is only materialised on request by
    `dense_kernel()`, never in `call`.

    Initialisation: every factor entry is drawn from N(0, s^2) with the same
    s, chosen so that each entry of the implied kernel has the variance of a
    Glorot-uniform `Dense` kernel, 2 / (in + out). An implied kernel entry is a
    sum of `S` products of `P` factor entries, so its variance is S * s^(2P) and
    s = (2 / (in + out) / S) ** (1 / (2P)). Subclasses report S and P in
    `_init_terms`. The output variance at init then matches the `Dense` layer's.

    Size arguments (ranks, terms, blocks) are checked against the family's
    cap (`form`, see `tfreparam.decompose.form`), the same rule the
    decompositions apply. Inputs of any dtype are cast to the compute dtype,
    as `Dense` does.

    Quantization-aware training (see `tfreparam.quantization.configs`) swaps
    the factor attributes for fake-quantized tensors, as TFMOT does with
    `Dense.kernel`, and sets `between_factors` with `set_between_factors`.
    """

    # The family's numpy side: size caps and parameter counts (set by each subclass).
    form = None

    def __init__(
        self,
        units,
        activation=None,
        use_bias=True,
        bias_initializer="zeros",
        factor_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        factor_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.units = positive_int(units, "units")
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.factor_regularizer = keras.regularizers.get(factor_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.factor_constraint = keras.constraints.get(factor_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self.supports_masking = True
        self.in_features = None
        self._plan = None
        self.between_factors = None

    # -- what subclasses provide ---------------------------------------------

    def _configure(self, in_features: int) -> None:
        """Validates and resolves shape arguments once `in_features` is known."""
        raise NotImplementedError

    def _factor_specs(self) -> dict[str, tuple[int, ...]]:
        """Name -> stored shape of each factor weight, in application-neutral order."""
        raise NotImplementedError

    def _network(self):
        """(input_labels, input_shape, [Operand per factor], output_labels)."""
        raise NotImplementedError

    def _init_terms(self) -> tuple[int, int]:
        """(S, P): each kernel entry is a sum of S products of P factor entries."""
        raise NotImplementedError

    def _kernel_from_factors(self, factors: dict[str, tf.Tensor]) -> tf.Tensor:
        """The (in, units) kernel, computed directly from the factors."""
        raise NotImplementedError

    # -- Keras plumbing -----------------------------------------------------

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        in_features = input_shape[-1]
        if in_features is None:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' needs a known last input dimension, "
                f"got input shape {input_shape}."
            )
        self.in_features = int(in_features)
        self._configure(self.in_features)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: self.in_features})
        self._build_factors()
        # Each factor is also an attribute (`self.u`, `self.core_0`, ...) and
        # `call` reads the attributes, like `Dense.kernel`: TFMOT's clustering
        # wrapper swaps them for clustered tensors during its call. The dict is
        # untracked so that a swapped-out variable leaves `layer.weights`, as
        # the wrapper expects (a tracked dict would keep reporting it).
        self._untrack_factor_dict()
        for name, weight in self.factor_weights.items():
            setattr(self, name, weight)
        if self.use_bias:
            self.bias = self.add_weight(
                "bias",
                shape=(self.units,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
                dtype=self.dtype,
                trainable=True,
            )
        else:
            self.bias = None
        input_labels, input_shape_modes, operands, output_labels = self._network()
        self._plan = ContractionPlan(input_labels, input_shape_modes, operands, output_labels)
        self.built = True

    def _untrack_factor_dict(self):
        factors = dict(self.factor_weights)
        del self.factor_weights  # drops the tracked dict wrapper from the layer's children
        self._set_untracked("factor_weights", factors)

    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def _set_untracked(self, name, value):
        setattr(self, name, value)

    def _build_factors(self):
        self.factor_weights = {}
        for name, shape in self._factor_specs().items():
            self.factor_weights[name] = self.add_weight(
                name,
                shape=shape,
                initializer=self._factor_initializer_for(name),
                regularizer=self.factor_regularizer,
                constraint=self.factor_constraint,
                dtype=self.dtype,
                trainable=True,
            )

    def _factor_initializer_for(self, name):  # pylint: disable=unused-argument
        """The initializer of factor `name` (by default the same Glorot-matched normal for every factor)."""
        return self._factor_initializer()

    def _factor_initializer(self):
        return keras.initializers.RandomNormal(stddev=self.factor_init_stddev())

    def factor_init_stddev(self) -> float:
        """The per-factor std that makes the implied kernel Glorot-scaled (see class doc)."""
        terms, factors_per_term = self._init_terms()
        target_variance = 2.0 / (self.in_features + self.units)
        return float((target_variance / terms) ** (1.0 / (2 * factors_per_term)))

    def call(self, inputs, training=None):
        inputs = tf.convert_to_tensor(inputs)
        if inputs.dtype.base_dtype != self._compute_dtype_object.base_dtype:
            inputs = tf.cast(inputs, self._compute_dtype_object)  # e.g. int ids, as Dense does
        rank = inputs.shape.rank
        x = inputs if rank == 2 else tf.reshape(inputs, (-1, self.in_features))
        y = self.linear(x, training=training)
        # Bias and activation on the 2-D product, where grappler fuses them into the last MatMul.
        bias = self.dense_bias()
        if bias is not None:
            y = tf.nn.bias_add(y, bias)
        if self.activation is not None:
            y = self.activation(y)
        if rank != 2:
            y = tf.reshape(y, tf.concat([tf.shape(inputs)[:-1], [self.units]], axis=0))
            y.set_shape(inputs.shape[:-1].concatenate([self.units]))
        return y

    def linear(self, x, training=None):  # pylint: disable=unused-argument
        """`x @ W` (no bias) for `x` of shape (N, in): the factored product."""
        return self.apply_factors(x)

    def apply_factors(self, x):
        """`x @ W` for `x` of shape (N, in), without forming W.

        Reads each factor from its attribute (`self.u`, ...), so a wrapper can
        substitute quantized or clustered tensors, and applies `between_factors`
        to the running activation between the contraction steps.
        """
        return self._plan(x, [getattr(self, name) for name in self._factor_specs()], between=self.between_factors)

    def set_between_factors(self, hooks) -> None:
        """Sets callables applied to the running activation after each contraction step but the last.

        The QAT hook: fake-quants there make the int8 model keep one integer
        matmul per factor. `None` removes them.
        """
        self._require_built("contraction plan")
        hooks = None if hooks is None else tuple(hooks)
        inner = len(self._plan.steps) - 1
        if hooks is not None and len(hooks) != inner:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' runs {len(self._plan.steps)} contraction steps, so it takes "
                f"{inner} between-factor hooks; got {len(hooks)}."
            )
        self._set_untracked("between_factors", hooks)

    @property
    def contraction_steps(self) -> int:
        """How many matmuls `apply_factors` runs."""
        self._require_built("contraction plan")
        return len(self._plan.steps)

    def _check_sizes(self, in_features: int, **arguments) -> dict:
        """The resolved layer config from `form`, with errors naming this layer."""
        try:
            return self.form.config((in_features, self.units), **arguments)
        except ValueError as error:
            raise ValueError(f"{type(self).__name__} '{self.name}': {error}") from None

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)[:-1].concatenate([self.units])

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units,
            activation=keras.activations.serialize(self.activation),
            use_bias=self.use_bias,
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            factor_regularizer=keras.regularizers.serialize(self.factor_regularizer),
            bias_regularizer=keras.regularizers.serialize(self.bias_regularizer),
            activity_regularizer=keras.regularizers.serialize(self.activity_regularizer),
            factor_constraint=keras.constraints.serialize(self.factor_constraint),
            bias_constraint=keras.constraints.serialize(self.bias_constraint),
        )
        return config

    # -- TFMOT hooks: `PrunableLayer` and `ClusterableLayer` --------------------
    # Duck-typed (TFMOT accepts any layer with these methods); importing
    # `tfreparam.sparsity` or `tfreparam.clustering` also registers the class
    # as a virtual subclass of both ABCs for TFMOT's isinstance checks.

    def get_prunable_weights(self):
        """The factor weights (never the bias), for `tfmot.sparsity.keras`."""
        self._require_built("prunable weights")
        return list(self.factor_weights.values())

    def get_clusterable_weights(self):
        """(attribute name, variable) of each factor, for `tfmot.clustering.keras`."""
        self._require_built("clusterable weights")
        return list(self.factor_weights.items())

    def get_clusterable_algorithm(self, weight_name):  # pylint: disable=unused-argument
        """None: TFMOT's default element-wise nearest-centroid lookup fits any factor shape."""
        return None

    # -- the reparameterization API -------------------------------------------

    def _require_built(self, what: str):
        if not self.built:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' is not built yet, so its {what} "
                "is unknown. Call it on an input or call `build(input_shape)` first."
            )

    @property
    def factor_names(self) -> tuple[str, ...]:
        self._require_built("factor list")
        return tuple(self._factor_specs())

    def get_factors(self) -> dict[str, np.ndarray]:
        """The factor weights as numpy arrays, keyed by name."""
        self._require_built("factors")
        return {name: weight.numpy() for name, weight in self.factor_weights.items()}

    def set_factors(self, factors: dict) -> None:
        """Assigns factor weights (e.g. from a `tfreparam.decompose.Factorization`)."""
        self._require_built("factors")
        expected = self._factor_specs()
        missing = sorted(set(expected) - set(factors))
        extra = sorted(set(factors) - set(expected))
        if missing or extra:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' expects factors {sorted(expected)}; "
                f"missing {missing}, unexpected {extra}."
            )
        for name, shape in expected.items():
            value = np.asarray(factors[name])
            if tuple(value.shape) != tuple(shape):
                raise ValueError(
                    f"Factor '{name}' of {type(self).__name__} '{self.name}' has shape "
                    f"{tuple(shape)}, got an array of shape {tuple(value.shape)}."
                )
        for name in expected:
            self.factor_weights[name].assign(np.asarray(factors[name], dtype=self.dtype))

    def dense_bias(self):
        """The bias added after the kernel, or None."""
        return self.bias if self.use_bias else None

    def dense_kernel(self) -> tf.Tensor:
        """The materialised (in_features, units) kernel, in the variable dtype."""
        self._require_built("kernel")
        factors = {name: tf.convert_to_tensor(w) for name, w in self.factor_weights.items()}
        return self._kernel_from_factors(factors)

    def to_dense(self, name=None) -> keras.layers.Dense:
        """A built `keras.layers.Dense` computing the same function (the folded layer)."""
        self._require_built("kernel")
        bias = self.dense_bias()
        dense = keras.layers.Dense(
            self.units,
            activation=self.activation,
            use_bias=bias is not None,
            name=name or self.name,
            dtype=self.dtype_policy,
        )
        dense.build((None, self.in_features))
        weights = [self.dense_kernel().numpy()]
        if bias is not None:
            weights.append(tf.convert_to_tensor(bias).numpy())
        dense.set_weights(weights)
        return dense

    @property
    def num_params(self) -> int:
        """Parameters of the factors plus the bias."""
        self._require_built("parameter count")
        factors = sum(math.prod(shape) for shape in self._factor_specs().values())
        return factors + (self.units if self.use_bias else 0)

    @property
    def dense_num_params(self) -> int:
        """Parameters of the `Dense` layer this one replaces."""
        self._require_built("parameter count")
        return self.in_features * self.units + (self.units if self.use_bias else 0)

    @property
    def compression_ratio(self) -> float:
        """dense parameters / reparameterized parameters (> 1 means smaller)."""
        return self.dense_num_params / self.num_params

    def flops(self, batch_shape=(1,)) -> int:
        """FLOPs (2 per multiply-add) of one call on inputs of shape batch_shape + (in,).

        Counts the factor contractions and the bias add; not the activation.
        """
        self._require_built("FLOP count")
        rows = math.prod(tuple(batch_shape))
        per_row = self._plan.flops_per_example + (self.units if self.use_bias else 0)
        return rows * per_row

    def dense_flops(self, batch_shape=(1,)) -> int:
        """FLOPs of the equivalent `Dense` layer, counted the same way."""
        self._require_built("FLOP count")
        rows = math.prod(tuple(batch_shape))
        return rows * (2 * self.in_features * self.units + (self.units if self.use_bias else 0))
