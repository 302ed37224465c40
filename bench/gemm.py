"""This machine's fp32 `tf.matmul` speed at the BERT models' own shapes, and the seq/s ceiling it implies.

What it measures: every distinct matrix product one BERT inference pass
(batch 32 x seq 128) or one MLM training step (batch 16 x seq 128: forward,
the input- and weight-gradient products of the backward pass, and the MLM
head at 20 masked positions per sequence) performs -- the projections
(tokens x in) . (in x out), the attention products per head, the tied MLM
decoder -- each timed alone as a `tf.function` around `tf.matmul` (graph
mode, no XLA) with the benchmark's thread count, median of `--repeats` calls.

The ceiling: a model spends at least sum(count x FLOPs / measured FLOP/s)
seconds per batch in its matrix products; `ceiling_seq_per_s` = batch / that
time. It ignores everything that is not a matmul (softmax, GELU, LayerNorm,
embedding gathers, the optimizer update), so a real model stays below it;
"% of ceiling" in the throughput tables is measured seq/s / ceiling. FLOPs
count a multiply-add as 2.

Run (from the repository root):

    python -m bench.gemm                 # writes bench/results/gemm.{json,md}
    python -m bench.gemm --quick         # smoke run (tiny shapes), prints only
"""

from __future__ import annotations

import dataclasses
import os

from absl import app, flags, logging

from bench import common
from bench.peers import runner
from bench.peers.flops import Matmul, ceiling, matmul_inventory  # noqa: F401  (re-exported)

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["minilm", "base"], "BERT shapes to measure (bench.peers.runner.SHAPES).")
flags.DEFINE_integer("threads", 2, "TensorFlow intra-op threads (the BERT benchmark uses the same).")
flags.DEFINE_integer("repeats", 10, "Timed calls per product (the median is kept).")
flags.DEFINE_integer("warmup", 2, "Untimed calls before each measurement.")
flags.DEFINE_float("max_foreign_load", 0.1, "Largest fraction of the CPU other processes may use "
                   "during a measurement before it is repeated.")
flags.DEFINE_float("idle_timeout_s", 60.0, "How long to wait for an idle machine before a measurement.")
flags.DEFINE_integer("max_attempts", 3, "Attempts per product before a disturbed measurement is kept.")
flags.DEFINE_string("out_dir", "bench/results", "Where gemm.json and gemm.md go.")
flags.DEFINE_bool("quick", False, "Smoke run: one tiny configuration, few repeats, no files written "
                  "unless --out_dir is given explicitly.")


def time_matmul(product: Matmul) -> common.Timing:
    """Median wall time of one `tf.matmul` of `product`'s shape (graph mode)."""
    import tensorflow as tf

    a_shape = (product.k, product.m) if product.transpose_a else (product.m, product.k)
    b_shape = (product.n, product.k) if product.transpose_b else (product.k, product.n)
    if product.batch > 1:
        a_shape, b_shape = (product.batch, *a_shape), (product.batch, *b_shape)
    a = tf.random.normal(a_shape, seed=1)
    b = tf.random.normal(b_shape, seed=2)

    @tf.function(autograph=False)
    def matmul(a, b):
        # A reduction to a scalar makes the fetch free and keeps the product from being pruned.
        return tf.reduce_sum(tf.matmul(a, b, transpose_a=product.transpose_a, transpose_b=product.transpose_b))

    matmul(a, b)
    return common.quiet_timing(
        lambda: matmul(a, b).numpy(),
        repeats=FLAGS.repeats,
        warmup=FLAGS.warmup,
        max_foreign_load=FLAGS.max_foreign_load,
        idle_timeout_s=FLAGS.idle_timeout_s,
        max_attempts=FLAGS.max_attempts,
        log=lambda msg: logging.info(msg),
    )


def measure_config(config: str, batch_by_mode: dict, seq: int, overrides: dict = None) -> dict:
    """Times every distinct product of `config` in both modes; returns both modes' ceilings."""
    shape = runner.SHAPES[config]
    if overrides:
        shape = dataclasses.replace(shape, **overrides)
    result = {"shape": dataclasses.asdict(shape), "seq_length": seq}
    timings: dict = {}
    for mode in runner.MODES:
        batch = batch_by_mode[mode]
        products = matmul_inventory(shape, mode, batch, seq)
        rows = []
        for product in products:
            if product.key not in timings:
                timings[product.key] = time_matmul(product)
                t = timings[product.key]
                logging.info("%s %s %s: %.1f GFLOP/s%s", config, mode, product.name,
                             product.flops / t.median / 1e9,
                             " (disturbed)" if t.foreign_load > FLAGS.max_foreign_load else "")
            t = timings[product.key]
            rows.append({
                **dataclasses.asdict(product),
                "gflops": product.flops / t.median / 1e9,
                "median_ms": 1e3 * t.median,
                "foreign_load": t.foreign_load,
                "disturbed": t.foreign_load > FLAGS.max_foreign_load,
            })
        gflops_by_key = {p.key: r["gflops"] for p, r in zip(products, rows)}
        result[mode] = {"batch": batch, **ceiling(products, gflops_by_key, batch), "products": rows,
                        "disturbed": any(r["disturbed"] for r in rows)}
    return result


def markdown_report(results: dict, machine: dict) -> str:
    lines = [
        "# fp32 matmul ceiling at the BERT shapes",
        "",
        f"`tf.matmul` in graph mode, {FLAGS.threads} threads, median of {FLAGS.repeats} calls per "
        "product; the ceiling is batch / Σ(count × FLOPs / measured FLOP/s) over every matrix product "
        "of the model (see `bench/gemm.py`).",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs, TensorFlow "
        f"{machine.get('tensorflow', '?')}, {machine['time']}. Generated by `python -m bench.gemm`.",
        "",
    ]
    summary = []
    for config, result in results.items():
        for mode in runner.MODES:
            r = result[mode]
            summary.append([config, mode, r["batch"], f"{r['gflop_per_seq']:.2f}", f"{r['effective_gflops']:.0f}",
                            f"{r['ceiling_seq_per_s']:.1f}" + ("*" if r["disturbed"] else "")])
    lines += [common.markdown_table(
        ["config", "mode", "batch", "GFLOP / seq", "matmul GFLOP/s (effective)", "ceiling seq/s"], summary), ""]
    for config, result in results.items():
        for mode in runner.MODES:
            rows = [[p["name"], f"{p['batch']}×{p['m']}×{p['k']}×{p['n']}", p["count"],
                     f"{p['gflops']:.0f}" + ("*" if p["disturbed"] else "")] for p in result[mode]["products"]]
            lines += [f"## {config}, {mode}", "",
                      common.markdown_table(["product", "batch×m×k×n", "count", "GFLOP/s"], rows), ""]
    lines.append("`*`: every attempt was disturbed by other processes; the least disturbed one is kept.")
    return "\n".join(lines) + "\n"


def run(configs, batch_by_mode, seq, overrides=None) -> dict:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
    return {config: measure_config(config, batch_by_mode, seq, overrides) for config in configs}


def main(argv):
    del argv
    runner.limit_threads(FLAGS.threads)
    machine = common.machine_info()
    if FLAGS.quick:
        if not FLAGS["repeats"].present:
            FLAGS.repeats = 2
        results = run(["minilm"], {"inference": 2, "training": 2}, 32, dict(num_layers=1, vocab_size=1000))
    else:
        results = run(FLAGS.configs, dict(runner.DEFAULT_BATCH), 128)
    rows = [[c, m, f"{r[m]['gflop_per_seq']:.2f}", f"{r[m]['effective_gflops']:.0f}", f"{r[m]['ceiling_seq_per_s']:.1f}"]
            for c, r in results.items() for m in runner.MODES]
    print(common.text_table(["config", "mode", "GFLOP/seq", "GFLOP/s", "ceiling seq/s"], rows))
    if not FLAGS.quick or FLAGS["out_dir"].present:
        payload = {"benchmark": "gemm", "threads": FLAGS.threads, "repeats": FLAGS.repeats,
                   "quick": FLAGS.quick, "machine": machine, "configs": results}
        common.write_json(os.path.join(FLAGS.out_dir, "gemm.json"), payload)
        with open(os.path.join(FLAGS.out_dir, "gemm.md"), "w") as f:
            f.write(markdown_report(results, machine))
        logging.info("Wrote %s/gemm.{json,md}", FLAGS.out_dir)


if __name__ == "__main__":
    app.run(main)
