"""`recipes.embedding_eval`'s depth embedder against independent per-sentence forwards and a truncated encoder."""

import numpy as np
import pytest

import bert
from recipes import embedding_eval

SENTENCES = ["A dog barked.", "The committee adjourned after a long debate about the budget.",
             "Rain.", "Install the package with apt and restart the service afterwards.", "Light travels fast."]


@pytest.fixture(scope="module")
def tiny(tiny_bert):
    encoder = bert.load_hf(tiny_bert, output_hidden_states=True).model
    preprocessor = bert.Preprocessor.from_pretrained(tiny_bert, seq_length=16)
    # Batches of two over length-sorted text: the padding differs between batches and the order must be undone.
    return encoder, preprocessor, embedding_eval.TextSet(preprocessor, SENTENCES, batch_size=2)


def test_each_depth_is_the_mean_of_that_blocks_tokens_per_sentence(tiny):
    encoder, preprocessor, text_set = tiny
    by_depth = embedding_eval.keras_depth_embedder(encoder)(text_set)
    depths = len(encoder.output["hidden_states"])
    assert by_depth.shape == (depths, len(SENTENCES), 32)
    for i, sentence in enumerate(SENTENCES):
        # One sentence alone, padded to 16: the pooled tokens are those of its mask (numpy mean, not our pooling).
        x = preprocessor([sentence])
        states = encoder(x, training=False)["hidden_states"]
        length = int(np.asarray(x["input_mask"]).sum())
        for depth in range(depths):
            expected = np.asarray(states[depth])[0, :length].mean(axis=0)
            np.testing.assert_allclose(by_depth[depth, i], expected, rtol=1e-4, atol=1e-5)


def test_the_last_depth_is_the_embedding_and_an_earlier_one_is_a_truncated_encoder(tiny):
    encoder, _, text_set = tiny
    by_depth = embedding_eval.keras_depth_embedder(encoder)(text_set)
    np.testing.assert_allclose(by_depth[-1], embedding_eval.keras_embedder(encoder)(text_set), rtol=1e-5, atol=1e-6)
    first_block = bert.drop_blocks(encoder, [0])
    np.testing.assert_allclose(by_depth[1], embedding_eval.keras_embedder(first_block)(text_set), rtol=1e-4,
                               atol=1e-5)


def test_a_model_without_hidden_states_is_refused(tiny_bert):
    plain = bert.load_hf(tiny_bert).model
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        embedding_eval.keras_depth_embedder(plain)


def test_probe_by_depth_probes_each_depth_with_the_same_folds():
    from tfreparam import fidelity

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 40)
    informative = rng.standard_normal((120, 8)) + 3.0 * np.eye(3, 8)[labels]  # separable by label
    noise = rng.standard_normal((120, 8))
    by_depth = {"probes": {"toy": np.stack([noise, informative])}}
    accuracies = embedding_eval.probe_by_depth(by_depth, {"toy": labels}, folds=3, l2=1e-2)["toy"]
    assert accuracies == [fidelity.linear_probe(noise, labels, folds=3, l2=1e-2),
                          fidelity.linear_probe(informative, labels, folds=3, l2=1e-2)]
    assert accuracies[1] > 0.9 and accuracies[0] < 0.6


def test_exported_files_embed_as_the_keras_encoder_at_the_length_each_file_takes(tiny, tmp_path):
    from recipes import exports
    from tfreparam import export as export_lib
    from tfreparam.export import runners

    encoder, _, text_set = tiny
    expected = embedding_eval.keras_embedder(encoder)(text_set)
    fixed_path = exports.write(str(tmp_path / "fixed.tflite"), exports.tflite_bytes(encoder, None, seq_length=16))
    any_path = exports.write(str(tmp_path / "any.tflite"), exports.tflite_bytes(encoder, None))
    onnx_path = str(tmp_path / "tiny.onnx")
    export_lib.onnx(exports.encoder_view(encoder), onnx_path)
    # One TFLite file fixes the length (its batches are padded back to 16); the compress job's default TFLite
    # file and the ONNX graph take any length (each batch runs at its own).
    assert [runners.runner_for(p).sequence_length for p in (fixed_path, any_path, onnx_path)] == [16, None, None]
    for path in (fixed_path, any_path, onnx_path):
        np.testing.assert_allclose(embedding_eval.artifact_embedder(path)(text_set), expected, rtol=1e-4, atol=1e-5)


def _token_graph(path, lengths):
    """An ONNX graph with one int32 (batch, length) input per entry of `lengths` (a size, or a name: dynamic)."""
    import onnx
    from onnx import TensorProto, helper

    names = [f"input_{i}" for i in range(len(lengths))]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", n_len]) for n, n_len in zip(names, lengths)]
    output = helper.make_tensor_value_info("out", TensorProto.INT32, None)
    graph = helper.make_graph([helper.make_node("Identity", [names[0]], ["out"])], "tokens", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return str(path)


def test_a_file_fixes_the_length_any_of_its_token_inputs_fixes_and_conflicting_lengths_are_refused(tmp_path):
    from tfreparam.export import runners

    assert runners.runner_for(_token_graph(tmp_path / "a.onnx", ["seq", "seq"])).sequence_length is None
    assert runners.runner_for(_token_graph(tmp_path / "b.onnx", ["seq", 16])).sequence_length == 16
    with pytest.raises(ValueError, match=r"fix different sequence lengths \[8, 16\]"):
        runners.runner_for(_token_graph(tmp_path / "c.onnx", [16, 8])).sequence_length


def test_eval_sets_embed_only_the_groups_asked_and_count_them(tiny):
    import types

    _, preprocessor, _ = tiny
    evaluation = types.SimpleNamespace(
        in_domain={"debian": SENTENCES[:2]}, heldout={"wordnet": SENTENCES[2:], "manual": SENTENCES[:1]},
        probes={"wordnet_lexname": (SENTENCES, list("aabba"))}, in_domain_probes={},
        retrieval={"wordnet_gloss": (SENTENCES[:2], SENTENCES[2:4])})
    sets = embedding_eval.EvalSets(evaluation, preprocessor)
    sizes = lambda text_set: np.full((len(text_set), 1), len(text_set))  # noqa: E731
    fidelity = sets.embed(sizes, embedding_eval.FIDELITY_GROUPS)
    assert {g: {n: a.shape[0] for n, a in d.items()} for g, d in fidelity.items()} == {
        "in_domain": {"debian": 2}, "heldout": {"wordnet": 3, "manual": 1}}
    assert set(sets.embed(sizes, embedding_eval.PROBE_GROUPS)) == {"probes", "in_domain_probes"}
    tasks = sets.embed(sizes, embedding_eval.TASK_GROUPS)
    assert {n: a.shape[0] for n, a in tasks["retrieval"].items()} == {"wordnet_gloss.query": 2,
                                                                      "wordnet_gloss.target": 2}
    assert (sets.count(), sets.count(embedding_eval.FIDELITY_GROUPS), sets.count(embedding_eval.PROBE_GROUPS)) == (
        6, 3, 1)
    with pytest.raises(ValueError, match="Unknown evaluation groups"):
        sets.count(("heldout", "test"))


def _brute_force_rank(queries, targets, i):
    """1 + how many targets are strictly more cosine-similar to query i than its own target (loops, no matrices)."""
    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)

    own = cos(queries[i], targets[i])
    return 1 + sum(cos(queries[i], t) > own for j, t in enumerate(targets) if j != i)


def test_retrieval_finds_each_querys_own_target_by_cosine_as_a_loop_does():
    rng = np.random.default_rng(0)
    targets = rng.normal(size=(40, 6))
    # Queries near their targets, at noise levels from easy to hopeless; scaled, since cosine ignores length.
    queries = (targets + rng.normal(size=targets.shape) * np.linspace(0.1, 3.0, 40)[:, None]) * rng.uniform(
        0.5, 4.0, (40, 1))
    ranks = np.array([_brute_force_rank(queries.tolist(), targets.tolist(), i) for i in range(40)])
    assert 0 < np.sum(ranks == 1) < 40  # some found first, some not: the test can tell
    for top in (1, 5, 10):
        np.testing.assert_array_equal(embedding_eval.retrieval_correct(queries, targets, top), ranks <= top)
    figures = embedding_eval.retrieval_figures({"retrieval": {"s.query": queries, "s.target": targets}})
    assert figures == {"retrieval": {"s": {"top1": np.mean(ranks <= 1), "top10": np.mean(ranks <= 10)}},
                       "retrieval_mean": np.mean(ranks <= 1)}
    assert embedding_eval.retrieval_figures({"heldout": {}}) == {}
    with pytest.raises(ValueError, match="as many target as query embeddings"):
        embedding_eval.retrieval_correct(queries, targets[:-1])
