"""bert.data.pretraining_dataset: layout, masking statistics, NSP pairs, determinism, sharding, errors."""

import math
import pathlib
import string

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from bert.data import pretraining_dataset, split_sentences
from bert.preprocessing import Preprocessor

SAMPLE = str(pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "pretraining_sample.txt")
CLS, SEP, PAD, MASK = 101, 102, 0, 103


@pytest.fixture(scope="module")
def pre():
    return Preprocessor.from_pretrained("minilm")


def _collect(dataset):
    """All batches -> dict of concatenated numpy arrays (features and the label dict)."""
    parts = {}
    for features, labels in dataset:
        for key, value in features.items():
            parts.setdefault(key, []).append(value.numpy())
        for key, value in labels.items():
            parts.setdefault("label/" + key, []).append(value.numpy())
    return {key: np.concatenate(value) for key, value in parts.items()}


def _restore(data):
    """Input ids with the original ids written back at the masked positions."""
    ids = data["input_word_ids"].copy()
    for row in range(len(ids)):
        real = data["masked_lm_weights"][row] > 0
        ids[row, data["masked_lm_positions"][row][real]] = data["masked_lm_ids"][row][real]
    return ids


def _segments(ids):
    """Row of ids -> (A ids, B ids) between [CLS] / [SEP] / [SEP]."""
    seps = np.flatnonzero(ids == SEP)
    assert ids[0] == CLS and len(seps) == 2, ids
    return ids[1 : seps[0]].tolist(), ids[seps[0] + 1 : seps[1]].tolist()


# ----------------------------------------------------------------- corpora
def _index_corpus(path, num_docs=40, seed=0):
    """Documents of sentences "Sentence i of document d." wrapped over lines; returns sentences per doc."""
    rng = np.random.default_rng(seed)
    counts = []
    with open(path, "w") as f:
        for doc in range(num_docs):
            n = 1 if doc % 10 == 3 else int(rng.integers(2, 26))  # some single-sentence documents
            counts.append(n)
            text = " ".join(f"Sentence {i} of document {doc}." for i in range(n))
            words = text.split(" ")
            for start in range(0, len(words), 7):  # 7 words a line: sentences straddle lines
                f.write(" ".join(words[start : start + 7]) + "\n")
            f.write("\n" * int(rng.integers(1, 3)))
    return counts


def _parse(ids, pre):
    """Ids of one segment -> [(document, sentence)] of its complete sentences; a truncated tail is allowed."""
    words = " ".join(pre.vocab[i] for i in ids).replace(" ##", "").split()
    found = []
    for start in range(0, len(words), 6):
        group = words[start : start + 6]
        pattern = ["sentence", r"\d", "of", "document", r"\d", "."]
        ok = all((w.isdigit() if p == r"\d" else w == p) for w, p in zip(group, pattern))
        assert ok, f"not a sentence sequence: {words}"
        if len(group) == 6:
            found.append((int(group[4]), int(group[1])))
    return found


@pytest.fixture(scope="module")
def index_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("index") / "index.txt"
    return str(path), _index_corpus(path)


@pytest.fixture(scope="module")
def random_corpus(tmp_path_factory, pre):
    """~1600 documents of random vocabulary words (statistics need a few thousand sequences)."""
    rng = np.random.default_rng(1)
    words = np.array([w for w in pre.vocab[1996:12000] if w.isalpha()])
    path = tmp_path_factory.mktemp("random") / "random.txt"
    sentences_per_doc = rng.integers(2, 12, size=1600)
    words_per_sentence = rng.integers(3, 16, size=sentences_per_doc.sum())
    drawn = iter(words[rng.integers(0, len(words), size=words_per_sentence.sum())].tolist())
    sentences = iter([" ".join(next(drawn) for _ in range(n)).capitalize() + "." for n in words_per_sentence])
    with open(path, "w") as f:
        f.write("\n\n".join(" ".join(next(sentences) for _ in range(n)) for n in sentences_per_doc))
    return str(path)


# ------------------------------------------------------------------- tests
def test_split_sentences_rule():
    doc = 'He said "Stop!" Then he left. Pi is 3.14 or so… Really?  Yes (quite).  Next'
    assert [s.decode() for s in split_sentences(doc).numpy()] == [
        'He said "Stop!"', "Then he left.", "Pi is 3.14 or so…", "Really?", "Yes (quite).", "Next",
    ]
    batch = split_sentences(tf.constant(["A. B.", "", "C"]))
    assert batch.to_list() == [[b"A.", b"B."], [], [b"C"]]


def test_layout_shapes_and_dtypes(pre):
    seq_length, max_pred = 64, 10
    ds = pretraining_dataset(SAMPLE, pre, seq_length=seq_length, max_predictions_per_seq=max_pred,
                             batch_size=4, seed=3)
    features, labels = ds.element_spec
    expected = {"input_word_ids": (tf.int32, seq_length), "input_mask": (tf.int32, seq_length),
                "input_type_ids": (tf.int32, seq_length), "masked_lm_positions": (tf.int32, max_pred),
                "masked_lm_ids": (tf.int32, max_pred), "masked_lm_weights": (tf.float32, max_pred),
                "next_sentence_labels": (tf.int32, 1)}
    assert {k: (v.dtype, v.shape.as_list()) for k, v in features.items()} == {
        k: (dtype, [4, width]) for k, (dtype, width) in expected.items()
    }
    assert set(labels) == {"masked_lm_ids", "next_sentence_labels"}
    data = _collect(ds)
    assert len(data["input_word_ids"]) >= 12  # 21 pairs from the ten sample documents, batches of 4
    np.testing.assert_array_equal(data["label/masked_lm_ids"], data["masked_lm_ids"])
    np.testing.assert_array_equal(data["label/next_sentence_labels"], data["next_sentence_labels"])

    # Each row: [CLS] A [SEP] B [SEP] [PAD]..., types 0 / 1 / 0, sorted unique positions inside the text.
    ids, restored = data["input_word_ids"], _restore(data)
    for row in range(len(ids)):
        length = int(data["input_mask"][row].sum())
        np.testing.assert_array_equal(data["input_mask"][row], np.arange(seq_length) < length)
        assert (ids[row, length:] == PAD).all()
        a, b = _segments(restored[row][:length])
        assert a and b
        types = np.r_[np.zeros(len(a) + 2), np.ones(len(b) + 1), np.zeros(seq_length - length)]
        np.testing.assert_array_equal(data["input_type_ids"][row], types)
        count = int(data["masked_lm_weights"][row].sum())
        positions = data["masked_lm_positions"][row]
        weights = data["masked_lm_weights"][row]
        assert (weights[:count] == 1).all() and (weights[count:] == 0).all()
        assert (np.diff(positions[:count]) > 0).all() and (positions[count:] == 0).all()
        assert (data["masked_lm_ids"][row][count:] == 0).all()
        assert ((positions[:count] > 0) & (positions[:count] < length)).all()

    # Segments are contiguous token runs of the (tokenised) sample documents.
    with open(SAMPLE) as f:
        docs = [" ".join(block.split()) for block in f.read().split("\n\n") if block.strip()]
    doc_ids = pre.tokenize(tf.constant(docs)).to_list()
    corpus = "|" + "|".join(" ".join(map(str, d)) for d in doc_ids) + "|"
    for row in range(len(ids)):
        a, b = _segments(restored[row][: int(data["input_mask"][row].sum())])
        assert " ".join(map(str, a)) in corpus and " ".join(map(str, b)) in corpus
        if data["next_sentence_labels"][row, 0] == 0 and len(a) + len(b) < seq_length - 3:  # not truncated
            assert " ".join(map(str, a + b)) in corpus


def test_masking_statistics_and_nsp_balance(pre, random_corpus):
    seq_length, max_pred, rate = 64, 8, 0.15
    data = _collect(pretraining_dataset(random_corpus, pre, seq_length=seq_length, max_predictions_per_seq=max_pred,
                                        batch_size=256, seed=11, drop_remainder=False))
    rows = len(data["input_word_ids"])
    assert rows >= 2500
    ids, original = data["input_word_ids"], _restore(data)
    length = data["input_mask"].sum(axis=1)
    selectable = length - 3  # everything but [CLS] and two [SEP]
    count = data["masked_lm_weights"].sum(axis=1).astype(int)
    # RandomItemSelector picks ceil(rate * n) (in float32) of the n selectable tokens, capped per row.
    expected = np.minimum(np.ceil(np.float32(rate) * selectable.astype(np.float32)), max_pred).astype(int)
    np.testing.assert_array_equal(count, expected)
    assert (expected == max_pred).any() and (expected < max_pred).any()  # both regimes occur
    uncapped = expected < max_pred
    fraction = count[uncapped].sum() / selectable[uncapped].sum()
    assert rate <= fraction <= rate + uncapped.sum() / selectable[uncapped].sum()  # ceil adds < 1 per row

    real = data["masked_lm_weights"] > 0
    rows_idx = np.repeat(np.arange(rows), real.sum(axis=1))
    positions = data["masked_lm_positions"][real]
    labels = data["masked_lm_ids"][real]
    # Special tokens are never selected and never overwritten. (That the labels
    # are the original ids is checked against the corpus text in
    # test_layout_shapes_and_dtypes and test_next_sentence_pairs_follow_the_documents.)
    assert not np.isin(labels, [CLS, SEP, PAD]).any()
    assert (ids[:, 0] == CLS).all()
    for row in range(rows):
        seps = np.flatnonzero(original[row] == SEP)
        assert len(seps) == 2 and seps[1] == length[row] - 1 and (ids[row, seps] == SEP).all()

    now = ids[rows_idx, positions]
    n = len(labels)
    shares = {"mask": np.mean(now == MASK), "random": np.mean((now != MASK) & (now != labels)),
              "kept": np.mean(now == labels)}
    # Binomial standard error sqrt(p(1-p)/n); allow 5 of them (n ~ 20k: +-0.014 / +-0.011).
    for name, p in (("mask", 0.8), ("random", 0.1), ("kept", 0.1)):
        assert abs(shares[name] - p) < 5 * math.sqrt(p * (1 - p) / n), (name, shares[name], n)
    random_ids = now[(now != MASK) & (now != labels)]
    assert len(np.unique(random_ids)) > 0.9 * len(random_ids)  # spread over the vocabulary
    assert random_ids.max() > 20000 and random_ids.min() < 5000

    nsp = data["next_sentence_labels"][:, 0]
    assert set(np.unique(nsp)) == {0, 1}
    assert abs(nsp.mean() - 0.5) < 5 * math.sqrt(0.25 / rows), nsp.mean()


def test_next_sentence_pairs_follow_the_documents(pre, index_corpus):
    path, counts = index_corpus
    data = _collect(pretraining_dataset(path, pre, seq_length=128, batch_size=16, seed=5, drop_remainder=False))
    restored = _restore(data)  # a wrong masked_lm_id would break the parse below
    documents_seen = set()
    for row in range(len(restored)):
        a, b = _segments(restored[row][: int(data["input_mask"][row].sum())])
        a, b = _parse(a, pre), _parse(b, pre)
        assert a and b
        doc_a = {d for d, _ in a}
        assert len(doc_a) == 1 and len({d for d, _ in b}) == 1
        documents_seen |= doc_a
        sentences_a, sentences_b = [s for _, s in a], [s for _, s in b]
        assert sentences_a == list(range(sentences_a[0], sentences_a[0] + len(a)))  # consecutive sentences
        assert sentences_b == list(range(sentences_b[0], sentences_b[0] + len(b)))
        if data["next_sentence_labels"][row, 0] == 0:  # IsNext: B continues A in the same document
            assert b[0] == (a[-1][0], a[-1][1] + 1)
        else:  # random B from another document
            assert b[0][0] != a[0][0]
    multi = {d for d, n in enumerate(counts) if n >= 2}
    assert documents_seen == multi  # every document with two sentences gives pairs, single ones none
    assert 0.3 < data["next_sentence_labels"].mean() < 0.7


def test_line_documents(pre, tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("".join(" ".join(f"Sentence {i} of document {d}." for i in range(6)) + "\n" for d in range(12)))
    data = _collect(pretraining_dataset(str(path), pre, seq_length=32, batch_size=8, seed=0, documents="line",
                                        drop_remainder=False))
    assert data["next_sentence_labels"].mean() > 0.2
    restored = _restore(data)
    for row in range(len(restored)):
        a, b = _segments(restored[row][: int(data["input_mask"][row].sum())])
        a, b = _parse(a, pre), _parse(b, pre)
        if data["next_sentence_labels"][row, 0] == 0:
            assert a[-1][0] == b[0][0] and b[0][1] == a[-1][1] + 1
        else:
            assert a[-1][0] != b[0][0]


def test_single_document_and_pairless_corpora(pre, tmp_path):
    # One blank-line document: no other document to draw a random B from, so
    # every pair is IsNext. Literal special tokens in the corpus are plain text.
    path = tmp_path / "one.txt"
    path.write_text("".join(f"Sentence {i} stands alone.\n" for i in range(20)) + "It has [SEP], [MASK] and [CLS].\n")
    data = _collect(pretraining_dataset(str(path), pre, seq_length=32, batch_size=4, seed=0, drop_remainder=False))
    assert len(data["input_word_ids"]) >= 4 and (data["next_sentence_labels"] == 0).all()
    for row in _restore(data):
        assert (row == SEP).sum() == 2 and (row == CLS).sum() == 1 and (row == MASK).sum() == 0
    # The same file with one document per line has only one-sentence documents:
    # no pairs at all, and a repeated dataset still ends instead of spinning.
    ds = pretraining_dataset(str(path), pre, seq_length=32, batch_size=2, seed=0, documents="line", repeat=True)
    assert list(ds.as_numpy_iterator()) == []


def test_determinism_and_seed(pre):
    def build(seed, **kwargs):
        return pretraining_dataset(SAMPLE, pre, seq_length=48, max_predictions_per_seq=6, batch_size=4, seed=seed,
                                   **kwargs)

    ds = build(7)
    first, second = _collect(ds), _collect(ds)  # (a rebuilt dataset behaves like a second iteration)
    other = _collect(build(8))
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    assert any(first[k].shape != other[k].shape or (first[k] != other[k]).any() for k in first)

    # repeat=True: later passes get new pairs and masks (the stream index feeds the randomness).
    repeated = build(7, repeat=True, shuffle_buffer=32)  # (a full buffer would hold ~500 passes)
    batches = len(first["input_word_ids"]) // 4
    epochs = list(repeated.take(2 * batches).as_numpy_iterator())
    one = np.concatenate([f["input_word_ids"] for f, _ in epochs[:batches]])
    two = np.concatenate([f["input_word_ids"] for f, _ in epochs[batches:]])
    assert one.shape == two.shape and (one != two).any()


def test_input_context_shards_files_or_documents(pre, index_corpus, tmp_path):
    path, counts = index_corpus
    # Two files: whole files per pipeline. One file: every other document per pipeline.
    with open(path) as f:
        blocks = f.read().split("\n\n")
    half = len(blocks) // 2
    (tmp_path / "a.txt").write_text("\n\n".join(blocks[:half]))
    (tmp_path / "b.txt").write_text("\n\n".join(blocks[half:]))
    for files in ([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], [path]):
        seen = []
        for pipeline in range(2):
            context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline,
                                                 num_replicas_in_sync=2)
            ds = pretraining_dataset(files, pre, seq_length=128, batch_size=8, seed=1, input_context=context)
            assert ds.element_spec[0]["input_word_ids"].shape.as_list() == [4, 128]  # per-replica batch
            data = _collect(ds.unbatch().batch(1000))
            docs = set()
            for row in _restore(data):
                a, _ = _segments(row[: int((row != PAD).sum())])
                docs |= {d for d, _ in _parse(a, pre)}
            seen.append(docs)
        assert not seen[0] & seen[1]
        assert len(seen[0] | seen[1]) >= 0.8 * sum(n >= 2 for n in counts)  # drop_remainder loses a few


def test_distribute_datasets_from_function(pre):
    strategy = tf.distribute.get_strategy()
    dist = strategy.distribute_datasets_from_function(
        lambda context: pretraining_dataset(SAMPLE, pre, seq_length=32, batch_size=4, seed=0, input_context=context)
    )
    features, _ = next(iter(dist))
    assert features["input_word_ids"].shape == (4, 32)


def test_model_fit_with_a_small_vocabulary():
    # A character-level vocabulary given as a list; labels keyed by output names
    # plus MLM sample weights, so a plainly compiled two-output model trains.
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(string.ascii_lowercase)
    vocab += ["##" + c for c in string.ascii_lowercase] + list(".,!?'\";:-()")
    ds = pretraining_dataset(SAMPLE, vocab, seq_length=32, max_predictions_per_seq=5, batch_size=8, seed=0,
                             label_keys=("mlm_logits", "nsp_logits"), sample_weights=True)
    features, labels, weights = ds.element_spec
    assert set(labels) == {"mlm_logits", "nsp_logits"} and set(weights) == {"mlm_logits"}
    ids = keras.Input((32,), dtype=tf.int32, name="input_word_ids")
    positions = keras.Input((5,), dtype=tf.int32, name="masked_lm_positions")
    hidden = keras.layers.Embedding(len(vocab), 8)(ids)
    gathered = keras.layers.Lambda(lambda t: tf.gather(t[0], t[1], batch_dims=1))([hidden, positions])
    outputs = {
        "mlm_logits": keras.layers.Dense(len(vocab), name="mlm_logits")(gathered),
        "nsp_logits": keras.layers.Dense(2, name="nsp_logits")(keras.layers.GlobalAveragePooling1D()(hidden)),
    }
    model = keras.Model({"input_word_ids": ids, "masked_lm_positions": positions}, outputs)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile("adam", loss={"mlm_logits": loss, "nsp_logits": loss})
    history = model.fit(ds.map(lambda f, l, w: ({k: f[k] for k in ("input_word_ids", "masked_lm_positions")}, l, w)),
                        epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_errors(pre, tmp_path):
    with pytest.raises(ValueError, match=r"not found: \['.*nope.txt'\]"):
        pretraining_dataset([SAMPLE, str(tmp_path / "nope.txt")], pre)
    with pytest.raises(ValueError, match="not found"):
        pretraining_dataset(str(tmp_path / "*.txt"), pre)
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    with pytest.raises(ValueError, match="no documents"):
        pretraining_dataset(str(tmp_path / "blank.txt"), pre)
    with pytest.raises(ValueError, match="seq_length must be >= 5"):
        pretraining_dataset(SAMPLE, pre, seq_length=4)
    with pytest.raises(ValueError, match="max_predictions_per_seq must be >= 1"):
        pretraining_dataset(SAMPLE, pre, max_predictions_per_seq=0)
    with pytest.raises(ValueError, match="mask_rate"):
        pretraining_dataset(SAMPLE, pre, mask_rate=0.0)
    with pytest.raises(ValueError, match='documents must be "blank_line" or "line"'):
        pretraining_dataset(SAMPLE, pre, documents="paragraph")
    with pytest.raises(ValueError, match="neither 'minilm', a checkpoint directory nor a vocab.txt"):
        pretraining_dataset(SAMPLE, str(tmp_path / "vocab.txt"))
    with pytest.raises(ValueError, match="No input files"):
        pretraining_dataset([], pre)
