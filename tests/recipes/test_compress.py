"""`make demo`'s job, run as a user runs it: a subprocess with flags."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bert import read_hf_checkpoint


def _run(*flags):
    return subprocess.run(
        [sys.executable, "-m", "recipes.compress", *flags],
        capture_output=True, text=True, timeout=900,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    report_dir = tmp_path_factory.mktemp("demo")
    result = _run(f"--report_dir={report_dir}", "--budget=0.5", "--calibration_sentences=64",
                  "--heldout_sentences=48")
    assert result.returncode == 0, result.stderr[-3000:]
    return report_dir, json.loads((report_dir / "metrics.json").read_text()), result.stdout


def test_demo_halves_projection_parameters(demo):
    report_dir, metrics, stdout = demo
    # all-MiniLM-L6-v2: 6 layers x (4 384x384 + 384x1536 + 1536x384) projections, with biases.
    assert metrics["params_before"] == 6 * (4 * (384 * 384 + 384) + (384 * 1536 + 1536) + (1536 * 384 + 384))
    kernels = 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    biases = metrics["params_before"] - kernels
    assert metrics["params_after"] - biases <= 0.5 * kernels
    assert metrics["total_params_before"] - metrics["total_params_after"] == metrics["params_before"] - metrics["params_after"]
    assert "report written to" in stdout
    assert (report_dir / "report.md").read_text().count("| layer_") == 36


def test_whitened_beats_plain_svd_on_held_out_text(demo):
    _, metrics, _ = demo
    svd, whitened = metrics["methods"]["svd"], metrics["methods"]["whitened"]
    assert metrics["output_error_whitened"] < metrics["output_error_svd"]
    assert whitened["cosine"] > svd["cosine"]
    assert 0.0 <= svd["nn_agreement"] <= 1.0 and 0.0 < svd["cosine"] < 1.0


def test_svd_layer_errors_are_eckart_young_optimal(demo):
    _, metrics, _ = demo
    rows = {r["name"]: r for r in metrics["layers"]["svd"]}
    kernel, _ = read_hf_checkpoint("minilm").projection_kernels()["layer_2/ffn/output"]
    sigma = np.linalg.svd(kernel.astype(np.float64), compute_uv=False)
    rank = int(rows["layer_2/ffn/output"]["structure"].split("=")[1])
    expected = np.sqrt(np.sum(sigma[rank:] ** 2) / np.sum(sigma**2))
    assert rows["layer_2/ffn/output"]["relative_error"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--budget=1.5"], "--budget must be in (0, 1], got 1.5"),
        (["--model=/nonexistent/ckpt"], "Checkpoint directory '/nonexistent/ckpt' does not exist"),
    ],
)
def test_bad_flags_fail_clearly(flags, message, tmp_path):
    result = _run(*flags, f"--report_dir={tmp_path}")
    assert result.returncode != 0
    assert message in result.stderr
