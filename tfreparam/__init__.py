"""tfreparam: reparameterized dense layers and BERT compression for tf_keras.

Importing the package changes no global TensorFlow state: it sets no
environment variables, policies or logging levels.
"""

from tfreparam import decompose, layers
from tfreparam.layers import (
    BlockTermDense,
    CPDense,
    KroneckerDense,
    LoRADense,
    LowRankDense,
    ReparameterizedDense,
    TTDense,
    TuckerDense,
)
from tfreparam.report import CompressionReport, report
from tfreparam.specs import CP, Keep, Kronecker, LowRank, TensorTrain, Tucker
from tfreparam.surgery import fold, reparameterize

__version__ = "0.1.0"

__all__ = [
    "BlockTermDense",
    "CP",
    "CPDense",
    "CompressionReport",
    "Keep",
    "Kronecker",
    "KroneckerDense",
    "LoRADense",
    "LowRank",
    "LowRankDense",
    "ReparameterizedDense",
    "TTDense",
    "TensorTrain",
    "Tucker",
    "TuckerDense",
    "decompose",
    "fold",
    "layers",
    "report",
    "reparameterize",
]
