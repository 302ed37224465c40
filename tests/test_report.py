"""tfreparam.report: per-layer accounting that matches the layers and the data."""

import json

import numpy as np
import tf_keras as keras

import tfreparam as tr


def _model():
    inputs = keras.Input((24,))
    h = keras.layers.Dense(32, activation="relu", name="d1")(inputs)
    h = keras.layers.Dense(12, name="d2")(h)
    return keras.Model(inputs, keras.layers.Dense(4, name="head")(h))


def test_report_rows_and_totals():
    model = _model()
    new = tr.reparameterize(model, {"d1": tr.LowRank(rank=4), "d2": tr.Kronecker(num_terms=2)})
    rep = tr.report((model, new))
    rows = {row.name: row for row in rep.rows}
    assert set(rows) == {"d1", "d2", "head"}
    assert rows["d1"].params_before == 24 * 32 + 32
    assert rows["d1"].params_after == 4 * (24 + 32) + 32
    assert rows["d1"].flops_after == 2 * 4 * (24 + 32) + 32
    assert rows["head"].params_before == rows["head"].params_after == 12 * 4 + 4
    assert rep.params_before == sum(l.count_params() for l in model.layers)
    assert rep.params_after == sum(l.count_params() for l in new.layers)
    assert rep.total_params_after == new.count_params()
    # Relative error of d1 equals the Eckart–Young tail of the trained kernel.
    s = np.linalg.svd(model.get_layer("d1").kernel.numpy().astype(np.float64), compute_uv=False)
    assert abs(rows["d1"].relative_error - np.sqrt((s[4:] ** 2).sum() / (s**2).sum())) < 1e-5
    assert rows["head"].relative_error is None


def test_report_formats():
    model = _model()
    rep = tr.report(tr.reparameterize(model, tr.LowRank(rank=4)))
    text = str(rep)
    assert "LowRankDense" in text and "total" in text
    markdown = rep.to_markdown()
    assert markdown.count("\n") == len(rep.rows) + 2  # header, rule, rows, total
    json.dumps(rep.to_dict())  # JSON-serialisable
    assert rep.to_dict()["params_after"] == rep.params_after


def test_report_measures_errors_for_a_pair_without_surgery_history():
    model = _model()
    new = tr.fold(tr.reparameterize(model, tr.LowRank(rank=4)))
    again = tr.reparameterize(new, {"d1": tr.LowRank(rank=2)})
    rows = {row.name: row for row in tr.report((model, again)).rows}
    # Measured against the original model, not against `new`.
    kernel = model.get_layer("d1").kernel.numpy()
    delta = kernel - again.get_layer("d1").dense_kernel().numpy()
    assert abs(
        rows["d1"].relative_error - np.linalg.norm(delta) / np.linalg.norm(kernel)) < 1e-5
