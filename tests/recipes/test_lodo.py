"""`recipes.lodo`: the leave-one-domain-out summary compares inside each fold, then averages the folds."""

import json
import math

import numpy as np
import pytest

from recipes import lodo
from tests.recipes.fold_setup import fold_metrics
from tfreparam import fidelity


def test_average_difference_of_equal_intervals_narrows_by_the_square_root_of_the_folds():
    d = {"difference": 0.04, "low": 0.02, "high": 0.06, "examples": 100}
    e = {"difference": 0.00, "low": -0.02, "high": 0.02, "examples": 50}
    out = lodo.average_difference([d, e, None])
    assert out["difference"] == pytest.approx(0.02)
    # Two folds of half-width 0.02: the mean's half-width is 0.02 / sqrt(2).
    assert out["high"] - out["difference"] == pytest.approx(0.02 / math.sqrt(2))
    assert out["difference"] - out["low"] == pytest.approx(0.02 / math.sqrt(2))
    assert out["examples"] == 150 and out["folds"] == 2
    assert lodo.average_difference([None]) is None


def test_average_difference_matches_a_bootstrap_over_both_folds():
    # The normal combination of each fold's own bootstrap interval against resampling both folds together.
    rng = np.random.default_rng(3)
    folds = [(rng.random(2000) < 0.60, rng.random(2000) < 0.55), (rng.random(1500) < 0.50, rng.random(1500) < 0.52)]
    each = [fidelity.paired_accuracy_difference(a, b, draws=4000, seed=i) for i, (a, b) in enumerate(folds)]
    joint = fidelity.paired_accuracy_difference([a for a, _ in folds], [b for _, b in folds], draws=4000, seed=9)
    combined = lodo.average_difference(each)
    assert combined["difference"] == pytest.approx(joint["difference"], abs=1e-12)
    assert combined["low"] == pytest.approx(joint["low"], abs=0.003)
    assert combined["high"] == pytest.approx(joint["high"], abs=0.003)


def test_summary_averages_fidelity_over_every_fold_and_the_probe_over_labelled_ones(tmp_path):
    lead = {"difference": 0.046, "low": 0.029, "high": 0.065, "examples": 2000}
    tie = {"difference": -0.001, "low": -0.014, "high": 0.013, "examples": 3318}
    runs = {
        "debian": fold_metrics(0.94, 0.71, 0.95, 1.50, probes=[0.573, 0.575, 0.546, 0.500, 0.506], difference=lead,
                               beats=True, lead="clear"),
        "wordnet": fold_metrics(0.92, 0.70, 0.96, 1.44, probes=[0.591, 0.588, 0.584, 0.585, 0.520], difference=tie,
                                lead="within noise", retrieval=[0.40, 0.39, 0.37, 0.21, 0.30],
                                retrieval_difference={"difference": 0.16, "low": 0.13, "high": 0.19, "examples": 1000}),
        "bible": fold_metrics(0.90, 0.60, 0.93, 1.56, beats=True),
    }
    summary = lodo.write(str(tmp_path), runs)
    average = summary["average"]
    assert average["heldout_cosine"]["compressed_int8"] == pytest.approx(np.mean([0.94, 0.92, 0.90]))
    assert average["heldout_cosine"]["layer_drop_int8"] == pytest.approx(np.mean([0.71, 0.70, 0.60]))
    assert average["heldout_cosine"]["minilm_l3_int8"] is None
    # The gap is our int8 file's own in-domain minus held-out cosine, fold by fold.
    assert summary["folds"]["wordnet"]["gap"] == pytest.approx(0.04)
    assert average["gap"] == pytest.approx(np.mean([0.01, 0.04, 0.03]))
    assert average["speedup"]["compressed_int8"] == pytest.approx((1.50 * 1.44 * 1.56) ** (1 / 3))
    assert average["labelled_folds"] == 2
    assert average["probe"]["original_fp32"] == pytest.approx(np.mean([0.573, 0.591]))
    assert average["probe"]["layer_drop_int8"] == pytest.approx(np.mean([0.500, 0.585]))
    assert average["probe_differences"]["ours_int8_minus_layer_drop_int8"]["difference"] == pytest.approx(0.0225)
    assert average["seconds"] == pytest.approx(1800.0)
    assert summary["beats_layer_drop"] == {"debian": True, "wordnet": False, "bible": True}

    assert average["retrieval_folds"] == 1 and average["retrieval"]["layer_drop_int8"] == 0.21
    assert json.loads((tmp_path / "lodo.json").read_text())["folds"]["bible"]["probe_sets"] == []
    text = (tmp_path / "lodo.md").read_text()
    assert "on 2 of 3 folds (debian, bible)" in text
    assert "clearly ahead on 1 (debian), clearly behind on 0" in text
    assert "| debian | 0.9400 | 0.7100 | 0.9980 | 0.9500 | +0.0100 | 1.50x | 1.50x | 1.40x | 2.10x |" in text
    assert "| debian | a_set | 0.573 | 0.546 | 0.500 | 0.506 | +4.6 (+2.9 to +6.5) | +4.6 (+2.9 to +6.5) |" in text
    assert "| wordnet | a_pair_set | 0.400 | 0.370 | 0.210 | 0.300 | +16.0 (+13.0 to +19.0) |" in text
    # The unlabelled fold has a fidelity row and no probe row.
    assert text.count("| bible |") == 1
    # Averages: fidelity (3 folds) and probe (2); none for retrieval, which one fold has.
    assert text.count("| **average** |") == 2
