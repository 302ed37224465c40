"""`tfreparam.distill.Distiller`: every loss term against numpy, the frozen teacher, strategies, precision."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import bert
from tfreparam import distill

TINY = dict(vocab_size=64, hidden_size=16, num_heads=2, intermediate_size=32, max_position_embeddings=16,
            hidden_dropout=0.0, attention_dropout=0.0)


def _encoder(layers, seed):
    keras.utils.set_random_seed(seed)
    config = bert.BertConfig(num_layers=layers, **TINY)
    return bert.build_encoder(config, output_hidden_states=True, output_attentions=True)


def _inputs(batch=3, seq=7, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, seq + 1, size=batch)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype("int32")
    return {"input_word_ids": (rng.integers(1, TINY["vocab_size"], (batch, seq)) * mask).astype("int32"),
            "input_mask": mask, "input_type_ids": np.zeros((batch, seq), "int32")}


def _numpy_outputs(model, x):
    out = model(x, training=False)
    return {k: ([np.asarray(t, np.float64) for t in v] if isinstance(v, list) else np.asarray(v, np.float64))
            for k, v in out.items()}


def _np_masked_mse(a, b, mask):
    per_token = ((a - b) ** 2).mean(-1)
    return (per_token * mask).sum() / mask.sum()


def _np_attention_mse(a, b, mask):
    per_row = ((a - b) ** 2).mean(-1)  # (batch, heads, q)
    rows = np.broadcast_to(mask[:, None, :], per_row.shape)
    return (per_row * rows).sum() / rows.sum()


def _np_pooled_cosine_distance(a, b, mask):
    m = mask[..., None]
    pa, pb = (a * m).sum(1) / m.sum(1), (b * m).sum(1) / m.sum(1)
    cos = (pa * pb).sum(-1) / np.linalg.norm(pa, axis=-1) / np.linalg.norm(pb, axis=-1)
    return (1 - cos).mean()


@pytest.fixture(scope="module")
def pair():
    return _encoder(2, seed=1), _encoder(4, seed=2)


def test_hidden_attention_and_embedding_terms_match_numpy_with_a_layer_map(pair):
    student, teacher = pair
    d = distill.Distiller(student, teacher, hidden_weight=2.0, attention_weight=3.0, embedding_weight=5.0)
    assert d.layer_map == {0: 0, 1: 2, 2: 4}  # TinyBERT's uniform map, 2 -> 4 blocks
    x = _inputs()
    s, t = _numpy_outputs(student, x), _numpy_outputs(teacher, x)
    mask = x["input_mask"].astype(np.float64)
    hidden = np.mean([_np_masked_mse(s["hidden_states"][i], t["hidden_states"][j], mask)
                      for i, j in {0: 0, 1: 2, 2: 4}.items()])
    # Student block 0 (hidden state 1) <-> teacher block 1 (hidden state 2); block 1 <-> block 3.
    attention = np.mean([_np_attention_mse(s["attention_probs"][i], t["attention_probs"][j], mask)
                         for i, j in {0: 1, 1: 3}.items()])
    embedding = _np_pooled_cosine_distance(s["sequence_output"], t["sequence_output"], mask)
    terms = {k: float(v) for k, v in d.compute_losses(x, None, student(x), teacher(x)).items()}
    assert terms["hidden_loss"] == pytest.approx(hidden, rel=1e-4)
    assert terms["attention_loss"] == pytest.approx(attention, rel=1e-4)
    assert terms["embedding_loss"] == pytest.approx(embedding, rel=1e-3, abs=1e-6)
    assert terms["loss"] == pytest.approx(2 * hidden + 3 * attention + 5 * embedding, rel=1e-4)
    assert terms["kd_loss"] == terms["task_loss"] == 0.0


def test_padding_does_not_enter_the_hidden_loss(pair):
    student, teacher = pair
    d = distill.Distiller(student, teacher, hidden_weight=1.0)
    x = _inputs()
    y = dict(x, input_word_ids=np.where(x["input_mask"] == 1, x["input_word_ids"], 5).astype("int32"))
    first = float(d.compute_losses(x, None, student(x), teacher(x))["hidden_loss"])
    second = float(d.compute_losses(y, None, student(y), teacher(y))["hidden_loss"])
    assert first == pytest.approx(second, rel=1e-5)


def _logit_models(seed=0, dtype=None):
    keras.utils.set_random_seed(seed)
    def make(name):
        inputs = keras.Input((6,))
        return keras.Model(inputs, keras.layers.Dense(4, name="logits", dtype=dtype)(
            keras.layers.Dense(8, activation="tanh", dtype=dtype)(inputs)), name=name)
    return make("student"), make("teacher")


def test_soft_target_kl_and_task_loss_match_numpy():
    student, teacher = _logit_models()
    d = distill.Distiller(student, teacher, temperature=3.0, alpha=0.7)
    x = np.random.default_rng(1).normal(size=(5, 6)).astype("float32")
    y = np.array([0, 1, 2, 3, 1])
    s, t = student(x).numpy().astype(np.float64), teacher(x).numpy().astype(np.float64)

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    lt, ls = log_softmax(t / 3.0), log_softmax(s / 3.0)
    kl = 9.0 * np.mean(np.sum(np.exp(lt) * (lt - ls), -1))
    ce = -np.mean(log_softmax(s)[np.arange(5), y])
    terms = d.compute_losses(x, y, student(x), teacher(x))
    assert float(terms["kd_loss"]) == pytest.approx(kl, rel=1e-4)
    assert float(terms["task_loss"]) == pytest.approx(ce, rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(0.7 * kl + 0.3 * ce, rel=1e-4)


def test_fit_trains_the_student_and_never_the_teacher(pair):
    student, teacher = _encoder(2, seed=3), _encoder(2, seed=4)
    before_teacher = [w.copy() for w in teacher.get_weights()]
    before_student = [w.copy() for w in student.get_weights()]
    d = distill.Distiller(student, teacher, hidden_weight=1.0, attention_weight=1.0, embedding_weight=1.0)
    d.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = _inputs(batch=8, seed=3)
    history = d.fit(tf.data.Dataset.from_tensor_slices(x).batch(8).repeat(15), epochs=1, verbose=0)
    # Dropout is 0, so the one-step history of a fresh distiller is the loss before any update.
    first = distill.Distiller(_encoder(2, seed=3), teacher, hidden_weight=1.0, attention_weight=1.0,
                              embedding_weight=1.0)
    initial = float(first.test_step((x,))["loss"])
    final = float(d.test_step((x,))["loss"])
    assert final < 0.5 * initial
    assert all(np.array_equal(a, b) for a, b in zip(before_teacher, teacher.get_weights()))
    assert not all(np.array_equal(a, b) for a, b in zip(before_student, student.get_weights()))
    assert not teacher.trainable and len(d.trainable_variables) == len(student.trainable_variables)
    assert set(history.history) >= {"loss", "hidden_loss", "attention_loss", "embedding_loss"}


def test_one_device_strategy_fit_matches_plain_fit():
    x = np.random.default_rng(2).normal(size=(8, 6)).astype("float32")

    def one_step(strategy):
        with strategy.scope():
            student, teacher = _logit_models(seed=5)
            d = distill.Distiller(student, teacher, temperature=2.0, alpha=1.0)
            d.compile(optimizer=keras.optimizers.SGD(0.5))
        d.fit(x, epochs=1, batch_size=8, verbose=0, shuffle=False)
        return student.get_weights()

    plain = one_step(tf.distribute.get_strategy())
    one_device = one_step(tf.distribute.OneDeviceStrategy("/cpu:0"))
    for a, b in zip(plain, one_device):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


_MIRRORED = textwrap.dedent("""
    import numpy as np, tensorflow as tf, tf_keras as keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfreparam import distill

    def models():
        keras.utils.set_random_seed(5)
        def make(name):
            inputs = keras.Input((6,))
            return keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Dense(8, activation="tanh")(inputs)), name=name)
        return make("student"), make("teacher")

    x = np.random.default_rng(2).normal(size=(8, 6)).astype("float32")
    results = []
    for strategy in (tf.distribute.get_strategy(), tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])):
        with strategy.scope():
            student, teacher = models()
            d = distill.Distiller(student, teacher, temperature=2.0, alpha=1.0)
            d.compile(optimizer=keras.optimizers.SGD(0.5))
        d.fit(x, epochs=1, batch_size=8, verbose=0, shuffle=False)
        results.append((strategy.num_replicas_in_sync, student.get_weights()))
    assert results[1][0] == 2, results[1][0]
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    print("MIRRORED_OK")
""")


def test_mirrored_strategy_over_two_cpu_replicas_matches_one_device():
    # Logical devices must be configured before TensorFlow starts: a fresh process.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True, text=True, timeout=300,
                            env=env, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert "MIRRORED_OK" in result.stdout, result.stderr[-3000:]


def test_mixed_bfloat16_student_trains_with_float32_losses():
    x = _inputs(batch=4, seed=5)
    teacher = _encoder(2, seed=6)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        student = _encoder(2, seed=6)  # same weights as the teacher, bf16 compute
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert student.get_layer("layer_0/attention/query").compute_dtype == "bfloat16"
    d = distill.Distiller(student, teacher, hidden_weight=1.0, embedding_weight=1.0)
    d.compile(optimizer=keras.optimizers.Adam(1e-3))
    terms = d.compute_losses(x, None, student(x), teacher(x))
    assert terms["loss"].dtype == tf.float32
    # Same weights: the only difference is bfloat16 rounding (8 mantissa bits).
    assert 0 < float(terms["hidden_loss"]) < 1e-2
    history = d.fit(tf.data.Dataset.from_tensor_slices(x).batch(4).repeat(2), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(alpha=1.5), "alpha must be in [0, 1]"),
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(hidden_weight=-1.0), "hidden_weight must be >= 0"),
    (dict(layer_map={5: 0}, hidden_weight=1.0), "layer_map entry 5: 0 is out of range"),
])
def test_bad_arguments_fail_clearly(pair, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        distill.Distiller(*pair, **kwargs)


def test_missing_outputs_and_width_mismatch_fail_clearly():
    plain = bert.build_encoder(bert.BertConfig(num_layers=2, **TINY))
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        distill.Distiller(plain, _encoder(2, seed=0), hidden_weight=1.0)
    wide = bert.build_encoder(bert.BertConfig(num_layers=2, **dict(TINY, hidden_size=32)), output_hidden_states=True)
    with pytest.raises(ValueError, match="student's width is 32 and the teacher's 16"):
        distill.Distiller(wide, _encoder(2, seed=0), hidden_weight=1.0)
    with pytest.raises(ValueError, match="do not divide evenly"):
        distill.default_layer_map(3, 4)
    with pytest.raises(TypeError, match="tf_keras models"):
        distill.Distiller(object(), _encoder(2, seed=0))
