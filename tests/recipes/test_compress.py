"""`recipes.compress`, the main job, end to end on a tiny random BERT: stages, report, metrics, restart, flags."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import app

from recipes import compress, exports, latency, pipeline, stages
from tfreparam.export import runners

FLAGS = compress.FLAGS
SMALL = ["--seq_length=32", "--calibration_per_domain=16", "--train_per_domain=32", "--eval_per_domain=16",
         "--probe_sentences=120", "--retrieval_pairs=60", "--probe_folds=2", "--distill_steps=3", "--batch_size=8",
         "--latency_rounds=5", "--importance_draws=1"]
ISSUE_KEYS = ["heldout_domain_cosine", "heldout_domain_cosine_min", "heldout_domain_nn_agreement",
              "probe_accuracy_original", "probe_accuracy_compressed", "in_domain_cosine", "latency_ms", "baselines"]
LATENCY_KEYS = ["original_fp32", "original_int8", "compressed_fp32", "compressed_int8", "layer_drop_int8"]


def _settings(*argv):
    FLAGS.unparse_flags()
    FLAGS(["compress", *argv])
    return compress.check_flags(FLAGS)


# Sub-millisecond timings of a tiny model are noise: the latency-model stage still exports and times its
# structures, but the fit is replaced by this one, so the pruned structure is the same on every machine.
# A head narrowed to the default 2/6 of its 8 (half its width) costs 0.01 + 0.5 · 0.04 = 0.03.
FIXED_FIT = latency.LatencyModel(constant=0.1, per_block=0.1, per_head=0.01, per_neuron=0.003, points=[],
                                 per_head_width=0.04)


def _fixed_fit(measured, structures):
    fit = latency.LatencyModel(**{**FIXED_FIT.to_dict(), "points": []})
    fit.points = [{"structure": n, "blocks": s[0], "heads": s[1], "neurons": s[2], "measured": measured[n],
                   "predicted": fit.ratio(*s)} for n, s in structures.items()]
    return fit


@pytest.fixture(scope="module")
def conversions(tmp_path_factory):
    """One conversion cache for this file's runs: the original's files are converted by the first run only
    (tests/recipes/test_conversion_cache.py checks that a kept file is the converter's own bytes)."""
    return str(tmp_path_factory.mktemp("conversions"))


@pytest.fixture(scope="module")
def first_run(tiny_bert, conversions, tmp_path_factory):
    report_dir = str(tmp_path_factory.mktemp("demo"))
    settings = _settings(f"--model={tiny_bert}", f"--report_dir={report_dir}", f"--conversion_cache={conversions}",
                         *SMALL)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(latency, "fit_latency_model", _fixed_fit)
        # ... and the chosen structure "measures" what the fixed fit predicts (the check, not the re-search, runs).
        patch.setattr(stages.CompressRun, "_measured_ratio", _predicted_ratio)
        metrics = compress.run(settings)
    return settings, metrics, report_dir


def _fixed_latency_model(run):
    run.results["latency model"] = {"_key": "fixed", "model": FIXED_FIT.to_dict(), "timing": {}}
    run.latency_fit = latency.LatencyModel(**{**FIXED_FIT.to_dict(), "points": []})


def _predicted_ratio(run, selection):
    return FIXED_FIT.constant + FIXED_FIT.per_block * len(run.kept_blocks) + selection.cost


def test_metrics_have_the_issue_keys(first_run):
    _, metrics, report_dir = first_run
    with open(os.path.join(report_dir, "metrics.json")) as f:
        stored = json.load(f)
    for m in (metrics, stored):
        assert set(ISSUE_KEYS) <= set(m)
        assert set(LATENCY_KEYS) <= set(m["latency_ms"]) and all(v > 0 for v in m["latency_ms"].values())
        assert set(m["baselines"]) == {"int8", "layer_drop", "minilm_l3"}
    assert 0 < metrics["heldout_domain_cosine_min"] <= metrics["heldout_domain_cosine"] <= 1
    assert metrics["protocol"]["heldout_domains"] == ["wordnet", "manual"]
    assert metrics["sentences"]["heldout_domains"] == {"wordnet": 16, "manual": 16}
    assert metrics["sentences"]["calibration"] == {"bible": 16, "debian": 16, "stdlib": 16, "vocab": 16}
    assert set(metrics["probes"]) == {"wordnet_lexname", "manual_chapter"}
    assert metrics["in_domain_minus_heldout_cosine"] == pytest.approx(
        metrics["in_domain_cosine"] - metrics["heldout_domain_cosine"])
    # The headline held-out figure is the mean over the held-out domains of the per-domain figures.
    per_domain = metrics["per_domain"]["heldout"]
    assert metrics["heldout_domain_cosine"] == pytest.approx(np.mean([v["cosine"] for v in per_domain.values()]))
    assert metrics["heldout_domain_cosine_min"] == min(v["cosine_min"] for v in per_domain.values())


def test_probe_differences_are_those_of_the_probe_table(first_run):
    """Recomputed per sentence from the stored embeddings, they equal the table's accuracies' differences."""
    _, metrics, _ = first_run
    rows = {row["key"]: row for row in metrics["models"]}
    pairs = {"ours_int8_minus_original": ("compressed_int8", "original_fp32"),
             "ours_int8_minus_layer_drop_int8": ("compressed_int8", "layer_drop_int8"),
             "original_minus_layer_drop_int8": ("original_fp32", "layer_drop_int8")}
    assert set(metrics["probe_differences"]) == set(pairs)
    for key, (model, other) in pairs.items():
        d = metrics["probe_differences"][key]
        assert d["difference"] == pytest.approx(rows[model]["probe"] - rows[other]["probe"], abs=1e-12)
        assert d["low"] <= d["difference"] <= d["high"]
        assert d["examples"] == sum(metrics["sentences"]["probe"].values())


def test_retrieval_is_each_models_own_ranking_of_the_held_out_pairs(first_run):
    """WordNet held out: its example -> definition pairs, ranked by each model in its own space (L3 included).

    The figures are recomputed here from the stored embeddings with an argmax per query (the implementation
    counts strictly better targets), and the differences are those of the table."""
    _, metrics, report_dir = first_run
    assert metrics["protocol"]["retrieval_sets"] == ["wordnet_gloss"]
    assert metrics["sentences"]["retrieval"] == {"wordnet_gloss": 60}
    evaluate = os.path.join(report_dir, "stages", "evaluate")
    stored = {name: np.load(os.path.join(evaluate, f"{name}.npz"))
              for name in ("compressed_int8", "layer_drop_int8", "minilm_l3_int8")}
    stored["original"] = np.load(os.path.join(report_dir, "stages", "reference", "embeddings.npz"))

    def top1(data):
        q, t = (data[f"retrieval/wordnet_gloss.{side}"] for side in ("query", "target"))
        q, t = q / np.linalg.norm(q, axis=1, keepdims=True), t / np.linalg.norm(t, axis=1, keepdims=True)
        return np.argmax(q @ t.T, axis=1) == np.arange(len(q))

    table = metrics["retrieval"]["wordnet_gloss"]
    rows = {row["key"]: row for row in metrics["models"]}
    for name, data in stored.items():
        assert table[name]["top1"] == pytest.approx(np.mean(top1(data)))
        assert table[name]["top1"] <= table[name]["top10"]
    assert rows["compressed_int8"]["retrieval"] == table["compressed_int8"]["top1"]
    assert rows["original_fp32"]["retrieval"] == table["original"]["top1"]
    assert rows["minilm_l3_int8"]["retrieval"] == table["minilm_l3_int8"]["top1"]
    for key, other in (("ours_int8_minus_original", "original"), ("ours_int8_minus_layer_drop_int8", "layer_drop_int8"),
                       ("ours_int8_minus_minilm_l3_int8", "minilm_l3_int8")):
        d = metrics["retrieval_differences"][key]
        assert d["difference"] == pytest.approx(np.mean(top1(stored["compressed_int8"])) - np.mean(top1(stored[other])))
        assert d["examples"] == 60
    report = open(os.path.join(report_dir, "report.md")).read()
    assert "## Retrieval (held-out domain)" in report and "Held-out retrieval (wordnet_gloss: 60 queries" in report


def test_the_probe_is_reported_in_domain_too(first_run):
    """Debian (compressed on) has its section probe in-domain; its differences are those of its table."""
    _, metrics, report_dir = first_run
    rows = {row["key"]: row for row in metrics["models"]}
    assert metrics["protocol"]["in_domain_probe_sets"] == ["debian_section"]
    assert set(metrics["in_domain_probes"]) == {"debian_section"}
    assert metrics["in_domain_probe_accuracy_compressed_int8"] == rows["compressed_int8"]["in_domain_probe"]
    # The fp32 models and the original's int8 embed the Pareto table's text only (cosine, held-out probe).
    for key in ("compressed_fp32", "layer_drop_fp32", "original_int8"):
        assert rows[key]["probe"] is not None and rows[key]["in_domain_probe"] is None
        assert rows[key]["retrieval"] is None
    assert metrics["baselines"]["layer_drop"]["int8"]["in_domain_probe"] == rows["layer_drop_int8"]["in_domain_probe"]
    assert metrics["in_domain_probe_accuracy_original"] == rows["original_fp32"]["in_domain_probe"]
    for key, model, other in (("ours_int8_minus_original", "compressed_int8", "original_fp32"),
                              ("ours_int8_minus_layer_drop_int8", "compressed_int8", "layer_drop_int8"),
                              ("original_minus_layer_drop_int8", "original_fp32", "layer_drop_int8")):
        d = metrics["in_domain_probe_differences"][key]
        assert d["difference"] == pytest.approx(
            rows[model]["in_domain_probe"] - rows[other]["in_domain_probe"], abs=1e-12)
        assert d["examples"] == metrics["sentences"]["in_domain_probe"]["debian_section"]
    report = open(os.path.join(report_dir, "report.md")).read()
    assert "## Linear probe (in-domain" in report and "| debian_section |" in report
    assert "- In-domain, the original minus layer drop int8 (the lead of an exact copy" in report


def test_the_originals_probe_by_depth_ends_at_its_output(first_run, tiny_bert):
    """One probe per depth (embeddings, then each block); the last, the output's, is the original's figure in the
    probe tables (the depth embedder's numbers are checked against independent forwards in test_embedding_eval)."""
    _, metrics, report_dir = first_run
    with open(os.path.join(tiny_bert, "config.json")) as f:
        depths = json.load(f)["num_hidden_layers"] + 1
    for by_depth, table in ((metrics["probe_by_depth_original"], metrics["probes"]),
                            (metrics["in_domain_probe_by_depth_original"], metrics["in_domain_probes"])):
        assert set(by_depth) == set(table)
        for name, accuracies in by_depth.items():
            assert len(accuracies) == depths and all(0 <= a <= 1 for a in accuracies)
            assert accuracies[-1] == table[name]["original"]
    report = open(os.path.join(report_dir, "report.md")).read()
    assert "## The original's probe by depth" in report and "| after block 1 (output) |" in report


def test_the_depth_note_names_an_earlier_block_that_probes_better():
    from recipes import report

    # The demo's original on its two held-out sets (embeddings, after blocks 0-5): lexname peaks inside the model.
    by_depth = {"wordnet_lexname": [0.479, 0.485, 0.511, 0.523, 0.545, 0.546, 0.523],
                "manual_chapter": [0.558, 0.562, 0.568, 0.579, 0.593, 0.621, 0.658]}
    earlier = report.earlier_depths_probe_better(by_depth)
    assert earlier == {"wordnet_lexname": {"depth": 5, "accuracy": 0.546, "output": 0.523}}
    note = " ".join(report._depth_note({"probe_by_depth_original": by_depth}))
    assert "on wordnet_lexname the original's own hidden state after block 4 probes 0.546 against its output's 0.523" \
        in note and "manual_chapter" not in note
    ceiling = {"difference": 0.006, "low": -0.008, "high": 0.020, "examples": 3318}
    note = " ".join(report._depth_note({"probe_by_depth_original": by_depth,
                                        "probe_differences": {"original_minus_layer_drop_int8": ceiling}}))
    assert "an exact copy of the original would lead the layer drop by +0.6 points (95 % interval -0.8 to +2.0" in note
    # Within the margin it is not named.
    assert report.earlier_depths_probe_better({"s": [0.50, 0.529, 0.523]}) == {}
    assert report._depth_note({"probe_by_depth_original": {"s": [0.50, 0.529, 0.523]}}) == []


def test_the_structure_was_pruned_to_the_latency_budget(first_run):
    settings, metrics, _ = first_run
    structure = metrics["structure"]
    kept = sum(structure["heads_per_block"].values()), sum(structure["neurons_per_block"].values())
    # 1 / (1.45 + 0.05) = 0.667 of the original's time: 0.1 + 0.2 (blocks) leave 0.367 for 0.03 / head +
    # 0.003 / neuron, at most 12 heads' and 122 neurons' worth of the 8 heads and 128 neurons: some must go.
    budget = 1 / (settings.target_speedup + settings.speedup_margin) - 0.3
    assert kept[0] <= 8 and kept[1] < 128 and 0.03 * kept[0] + 0.003 * kept[1] <= budget + 1e-9
    assert 0.03 * kept[0] + 0.003 * (kept[1] + 1) > budget - 1e-9 or kept[1] == 128  # no neuron left unspent
    # The default keeps every head (--min_head_share=1), narrowed to a quarter / three quarters of its 8 dimensions.
    assert structure["min_heads"] == 4 and set(structure["heads_per_block"].values()) == {4}
    assert structure["head_widths"] == [2, 6] and structure["head_size"] == 8
    # The structure was measured once (here: the fixed fit's own prediction, so no re-search).
    assert len(structure["checks"]) == 1
    assert structure["measured_speedup"] == pytest.approx(structure["predicted_speedup"])
    fit = metrics["latency_model"]
    assert fit["constant"] == 0.1 and len(fit["points"]) == 6  # the original, 4 probe structures, narrowed heads
    predicted = 0.1 + 2 * 0.1 + 0.03 * kept[0] + 0.003 * kept[1]
    assert 1 / predicted == pytest.approx(structure["predicted_speedup"])
    assert structure["predicted_speedup"] >= settings.target_speedup + settings.speedup_margin - 1e-9
    assert "refit" not in metrics  # off by default (tests/recipes/test_protocol.py runs it, --refit)
    assert metrics["parameters"]["compressed"] < metrics["parameters"]["original"]


def test_report_reads_in_pipeline_order_without_raw_dumps(first_run):
    _, metrics, report_dir = first_run
    report = open(os.path.join(report_dir, "report.md")).read()
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Quality against speed and size"
    assert headings[-1] == "## Stages"
    assert "```" not in report and "{" not in report and "_key" not in report
    for label in ("| original, int8 |", "| ours, int8 |", "| layer drop, int8 |", "| MiniLM-L3, fp32 |"):
        assert label in report
    # L3's int8 row names its weight width: 7-bit where this CPU has no VNNI (exports.onnx_int8).
    bits = "8-bit" if exports.cpu_has_vnni() else "7-bit"
    assert metrics["l3_int8_weights"] == bits
    assert f"| MiniLM-L3, int8 | ONNX Runtime (dynamic int8, {bits} per-channel weights) |" in report
    stage_lines = report.split("## Stages")[1]
    order = ["load the checkpoint", "split the text", "importance", "latency model", "choose and remove",
             "distillation (ours)", "distillation (layer-drop", "export", "evaluate", "batch-1"]
    positions = [stage_lines.index(name) for name in order]
    assert positions == sorted(positions)
    assert metrics["verdict"]["text"] in report
    # What the distillation did, read from its own result: embeddings frozen, dropout off.
    assert metrics["distillation"]["train_embeddings"] is False and metrics["distillation"]["dropout"] is False
    assert "parameters trained (the embedding layers stay the original's), dropout off." in report
    assert open(os.path.join(report_dir, "pareto.png"), "rb").read(4) == b"\x89PNG"
    assert metrics["plots"] == ["pareto.png"]


def test_int8_parity_is_recorded_and_the_files_exist(first_run):
    _, metrics, report_dir = first_run
    assert 0.99 <= metrics["int8_cosine_to_keras"] <= 1.0 + 1e-9
    assert metrics["int8_cosine_to_keras_min"] <= metrics["int8_cosine_to_keras"]
    assert metrics["bytes"]["compressed_int8"] == os.path.getsize(os.path.join(report_dir, "model_int8.tflite"))
    assert metrics["bytes"]["compressed_int8"] < 0.5 * metrics["bytes"]["compressed_fp32"]
    # Every TFLite file takes any length: timed at --seq_length, each evaluation batch run at its own.
    tflite = [path for path in metrics["files"].values() if path.endswith(".tflite")]
    assert len(tflite) == 6 and all(runners.runner_for(path).sequence_length is None for path in tflite)
    assert os.path.isdir(os.path.join(report_dir, "tensorboard", "distill"))
    assert os.listdir(os.path.join(report_dir, "tensorboard", "layer_drop"))


def test_ours_and_the_original_run_in_l3s_runtime_too(first_run):
    """ONNX Runtime int8 of ours and the original: timed beside L3, and close to what their Keras models compute."""
    from recipes import embedding_eval

    _, metrics, report_dir = first_run
    rows = {row["key"]: row for row in metrics["models"]}
    for key in ("original_int8_onnxruntime", "compressed_int8_onnxruntime"):
        assert os.path.isfile(metrics["files"][key]) and metrics["bytes"][key] > 0 and metrics["latency_ms"][key] > 0
    ort = metrics["onnxruntime"]
    base = metrics["latency_ms"]["original_int8_onnxruntime"]
    assert ort["compressed_int8_speedup"] == pytest.approx(base / metrics["latency_ms"]["compressed_int8_onnxruntime"])
    assert ort["minilm_l3_int8_speedup"] == pytest.approx(base / metrics["latency_ms"]["minilm_l3_int8"])
    # Every embedding of our ONNX int8 file against our Keras model's (stored by the evaluate stage).
    stored = lambda name: embedding_eval.load(os.path.join(report_dir, "stages", "evaluate", f"{name}.npz"))  # noqa
    keras_ours, onnx_ours = stored("compressed"), stored("compressed_int8_onnxruntime")
    for group in ("in_domain", "heldout"):
        for domain, a in keras_ours[group].items():
            b = onnx_ours[group][domain]
            cosine = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            assert cosine.min() > 0.99, (group, domain, cosine.min())
    # Embedded for cosine only: the probe of our int8 is the TFLite file's.
    assert rows["compressed_int8_onnxruntime"]["probe"] is None and "probes" not in onnx_ours
    assert rows["compressed_int8_onnxruntime"]["heldout_cosine"] == pytest.approx(
        rows["compressed_fp32"]["heldout_cosine"], abs=0.02)
    report = open(os.path.join(report_dir, "report.md")).read()
    bits = "8-bit" if exports.cpu_has_vnni() else "7-bit"
    assert f"| ours, int8 | ONNX Runtime (dynamic int8, {bits} per-channel weights) |" in report
    assert f"({ort['compressed_int8_speedup']:.2f}x), MiniLM-L3" in report


def test_layer_drop_got_the_same_distillation_budget(first_run):
    _, metrics, _ = first_run
    drop = metrics["baselines"]["layer_drop"]
    assert drop["distillation"]["steps"] == metrics["distillation"]["steps"] == 3
    assert drop["keep_blocks"] == [0]  # two blocks: the only layer drop keeps the first
    assert drop["distillation"]["layer_map"] == {"1": 2}  # its block learns the teacher's last block


def test_compressed_encoder_loads_with_keras_after_a_bare_import_tfreparam(first_run):
    # It holds BERT layers (WordEmbedding, AttentionMath, ...): `import tfreparam` alone used to fail to load it.
    _, metrics, report_dir = first_run
    path = os.path.join(report_dir, "compressed_encoder.keras")
    assert metrics["compressed_model"] == path
    code = ("import tfreparam, numpy as np, tf_keras as keras\n"
            f"m = keras.models.load_model({path!r})\n"
            "x = {'input_word_ids': np.array([[101, 2023, 2003, 102]]), 'input_mask': np.ones((1, 4), 'int32'),"
            " 'input_type_ids': np.zeros((1, 4), 'int32')}\n"
            "print(sorted(m(x)), m(x)['sequence_output'].shape)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "['pooled_output', 'sequence_output'] (1, 4, 32)" in done.stdout


def test_dropped_blocks_go_before_the_search_and_give_it_their_time(tiny_bert, conversions, tmp_path):
    settings = _settings(f"--model={tiny_bert}", f"--report_dir={tmp_path}", f"--conversion_cache={conversions}",
                         *SMALL, "--drop_blocks=0", "--baselines=int8")
    with pytest.MonkeyPatch.context() as patch:
        # The fixed fit without exporting and timing the probe structures (first_run does that).
        patch.setattr(stages.CompressRun, "latency_model", _fixed_latency_model)
        patch.setattr(stages.CompressRun, "_measured_ratio", _predicted_ratio)
        metrics = compress.run(settings)
    structure = metrics["structure"]
    assert structure["dropped_blocks"] == [0] and len(structure["heads_per_block"]) == 1
    # One block's fixed 0.1 is gone: 0.667 - 0.1 - 0.1 = 0.467 for the one block's 4 heads and 64 neurons
    # (0.12 + 0.192 = 0.312), so nothing of block 1 needs to go.
    assert list(structure["heads_per_block"].values()) == [4] and list(structure["neurons_per_block"].values()) == [64]
    assert 1 / structure["predicted_speedup"] == pytest.approx(0.1 + 0.1 + 0.312)
    # Our remaining block (the original's block 1) learns the original's block 1 output (hidden state 2).
    assert metrics["distillation"]["layer_map"] == {"1": 2}
    with open(os.path.join(tmp_path, "report.md")) as f:
        assert "Blocks [0] of the original removed whole (--drop_blocks)" in f.read()


def test_rerun_skips_finished_stages(first_run, capsys):
    settings, metrics, _ = first_run
    again = compress.run(settings)
    out = capsys.readouterr().out
    for stage in ("importance", "latency model", "prune", "distill", "layer drop", "export", "evaluate"):
        assert f"] {stage}: skipped" in out
    assert again["heldout_domain_cosine"] == metrics["heldout_domain_cosine"]
    assert again["latency_ms"] == metrics["latency_ms"]


def test_interrupted_stage_runs_again(tmp_path):
    pipe = pipeline.Pipeline(str(tmp_path), log=lambda line: None)
    calls = []
    pipe.run("first", lambda stage: calls.append("first") or {"value": 1}, settings={"a": 1})

    def interrupted(stage):
        calls.append("second")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipe.run("second stage", interrupted)
    again = pipeline.Pipeline(str(tmp_path), log=lambda line: None)
    assert again.run("first", lambda stage: calls.append("first again"), settings={"a": 1})["value"] == 1
    again.run("second stage", lambda stage: calls.append("second again") or {})
    assert calls == ["first", "second", "second again"]
    again.run("first", lambda stage: calls.append("first, new settings") or {}, settings={"a": 2})
    assert calls[-1] == "first, new settings"
    assert os.path.isdir(tmp_path / "stages" / "second_stage")


@pytest.mark.slow
def test_lowrank_policy_with_magnitude_pruning_qat_and_extra_exports(tiny_bert, conversions, tmp_path):
    settings = _settings(f"--model={tiny_bert}", f"--report_dir={tmp_path}", f"--conversion_cache={conversions}",
                         *SMALL, "--policy=lowrank",
                         "--methods=svd,whitened", "--budget=0.5", "--sparsity=0.5", "--qat", "--qat_steps=2",
                         "--int8=full", "--baselines=int8", "--export=onnx")
    metrics = compress.run(settings)
    methods = metrics["factorize"]["methods"]
    assert set(methods) == {"svd", "whitened"} and metrics["factorize"]["best"] == "whitened"
    assert methods["whitened"]["in_domain_cosine"] > methods["svd"]["in_domain_cosine"]
    assert methods["svd"]["params_after"] <= 0.5 * methods["svd"]["params_before"] + 2 * 64
    assert metrics["magnitude_prune"]["zero_fraction"] >= 0.45
    assert metrics["qat"]["scheme"] == "pqat"
    assert "layer_drop" not in metrics["baselines"] and metrics["verdict"]["beats_layer_drop"] is None
    assert os.path.isfile(tmp_path / "model.onnx")
    from tfreparam.export.flatbuffer import float_ops

    with open(tmp_path / "model_int8.tflite", "rb") as f:
        assert set(float_ops(f.read())) <= {"CAST"}


@pytest.fixture
def files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    text = tmp_path / "text.txt"
    text.write_text("One sentence here.\n")
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    return {"empty": str(empty), "gpt": str(gpt), "missing": str(tmp_path / "nope.txt"), "text": str(text)}


@pytest.mark.parametrize("argv, message", [
    (["--budget=1.5"], "--budget must be in (0, 1], got 1.5"),
    (["--target_speedup=1.0"], "--target_speedup must be in (1, 20]"),
    (["--min_head_share=1.5"], "--min_head_share must be in [0, 1]"),
    (["--head_widths=33,8"], "--head_widths must be two widths from 1 to the model's head size 32"),
    (["--head_widths=8"], "--head_widths must be two widths"),
    (["--head_widths=8,wide"], "--head_widths must be two widths"),
    (["--policy=lowrank", "--head_widths=8,24"], "--head_widths applies to the sentence-encoder job's"),
    (["--model=/nonexistent/ckpt"], "Checkpoint directory '/nonexistent/ckpt' does not exist"),
    (["--model={gpt}"], "is not a BERT checkpoint (config.json says model_type='gpt2')"),
    (["--train_files={empty}"], "is empty; give text files"),
    (["--eval_files={missing}"], "does not exist or is not a file"),
    (["--heldout_domains=wordnet,poetry"], "--heldout_domains: unknown domain(s) ['poetry']"),
    (["--heldout_domains="], "--heldout_domains is empty"),
    (["--heldout_domains=bible", "--compression_domains=bible,debian"], "are both held out and compression"),
    (["--heldout_domains=wordnet,debian,stdlib,manual,bible"], "No compression domain is left"),
    (["--eval_files={text}", "--heldout_domains=bible"], "Give one or the other"),
    (["--train_files={text}", "--compression_domains=bible"], "Give one or the other"),
    (["--preset=thorough", "--heldout_domains=bible"], "--preset=thorough holds out each built-in domain"),
    (["--retrieval_pairs=1"], "--retrieval_pairs must be 0 (none) or >= 2"),
    (["--policy=lowrank", "--methods=svd,magic"], "--methods must be a non-empty subset"),
    (["--baselines=int8,magic"], "--baselines takes"),
    (["--layer_drop_keep=0,9"], "--layer_drop_keep must be increasing block indices in 0..5"),
    (["--layer_drop_keep=0,1,2,3,4,5"], "fewer than all 6"),
    (["--drop_blocks=5"], "--drop_blocks must be increasing block indices in 0..4 (the last block"),
    (["--drop_blocks=3,1"], "--drop_blocks must be increasing block indices"),
    (["--drop_blocks=x"], "--drop_blocks must be block indices like 4"),
    (["--drop_blocks=1", "--refit"], "it cannot follow --drop_blocks"),
    (["--drop_blocks=1", "--policy=lowrank"], "--drop_blocks applies to --policy=structured"),
    (["--m_by_n=4:2"], "--m_by_n must look like '2:4'"),
    (["--export=saved_model,zip"], "--export takes"),
    (["--ranks=abc"], "--ranks applies to --policy=lowrank"),
    (["--policy=lowrank", "--ranks=abc"], "--ranks must be one integer rank"),
    (["--eval_per_domain=5"], "--eval_per_domain must be >= 11"),
    (["--probe_folds=1"], "--probe_folds must be >= 2"),
    (["--hidden_weight=0", "--embedding_weight=0"], "distillation would have no loss"),
    (["--qat", "--int8=dynamic"], "--qat trains int8 ranges for a fully-integer model"),
    (["--task_model={text}"], "is not a directory (a recipes.finetune --output_dir)"),
])
def test_bad_flags_fail_before_any_work(files, argv, message):
    argv = [a.format(**files) for a in argv]
    with pytest.raises(app.UsageError) as error:
        _settings(*argv)
    assert message in str(error.value)


def test_settings_fields_are_the_flag_names():
    from recipes.compress_settings import FIELDS

    settings = _settings("--target_speedup=1.7", "--heldout_domains=debian", "--baselines=int8")
    assert set(FIELDS) <= set(FLAGS)
    assert settings.target_speedup == 1.7 and settings.heldout_domains == ("debian",)
    assert settings.baselines == ("int8",) and settings.policy == "structured"


def test_command_line_reports_bad_flags_without_a_traceback():
    result = subprocess.run([sys.executable, "-m", "recipes.compress", "--budget=1.5"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0
    assert "--budget must be in (0, 1], got 1.5" in result.stderr and "Traceback" not in result.stderr


def test_thorough_preset_holds_out_each_domain_in_turn(tmp_path, monkeypatch):
    from recipes import corpus, stages
    from tests.recipes.fold_setup import fold_metrics

    held = []

    def fake_run(self):
        domain = self.s.heldout_domains[0]
        held.append((domain, self.s.compression_domains, self.s.report_dir))
        return fold_metrics(0.5 + 0.1 * len(held), 0.4, 0.95, 1.5, beats=len(held) % 2 == 0)

    monkeypatch.setattr(stages.CompressRun, "run", fake_run)
    summary = compress.run(_settings("--preset=thorough", f"--report_dir={tmp_path}"))
    assert [h[0] for h in held] == list(corpus.DOMAINS)
    assert all(h[1] == () and h[2] == str(tmp_path / f"heldout_{h[0]}") for h in held)
    assert summary["average"]["heldout_cosine"]["compressed_int8"] == pytest.approx(np.mean([0.6, 0.7, 0.8, 0.9, 1.0]))
    assert summary["average"]["labelled_folds"] == 0
    table = (tmp_path / "lodo.md").read_text()
    assert table.count("| wordnet |") == 1 and "| **average** |" in table
    assert json.loads((tmp_path / "lodo.json").read_text())["beats_layer_drop"]["debian"] is True


def test_thorough_preset_keeps_the_longer_budget_unless_a_flag_names_it(tmp_path):
    demo = _settings(f"--report_dir={tmp_path}")
    assert (demo.distill_steps, demo.latency_rounds) == (450, 120)
    thorough = _settings("--preset=thorough", f"--report_dir={tmp_path}")
    assert (thorough.distill_steps, thorough.latency_rounds) == (600, 200)
    named = _settings("--preset=thorough", "--distill_steps=30", f"--report_dir={tmp_path}")
    assert (named.distill_steps, named.latency_rounds) == (30, 200)


def test_head_widths_resolve_against_the_models_head_size(tiny_bert, tmp_path):
    # The tiny model's heads are 8 wide, MiniLM's 32: 'auto' is a quarter and three quarters of either.
    assert _settings(f"--model={tiny_bert}", f"--report_dir={tmp_path}").head_widths == (2, 6)
    assert _settings(f"--report_dir={tmp_path}").head_widths == (8, 24)
    assert _settings(f"--report_dir={tmp_path}", "--head_widths=4,16").head_widths == (4, 16)
    for whole in ("--head_widths=full", "--head_widths=32,32"):
        assert _settings(f"--report_dir={tmp_path}", whole).head_widths == ()
    # The factorized policies keep the default quietly (it narrows the structured job only).
    assert _settings(f"--report_dir={tmp_path}", "--policy=lowrank").head_widths == ()


def test_the_learning_rate_defaults_to_each_jobs_measured_value(tiny_bert, tmp_path):
    from recipes.compress_settings import CompressSettings

    assert _settings(f"--model={tiny_bert}", f"--report_dir={tmp_path}").learning_rate == 2e-4
    assert _settings(f"--model={tiny_bert}", f"--report_dir={tmp_path}", "--learning_rate=5e-4").learning_rate == 5e-4
    assert CompressSettings(task_model="runs/classifier").learning_rate == 1e-4  # the task path's measured recipe


def test_the_verdict_names_each_probe_set_when_the_mean_decides():
    from recipes import report

    row = lambda cos, probe, ms: {"heldout_cosine": cos, "probe": probe, "latency_ms": ms}  # noqa: E731
    by_key = {"compressed_int8": row(0.92, 0.570, 1.59), "layer_drop_int8": row(0.71, 0.585, 1.56)}
    probes = {"wordnet_lexname": {"compressed_int8": 0.508, "layer_drop_int8": 0.544},
              "manual_chapter": {"compressed_int8": 0.633, "layer_drop_int8": 0.626}}
    lost = report.verdict(by_key, probes)
    assert lost["beats_layer_drop"] is False
    assert "its probe accuracy is not higher" in lost["text"] and "it is slower" not in lost["text"]
    assert "(wordnet_lexname 0.508 against 0.544, manual_chapter 0.633 against 0.626)" in lost["text"]
    by_key["compressed_int8"]["probe"] = 0.60
    assert report.verdict(by_key, probes)["beats_layer_drop"] is True
    by_key["compressed_int8"]["latency_ms"] = 1.56 * 1.06  # more than 5 % slower
    assert "it is slower" in report.verdict(by_key)["text"]
    difference = {"difference": -0.0123, "low": -0.0241, "high": 0.0004, "examples": 4000}
    assert ("probe difference -1.2 points (95 % interval -2.4 to +0.0, 4,000 sentences)"
            in report.verdict(by_key, probes, difference)["text"])
    assert report.verdict(by_key, probes, difference)["probe_lead"] == "within noise"


def test_a_win_whose_probe_lead_is_within_noise_is_written_as_a_match_on_the_probe():
    from recipes import report

    row = lambda cos, probe, ms: {"heldout_cosine": cos, "probe": probe, "latency_ms": ms}  # noqa: E731
    by_key = {"compressed_int8": row(0.93, 0.585, 10.11), "layer_drop_int8": row(0.71, 0.584, 10.12)}
    noisy = {"difference": 0.001, "low": -0.013, "high": 0.014, "examples": 3318}
    tie = report.verdict(by_key, None, noisy)
    assert tie["beats_layer_drop"] is True and tie["probe_lead"] == "within noise"
    assert "matches it on the probe" in tie["text"] and "beats the layer-drop baseline:" not in tie["text"]
    clear = report.verdict(by_key, None, dict(noisy, low=0.002))
    assert clear["probe_lead"] == "clear" and "Our int8 model beats the layer-drop baseline: held-out" in clear["text"]
    assert report.verdict(by_key, None, dict(noisy, high=-0.001))["probe_lead"] == "behind"
    assert report.verdict(by_key)["probe_lead"] is None
    # The bar is met as measured; the targets line says the probe's side of it is noise.
    metrics = {"compressed_int8_speedup": 1.5, "heldout_domain_cosine": 0.93, "probe_accuracy_compressed": 0.585,
               "probe_accuracy_original": 0.591, "in_domain_minus_heldout_cosine": 0.025, "verdict": tie}
    assert report.targets(metrics)["layer_drop"] == {
        "what": "higher cosine and probe than layer drop at equal or lower latency", "met": True,
        "note": "as measured; the probe lead is within noise"}
    assert "note" not in report.targets(dict(metrics, verdict=clear))["layer_drop"]


def _matmul_onnx(path: str, weight: np.ndarray) -> str:
    """An ONNX graph y = x @ weight, saved at `path`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rows, cols = weight.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, rows])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, cols])],
                              [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _onnx_run(path: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_onnx_int8_quantizes_from_a_private_copy_and_keeps_the_numbers(tmp_path, monkeypatch):
    # onnxruntime writes "<input>-inferred.onnx" beside its input and deletes it: from the installed package's
    # directory, two runs at once deleted each other's file (seen with two pytest workers).
    from onnxruntime import quantization

    from recipes import exports

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((16, 8)).astype("float32")
    source_dir = tmp_path / "package"
    source_dir.mkdir()
    source = _matmul_onnx(str(source_dir / "model.onnx"), weight)
    inputs = []
    original = quantization.quantize_dynamic
    monkeypatch.setattr(quantization, "quantize_dynamic", lambda path, *a, **k: inputs.append(path) or
                        original(path, *a, **k))
    target = str(tmp_path / "out" / "int8.onnx")
    assert exports.onnx_int8(source, target) == ("8-bit" if exports.cpu_has_vnni() else "7-bit")
    assert inputs and os.path.dirname(os.path.abspath(inputs[0])) != str(source_dir)
    assert os.listdir(source_dir) == ["model.onnx"] and os.listdir(tmp_path / "out") == ["int8.onnx"]
    x = rng.standard_normal((4, 16)).astype("float32")
    # int8 weights on this machine's kernels: close to numpy's fp32 product (on a CPU without VNNI, 8-bit weights
    # gave entries off by half here: the 16-bit pair sums saturated).
    np.testing.assert_allclose(_onnx_run(target, x), x @ weight, rtol=0.05, atol=0.1)


def test_onnx_int8_takes_7_bit_weights_exactly_where_the_cpu_lacks_vnni(tmp_path, monkeypatch):
    from onnxruntime import quantization

    from recipes import exports

    weight = np.random.default_rng(1).standard_normal((16, 8)).astype("float32")
    source = _matmul_onnx(str(tmp_path / "model.onnx"), weight)
    chosen = []
    original = quantization.quantize_dynamic
    monkeypatch.setattr(quantization, "quantize_dynamic", lambda *a, **k: chosen.append(k["reduce_range"]) or
                        original(*a, **k))
    for vnni in (True, False):
        monkeypatch.setattr(exports, "cpu_has_vnni", lambda: vnni)
        assert exports.onnx_int8(source, str(tmp_path / f"vnni_{vnni}.onnx")) == ("8-bit" if vnni else "7-bit")
    assert chosen == [False, True]
    # 7-bit weights keep every pair sum in 16 bits on any x86 kernel: within 7-bit rounding of numpy's product.
    x = np.random.default_rng(2).standard_normal((4, 16)).astype("float32")
    np.testing.assert_allclose(_onnx_run(str(tmp_path / "vnni_False.onnx"), x), x @ weight, rtol=0.1, atol=0.2)
