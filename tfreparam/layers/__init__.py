"""Reparameterized drop-ins for `tf_keras.layers.Dense`."""

from tfreparam.decompose.validation import balanced_factors
from tfreparam.layers.base import ReparameterizedDense
from tfreparam.layers.contraction import ContractionPlan, Operand
from tfreparam.layers.cp import CPDense
from tfreparam.layers.kronecker import KroneckerDense
from tfreparam.layers.lora import LoRADense
from tfreparam.layers.low_rank import LowRankDense
from tfreparam.layers.tensor_train import TTDense
from tfreparam.layers.tensorized import TensorizedDense
from tfreparam.layers.tucker import BlockTermDense, TuckerDense

# Enrols the layers in TFMOT's PrunableLayer / ClusterableLayer ABCs.
from tfreparam.layers import tfmot_abcs  # noqa: E402,F401  isort: skip

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
