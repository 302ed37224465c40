"""Reparameterized drop-ins for `tf_keras.layers.Dense`."""

from tfreparam.layers.base import ReparameterizedDense
from tfreparam.layers.contraction import ContractionPlan, Operand
from tfreparam.layers.cp import CPDense
from tfreparam.layers.kronecker import KroneckerDense
from tfreparam.layers.lora import LoRADense
from tfreparam.layers.low_rank import LowRankDense
from tfreparam.layers.tensor_train import TTDense
from tfreparam.layers.tensorized import TensorizedDense
from tfreparam.layers.tucker import BlockTermDense, TuckerDense
from tfreparam.layers.validation import balanced_factors

__all__ = [
    "BlockTermDense",
    "CPDense",
    "ContractionPlan",
    "KroneckerDense",
    "LoRADense",
    "LowRankDense",
    "Operand",
    "ReparameterizedDense",
    "TTDense",
    "TensorizedDense",
    "TuckerDense",
    "balanced_factors",
]
