"""The student of the task path: a structure sized by latency measured here, task-importance pruning, distillation.

Sizing (`fit_latency` -> `TaskLatencyModel.structure_for`). Two probe
structures of the teacher (heads and FFN neurons removed uniformly) are
converted to fp32 TFLite at the export length and timed side by side with the
teacher on this machine (`recipes.latency.side_by_side`). Their FLOPs
(`tfreparam.sparsity.structured.encoder_flops`) give the FLOPs of one head
and of one neuron, and the timings a line

    t / t(teacher) = intercept + slope · FLOPs / FLOPs(teacher)

(fp32 batch-1 latency follows FLOPs closely on CPUs; the third point checks
it). The structure is then the least pruning along `REMOVAL_PATH` whose
predicted fp32 speed-up reaches target · (1 + margin): heads and neurons
removed in step up to half of each, then only neurons up to 90 %, then heads
again. Issue 15's evidence (MiniLM on wordnet_lexname): keeping all blocks
and halving the heads kept a usable model before distillation, dropping
blocks did not.

Pruning (`prune`): the importance of every head and neuron is Σ |∂CE/∂gate|
over labelled training examples (Michel et al. 2019; per-layer normalised,
ranked globally, `tfreparam.sparsity.structured`), and the least important
are removed physically.

Distillation (`distil`): the teacher's logits were computed once; each step
runs only the student on a batch of similar-length examples cut to its
longest, with `tfreparam.distill.soft_and_hard_loss` (soft targets at T,
hard labels weighted 1 − alpha) plus, with `hidden_weight` > 0, the masked
MSE of every block's output against the (then live) teacher's.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfreparam import distill, tracing

INPUTS = ("input_word_ids", "input_mask", "input_type_ids")
# (fraction of heads removed, fraction of FFN neurons removed) at t = 0, 1, 2, 3; linear in between.
REMOVAL_PATH = ((0.0, 0.0), (0.5, 0.5), (0.5, 0.9), (0.9, 0.9))
# Uniform structures timed against the teacher (fractions of heads, of neurons removed).
PROBES = {"probe_a": (0.25, 0.5), "probe_b": (0.67, 0.8)}


def removal_at(t: float) -> tuple[float, float]:
    """(heads removed, neurons removed) fractions at position t in [0, len(REMOVAL_PATH) - 1]."""
    t = min(max(float(t), 0.0), len(REMOVAL_PATH) - 1.0)
    i = min(int(t), len(REMOVAL_PATH) - 2)
    (h0, n0), (h1, n1) = REMOVAL_PATH[i], REMOVAL_PATH[i + 1]
    w = t - i
    return h0 + w * (h1 - h0), n0 + w * (n1 - n0)


def unit_counts(model) -> dict:
    """{"blocks", "heads", "neurons"} totals of a flat BERT (per block: its attention heads and FFN width)."""
    blocks = sorted({int(layer.name.split("/")[0][6:]) for layer in model.layers
                     if layer.name.startswith("layer_") and layer.name.endswith("/attention/math")})
    heads = sum(model.get_layer(f"layer_{b}/attention/math").num_heads for b in blocks)
    neurons = sum(model.get_layer(f"layer_{b}/ffn/intermediate").units for b in blocks)
    return {"blocks": len(blocks), "heads": int(heads), "neurons": int(neurons)}


def removed_counts(counts: dict, heads_fraction: float, neurons_fraction: float) -> tuple[int, int]:
    """Units removed for the fractions, as `prune_heads_and_neurons` counts them (one unit per block kept)."""
    heads = min(int(round(heads_fraction * counts["heads"])), counts["heads"] - counts["blocks"])
    neurons = min(int(round(neurons_fraction * counts["neurons"])), counts["neurons"] - counts["blocks"])
    return heads, neurons


def uniform_structure(model, heads_fraction: float, neurons_fraction: float, seq_length: int):
    """`model` with the same share of heads and neurons removed from every block (for timing only)."""
    from tfreparam.sparsity import structured

    heads, neurons = {}, {}
    for layer in model.layers:
        if layer.name.endswith("/attention/math"):
            block = int(layer.name.split("/")[0][6:])
            total = layer.num_heads
            keep = max(1, total - int(round(heads_fraction * total)))
            heads[block] = list(range(keep, total))
            width = model.get_layer(f"layer_{block}/ffn/intermediate").units
            keep = max(1, width - int(round(neurons_fraction * width)))
            neurons[block] = list(range(keep, width))
    return structured.remove_heads_and_neurons(model, heads, neurons, seq_length=seq_length)


@dataclasses.dataclass
class TaskLatencyModel:
    """Predicted fp32 batch-1 latency of pruned students relative to the teacher (see the module docstring)."""

    intercept: float
    slope: float
    teacher_flops: float
    head_flops: float
    neuron_flops: float
    counts: dict
    seq_length: int
    points: list  # [{"name", "heads_removed", "neurons_removed", "flops_ratio", "measured", "predicted"}]

    def flops_ratio(self, heads_fraction: float, neurons_fraction: float) -> float:
        heads, neurons = removed_counts(self.counts, heads_fraction, neurons_fraction)
        return (self.teacher_flops - heads * self.head_flops - neurons * self.neuron_flops) / self.teacher_flops

    def speedup(self, heads_fraction: float, neurons_fraction: float) -> float:
        return 1.0 / (self.intercept + self.slope * self.flops_ratio(heads_fraction, neurons_fraction))

    def structure_for(self, speedup: float) -> dict:
        """The least pruning along REMOVAL_PATH predicted to reach `speedup`; ValueError if none does."""
        end = len(REMOVAL_PATH) - 1.0
        if self.speedup(*removal_at(end)) < speedup:
            raise ValueError(
                f"A {speedup:.2f}x fp32 speed-up is out of reach by removing heads and FFN neurons: the most "
                f"pruning tried here ({removal_at(end)[0]:.0%} of heads, {removal_at(end)[1]:.0%} of neurons) is "
                f"predicted at {self.speedup(*removal_at(end)):.2f}x on this machine; ask for less "
                "(--target_speedup / --speedup_margin).")
        low, high = 0.0, end
        for _ in range(50):
            mid = (low + high) / 2
            if self.speedup(*removal_at(mid)) >= speedup:
                high = mid
            else:
                low = mid
        heads, neurons = removal_at(high)
        return {"heads_fraction": heads, "neurons_fraction": neurons,
                "predicted_speedup": self.speedup(heads, neurons), "flops_ratio": self.flops_ratio(heads, neurons)}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TaskLatencyModel":
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})


def fit_latency(teacher, seq_length: int, directory: str, rounds: int = 40, threads: int = 1,
                log=print) -> TaskLatencyModel:
    """Times the teacher and the PROBES (fp32 TFLite, batch 1) side by side and fits `TaskLatencyModel`."""
    import os

    from recipes import exports, latency
    import importlib

    tflite = importlib.import_module("tfreparam.export.tflite")  # the package's `tflite` is the function
    from tfreparam.sparsity import structured

    counts = unit_counts(teacher)
    models = {"teacher": (teacher, 0.0, 0.0)}
    for name, (h, n) in PROBES.items():
        models[name] = (uniform_structure(teacher, h, n, seq_length).model, h, n)
    runners, flops, removed = {}, {}, {}
    for name, (model, h, n) in models.items():
        path = os.path.join(directory, f"{name}_fp32_{seq_length}.tflite")
        exports.write(path, tflite.convert(model, "fp32", seq_length=seq_length))
        runners[name] = latency.tflite_runner(path, threads)
        flops[name] = structured.encoder_flops(model, seq_length)
        kept = unit_counts(model)
        removed[name] = (counts["heads"] - kept["heads"], counts["neurons"] - kept["neurons"])
    log(f"    timing the teacher and {len(PROBES)} probe structures: {rounds} interleaved rounds")
    # Token ids do not change the time; they only have to exist in the teacher's vocabulary, however small.
    vocab = int(teacher.get_layer("embeddings/word").weights[0].shape[0])
    feed = {"input_word_ids": np.full((1, seq_length), min(1000, vocab - 1), np.int32),
            "input_mask": np.ones((1, seq_length), np.int32), "input_type_ids": np.zeros((1, seq_length), np.int32)}
    timed = latency.side_by_side(runners, feed, rounds=rounds, base="teacher")
    # FLOPs of one head and one neuron from the two probes (FLOPs are linear in kept heads and neurons).
    a = np.array([removed[n] for n in PROBES], np.float64)
    b = np.array([flops["teacher"] - flops[n] for n in PROBES], np.float64)
    head_flops, neuron_flops = np.linalg.solve(a, b)
    ratios = {name: flops[name] / flops["teacher"] for name in models}
    measured = {name: 1.0 / timed[name]["speedup"] if name != "teacher" else 1.0 for name in models}
    names = list(models)
    intercept, slope = (float(c) for c in latency.fit_nonnegative(
        np.array([[1.0, ratios[n]] for n in names]), np.array([measured[n] for n in names])))
    points = [{"name": n, "heads_removed": int(removed[n][0]), "neurons_removed": int(removed[n][1]),
               "flops_ratio": float(ratios[n]), "measured": float(measured[n]),
               "median_ms": float(timed[n]["median_ms"]), "predicted": float(intercept + slope * ratios[n])}
              for n in names]
    return TaskLatencyModel(intercept, slope, float(flops["teacher"]), float(head_flops), float(neuron_flops),
                            counts, int(seq_length), points)


# -- pruning --------------------------------------------------------------------------------------------


def batches_of(features: dict, rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """`rows` sorted by length (longest first) and cut into batches."""
    lengths = features["input_mask"][rows].sum(1)
    rows = rows[np.argsort(-lengths, kind="stable")]
    return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]


def trimmed(features: dict, rows, names=INPUTS) -> dict:
    """The rows' inputs cut to their longest example (exact under the attention mask)."""
    width = max(1, int(features["input_mask"][rows].sum(1).max()))
    return {k: np.ascontiguousarray(features[k][rows, :width]) for k in names if k in features}


def prune(teacher, features: dict, labels: np.ndarray, heads_fraction: float, neurons_fraction: float,
          examples: int = 1024, seed: int = 0, seq_length: int = 128):
    """`tfreparam.sparsity.structured.prune_heads_and_neurons` ranked by |∂CE/∂gate| on `examples` train rows."""
    from tfreparam.sparsity import structured

    rng = np.random.default_rng(seed)
    rows = rng.choice(len(labels), min(examples, len(labels)), replace=False)
    data = [({k: tf.constant(v) for k, v in trimmed(features, r).items()}, tf.constant(labels[r]))
            for r in batches_of(features, rows, 64)]

    def loss_fn(y, logits):
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))

    return structured.prune_heads_and_neurons(teacher, heads_fraction, neurons_fraction, data, loss_fn,
                                              seq_length=seq_length)


# -- distillation ---------------------------------------------------------------------------------------


def length_grouped_batches(lengths: np.ndarray, batch_size: int, seed: int, chunk: int = 50) -> list[np.ndarray]:
    """A shuffled epoch: random chunks of `chunk` batches, sorted by length inside, batches in random order."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    batches = []
    for start in range(0, len(order), batch_size * chunk):
        part = order[start:start + batch_size * chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def with_hidden_states(classifier) -> keras.Model:
    """The classifier's layers with outputs {"logits", "hidden_states"} (embeddings output, each block's)."""
    blocks = unit_counts(classifier)["blocks"]
    first = "embeddings/projection" if any(l.name == "embeddings/projection" for l in classifier.layers) \
        else "embeddings/dropout"
    names = [first] + [f"layer_{i}/ffn/layer_norm" for i in range(blocks)]
    states = [classifier.get_layer(n).output for n in names]
    return keras.Model(classifier.inputs, {"logits": classifier.output, "hidden_states": states},
                       name=f"{classifier.name}_with_states")


def distil(student, features: dict, labels: np.ndarray, teacher_logits: np.ndarray, *, epochs: int,
           batch_size: int, learning_rate: float, temperature: float, alpha: float, seed: int = 0,
           hidden_weight: float = 0.0, teacher=None, log_dir: Optional[str] = None, log_every: int = 10,
           progress: bool = True) -> dict:
    """Trains `student` in place on cached teacher logits (see the module docstring); returns its history."""
    from recipes import optim
    from recipes.distillation import progress_bar

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    if hidden_weight > 0 and teacher is None:
        raise ValueError("hidden_weight > 0 compares hidden states with the teacher's: pass teacher=...")
    n = len(labels)
    if n < batch_size:
        raise ValueError(f"{n} training examples cannot fill one batch of {batch_size}; lower --batch_size.")
    keras.utils.set_random_seed(seed)
    lengths = features["input_mask"].sum(1)
    epochs_batches = [length_grouped_batches(lengths, batch_size, seed * 1000 + e) for e in range(epochs)]
    steps = sum(len(b) for b in epochs_batches)
    optimizer = optim.bert_optimizer("adamw", learning_rate, steps, max(1, steps // 10))
    hidden = hidden_weight > 0
    model = with_hidden_states(student) if hidden else student
    teacher_view = with_hidden_states(teacher) if hidden else None
    variables = student.trainable_variables
    tracing.build_optimizer(optimizer, variables)  # slots made here: the step below is traced once, not twice
    classes = teacher_logits.shape[1]
    spec = [{k: tf.TensorSpec([None, None], tf.int32) for k in INPUTS if k in features},
            tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, classes], tf.float32)]

    @tf.function(input_signature=spec)
    def step(x, y, soft):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            logits = out["logits"] if hidden else out
            terms = distill.soft_and_hard_loss(logits, soft, y, temperature, alpha)
            hidden_loss = tf.constant(0.0)
            if hidden:
                mask = tf.cast(x["input_mask"], tf.float32)
                targets = teacher_view(x, training=False)["hidden_states"]
                hidden_loss = tf.add_n([distill.masked_mse(s, t, mask)
                                        for s, t in zip(out["hidden_states"], targets)]) / len(targets)
            loss = terms["loss"] + hidden_weight * hidden_loss
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
        return loss, terms["task_loss"], terms["kd_loss"], hidden_loss

    writer = tf.summary.create_file_writer(log_dir) if log_dir else None
    bar = progress_bar(steps) if progress else None
    history, done, start = [], 0, time.perf_counter()
    epoch_losses = []
    for epoch, batches in enumerate(epochs_batches):
        total, count = 0.0, 0
        for rows in batches:
            x = {k: tf.constant(v) for k, v in trimmed(features, rows).items()}
            values = step(x, tf.constant(labels[rows], tf.int64), tf.constant(teacher_logits[rows], tf.float32))
            loss, ce, kd, hid = (float(v) for v in values)
            done += 1
            total, count = total + loss, count + 1
            shown = [("loss", loss), ("ce", ce), ("kd", kd)] + ([("hidden", hid)] if hidden else [])
            if bar is not None:
                bar.update(done, values=shown)
            if done % log_every == 0 or done == 1 or done == steps:
                history.append([done] + [v for _, v in shown])
                if writer is not None:
                    with writer.as_default(step=done):
                        for name, value in shown:
                            tf.summary.scalar(f"distillation/{name}", value)
                        tf.summary.scalar("distillation/learning_rate", float(optimizer.learning_rate))
                        tf.summary.scalar("distillation/epoch", epoch + 1)
        epoch_losses.append(total / max(count, 1))
    if writer is not None:
        writer.flush()
    return {"epochs": epochs, "steps": steps, "epoch_loss": epoch_losses,
            "history_columns": ["step", "loss", "ce", "kd"] + (["hidden"] if hidden else []), "history": history,
            "seconds": round(time.perf_counter() - start, 1)}


def quantization_aware(student, features: dict, labels: np.ndarray, teacher_logits: np.ndarray, *, steps: int,
                       batch_size: int, learning_rate: float, temperature: float, alpha: float, seed: int = 0):
    """A TFMOT quantization-aware copy of `student`, trained `steps` steps on the same cached-logit loss."""
    from tfreparam import quantization

    lengths = features["input_mask"].sum(1)
    batches = length_grouped_batches(lengths, batch_size, seed + 7)
    calibration = [trimmed(features, rows) for rows in batches[:4]]
    qat = quantization.quantize_model(student, scheme="default_8bit", calibration_data=calibration)
    optimizer = keras.optimizers.Adam(learning_rate / 4)
    variables = qat.trainable_variables
    for i in range(steps):
        rows = batches[i % len(batches)]
        x = {k: tf.constant(v) for k, v in trimmed(features, rows).items()}
        with tf.GradientTape() as tape:
            terms = distill.soft_and_hard_loss(qat(x, training=True), tf.constant(teacher_logits[rows]),
                                               tf.constant(labels[rows], tf.int64), temperature, alpha)
        grads = tape.gradient(terms["loss"], variables)
        optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
    return qat
