"""bert.preprocessing: in-graph BERT tokenisation against independent references.

References used here:
* hand-checked WordPiece ids (line number in MiniLM's vocab.txt minus one);
* `tensorflow_text.BertTokenizer` on text where its NFKC case folding and the
  Hugging Face normaliser agree;
* `_reference_ids`, a small pure-Python re-implementation of the Hugging Face
  BERT tokenizer's documented algorithm (clean-up, CJK spacing, NFD accent
  stripping, lower case, whitespace/punctuation split, greedy WordPiece);
* `tests/fixtures/minilm_reference.npz`, ids produced by the Hugging Face
  tokenizer itself (when the fixture exists).
"""

import json
import os
import re
import subprocess
import sys
import textwrap
import unicodedata

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text as tf_text
import tf_keras as keras

from bert.hf_weights import minilm_path
from bert.preprocessing import LongestFirstTrimmer, Preprocessor

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "minilm_reference.npz")


@pytest.fixture(scope="module")
def pre():
    return Preprocessor.from_pretrained("minilm", seq_length=16)


@pytest.fixture(scope="module")
def vocab_index(pre):
    return {token: i for i, token in enumerate(pre.vocab)}


# --------------------------------------------------- pure-Python reference
_CJK_BLOCKS = [
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
]
_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _is_punctuation(ch):
    cp = ord(ch)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or (
        unicodedata.category(ch).startswith("P")
    )


def _reference_words(text):
    kept = []
    for ch in text:
        category = unicodedata.category(ch)
        if ch in "\t\n\r" or category.startswith("Z"):
            kept.append(" ")
        elif ord(ch) == 0xFFFD or category.startswith("C"):
            continue
        elif any(lo <= ord(ch) <= hi for lo, hi in _CJK_BLOCKS):
            kept.append(f" {ch} ")
        else:
            kept.append(ch)
    text = unicodedata.normalize("NFD", "".join(kept))
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn").lower()
    words = []
    for chunk in text.split(" "):
        current = ""
        for ch in chunk:
            if _is_punctuation(ch):
                words += [current, ch] if current else [ch]
                current = ""
            else:
                current += ch
        if current:
            words.append(current)
    return words


def _reference_wordpiece(word, index):
    if len(word) > 100:
        return [index["[UNK]"]]
    ids, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in index:
                ids.append(index[piece])
                start = end
                break
        else:
            return [index["[UNK]"]]
    return ids


def _reference_ids(text, index):
    ids = []
    for part in re.split("(" + "|".join(map(re.escape, _SPECIALS)) + ")", text):
        if part in _SPECIALS:
            ids.append(index[part])
        else:
            for word in _reference_words(part):
                ids.extend(_reference_wordpiece(word, index))
    return ids


def _reference_longest_first(n1, n2, budget):
    """Remove one token at a time from the longer segment; on a tie from the one that started shorter."""
    first_started_shorter = n1 <= n2
    while n1 + n2 > budget:
        if n1 > n2 or (n1 == n2 and first_started_shorter):
            n1 -= 1
        else:
            n2 -= 1
    return n1, n2


def _reference_pack(a_ids, b_ids, seq_length):
    if b_ids is None:
        body = [101] + a_ids[: seq_length - 2] + [102]
        types = [0] * len(body)
    else:
        k1, k2 = _reference_longest_first(len(a_ids), len(b_ids), seq_length - 3)
        body = [101] + a_ids[:k1] + [102] + b_ids[:k2] + [102]
        types = [0] * (k1 + 2) + [1] * (k2 + 1)
    pad = seq_length - len(body)
    return body + [0] * pad, [1] * len(body) + [0] * pad, types + [0] * pad


# ----------------------------------------------------------------- tests
def test_special_tokens_and_vocab_size_come_from_vocab_txt(pre):
    with open(os.path.join(minilm_path(), "vocab.txt"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert pre.vocab_size == len(lines) == 30522
    expected = {key: lines.index(token) for key, token in
                [("pad", "[PAD]"), ("unk", "[UNK]"), ("cls", "[CLS]"), ("sep", "[SEP]"), ("mask", "[MASK]")]}
    assert pre.special_token_ids == expected == {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
    with open(os.path.join(minilm_path(), "tokenizer_config.json")) as f:
        config = json.load(f)
    assert pre.lower_case is config["do_lower_case"] is True
    assert pre.strip_accents is config["strip_accents"] is None  # follows lower_case
    assert pre.tokenize_chinese_chars is config["tokenize_chinese_chars"] is True


# Hand-checked: each id is (line number in vocab.txt) - 1, looked up with grep -n -x.
HAND_CHECKED = {
    "Hello, World!": [7592, 1010, 2088, 999],  # hello , world !
    "Café naïve résumé": [7668, 15743, 13746],  # cafe naive resume (accents stripped)
    "The capital of France is [MASK].": [1996, 3007, 1997, 2605, 2003, 103, 1012],
    "It's 5pm in Zürich": [2009, 1005, 1055, 1019, 9737, 1999, 10204],  # it ' s 5 ##pm in zurich
    "Unbelievably, tokenization works.": [4895, 8671, 2666, 3567, 6321, 1010, 19204, 3989, 2573, 1012],
    "中文": [1746, 1861],  # each CJK ideograph is a word
}


def test_hand_checked_ids(pre, vocab_index):
    got = pre.tokenize(tf.constant(list(HAND_CHECKED))).to_list()
    assert got == list(HAND_CHECKED.values())
    assert [pre.vocab[i] for i in HAND_CHECKED["Unbelievably, tokenization works."]] == [
        "un", "##bel", "##ie", "##va", "##bly", ",", "token", "##ization", "works", ".",
    ]
    for text, ids in HAND_CHECKED.items():
        assert _reference_ids(text, vocab_index) == ids


PLAIN = [
    "The quick brown fox jumps over the lazy dog.",
    "Bread is one of the oldest prepared foods; it needs flour, water & salt.",
    "Naïve café owners in São Paulo don't serve crème brûlée (usually).",
    "E-mail me at someone@example.com before 10:30 a.m. -- thanks!",
    "Tokenizers split 'quotes', \"double quotes\" and brackets [like] {these}.",
    "Numbers like 3.14159, 1,000,000 and 42% are common in text.",
    "东京 and 北京 are capitals; 日本語 uses kanji.",
    "Supercalifragilisticexpialidocious is a long, unusual word",
    "",
    "   leading and trailing spaces   ",
]


def test_matches_tensorflow_text_bert_tokenizer(pre):
    # An independent implementation (regex pre-tokenizer + classic WordPiece):
    # identical wherever NFKC case folding and lower-casing agree.
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(pre.vocab, tf.range(pre.vocab_size, dtype=tf.int64)), -1
    )
    classic = tf_text.BertTokenizer(table, token_out_type=tf.int64, lower_case=True)
    expected = classic.tokenize(tf.constant(PLAIN)).merge_dims(-2, -1).to_list()
    assert pre.tokenize(tf.constant(PLAIN)).to_list() == expected


EDGE_CASES = [
    "Ａｂｃ full-width, ﬁ ligature, １２３",  # NFKC would turn these into abc / fi / 123
    "straße İstanbul ΟΔΟΣ",  # ß is a vocab entry; final sigma
    "…“curly quotes”—em dash",
    "zero\u200bwidth soft\u00adhyphen nul\x00 replacement\ufffd",
    "tab\tnew\nline\r\u2028sep\u3000ideographic\xa0nbsp",
    "emoji 😀 ok, 5€ © 20°C ±3",
    "e\u0301 combining accent",
    "a" * 101 + " " + "b" * 100,  # > 100 characters -> [UNK]
    "é" * 60,  # 120 bytes but 60 characters: still tokenised
    "x[MASK]y [mask] [MASK [SEP][CLS]",  # special literals are case-sensitive, whole
    "\U000F0001 private use",
]


def test_matches_reference_algorithm_on_edge_cases(pre, vocab_index):
    got = pre.tokenize(tf.constant(EDGE_CASES)).to_list()
    for text, ids in zip(EDGE_CASES, got):
        assert ids == _reference_ids(text, vocab_index), text


def test_split_special_tokens(pre):
    text = tf.constant(["Paris is [MASK]."])
    assert pre.tokenize(text).to_list() == [[3000, 2003, 103, 1012]]
    as_text = [3000, 2003, 1031, 7308, 1033, 1012]  # paris is [ mask ] .
    assert pre.tokenize(text, split_special_tokens=True).to_list() == [as_text]
    layer = Preprocessor(pre.vocab, seq_length=8, split_special_tokens=True)
    assert layer(text)["input_word_ids"].numpy().tolist() == [[101] + as_text + [102]]
    assert Preprocessor.from_config(layer.get_config()).split_special_tokens


def test_matches_reference_algorithm_for_every_bmp_character(pre, vocab_index):
    # Code points unassigned in Python's Unicode database are skipped: RE2's
    # newer tables may already assign them (a Unicode-version difference).
    chars = [chr(c) for c in range(1, 0x10000) if not 0xD800 <= c <= 0xDFFF and unicodedata.category(chr(c)) != "Cn"]
    texts = [f"a{c}b {c}x" for c in chars]
    got = pre.tokenize(tf.constant(texts)).to_list()
    wrong = [(hex(ord(c)), ids) for c, t, ids in zip(chars, texts, got) if ids != _reference_ids(t, vocab_index)]
    assert not wrong, wrong[:10]


def test_singles_and_pairs_layout(pre, vocab_index):
    a = ["Hello, World!", "one two three four five six seven eight nine ten eleven twelve thirteen", ""]
    b = ["How are you?", "alpha beta", "Only the second segment has words in it today"]
    singles = pre(tf.constant(a))
    pairs = pre([tf.constant(a), tf.constant(b)])
    for i in range(len(a)):
        ra, rb = _reference_ids(a[i], vocab_index), _reference_ids(b[i], vocab_index)
        for got, expected in ((singles, _reference_pack(ra, None, 16)), (pairs, _reference_pack(ra, rb, 16))):
            assert got["input_word_ids"][i].numpy().tolist() == expected[0]
            assert got["input_mask"][i].numpy().tolist() == expected[1]
            assert got["input_type_ids"][i].numpy().tolist() == expected[2]
    for value in list(singles.values()) + list(pairs.values()):
        assert value.dtype == tf.int32 and value.shape == (3, 16)
    # [CLS] hello , world ! [SEP] how are you ? [SEP]
    first_pair = [101, 7592, 1010, 2088, 999, 102, 2129, 2024, 2017, 1029, 102]
    assert pairs["input_word_ids"][0, :11].numpy().tolist() == first_pair
    assert pairs["input_type_ids"][0, :12].numpy().tolist() == [0] * 6 + [1] * 5 + [0]


@pytest.mark.parametrize("budget", [0, 1, 6, 7, 8, 13])
def test_longest_first_trimmer_matches_one_token_at_a_time(budget):
    lengths = [(n1, n2) for n1 in range(0, 11) for n2 in range(0, 11)]
    n1 = tf.constant([p[0] for p in lengths])
    n2 = tf.constant([p[1] for p in lengths])
    k1, k2 = LongestFirstTrimmer.allocate(n1, n2, budget)
    assert list(zip(k1.numpy().tolist(), k2.numpy().tolist())) == [
        _reference_longest_first(a, b, budget) for a, b in lengths
    ]


def test_trimmer_vs_shrink_longest():
    # Hugging Face (tokenizers) keeps (4, 3) of (8, 4) tokens under a budget of 7;
    # ShrinkLongestTrimmer breaks the final tie towards the first segment.
    a = tf.ragged.constant([list(range(8)), list(range(4)), list(range(2))])
    b = tf.ragged.constant([list(range(4)), list(range(8)), list(range(8))])
    ours = [t.row_lengths().numpy().tolist() for t in LongestFirstTrimmer(7).trim([a, b])]
    assert ours == [[4, 3, 2], [3, 4, 5]]
    shrink = [t.row_lengths().numpy().tolist() for t in tf_text.ShrinkLongestTrimmer(7).trim([a, b])]
    assert shrink == [[3, 3, 2], [4, 4, 5]]


def test_input_forms_and_tf_function(pre):
    expected = pre(tf.constant(["Hello there"]))["input_word_ids"].numpy()
    np.testing.assert_array_equal(pre(tf.constant("Hello there"))["input_word_ids"], expected)
    np.testing.assert_array_equal(pre(tf.constant([["Hello there"]]))["input_word_ids"], expected)
    np.testing.assert_array_equal(pre(["Hello there"])["input_word_ids"], expected)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string)])
    def pairs(a, b):
        return pre([a, b])

    out = pairs(tf.constant(["a", "b c"]), tf.constant(["d", "e"]))
    assert out["input_word_ids"].shape == (2, 16)
    ds = tf.data.Dataset.from_tensor_slices(["x y", "z"]).batch(2).map(pre)
    assert next(iter(ds))["input_mask"].numpy().sum(axis=1).tolist() == [4, 3]  # [CLS] x y [SEP], [CLS] z [SEP]


def test_errors(tmp_path, pre):
    with pytest.raises(ValueError, match="does not exist"):
        Preprocessor.from_pretrained(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="has no vocab.txt"):
        Preprocessor.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="seq_length must be >= 3"):
        Preprocessor.from_pretrained("minilm", seq_length=2)
    with pytest.raises(ValueError, match="must be a tf.string tensor; got dtype int32"):
        pre(tf.constant([1, 2]))
    with pytest.raises(ValueError, match="must be strings"):
        pre([object()])
    with pytest.raises(ValueError, match="one string tensor or a list of two"):
        pre([tf.constant(["a"])] * 3)
    with pytest.raises(ValueError, match=r"Special token\(s\) \['\[CLS\]'\] are not in the vocabulary"):
        Preprocessor(["[PAD]", "[UNK]", "[SEP]", "[MASK]", "a"])
    with pytest.raises(ValueError, match="duplicate tokens"):
        Preprocessor(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "a"])
    (tmp_path / "vocab.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        Preprocessor.from_pretrained(str(tmp_path))


def test_checkpoint_dir_config_is_honoured(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "Hello", "café", "cafe", "!"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    cased = Preprocessor.from_pretrained(str(tmp_path), seq_length=8)
    assert cased.tokenize(tf.constant(["Hello café!"])).to_list() == [[6, 7, 9]]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "strip_accents": False}))
    keep_accents = Preprocessor.from_pretrained(str(tmp_path), seq_length=8)
    assert keep_accents.tokenize(tf.constant(["Hello CAFÉ!"])).to_list() == [[5, 7, 9]]


def test_keras_round_trip(tmp_path, pre):
    a = keras.Input(shape=(), dtype=tf.string)
    b = keras.Input(shape=(), dtype=tf.string)
    model = keras.Model([a, b], pre([a, b]))
    config = pre.get_config()
    assert config["vocab"] == pre.vocab and config["seq_length"] == 16  # the list, not a path
    path = str(tmp_path / "pre.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    layer = [layer for layer in loaded.layers if isinstance(layer, Preprocessor)][0]
    assert layer.get_config() == config
    inputs = [tf.constant(["Hello, World!", "Volcanic soil"]), tf.constant(["A pair", "is fertile."])]
    for key, value in model(inputs).items():
        np.testing.assert_array_equal(loaded(inputs)[key], value)


_SERVE = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # registers the ops
    module = tf.saved_model.load(sys.argv[1])
    single = module.signatures["single"](text=tf.constant(["Hello, World!", "Café [MASK]"]))
    pair = module.signatures["pair"](first=tf.constant(["Hello"]), second=tf.constant(["World"]))
    model = tf.saved_model.load(sys.argv[2])
    embedded = model.signatures["serving_default"](text=tf.constant(["Hello, World!"]))
    mods = sorted(m for m in ("bert", "tf_keras") if m in sys.modules)  # (tensorflow imports Keras 3 itself)
    print(json.dumps({
        "single": single["input_word_ids"].numpy().tolist(),
        "pair": pair["input_type_ids"].numpy().tolist(),
        "pair_ids": pair["input_word_ids"].numpy().tolist(),
        "embedded": embedded["embedded"].numpy().tolist(),
        "modules": mods,
    }))
    """
)


def test_saved_model_serves_in_fresh_process(tmp_path, pre):
    class Serving(tf.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def single(self, text):
            return self.layer(text)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="first"),
                                      tf.TensorSpec([None], tf.string, name="second")])
        def pair(self, first, second):
            return self.layer([first, second])

    module = Serving(pre)
    path = str(tmp_path / "served")
    tf.saved_model.save(module, path, signatures={"single": module.single, "pair": module.pair})

    # A Keras model with the layer in front (a stand-in for the encoder), raw-string signature.
    text = keras.Input(shape=(), dtype=tf.string, name="text")
    ids = pre(text)["input_word_ids"]
    embedded = keras.layers.Embedding(pre.vocab_size, 2, embeddings_initializer="ones")(ids)
    model = keras.Model(text, keras.layers.Lambda(lambda t: tf.reduce_sum(t, [1, 2]))(embedded))
    serve = tf.function(lambda t: {"embedded": model(t)}, input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    model_path = str(tmp_path / "model")
    tf.saved_model.save(model, model_path, signatures={"serving_default": serve})

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH="")
    result = subprocess.run([sys.executable, "-c", _SERVE, path, model_path], capture_output=True, text=True,
                            timeout=300, env=env, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert served["modules"] == [], "the SavedModel must not need bert or tf_keras"
    assert served["single"] == pre(tf.constant(["Hello, World!", "Café [MASK]"]))["input_word_ids"].numpy().tolist()
    assert served["pair_ids"][0][:5] == [101, 7592, 102, 2088, 102]
    assert served["pair"][0][:6] == [0, 0, 0, 1, 1, 0]
    assert served["embedded"] == [2.0 * 16]  # all-ones embedding summed over 16 positions


def test_hugging_face_reference_fixture():
    if not os.path.isfile(FIXTURE):
        pytest.skip(f"{os.path.normpath(FIXTURE)} (ids from the Hugging Face tokenizer) is not there yet")
    ref = np.load(FIXTURE, allow_pickle=False)
    pre = Preprocessor.from_pretrained("minilm", seq_length=128)
    sentences = [str(s) for s in ref["sentences"]]
    single = pre(tf.constant(sentences))
    for ours, theirs in (("input_word_ids", "input_ids"), ("input_mask", "attention_mask"),
                         ("input_type_ids", "token_type_ids")):
        expected = ref[theirs].astype(np.int32)
        got = single[ours].numpy()
        bad = np.flatnonzero((got != expected).any(axis=1))
        assert bad.size == 0, f"{ours} differs for {[sentences[i] for i in bad[:3]]}"
    pair = pre([tf.constant([str(s) for s in ref["pair_a"]]), tf.constant([str(s) for s in ref["pair_b"]])])
    for ours, theirs in (("input_word_ids", "pair_input_ids"), ("input_mask", "pair_attention_mask"),
                         ("input_type_ids", "pair_token_type_ids")):
        expected = ref[theirs].astype(np.int32)
        got = pair[ours].numpy()
        bad = np.flatnonzero((got != expected).any(axis=1))
        assert bad.size == 0, f"{ours} differs for pairs {bad[:5].tolist()}"
