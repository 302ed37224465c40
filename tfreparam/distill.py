"""Knowledge distillation with `model.fit`: a student learns from a frozen teacher.

`Distiller(student, teacher, ...)` is a `keras.Model` whose `train_step`
minimises

    loss = (1 − alpha) · task(y, student logits)                      [when labels are given]
         + alpha · T² · KL(softmax(teacher / T) ‖ softmax(student / T))   (Hinton et al. 2015)
         + hidden_weight · mean_i MSE(h_s[i], h_t[map(i)])            (TinyBERT, over real tokens)
         + attention_weight · mean_j MSE(A_s[j], A_t[map(j)])         (TinyBERT, over real query rows)
         + embedding_weight · mean(1 − cos(pool(s), pool(t)))          (sentence-embedding level)

Student and teacher are models returning a tensor (logits) or a dict of
outputs. BERT encoders built with `output_hidden_states=True` /
`output_attentions=True` give `hidden_states` (a list: embeddings output,
then each block) and `attention_probs` (a list per block); `layer_map`
pairs student hidden-state indices with teacher ones when depths differ (the
default maps student state i to teacher state i·Lt/Ls, embeddings to
embeddings, as in TinyBERT). The teacher runs in inference mode and is never
updated (`teacher.trainable = False`). Losses are computed in float32
whatever the mixed-precision policy, and scaled for `tf.distribute`
strategies the same way Keras scales compiled losses.

`soft_and_hard_loss` is the logit part alone for training loops whose
teacher ran once beforehand (cached logits: each step then runs only the
student).
"""

from __future__ import annotations

from typing import Mapping, Optional

import tensorflow as tf
import tf_keras as keras

from tfreparam import tracing

LOSS_NAMES = ("task_loss", "kd_loss", "hidden_loss", "attention_loss", "embedding_loss")


def default_layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """Student hidden-state index -> teacher index: 0 -> 0 and i -> i·Lt/Ls (uniform, TinyBERT)."""
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError(f"Both models need at least one block; got {student_layers} and {teacher_layers}.")
    if teacher_layers % student_layers:
        raise ValueError(
            f"The teacher's {teacher_layers} blocks do not divide evenly over the student's {student_layers}; "
            "pass layer_map={student_index: teacher_index} explicitly."
        )
    step = teacher_layers // student_layers
    return {i: i * step for i in range(student_layers + 1)}


def _attention_map(layer_map: Mapping[int, int]) -> dict[int, int]:
    # Hidden state i (i >= 1) is the output of block i - 1, whose attention is A[i - 1].
    return {s - 1: t - 1 for s, t in layer_map.items() if s >= 1 and t >= 1}


class Distiller(keras.Model):
    """Trains `student` to match a frozen `teacher`; see the module docstring for the loss.

    Args:
      student, teacher: models taking the same inputs.
      temperature: softening temperature T of the logit KL (> 0).
      alpha: weight of the KL term; the task loss gets 1 − alpha. Both need
        logits (`logits_key` for dict outputs, or tensor outputs).
      hidden_weight, attention_weight, embedding_weight: weights of the
        hidden-state MSE, attention-probability MSE and pooled-embedding
        cosine terms (0 = off).
      layer_map: {student hidden-state index: teacher index}; default
        `default_layer_map` from the two depths.
      task_loss: loss for (x, y) batches (default: sparse categorical
        cross-entropy from logits).
      logits_key, hidden_key, attention_key, embedding_key: output names.
      mask_key: input holding the 0/1 token mask (padding is left out of the
        hidden, attention and pooling terms), or None for none.
    """

    def __init__(self, student: keras.Model, teacher: keras.Model, temperature: float = 1.0, alpha: float = 0.0,
                 hidden_weight: float = 0.0, attention_weight: float = 0.0, embedding_weight: float = 0.0,
                 layer_map: Optional[Mapping[int, int]] = None, task_loss=None, logits_key: Optional[str] = None,
                 hidden_key: str = "hidden_states", attention_key: str = "attention_probs",
                 embedding_key: str = "sequence_output", mask_key: Optional[str] = "input_mask", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(student, keras.Model) or not isinstance(teacher, keras.Model):
            raise TypeError(
                f"student and teacher must be tf_keras models; got {type(student).__name__} and "
                f"{type(teacher).__name__} (build them with `import tf_keras as keras`)."
            )
        if student is teacher:
            raise ValueError("student and teacher are the same model; distil from a separate (original) copy.")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (the weight of the soft-target KL), got {alpha!r}.")
        for name, value in (("hidden_weight", hidden_weight), ("attention_weight", attention_weight),
                            ("embedding_weight", embedding_weight)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}.")
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False  # the teacher never trains
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.hidden_weight = float(hidden_weight)
        self.attention_weight = float(attention_weight)
        self.embedding_weight = float(embedding_weight)
        self.task_loss = keras.losses.get(task_loss) if task_loss is not None else None
        self.logits_key, self.hidden_key = logits_key, hidden_key
        self.attention_key, self.embedding_key, self.mask_key = attention_key, embedding_key, mask_key
        self.layer_map = self._resolve_layer_map(layer_map)
        self._trackers = {name: keras.metrics.Mean(name) for name in ("loss",) + LOSS_NAMES}

    # -- configuration checks -----------------------------------------------------

    def _output_spec(self, model, key):
        outputs = model.output if hasattr(model, "output") else None
        if isinstance(outputs, dict):
            if key not in outputs:
                return None
            return outputs[key]
        return None

    def _resolve_layer_map(self, layer_map):
        needs_states = self.hidden_weight > 0 or self.attention_weight > 0
        if not needs_states:
            return dict(layer_map) if layer_map else {}
        counts = []
        for role, model in (("student", self.student), ("teacher", self.teacher)):
            states = self._output_spec(model, self.hidden_key)
            if self.hidden_weight > 0 and states is None:
                raise ValueError(
                    f"hidden_weight > 0 needs the {role} to output '{self.hidden_key}' (a list of hidden states); "
                    "build BERT encoders with output_hidden_states=True."
                )
            probs = self._output_spec(model, self.attention_key)
            if self.attention_weight > 0 and probs is None:
                raise ValueError(
                    f"attention_weight > 0 needs the {role} to output '{self.attention_key}'; build BERT "
                    "encoders with output_attentions=True."
                )
            counts.append(len(states) - 1 if states is not None else len(probs))
        resolved = dict(layer_map) if layer_map else default_layer_map(*counts)
        for s, t in resolved.items():
            if not (0 <= s <= counts[0] and 0 <= t <= counts[1]):
                raise ValueError(
                    f"layer_map entry {s}: {t} is out of range: the student has hidden states 0..{counts[0]} "
                    f"and the teacher 0..{counts[1]} (0 = embeddings output)."
                )
        if self.hidden_weight > 0:
            widths = [int(self._output_spec(m, self.hidden_key)[0].shape[-1]) for m in (self.student, self.teacher)]
            if widths[0] != widths[1]:
                raise ValueError(
                    f"Hidden-state distillation compares states directly, but the student's width is {widths[0]} "
                    f"and the teacher's {widths[1]}; use hidden_weight=0 or a student of the same width."
                )
        return resolved

    def fit(self, *args, **kwargs):
        # The student's optimizer slots made before the first step: the step is traced once, not twice.
        if getattr(self, "optimizer", None) is not None:
            tracing.build_for_fit(self, self.student.trainable_variables)
        return super().fit(*args, **kwargs)

    # -- the loss -----------------------------------------------------------------

    @property
    def metrics(self):
        return list(self._trackers.values())

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def _pick(self, outputs, key, what):
        if isinstance(outputs, dict):
            if key is None or key not in outputs:
                raise ValueError(f"The {what} term needs output {key!r}; the model outputs {sorted(outputs)}.")
            return outputs[key]
        if what != "logit":
            raise ValueError(f"The {what} term needs dict outputs with {key!r}; the model returns a single tensor.")
        return outputs

    def _mask(self, x):
        if self.mask_key is None or not isinstance(x, Mapping) or self.mask_key not in x:
            return None
        return tf.cast(x[self.mask_key], tf.float32)

    def compute_losses(self, x, y, student_outputs, teacher_outputs) -> dict:
        """Every loss term (float32 scalars, zero when switched off) and their weighted sum `loss`."""
        zero = tf.constant(0.0)
        terms = dict.fromkeys(LOSS_NAMES, zero)
        mask = self._mask(x)
        needs_logits = self.alpha > 0 or (y is not None and self.alpha < 1)
        if needs_logits:
            s_logits = tf.cast(self._pick(student_outputs, self.logits_key, "logit"), tf.float32)
        if self.alpha > 0:
            t_logits = tf.cast(self._pick(teacher_outputs, self.logits_key, "logit"), tf.float32)
            terms["kd_loss"] = soft_target_kl(t_logits, s_logits, self.temperature)
        if y is not None and self.alpha < 1:
            loss_fn = self.task_loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            terms["task_loss"] = tf.cast(loss_fn(y, s_logits), tf.float32)
        if self.hidden_weight > 0:
            s_states = self._pick(student_outputs, self.hidden_key, "hidden-state")
            t_states = self._pick(teacher_outputs, self.hidden_key, "hidden-state")
            terms["hidden_loss"] = tf.add_n([
                masked_mse(s_states[s], t_states[t], mask) for s, t in sorted(self.layer_map.items())
            ]) / len(self.layer_map)
        if self.attention_weight > 0:
            pairs = _attention_map(self.layer_map)
            s_probs = self._pick(student_outputs, self.attention_key, "attention")
            t_probs = self._pick(teacher_outputs, self.attention_key, "attention")
            terms["attention_loss"] = tf.add_n([
                attention_mse(s_probs[s], t_probs[t], mask) for s, t in sorted(pairs.items())
            ]) / len(pairs)
        if self.embedding_weight > 0:
            s_seq = self._pick(student_outputs, self.embedding_key, "embedding")
            t_seq = self._pick(teacher_outputs, self.embedding_key, "embedding")
            terms["embedding_loss"] = pooled_cosine_distance(s_seq, t_seq, mask)
        total = ((1.0 - self.alpha) * terms["task_loss"] if y is not None else zero)
        total += self.alpha * terms["kd_loss"] + self.hidden_weight * terms["hidden_loss"]
        total += self.attention_weight * terms["attention_loss"] + self.embedding_weight * terms["embedding_loss"]
        terms["loss"] = total
        return terms

    def _unpack(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        return x, y

    def train_step(self, data):
        x, y = self._unpack(data)
        teacher_outputs = self.teacher(x, training=False)
        with tf.GradientTape() as tape:
            student_outputs = self.student(x, training=True)
            terms = self.compute_losses(x, y, student_outputs, teacher_outputs)
            loss = terms["loss"] + tf.add_n([tf.cast(l, tf.float32) for l in self.student.losses] or [0.0])
            # Gradients are summed over replicas: scale like Keras' compiled losses.
            scaled = loss / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, tf.float32)
        grads_and_vars = self.optimizer.compute_gradients(scaled, self.student.trainable_variables, tape=tape)
        # Parts of the student no loss term reads (e.g. the pooler) get no gradient: skip them quietly.
        self.optimizer.apply_gradients([(g, v) for g, v in grads_and_vars if g is not None])
        terms["loss"] = loss
        return self._update(terms)

    def test_step(self, data):
        x, y = self._unpack(data)
        terms = self.compute_losses(x, y, self.student(x, training=False), self.teacher(x, training=False))
        return self._update(terms)

    def _update(self, terms):
        for name, tracker in self._trackers.items():
            tracker.update_state(terms[name])
        return {name: tracker.result() for name, tracker in self._trackers.items()}


# -- the loss terms, as plain functions (also used by tests and recipes) ------------


def soft_target_kl(teacher_logits, student_logits, temperature: float):
    """T² · mean over examples of KL(softmax(t/T) ‖ softmax(s/T)) (Hinton et al.)."""
    t = tf.nn.log_softmax(teacher_logits / temperature, axis=-1)
    s = tf.nn.log_softmax(student_logits / temperature, axis=-1)
    kl = tf.reduce_sum(tf.exp(t) * (t - s), axis=-1)
    return temperature**2 * tf.reduce_mean(kl)


def soft_and_hard_loss(student_logits, teacher_logits, labels=None, temperature: float = 1.0,
                       alpha: float = 0.5) -> dict:
    """Hinton et al.'s mix for a student trained on stored (cached) teacher logits.

    loss = (1 − alpha) · CE(labels, student) + alpha · T² · KL(softmax(teacher / T) ‖ softmax(student / T)),
    CE being sparse categorical cross-entropy from logits, averaged over the
    batch (without labels the CE term is dropped). Returns float32 scalars
    {"loss", "task_loss", "kd_loss"}: the same terms `Distiller` computes with
    a live teacher, for training loops where the teacher ran once beforehand.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (the weight of the soft-target KL), got {alpha!r}.")
    student_logits = tf.cast(student_logits, tf.float32)
    kd = soft_target_kl(tf.cast(teacher_logits, tf.float32), student_logits, temperature)
    task = tf.constant(0.0)
    if labels is not None:
        task = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, student_logits, from_logits=True))
    loss = alpha * kd + ((1.0 - alpha) * task if labels is not None else 0.0)
    return {"loss": loss, "task_loss": task, "kd_loss": kd}


def masked_mse(student, teacher, mask=None):
    """Mean squared difference over real tokens (mask (batch, seq) of 0/1) and features."""
    diff = tf.square(tf.cast(student, tf.float32) - tf.cast(teacher, tf.float32))
    if mask is None or diff.shape.rank != 3:
        return tf.reduce_mean(diff)
    per_token = tf.reduce_mean(diff, axis=-1)
    return tf.reduce_sum(per_token * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def attention_mse(student, teacher, mask=None):
    """MSE of attention probabilities (batch, heads, q, k), over real query rows and all keys."""
    diff = tf.square(tf.cast(student, tf.float32) - tf.cast(teacher, tf.float32))
    per_row = tf.reduce_mean(diff, axis=-1)  # (batch, heads, q)
    if mask is None:
        return tf.reduce_mean(per_row)
    rows = tf.broadcast_to(mask[:, None, :], tf.shape(per_row))
    return tf.reduce_sum(per_row * rows) / tf.maximum(tf.reduce_sum(rows), 1.0)


def mean_pool(sequence, mask=None):
    """Mean over real tokens of (batch, seq, features) -> (batch, features)."""
    sequence = tf.cast(sequence, tf.float32)
    if mask is None:
        return tf.reduce_mean(sequence, axis=1)
    weights = mask[..., None]
    return tf.reduce_sum(sequence * weights, axis=1) / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)


def pooled_cosine_distance(student_sequence, teacher_sequence, mask=None):
    """Mean over examples of 1 − cos(mean-pooled student, mean-pooled teacher)."""
    s = tf.math.l2_normalize(mean_pool(student_sequence, mask), axis=-1)
    t = tf.math.l2_normalize(mean_pool(teacher_sequence, mask), axis=-1)
    return tf.reduce_mean(1.0 - tf.reduce_sum(s * t, axis=-1))
