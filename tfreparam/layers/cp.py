"""`CPDense`: a kernel in CANDECOMP/PARAFAC form."""

from __future__ import annotations

import math

import tensorflow as tf
import tf_keras as keras

from tfreparam.decompose.cp import CP
from tfreparam.layers.contraction import Operand
from tfreparam.layers.tensorized import TensorizedDense, einsum_letters


@keras.utils.register_keras_serializable(package="tfreparam")
class CPDense(TensorizedDense):
    """Kernel tensor = Σ_r u_1r ∘ ... ∘ u_mr over modes (in_1..in_d, out_1..out_e).

    Stored as `factor_j`: (n_j, rank). The rank axis is shared by every factor,
    so the contraction carries it as a batch axis until the last factor sums it.
    `rank` is at most the product of all mode sizes but the largest, a rank
    every tensor of these modes has.
    """

    form = CP

    def __init__(self, units, input_factors, output_factors, rank, **kwargs):
        super().__init__(units, input_factors, output_factors, **kwargs)
        self.rank = self._check_sizes(math.prod(self.input_factors), input_factors=self.input_factors,
                                      output_factors=self.output_factors, rank=rank)["rank"]

    def _factor_specs(self):
        return {f"factor_{j}": (size, self.rank) for j, size in enumerate(self.mode_sizes)}

    def _network(self):
        operands = [Operand((mode, "c"), (size, self.rank)) for mode, size in zip(self.mode_labels, self.mode_sizes)]
        return self.input_labels, self.input_factors, operands, self.output_labels

    def _init_terms(self):
        return self.rank, len(self.mode_sizes)

    def _kernel_from_factors(self, factors):
        m = len(self.mode_sizes)
        letters = einsum_letters(m + 1)
        modes, rank = letters[:m], letters[m]
        d = len(self.input_factors)
        # Input and output Khatri-Rao products separately: (in, R) @ (R, out).
        left = tf.einsum(",".join(c + rank for c in modes[:d]) + "->" + modes[:d] + rank,
                         *[factors[f"factor_{j}"] for j in range(d)])
        right = tf.einsum(",".join(c + rank for c in modes[d:]) + "->" + modes[d:] + rank,
                          *[factors[f"factor_{j}"] for j in range(d, m)])
        left = tf.reshape(left, (self.in_features, self.rank))
        right = tf.reshape(right, (self.units, self.rank))
        return tf.matmul(left, right, transpose_b=True)

    def get_config(self):
        config = super().get_config()
        config.update(rank=self.rank)
        return config
