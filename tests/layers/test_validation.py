"""Impossible configurations fail early with a message that names the numbers."""

import re

import numpy as np
import pytest
import tf_keras as keras

import tfreparam as tr

CONSTRUCTION_ERRORS = [
    (lambda: tr.LowRankDense(0, rank=1), "`units` must be a positive integer, got 0"),
    (lambda: tr.LowRankDense(8, rank=0), "`rank` must be a positive integer, got 0"),
    (lambda: tr.LowRankDense(8, rank=2.5), "`rank` must be a positive integer, got 2.5"),
    (lambda: tr.LowRankDense(8, rank=True), "`rank` must be a positive integer, got True"),
    (lambda: tr.LowRankDense(8, rank=9), "`rank`=9 exceeds `units`=8"),
    (lambda: tr.KroneckerDense(12, output_factors=(3, 5)), "multiply to 15, but the output size is 12"),
    (lambda: tr.KroneckerDense(12, input_factors=(2, 3, 4)), "`input_factors` must have 2 entries, got 3"),
    (lambda: tr.KroneckerDense(12, num_terms=-1), "`num_terms` must be a positive integer, got -1"),
    (lambda: tr.TTDense(12, (24,), (12,), ranks=2), "TTDense needs at least 2 cores"),
    (lambda: tr.TTDense(12, (2, 3, 4), (3, 4), ranks=2), "need the same length"),
    (lambda: tr.TTDense(12, (2, 3, 4), (3, 2, 2), ranks=(2,)), "`ranks` must have 2 entries, got 1"),
    (lambda: tr.TTDense(12, (2, 3, 4), (3, 2, 2), ranks=(2, 100)), r"ranks\[1\]=100 > 8"),
    (lambda: tr.TTDense(12, None, (3, 4), ranks=2), "needs `input_factors` and `output_factors`"),
    (lambda: tr.TuckerDense(12, (4, 6), (3, 4), ranks=(5, 2, 2, 2)), r"ranks\[0\]=5 > 4"),
    (lambda: tr.TuckerDense(12, (4, 6), (3, 4), ranks=(2, 2)), "`ranks` must have 4 entries, got 2"),
    (lambda: tr.CPDense(12, (4, 6), (3, 4), rank=0), "`rank` must be a positive integer, got 0"),
    (lambda: tr.CPDense(12, (4, 6), (3, "a"), rank=2), r"`output_factors\[1\]` must be a positive integer, got 'a'"),
    (lambda: tr.BlockTermDense(12, (4, 6), (3, 4), ranks=2, num_blocks=0), "`num_blocks` must be a positive integer, got 0"),
    (lambda: tr.LoRADense(keras.layers.Conv1D(4, 3), rank=2), "got Conv1D"),
    (lambda: tr.LoRADense(tr.LoRADense(keras.layers.Dense(4), rank=2), rank=2), "call its merge\\(\\) first"),
    (lambda: tr.LoRADense(keras.layers.Dense(4), rank=2, dropout=1.5), r"`dropout` must be in \[0, 1\), got 1.5"),
    (lambda: tr.LoRADense(keras.layers.Dense(4), rank=5), "LoRA `rank`=5 exceeds `units`=4"),
]


@pytest.mark.parametrize("make, message", CONSTRUCTION_ERRORS)
def test_construction_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


BUILD_ERRORS = [
    (lambda: tr.LowRankDense(8, rank=6), (None, 4), "`rank`=6 exceeds the input size 4"),
    (lambda: tr.KroneckerDense(12, input_factors=(4, 5)), (None, 24), "multiply to 20, but the input size is 24"),
    (lambda: tr.TTDense(12, (2, 3, 5), (3, 2, 2), ranks=2), (None, 24), "multiply to 30, but the input size is 24"),
    (lambda: tr.LowRankDense(8, rank=2), (None, None), "needs a known last input dimension"),
    (lambda: tr.LoRADense(_built_dense(10, 4), rank=2), (None, 12), "base layer expects 10 input features"),
]


def _built_dense(n_in, units):
    dense = keras.layers.Dense(units)
    dense.build((None, n_in))
    return dense


@pytest.mark.parametrize("make, shape, message", BUILD_ERRORS)
def test_build_errors(make, shape, message):
    with pytest.raises(ValueError, match=message):
        make().build(shape)


def test_wrong_feature_size_after_build_names_the_axis():
    layer = tr.LowRankDense(8, rank=2)
    layer(np.zeros((1, 6), "float32"))
    with pytest.raises(ValueError, match=re.escape("expected axis -1 of input shape to have value 6")):
        layer(np.zeros((1, 5), "float32"))


def test_unbuilt_layer_says_so():
    with pytest.raises(ValueError, match="is not built yet, so its kernel is unknown"):
        tr.LowRankDense(8, rank=2).dense_kernel()


def test_set_factors_checks_names_and_shapes():
    layer = tr.LowRankDense(8, rank=2)
    layer.build((None, 6))
    with pytest.raises(ValueError, match=r"missing \['v'\], unexpected \['w'\]"):
        layer.set_factors({"u": np.zeros((6, 2)), "w": np.zeros((2, 8))})
    with pytest.raises(ValueError, match=r"Factor 'v' .* has shape \(2, 8\), got an array of shape \(8, 2\)"):
        layer.set_factors({"u": np.zeros((6, 2)), "v": np.zeros((8, 2))})
