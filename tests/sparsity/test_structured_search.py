"""Output-sensitivity importance (vs finite differences) and the latency-budget structure search (vs brute force)."""

import dataclasses
import itertools

import numpy as np
import pytest
import tf_keras as keras

import bert
from tfreparam.sparsity import structured

CONFIG = dataclasses.replace(
    bert.BertConfig.named("tiny"), vocab_size=40, hidden_size=8, num_layers=2, num_heads=2,
    intermediate_size=6, max_position_embeddings=8, hidden_dropout=0.0, attention_dropout=0.0)
SEQ = 5
HEAD = CONFIG.hidden_size // CONFIG.num_heads
RNG = np.random.default_rng(7)
MASK = np.ones((2, SEQ), "int32")
MASK[1, 3:] = 0
INPUTS = {"input_word_ids": RNG.integers(0, 40, (2, SEQ)).astype("int32"), "input_mask": MASK,
          "input_type_ids": np.zeros((2, SEQ), "int32")}


@pytest.fixture(scope="module")
def encoder():
    keras.utils.set_random_seed(11)
    return bert.build_encoder(CONFIG, output_hidden_states=True)


def _squared_jacobian(encoder, layer_name, rows, target, eps=1e-3):
    """Σ over output coordinates of (∂y/∂ξ)², ξ scaling `rows` of `layer_name`'s kernel: central differences."""
    layer = encoder.get_layer(layer_name)
    kernel = layer.kernel.numpy()
    outputs = []
    for sign in (1, -1):
        scaled = kernel.copy()
        scaled[rows] *= 1 + sign * eps
        layer.kernel.assign(scaled)
        out = encoder(INPUTS, training=False)
        mask = MASK[..., None].astype(np.float64)
        if target == "sequence":
            y = out["sequence_output"].numpy() * mask
        elif target == "embedding":
            y = (out["sequence_output"].numpy() * mask).sum(1) / mask.sum(1)
        else:
            y = np.stack([h.numpy() * mask for h in out["hidden_states"][1:]])
        outputs.append(y.astype(np.float64))
    layer.kernel.assign(kernel)
    return float(np.sum(((outputs[0] - outputs[1]) / (2 * eps)) ** 2))


@pytest.mark.parametrize("target", ["sequence", "embedding", "hidden"])
def test_output_sensitivity_estimates_the_squared_output_jacobian(encoder, target):
    heads, neurons = structured.output_sensitivity(encoder, [INPUTS], target=target, draws=600, seed=1)
    assert sorted(heads) == [0, 1] and heads[0].shape == (2,) and neurons[1].shape == (6,)
    estimated, exact = [], []
    for block in range(2):
        for h in range(2):
            estimated.append(heads[block][h])
            exact.append(_squared_jacobian(encoder, f"layer_{block}/attention/output",
                                           slice(h * HEAD, (h + 1) * HEAD), target))
        for n in range(6):
            estimated.append(neurons[block][n])
            exact.append(_squared_jacobian(encoder, f"layer_{block}/ffn/output", [n], target))
    estimated, exact = np.array(estimated), np.array(exact)
    # 600 Gaussian draws: each estimate is within ~sqrt(2/600) = 6 % (one sigma) of its expectation.
    np.testing.assert_allclose(estimated, exact, rtol=0.3)
    assert np.corrcoef(estimated, exact)[0, 1] > 0.97


def test_output_sensitivity_is_zero_for_a_silenced_unit_and_reproducible(encoder):
    model = keras.models.clone_model(encoder)
    model.set_weights(encoder.get_weights())
    kernel = model.get_layer("layer_1/ffn/output").kernel.numpy()
    kernel[2] = 0
    model.get_layer("layer_1/ffn/output").kernel.assign(kernel)
    first = structured.output_sensitivity(model, [INPUTS], draws=2, seed=3)
    again = structured.output_sensitivity(model, [INPUTS], draws=2, seed=3)
    assert first[1][1][2] == 0 and np.all(first[1][1][[0, 1, 3, 4, 5]] > 0)
    for a, b in zip(first, again):
        for block in a:
            np.testing.assert_array_equal(a[block], b[block])


def test_output_sensitivity_checks_its_arguments(encoder):
    with pytest.raises(ValueError, match="target must be one of"):
        structured.output_sensitivity(encoder, [INPUTS], target="logits")
    plain = bert.build_encoder(CONFIG)
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        structured.output_sensitivity(plain, [INPUTS], target="hidden")
    with pytest.raises(ValueError, match="no batches"):
        structured.output_sensitivity(encoder, [])


def _brute_force(heads, neurons, head_cost, neuron_cost, budget, min_heads=1):
    """The best-scoring feasible choice over every subset (`min_heads` heads and one neuron per block at least)."""
    def subsets(scores, floor=1):
        per_block = [[c for r in range(floor, len(s) + 1) for c in itertools.combinations(range(len(s)), r)]
                     for s in scores.values()]
        return list(itertools.product(*per_block))

    best = None
    for hs in subsets(heads, min_heads):
        for ns in subsets(neurons):
            cost = head_cost * sum(map(len, hs)) + neuron_cost * sum(map(len, ns))
            if cost > budget + 1e-9:
                continue
            value = sum(heads[b][list(h)].sum() for b, h in zip(heads, hs)) + sum(
                neurons[b][list(n)].sum() for b, n in zip(neurons, ns))
            if best is None or value > best[0] + 1e-12:
                best = (value, hs, ns)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_search_structure_finds_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    heads = {0: rng.random(3), 1: rng.random(3)}
    neurons = {0: rng.random(4) * 0.5, 1: rng.random(4) * 0.5}
    head_cost, neuron_cost = 1.0 + rng.random(), 0.4 + 0.3 * rng.random()
    budget = float(rng.uniform(2 * (head_cost + neuron_cost), 6 * head_cost + 8 * neuron_cost))
    found = structured.search_structure(heads, neurons, head_cost, neuron_cost, budget)
    value, _, _ = _brute_force(heads, neurons, head_cost, neuron_cost, budget)
    kept = sum(heads[b][found.kept_heads[b]].sum() + neurons[b][found.kept_neurons[b]].sum() for b in heads)
    assert kept == pytest.approx(value)
    assert found.cost <= budget + 1e-9
    total = sum(a.sum() for a in heads.values()) + sum(a.sum() for a in neurons.values())
    assert found.retained_score == pytest.approx(value / total)
    for b in heads:
        assert sorted(found.kept_heads[b] + found.removed_heads[b]) == [0, 1, 2]
        assert sorted(found.kept_neurons[b] + found.removed_neurons[b]) == [0, 1, 2, 3]
        assert found.kept_heads[b] and found.kept_neurons[b]


@pytest.mark.parametrize("seed", range(4))
def test_a_head_floor_keeps_that_many_heads_per_block_and_the_best_rest(seed):
    rng = np.random.default_rng(10 + seed)
    heads = {0: rng.random(4) ** 3, 1: rng.random(4)}  # block 0's heads score low: a free search drops them
    neurons = {0: rng.random(3), 1: rng.random(3)}
    head_cost, neuron_cost = 1.0, 0.5
    budget = float(rng.uniform(4 * head_cost + 2 * neuron_cost, 6 * head_cost + 4 * neuron_cost))
    found = structured.search_structure(heads, neurons, head_cost, neuron_cost, budget, min_heads=2)
    value, _, _ = _brute_force(heads, neurons, head_cost, neuron_cost, budget, min_heads=2)
    kept = sum(heads[b][found.kept_heads[b]].sum() + neurons[b][found.kept_neurons[b]].sum() for b in heads)
    assert kept == pytest.approx(value)
    assert all(len(found.kept_heads[b]) >= 2 for b in heads) and found.cost <= budget + 1e-9


def test_search_structure_refuses_an_impossible_budget():
    scores = {0: np.ones(2)}
    with pytest.raises(ValueError, match="cannot keep one head and one neuron per block"):
        structured.search_structure(scores, scores, 1.0, 1.0, 1.5)
    with pytest.raises(ValueError, match="same blocks"):
        structured.search_structure(scores, {1: np.ones(2)}, 1.0, 1.0, 5.0)
    with pytest.raises(ValueError, match="non-negative"):
        structured.search_structure({0: np.array([-1.0, 1.0])}, scores, 1.0, 1.0, 5.0)
    with pytest.raises(ValueError, match="cannot keep 2 heads and one neuron per block.*or a smaller min_heads"):
        structured.search_structure(scores, scores, 1.0, 1.0, 2.5, min_heads=2)
    with pytest.raises(ValueError, match="min_heads must be between 1 and the heads of a block \\(2\\)"):
        structured.search_structure(scores, scores, 1.0, 1.0, 5.0, min_heads=3)
