"""`recipes.sweep`: the compress job at several budgets, one table (on a two-block MiniLM)."""

import json
import os

import pytest

from recipes import compress, sweep

SMALL = ["--calibration_sentences=48", "--heldout_sentences=32", "--batch_size=8", "--seq_length=32",
         "--methods=svd,whitened", "--distill_methods=whitened", "--distill_steps=2", "--export="]


@pytest.fixture(scope="module")
def swept(two_block_minilm, tmp_path_factory):
    report_dir = str(tmp_path_factory.mktemp("sweep"))
    compress.FLAGS.unparse_flags()
    compress.FLAGS(["sweep", f"--model={two_block_minilm}", f"--report_dir={report_dir}", *SMALL])
    settings = compress.check_flags(compress.FLAGS)
    return sweep.sweep(settings, [0.25, 0.75]), report_dir


def test_one_row_per_budget_and_method(swept):
    rows, report_dir = swept
    assert [(r["budget"], r["method"]) for r in rows] == [
        (0.25, "svd"), (0.25, "whitened"), (0.75, "svd"), (0.75, "whitened")]
    with open(os.path.join(report_dir, "sweep.json")) as f:
        assert json.load(f) == rows
    table = open(os.path.join(report_dir, "sweep.md")).read()
    assert table.count("| 25% |") == 2 and table.count("| 75% |") == 2
    assert open(os.path.join(report_dir, "sweep.png"), "rb").read(4) == b"\x89PNG"
    # Each budget ran in its own directory (its finished stages are reused on a re-run).
    assert sorted(d for d in os.listdir(report_dir) if d.startswith("budget_")) == ["budget_25", "budget_75"]


def test_budgets_and_methods_behave(swept):
    rows, _ = swept
    by = {(r["budget"], r["method"]): r for r in rows}
    for method in ("svd", "whitened"):
        assert by[(0.75, method)]["params_after"] > 2.5 * by[(0.25, method)]["params_after"]
        assert by[(0.75, method)]["cosine"] > by[(0.25, method)]["cosine"]
    for budget in (0.25, 0.75):
        # Whitening (activation-aware SVD) must beat plain SVD on held-out sentences.
        assert by[(budget, "whitened")]["cosine"] > by[(budget, "svd")]["cosine"]
        assert by[(budget, "whitened")]["distilled_cosine"] is not None
        assert by[(budget, "svd")]["distilled_cosine"] is None
