"""The built-in stdlib-docstring corpus: enough prose, deterministic, disjoint splits."""

from recipes import corpus


def test_corpus_is_prose_and_deterministic():
    sentences = corpus.stdlib_sentences()
    assert len(sentences) > 1000
    assert sentences == corpus.stdlib_sentences()
    assert len(set(sentences)) == len(sentences)
    for sentence in sentences[:200]:
        assert sentence[0].isupper() and sentence[-1] in ".!?"
        assert 6 <= len(sentence.split()) <= 60


def test_split_is_disjoint_stable_and_proportional():
    sentences = corpus.stdlib_sentences()
    parts = corpus.split(sentences, {"calibration": 0.1, "train": 0.8, "heldout": 0.1})
    sets = {name: set(part) for name, part in parts.items()}
    assert not sets["calibration"] & sets["train"] and not sets["train"] & sets["heldout"]
    assert not sets["calibration"] & sets["heldout"]
    assert sum(map(len, parts.values())) == len(sentences)
    assert abs(len(parts["heldout"]) / len(sentences) - 0.1) < 0.03
    # Adding sentences never moves an existing one to another part.
    more = corpus.split(sentences + ["A brand new sentence that was not there before."], {"calibration": 0.1, "train": 0.8, "heldout": 0.1})
    assert set(parts["heldout"]) <= set(more["heldout"])
