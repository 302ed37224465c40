"""`tfreparam.allocation`: greedy rank allocation under one budget, and measured sensitivity."""

import itertools

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfreparam import allocation
from tfreparam.allocation import LayerSpectrum, allocate_ranks, allocation_params, weighted_error


def _spectrum(rng, n, decay):
    return np.sort(np.exp(-decay * np.arange(n)) * rng.uniform(0.5, 1.5, n))[::-1]


def test_budget_is_respected_and_nothing_more_fits():
    rng = np.random.default_rng(0)
    layers = [LayerSpectrum("a", 40, 40, _spectrum(rng, 40, 0.05)), LayerSpectrum("b", 40, 160, _spectrum(rng, 40, 0.2)),
              LayerSpectrum("c", 160, 40, _spectrum(rng, 40, 0.01), sensitivity=3.0)]
    for budget in (0.1, 0.25, 0.5, 0.75, 5_000):
        limit = allocation.total_budget(layers, budget)
        ranks = allocate_ranks(layers, budget)
        spent = allocation_params(layers, ranks)
        assert spent <= limit
        for layer in layers:  # no layer below its cap could still grow
            if ranks[layer.name] < layer.max_rank:
                assert spent + layer.cost_per_rank > limit
    assert allocation.total_budget(layers, 0.5) == (40 * 40 + 40 * 160 + 160 * 40) // 2


def test_equal_costs_give_the_brute_force_optimum():
    rng = np.random.default_rng(1)
    for trial in range(5):
        layers = [LayerSpectrum(f"l{i}", 8, 8, _spectrum(rng, 8, rng.uniform(0, 0.8)),
                                sensitivity=float(rng.uniform(0.1, 2.0))) for i in range(3)]
        budget = int(rng.integers(3, 12)) * 16
        ranks = allocate_ranks(layers, budget)
        best = min(
            weighted_error(layers, dict(zip("l0 l1 l2".split(), combo)))
            for combo in itertools.product(range(1, 5), repeat=3)
            if sum(combo) * 16 <= budget
        )
        assert weighted_error(layers, ranks) == pytest.approx(best, rel=1e-12)


def test_rank_goes_where_the_spectrum_and_sensitivity_say():
    flat = np.ones(32)
    steep = np.exp(-0.5 * np.arange(32))
    layers = [LayerSpectrum("flat", 32, 32, flat), LayerSpectrum("steep", 32, 32, steep)]
    ranks = allocate_ranks(layers, 0.5)
    assert ranks == {"flat": 12, "steep": 4}  # σ² shares of steep's 5th rank (1.2 %) < flat's 1/32
    ignored = [LayerSpectrum("flat", 32, 32, flat, sensitivity=0.0), LayerSpectrum("other", 32, 32, flat)]
    ranks = allocate_ranks(ignored, 0.25)
    assert ranks == {"flat": 1, "other": 7}  # 512 parameters = 8 ranks of 64


def test_bad_inputs_fail_clearly():
    layer = LayerSpectrum("a", 10, 10, np.linspace(2, 1, 10))
    with pytest.raises(ValueError, match="below the 20 that the minimum ranks already need"):
        allocate_ranks([layer], 10)
    with pytest.raises(ValueError, match="decreasing order"):
        LayerSpectrum("b", 10, 10, np.linspace(1, 2, 10))
    with pytest.raises(ValueError, match="must be in \\(0, 1\\]"):
        allocate_ranks([layer], 1.5)
    with pytest.raises(ValueError, match="unique"):
        allocate_ranks([layer, layer], 0.5)
    with pytest.raises(ValueError, match="sensitivity must be a finite number >= 0"):
        LayerSpectrum("c", 10, 10, np.ones(10), sensitivity=-1.0)


def test_sensitivity_of_a_single_linear_layer_is_one():
    # Model output = the layer's output, so the final relative squared error IS the layer's.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10,))
    model = keras.Model(inputs, keras.layers.Dense(6, use_bias=False, name="only")(inputs))
    x = np.random.default_rng(0).normal(size=(64, 10)).astype("float32")
    kernel = model.get_layer("only").kernel.numpy().astype(np.float64)
    u, s, vt = np.linalg.svd(kernel, full_matrices=False)
    approx = (u[:, :3] * s[:3]) @ vt[:3]
    xx = x.astype(np.float64)
    relative = np.linalg.norm(xx @ (kernel - approx)) / np.linalg.norm(xx @ kernel)
    sensitivity = allocation.measure_sensitivity(model, {"only": approx}, [x[:32], x[32:]], {"only": relative})
    assert sensitivity["only"] == pytest.approx(1.0, rel=1e-4)
    np.testing.assert_array_equal(model.get_layer("only").kernel.numpy(), kernel.astype("float32"))  # restored
