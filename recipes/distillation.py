"""Distillation from the original encoder with its outputs cached: one teacher pass serves every student.

`TeacherCache.build` tokenizes the distillation sentences into batches of
similar length (shuffled chunks, sorted within each, cut to their longest
sentence) and stores the teacher's hidden states of each batch in float16.
`distil` then trains a student on those batches for a fixed number of steps
(cycling through them) with the loss of `tfreparam.distill`:

    hidden_weight · mean over pairs (s, t) of masked MSE(h_s[s], h_t[t])
    + embedding_weight · mean(1 − cos(mean-pool(student), mean-pool(teacher)))

(`layer_map` {student state: teacher state}; 0 = embeddings output), Adam
with linear warm-up (10 %) and linear decay. Our compressed model and the
layer-drop baseline get exactly the same batches, steps and losses. A
progress bar shows the two losses; TensorBoard scalars go to `log_dir`.

Two choices measured on the demo's pruned MiniLM (600 steps, held-out-domain
cosine): dropout off, because the student copies a deterministic function
and dropout's noise slows that fit (+0.011); the embedding layers frozen,
because they already are the teacher's and a row moves only when its token
occurs in the distillation text, which held-out text need not share (equal
quality, ~15 % less time per step: no Adam update of the 30k-row table).
"""

from __future__ import annotations

import sys
import time
from typing import Mapping, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfreparam import distill, tracing

INPUTS = ("input_word_ids", "input_mask", "input_type_ids")


class _LogProgress:
    """Progress for a log file: one line about every `interval` seconds, and one at the end."""

    def __init__(self, total: int, unit: str, interval: float = 15.0):
        self.total, self.unit, self.interval = total, unit, interval
        self.start = self.last = time.perf_counter()

    def update(self, current: int, values=None):
        now = time.perf_counter()
        if now - self.last < self.interval and current < self.total:
            return
        self.last = now
        elapsed = now - self.start
        eta = elapsed / max(current, 1) * (self.total - current)
        shown = "".join(f" - {name}: {value:.4g}" for name, value in (values or []))
        timing = f"{elapsed:.0f}s" if current >= self.total else f"{elapsed:.0f}s, ~{eta:.0f}s left"
        plural = self.unit + ("es" if self.unit.endswith(("s", "ch")) else "s")
        print(f"    {current}/{self.total} {plural} ({timing}){shown}", flush=True)


def progress_bar(total: int, unit: str = "step"):
    """update(current, values=[(name, value)]): a keras Progbar on a terminal, a line every ~15 s in a log."""
    if sys.stdout.isatty():
        return keras.utils.Progbar(total, unit_name=unit, interval=0.1, stateful_metrics=["hidden", "embedding"])
    return _LogProgress(total, unit)


def length_batches(preprocessor, texts, batch_size: int, seed: int = 0) -> list[dict]:
    """Batches of similar length: shuffled chunks of 16 batches, sorted by length inside, cut to their longest."""
    features = preprocessor(tf.constant(list(texts)))
    features = {k: np.asarray(features[k]).astype(np.int32) for k in INPUTS}
    n = features["input_mask"].shape[0]
    if n < batch_size:
        raise ValueError(f"{n} distillation sentences cannot fill one batch of {batch_size}; give more text or "
                         "a smaller --batch_size.")
    rng = np.random.default_rng(seed)
    lengths = features["input_mask"].sum(1)
    index = rng.permutation(n)
    batches = []
    for start in range(0, n, 16 * batch_size):
        chunk = index[start:start + 16 * batch_size]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        for j in range(0, len(chunk) - batch_size + 1, batch_size):
            rows = chunk[j:j + batch_size]
            width = max(int(lengths[rows].max()), 1)
            batches.append({k: v[rows, :width] for k, v in features.items()})
    return [batches[i] for i in rng.permutation(len(batches))]


class TeacherCache:
    """Distillation batches and the teacher's float16 hidden states of each (indices `states`)."""

    def __init__(self, batches, outputs, states):
        self.batches, self.outputs, self.states = batches, outputs, tuple(states)

    @classmethod
    def build(cls, teacher, preprocessor, texts, batch_size: int, steps: int, seed: int = 0,
              states: Optional[tuple] = None) -> "TeacherCache":
        """Runs the teacher once over the batches that `steps` steps will use (at most one pass of the text)."""
        batches = length_batches(preprocessor, texts, batch_size, seed)[:max(int(steps), 1)]
        depth = len(teacher.output["hidden_states"]) - 1
        states = tuple(range(1, depth + 1)) if states is None else tuple(states)
        spec = {k: tf.TensorSpec((None, None), tf.int32) for k in INPUTS}

        @tf.function(input_signature=[spec], autograph=False)
        def run(x):
            hidden = teacher(x, training=False)["hidden_states"]
            return [tf.cast(hidden[i], tf.float16) for i in states]

        bar = progress_bar(len(batches), unit="batch")
        outputs = []
        for i, batch in enumerate(batches):
            outputs.append([h.numpy() for h in run({k: tf.constant(v) for k, v in batch.items()})])
            bar.update(i + 1)
        return cls(batches, outputs, states)

    @property
    def sentences(self) -> int:
        return sum(b["input_mask"].shape[0] for b in self.batches)


def uniform_layer_map(student_blocks: int, teacher_blocks: int) -> dict:
    """Student block output s -> teacher block output round(s · T / S), s = 1..S (last maps to last)."""
    return {s: int(np.floor(s * teacher_blocks / student_blocks + 0.5)) for s in range(1, student_blocks + 1)}


EMBEDDING_LAYERS = "embeddings/"  # the flat BERT's word, position and type embeddings and their LayerNorm
# The measured choices (module docstring), passed explicitly by the recipes so their stage keys carry them.
STUDENT_CHOICES = {"train_embeddings": False, "dropout": False}


def distilled_variables(student: keras.Model, train_embeddings: bool = False) -> list:
    """The variables distillation updates: every trainable one, less the embedding layers' unless asked."""
    return [v for layer in student.layers if train_embeddings or not layer.name.startswith(EMBEDDING_LAYERS)
            for v in layer.trainable_weights]


def distil(student: keras.Model, cache: TeacherCache, layer_map: Mapping[int, int], steps: int,
           learning_rate: float, hidden_weight: float, embedding_weight: float, seed: int = 0,
           log_dir: Optional[str] = None, log_every: int = 10, train_embeddings: bool = False,
           dropout: bool = False) -> dict:
    """Trains `student` (in place) on the cached teacher; returns {"history": [[step, hidden, embedding]], ...}."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    pairs = sorted(layer_map.items())
    missing = sorted({t for _, t in pairs} - set(cache.states))
    if missing:
        raise ValueError(f"The teacher cache holds states {list(cache.states)}; the layer map needs {missing}.")
    last = cache.states.index(max(cache.states))
    position = {t: cache.states.index(t) for _, t in pairs}
    keras.utils.set_random_seed(seed)
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    variables = distilled_variables(student, train_embeddings)
    if not variables:
        raise ValueError("The student has no trainable variables outside its embedding layers to distil.")
    tracing.build_optimizer(optimizer, variables)  # slots made here: the step below is traced once, not twice
    warmup = max(1, steps // 10)
    width = int(student.output["sequence_output"].shape[-1])
    spec = [{k: tf.TensorSpec((None, None), tf.int32) for k in INPUTS},
            [tf.TensorSpec((None, None, width), tf.float16) for _ in cache.states], tf.TensorSpec((), tf.float32)]

    @tf.function(input_signature=spec, autograph=False)  # no tensor-dependent Python control flow
    def step(x, teacher_states, rate):
        mask = tf.cast(x["input_mask"], tf.float32)
        with tf.GradientTape() as tape:
            out = student(x, training=dropout)
            hidden = tf.constant(0.0)
            if hidden_weight > 0:
                hidden = tf.add_n([distill.masked_mse(out["hidden_states"][s], teacher_states[position[t]], mask)
                                   for s, t in pairs]) / len(pairs)
            embedding = tf.constant(0.0)
            if embedding_weight > 0:
                embedding = distill.pooled_cosine_distance(out["sequence_output"], teacher_states[last], mask)
            loss = hidden_weight * hidden + embedding_weight * embedding
        grads = tape.gradient(loss, variables)
        optimizer.learning_rate.assign(rate)
        optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
        return hidden, embedding

    writer = tf.summary.create_file_writer(log_dir) if log_dir else None
    bar = progress_bar(steps)
    history, start = [], time.perf_counter()
    for i in range(steps):
        j = i % len(cache.batches)
        rate = learning_rate * min((i + 1) / warmup, max(0.0, (steps - i) / max(1, steps - warmup)))
        batch = {k: tf.constant(v) for k, v in cache.batches[j].items()}
        hidden, embedding = step(batch, [tf.constant(h) for h in cache.outputs[j]], tf.constant(rate, tf.float32))
        values = {}
        if hidden_weight > 0:
            values["hidden"] = float(hidden)
        if embedding_weight > 0:
            values["embedding"] = float(embedding)
        bar.update(i + 1, values=list(values.items()))
        if (i + 1) % log_every == 0 or i == 0 or i + 1 == steps:
            history.append([i + 1] + [values.get("hidden"), values.get("embedding")])
            if writer is not None:
                with writer.as_default(step=i + 1):
                    for name, value in values.items():
                        tf.summary.scalar(f"{name}_loss", value)
                    tf.summary.scalar("loss", hidden_weight * values.get("hidden", 0.0)
                                      + embedding_weight * values.get("embedding", 0.0))
                    tf.summary.scalar("learning_rate", rate)
    if writer is not None:
        writer.flush()
    return {"steps": steps, "history": history, "seconds": round(time.perf_counter() - start, 1),
            "layer_map": {str(s): t for s, t in pairs}, "sentences_seen": min(steps, len(cache.batches))
            * cache.batches[0]["input_mask"].shape[0],
            "trained_parameters": int(sum(np.prod(v.shape) for v in variables)), "dropout": bool(dropout),
            "train_embeddings": bool(train_embeddings)}
