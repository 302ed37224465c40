"""Imports TFMOT without side effects and enrolls tfreparam's layers in its ABCs.

`tensorflow_model_optimization` sets `os.environ["TF_USE_LEGACY_KERAS"] = "1"`
when imported. tfreparam promises not to touch global state, so the variable
is restored right after the import (TFMOT has already bound `tf_keras` by
then, so it keeps working).
"""

from __future__ import annotations

import os

_ENV_KEY = "TF_USE_LEGACY_KERAS"
_before = os.environ.get(_ENV_KEY)
try:
    import tensorflow_model_optimization as tfmot  # noqa: E402
finally:
    if _before is None:
        os.environ.pop(_ENV_KEY, None)
    else:
        os.environ[_ENV_KEY] = _before

from tensorflow_model_optimization.python.core.clustering.keras import (  # noqa: E402
    cluster_wrapper,
    clusterable_layer,
)
from tensorflow_model_optimization.python.core.sparsity.keras import (  # noqa: E402
    prunable_layer,
    pruning_wrapper,
)

from tfreparam.layers import ReparameterizedDense  # noqa: E402

# TFMOT's pruning wrapper accepts any layer with `get_prunable_weights`, but its
# clustering wrapper checks `isinstance(layer, ClusterableLayer)`.
prunable_layer.PrunableLayer.register(ReparameterizedDense)
clusterable_layer.ClusterableLayer.register(ReparameterizedDense)

PruneLowMagnitude = pruning_wrapper.PruneLowMagnitude
ClusterWeights = cluster_wrapper.ClusterWeights

__all__ = ["ClusterWeights", "PruneLowMagnitude", "tfmot"]
