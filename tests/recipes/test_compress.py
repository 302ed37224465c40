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
        capture_output=True, text=True, timeout=600,
    )


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    report_dir = tmp_path_factory.mktemp("demo")
    result = _run(f"--report_dir={report_dir}", "--budget=0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    return report_dir, result.stdout


def test_demo_halves_projection_parameters(demo_report):
    report_dir, stdout = demo_report
    metrics = json.loads((report_dir / "metrics.json").read_text())
    # all-MiniLM-L6-v2: 6 layers x (4·384² + 2·384·1536) projection weights.
    assert metrics["params_before"] == 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    assert metrics["params_after"] <= 0.5 * metrics["params_before"]
    assert metrics["max_layer_abs_error"] < 1e-4
    assert "report written to" in stdout
    assert (report_dir / "report.md").read_text().count("| layer_") == 36


def test_demo_errors_are_eckart_young_optimal(demo_report):
    report_dir, _ = demo_report
    rows = {r["layer"]: r for r in json.loads((report_dir / "metrics.json").read_text())["layers"]}
    kernel, _ = read_hf_checkpoint("minilm").projection_kernels()["layer_2/ffn/output"]
    sigma = np.linalg.svd(kernel.astype(np.float64), compute_uv=False)
    rank = rows["layer_2/ffn/output"]["rank"]
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
