"""Enrols every `ReparameterizedDense` in TFMOT's `PrunableLayer` and `ClusterableLayer` ABCs.

TFMOT's pruning wrapper duck-types `get_prunable_weights`, but its clustering
wrapper checks `isinstance(layer, ClusterableLayer)`; registering here, when
the layers are imported, makes plain `tfmot` calls accept our layers however
tfreparam was imported. Importing TFMOT sets `TF_USE_LEGACY_KERAS=1` in the
process environment; tfreparam changes no global state, so the variable is
restored right after (TFMOT has bound `tf_keras` by then and keeps working).
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

from tensorflow_model_optimization.python.core.clustering.keras import clusterable_layer  # noqa: E402
from tensorflow_model_optimization.python.core.sparsity.keras import prunable_layer  # noqa: E402

from tfreparam.layers.base import ReparameterizedDense  # noqa: E402

prunable_layer.PrunableLayer.register(ReparameterizedDense)
clusterable_layer.ClusterableLayer.register(ReparameterizedDense)

__all__ = ["tfmot"]
