"""`recipes.sweep`: the compress job at several settings of its knob, one table (on a tiny random BERT)."""

import json
import os

import pytest
from absl import app

from recipes import compress, sweep
from tests.recipes import task_setup

SMALL = ["--seq_length=32", "--calibration_per_domain=16", "--train_per_domain=16", "--eval_per_domain=12",
         "--probe_sentences=60", "--retrieval_pairs=40", "--probe_folds=2", "--distill_steps=0", "--batch_size=8",
         "--latency_rounds=3", "--baselines=int8", "--policy=lowrank", "--methods=svd,whitened"]


def _settings(*argv):
    compress.FLAGS.unparse_flags()
    compress.FLAGS(["sweep", *argv])
    return compress.check_flags(compress.FLAGS)


@pytest.fixture(scope="module")
def swept(tiny_bert, tmp_path_factory):
    report_dir = str(tmp_path_factory.mktemp("sweep"))
    settings = _settings(f"--model={tiny_bert}", f"--report_dir={report_dir}", *SMALL)
    return sweep.sweep(settings, [0.25, 0.75]), report_dir


def test_one_row_per_budget_and_the_files(swept):
    rows, report_dir = swept
    assert [r["value"] for r in rows] == [0.25, 0.75]
    with open(os.path.join(report_dir, "sweep.json")) as f:
        assert json.load(f) == rows
    table = open(os.path.join(report_dir, "sweep.md")).read()
    assert "| 0.25 |" in table and "| 0.75 |" in table and "budget" in table
    assert open(os.path.join(report_dir, "sweep.png"), "rb").read(4) == b"\x89PNG"
    # Each budget ran in its own directory (its finished stages are reused on a re-run).
    assert sorted(d for d in os.listdir(report_dir) if d.startswith("budget_")) == ["budget_25", "budget_75"]
    for budget in ("budget_25", "budget_75"):
        with open(os.path.join(report_dir, budget, "metrics.json")) as f:
            assert json.load(f)["policy"] == "lowrank"
    # The original's two files were converted by the first run only; the second reused them from one shared cache.
    reused = []
    for budget in ("budget_25", "budget_75"):
        with open(os.path.join(report_dir, budget, "stages", "export", "result.json")) as f:
            reused.append(json.load(f)["reused"])
    assert reused == [[], ["original_fp32", "original_int8"]]
    assert len([f for f in os.listdir(os.path.join(report_dir, "conversions")) if f.endswith(".tflite")]) == 2


def test_more_parameters_keep_more_of_the_original(swept):
    rows, _ = swept
    small, large = rows
    assert large["in_domain_cosine"] > small["in_domain_cosine"]
    assert large["heldout_domain_cosine"] > small["heldout_domain_cosine"]
    for row in rows:
        assert row["layer_drop_cosine"] is None and row["beats_layer_drop"] is None  # no layer drop asked for


def test_sweep_values_are_checked():
    compress.FLAGS.unparse_flags()
    compress.FLAGS(["sweep", "--speedups=1.2,abc"])
    with pytest.raises(app.UsageError, match="--speedups must be numbers"):
        sweep.sweep_values(compress.FLAGS, "structured")
    compress.FLAGS.unparse_flags()
    compress.FLAGS(["sweep", "--budgets=0.5,1.5"])
    with pytest.raises(app.UsageError, match=r"--budgets must be numbers in \(0, 1\]"):
        sweep.sweep_values(compress.FLAGS, "lowrank")
    compress.FLAGS.unparse_flags()
    compress.FLAGS(["sweep", "--speedups=1.2,2"])
    assert sweep.sweep_values(compress.FLAGS, "structured") == [1.2, 2.0]


def test_task_sweep_runs_one_task_compression_per_speedup(tmp_path_factory):
    """--task_model: one task-path run per --speedups value, sharing the target-free stages; one table, one plot."""
    task = task_setup.write_task(str(tmp_path_factory.mktemp("task")), positions=32)  # one length: 4 files a run
    report = tmp_path_factory.mktemp("task_sweep")
    compress.FLAGS.unparse_flags()
    compress.FLAGS(["sweep", f"--task_model={task['teacher']}", f"--train_files={task['train']}",
                    f"--eval_files={task['eval']}", "--speedups=1.2,1.6", "--speedup_margin=0", "--task_epochs=1",
                    "--batch_size=8", "--latency_rounds=3", f"--report_dir={report}"])
    with pytest.MonkeyPatch.context() as patch:
        task_setup.fixed_latency(patch)
        sweep.main(["sweep"])
    rows = json.loads((report / "sweep.json").read_text())
    assert [r["target_speedup"] for r in rows] == [1.2, 1.6]
    runs = [json.loads((report / name / "metrics.json").read_text()) for name in ("speedup_1.2", "speedup_1.6")]
    for row, metrics in zip(rows, runs):
        assert metrics["target_speedup"] == row["target_speedup"]
        for role in ("teacher_fp32", "teacher_int8", "student_fp32", "student_int8"):
            assert row[role]["accuracy"] == metrics["task"]["accuracy"][role]
            assert row[role]["latency_ms"] == metrics["latency_ms"][role]
            assert row[role]["bytes"] == metrics["bytes"][role]
    # The second run reused the first's tokens, teacher logits and latency model, so both pruned against one line.
    assert runs[0]["skipped_stages"] == []
    assert {"tokenize", "soft targets", "latency model"} <= set(runs[1]["skipped_stages"])
    assert runs[1]["latency_model"] == runs[0]["latency_model"]
    assert runs[1]["task"]["accuracy"]["teacher_fp32"] == runs[0]["task"]["accuracy"]["teacher_fp32"]
    # ... and the teacher's files, converted in the first run only.
    exported = [json.loads((report / name / "stages" / "export" / "result.json").read_text())
                for name in ("speedup_1.2", "speedup_1.6")]
    assert [e["reused"] for e in exported] == [[], ["teacher_fp32@32", "teacher_int8@32"]]
    assert len(list((report / "conversions").glob("*.tflite"))) == 2
    # A higher target removes more.
    assert runs[1]["student"]["params"]["student"] < runs[0]["student"]["params"]["student"]
    a, b = task_setup.FIXED_LATENCY
    for target, metrics in zip((1.2, 1.6), runs):
        assert 1 / (a + b * metrics["student"]["flops_ratio"]) >= target * 0.98
    table = (report / "sweep.md").read_text()
    assert "| 1.2x |" in table and "| 1.6x |" in table
    assert (report / "sweep.png").read_bytes()[:4] == b"\x89PNG"



def test_a_row_sets_ours_beside_its_layer_drop_and_the_original(tmp_path):
    # A structured run's metrics (the fields compress writes), made by hand: the row and table carry them as given.
    metrics = {"heldout_domain_cosine": 0.93, "heldout_domain_cosine_min": 0.66, "heldout_domain_nn_agreement": 0.57,
               "in_domain_cosine": 0.95, "probe_accuracy_compressed": 0.572, "probe_accuracy_compressed_int8": 0.571,
               "compressed_int8_speedup": 1.43, "latency_ms": {"compressed_int8": 3.51},
               "baselines": {"int8": {"probe_accuracy": 0.588},
                             "layer_drop": {"keep_blocks": [0, 1, 2, 3], "heldout_domain_cosine": 0.706,
                                            "int8": {"probe": 0.585, "latency_ms": 3.31, "speedup": 1.52}}},
               "probe_differences": {"ours_int8_minus_layer_drop_int8": {"difference": -0.014, "low": -0.029,
                                                                         "high": 0.0, "examples": 3318},
                                     "original_minus_layer_drop_int8": {"difference": 0.006, "low": -0.008,
                                                                        "high": 0.02, "examples": 3318}},
               "models": [{"key": "compressed_int8", "in_domain_probe": 0.553},
                          {"key": "layer_drop_int8", "in_domain_probe": 0.521}],
               "in_domain_probe_differences": {"ours_int8_minus_layer_drop_int8": {
                   "difference": 0.032, "low": 0.016, "high": 0.05, "examples": 2000}},
               "retrieval_differences": {"ours_int8_minus_layer_drop_int8": {
                   "difference": 0.045, "low": 0.023, "high": 0.067, "examples": 1000}},
               "verdict": {"beats_layer_drop": False}}
    row = sweep._row(1.45, metrics)
    assert (row["probe_int8"], row["latency_ms"], row["probe_original_int8"]) == (0.571, 3.51, 0.588)
    assert (row["layer_drop_blocks"], row["layer_drop_probe_int8"], row["layer_drop_latency_ms"]) == ([0, 1, 2, 3],
                                                                                                      0.585, 3.31)
    line = sweep._table([row], "target speed-up").splitlines()[2]
    assert line.startswith("| 1.45 | 0.9300 | 0.6600 | 0.570 | 0.9500 | 0.571 | 0.553 | 3.51 | 1.43x | 0, 1, 2, 3 | "
                           "0.7060 |")
    assert line.endswith("| 0.585 | 0.521 | 3.31 | 1.52x | -1.4 points (-2.9 to +0.0) | +0.6 points (-0.8 to +2.0) "
                         "| +3.2 points (+1.6 to +5.0) | +4.5 points (+2.3 to +6.7) | no |")
    header, rule = sweep._table([row], "target speed-up").splitlines()[:2]
    assert header.count("|") == rule.count("|") == line.count("|")
    assert sweep._table([row], "target speed-up").endswith("The original's int8 file, probe accuracy: 0.588.")
    tie = sweep._row(1.45, dict(metrics, verdict={"beats_layer_drop": True, "probe_lead": "within noise"}))
    assert sweep._table([tie], "target speed-up").splitlines()[2].endswith("| yes (probe within noise) |")
    clear = sweep._row(1.45, dict(metrics, verdict={"beats_layer_drop": True, "probe_lead": "clear"}))
    assert sweep._table([clear], "target speed-up").splitlines()[2].endswith("| yes |")
    from recipes import report

    report.plot_sweep(str(tmp_path / "sweep.png"), [row])  # both panels: cosine, and probe with the original's line
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
