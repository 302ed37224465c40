"""BERT MLM+NSP pretraining throughput on this CPU: float32 vs mixed_bfloat16, with and without XLA.

What it measures: sequences per second of `BertPretrainer`'s compiled train
step (forward, MLM + NSP losses, backward, Adam update) on one fixed batch of
int32 features, for each (precision policy, `jit_compile`) pair. The first
calls (tracing, XLA compilation) are untimed; the median of `--repeats`
timed steps is kept. Each measurement records how much of the CPU other
processes used meanwhile (`bench.common.LoadProbe`); a figure taken while
others used more than `--max_foreign_load` of the machine is marked as taken
under contention. `mixed_bfloat16` is the TPU policy; on a CPU its speed
depends on the CPU's bfloat16 support (oneDNN uses AVX512-BF16/AMX where
present, otherwise converts), so it may be faster or slower than float32.

Run (from the repository root):

    python -m bench.train                # writes bench/results/train.{json,md}
    python -m bench.train --quick        # smoke run (tiny shapes), prints only
"""

from __future__ import annotations

import os
import time

from absl import app, flags, logging

from bench import common

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "tiny", "Named BERT size (bert.BertConfig.named).")
flags.DEFINE_integer("batch", 16, "Sequences per train step.")
flags.DEFINE_integer("seq", 128, "Sequence length.")
flags.DEFINE_integer("predictions", 20, "Masked positions per sequence.")
flags.DEFINE_integer("threads", 2, "TensorFlow intra-op threads.")
flags.DEFINE_integer("repeats", 5, "Timed train steps per configuration (the median is kept).")
flags.DEFINE_integer("warmup", 2, "Untimed steps first (tracing / XLA compilation).")
flags.DEFINE_float("max_foreign_load", 0.1, "CPU share of other processes above which a figure is "
                   "marked as taken under contention.")
flags.DEFINE_float("idle_timeout_s", 5.0, "How long to wait for an idle machine before each measurement.")
flags.DEFINE_string("out_dir", "bench/results", "Where train.json and train.md go.")
flags.DEFINE_bool("quick", False, "Smoke run: tiny shapes, one repeat, no files written unless --out_dir is given.")

POLICIES = ("float32", "mixed_bfloat16")


def _features(config, batch, seq, predictions):
    import numpy as np

    rng = np.random.default_rng(0)
    return {
        "input_word_ids": rng.integers(0, config.vocab_size, (batch, seq)).astype("int32"),
        "input_mask": np.ones((batch, seq), "int32"),
        "input_type_ids": rng.integers(0, 2, (batch, seq)).astype("int32"),
        "masked_lm_positions": rng.integers(0, seq, (batch, predictions)).astype("int32"),
        "masked_lm_ids": rng.integers(0, config.vocab_size, (batch, predictions)).astype("int32"),
        "masked_lm_weights": np.ones((batch, predictions), "float32"),
        "next_sentence_labels": rng.integers(0, 2, (batch, 1)).astype("int32"),
    }


def measure(config, policy: str, jit_compile: bool, batch: int, seq: int, predictions: int) -> dict:
    """Median train-step time of one (policy, XLA) configuration, as sequences per second."""
    import tensorflow as tf
    import tf_keras as keras

    import bert

    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        pretrainer = bert.build_pretrainer(config, max_predictions_per_seq=predictions)
        pretrainer.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=jit_compile)
        features = {k: tf.constant(v) for k, v in _features(config, batch, seq, predictions).items()}
        step = pretrainer.make_train_function()
        iterator = iter(tf.data.Dataset.from_tensors(features).repeat())
        start = time.perf_counter()
        first = step(iterator)  # traces (and, with XLA, compiles)
        float(first["loss"])
        compile_s = time.perf_counter() - start
        timing = common.quiet_timing(
            lambda: float(step(iterator)["loss"]), repeats=FLAGS.repeats, warmup=FLAGS.warmup,
            max_foreign_load=FLAGS.max_foreign_load, max_attempts=1, idle_timeout_s=FLAGS.idle_timeout_s,
            log=lambda msg: logging.info(msg),
        )
        loss = float(step(iterator)["loss"])
    finally:
        keras.mixed_precision.set_global_policy("float32")
        keras.backend.clear_session()
    return {
        "policy": policy, "jit_compile": jit_compile, "batch": batch, "seq_length": seq,
        "seq_per_s": batch / timing.median, "step_ms": 1e3 * timing.median, "spread": timing.spread,
        "first_step_s": compile_s, "foreign_load": timing.foreign_load,
        "contended": timing.foreign_load > FLAGS.max_foreign_load, "final_loss": loss,
    }


def markdown_report(rows, config_name, machine) -> str:
    contended = any(r["contended"] for r in rows)
    lines = [
        "# BERT MLM+NSP pretraining throughput (CPU)",
        "",
        f"`BertPretrainer` train step (forward, MLM+NSP loss, backward, Adam), BERT-{config_name}, "
        f"batch {rows[0]['batch']} x seq {rows[0]['seq_length']}, {FLAGS.predictions} masked positions, "
        f"{FLAGS.threads} threads, median of {FLAGS.repeats} steps after {FLAGS.warmup} untimed ones.",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs, TensorFlow "
        f"{machine.get('tensorflow', '?')}, {machine['time']}. Generated by `python -m bench.train`.",
        "",
    ]
    if contended:
        lines += [f"**Taken under contention**: rows marked * ran while other processes used more than "
                  f"{FLAGS.max_foreign_load:.0%} of the CPU; treat them as lower bounds.", ""]
    table = [[r["policy"], "yes" if r["jit_compile"] else "no",
              f"{r['seq_per_s']:.1f}" + ("*" if r["contended"] else ""), f"{r['step_ms']:.0f}",
              f"{r['first_step_s']:.1f}", f"{r['foreign_load']:.0%}"] for r in rows]
    lines.append(common.markdown_table(
        ["policy", "XLA", "seq/s", "step ms", "first step s", "others' CPU"], table))
    lines += ["", "No GPU is usable here, so float32 vs mixed_float16 on a GPU is not measured."]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    import bert

    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    batch, seq, predictions = FLAGS.batch, FLAGS.seq, FLAGS.predictions
    config = bert.BertConfig.named(FLAGS.config, hidden_dropout=0.0, attention_dropout=0.0,
                                   max_position_embeddings=max(512, seq))
    if FLAGS.quick:
        FLAGS.repeats, FLAGS.warmup, FLAGS.idle_timeout_s = 1, 1, 0.0
        batch, seq, predictions = 2, 16, 4
        config = config.replace(vocab_size=256, num_layers=1, max_position_embeddings=16)
    machine = common.machine_info()
    rows = []
    for policy in POLICIES:
        for jit_compile in (False, True):
            row = measure(config, policy, jit_compile, batch, seq, predictions)
            logging.info("%s", row)
            rows.append(row)
    print(common.text_table(
        ["policy", "XLA", "seq/s", "step ms", "others' CPU"],
        [[r["policy"], "yes" if r["jit_compile"] else "no",
          f"{r['seq_per_s']:.1f}" + ("*" if r["contended"] else ""), f"{r['step_ms']:.0f}",
          f"{r['foreign_load']:.0%}"] for r in rows]))
    write = not FLAGS.quick or FLAGS["out_dir"].present
    if write:
        payload = {"machine": machine, "config": FLAGS.config, "predictions": predictions, "results": rows}
        common.write_json(os.path.join(FLAGS.out_dir, "train.json"), payload)
        with open(os.path.join(FLAGS.out_dir, "train.md"), "w") as f:
            f.write(markdown_report(rows, FLAGS.config, machine))


if __name__ == "__main__":
    app.run(main)
