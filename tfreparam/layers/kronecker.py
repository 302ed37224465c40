"""`KroneckerDense`: W = Σ_k A_k ⊗ B_k."""

from __future__ import annotations

import math

import tensorflow as tf
import tf_keras as keras

from tfreparam.decompose.kronecker import KRONECKER
from tfreparam.decompose.validation import balanced_factors, factors, int_tuple, positive_int
from tfreparam.layers.base import ReparameterizedDense
from tfreparam.layers.contraction import Operand


@keras.utils.register_keras_serializable(package="tfreparam")
class KroneckerDense(ReparameterizedDense):
    """Dense layer whose kernel is a sum of `num_terms` Kronecker products.

    W = Σ_k A_k ⊗ B_k with A: (num_terms, in1, out1), B: (num_terms, in2, out2),
    in = in1·in2 and units = out1·out2 (np.kron's index convention). When the
    factors are not given, each size is split into two divisors near its square
    root (e.g. 768 -> 24 x 32). Applied as two contractions of the input,
    reshaped to (N, in1, in2), with A and with B, in the cheaper order.
    `num_terms` is at most min(in1·out1, in2·out2), the rank of the
    rearranged kernel.
    """

    form = KRONECKER

    def __init__(self, units, input_factors=None, output_factors=None, num_terms=1, **kwargs):
        super().__init__(units, **kwargs)
        self.num_terms = positive_int(num_terms, "num_terms")
        if output_factors is None:
            self.output_factors = balanced_factors(self.units, 2)
        else:
            self.output_factors = factors(output_factors, self.units, "output_factors", "output", length=2)
        self.input_factors = None
        if input_factors is not None:
            self.input_factors = int_tuple(input_factors, "input_factors", length=2)
            self._configure(math.prod(self.input_factors))  # the cap is known already

    def _configure(self, in_features):
        config = self._check_sizes(in_features, input_factors=self.input_factors,
                                   output_factors=self.output_factors, num_terms=self.num_terms)
        self.input_factors = config["input_factors"]

    def _factor_specs(self):
        (in1, in2), (out1, out2) = self.input_factors, self.output_factors
        return {"a": (self.num_terms, in1, out1), "b": (self.num_terms, in2, out2)}

    def _network(self):
        (in1, in2), (out1, out2) = self.input_factors, self.output_factors
        operands = [
            Operand(("k", "i1", "o1"), (self.num_terms, in1, out1)),
            Operand(("k", "i2", "o2"), (self.num_terms, in2, out2)),
        ]
        return ("i1", "i2"), (in1, in2), operands, ("o1", "o2")

    def _init_terms(self):
        return self.num_terms, 2

    def _kernel_from_factors(self, factors):
        a, b = factors["a"], factors["b"]
        (in1, in2), (out1, out2) = self.input_factors, self.output_factors
        # kron(A, B)[(i1, i2), (o1, o2)] = A[i1, o1] * B[i2, o2], summed over terms.
        kernel = tf.einsum("kac,kbd->abcd", a, b)
        return tf.reshape(kernel, (in1 * in2, out1 * out2))

    def get_config(self):
        config = super().get_config()
        config.update(
            input_factors=None if self.input_factors is None else list(self.input_factors),
            output_factors=list(self.output_factors),
            num_terms=self.num_terms,
        )
        return config
