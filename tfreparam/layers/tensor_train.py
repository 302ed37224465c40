"""`TTDense`: a tensor-train (matrix product operator) kernel."""

from __future__ import annotations

import math

import tensorflow as tf
import tf_keras as keras

from tfreparam.decompose.tensor_train import TENSOR_TRAIN
from tfreparam.layers.contraction import Operand
from tfreparam.layers.tensorized import TensorizedDense


@keras.utils.register_keras_serializable(package="tfreparam")
class TTDense(TensorizedDense):
    """Dense layer whose kernel is a tensor train (Novikov et al., 2015).

    Core k has shape (r_k, in_k, out_k, r_{k+1}) with r_0 = r_d = 1, and
    W[(i_1..i_d), (o_1..o_d)] = G_1[:, i_1, o_1, :] · ... · G_d[:, i_d, o_d, :].
    `ranks` is an int (a ceiling for every bond, capped at the largest useful
    rank of each bond) or a tuple of the d - 1 inner ranks. The cores are
    applied to the input one by one, left-to-right or right-to-left,
    whichever costs fewer FLOPs.
    """

    form = TENSOR_TRAIN

    def __init__(self, units, input_factors, output_factors, ranks, **kwargs):
        super().__init__(units, input_factors, output_factors, **kwargs)
        if len(self.input_factors) < 2:
            raise ValueError(f"TTDense needs at least 2 cores, got input_factors={self.input_factors}.")
        config = self._check_sizes(math.prod(self.input_factors), input_factors=self.input_factors,
                                   output_factors=self.output_factors, ranks=ranks)
        self.ranks = config["ranks"]

    @property
    def num_cores(self) -> int:
        return len(self.input_factors)

    @property
    def bond_ranks(self) -> tuple[int, ...]:
        return (1,) + self.ranks + (1,)

    def _factor_specs(self):
        r = self.bond_ranks
        return {
            f"core_{k}": (r[k], self.input_factors[k], self.output_factors[k], r[k + 1])
            for k in range(self.num_cores)
        }

    def _network(self):
        operands = []
        r = self.bond_ranks
        for k in range(self.num_cores):
            labels = (f"r{k}", f"i{k}", f"o{k}", f"r{k + 1}")
            shape = (r[k], self.input_factors[k], self.output_factors[k], r[k + 1])
            # The boundary ranks are 1: drop them so no axis dangles.
            keep = [j for j in range(4) if not (j == 0 and k == 0) and not (j == 3 and k == self.num_cores - 1)]
            operands.append(Operand(tuple(labels[j] for j in keep), tuple(shape[j] for j in keep)))
        return self.input_labels, self.input_factors, operands, self.output_labels

    def _init_terms(self):
        return math.prod(self.ranks), self.num_cores

    def _kernel_from_factors(self, factors):
        # Grow (rows, cols, bond) one core at a time; rows/cols stay row-major.
        result = factors["core_0"][0]
        for k in range(1, self.num_cores):
            core = factors[f"core_{k}"]
            result = tf.einsum("abr,rcds->acbds", result, core)
            rows = result.shape[0] * result.shape[1]
            cols = result.shape[2] * result.shape[3]
            result = tf.reshape(result, (rows, cols, core.shape[-1]))
        return tf.reshape(result, (self.in_features, self.units))

    def get_config(self):
        config = super().get_config()
        config.update(ranks=list(self.ranks))
        return config
