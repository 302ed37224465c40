"""Issue 5's end-to-end path on the real MiniLM weights, one stage after another.

factorize at 50 % of the encoder projections -> magnitude (or 2:4) pruning
with `model.fit` -> pruning-preserving QAT with `model.fit` -> fully-integer
int8 TFLite (and, for one case, the int16x8 TFLite that holds MiniLM's
outliers). Every stage is checked against what it promises (parameter
budget, per-weight sparsity, zeros surviving QAT, integer-only ops, agreement
of the int8 file with the QAT model) and its held-out sentence-embedding
cosine to the original encoder is recorded (printed with -s) and bounded
below by what was measured when the test was written, so a regression in any
stage shows up. Step counts are tiny: this checks that the stages compose,
not how far distillation can take the model (that is `recipes/compress.py`).

The encoder is MiniLM's embeddings and first `BLOCKS` transformer blocks, with
the checkpoint's weights (as in tests/quantization/test_minilm_int8.py): every
block is the same code, two already compose block into block (int8 scales
handed from one to the next), and each further block only adds ~25 s of CPU
(graph building, training, conversion) per case: with all 6 the file took 455
CPU seconds, not 165. The full 6-block MiniLM is exported to int8 / int16x8 by
tests/export/test_bert_export.py.

The cases run in one child Python (`python -m tests.integration.test_compression_pipeline
DIR CASE...`) that exits when it is done: a MiniLM through two `fit`s, QAT
and two conversions leaves GBs of TensorFlow state behind, which the pytest
worker would otherwise keep for every test file it runs afterwards. The
child loads the teacher and its data once, runs every check below for each
selected case in turn and prints one RESULT line per case; each case's test
fails with that case's message.
"""

from __future__ import annotations

import gc
import json
import pathlib
import re
import subprocess
import sys
import traceback

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import bert
import tfreparam as tr
from bert.sentences import as_dataset, mean_pooled_embeddings, tokenize_batches
from recipes import corpus
from tfreparam import export, quantization, sparsity
from tfreparam.quantization import convert

SEQ = 32
BLOCKS = 2  # of MiniLM's 6 (see the module docstring)
# Sequences per training step. The tape keeps every contraction intermediate for the backward pass
# (a Kronecker projection at half its parameters has ~90 terms: ~70 MB per projection at 512 tokens),
# so the step's token count sets the memory peak: on all 6 blocks 16 sequences took the Kronecker case
# to 14.7 GB, 2 kept it at 4.5 GB. What the stages are checked for does not depend on it.
FIT_BATCH = 2
ROOT = pathlib.Path(__file__).resolve().parents[2]
PROJECTIONS = r"layer_\d+/(attention/(query|key|value|output)|ffn/(intermediate|output))"


def load_minilm():
    """The teacher encoder and its data: calibration, training and held-out token batches, reference embeddings."""
    encoder = truncated_minilm(BLOCKS)
    preprocessor = bert.Preprocessor.from_pretrained("minilm", seq_length=SEQ)
    parts = corpus.split(corpus.stdlib_sentences(), {"calibration": 0.2, "train": 0.6, "heldout": 0.2})

    def batches(name, count, size):
        return [{k: v.numpy() for k, v in b.items()}
                for b in tokenize_batches(preprocessor, parts[name][:count], batch_size=size)]

    data = dict(calibration=batches("calibration", 64, 16), train=batches("train", 64, 16),
                heldout=batches("heldout", 64, 16))
    data["reference"] = embed(encoder, data["heldout"])
    return encoder, data


def truncated_minilm(blocks):
    """MiniLM's embeddings and first `blocks` transformer blocks, with the checkpoint's weights."""
    full = bert.load_pretrained("minilm")
    encoder = bert.build_encoder(bert.BertConfig.named("minilm", num_layers=blocks))
    for layer in encoder.layers:
        if layer.weights:
            layer.set_weights(full.get_layer(layer.name).get_weights())
    return encoder


def embed(model, batches):
    return mean_pooled_embeddings(model, [{k: tf.constant(v) for k, v in b.items()} for b in batches])


def cosine(a, b):
    return float(np.mean(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def distillation_set(teacher, batches):
    """(inputs, teacher sequence_output) pairs: the student learns to match the original encoder."""
    inputs = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    target = teacher.predict(inputs, batch_size=16, verbose=0)["sequence_output"]
    return inputs, {"sequence_output": target}


def fit(model, inputs, targets, steps, callbacks=()):
    """`steps` of Adam on the sequence_output MSE, through a one-output view of `model` (the same layers).

    With every variable made before the first step -- Adam's slots here, and no per-output loss
    metric (a multi-output model makes one in its first step) -- `fit` traces its train function once,
    not twice: ~8 s of graph building saved per call on the full MiniLM.
    """
    view = keras.Model(model.inputs, model.output["sequence_output"])
    view.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse")
    view.optimizer.build(view.trainable_variables)
    view.fit(inputs, targets["sequence_output"], batch_size=FIT_BATCH, epochs=1, steps_per_epoch=steps, verbose=0,
             callbacks=list(callbacks))


def tflite_embeddings(path, batches):
    outputs = []
    for b in batches:
        sequence = export.run_artifact(path, b)["sequence_output"]
        mask = b["input_mask"][..., None]
        outputs.append((sequence * mask).sum(1) / mask.sum(1))
    return np.concatenate(outputs)


ATTENTION = r"layer_\d+/attention/(query|key|value|output)"
FFN = r"layer_\d+/ffn/(intermediate|output)"
FFN_IN, FFN_OUT = r"layer_\d+/ffn/intermediate", r"layer_\d+/ffn/output"


def few_term_kronecker(in_features, out_features):
    """Half the parameters in 4 Kronecker terms of (3 x 3) ⊗ (in/3 x out/3): 0.44 of the kernel.

    The default balanced split needs ~90 terms for half the parameters, and building its contraction
    graphs took that case to ~90 s of this file's 150 s (this one: ~32 s). Every term count runs the same
    layer code; tests/decompose/test_kronecker.py checks balanced splits against numpy.
    """
    return tr.Kronecker(param_budget=0.5, input_factors=(3, in_features // 3), output_factors=(3, out_features // 3))


# policy, m_by_n, and floors under the held-out cosines measured when this test
# was written (factorized / int8-vs-QAT; see the module docstring), on BLOCKS = 2:
# lowrank_2by4 0.970 / 0.987, kronecker_magnitude 0.679 / 0.962 (the floors sit
# 0.02-0.05 below; on all 6 blocks they sat 0.04-0.31 below 0.78 / 0.92-0.94 and
# 0.24 / 0.91, with the balanced Kronecker split). 2:4 needs ranks that are multiples of 4, so that case
# names ranks at 50 % directly: 384x384 -> 96, 384x1536 -> 152 (153.6 would be exactly half).
# Low rank with unstructured magnitude pruning was a third case (0.970 / 0.982); its
# stages are the 2:4 case's with another sparsity pattern, and tests/sparsity/test_magnitude.py
# prunes every layer type by magnitude (and low rank 2:4), so it went for ~50 s of suite time.
CASES = {
    "lowrank_2by4": ({ATTENTION: tr.LowRank(rank=96, method="whitened"),
                      FFN: tr.LowRank(rank=152, method="whitened")}, (2, 4), 0.95, 0.95),
    "kronecker_magnitude": ({ATTENTION: few_term_kronecker(384, 384), FFN_IN: few_term_kronecker(384, 1536),
                             FFN_OUT: few_term_kronecker(1536, 384)}, None, 0.65, 0.93),
}


# The case that also exports int16x8 (one conversion is enough to show the route composes).
INT16X8_CASE = "lowrank_2by4"


STAGES = {"factorized", "pruned", "qat", "int8_vs_qat", "int8"}


@pytest.fixture(scope="module")
def pipeline_results(request, tmp_path_factory):
    """{case: {"fidelity": ...} or {"error": traceback}} for this session's selected cases, from one child."""
    cases = sorted({item.callspec.params["case"] for item in request.session.items
                    if item.module is request.module and hasattr(item, "callspec")})
    out = tmp_path_factory.mktemp("pipeline")
    child = subprocess.run([sys.executable, "-m", "tests.integration.test_compression_pipeline", str(out), *cases],
                           cwd=ROOT, capture_output=True, text=True, timeout=3600)
    results = {}
    for line in child.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
            results[result.pop("case")] = result
    return results, child


@pytest.mark.parametrize("case", sorted(CASES))
def test_factorize_prune_qat_int8(case, pipeline_results):
    results, child = pipeline_results
    assert case in results, f"the pipeline stopped before {case} (exit {child.returncode}):\n{child.stderr[-6000:]}"
    assert "error" not in results[case], f"the {case} pipeline failed:\n{results[case].get('error')}"
    fidelity = results[case]["fidelity"]
    print(case, fidelity)
    # Every stage ran and was measured (the checks themselves ran in the child).
    assert STAGES | ({"int16x8_vs_pruned"} if case == INT16X8_CASE else set()) == set(fidelity), fidelity
    assert all(-1.0 <= value <= 1.0 for value in fidelity.values()), fidelity


def run_case(case, teacher, data, tmp_path):
    """Every stage of `case` and its checks; returns the held-out cosines."""
    np.random.seed(0)
    tf.random.set_seed(0)
    tmp_path.mkdir(parents=True)
    policy, m_by_n, factorized_floor, int8_floor = CASES[case]
    fidelity = {}

    # 1. Factorize the encoder projections at half their parameters.
    compressed = tr.reparameterize(teacher, policy, calibration_data=as_dataset(data["calibration"]))
    rows = [r for r in tr.report((teacher, compressed)).rows if re.fullmatch(PROJECTIONS, r.name)]
    assert len(rows) == 6 * BLOCKS
    ratio = sum(r.params_after for r in rows) / sum(r.params_before for r in rows)
    assert 0.40 <= ratio <= 0.51, ratio
    fidelity["factorized"] = cosine(embed(compressed, data["heldout"]), data["reference"])

    # 2. Prune the projections' factors with model.fit.
    inputs, targets = distillation_set(teacher, data["train"])
    pruned = sparsity.prune(compressed, 0.5, schedule="constant", begin_step=0, frequency=1, m_by_n=m_by_n,
                            policy=PROJECTIONS)
    fit(pruned, inputs, targets, steps=3, callbacks=[sparsity.UpdatePruningStep()])
    stripped = sparsity.strip(pruned)
    report = sparsity.sparsity_report(stripped)
    targeted = [row for row in report.rows if re.fullmatch(PROJECTIONS, row.layer)]
    assert len(targeted) >= 6 * BLOCKS
    for row in targeted:
        assert abs(row.sparsity - 0.5) <= 0.01, row
    if m_by_n:
        for layer in (stripped.get_layer(r.name) for r in rows):
            for weight in (layer.get_factors()["u"], layer.get_factors()["v"]):
                groups = np.moveaxis(weight, 0, -1).reshape(-1, 4)
                assert np.all(np.count_nonzero(groups, axis=1) <= 2)
    zeros_before = {(row.layer, row.weight): row.zeros for row in targeted}
    pruned_embeddings = embed(stripped, data["heldout"])
    fidelity["pruned"] = cosine(pruned_embeddings, data["reference"])

    # 3. Pruning-preserving QAT with model.fit: the zeros survive.
    qat = quantization.quantize_model(stripped, scheme="pqat", calibration_data=data["calibration"][:2])
    fit(qat, inputs, targets, steps=2)
    qat_embeddings = embed(qat, data["heldout"])
    fidelity["qat"] = cosine(qat_embeddings, data["reference"])
    for layer in qat.layers:
        inner = getattr(layer, "layer", layer)
        if not re.fullmatch(PROJECTIONS, inner.name):
            continue
        for name, value in inner.get_factors().items():
            assert np.count_nonzero(value == 0) >= zeros_before[(inner.name, name)], (inner.name, name)

    # 4. Fully-integer int8 TFLite that agrees with the QAT model.
    path = str(tmp_path / "model_int8.tflite")
    export.tflite(qat, path, mode="int8", representative_data=data["calibration"][:2], seq_length=SEQ, check=False)
    flatbuffer = open(path, "rb").read()
    assert set(convert.float_ops(flatbuffer)) <= {"CAST"}, convert.float_ops(flatbuffer)
    int8_embeddings = tflite_embeddings(path, data["heldout"])
    fidelity["int8_vs_qat"] = cosine(int8_embeddings, qat_embeddings)
    fidelity["int8"] = cosine(int8_embeddings, data["reference"])

    # 5. The faithful fully-integer route (int8 weights, int16 activations) from the pruned float model.
    if case == INT16X8_CASE:
        path16 = str(tmp_path / "model_int16x8.tflite")
        export.tflite(stripped, path16, mode="int16x8", representative_data=data["calibration"][:2],
                      seq_length=SEQ, check=False)
        assert set(convert.float_ops(open(path16, "rb").read())) <= {"CAST"}
        fidelity["int16x8_vs_pruned"] = cosine(tflite_embeddings(path16, data["heldout"]), pruned_embeddings)
        assert fidelity["int16x8_vs_pruned"] >= 0.99, fidelity
    print(case, {k: round(v, 4) for k, v in fidelity.items()}, f"int8 bytes {len(flatbuffer):,}", file=sys.stderr)
    # Full-integer int8 does not reach the 0.99 target on MiniLM (per-tensor int8 cannot hold the
    # residual stream's outliers; see tests/quantization/test_minilm_int8.py and the README).
    assert fidelity["factorized"] >= factorized_floor, fidelity
    assert fidelity["int8_vs_qat"] >= int8_floor, fidelity
    return fidelity


def main(out_dir, cases):
    teacher, data = load_minilm()
    for case in cases:
        keras.backend.clear_session()  # fresh layer names and graph state, as in a process of its own
        gc.collect()
        try:
            result = {"fidelity": run_case(case, teacher, data, out_dir / case)}
        except Exception:  # reported by this case's test; the next case still runs
            result = {"error": traceback.format_exc()[-6000:]}
        print("RESULT " + json.dumps(dict(case=case, **result)), flush=True)


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]), sys.argv[2:])
