"""`recipes.latency` (non-negative fit, interleaved timing) and the layer-drop depth choice of `recipes.baselines`."""

import numpy as np
import pytest

from recipes import baselines, latency


def test_fit_recovers_planted_nonnegative_coefficients():
    structures = {"original": (6, 72, 9216), "a": (6, 36, 4608), "b": (6, 18, 9216), "c": (6, 72, 2304),
                  "d": (3, 36, 4608)}
    truth = np.array([0.1, 0.02, 0.004, 3e-5])
    measured = {n: float(truth @ np.array([1.0, *s])) for n, s in structures.items()}
    fit = latency.fit_latency_model(measured, structures)
    np.testing.assert_allclose([fit.constant, fit.per_block, fit.per_head, fit.per_neuron], truth, rtol=1e-6)
    for point in fit.points:
        assert point["predicted"] == pytest.approx(point["measured"])
    assert fit.ratio(6, 72, 9216) == pytest.approx(measured["original"])
    assert latency.LatencyModel.from_dict(fit.to_dict()) == fit


def test_fit_separates_a_heads_fixed_cost_from_its_width_with_a_narrowed_structure():
    structures = {"original": (6, 72, 9216), "a": (6, 36, 4608), "b": (6, 18, 9216), "c": (6, 72, 2304),
                  "d": (3, 36, 4608), "narrowed": (6, 72, 9216, 36.0)}
    truth = np.array([0.05, 0.01, 0.0015, 6e-5, 0.0038])  # constant, block, head, neuron, head width
    widths = {n: s[3] if len(s) > 3 else s[1] for n, s in structures.items()}
    measured = {n: float(truth @ np.array([1.0, *s[:3], widths[n]])) for n, s in structures.items()}
    fit = latency.fit_latency_model(measured, structures)
    np.testing.assert_allclose([fit.constant, fit.per_block, fit.per_head, fit.per_neuron, fit.per_head_width],
                               truth, rtol=1e-6)
    assert fit.head_cost(0.5) == pytest.approx(0.0015 + 0.5 * 0.0038)
    assert fit.ratio(6, 72, 9216, 36.0) == pytest.approx(measured["narrowed"])
    assert [p["head_widths"] for p in fit.points] == [72, 36, 18, 72, 36, 36.0]
    assert latency.LatencyModel.from_dict(fit.to_dict()) == fit
    # Without a narrowed structure the width column repeats the heads' and stays at zero.
    del structures["narrowed"], measured["narrowed"]
    assert latency.fit_latency_model(measured, structures).per_head_width == 0.0


def test_fit_never_returns_a_negative_coefficient():
    # Data that an unconstrained fit explains with a negative per-head cost.
    features = np.array([[1, 1.0, 0.0], [1, 2.0, 1.0], [1, 3.0, 3.0], [1, 4.0, 2.0]])
    targets = np.array([1.0, 1.9, 2.1, 3.3])
    unconstrained = np.linalg.lstsq(features, targets, rcond=None)[0]
    assert unconstrained.min() < 0
    fit = latency.fit_nonnegative(features, targets)
    assert fit.min() >= 0
    # It is the best non-negative fit: no small non-negative move improves it.
    best = np.sum((features @ fit - targets) ** 2)
    rng = np.random.default_rng(0)
    for _ in range(200):
        trial = np.maximum(fit + 0.05 * rng.normal(size=3), 0)
        assert np.sum((features @ trial - targets) ** 2) >= best - 1e-12


def test_side_by_side_interleaves_and_reports_paired_speedups():
    calls = []
    runners = {"base": lambda feed: calls.append("base"), "other": lambda feed: calls.append("other")}
    result = latency.side_by_side(runners, {}, rounds=20, warmup=2, base="base", calls_per_turn=3)
    assert calls.count("base") == calls.count("other") == 2 + 20 * 3
    # Every round gives each model one turn of three back-to-back calls, in a shuffled order.
    turns = [calls[4 + 3 * i:7 + 3 * i] for i in range(40)]
    assert all(len(set(turn)) == 1 for turn in turns)
    rounds = [{turns[2 * i][0], turns[2 * i + 1][0]} for i in range(20)]
    assert all(r == {"base", "other"} for r in rounds)
    assert set(result) == {"base", "other"} and result["base"]["speedup"] == 1.0
    assert result["other"]["ms"] <= result["other"]["median_ms"]
    assert result["other"]["speedup"] == pytest.approx(result["base"]["ms"] / result["other"]["ms"])


def test_side_by_side_speedup_is_the_ratio_of_20th_percentiles(monkeypatch):
    # Planted call times: base 10 ms with 30 % of calls slowed to 30 ms, other 5 ms with none slowed.
    base_times = iter([10.0 if i % 10 >= 3 else 30.0 for i in range(40)])
    other_times = iter([5.0] * 40)
    clock = [0.0]

    def runner(times):
        def call(feed):
            clock[0] += next(times) / 1e3
        return call

    monkeypatch.setattr(latency.time, "perf_counter", lambda: clock[0])
    result = latency.side_by_side({"base": runner(base_times), "other": runner(other_times)}, {}, rounds=40,
                                  warmup=0, base="base", calls_per_turn=1)
    assert result["base"]["ms"] == pytest.approx(10.0) and result["other"]["ms"] == pytest.approx(5.0)
    assert result["other"]["speedup"] == pytest.approx(2.0)
    assert result["base"]["median_ms"] == pytest.approx(10.0)


def test_side_by_side_times_only_the_warm_last_call_of_a_turn(monkeypatch):
    # The first call of each turn is cold (30 ms: weights evicted by the other model's turn), the next ones 10 ms.
    clock, seen = [0.0], {"base": 0, "other": 0}

    def runner(name, warm_ms):
        def call(feed):
            clock[0] += (30.0 if seen[name] % 3 == 0 else warm_ms) / 1e3
            seen[name] += 1
        return call

    monkeypatch.setattr(latency.time, "perf_counter", lambda: clock[0])
    result = latency.side_by_side({"base": runner("base", 10.0), "other": runner("other", 5.0)}, {}, rounds=10,
                                  warmup=0, base="base", calls_per_turn=3)
    assert result["base"]["ms"] == pytest.approx(10.0) and result["other"]["ms"] == pytest.approx(5.0)
    assert result["other"]["speedup"] == pytest.approx(2.0)  # cold calls would have given 30 / 30 = 1.0
    with pytest.raises(ValueError, match="calls_per_turn must be >= 1"):
        latency.side_by_side({"base": runner("base", 1.0)}, {}, calls_per_turn=0)


def test_probe_structures_cover_heads_neurons_and_depth():
    probes = latency.probe_structures(6, 12, 1536)
    assert [(p["keep_blocks"], p["heads_per_block"], p["neurons_per_block"]) for p in probes] == [
        (6, 6, 768), (6, 3, 1536), (6, 12, 384), (3, 12, 1536)]
    assert all(p["heads_per_block"] >= 1 for p in latency.probe_structures(2, 1, 1))
    narrowed = latency.probe_structures(6, 12, 1536, narrowed=(8, 24))
    assert narrowed[1:] == probes and narrowed[0]["head_widths"] == (8, 24)
    assert (narrowed[0]["keep_blocks"], narrowed[0]["heads_per_block"], narrowed[0]["neurons_per_block"]) == (
        6, 12, 1536)


def test_layer_drop_depth_matches_our_predicted_latency():
    fit = latency.LatencyModel(constant=0.1, per_block=0.0, per_head=0.005, per_neuron=0.00005, points=[])
    # K blocks: 0.1 + K * (0.06 + 0.0768) = 0.1 + 0.1368 K; 0.65 is nearest K = 4 (0.647).
    keep, predicted = baselines.choose_layer_drop(fit, 6, 12, 1536, target_ratio=0.65)
    assert keep == [0, 1, 2, 3] and sorted(predicted) == [1, 2, 3, 4, 5]
    assert predicted[4] == pytest.approx(0.1 + 4 * 0.1368)
    # Halfway between two depths: the faster one.
    keep, _ = baselines.choose_layer_drop(fit, 6, 12, 1536, target_ratio=0.1 + 3.5 * 0.1368)
    assert keep == [0, 1, 2]
    with pytest.raises(ValueError, match="2\\+ blocks"):
        baselines.choose_layer_drop(fit, 1, 12, 1536, 0.5)


def test_search_until_measured_shrinks_the_budget_by_the_measured_miss():
    # A structure is its budget; the model is exact for small structures and 20 % optimistic for large ones.
    fixed, goal = 0.2, 0.6
    budgets = []

    def select(budget):
        budgets.append(budget)
        return budget

    def measure(cost):
        predicted = fixed + cost
        return (predicted * 1.2 if cost > 0.3 else predicted), predicted

    structure, checks = latency.search_until_measured(select, measure, fixed, goal, accept=0.62, corrections=2)
    # First search: the whole 0.4 budget, measured 0.72 > 0.62; the next gets 0.6 * 0.6 / 0.72 - 0.2 = 0.3.
    assert budgets == pytest.approx([0.4, 0.3]) and structure == pytest.approx(0.3)
    assert [c["measured_ratio"] for c in checks] == pytest.approx([0.72, 0.5])
    assert checks[-1]["measured_speedup"] == pytest.approx(2.0)


def test_search_until_measured_keeps_the_last_structure_after_its_corrections():
    calls = []
    structure, checks = latency.search_until_measured(lambda b: calls.append(b) or b, lambda c: (1.0, 0.5), 0.1, 0.5,
                                                      accept=0.6, corrections=1)
    assert len(checks) == 2 == len(calls) and structure == calls[-1]  # never accepted: 1 + 1 searches, no more
    assert calls[1] == pytest.approx(0.5 * 0.5 / 1.0 - 0.1)
