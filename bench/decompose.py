r"""Decomposition quality on the pretrained MiniLM: weight error, output error, fidelity.

What it measures, for all-MiniLM-L6-v2 (the bundled checkpoint) and sentences
from the built-in stdlib-docstring corpus:

1. Per projection type (query, key, value, attention output, FFN in, FFN out;
   averaged over the 6 layers) at 25 / 50 / 75 % of the parameters:
   relative weight error ||W - Ŵ|| / ||W|| and relative output error
   ||X(W - Ŵ)|| / ||XW|| on the calibration sentences' real-token activations,
   for truncated SVD, activation-aware (whitened) SVD, Fisher-weighted SVD,
   the nearest Kronecker product and TT-SVD (3 cores).
2. The whole encoder, every projection decomposed at each budget: mean cosine
   between compressed and original mean-pooled sentence embeddings on held-out
   sentences (never used for calibration), before any distillation.

Fisher statistics use an unsupervised objective suited to a sentence encoder:
SimCSE's in-batch contrastive loss between two dropout views of each sentence.

    python -m bench.decompose            # writes bench/results/decompose.{json,md}
    python -m bench.decompose --quick    # fewer sentences and budgets
"""

from __future__ import annotations

import time

import numpy as np
from absl import app, flags

from bench import common
from bert.sentences import as_dataset, mean_pooled_embeddings, tokenize_batches

FLAGS = flags.FLAGS
flags.DEFINE_integer("calibration_sentences", 256, "Sentences for Gram / Fisher statistics.")
flags.DEFINE_integer("heldout_sentences", 256, "Held-out sentences for embedding fidelity.")
flags.DEFINE_list("budgets", ["0.25", "0.5", "0.75"], "Parameter budgets (fractions).")
flags.DEFINE_integer("seq_length", 64, "Tokens per sentence (docstring sentences are short).")
flags.DEFINE_bool("quick", False, "Tiny run for a smoke test.")
flags.DEFINE_string("out_dir", "bench/results", "Where decompose.json / decompose.md go.")

PROJECTION_REGEX = r"layer_\d+/(attention/(query|key|value|output)|ffn/(intermediate|output))"
METHODS = ("svd", "whitened", "fisher", "kronecker", "tt")


def cosine(a, b):
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def simcse_objective(temperature=0.05):
    """In-batch contrastive loss between two dropout views (unsupervised SimCSE)."""
    import tensorflow as tf
    import tf_keras as keras

    def objective(model, x):
        def embed():
            hidden = model(x, training=True)["sequence_output"]
            mask = tf.cast(x["input_mask"], hidden.dtype)[..., None]
            pooled = tf.reduce_sum(hidden * mask, 1) / tf.reduce_sum(mask, 1)
            return tf.math.l2_normalize(pooled, -1)

        a, b = embed(), embed()
        logits = tf.matmul(a, b, transpose_b=True) / temperature
        labels = tf.range(tf.shape(logits)[0])
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))

    return objective


def _spec(method, budget):
    import tfreparam as tr

    if method in ("svd", "whitened", "fisher"):
        return tr.LowRank(param_budget=budget, method=method)
    if method == "kronecker":
        return tr.Kronecker(param_budget=budget)
    return tr.TensorTrain(param_budget=budget, num_cores=3)


def per_projection(layers, stats, budgets):
    """Rows {projection, method, budget, weight_error, output_error}, averaged over `layers`."""
    from tfreparam import decompose
    from tfreparam.projections import projection

    rows = []
    for budget in budgets:
        for method in METHODS:
            spec = _spec(method, budget)
            by_kind = {}
            for layer in layers:
                kernel = projection(layer)[0].numpy().astype(np.float64)
                factorization = spec.factorize(kernel, stats[layer.name])
                approx = factorization.reconstruct()
                kind = layer.name.split("/", 1)[1]
                by_kind.setdefault(kind, []).append(
                    (factorization.relative_error, decompose.output_error(kernel, approx, stats[layer.name].gram))
                )
            for kind, values in by_kind.items():
                weight, output = np.mean(values, axis=0)
                rows.append(dict(projection=kind, method=method, budget=budget,
                                 weight_error=float(weight), output_error=float(output)))
    return rows


def whole_encoder(encoder, calibration_batches, heldout_batches, budgets, objective, methods=METHODS):
    import tfreparam as tr

    reference = mean_pooled_embeddings(encoder, heldout_batches)
    rows = []
    for budget in budgets:
        for method in methods:
            start = time.perf_counter()
            compressed = tr.reparameterize(
                encoder, {PROJECTION_REGEX: _spec(method, budget)},
                calibration_data=as_dataset(calibration_batches), objective=objective,
            )
            seconds = time.perf_counter() - start
            cos = cosine(mean_pooled_embeddings(compressed, heldout_batches), reference)
            report = tr.report((encoder, compressed))
            rows.append(dict(method=method, budget=budget, params_after=report.params_after,
                             params_before=report.params_before, heldout_cosine=float(cos.mean()),
                             heldout_cosine_min=float(cos.min()), seconds=seconds))
            print(f"  {method:9s} budget {budget:.2f}: cosine {cos.mean():.4f} ({seconds:.1f}s)", flush=True)
    return rows


def main(argv):
    del argv
    import bert
    from bert.preprocessing import Preprocessor
    from recipes import corpus
    import re

    from tfreparam import calibration
    from tfreparam.projections import projection

    budgets = [float(b) for b in FLAGS.budgets]
    n_cal, n_held = FLAGS.calibration_sentences, FLAGS.heldout_sentences
    encoder_methods = METHODS
    if FLAGS.quick:  # a smoke run: one budget, few sentences, the first block's projections, one whole-encoder method
        budgets, n_cal, n_held, encoder_methods = budgets[1:2], 16, 16, ("whitened",)
    parts = corpus.split(corpus.stdlib_sentences(), {"calibration": 0.2, "train": 0.6, "heldout": 0.2})
    encoder = bert.load_pretrained("minilm")
    preprocessor = Preprocessor.from_pretrained("minilm", seq_length=FLAGS.seq_length)
    calibration_batches = tokenize_batches(preprocessor, parts["calibration"][:n_cal])
    heldout_batches = tokenize_batches(preprocessor, parts["heldout"][:n_held])

    start = time.perf_counter()
    layers = [layer for layer in encoder.layers if re.fullmatch(PROJECTION_REGEX, layer.name)]
    # Every block's projections factorize the same way: a smoke run checks the first block's (~1/6 of the time).
    layers = [layer for layer in layers if not FLAGS.quick or layer.name.startswith("layer_0/")]
    objective = simcse_objective()
    stats = calibration.input_grams(encoder, layers, as_dataset(calibration_batches))
    fisher = calibration.fisher_row_importance(
        encoder, layers, {l.name: projection(l)[0] for l in layers}, as_dataset(calibration_batches),
        objective=objective,
    )
    for name, entry in fisher.items():
        stats[name].row_importance = entry.row_importance
    print(f"statistics over {n_cal} sentences: {time.perf_counter() - start:.1f}s", flush=True)

    projection_rows = per_projection(layers, stats, budgets)
    headers = ["projection", "budget"] + [f"{m} w/out" for m in METHODS]
    table = []
    for budget in budgets:
        for kind in sorted({r["projection"] for r in projection_rows}):
            cells = [kind, f"{budget:.0%}"]
            for method in METHODS:
                r = next(r for r in projection_rows
                         if r["projection"] == kind and r["method"] == method and r["budget"] == budget)
                cells.append(f"{r['weight_error']:.3f} / {r['output_error']:.3f}")
            table.append(cells)
    blocks = len({layer.name.split("/")[0] for layer in layers})
    print(f"\nRelative weight error / output error (mean over {blocks} blocks):")
    print(common.text_table(headers, table))

    print("\nWhole encoder, held-out mean-pooled embedding cosine vs the original:")
    encoder_rows = whole_encoder(encoder, calibration_batches, heldout_batches, budgets, objective, encoder_methods)
    enc_headers = ["budget", "params after"] + list(encoder_methods)
    enc_table = []
    for budget in budgets:
        rows = [r for r in encoder_rows if r["budget"] == budget]
        enc_table.append([f"{budget:.0%}", f"{rows[0]['params_after']:,}"]
                         + [f"{r['heldout_cosine']:.4f}" for r in rows])
    print(common.text_table(enc_headers, enc_table))

    if not FLAGS.quick:
        payload = {"machine": common.machine_info(), "calibration_sentences": n_cal,
                   "heldout_sentences": n_held, "per_projection": projection_rows, "whole_encoder": encoder_rows}
        common.write_json(f"{FLAGS.out_dir}/decompose.json", payload)
        with open(f"{FLAGS.out_dir}/decompose.md", "w") as f:
            f.write("## Relative weight error / output error (MiniLM, mean over layers)\n\n")
            f.write(common.markdown_table(headers, table))
            f.write("\n\n## Whole encoder: held-out embedding cosine vs original (no distillation)\n\n")
            f.write(common.markdown_table(enc_headers, enc_table) + "\n")
        print(f"\nwrote {FLAGS.out_dir}/decompose.json and decompose.md")


if __name__ == "__main__":
    app.run(main)
