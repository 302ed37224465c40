"""Clustering every registered layer type: at most n_clusters values per factor, plain stripped model."""

import numpy as np
import pytest
import tf_keras as keras

import tfreparam as tr
from tests.layers.registry import MATRIX_IN, MATRIX_UNITS, layer_params, randomize_lora
from tfreparam import clustering
from tfreparam.sparsity import tfmot

RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, MATRIX_IN)).astype("float32")
Y = RNG.normal(size=(32, MATRIX_UNITS)).astype("float32")


def _model(layer):
    inputs = keras.Input((MATRIX_IN,))
    model = keras.Model(inputs, layer(inputs))
    randomize_lora(layer)
    return model


@pytest.mark.parametrize("case", layer_params())
def test_cluster_fit_strip(case):
    layer = case.make()
    model = _model(layer)
    clustered = clustering.cluster(model, 4)
    clustered.compile(keras.optimizers.Adam(1e-2), "mse")
    clustered.fit(X, Y, epochs=1, batch_size=16, verbose=0)
    stripped = clustering.strip_clustering(clustered)
    plain = stripped.layers[1]
    assert type(plain) is type(layer)
    for name in plain.factor_names:
        assert len(np.unique(getattr(plain, name).numpy())) <= 4, name
    if isinstance(plain, tr.LoRADense):  # the frozen base is not clustered
        base = plain.base_layer.get_weights()[0]
        assert len(np.unique(base)) > 4
    np.testing.assert_allclose(stripped(X).numpy(), clustered(X).numpy(), atol=1e-5)


def test_tfmot_cluster_weights_unchanged_and_errors():
    layer = tr.KroneckerDense(MATRIX_UNITS, (4, 6), (3, 4), num_terms=2)
    model = _model(layer)
    assert isinstance(layer, tfmot.clustering.keras.ClusterableLayer)
    clustered = tfmot.clustering.keras.cluster_weights(
        model, number_of_clusters=3,
        cluster_centroids_init=tfmot.clustering.keras.CentroidInitialization.LINEAR,
    )
    plain = tfmot.clustering.keras.strip_clustering(clustered)
    for name in ("a", "b"):
        assert len(np.unique(getattr(plain.layers[1], name).numpy())) <= 3
    with pytest.raises(ValueError, match="n_clusters"):
        clustering.cluster(model, 1)
    with pytest.raises(ValueError, match="`init` must be one of"):
        clustering.cluster(model, 4, init="kmeans")
