r"""MLM + NSP pre-training of a (optionally reparameterized) BERT from text files, on `model.fit`.

    python -m recipes.pretrain --train_files=a.txt,b.txt --config=mini --steps=10000 \
        --optimizer=adamw --precision=mixed_bfloat16 --model_dir=runs/mini

Documents are blocks of non-blank lines (`bert.pretraining_dataset`). The
optimizer is BERT's: linear warm-up then linear decay, AdamW (or LAMB for
large batches) with no weight decay on LayerNorm parameters and biases. The
run directory gets `checkpoints/` (weights every epoch), `backup/`
(`BackupAndRestore`: a restarted run resumes where it stopped), `logs/`
(TensorBoard, or `history.csv` without the tensorboard package) and `final.weights.h5`.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from recipes import cli

# Each recipe has its own flag set, so several recipes can be imported in one process (tests, sweep).
FLAGS = flags.FlagValues()


def _flag(kind, *args, **kwargs):
    return getattr(flags, f"DEFINE_{kind}")(*args, flag_values=FLAGS, **kwargs)


_flag("string", "train_files", None, "Comma-separated text files (documents separated by blank lines).")
_flag("string", "config", "tiny", "A BertConfig JSON file or a named size (tiny, mini, small, minilm, base, large).")
_flag("string", "vocab", "minilm", "WordPiece vocabulary: a vocab.txt, a checkpoint directory, or 'minilm'.")
_flag("integer", "seq_length", 128, "Tokens per example.")
_flag("integer", "max_predictions", 20, "Masked positions per example.")
_flag("integer", "batch_size", 32, "Global batch size.")
_flag("integer", "steps", 1000, "Training steps.")
_flag("integer", "steps_per_epoch", 100, "Steps between checkpoints / log lines.")
_flag("integer", "warmup_steps", None, "Linear warm-up steps (default: 10 % of --steps).")
_flag("float", "learning_rate", 1e-4, "Peak learning rate.")
_flag("float", "weight_decay", 0.01, "Decoupled weight decay (not on LayerNorm / bias).")
_flag("enum", "optimizer", "adamw", ["adamw", "lamb"], "AdamW, or LAMB for large batches.")
_flag("string", "strategy", "default", "default, one_device, mirrored or tpu (tfreparam.distribute).")
_flag("enum", "precision", "float32", ["float32", "mixed_float16", "mixed_bfloat16"], "Mixed-precision policy.")
_flag("bool", "unit_scaling", False, "Build a unit-scaled BERT (Blake et al. 2023).")
_flag("bool", "jit_compile", False, "Compile the train step with XLA.")
_flag("string", "model_dir", "runs/pretrain", "Checkpoints, backup and TensorBoard logs.")
_flag("integer", "seed", 0, "Data and initialisation seed.")


def resolve_config(value: str):
    import bert

    if value.endswith(".json") or os.path.isfile(value):
        if not os.path.isfile(value):
            raise ValueError(f"--config: {value!r} does not exist.")
        try:
            with open(value) as f:
                values = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"--config: {value} is not valid JSON ({error}).") from None
        if "num_hidden_layers" in values:  # a Hugging Face config.json
            return bert.BertConfig.from_hf_config(values)
        try:
            return bert.BertConfig.from_dict(values)
        except TypeError as error:
            raise ValueError(f"--config: {value} is not a BertConfig ({error}).") from None
    return bert.BertConfig.named(value)


def make_strategy(name: str):
    """A `tf.distribute` strategy: via `tfreparam.distribute` when present, else plain TF."""
    import tensorflow as tf

    try:
        from tfreparam import distribute
    except ImportError:
        distribute = None
    if name == "default":
        return tf.distribute.get_strategy()
    if distribute is not None and hasattr(distribute, "strategy"):
        return distribute.strategy(name)
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    raise ValueError(f"--strategy must be default, one_device or mirrored here; got {name!r}.")


def _log_callback(log_dir: str):
    """TensorBoard logs when the tensorboard package is installed, else a CSV of the same scalars."""
    import tf_keras as keras

    try:
        import tensorboard  # noqa: F401
    except ImportError:
        os.makedirs(log_dir, exist_ok=True)
        print("[pretrain] tensorboard is not installed: logging to logs/history.csv instead", flush=True)
        return keras.callbacks.CSVLogger(os.path.join(log_dir, "history.csv"), append=True)
    return keras.callbacks.TensorBoard(log_dir, update_freq="epoch")


def check_flags(f) -> dict:
    if not f.train_files:
        raise app.UsageError("--train_files is required (comma-separated text files).")
    from recipes import text_data

    try:
        files = text_data.check_files(f.train_files, "--train_files")
        config = resolve_config(f.config)
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    for name in ("seq_length", "max_predictions", "batch_size", "steps", "steps_per_epoch"):
        if getattr(f, name) < 1:
            raise app.UsageError(f"--{name} must be >= 1, got {getattr(f, name)}.")
    if f.max_predictions >= f.seq_length:
        raise app.UsageError(f"--max_predictions ({f.max_predictions}) must be below --seq_length ({f.seq_length}).")
    if f.learning_rate <= 0:
        raise app.UsageError(f"--learning_rate must be > 0, got {f.learning_rate}.")
    warmup = f.warmup_steps if f.warmup_steps is not None else max(1, f.steps // 10)
    if not 0 <= warmup <= f.steps:
        raise app.UsageError(f"--warmup_steps must be in [0, --steps], got {warmup}.")
    if f.unit_scaling:
        config = config.replace(unit_scaled=True)
    return dict(files=files, config=config, vocab=f.vocab, seq_length=f.seq_length,
                max_predictions=f.max_predictions, batch_size=f.batch_size, steps=f.steps,
                steps_per_epoch=min(f.steps_per_epoch, f.steps), warmup=warmup, learning_rate=f.learning_rate,
                weight_decay=f.weight_decay, optimizer=f.optimizer, strategy=f.strategy, precision=f.precision,
                jit_compile=f.jit_compile, model_dir=f.model_dir, seed=f.seed)


def run(s: dict) -> dict:
    """Trains; returns the final metrics (also written to `<model_dir>/metrics.json`)."""
    import tf_keras as keras

    import bert
    from recipes import optim
    from tfreparam import tracing

    keras.utils.set_random_seed(s["seed"])
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(s["precision"])
    try:
        strategy = make_strategy(s["strategy"])
        data = bert.pretraining_dataset(
            s["files"], s["vocab"], seq_length=s["seq_length"], max_predictions_per_seq=s["max_predictions"],
            batch_size=s["batch_size"], seed=s["seed"], repeat=True)
        with strategy.scope():
            pretrainer = bert.build_pretrainer(s["config"], max_predictions_per_seq=s["max_predictions"])
            optimizer = optim.bert_optimizer(s["optimizer"], s["learning_rate"], s["steps"], s["warmup"],
                                             s["weight_decay"])
            if s["precision"] == "mixed_float16":
                optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
            pretrainer.compile(optimizer=optimizer, jit_compile=s["jit_compile"])
        model_dir = s["model_dir"]
        os.makedirs(model_dir, exist_ok=True)
        callbacks = [
            keras.callbacks.BackupAndRestore(os.path.join(model_dir, "backup")),
            keras.callbacks.ModelCheckpoint(os.path.join(model_dir, "checkpoints", "epoch_{epoch:04d}.weights.h5"),
                                            save_weights_only=True),
            _log_callback(os.path.join(model_dir, "logs")),
        ]
        features, _ = next(iter(data))
        pretrainer(features, training=False)  # BackupAndRestore needs a built model
        tracing.build_for_fit(pretrainer)  # the optimizer's slots made now: fit traces its step once, not twice
        epochs = -(-s["steps"] // s["steps_per_epoch"])
        history = pretrainer.fit(data, epochs=epochs, steps_per_epoch=s["steps_per_epoch"], callbacks=callbacks,
                                 verbose=2)
        pretrainer.network.save_weights(os.path.join(model_dir, "final.weights.h5"))
        metrics = {k: float(v[-1]) for k, v in history.history.items()}
        # What actually ran (the strategy's replicas, the dtype the projections computed in).
        compute_dtypes = sorted({layer.compute_dtype for layer in pretrainer.network.layers if layer.weights})
        metrics.update(steps=epochs * s["steps_per_epoch"], config=s["config"].to_dict(),
                       replicas=strategy.num_replicas_in_sync, compute_dtypes=compute_dtypes)
        with open(os.path.join(model_dir, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        print(f"[pretrain] done: {metrics}; weights in {os.path.abspath(model_dir)}", flush=True)
        return metrics
    finally:
        keras.mixed_precision.set_global_policy(previous)


main = cli.main(FLAGS, check_flags, run)
parse_flags = cli.flags_parser(FLAGS)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
