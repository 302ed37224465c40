r"""Compress a pretrained BERT's encoder projections into factored layers.

The main job, `make demo`. Today it runs the stages that exist:
  1. read the checkpoint (default: the bundled all-MiniLM-L6-v2),
  2. factorize every encoder projection (q, k, v, attention output, FFN in/out)
     at a parameter budget with truncated SVD,
  3. load each factorization into a `LowRankDense` and check that the layer
     computes x @ Ŵ + b,
  4. write a per-layer report (`report.md`, `metrics.json`).
Distillation, pruning, QAT and export join as they land.

    python -m recipes.compress --budget=0.5 --report_dir=reports/demo
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "minilm", "Checkpoint directory (config.json + model.safetensors) or 'minilm'.")
flags.DEFINE_float("budget", 0.5, "Share of each projection's parameters to keep, in (0, 1].")
flags.DEFINE_string("report_dir", "reports/demo", "Where report.md and metrics.json go.")


def _stage(name):
    """Prints one line per stage with its duration."""

    class _Timer:
        def __enter__(self):
            self.start = time.perf_counter()
            print(f"[compress] {name} ...", flush=True)
            return self

        def __exit__(self, *exc):
            if exc[0] is None:
                print(f"[compress] {name}: done in {time.perf_counter() - self.start:.1f}s", flush=True)

    return _Timer()


def compress_projections(checkpoint, budget):
    """Factorizes each projection; returns per-layer rows and the layers."""
    import numpy as np

    import tfreparam as tr
    from tfreparam import decompose

    rows, rng = [], np.random.default_rng(0)
    for name, (kernel, bias) in checkpoint.projection_kernels().items():
        factorization = decompose.svd(kernel, param_budget=budget)
        layer = tr.LowRankDense(kernel.shape[1], name=name.replace("/", "_"), **factorization.layer_kwargs)
        layer.build((None, kernel.shape[0]))
        layer.set_factors(factorization.factors)
        layer.bias.assign(bias)
        x = rng.normal(size=(8, kernel.shape[0])).astype("float32")
        expected = x @ factorization.reconstruct() + bias
        layer_error = float(np.abs(layer(x).numpy() - expected).max())
        rows.append(
            {
                "layer": name,
                "shape": list(kernel.shape),
                "rank": factorization.layer_kwargs["rank"],
                "params_before": int(kernel.size),
                "params_after": factorization.num_params,
                "relative_error": factorization.relative_error,
                "layer_max_abs_error": layer_error,
            }
        )
    return rows


def write_report(rows, report_dir, budget, seconds):
    os.makedirs(report_dir, exist_ok=True)
    before = sum(row["params_before"] for row in rows)
    after = sum(row["params_after"] for row in rows)
    metrics = {
        "params_before": before,
        "params_after": after,
        "budget": budget,
        "mean_relative_error_svd": sum(r["relative_error"] for r in rows) / len(rows),
        "max_layer_abs_error": max(r["layer_max_abs_error"] for r in rows),
        "seconds_total": seconds,
        "layers": rows,
    }
    with open(os.path.join(report_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    lines = [
        "# Compression report",
        "",
        f"Encoder projections factorized by truncated SVD at {budget:.0%} of their parameters.",
        "",
        "| layer | shape | rank | params before | params after | relative weight error |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['shape'][0]}x{r['shape'][1]} | {r['rank']} | "
            f"{r['params_before']:,} | {r['params_after']:,} | {r['relative_error']:.3f} |"
        )
    lines += ["", f"**Total**: {before:,} -> {after:,} parameters ({after / before:.1%})."]
    with open(os.path.join(report_dir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return "\n".join(lines)


def main(argv):
    del argv
    if not 0.0 < FLAGS.budget <= 1.0:
        raise app.UsageError(f"--budget must be in (0, 1], got {FLAGS.budget}.")
    from bert import read_hf_checkpoint

    start = time.perf_counter()
    with _stage(f"read checkpoint {FLAGS.model}"):
        checkpoint = read_hf_checkpoint(FLAGS.model)
    with _stage(f"factorize projections at {FLAGS.budget:.0%} budget (svd)"):
        rows = compress_projections(checkpoint, FLAGS.budget)
    table = write_report(rows, FLAGS.report_dir, FLAGS.budget, time.perf_counter() - start)
    print(table)
    print(f"[compress] report written to {os.path.abspath(FLAGS.report_dir)}")


if __name__ == "__main__":
    app.run(main)
