"""tfreparam: reparameterized dense layers and BERT compression for tf_keras.

Importing the package changes no global TensorFlow state: it sets no
environment variables, policies or logging levels.
"""

from tfreparam import layers
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

__version__ = "0.1.0"

__all__ = [
    "BlockTermDense",
    "CPDense",
    "KroneckerDense",
    "LoRADense",
    "LowRankDense",
    "ReparameterizedDense",
    "TTDense",
    "TuckerDense",
    "layers",
]
