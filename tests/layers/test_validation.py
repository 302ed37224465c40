"""Impossible configurations fail early with a message that names the numbers."""

import re

import numpy as np
import pytest
import tf_keras as keras

import tfreparam as tr

CONSTRUCTION_ERRORS = [
    (lambda: tr.LowRankDense(0, rank=1), "units must be a positive integer; got 0"),
    (lambda: tr.LowRankDense(8, rank=0), "rank must be a positive integer; got 0"),
    (lambda: tr.LowRankDense(8, rank=2.5), "rank must be a positive integer; got 2.5"),
    (lambda: tr.LowRankDense(8, rank=True), "rank must be a positive integer; got True"),
    (lambda: tr.LowRankDense(8, rank=9), "rank=9 exceeds units=8"),
    (lambda: tr.KroneckerDense(12, output_factors=(3, 5)), r"output_factors=\(3, 5\) multiply to 15, but W has 12 output"),
    (lambda: tr.KroneckerDense(12, input_factors=(2, 3, 4)), "input_factors must have exactly 2 entries; got 3"),
    (lambda: tr.KroneckerDense(12, num_terms=-1), "num_terms must be a positive integer; got -1"),
    (lambda: tr.TTDense(12, (24,), (12,), ranks=2), "TTDense needs at least 2 cores"),
    (lambda: tr.TTDense(12, (2, 3, 4), (3, 4), ranks=2), "need the same length"),
    (lambda: tr.TTDense(12, (2, 3, 4), (3, 2, 2), ranks=(2,)), "ranks must be an int or a tuple of 2 ranks; got 1"),
    (lambda: tr.TTDense(12, (2, 3, 4), (3, 2, 2), ranks=(2, 100)), r"ranks\[1\]=100 > 8"),
    (lambda: tr.TTDense(12, None, (3, 4), ranks=2), "needs input_factors and output_factors"),
    (lambda: tr.TuckerDense(12, (4, 6), (3, 4), ranks=(5, 2, 2, 2)), r"ranks\[0\]=5 > 4"),
    (lambda: tr.TuckerDense(12, (4, 6), (3, 4), ranks=(2, 2)), "ranks must be an int or a tuple of 4 ranks; got 2"),
    (lambda: tr.CPDense(12, (4, 6), (3, 4), rank=0), "rank must be a positive integer; got 0"),
    (lambda: tr.CPDense(12, (4, 6), (3, "a"), rank=2), r"output_factors\[1\] must be a positive integer; got 'a'"),
    (lambda: tr.BlockTermDense(12, (4, 6), (3, 4), ranks=2, num_blocks=0), "num_blocks must be a positive integer; got 0"),
    (lambda: tr.LoRADense(keras.layers.Conv1D(4, 3), rank=2), "got Conv1D"),
    (lambda: tr.LoRADense(tr.LoRADense(keras.layers.Dense(4), rank=2), rank=2), "is already a LoRADense; fold it"),
    (lambda: tr.LoRADense(keras.layers.Dense(4), rank=2, dropout=1.5), r"dropout must be in \[0, 1\); got 1.5"),
    (lambda: tr.LoRADense(keras.layers.Dense(4), rank=5), "rank=5 exceeds units=4 of the base layer"),
]


@pytest.mark.parametrize("make, message", CONSTRUCTION_ERRORS)
def test_construction_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


BUILD_ERRORS = [
    (lambda: tr.LowRankDense(8, rank=6), (None, 4), r"rank=6 exceeds its maximum 4 \(min\(in_features, out_features\)"),
    (lambda: tr.KroneckerDense(12, input_factors=(4, 5)), (None, 24), "multiply to 20, but W has 24 input features"),
    (lambda: tr.TTDense(12, (2, 3, 5), (3, 2, 2), ranks=2), (None, 24), "multiply to 30, but W has 24 input features"),
    (lambda: tr.LowRankDense(8, rank=2), (None, None), "needs a known last input dimension"),
    (lambda: tr.LoRADense(_built_dense(10, 4), rank=2), (None, 12), "base layer expects 10 input features"),
    (lambda: tr.LoRADense(keras.layers.Dense(8), rank=6), (None, 4), r"rank=6 exceeds its maximum 4"),
]


# Issue 16.6: every size argument is capped where the form can already write every kernel exactly
# (it used to be accepted for Kronecker and CP, up to 137x the parameters of the Dense replaced).
SIZE_CAPS = {
    # 24 -> 12 with modes (4, 6) x (3, 4): min(4*3, 6*4) = 12 terms.
    "kronecker": (lambda: tr.KroneckerDense(12, (4, 6), (3, 4), num_terms=1000), r"num_terms=1000 exceeds its maximum 12"),
    # The default input split is only known at build.
    "kronecker_at_build": (lambda: tr.KroneckerDense(12, output_factors=(3, 4), num_terms=13).build((None, 24)),
                           r"num_terms=13 exceeds its maximum 12"),
    # Modes (4, 6, 3, 4): every tensor has CP rank <= 4*3*4 = 48 (all modes but the largest).
    "cp": (lambda: tr.CPDense(12, (4, 6), (3, 4), rank=10000), r"rank=10000 exceeds its maximum 48"),
    "cp_just_over": (lambda: tr.CPDense(12, (4, 6), (3, 4), rank=49), r"rank=49 exceeds its maximum 48"),
    # One block of full ranks already writes every kernel.
    "block_term": (lambda: tr.BlockTermDense(12, (4, 6), (3, 4), ranks=(4, 6, 3, 4), num_blocks=2),
                   r"num_blocks=2 exceeds its maximum 1"),
    "tucker": (lambda: tr.TuckerDense(12, (4, 6), (3, 4), ranks=(4, 7, 3, 4)), r"ranks\[1\]=7 > 6"),
    "tensor_train": (lambda: tr.TTDense(12, (2, 3, 4), (3, 2, 2), ranks=(7, 2)), r"ranks\[0\]=7 > 6"),
    "low_rank": (lambda: tr.LowRankDense(12, rank=13), r"rank=13 exceeds units=12"),
    "lora": (lambda: tr.LoRADense(keras.layers.Dense(12), rank=13), r"rank=13 exceeds units=12"),
}


@pytest.mark.parametrize("name", sorted(SIZE_CAPS))
def test_sizes_past_the_algebraic_maximum_are_refused(name):
    make, message = SIZE_CAPS[name]
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("make", [
    lambda: tr.KroneckerDense(12, (4, 6), (3, 4), num_terms=12),
    lambda: tr.CPDense(12, (4, 6), (3, 4), rank=48),
    lambda: tr.BlockTermDense(12, (4, 6), (3, 4), ranks=(4, 6, 3, 4), num_blocks=1),
    lambda: tr.BlockTermDense(12, (4, 6), (3, 4), ranks=(2, 3, 3, 4), num_blocks=4),
], ids=["kronecker", "cp", "block_term_full", "block_term_slabs"])
def test_sizes_at_the_maximum_are_accepted(make):
    layer = make()
    layer.build((None, 24))
    assert layer.built


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
