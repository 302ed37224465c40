"""In-graph BERT text preprocessing: raw strings -> the three BERT model inputs.

`Preprocessor` is a Keras layer that reproduces the Hugging Face uncased BERT
tokenizer (as shipped with all-MiniLM-L6-v2) with TensorFlow Text ops only, so
it runs inside `tf.function`, `tf.data` and SavedModel serving signatures:

1. Special-token literals in the raw text (``[MASK]``, ``[SEP]``, ...) are kept
   whole, like Hugging Face's added-token matching (case-sensitive, before any
   normalisation).
2. Clean-up: ``\\t``, ``\\n``, ``\\r`` and Unicode separators become spaces;
   control / format / private-use / unassigned code points and U+FFFD are
   deleted.
3. CJK ideographs are surrounded by spaces (``tokenize_chinese_chars``).
4. Accent stripping (NFD, then drop non-spacing marks) and lower-casing, as the
   checkpoint's ``tokenizer_config.json`` says (``strip_accents: null`` follows
   ``do_lower_case``).
5. Split on spaces; every punctuation character (ASCII punctuation/symbols and
   Unicode category P*) becomes its own word.
6. WordPiece (``tensorflow_text.FastWordpieceTokenizer`` without its own
   pre-tokenisation); words longer than 100 characters become ``[UNK]``.

Why not `tensorflow_text.FastBertTokenizer` / `BertTokenizer` directly: their
lower-casing is an NFKC case fold, which rewrites full-width letters, ligatures,
``…``, ``ß`` and the like, whereas Hugging Face only lower-cases and strips
accents; they also keep U+FFFD/NUL, and limit words by bytes (100) instead of
characters. Steps 1-5 above are plain `tf.strings` / `tensorflow_text.regex_split`
ops; step 6 is the same fast WordPiece kernel FastBertTokenizer uses.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf
import tensorflow_text as tf_text
import tf_keras as keras

from bert.hf_weights import minilm_path

__all__ = ["Preprocessor", "LongestFirstTrimmer", "load_vocab"]

_SPECIAL_KEYS = ("pad", "unk", "cls", "sep", "mask")
_DEFAULT_SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}

# Code points U+F0000.. (plane-15 private use) stand in for special-token
# literals between steps 1 and 6; any private-use character in the input itself
# is deleted by the clean-up, so a sentinel can only come from step 1.
_SENTINEL_BASE = 0xF0000
_SENTINEL_RANGE = r"\x{F0000}-\x{F000F}"

# Step 2. RE2 has no \p{Cn}; "none of the assigned categories" is the same set.
_WHITESPACE = r"[\t\n\r\p{Z}]"
_DELETE = (
    r"\p{Cc}|\p{Cf}|\p{Cs}|\x{FFFD}"
    r"|[\x{E000}-\x{F8FF}\x{F0010}-\x{FFFFD}\x{100000}-\x{10FFFD}]"  # \p{Co} minus the sentinels
    r"|[^\p{L}\p{M}\p{N}\p{P}\p{S}\p{Z}\p{C}]"  # unassigned (Cn)
)
# Step 3: the CJK Unified Ideograph blocks BERT treats as single-character words.
_CJK = (
    r"([\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}"
    r"\x{2B740}-\x{2B81F}\x{2B820}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}])"
)
# Step 5: BERT's punctuation = the four ASCII punctuation/symbol runs + \p{P}.
_PUNCTUATION = r"[!-/:-@\[-\x60{-~\p{P}]"


def load_vocab(path: str) -> list[str]:
    """Reads a WordPiece ``vocab.txt`` (one token a line, id = line number)."""
    if not os.path.isfile(path):
        raise ValueError(f"Vocabulary file {path!r} does not exist.")
    with open(path, encoding="utf-8") as f:
        tokens = [line.rstrip("\n") for line in f]
    if not tokens:
        raise ValueError(f"Vocabulary file {path!r} is empty.")
    return tokens


class LongestFirstTrimmer(tf_text.Trimmer):
    """Two-segment trimmer with Hugging Face's ``truncation="longest_first"`` lengths.

    Of TensorFlow Text's trimmers, `ShrinkLongestTrimmer` is the closest: it also
    cuts the longer segment one token at a time. It breaks ties towards the
    *first* segment, though, so for an odd budget where both segments must be
    cut and the first one started longer it keeps one token less of the first
    segment than Hugging Face (budget 7, lengths (8, 4): HF keeps (4, 3),
    ShrinkLongest (3, 4)). `WaterfallTrimmer` and `RoundRobinTrimmer` implement
    other strategies (only-second-first and alternating). This trimmer computes
    the lengths of the `tokenizers` (Rust, "fast" tokenizer) rule in closed form:
    with s <= l the shorter/longer lengths and budget L, keep everything if
    s + l <= L; else keep s and L - s tokens if s <= L - s; else keep floor(L/2)
    of the shorter and ceil(L/2) of the longer (on a tie the second segment is
    "the longer"). Tokens are dropped from the end of each segment.
    """

    def __init__(self, max_seq_length, axis=-1):
        self._max_seq_length = max_seq_length
        if axis not in (-1, 1):
            raise ValueError(f"LongestFirstTrimmer trims the last axis of [batch, (tokens)]; got axis={axis}.")

    @staticmethod
    def allocate(first_lengths, second_lengths, budget):
        """Per-row kept lengths (int32) of the two segments under `budget` tokens."""
        n1 = tf.cast(first_lengths, tf.int32)
        n2 = tf.cast(second_lengths, tf.int32)
        budget = tf.cast(budget, tf.int32)
        swap = n1 > n2
        shorter = tf.minimum(n1, n2)
        longer = tf.where(shorter > budget, shorter, tf.maximum(shorter, budget - shorter))
        both_cut = shorter + longer > budget
        shorter = tf.where(both_cut, budget // 2, shorter)
        longer = tf.where(both_cut, budget // 2 + budget % 2, longer)
        keep1 = tf.where(swap, longer, shorter)
        keep2 = tf.where(swap, shorter, longer)
        fits = n1 + n2 <= budget
        return tf.where(fits, n1, tf.minimum(keep1, n1)), tf.where(fits, n2, tf.minimum(keep2, n2))

    def _keep_flat(self, segments):
        """Per segment: flat boolean keep-mask over its values, and the kept row lengths."""
        if len(segments) != 2:
            raise ValueError(f"LongestFirstTrimmer trims exactly two segments; got {len(segments)}.")
        segments = [tf.RaggedTensor.from_tensor(s) if isinstance(s, tf.Tensor) else s for s in segments]
        if any(s.ragged_rank != 1 for s in segments):
            raise ValueError("LongestFirstTrimmer expects [batch, (tokens)] ragged segments.")
        lengths = [s.row_lengths() for s in segments]
        keeps = self.allocate(lengths[0], lengths[1], self._max_seq_length)
        result = []
        for segment, length, keep in zip(segments, lengths, keeps):
            # Position of every value inside its row, compared with the row's budget.
            row = segment.value_rowids()
            position = tf.range(tf.size(row, out_type=row.dtype)) - tf.gather(segment.row_starts(), row)
            keep_flat = position < tf.gather(tf.cast(keep, row.dtype), row)
            result.append((segment, keep_flat, tf.cast(keep, segment.row_splits.dtype)))
        return result

    def generate_mask(self, segments):
        return [
            tf.RaggedTensor.from_row_splits(keep_flat, segment.row_splits, validate=False)
            for segment, keep_flat, _ in self._keep_flat(segments)
        ]

    def trim(self, segments):
        return [
            tf.RaggedTensor.from_row_lengths(tf.boolean_mask(segment.values, keep_flat), keep, validate=False)
            for segment, keep_flat, keep in self._keep_flat(segments)
        ]


@keras.utils.register_keras_serializable(package="bert")
class Preprocessor(keras.layers.Layer):
    """Raw strings -> ``{"input_word_ids", "input_mask", "input_type_ids"}`` (int32 [B, seq_length]).

    Call it on a 1-D string tensor (single sentences: ``[CLS] a [SEP]``) or on a
    list/tuple of two 1-D string tensors (sentence pairs:
    ``[CLS] a [SEP] b [SEP]`` with type id 0 up to and including the first
    ``[SEP]``, 1 after). A ``[B, 1]`` string tensor or a scalar string is
    accepted too. Pairs are truncated like Hugging Face's ``longest_first``
    (see `LongestFirstTrimmer`), singles by dropping trailing tokens; rows are
    padded with ``[PAD]`` to ``seq_length``.

    Args:
      vocab: list of WordPiece tokens (id = position) or a path to ``vocab.txt``.
        The config always stores the list, so a ``.keras`` file or SavedModel
        is self-contained.
      seq_length: output length (>= 3: a pair needs three special tokens).
      lower_case: lower-case the text (``do_lower_case``).
      strip_accents: strip accents; ``None`` follows ``lower_case`` (as in
        Hugging Face).
      tokenize_chinese_chars: make every CJK ideograph its own word.
      max_chars_per_word: longer words become ``[UNK]`` (Hugging Face: 100).
      special_tokens: optional dict overriding the token strings of
        ``pad``/``unk``/``cls``/``sep``/``mask``.
      split_special_tokens: if False (Hugging Face's default), literal
        special tokens in the text ("[MASK]", case-sensitive) map to their ids;
        if True they are tokenised as ordinary text.
    """

    def __init__(
        self,
        vocab,
        seq_length: int = 128,
        lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        max_chars_per_word: int = 100,
        special_tokens: dict | None = None,
        split_special_tokens: bool = False,
        **kwargs,
    ):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if isinstance(vocab, (str, os.PathLike)):
            vocab = load_vocab(os.fspath(vocab))
        vocab = [str(token) for token in vocab]
        if not vocab:
            raise ValueError("The vocabulary is empty.")
        if len(set(vocab)) != len(vocab):
            seen, duplicates = set(), []
            for token in vocab:
                if token in seen:
                    duplicates.append(token)
                seen.add(token)
            raise ValueError(f"The vocabulary has duplicate tokens: {duplicates[:5]}.")
        seq_length = int(seq_length)
        if seq_length < 3:
            raise ValueError(
                f"seq_length must be >= 3 (a sentence pair needs [CLS] and two [SEP]); got {seq_length}."
            )
        tokens = dict(_DEFAULT_SPECIALS)
        for key, value in (special_tokens or {}).items():
            if key not in tokens:
                raise ValueError(f"Unknown special token key {key!r}; expected one of {list(_SPECIAL_KEYS)}.")
            tokens[key] = str(value)
        index = {token: i for i, token in enumerate(vocab)}
        missing = [token for token in tokens.values() if token not in index]
        if missing:
            raise ValueError(f"Special token(s) {missing} are not in the vocabulary.")

        # Plain Python containers (_no_dependency: not wrapped/tracked by Keras).
        self.vocab = self._no_dependency(vocab)
        self.seq_length = seq_length
        self.lower_case = bool(lower_case)
        self.strip_accents = None if strip_accents is None else bool(strip_accents)
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self.max_chars_per_word = int(max_chars_per_word)
        self.special_tokens = self._no_dependency(tokens)
        self.split_special_tokens = bool(split_special_tokens)
        self._special_ids = self._no_dependency({key: index[token] for key, token in tokens.items()})

        # Special-token vocabulary entries are unreachable as words (their
        # brackets are punctuation), so they are swapped for the sentinels that
        # step 1 writes; the ids stay the same.
        self._sentinels = self._no_dependency({key: chr(_SENTINEL_BASE + i) for i, key in enumerate(_SPECIAL_KEYS)})
        wordpiece_vocab = list(vocab)
        for key in _SPECIAL_KEYS:
            wordpiece_vocab[self._special_ids[key]] = self._sentinels[key]
        self._wordpiece = tf_text.FastWordpieceTokenizer(
            vocab=wordpiece_vocab,
            suffix_indicator="##",
            # Bytes; the character limit is applied separately (4 bytes per char at most).
            max_bytes_per_word=4 * self.max_chars_per_word,
            token_out_type=tf.int32,
            unknown_token=self._sentinels["unk"],
            no_pretokenization=True,
        )

    # ------------------------------------------------------------------ API
    @classmethod
    def from_pretrained(cls, path: str = "minilm", seq_length: int = 128, **kwargs) -> "Preprocessor":
        """Builds the preprocessor of a Hugging Face BERT checkpoint directory ("minilm" = bundled).

        Reads ``vocab.txt`` and, when present, ``tokenizer_config.json`` /
        ``special_tokens_map.json`` (``do_lower_case``, ``strip_accents``,
        ``tokenize_chinese_chars``, special-token strings). Keyword arguments
        override what the files say.
        """
        if path == "minilm":
            path = minilm_path()
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise ValueError(f"Checkpoint directory {path!r} does not exist.")
        vocab_file = os.path.join(path, "vocab.txt")
        if not os.path.isfile(vocab_file):
            raise ValueError(f"Checkpoint directory {path!r} has no vocab.txt (a WordPiece vocabulary is required).")
        config = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
            file = os.path.join(path, name)
            if os.path.isfile(file):
                with open(file, encoding="utf-8") as f:
                    try:
                        config.update(json.load(f))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{file} is not valid JSON: {error}") from error
        special_tokens = {}
        for key in _SPECIAL_KEYS:
            value = config.get(f"{key}_token")
            if isinstance(value, dict):  # newer configs store AddedToken dicts
                value = value.get("content")
            if value is not None:
                special_tokens[key] = value
        arguments = dict(
            vocab=load_vocab(vocab_file),
            seq_length=seq_length,
            lower_case=config.get("do_lower_case", True),
            strip_accents=config.get("strip_accents"),
            tokenize_chinese_chars=config.get("tokenize_chinese_chars", True),
            special_tokens=special_tokens,
        )
        arguments.update(kwargs)
        return cls(**arguments)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def special_token_ids(self) -> dict[str, int]:
        """``{"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}`` for the MiniLM vocabulary."""
        return dict(self._special_ids)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab=list(self.vocab),
            seq_length=self.seq_length,
            lower_case=self.lower_case,
            strip_accents=self.strip_accents,
            tokenize_chinese_chars=self.tokenize_chinese_chars,
            max_chars_per_word=self.max_chars_per_word,
            special_tokens=dict(self.special_tokens),
            split_special_tokens=self.split_special_tokens,
        )
        return config

    # ------------------------------------------------------------- in-graph
    def normalize(self, text, *, split_special_tokens=None):
        """Steps 1-4: special literals -> sentinels, clean-up, CJK spacing, accents, case."""
        text = _as_string_tensor(text, "text")
        # Sentinel code points in the input are private-use junk: make them
        # another private-use character, which the clean-up deletes.
        text = tf.strings.regex_replace(text, f"[{_SENTINEL_RANGE}]", "\ue000")
        if split_special_tokens is None:
            split_special_tokens = self.split_special_tokens
        if not split_special_tokens:
            for key in _SPECIAL_KEYS:
                literal = _re2_literal(self.special_tokens[key])
                text = tf.strings.regex_replace(text, literal, f" {self._sentinels[key]} ")
        text = tf.strings.regex_replace(text, _WHITESPACE, " ")
        text = tf.strings.regex_replace(text, _DELETE, "")
        if self.tokenize_chinese_chars:
            text = tf.strings.regex_replace(text, _CJK, r" \1 ")
        strip = self.lower_case if self.strip_accents is None else self.strip_accents
        if strip:
            text = tf_text.normalize_utf8(text, "NFD")
            text = tf.strings.regex_replace(text, r"\p{Mn}", "")
        if self.lower_case:
            text = tf.strings.lower(text, encoding="utf-8")
        return text

    def split_words(self, text):
        """Step 5 on normalised text: RaggedTensor of words [..., (words)]."""
        return tf_text.regex_split(text, f" |{_PUNCTUATION}", keep_delim_regex_pattern=_PUNCTUATION)

    def tokenize(self, text, *, split_special_tokens=None):
        """Strings [B] -> WordPiece ids, int32 RaggedTensor [B, (tokens)], no special tokens added.

        ``split_special_tokens`` (default: the layer's setting) treats literal
        "[MASK]" etc. in the text as ordinary characters.
        """
        text = _as_string_tensor(text, "text")
        if text.shape.rank != 1:
            raise ValueError(f"tokenize expects a 1-D string tensor; got shape {text.shape}.")
        words = self.split_words(self.normalize(text, split_special_tokens=split_special_tokens))
        unk = self._sentinels["unk"]
        limit = self.max_chars_per_word
        words = tf.ragged.map_flat_values(
            lambda w: tf.where(tf.strings.length(w, unit="UTF8_CHAR") > limit, unk, w), words
        )
        pieces = self._wordpiece.tokenize(words)  # [B, (words), (pieces)]
        return pieces.merge_dims(-2, -1)

    def pack(self, segments):
        """Trims, adds [CLS]/[SEP] and pads 1 or 2 ragged id segments [B, (tokens)] to the model inputs."""
        segments = list(segments)
        if len(segments) not in (1, 2):
            raise ValueError(f"Expected one or two segments; got {len(segments)}.")
        if len(segments) == 1:
            trimmed = [segments[0][:, : self.seq_length - 2]]
        else:
            trimmed = LongestFirstTrimmer(self.seq_length - 3).trim(segments)
        ids, type_ids = tf_text.combine_segments(
            trimmed, start_of_sequence_id=self._special_ids["cls"], end_of_segment_id=self._special_ids["sep"]
        )
        word_ids, mask = tf_text.pad_model_inputs(ids, self.seq_length, pad_value=self._special_ids["pad"])
        type_ids, _ = tf_text.pad_model_inputs(type_ids, self.seq_length, pad_value=0)
        outputs = {
            "input_word_ids": tf.cast(word_ids, tf.int32),
            "input_mask": tf.cast(mask, tf.int32),
            "input_type_ids": tf.cast(type_ids, tf.int32),
        }
        for value in outputs.values():
            value.set_shape([None, self.seq_length])
        return outputs

    def call(self, inputs):
        if isinstance(inputs, dict):
            raise ValueError("Preprocessor takes a string tensor or a list of two; got a dict.")
        if isinstance(inputs, (list, tuple)):
            if len(inputs) not in (1, 2):
                raise ValueError(
                    f"Preprocessor takes one string tensor or a list of two (sentence pairs); got {len(inputs)}."
                )
            texts = [_as_batch(t, f"inputs[{i}]") for i, t in enumerate(inputs)]
        else:
            texts = [_as_batch(inputs, "inputs")]
        return self.pack([self.tokenize(t) for t in texts])

    def compute_output_shape(self, input_shape):
        shape = tf.TensorShape([None, self.seq_length])
        return {"input_word_ids": shape, "input_mask": shape, "input_type_ids": shape}


def _re2_literal(token: str) -> str:
    return "".join("\\" + c if not c.isalnum() and ord(c) < 128 else c for c in token)


def _as_string_tensor(value, name):
    if isinstance(value, tf.RaggedTensor):
        raise ValueError(f"{name} must be a dense string tensor; got a RaggedTensor.")
    if not isinstance(value, tf.Tensor):
        try:
            value = tf.convert_to_tensor(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name} must be strings; got {type(value).__name__} ({error}).") from error
    if value.dtype != tf.string:
        raise ValueError(f"{name} must be a tf.string tensor; got dtype {value.dtype.name}.")
    return value


def _as_batch(value, name):
    """String tensor of rank 0, 1 or [B, 1] -> rank 1."""
    value = _as_string_tensor(value, name)
    rank = value.shape.rank
    if rank == 0:
        return tf.reshape(value, [1])
    if rank == 1:
        return value
    if rank == 2 and value.shape[-1] == 1:
        return tf.squeeze(value, -1)
    raise ValueError(f"{name} must be a 1-D batch of strings (or [batch, 1]); got shape {value.shape}.")
