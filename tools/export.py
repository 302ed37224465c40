r"""Export a model to SavedModel, TFLite or ONNX; print its parity report, file size and latency.

    python -m tools.export --model=minilm --format=tflite --mode=int8 --out=/tmp/minilm_int8.tflite
    python -m tools.export --model=compressed.keras --format=onnx --out=/tmp/compressed.onnx
    python -m tools.export --model=CHECKPOINT_DIR --format=saved_model --out=/tmp/sm

--model is a saved tf_keras model (`.keras`, `.h5` or a Keras SavedModel
directory), a Hugging Face BERT checkpoint directory (config.json +
model.safetensors), or `minilm` (the bundled all-MiniLM-L6-v2 encoder).
For a BERT encoder the parity inputs are real sentences (the stdlib-docstring
corpus) tokenized at --seq_length, and int8 / int16x8 calibrate on other
sentences of that corpus; other models get random inputs (and need no
calibration except for int8, where random normal data is used).
Latency: batch --batch_size at --seq_length, median over --repeats runs in
LiteRT (.tflite), onnxruntime (.onnx) or TensorFlow (SavedModel).
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "minilm", "A .keras/.h5 model, a HF BERT checkpoint dir, or 'minilm'.")
flags.DEFINE_enum("format", "tflite", ["saved_model", "tflite", "onnx"], "Artifact format.")
flags.DEFINE_enum("mode", "fp32", ["fp32", "fp16", "dynamic", "int8", "int16x8"],
                  "Numeric mode (TFLite; SavedModel and ONNX are fp32).")
flags.DEFINE_string("out", None, "Output path (.tflite / .onnx file, or SavedModel directory).")
flags.DEFINE_integer("seq_length", None, "Sequence length of the parity/latency inputs (fixed in TFLite). "
                     "Default: 128, or the model's max_position_embeddings if smaller.")
flags.DEFINE_integer("batch_size", 1, "Batch size of the latency measurement.")
flags.DEFINE_integer("parity_sentences", 16, "Held-out sentences for the parity check.")
flags.DEFINE_integer("calibration_sentences", 128, "Sentences for int8 / int16x8 calibration.")
flags.DEFINE_integer("repeats", 20, "Timed runs for the latency figure.")
flags.DEFINE_string("tokenizer", None, "Checkpoint dir with vocab.txt for the tokenizer (default: the model's, "
                    "else 'minilm').")
flags.DEFINE_bool("check", True, "Fail if the artifact's outputs leave the mode's tolerance.")
flags.DEFINE_bool("strings", True, "SavedModel: add the raw-string signatures (BERT encoders).")
flags.mark_flag_as_required("out")


def load_model(spec: str):
    """(model, checkpoint dir or None) from a saved Keras model, a HF checkpoint dir or 'minilm'."""
    import tf_keras as keras

    import bert  # noqa: F401  (registers the BERT layers)
    import tfreparam  # noqa: F401  (registers the factorized layers)

    if spec == "minilm" or (os.path.isdir(spec) and os.path.isfile(os.path.join(spec, "config.json"))):
        return bert.load_hf(spec).model, spec
    if not os.path.exists(spec):
        raise app.UsageError(f"No model at {spec!r} (expected a .keras/.h5 file, a checkpoint dir or 'minilm').")
    try:
        return keras.models.load_model(spec, compile=False), None
    except (OSError, ValueError, TypeError) as first_error:
        try:  # TFMOT-wrapped (pruned / quantization-aware) models need TFMOT's scopes
            import tensorflow_model_optimization as tfmot

            with tfmot.quantization.keras.quantize_scope(), tfmot.sparsity.keras.prune_scope():
                return keras.models.load_model(spec, compile=False), None
        except Exception:  # report the plain loader's error, which names the problem
            raise app.UsageError(f"{spec!r} is not a loadable tf_keras model: {first_error}") from first_error


def _text_inputs(model, checkpoint, seq_length):
    """(preprocessor, parity inputs, calibration batches) from the corpus, or None if not a BERT."""
    import tensorflow as tf

    from bert.preprocessing import Preprocessor
    from recipes import corpus
    from tfreparam.export import model_io

    if not model_io.is_bert_encoder(model):
        return None
    tokenizer = FLAGS.tokenizer or (checkpoint if checkpoint and (
        checkpoint == "minilm" or os.path.isfile(os.path.join(checkpoint, "vocab.txt"))) else "minilm")
    preprocessor = Preprocessor.from_pretrained(tokenizer, seq_length=seq_length)
    vocab = model.get_layer("embeddings/word").vocab_size if "embeddings/word" in [l.name for l in model.layers] else None
    if vocab is not None and vocab < preprocessor.vocab_size:
        print(f"[export] the model's vocabulary ({vocab}) is smaller than {tokenizer}'s "
              f"({preprocessor.vocab_size}): using random token ids instead of text.")
        return None
    parts = corpus.split(corpus.stdlib_sentences(), {"calibration": 0.2, "train": 0.6, "heldout": 0.2})
    heldout = parts["heldout"][:FLAGS.parity_sentences]
    inputs = {k: v.numpy() for k, v in preprocessor(tf.constant(heldout)).items()}
    from tfreparam.export import representative_text_batches

    calibration = representative_text_batches(preprocessor, parts["calibration"][:FLAGS.calibration_sentences])
    return preprocessor, inputs, calibration


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; use flags (see --help).")
    if not FLAGS["verbosity"].present:  # TF's INFO lines about saving drown the report
        logging.set_verbosity(logging.WARNING)
    if FLAGS.format != "tflite" and FLAGS.mode != "fp32":
        raise app.UsageError(f"--mode={FLAGS.mode} is a TFLite mode; {FLAGS.format} exports are fp32.")
    import numpy as np

    from tfreparam import export
    from tfreparam.export import model_io, runners

    model, checkpoint = load_model(FLAGS.model)
    try:
        seq_length = model_io.resolve_seq_length(model, "auto" if FLAGS.seq_length is None else FLAGS.seq_length)
    except ValueError as error:
        raise app.UsageError(f"--seq_length: {error}") from error
    text = _text_inputs(model, checkpoint, seq_length)
    if text is not None:
        preprocessor, sample_inputs, calibration = text
    else:
        preprocessor = None
        sample_inputs = model_io.sample_inputs(model, batch_size=4, seq_length=seq_length)
        calibration = [model_io.sample_inputs(model, batch_size=32, seq_length=seq_length, seed=s)
                       for s in range(1, 5)]
    kwargs = dict(sample_inputs=sample_inputs, check=False)
    try:
        if FLAGS.format == "saved_model":
            export.saved_model(model, FLAGS.out, preprocessor=preprocessor if FLAGS.strings else None, **kwargs)
        elif FLAGS.format == "onnx":
            export.onnx(model, FLAGS.out, **kwargs)
        else:
            export.tflite(model, FLAGS.out, mode=FLAGS.mode, seq_length=seq_length,
                          representative_data=calibration, **kwargs)
    except (TypeError, ValueError) as error:  # the exporters' messages say what to do
        raise SystemExit(f"[export] {FLAGS.format} ({FLAGS.mode}) export failed: {error}") from error

    parity_mode = FLAGS.mode
    if FLAGS.format == "tflite" and model_io.is_quantization_aware(model_io.prepare(model)):
        parity_mode = "qat"
    report = export.check_parity(model_io.prepare(model), FLAGS.out, sample_inputs, mode=parity_mode)
    print(report)
    size = export.artifact_bytes(FLAGS.out)
    print(f"[export] {FLAGS.format} ({FLAGS.mode}) {FLAGS.out}: {size / 2**20:.2f} MiB ({size:,} bytes)")

    timing_inputs = {name: np.repeat(value[:1], FLAGS.batch_size, axis=0) for name, value in sample_inputs.items()}
    runtime = {"tflite": "LiteRT", "onnx": "onnxruntime", "saved_model": "TensorFlow"}[FLAGS.format]
    latency = runners.runner_for(FLAGS.out).latency(timing_inputs, repeats=FLAGS.repeats)
    seq = next(iter(timing_inputs.values())).shape[1:] if timing_inputs else ()
    print(f"[export] latency ({runtime}, batch {FLAGS.batch_size}, input shape {tuple(seq)}): median "
          f"{latency['median_ms']:.2f} ms, mean {latency['mean_ms']:.2f} ms, min {latency['min_ms']:.2f} ms "
          f"over {latency['repeats']} runs on {os.cpu_count()} CPU(s)")
    summary = {
        "format": FLAGS.format, "mode": FLAGS.mode, "out": FLAGS.out, "bytes": size, "latency": latency,
        "passed": report.passed, "tolerance": str(report.tolerance),
        "outputs": {name: {"max_abs": o.max_abs, "cosine_min": o.cosine_min, "cosine_mean": o.cosine_mean}
                    for name, o in report.outputs.items()},
    }
    print("RESULT " + json.dumps(summary))
    if FLAGS.check and not report.passed:
        raise SystemExit(f"[export] parity check failed: {'; '.join(report.failures)}")


if __name__ == "__main__":
    app.run(main)
