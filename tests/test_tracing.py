"""tfreparam.tracing: a train step traced once (its variables made beforehand), with the numbers unchanged."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import bert
from tfreparam import distill, tracing

CONFIG = bert.BertConfig(vocab_size=200, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                         max_position_embeddings=32, hidden_dropout=0.0, attention_dropout=0.0)
NAMES = ("input_word_ids", "input_mask", "input_type_ids")


def _inputs(step: int) -> dict:
    rng = np.random.default_rng(step)
    length = 6 + step % 3  # batches of different lengths, as the recipes' trimmed batches are
    return {"input_word_ids": rng.integers(0, 200, (4, length)).astype(np.int32),
            "input_mask": np.ones((4, length), np.int32), "input_type_ids": np.zeros((4, length), np.int32)}


def _dataset(with_targets: bool) -> tf.data.Dataset:
    def batches():
        for step in range(6):
            x = _inputs(step)
            if with_targets:
                target = np.random.default_rng(100 + step).normal(size=(4, x["input_mask"].shape[1], 16))
                yield x, {"sequence_output": target.astype(np.float32)}
            else:
                yield x

    spec = {name: tf.TensorSpec((None, None), tf.int32) for name in NAMES}
    if with_targets:
        spec = (spec, {"sequence_output": tf.TensorSpec((None, None, 16), tf.float32)})
    return tf.data.Dataset.from_generator(batches, output_signature=spec)


def _compiled_encoder(prebuild: bool):
    keras.utils.set_random_seed(0)
    model = bert.build_encoder(CONFIG)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss={"sequence_output": "mse"})
    if prebuild:
        tracing.build_for_fit(model)
    model.fit(_dataset(with_targets=True), epochs=1, steps_per_epoch=3, verbose=0)
    return model


def test_a_compiled_model_traces_its_step_once_and_trains_to_the_same_weights():
    plain, prebuilt = _compiled_encoder(False), _compiled_encoder(True)
    # Keras alone traces twice (once creating the optimizer's slots and the loss trackers, once without).
    assert plain.train_function.experimental_get_tracing_count() == 2
    assert prebuilt.train_function.experimental_get_tracing_count() == 1
    for a, b in zip(plain.weights, prebuilt.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    assert any(not np.array_equal(w.numpy(), v) for w, v in zip(prebuilt.weights, _initial_weights()))


def _initial_weights():
    keras.utils.set_random_seed(0)
    return [w.numpy() for w in bert.build_encoder(CONFIG).weights]


def test_the_distiller_traces_its_step_once():
    keras.utils.set_random_seed(0)
    teacher = bert.build_encoder(CONFIG, output_hidden_states=True)
    student = bert.build_encoder(CONFIG, output_hidden_states=True)
    distiller = distill.Distiller(student, teacher, hidden_weight=1.0, embedding_weight=1.0)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = distiller.fit(_dataset(with_targets=False), epochs=1, steps_per_epoch=3, verbose=0)
    assert distiller.train_function.experimental_get_tracing_count() == 1
    assert np.isfinite(history.history["loss"][-1])


def test_build_optimizer_makes_the_slots_a_custom_loop_would():
    layer = keras.layers.Dense(3)
    layer.build((None, 4))
    optimizer = keras.optimizers.Adam(1e-2)
    tracing.build_optimizer(optimizer, layer.trainable_variables)
    before = len(optimizer.variables)
    assert before == 1 + 2 * len(layer.trainable_variables)  # iterations, then m and v of each variable

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x) ** 2)
        optimizer.apply_gradients(zip(tape.gradient(loss, layer.trainable_variables), layer.trainable_variables))

    step(tf.ones((2, 4)))
    step(tf.ones((2, 4)))
    assert step.experimental_get_tracing_count() == 1 and len(optimizer.variables) == before


def test_an_uncompiled_model_is_refused_in_one_line():
    with pytest.raises(ValueError, match="not compiled: call compile"):
        tracing.build_for_fit(keras.Sequential([keras.layers.Dense(2)]))
