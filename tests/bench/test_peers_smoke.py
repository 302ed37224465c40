"""The peer benchmark's arithmetic, its protocol, and smoke runs of the runners.

The arithmetic (FLOP counts, ceilings, ratios, targets) is checked against
closed forms written out here. The runner processes run on a one-layer,
small-vocabulary model (nothing is timed against a threshold: the machine is
shared); a peer runs only where its venv (bench/peers/setup.sh) exists.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

import pytest

from bench.peers import flops, runner

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEERS_DIR = os.path.join(ROOT, "bench", "peers")
TINY = ["--num_layers=1", "--vocab_size=500", "--batch=2", "--seq=32", "--repeats=2", "--warmup=0",
        "--max_attempts=1", "--idle_timeout_s=0", "--max_foreign_load=1.0"]


# -- FLOP inventory and ceiling -------------------------------------------------------


def _forward_flops(shape, batch, seq):
    """Encoder forward FLOPs: 2 per multiply-add of every projection weight for every token,
    plus q.kᵀ and probs.v (2 · seq² · hidden multiply-adds per sequence and layer)."""
    h, i = shape.hidden_size, shape.intermediate_size
    projection_weights = 4 * h * h + 2 * h * i  # q, k, v, output; FFN in and out
    per_layer = 2 * batch * seq * projection_weights + 2 * 2 * batch * seq * seq * h
    return shape.num_layers * per_layer


@pytest.mark.parametrize("config", ["minilm", "base"])
def test_inference_flops_match_the_closed_form(config):
    shape = runner.SHAPES[config]
    products = flops.matmul_inventory(shape, "inference", batch=32, seq=128)
    assert flops.total_flops(products) == _forward_flops(shape, 32, 128)


def test_bert_base_costs_the_well_known_22_gflop_per_128_tokens():
    # BERT-base at seq 128: ~11.2 G multiply-adds per sequence in its matmuls (the often-quoted figure).
    products = flops.matmul_inventory(runner.SHAPES["base"], "inference", batch=1, seq=128)
    assert flops.total_flops(products) / 1e9 == pytest.approx(22.35, abs=0.01)


@pytest.mark.parametrize("config", ["minilm", "base"])
def test_training_flops_are_three_forward_passes_plus_the_mlm_head(config):
    shape = runner.SHAPES[config]
    batch, seq, predictions = 16, 128, 16 * runner.NUM_PREDICTIONS
    h, vocab = shape.hidden_size, shape.vocab_size
    # Forward, input gradient and weight gradient cost the same for every product.
    mlm_head = 3 * (2 * predictions * h * h + 2 * predictions * h * vocab)
    expected = 3 * _forward_flops(shape, batch, seq) + mlm_head
    assert flops.total_flops(flops.matmul_inventory(shape, "training", batch, seq)) == expected


def test_ceiling_at_a_uniform_speed_is_flops_over_speed():
    shape = runner.SHAPES["minilm"]
    products = flops.matmul_inventory(shape, "inference", batch=32, seq=128)
    speed = 400.0  # GFLOP/s for every product
    result = flops.ceiling(products, {p.key: speed for p in products}, batch=32)
    expected_seconds = _forward_flops(shape, 32, 128) / (speed * 1e9)
    assert result["matmul_seconds_per_batch"] == pytest.approx(expected_seconds)
    assert result["ceiling_seq_per_s"] == pytest.approx(32 / expected_seconds)
    assert result["effective_gflops"] == pytest.approx(speed)


def test_ceiling_weights_each_product_by_its_own_speed():
    products = [flops.Matmul("a", 10, 10, 10, count=2), flops.Matmul("b", 20, 10, 10, transpose_b=True)]
    speeds = {products[0].key: 1.0, products[1].key: 4.0}  # GFLOP/s
    result = flops.ceiling(products, speeds, batch=1)
    seconds = 2 * 2000 / 1e9 + 4000 / 4e9
    assert result["ceiling_seq_per_s"] == pytest.approx(1 / seconds)


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="mode must be one of"):
        flops.matmul_inventory(runner.SHAPES["minilm"], "serving", batch=1, seq=8)


# -- runner protocol --------------------------------------------------------------------


def test_batch_has_the_documented_structure():
    args = runner.parse_args(["--mode=training", "--batch=3", "--seq=40", "--vocab_size=50"])
    batch = runner.make_batch(args)
    assert batch.token_ids.shape == (3, 40) and batch.token_ids.min() >= 1 and batch.token_ids.max() < 50
    assert (batch.padding_mask == 1).all()
    assert (batch.segment_ids[:, :20] == 0).all() and (batch.segment_ids[:, 20:] == 1).all()
    positions = batch.mask_positions
    assert positions.shape == (3, runner.NUM_PREDICTIONS)
    assert positions.min() >= 1 and positions.max() < 40
    assert all(len(set(row)) == runner.NUM_PREDICTIONS and list(row) == sorted(row) for row in positions)


def test_default_batch_follows_the_mode():
    assert runner.parse_args(["--mode=inference"]).batch == 32
    assert runner.parse_args(["--mode=training"]).batch == 16


@pytest.mark.parametrize("argv, message", [
    (["--seq=600"], "exceeds the 512 position embeddings"),
    (["--mode=training", "--seq=20"], "must exceed the 20 masked positions"),
    (["--repeats=0"], "--repeats must be positive"),
])
def test_bad_runner_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        runner.parse_args(argv)
    assert message in capsys.readouterr().err


def test_missing_result_line_is_a_clear_error():
    with pytest.raises(ValueError, match="printed no BENCH_RESULT line"):
        runner.parse_result("some log\nmore log\n")
    assert runner.parse_result('x\nBENCH_RESULT {"a": 1}\nBENCH_RESULT {"a": 2}\n') == {"a": 2}


# -- orchestration arithmetic -------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_peers():
    from bench import bert_peers as module

    if not module.FLAGS.is_parsed():
        module.FLAGS(["bert_peers"])
    return module


def _record(impl, seq_per_s, variant="graph", config="minilm", mode="inference", disturbed=False):
    return {"impl": impl, "variant": variant, "config": config, "mode": mode, "seq_per_s": seq_per_s,
            "peak_rss_mb": 1000.0, "disturbed": disturbed}


def test_ratios_and_targets_from_one_run(bert_peers):
    records = [
        _record("tfreparam", 90.0), _record("tfreparam_xla", 120.0, "xla"),
        _record("tfreparam", 180.0, "lowrank50"), _record("tfreparam_xla", 150.0, "lowrank50_xla"),
        _record("keras_hub", 80.0), _record("model_garden", 100.0, disturbed=True), _record("torch", 50.0, "eager"),
        {"impl": "torch", "variant": "eager", "config": "base", "mode": "inference", "error": "boom"},
    ]
    bert_peers.annotate(records, {("minilm", "inference"): 150.0})
    by = {(r["impl"], r["variant"]): r for r in records if r["config"] == "minilm"}
    assert by[("tfreparam_xla", "xla")]["vs_fastest_peer"] == pytest.approx(1.2)
    assert by[("tfreparam", "graph")]["pct_of_ceiling"] == pytest.approx(60.0)
    assert by[("tfreparam", "lowrank50")]["vs_dense"] == pytest.approx(2.0)
    assert by[("tfreparam_xla", "lowrank50_xla")]["vs_dense"] == pytest.approx(1.25)
    assert "pct_of_ceiling" not in by[("tfreparam", "lowrank50")]  # its FLOPs differ from the dense ceiling's

    verdicts = {v["target"]: v for v in bert_peers.evaluate_targets(records)}
    peer = verdicts["our fp32 (tfreparam_xla) vs fastest peer (model_garden)"]
    assert peer["value"] == pytest.approx(1.2) and peer["met"] and peer["disturbed"]
    assert verdicts["tfreparam_xla % of matmul ceiling"]["value"] == pytest.approx(80.0)
    assert not verdicts["tfreparam_xla % of matmul ceiling"]["met"]  # 80 % < 85 %
    assert verdicts["tfreparam lowrank50 vs dense"]["met"]
    assert not verdicts["tfreparam_xla lowrank50_xla vs dense"]["met"]  # 1.25 < 1.4
    headers, rows = bert_peers.table(records)
    assert rows[-1][4] == "failed" and rows[5][4] == "100.0*"


def test_plan_groups_runs_and_rejects_unknown_names(bert_peers):
    runs = bert_peers.plan(["minilm", "base"], ["inference"], ["tfreparam", "keras_hub"], ["minilm"], False)
    assert runs == [
        ("tfreparam", "graph", "minilm", "inference"), ("tfreparam", "lowrank50", "minilm", "inference"),
        ("keras_hub", "graph", "minilm", "inference"),
        ("tfreparam", "graph", "base", "inference"), ("keras_hub", "graph", "base", "inference"),
    ]
    with pytest.raises(ValueError, match=r"Unknown --impls \['jax'\]"):
        bert_peers.plan(["minilm"], ["inference"], ["jax"], [], False)


def test_missing_peer_venv_is_skipped_with_the_fix(bert_peers, monkeypatch):
    monkeypatch.setattr(bert_peers, "VENVS_DIR", "/nonexistent")
    record = bert_peers.run_one("torch", "eager", "minilm", "inference")
    assert "bash bench/peers/setup.sh torch" in record["skipped"]


# -- the runner processes -------------------------------------------------------------------


def _run(python, script, *args):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([python, os.path.join(PEERS_DIR, script), *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return runner.parse_result(proc.stdout)


def _check_record(record, impl, mode):
    assert record["impl"] == impl and record["mode"] == mode and record["config"] == "minilm"
    assert record["batch"] == 2 and record["threads"] == 2 and len(record["times_ms"]) == 2
    # seq/s is batch / median step time, in the same run.
    assert record["seq_per_s"] == pytest.approx(2 / (statistics.median(record["times_ms"]) / 1e3))
    assert 100 < record["peak_rss_mb"] < 8000
    assert record["shape_override"]["num_layers"] == 1


def test_our_runner_trains():
    record = _run(sys.executable, "run_tfreparam.py", "--mode=training", "--variant=graph", *TINY)
    _check_record(record, "tfreparam", "training")
    # 1 layer of MiniLM width, 500-token vocabulary, pooler and NSP head.
    h, i = 384, 1536
    expected = (500 * h + 512 * h + 2 * h + 2 * h  # embeddings + their LayerNorm
                + 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h  # one block
                + (h * h + h)  # pooler
                + (h * h + h) + 2 * h + 500 + (h * 2 + 2))  # MLM transform, LayerNorm, bias; NSP
    assert record["params"] == expected


@pytest.mark.parametrize("peer, script, variant", [
    ("torch", "run_torch.py", "eager"),
    ("keras_hub", "run_keras_hub.py", "graph"),
    ("model_garden", "run_model_garden.py", "graph"),
])
def test_peer_runner(peer, script, variant):
    python = os.path.join(PEERS_DIR, ".venvs", peer, "bin", "python")
    if not os.path.exists(python):
        pytest.skip(f"no venv for {peer} (bash bench/peers/setup.sh {peer})")
    record = _run(python, script, "--mode=inference", f"--variant={variant}", *TINY)
    _check_record(record, peer, "inference")
    # Every implementation builds the same encoder: embeddings, 1 block, pooler.
    h, i = 384, 1536
    assert record["params"] == (500 * h + 512 * h + 2 * h + 2 * h + 4 * (h * h + h) + 2 * h
                                + (h * i + i) + (i * h + h) + 2 * h + (h * h + h))
