"""Unit Scaling (Blake, Orr & Luschi, ICML 2023): ops and layers with unit-variance tensors at init.

`ops` holds the scaled primitives (`matmul`, `linear`, `low_rank`,
`embedding`, `residual_add`, `attention`, `softmax_cross_entropy`, and the
`scaled` / `scale_gradient` building blocks), each a `tf.custom_gradient`
with separate forward and backward scales; `layers` the Keras layers built
on them. `bert.BertConfig(unit_scaled=True)` builds a unit-scaled BERT.
"""

from tfreparam.unit_scaling import ops
from tfreparam.unit_scaling.layers import ResidualAdd, UnitScaledDense, UnitScaledEmbedding, UnitScaledLowRankDense
from tfreparam.unit_scaling.ops import softmax_cross_entropy

__all__ = [
    "ResidualAdd",
    "UnitScaledDense",
    "UnitScaledEmbedding",
    "UnitScaledLowRankDense",
    "ops",
    "softmax_cross_entropy",
]
