r"""Compress a pretrained BERT's encoder projections (the main job, `make demo`).

Stages that exist today:
  1. load the checkpoint (default: the bundled all-MiniLM-L6-v2) as a flat Keras BERT,
  2. split the built-in corpus (stdlib docstrings) into calibration / held-out sentences,
  3. factorize every encoder projection (q, k, v, attention output, FFN in/out)
     at `--budget` of its parameters, with plain truncated SVD and with
     activation-aware (whitened) SVD calibrated on real-token activations,
  4. measure fidelity on held-out sentences: cosine between compressed and
     original mean-pooled sentence embeddings, and top-1 nearest-neighbour
     agreement,
  5. write `report.md` and `metrics.json` to `--report_dir`.
Distillation, pruning, QAT and export join as they land.

    python -m recipes.compress --budget=0.5 --report_dir=reports/demo
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "minilm", "Hugging Face BERT directory (config.json + model.safetensors) or 'minilm'.")
flags.DEFINE_float("budget", 0.5, "Share of each encoder projection's parameters to keep, in (0, 1].")
flags.DEFINE_integer("calibration_sentences", 256, "Sentences for the whitening statistics.")
flags.DEFINE_integer("heldout_sentences", 256, "Held-out sentences for the fidelity metrics.")
flags.DEFINE_integer("seq_length", 64, "Tokens per sentence.")
flags.DEFINE_string("report_dir", "reports/demo", "Where report.md and metrics.json go.")

PROJECTIONS = r"layer_\d+/(attention/(query|key|value|output)|ffn/(intermediate|output))"


@contextlib.contextmanager
def stage(name):
    """One line per stage with its duration."""
    start = time.perf_counter()
    print(f"[compress] {name} ...", flush=True)
    yield
    print(f"[compress] {name}: {time.perf_counter() - start:.1f}s", flush=True)


def fidelity(reference: np.ndarray, compressed: np.ndarray) -> dict:
    """Mean embedding cosine and top-1 nearest-neighbour agreement (cosine similarity)."""
    def normalise(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    ref, comp = normalise(reference), normalise(compressed)
    cosine = np.sum(ref * comp, axis=1)

    def nearest(a):
        sim = a @ a.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(1)

    return {"cosine": float(cosine.mean()), "cosine_min": float(cosine.min()),
            "nn_agreement": float(np.mean(nearest(ref) == nearest(comp)))}


def write_report(report_dir, metrics, report_table):
    os.makedirs(report_dir, exist_ok=True)
    with open(os.path.join(report_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    m = metrics
    lines = [
        "# Compression report",
        "",
        f"Model: {m['model']}. Encoder projections factorized at {m['budget']:.0%} of their parameters "
        f"({m['params_before']:,} -> {m['params_after']:,}; whole model {m['total_params_before']:,} -> "
        f"{m['total_params_after']:,}).",
        "",
        "## Fidelity on held-out sentences (no distillation yet)",
        "",
        "| method | embedding cosine | min cosine | NN agreement | mean output error |",
        "|---|---:|---:|---:|---:|",
    ]
    for method in ("svd", "whitened"):
        f = m["methods"][method]
        lines.append(f"| {method} | {f['cosine']:.4f} | {f['cosine_min']:.4f} | {f['nn_agreement']:.3f} | "
                     f"{f['output_error']:.4f} |")
    lines += ["", "## Per layer (whitened SVD)", "", report_table, ""]
    with open(os.path.join(report_dir, "report.md"), "w") as f:
        f.write("\n".join(lines))
    return "\n".join(lines)


def main(argv):
    del argv
    if not 0.0 < FLAGS.budget <= 1.0:
        raise app.UsageError(f"--budget must be in (0, 1], got {FLAGS.budget}.")
    if FLAGS.calibration_sentences < 1 or FLAGS.heldout_sentences < 2:
        raise app.UsageError("--calibration_sentences must be >= 1 and --heldout_sentences >= 2.")
    import bert
    import tfreparam as tr
    from bert.sentences import as_dataset, mean_pooled_embeddings, tokenize_batches
    from recipes import corpus
    from tfreparam import calibration as calibration_lib

    start = time.perf_counter()
    with stage(f"load {FLAGS.model}"):
        loaded = bert.load_hf(FLAGS.model)
        encoder = loaded.model
        preprocessor = bert.Preprocessor.from_pretrained(FLAGS.model, seq_length=FLAGS.seq_length)
    with stage("prepare calibration / held-out text"):
        parts = corpus.split(corpus.stdlib_sentences(), {"calibration": 0.2, "train": 0.6, "heldout": 0.2})
        calibration = tokenize_batches(preprocessor, parts["calibration"][:FLAGS.calibration_sentences])
        heldout = tokenize_batches(preprocessor, parts["heldout"][:FLAGS.heldout_sentences])
        reference = mean_pooled_embeddings(encoder, heldout)

    targets = [layer for layer in encoder.layers if re.fullmatch(PROJECTIONS, layer.name)]
    with stage("collect input statistics on the calibration sentences"):
        # Once, for the whitened SVD and for the output errors of both methods.
        grams = calibration_lib.input_grams(encoder, targets, as_dataset(calibration))
    methods, reports = {}, {}
    for method in ("svd", "whitened"):
        with stage(f"factorize projections at {FLAGS.budget:.0%} ({method} SVD)"):
            compressed = tr.reparameterize(
                encoder, {PROJECTIONS: tr.LowRank(param_budget=FLAGS.budget, method=method)},
                statistics=grams,
            )
            report = tr.report((encoder, compressed))
            # Output error of both methods on the same calibration activations.
            rows = [r for r in report.rows if r.name in grams]
            errors = [
                tr.decompose.output_error(
                    encoder.get_layer(r.name).kernel.numpy().astype(np.float64),
                    compressed.get_layer(r.name).dense_kernel().numpy(), grams[r.name].gram,
                )
                for r in rows
            ]
        with stage(f"evaluate {method} on {len(parts['heldout'][:FLAGS.heldout_sentences])} held-out sentences"):
            methods[method] = dict(fidelity(reference, mean_pooled_embeddings(compressed, heldout)),
                                   output_error=float(np.mean(errors)))
            reports[method] = (report, compressed, rows)

    best = max(methods, key=lambda k: methods[k]["cosine"])
    report, compressed, targeted = reports["whitened"]
    metrics = {
        "model": FLAGS.model,
        "budget": FLAGS.budget,
        # The encoder projections the policy targets (kernels + biases).
        "params_before": sum(r.params_before for r in targeted),
        "params_after": sum(r.params_after for r in targeted),
        "total_params_before": encoder.count_params(),
        "total_params_after": compressed.count_params(),
        "best_method": best,
        "embedding_cosine_heldout": methods[best]["cosine"],
        "nn_agreement_heldout": methods[best]["nn_agreement"],
        "output_error_svd": methods["svd"]["output_error"],
        "output_error_whitened": methods["whitened"]["output_error"],
        "methods": methods,
        "layers": {m: r.to_dict()["layers"] for m, (r, _, _) in reports.items()},
        "seconds_total": time.perf_counter() - start,
    }
    print(write_report(FLAGS.report_dir, metrics, report.to_markdown()))
    print(f"[compress] report written to {os.path.abspath(FLAGS.report_dir)}")


if __name__ == "__main__":
    app.run(main)
