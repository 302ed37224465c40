"""Least-squares refit of the output projections: each equals numpy's lstsq on the activations it was fitted on."""

import dataclasses

import numpy as np
import pytest
import tf_keras as keras

import bert
from tfreparam.sparsity import reconstruct, structured

CONFIG = dataclasses.replace(
    bert.BertConfig.named("tiny"), vocab_size=40, hidden_size=8, num_layers=2, num_heads=2,
    intermediate_size=10, max_position_embeddings=12, hidden_dropout=0.0, attention_dropout=0.0)
SEQ = 10
RNG = np.random.default_rng(2)


def _batch(n, seed):
    rng = np.random.default_rng(seed)
    mask = np.ones((n, SEQ), "int32")
    for row, length in enumerate(rng.integers(4, SEQ + 1, n)):
        mask[row, length:] = 0
    return {"input_word_ids": rng.integers(0, 40, (n, SEQ)).astype("int32"), "input_mask": mask,
            "input_type_ids": np.zeros((n, SEQ), "int32")}


DATA = [_batch(16, 0), _batch(12, 1)]


@pytest.fixture(scope="module")
def teacher():
    keras.utils.set_random_seed(4)
    return bert.build_encoder(CONFIG)


def _student(teacher):
    return structured.remove_heads_and_neurons(teacher, {0: [1]}, {0: [0, 3, 4], 1: [1, 2, 5, 6]},
                                               seq_length=SEQ).model


def _tokens(model, tensor_of, batches):
    probe = keras.Model(model.inputs, tensor_of(model))
    rows = []
    for x in batches:
        value = probe(x).numpy().astype(np.float64)
        rows.append(value[x["input_mask"].astype(bool)])
    return np.concatenate(rows)


def test_each_refit_projection_is_the_lstsq_solution_on_its_inputs(teacher):
    student = _student(teacher)
    result = reconstruct.refit_output_projections(student, teacher, DATA, ridge=0.0)
    for block in range(2):
        for part in ("attention", "ffn"):
            residual = f"layer_{block}/{part}/residual"
            # Upstream layers were final before this one was fitted, so the final student gives its inputs.
            x = _tokens(student, lambda m: m.get_layer(residual).input[0], DATA)
            h = _tokens(student, lambda m: m.get_layer(f"layer_{block}/{part}/output").input, DATA)
            t = _tokens(teacher, lambda m: m.get_layer(residual).output, DATA)
            design = np.concatenate([h, np.ones((len(h), 1))], axis=1)
            solution = np.linalg.lstsq(design, t - x, rcond=None)[0]
            layer = student.get_layer(f"layer_{block}/{part}/output")
            np.testing.assert_allclose(layer.kernel.numpy(), solution[:-1], atol=2e-3, rtol=2e-3)
            np.testing.assert_allclose(layer.bias.numpy(), solution[-1], atol=2e-3, rtol=2e-3)
            name = layer.name
            assert result.errors_after[name] <= result.errors_before[name] + 1e-9
    assert result.tokens == sum(int(b["input_mask"].sum()) for b in DATA)


def test_an_unpruned_student_is_a_fixed_point(teacher):
    student = keras.models.clone_model(teacher)
    student.set_weights(teacher.get_weights())
    result = reconstruct.refit_output_projections(student, teacher, DATA, ridge=0.0, parts=("ffn",))
    for a, b in zip(student.get_weights(), teacher.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert set(result.errors_after) == {"layer_0/ffn/output", "layer_1/ffn/output"}
    assert max(result.errors_before.values()) < 1e-9


def test_ridge_shrinks_the_kernel(teacher):
    plain, ridged = _student(teacher), _student(teacher)
    reconstruct.refit_output_projections(plain, teacher, DATA, ridge=0.0, parts=("attention",))
    reconstruct.refit_output_projections(ridged, teacher, DATA, ridge=10.0, parts=("attention",))
    name = "layer_0/attention/output"
    assert np.linalg.norm(ridged.get_layer(name).kernel.numpy()) < np.linalg.norm(plain.get_layer(name).kernel.numpy())


def test_refit_checks_its_inputs(teacher):
    student = _student(teacher)
    with pytest.raises(ValueError, match="parts must be a non-empty subset"):
        reconstruct.refit_output_projections(student, teacher, DATA, parts=("mlp",))
    with pytest.raises(ValueError, match="no batches"):
        reconstruct.refit_output_projections(student, teacher, [])
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match="flat BERT"):
        reconstruct.refit_output_projections(keras.Model(inputs, keras.layers.Dense(2)(inputs)), teacher, DATA)
