"""`recipes.distillation`: length batches, the teacher cache, and a student that gets closer to its teacher."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import bert
from recipes import distillation

CONFIG = dataclasses.replace(bert.BertConfig.named("tiny"), vocab_size=30522, hidden_size=16, num_layers=2,
                             num_heads=2, intermediate_size=32, max_position_embeddings=32, hidden_dropout=0.0,
                             attention_dropout=0.0)
TEXTS = [f"Sentence number {i} has {'many ' * (i % 7)}words in it." for i in range(40)]


@pytest.fixture(scope="module")
def preprocessor():
    return bert.Preprocessor.from_pretrained("minilm", seq_length=32)


def test_length_batches_cut_to_their_longest_and_use_each_sentence_once(preprocessor):
    batches = distillation.length_batches(preprocessor, TEXTS, batch_size=8, seed=3)
    assert len(batches) == 5 and all(b["input_mask"].shape[0] == 8 for b in batches)
    full = preprocessor(tf.constant(TEXTS))
    rows = {tuple(r[m.astype(bool)]) for r, m in zip(np.asarray(full["input_word_ids"]), np.asarray(full["input_mask"]))}
    seen = []
    for b in batches:
        assert b["input_mask"][:, -1].any()  # cut to its longest sentence
        seen += [tuple(r[m.astype(bool)]) for r, m in zip(b["input_word_ids"], b["input_mask"])]
    assert len(seen) == len(set(seen)) == 40 and set(seen) == rows
    again = distillation.length_batches(preprocessor, TEXTS, batch_size=8, seed=3)
    assert all(np.array_equal(a["input_word_ids"], b["input_word_ids"]) for a, b in zip(batches, again))
    with pytest.raises(ValueError, match="cannot fill one batch"):
        distillation.length_batches(preprocessor, TEXTS[:3], batch_size=8)


def test_uniform_layer_map():
    assert distillation.uniform_layer_map(3, 6) == {1: 2, 2: 4, 3: 6}
    assert distillation.uniform_layer_map(4, 6) == {1: 2, 2: 3, 3: 5, 4: 6}
    assert distillation.uniform_layer_map(6, 6) == {i: i for i in range(1, 7)}


def test_cache_holds_the_teacher_states_and_the_student_learns(preprocessor, tmp_path):
    keras.utils.set_random_seed(0)
    teacher = bert.build_encoder(CONFIG, output_hidden_states=True)
    cache = distillation.TeacherCache.build(teacher, preprocessor, TEXTS, batch_size=8, steps=4, seed=0)
    assert len(cache.batches) == 4 and cache.states == (1, 2) and cache.sentences == 32
    expected = teacher(cache.batches[1], training=False)["hidden_states"][2].numpy()
    np.testing.assert_allclose(cache.outputs[1][1].astype(np.float32), expected, atol=2e-2, rtol=2e-3)

    keras.utils.set_random_seed(1)
    student = bert.build_encoder(CONFIG, output_hidden_states=True)  # another random start
    # A random student needs its embeddings trained too (a pruned one starts from the teacher's and freezes them).
    result = distillation.distil(student, cache, {1: 1, 2: 2}, steps=40, learning_rate=3e-3, hidden_weight=1.0,
                                 embedding_weight=1.0, log_dir=str(tmp_path / "tb"), log_every=4,
                                 train_embeddings=True)
    hidden = np.array([row[1] for row in result["history"]])
    embedding = np.array([row[2] for row in result["history"]])
    assert hidden[-1] < 0.5 * hidden[0] and embedding[-1] < embedding[0]
    assert result["layer_map"] == {"1": 1, "2": 2} and result["steps"] == 40
    assert os.listdir(tmp_path / "tb")
    with pytest.raises(ValueError, match="the layer map needs \\[3\\]"):
        distillation.distil(student, cache, {1: 3}, steps=1, learning_rate=1e-3, hidden_weight=1.0,
                            embedding_weight=0.0)


def test_by_default_the_embedding_layers_stay_the_teachers_and_dropout_is_off(preprocessor):
    keras.utils.set_random_seed(0)
    teacher = bert.build_encoder(CONFIG, output_hidden_states=True)
    cache = distillation.TeacherCache.build(teacher, preprocessor, TEXTS, batch_size=8, steps=2, seed=0)
    noisy = dataclasses.replace(CONFIG, hidden_dropout=0.5, attention_dropout=0.5)
    student = bert.build_encoder(noisy, output_hidden_states=True)
    student.set_weights(teacher.get_weights())
    embedding_names = {v.name for layer in student.layers if layer.name.startswith("embeddings/")
                       for v in layer.weights}
    assert embedding_names and not embedding_names & {v.name for v in distillation.distilled_variables(student)}
    before = {v.name: v.numpy().copy() for v in student.weights}
    # The student equals its teacher: without dropout the first step's losses are zero but for the cache's float16
    # rounding; with dropout (p = 0.5) its outputs differ. (Adam then moves every distilled weight either way.)
    result = distillation.distil(student, cache, {1: 1, 2: 2}, steps=2, learning_rate=1e-2, hidden_weight=1.0,
                                 embedding_weight=1.0, log_every=1)
    assert result["history"][0][1] < 1e-5 and result["history"][0][2] < 1e-5
    assert result["dropout"] is False and result["train_embeddings"] is False
    student.set_weights([before[v.name] for v in student.weights])
    moved = distillation.distil(student, cache, {1: 1, 2: 2}, steps=2, learning_rate=1e-2, hidden_weight=1.0,
                                embedding_weight=1.0, dropout=True, log_every=1)
    assert moved["history"][0][1] > 1e-3
    changed = {v.name for v in student.weights if not np.array_equal(v.numpy(), before[v.name])}
    assert changed and not changed & embedding_names
    assert result["trained_parameters"] == sum(int(np.prod(before[n].shape)) for n in before
                                               if n not in embedding_names)
