"""`LowRankDense`: y = (x·U)·V + b."""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from tfreparam.decompose.svd import LOW_RANK
from tfreparam.decompose.validation import positive_int
from tfreparam.layers.base import ReparameterizedDense
from tfreparam.layers.contraction import Operand


@keras.utils.register_keras_serializable(package="tfreparam")
class LowRankDense(ReparameterizedDense):
    """Dense layer with a rank-`rank` kernel W = U·V, U: (in, rank), V: (rank, units).

    Costs rank·(in + units) parameters and FLOPs per row instead of in·units;
    it saves both when rank < in·units / (in + units). `rank` is at most
    min(in_features, units).
    """

    form = LOW_RANK

    def __init__(self, units, rank, **kwargs):
        super().__init__(units, **kwargs)
        self.rank = positive_int(rank, "rank")
        if self.rank > self.units:
            raise ValueError(
                f"rank={self.rank} exceeds units={self.units}; a rank above "
                f"min(in_features, units) cannot be reached. Use rank <= {self.units}."
            )

    def _configure(self, in_features):
        self._check_sizes(in_features, rank=self.rank)

    def _factor_specs(self):
        return {"u": (self.in_features, self.rank), "v": (self.rank, self.units)}

    def _network(self):
        operands = [
            Operand(("i", "r"), (self.in_features, self.rank)),
            Operand(("r", "o"), (self.rank, self.units)),
        ]
        return ("i",), (self.in_features,), operands, ("o",)

    def _init_terms(self):
        return self.rank, 2

    def _kernel_from_factors(self, factors):
        return tf.matmul(factors["u"], factors["v"])

    def get_config(self):
        config = super().get_config()
        config.update(rank=self.rank)
        return config
