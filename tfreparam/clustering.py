"""Weight clustering (weight sharing) with TFMOT for models holding tfreparam layers.

`cluster` wraps the layers a policy selects (default: every Dense and
tfreparam layer; each factor of a tfreparam layer is clustered on its own,
biases never) in `tfmot.clustering.keras.ClusterWeights`; fine-tune with
`model.fit` (no callback needed), then `strip_clustering` leaves a plain model
whose clustered weights hold at most `n_clusters` distinct values each.
"""

from __future__ import annotations

import tf_keras as keras

import tfreparam.sparsity.selection as selection
from tfreparam.sparsity._tfmot import ClusterWeights, tfmot
from tfreparam.sparsity.wrapping import rewrap

_INITS = {
    "kmeans_plus_plus": "KMEANS_PLUS_PLUS",
    "linear": "LINEAR",
    "density_based": "DENSITY_BASED",
    "random": "RANDOM",
}


def cluster(
    model: keras.Model,
    n_clusters: int,
    policy: selection.Policy = None,
    init: str = "kmeans_plus_plus",
    preserve_sparsity: bool = False,
) -> keras.Model:
    """A copy of `model` whose selected layers' weights are clustered into `n_clusters` centroids.

    Args:
      model: a Functional or Sequential tf_keras model (left unchanged).
      n_clusters: centroids per weight (> 1; > 2 with `preserve_sparsity`).
      policy: which layers, as in `tfreparam.sparsity.prune`.
      init: centroid initialisation: "kmeans_plus_plus", "linear",
        "density_based" or "random".
      preserve_sparsity: keep zeros at zero (for pruned-then-clustered models).
    """
    if not isinstance(n_clusters, int) or isinstance(n_clusters, bool) or n_clusters < 2:
        raise ValueError(f"`n_clusters` must be an int >= 2, got {n_clusters!r}.")
    if preserve_sparsity and n_clusters < 3:
        raise ValueError("With preserve_sparsity, `n_clusters` must be >= 3 (one centroid is pinned at 0).")
    if init not in _INITS:
        raise ValueError(f"`init` must be one of {sorted(_INITS)}, got {init!r}.")
    for layer in model.layers if isinstance(model, keras.Model) else []:
        if isinstance(layer, ClusterWeights):
            raise ValueError(f"'{model.name}' is already clustered ('{layer.name}'); strip_clustering it first.")
    chosen = selection.select_layers(model, policy)
    centroid_init = getattr(tfmot.clustering.keras.CentroidInitialization, _INITS[init])

    def wrap(layer):
        return tfmot.clustering.keras.cluster_weights(
            layer,
            number_of_clusters=n_clusters,
            cluster_centroids_init=centroid_init,
            preserve_sparsity=preserve_sparsity,
        )

    return rewrap(model, {layer.name for layer in chosen}, wrap)


def strip_clustering(model: keras.Model) -> keras.Model:
    """A plain model (no clustering wrappers) holding the clustered weights."""
    selection.check_model(model, "strip_clustering")
    return tfmot.clustering.keras.strip_clustering(model)


def cluster_scope():
    """`tfmot.clustering.keras.cluster_scope()`: load saved clustered models inside it."""
    return tfmot.clustering.keras.cluster_scope()
