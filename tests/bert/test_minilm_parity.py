"""Our Keras BERT with the MiniLM weights vs Hugging Face transformers (PyTorch).

The reference outputs come from `tools/make_reference.py` (run in a
throwaway venv with torch 2.13.0 and transformers); see tests/fixtures/README.md.
"""

import pathlib

import numpy as np
import pytest


FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "minilm_reference.npz"


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURE)


@pytest.fixture(scope="module")
def encoder(minilm_encoder):
    return minilm_encoder  # `load_hf("minilm").model`, loaded once per worker (tests/conftest.py)


def _real_rows(sequence, mask):
    return np.concatenate([s[m.astype(bool)] for s, m in zip(sequence, mask)])


@pytest.mark.parametrize("prefix", ["", "pair_"])
def test_sequence_output_matches_transformers(encoder, reference, prefix):
    ids = reference[f"{prefix}input_ids"]
    mask = reference[f"{prefix}attention_mask"]
    types = reference[f"{prefix}token_type_ids"]
    out = encoder([ids, mask, types])
    ours = _real_rows(out["sequence_output"].numpy(), mask)
    expected = reference[f"{prefix}sequence_output_real"]
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= 1e-4
    key = "pooled_output" if not prefix else "pair_pooled_output"
    assert np.abs(out["pooled_output"].numpy() - reference[key]).max() <= 1e-4


def test_mean_pooled_embeddings_cosine(encoder, reference):
    mask = reference["attention_mask"]
    out = encoder([reference["input_ids"], mask, reference["token_type_ids"]])["sequence_output"].numpy()
    pooled = (out * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    expected = reference["mean_pooled"]
    cosine = (pooled * expected).sum(1) / np.linalg.norm(pooled, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.99999
    assert len(cosine) >= 32


def test_mean_pooled_embeddings_helper_matches_reference(encoder, reference):
    from bert.sentences import mean_pooled_embeddings

    batch = {"input_word_ids": reference["input_ids"], "input_mask": reference["attention_mask"],
             "input_type_ids": reference["token_type_ids"]}
    import tensorflow as tf

    pooled = mean_pooled_embeddings(encoder, [{k: tf.constant(v) for k, v in batch.items()}])
    np.testing.assert_allclose(pooled, reference["mean_pooled"], atol=2e-5)
