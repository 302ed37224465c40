"""`bert.drop_blocks`: the kept blocks, run by hand on the embeddings' output, give the same outputs."""

import dataclasses

import numpy as np
import pytest
import tf_keras as keras

import bert
from tfreparam.sparsity import structured

CONFIG = dataclasses.replace(
    bert.BertConfig.named("tiny"), vocab_size=50, hidden_size=16, num_layers=4, num_heads=2,
    intermediate_size=24, max_position_embeddings=12, hidden_dropout=0.0, attention_dropout=0.0)
SEQ = 7
RNG = np.random.default_rng(3)
MASK = np.ones((3, SEQ), "int32")
MASK[0, 4:] = 0
INPUTS = {"input_word_ids": RNG.integers(0, 50, (3, SEQ)).astype("int32"), "input_mask": MASK,
          "input_type_ids": np.zeros((3, SEQ), "int32")}


@pytest.fixture(scope="module")
def encoder():
    keras.utils.set_random_seed(5)
    return bert.build_encoder(CONFIG, output_hidden_states=True, output_attentions=True)


def _by_hand(encoder, keep):
    """Embeddings, then each kept block as its own sub-model of the original graph, then the pooler."""
    out = encoder(INPUTS, training=False)
    x = out["hidden_states"][0].numpy()
    mask_input = encoder.get_layer("layer_0/attention/math").input[3]
    states, probs = [x], []
    for k in keep:
        block_in = encoder.get_layer(f"layer_{k}/attention/query").input
        block = keras.Model([block_in, mask_input], [encoder.get_layer(f"layer_{k}/ffn/layer_norm").output,
                                                      encoder.get_layer(f"layer_{k}/attention/math").output[1]])
        x, p = (t.numpy() for t in block([x, INPUTS["input_mask"]], training=False))
        states.append(x)
        probs.append(p)
    pooler = encoder.get_layer("pooler/dense")
    pooled = pooler(x[:, 0]).numpy()
    return states, probs, pooled


@pytest.mark.parametrize("keep", [[0, 1], [1, 3], [2], [0, 1, 2, 3]])
def test_dropped_encoder_equals_kept_blocks_run_by_hand(encoder, keep):
    dropped = bert.drop_blocks(encoder, keep)
    states, probs, pooled = _by_hand(encoder, keep)
    out = dropped(INPUTS, training=False)
    assert len(out["hidden_states"]) == len(keep) + 1 and len(out["attention_probs"]) == len(keep)
    for got, want in zip(out["hidden_states"], states):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    for got, want in zip(out["attention_probs"], probs):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    np.testing.assert_allclose(out["sequence_output"].numpy(), states[-1], atol=1e-5)
    np.testing.assert_allclose(out["pooled_output"].numpy(), pooled, atol=1e-5)
    assert sorted({l.name.split("/")[0] for l in dropped.layers if l.name.startswith("layer_")}) == [
        f"layer_{i}" for i in range(len(keep))]


def test_weights_are_copied_not_shared(encoder):
    dropped = bert.drop_blocks(encoder, [1])
    before = encoder.get_layer("layer_1/attention/query").kernel.numpy().copy()
    dropped.get_layer("layer_0/attention/query").kernel.assign(np.zeros_like(before))
    np.testing.assert_array_equal(encoder.get_layer("layer_1/attention/query").kernel.numpy(), before)


def test_pruned_blocks_keep_their_widths():
    keras.utils.set_random_seed(2)
    plain = bert.build_encoder(CONFIG)
    pruned = structured.remove_heads_and_neurons(plain, {1: [0]}, {2: list(range(10))}, seq_length=SEQ).model
    dropped = bert.drop_blocks(pruned, [1, 2])
    assert dropped.get_layer("layer_0/attention/math").num_heads == 1
    assert dropped.get_layer("layer_1/ffn/intermediate").units == 14
    reference = _by_hand_plain(pruned, [1, 2])
    np.testing.assert_allclose(dropped(INPUTS)["sequence_output"].numpy(), reference, atol=1e-5)


def _by_hand_plain(model, keep):
    x = model.get_layer("embeddings/dropout").output
    sub = keras.Model(model.inputs, x)(INPUTS).numpy()
    mask_input = model.get_layer("layer_0/attention/math").input[3]
    for k in keep:
        block = keras.Model([model.get_layer(f"layer_{k}/attention/query").input, mask_input],
                            model.get_layer(f"layer_{k}/ffn/layer_norm").output)
        sub = block([sub, INPUTS["input_mask"]]).numpy()
    return sub


@pytest.mark.parametrize("keep, message", [([], "increasing block indices"), ([2, 1], "increasing"),
                                           ([0, 4], "in 0..3"), ([1, 1], "increasing")])
def test_bad_keep_is_refused(encoder, keep, message):
    with pytest.raises(ValueError, match=message):
        bert.drop_blocks(encoder, keep)


def test_a_model_without_blocks_is_refused():
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match="no chain of blocks"):
        bert.drop_blocks(keras.Model(inputs, keras.layers.Dense(2)(inputs)), [0])
