"""`recipes.compress`, the main job: stages, report, restart, flag errors (on a two-block MiniLM)."""

import json
import os

import numpy as np
import pytest
from absl import app

from recipes import compress, pipeline

FLAGS = compress.FLAGS
SMALL = ["--calibration_sentences=48", "--heldout_sentences=32", "--sensitivity_sentences=8", "--distill_steps=3",
         "--batch_size=8", "--seq_length=32", "--sparsity=0.5", "--qat", "--qat_steps=2", "--int8=full",
         "--export=tflite_int8"]


def _settings(*argv):
    FLAGS.unparse_flags()
    FLAGS(["compress", *argv])
    return compress.check_flags(FLAGS)


@pytest.fixture(scope="module")
def first_run(two_block_minilm, tmp_path_factory):
    report_dir = str(tmp_path_factory.mktemp("demo"))
    settings = _settings(f"--model={two_block_minilm}", f"--report_dir={report_dir}", *SMALL)
    metrics = compress.run(settings)
    return settings, metrics, report_dir


def test_metrics_report_and_plots(first_run):
    _, metrics, report_dir = first_run
    required = ["params_before", "params_after", "total_params_before", "total_params_after",
                "embedding_cosine_heldout", "nn_agreement_heldout", "output_error_svd", "output_error_whitened",
                "tflite_int8_bytes", "tflite_fp32_dense_bytes", "int8_embedding_cosine", "seconds_total"]
    assert set(required) <= set(metrics)
    with open(os.path.join(report_dir, "metrics.json")) as f:
        assert set(required) <= set(json.load(f))
    # Two MiniLM blocks: 4 (384x384) + (384x1536) + (1536x384) projections, with biases.
    kernels = 2 * (4 * 384 * 384 + 2 * 384 * 1536)
    biases = 2 * (4 * 384 + 1536 + 384)
    assert metrics["params_before"] == kernels + biases
    assert metrics["params_after"] - biases <= 0.5 * kernels
    assert metrics["total_params_before"] - metrics["total_params_after"] == metrics["params_before"] - metrics["params_after"]
    report = open(os.path.join(report_dir, "report.md")).read()
    assert report.count("| layer_") == 12 and "held-out cosine" in report
    assert open(os.path.join(report_dir, "fidelity.png"), "rb").read(4) == b"\x89PNG"
    assert set(metrics["methods"]) == {"svd", "whitened", "best"}
    assert "distilled_cosine" in metrics["methods"]["best"]


def test_best_spends_the_same_budget_and_whitening_lowers_output_error(first_run):
    _, metrics, report_dir = first_run
    with open(os.path.join(report_dir, "stages", "factorize__best", "result.json")) as f:
        best = json.load(f)
    shapes = {name: (384, 1536) if name.endswith("intermediate") else (1536, 384) if name.endswith("ffn/output")
              else (384, 384) for name in best["ranks"]}
    spent = sum(r * sum(shapes[n]) for n, r in best["ranks"].items())
    kernels = sum(a * b for a, b in shapes.values())
    assert spent <= kernels // 2 and kernels // 2 - spent < 768  # nothing more fits (smallest in+out = 768)
    assert len(set(best["ranks"].values())) > 1  # non-uniform
    assert metrics["output_error_whitened"] < metrics["output_error_svd"]
    assert metrics["methods"]["whitened"]["cosine"] > metrics["methods"]["svd"]["cosine"]


def test_rerun_skips_finished_stages(first_run, capsys):
    settings, metrics, report_dir = first_run
    again = compress.run(settings)
    out = capsys.readouterr().out
    for stage in ("factorize/svd", "factorize/whitened", "factorize/best", "distill/best"):
        assert f"{stage}: skipped" in out
    assert "[compress] calibrate" not in out  # statistics only when some factorization must run
    assert "prune: skipped" in out and "export: skipped" in out
    assert again["embedding_cosine_heldout"] == pytest.approx(metrics["embedding_cosine_heldout"], abs=1e-6)
    assert again["tflite_int8_bytes"] == metrics["tflite_int8_bytes"]


def test_compressed_encoder_is_saved(first_run):
    _, metrics, report_dir = first_run
    path = os.path.join(report_dir, "compressed_encoder.keras")
    assert metrics["compressed_model"] == path
    assert open(path, "rb").read(2) == b"PK"  # a .keras zip archive; recipes.finetune --model loads it


def test_interrupted_stage_runs_again(tmp_path):
    pipe = pipeline.Pipeline(str(tmp_path), log=lambda line: None)
    calls = []
    pipe.run("first", lambda stage: calls.append("first") or {"value": 1}, settings={"a": 1})

    def interrupted(stage):
        calls.append("second")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipe.run("second", interrupted)
    again = pipeline.Pipeline(str(tmp_path), log=lambda line: None)
    assert again.run("first", lambda stage: calls.append("first again"), settings={"a": 1})["value"] == 1
    again.run("second", lambda stage: calls.append("second again") or {})
    assert calls == ["first", "second", "second again"]
    again.run("first", lambda stage: calls.append("first, new settings") or {}, settings={"a": 2})
    assert calls[-1] == "first, new settings"


@pytest.fixture
def files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    return {"empty": str(empty), "gpt": str(gpt), "missing": str(tmp_path / "nope.txt")}


@pytest.mark.parametrize("argv, message", [
    (["--budget=1.5"], "--budget must be in (0, 1], got 1.5"),
    (["--model=/nonexistent/ckpt"], "Checkpoint directory '/nonexistent/ckpt' does not exist"),
    (["--model={gpt}"], "is not a BERT checkpoint (config.json says model_type='gpt2')"),
    (["--train_files={empty}"], "is empty; give text files"),
    (["--eval_files={missing}"], "does not exist or is not a file"),
    (["--methods=svd,magic"], "--methods must be a non-empty subset"),
    (["--methods=svd", "--distill_methods=best"], "--distill_methods ['best'] are not among --methods"),
    (["--m_by_n=4:2"], "--m_by_n must look like '2:4'"),
    (["--export=saved_model,zip"], "--export takes"),
    (["--ranks=abc"], "--ranks must be one integer rank"),
    (["--policy=tt", "--ranks=8"], "--ranks applies to --policy=lowrank"),
    (["--heldout_sentences=1"], "--heldout_sentences must be >= 2"),
    (["--qat", "--int8=dynamic"], "--qat trains int8 ranges for a fully-integer model"),
])
def test_bad_flags_fail_before_any_work(files, argv, message):
    argv = [a.format(**files) for a in argv]
    with pytest.raises(app.UsageError) as error:
        _settings(*argv)
    assert message in str(error.value)


def test_prune_and_int8_export_stages(first_run):
    _, metrics, report_dir = first_run
    prune = metrics["prune"]
    assert prune["zero_fraction"] >= 0.45  # 50 % of every factor, give or take unprunable tiny weights
    assert 0.0 < prune["cosine"] <= 1.0
    assert metrics["tflite_int8_bytes"] == os.path.getsize(os.path.join(report_dir, "model_int8.tflite"))
    assert metrics["tflite_int8_bytes"] < 0.5 * metrics["tflite_fp32_dense_bytes"]
    assert 0.5 < metrics["int8_embedding_cosine"] <= 1.0


def test_export_sizes_latencies_and_plot(first_run):
    _, metrics, report_dir = first_run
    export = metrics["export"]
    sizes, latency = export["artifact_bytes"], export["latency_ms"]
    assert list(sizes) == ["TFLite full-integer int8", "TFLite fp32, original dense"] == list(latency)
    assert sizes["TFLite full-integer int8"] == os.path.getsize(os.path.join(report_dir, "model_int8.tflite"))
    assert sizes["TFLite fp32, original dense"] == metrics["tflite_fp32_dense_bytes"]
    assert all(0.0 < ms < 10_000 for ms in latency.values())
    report = open(os.path.join(report_dir, "report.md")).read()
    assert "## Exported files" in report and report.count("| TFLite ") == 2
    assert open(os.path.join(report_dir, "exports.png"), "rb").read(4) == b"\x89PNG"
    with open(os.path.join(report_dir, "metrics.json")) as f:
        assert "exports.png" in json.load(f)["plots"]


def test_qat_stage_keeps_the_zeros_and_exports_fully_integer(first_run):
    from tfreparam.export.flatbuffer import float_ops

    _, metrics, report_dir = first_run
    assert metrics["qat"]["scheme"] == "pqat" and metrics["qat"]["steps"] == 2
    assert metrics["embedding_cosine_heldout"] == pytest.approx(metrics["qat"]["cosine"])
    assert metrics["tflite_int8_mode"] == "full"
    with open(os.path.join(report_dir, "model_int8.tflite"), "rb") as f:
        assert set(float_ops(f.read())) <= {"CAST"}


def test_command_line_reports_bad_flags_without_a_traceback():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "recipes.compress", "--budget=1.5"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0
    assert "--budget must be in (0, 1], got 1.5" in result.stderr and "Traceback" not in result.stderr
