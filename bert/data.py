"""Streaming BERT pre-training data (masked LM + next-sentence prediction) with tf.data.

`pretraining_dataset` reads plain-text files with `tf.data.TextLineDataset` and
does everything else in-graph: document assembly, sentence splitting,
WordPiece tokenisation (`bert.preprocessing.Preprocessor`), sentence-pair
construction, truncation, masking (TensorFlow Text's `RandomItemSelector`,
`MaskValuesChooser`, `mask_language_model`) and padding (`pad_model_inputs`).
"""

from __future__ import annotations

import os
import random

import tensorflow as tf
import tensorflow_text as tf_text

from bert.preprocessing import LongestFirstTrimmer, Preprocessor

__all__ = ["pretraining_dataset", "split_sentences"]

# Number of consecutive (shuffled) examples among which a "random next
# sentence" is drawn; independent of the batch size so that small batches
# still get negatives from many documents.
_NEGATIVE_POOL = 128
# Documents tokenised and cut into sentence pairs together.
_DOCUMENT_BATCH = 32

# A sentence ends after '.', '!', '?' or '…' (a run of them), optionally
# followed by closing quotes/brackets, where whitespace follows.
_SENTENCE_END = r"""([.!?…]+["'”’»)\]]*)\s+"""


def split_sentences(text):
    """Splits documents into sentences (in-graph).

    A scalar string gives a 1-D string tensor; a 1-D tensor of documents a
    ragged ``[documents, (sentences)]`` one. Rule: a sentence ends after a run
    of ``.``, ``!``, ``?`` or ``…``, optionally followed by closing
    quotes/brackets (``" ' ” ’ » ) ]``), when whitespace follows. Sentences are
    stripped; empty ones are dropped. The rule is deliberately simple:
    abbreviations such as "e.g. this" or "Dr. Watson" also end a sentence,
    while "3.14" or "U.S.A." without a following space do not.
    """
    text = tf.convert_to_tensor(text, tf.string)
    if text.shape.rank not in (0, 1):
        raise ValueError(f"split_sentences takes a scalar or 1-D string tensor; got shape {text.shape}.")
    text = tf.strings.regex_replace(text, _SENTENCE_END, "\\1\n")
    sentences = tf.strings.split(text, "\n")
    if text.shape.rank == 0:
        sentences = tf.strings.strip(sentences)
        return tf.boolean_mask(sentences, tf.strings.length(sentences) > 0)
    sentences = tf.ragged.map_flat_values(tf.strings.strip, sentences)
    return tf.ragged.boolean_mask(sentences, tf.strings.length(sentences) > 0)


def pretraining_dataset(
    files,
    tokenizer_or_vocab="minilm",
    seq_length: int = 128,
    max_predictions_per_seq: int = 20,
    batch_size: int = 32,
    mask_rate: float = 0.15,
    seed: int | None = None,
    shuffle_buffer: int = 10_000,
    documents: str = "blank_line",
    input_context: tf.distribute.InputContext | None = None,
    repeat: bool = False,
    drop_remainder: bool = True,
    label_keys: tuple[str, str] = ("masked_lm_ids", "next_sentence_labels"),
    sample_weights: bool = False,
) -> tf.data.Dataset:
    """A batched dataset of BERT pre-training examples, ready for ``model.fit``.

    Each element is ``(features, labels)``::

        features = {
            "input_word_ids":       int32 [B, seq_length]   masked token ids, [PAD]-padded
            "input_mask":           int32 [B, seq_length]   1 for real tokens, 0 for padding
            "input_type_ids":       int32 [B, seq_length]   0 for [CLS] A [SEP], 1 for B [SEP], 0 padding
            "masked_lm_positions":  int32 [B, max_pred]     positions of the selected tokens (ascending), 0-padded
            "masked_lm_ids":        int32 [B, max_pred]     original ids at those positions, 0-padded
            "masked_lm_weights":  float32 [B, max_pred]     1.0 for real predictions, 0.0 for padding
            "next_sentence_labels": int32 [B, 1]            0 = B follows A (IsNext), 1 = B is random
        }
        labels = {
            "masked_lm_ids":        same tensor as features["masked_lm_ids"]
            "next_sentence_labels": same tensor as features["next_sentence_labels"]
        }

    The labels are also in the features so that a pre-trainer can compute its
    losses itself (weighting the MLM loss with ``masked_lm_weights``).

    Keras' ``compile(loss={...})`` matches label keys to *output names*; for a
    model with outputs ``{"mlm_logits", "nsp_logits"}`` and a per-output loss
    dict pass ``label_keys=("mlm_logits", "nsp_logits")`` (and
    ``sample_weights=True`` to get a third element
    ``{label_keys[0]: masked_lm_weights}`` so padded predictions carry no
    loss). With the default keys, ``fit`` needs a model that computes its own
    loss (e.g. in ``train_step`` / ``compute_loss``).

    Pipeline (all in-graph, streaming; nothing reads the corpus into Python):

    * Files: `tf.data.TextLineDataset`, interleaved, in a seeded random order.
      ``documents="blank_line"``: a document is a block of consecutive
      non-blank lines (lines joined with a space; each document is held in
      memory as one string while it is processed). ``documents="line"``: every
      non-blank line is a document.
    * Sentences: `split_sentences` (regex rule documented there), then
      WordPiece ids; sentences without tokens are dropped.
    * Pairs: each document's sentences are grouped into consecutive chunks of
      about ``(seq_length - 3) // 2`` tokens (by where each sentence ends; a
      document whose sentences all fit one chunk is cut in the middle), and
      chunk k (segment A, one or more sentences) is paired with chunk k + 1
      (segment B, the actual next sentences). Documents with a single sentence
      give no pairs, so an empty dataset is possible (e.g. one sentence per
      line with ``documents="line"``). Literal special tokens in the corpus
      ("[SEP]") are ordinary text here.
    * Next-sentence labels: pairs are shuffled (``shuffle_buffer``); then for
      each pair a fair coin decides whether B is replaced by the B of another
      pair, from another document, drawn among the next 128 shuffled pairs
      (label 1) or kept (label 0). If no other document is in that window (a
      one-document corpus) the pair keeps its true B.
    * Truncation to ``seq_length`` with Hugging Face's ``longest_first`` rule
      (`bert.preprocessing.LongestFirstTrimmer`), then ``[CLS] A [SEP] B [SEP]``.
    * Masking: `RandomItemSelector` picks ``min(ceil(mask_rate * n),
      max_predictions_per_seq)`` of the n non-special tokens of each sequence
      ([CLS]/[SEP]/[PAD] are never picked); `MaskValuesChooser` replaces 80 % of
      them with [MASK], 10 % with a uniformly random id, and keeps 10 %.
    * Randomness is stateless and derived from ``seed`` (shuffles, coins,
      masking), so two iterations of the dataset, or two datasets built with
      the same arguments, give identical batches; ``seed=None`` draws a seed.

    Args:
      files: a path, a glob pattern, or a list of them (plain UTF-8 text).
      tokenizer_or_vocab: a `Preprocessor`, ``"minilm"``, a Hugging Face
        checkpoint directory, a ``vocab.txt`` path or a list of tokens (the
        last two assume an uncased vocabulary).
      seq_length: tokens per example including [CLS] and two [SEP] (>= 5).
      max_predictions_per_seq: cap on masked positions per sequence.
      batch_size: the *global* batch size. With ``input_context`` each input
        pipeline batches ``input_context.get_per_replica_batch_size(batch_size)``
        examples (use `tf.distribute.Strategy.distribute_datasets_from_function`);
        without it the dataset is batched with ``batch_size`` (what
        ``experimental_distribute_dataset`` and plain ``model.fit`` expect).
      mask_rate: fraction of non-special tokens to select.
      seed: integer seed, or None for a fresh random one.
      shuffle_buffer: pairs held by the shuffle buffer (filled before the
        first batch; with ``repeat=True`` on a tiny corpus it fills with many
        passes, so keep it near the corpus size there).
      documents: ``"blank_line"`` or ``"line"`` (see above).
      input_context: a `tf.distribute.InputContext`. Files are sharded across
        the ``num_input_pipelines`` pipelines when there are at least that many
        files; otherwise every pipeline reads all files and keeps every n-th
        document.
      repeat: repeat the corpus forever (each pass gets new masks and pairs;
        a corpus without any sentence pair still ends).
      drop_remainder: drop a last, smaller batch (static batch dimension).
      label_keys: keys of the MLM and NSP labels in the labels dict.
      sample_weights: also yield ``{label_keys[0]: masked_lm_weights}``.
    """
    preprocessor = _as_preprocessor(tokenizer_or_vocab)
    seq_length, max_predictions_per_seq = int(seq_length), int(max_predictions_per_seq)
    label_keys = tuple(label_keys)
    _check_arguments(seq_length, max_predictions_per_seq, mask_rate, batch_size, documents, label_keys, shuffle_buffer)
    paths = _resolve_files(files)
    if not any(_has_text(path) for path in paths):
        raise ValueError(f"The corpus has no documents: every file of {paths} is empty or blank.")
    seed = random.SystemRandom().randrange(2**31) if seed is None else int(seed)
    num_pipelines, pipeline_id, per_replica_batch = 1, 0, int(batch_size)
    if input_context is not None:
        num_pipelines, pipeline_id = input_context.num_input_pipelines, input_context.input_pipeline_id
        per_replica_batch = input_context.get_per_replica_batch_size(int(batch_size))

    docs = _documents(paths, documents, seed, num_pipelines, pipeline_id)
    pairs = _sentence_pairs(docs, preprocessor, seq_length, int(shuffle_buffer), seed, repeat)
    # Distinct, reproducible randomness per input pipeline.
    base_seed = tf.constant([seed, 7919 * pipeline_id + 1], tf.int64)
    examples = _masked_examples(pairs, preprocessor, seq_length, max_predictions_per_seq, mask_rate, base_seed)
    batched = examples.batch(per_replica_batch, drop_remainder=drop_remainder)
    return batched.map(_label_splitter(label_keys, sample_weights)).prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------- pipeline steps
def _check_arguments(seq_length, max_predictions_per_seq, mask_rate, batch_size, documents, label_keys,
                     shuffle_buffer):
    if seq_length < 5:
        raise ValueError(
            f"seq_length must be >= 5 ([CLS] A [SEP] B [SEP] with one token per segment); got {seq_length}."
        )
    if max_predictions_per_seq < 1:
        raise ValueError(f"max_predictions_per_seq must be >= 1; got {max_predictions_per_seq}.")
    if not 0.0 < float(mask_rate) <= 1.0:
        raise ValueError(f"mask_rate must be in (0, 1]; got {mask_rate}.")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
    if documents not in ("blank_line", "line"):
        raise ValueError(f'documents must be "blank_line" or "line"; got {documents!r}.')
    if len(label_keys) != 2 or len(set(label_keys)) != 2 or not all(isinstance(k, str) for k in label_keys):
        raise ValueError(f"label_keys must be two distinct strings; got {label_keys!r}.")
    if int(shuffle_buffer) < 1:
        raise ValueError(f"shuffle_buffer must be >= 1; got {shuffle_buffer}.")


def _documents(paths, documents, seed, num_pipelines, pipeline_id) -> tf.data.Dataset:
    """(key, text) of every document this input pipeline reads; the key tells documents apart."""
    file_ids = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), paths))
    shard_files = num_pipelines > 1 and len(paths) >= num_pipelines
    if shard_files:
        file_ids = file_ids.shard(num_pipelines, pipeline_id)
    file_ids = file_ids.shuffle(len(paths), seed=seed, reshuffle_each_iteration=False)

    @tf.autograph.experimental.do_not_convert
    def read_documents(file_id, path):
        lines = tf.data.TextLineDataset(path)
        if documents == "line":
            docs = lines.map(tf.strings.strip).filter(lambda line: tf.strings.length(line) > 0)
        else:
            docs = lines.concatenate(tf.data.Dataset.from_tensors(tf.constant(""))).scan(
                tf.constant(""), _accumulate_blank_line_blocks
            )
            docs = docs.filter(_block_done).map(_block_text)
        # A document's key (file, index) tells documents apart for random pairs.
        return docs.enumerate().map(lambda index, doc: (file_id * (1 << 32) + index, doc))

    docs = file_ids.interleave(
        read_documents, cycle_length=min(len(paths), 4), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    if num_pipelines > 1 and not shard_files:
        docs = docs.shard(num_pipelines, pipeline_id)
    return docs


def _sentence_pairs(docs, preprocessor, seq_length, shuffle_buffer, seed, repeat) -> tf.data.Dataset:
    """Shuffled (A tokens, B tokens, document key) of consecutive chunks of each document."""
    chunk_target = (seq_length - 3) // 2
    pairs = (
        docs.batch(_DOCUMENT_BATCH)
        .map(
            tf.autograph.experimental.do_not_convert(
                lambda keys, texts: _document_pairs(keys, texts, preprocessor, chunk_target)
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .unbatch()
    )
    if repeat:
        # Repeating the pairs (not the files) ends, instead of spinning, on a
        # corpus that yields none; the group index in `_masked_examples` keeps
        # counting, so every pass gets new random pairs and masks.
        pairs = pairs.repeat()
    return pairs.shuffle(shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=False)


def _masked_examples(pairs, preprocessor, seq_length, max_predictions_per_seq, mask_rate, base_seed):
    """Unbatched feature dicts: random next sentences, truncation, [CLS] A [SEP] B [SEP], masking, padding."""
    sep_id = preprocessor.special_token_ids["sep"]
    cls_id = preprocessor.special_token_ids["cls"]
    pad_id = preprocessor.special_token_ids["pad"]
    mask_id = preprocessor.special_token_ids["mask"]
    vocab_size = preprocessor.vocab_size
    trimmer = LongestFirstTrimmer(seq_length - 3)

    @tf.autograph.experimental.do_not_convert
    def make_examples(group_index, group):
        first, second, keys = group
        group_seed = tf.random.experimental.stateless_fold_in(base_seed, group_index)
        seeds = tf.random.experimental.stateless_split(group_seed, 4)
        second, labels = _random_next(second, keys, seeds[0], seeds[1])
        first, second = trimmer.trim([first, second])
        ids, type_ids = _combine_pair(first, second, cls_id, sep_id)
        selector = tf_text.RandomItemSelector(
            max_selections_per_batch=max_predictions_per_seq,  # per row for a [B, (tokens)] input
            selection_rate=mask_rate,
            unselectable_ids=[cls_id, sep_id, pad_id],
            shuffle_fn=_stateless_row_shuffle(seeds[2]),
        )
        chooser = _StatelessMaskValuesChooser(vocab_size, mask_id, seeds[3])
        masked_ids, positions, original = tf_text.mask_language_model(ids, selector, chooser)
        word_ids, input_mask = tf_text.pad_model_inputs(masked_ids, seq_length, pad_value=pad_id)
        type_ids, _ = tf_text.pad_model_inputs(type_ids, seq_length, pad_value=0)
        positions, original, weights = _sorted_predictions(positions, original, max_predictions_per_seq)
        return {
            "input_word_ids": tf.cast(word_ids, tf.int32),
            "input_mask": tf.cast(input_mask, tf.int32),
            "input_type_ids": tf.cast(type_ids, tf.int32),
            "masked_lm_positions": positions,
            "masked_lm_ids": original,
            "masked_lm_weights": weights,
            "next_sentence_labels": labels[:, tf.newaxis],
        }

    # Random next sentences are drawn within groups of _NEGATIVE_POOL consecutive pairs.
    examples = pairs.ragged_batch(_NEGATIVE_POOL).enumerate()
    return examples.map(make_examples, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()


def _label_splitter(label_keys, sample_weights):
    """features -> (features, labels[, sample weights]) as `model.fit` takes them."""
    mlm_key, nsp_key = label_keys

    def split_labels(features):
        labels = {mlm_key: features["masked_lm_ids"], nsp_key: features["next_sentence_labels"]}
        if sample_weights:
            return features, labels, {mlm_key: features["masked_lm_weights"]}
        return features, labels

    return split_labels


# ----------------------------------------------------------------- helpers
def _as_preprocessor(tokenizer_or_vocab) -> Preprocessor:
    if isinstance(tokenizer_or_vocab, Preprocessor):
        return tokenizer_or_vocab
    if isinstance(tokenizer_or_vocab, (list, tuple)):
        return Preprocessor(list(tokenizer_or_vocab))
    if isinstance(tokenizer_or_vocab, (str, os.PathLike)):
        path = os.fspath(tokenizer_or_vocab)
        if path == "minilm" or os.path.isdir(path):
            return Preprocessor.from_pretrained(path)
        if os.path.isfile(path):
            return Preprocessor(path)
        raise ValueError(f"{path!r} is neither 'minilm', a checkpoint directory nor a vocab.txt file.")
    raise ValueError(
        "tokenizer_or_vocab must be a Preprocessor, 'minilm', a checkpoint directory, a vocab file or a token "
        f"list; got {type(tokenizer_or_vocab).__name__}."
    )


def _resolve_files(files) -> list[str]:
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    files = [os.fspath(f) for f in files]
    if not files:
        raise ValueError("No input files given.")
    paths, missing = [], []
    for pattern in files:
        if tf.io.gfile.exists(pattern) and not tf.io.gfile.isdir(pattern):
            paths.append(pattern)
            continue
        matches = sorted(m for m in tf.io.gfile.glob(pattern) if not tf.io.gfile.isdir(m))
        if matches:
            paths.extend(matches)
        else:
            missing.append(pattern)
    if missing:
        raise ValueError(f"Input file(s) not found: {missing}.")
    return paths


def _has_text(path: str) -> bool:
    """Whether a file has a non-blank line (reads lines only until the first one)."""
    with tf.io.gfile.GFile(path, "r") as f:
        for line in f:
            if line.strip():
                return True
    return False


def _block_done(block, done):
    return done


def _block_text(block, done):
    return block


def _accumulate_blank_line_blocks(block, line):
    """scan step: joins non-blank lines; emits (block, True) at a blank line, else ("", False)."""
    line = tf.strings.strip(line)
    blank = tf.equal(tf.strings.length(line), 0)
    joined = tf.where(
        tf.equal(tf.strings.length(block), 0), line, tf.strings.join([block, line], separator=" ")
    )
    new_block = tf.where(blank, tf.constant(""), joined)
    emitted = tf.where(blank, block, tf.constant(""))
    done = tf.logical_and(blank, tf.strings.length(block) > 0)
    return new_block, (emitted, done)


def _previous(values, first):
    """values shifted right by one, with `first` in front (same length)."""
    return tf.concat([tf.fill([1], tf.cast(first, values.dtype)), values[:-1]], 0)[: tf.size(values)]


def _document_pairs(keys, docs, preprocessor, target):
    """A batch of documents -> (A chunks, B chunks, document keys) of all their consecutive chunk pairs.

    Sentences are grouped into chunks by the ``target``-token window in which
    each sentence ends (counted from the start of its document); a document
    whose sentences all land in one chunk is cut before its middle sentence.
    Returns ragged int32 [P, (tokens)] twice and int64 [P].
    """
    # Sentences as in `split_sentences`; empty ones need no filtering here as
    # sentences without tokens are dropped below.
    sentences = tf.strings.split(tf.strings.regex_replace(docs, _SENTENCE_END, "\\1\n"), "\n")  # [D, (S)]
    # Corpus text is never read as special tokens: "[SEP]" would break the layout.
    tokens = preprocessor.tokenize(sentences.flat_values, split_special_tokens=True)  # [S, (T)]
    keep = tokens.row_lengths() > 0  # rows without tokens hold no values: only drop their lengths
    doc = tf.boolean_mask(sentences.value_rowids(), keep)
    lengths = tf.boolean_mask(tokens.row_lengths(), keep)
    num_docs = tf.shape(docs, out_type=tf.int64)[0]
    index = tf.range(tf.size(doc, out_type=tf.int64))

    first_in_doc = tf.not_equal(doc, _previous(doc, -1))
    ends = tf.cumsum(lengths)
    doc_start = tf.math.unsorted_segment_min(ends - lengths, doc, num_docs)
    window = (ends - tf.gather(doc_start, doc) - 1) // target
    new_chunk = tf.logical_or(first_in_doc, tf.not_equal(window, _previous(window, -1)))
    # Documents whose sentences share one chunk: cut before the middle sentence.
    sentences_in_doc = tf.gather(tf.math.unsorted_segment_sum(tf.ones_like(doc), doc, num_docs), doc)
    chunks_in_doc = tf.gather(tf.math.unsorted_segment_sum(tf.cast(new_chunk, tf.int64), doc, num_docs), doc)
    index_in_doc = index - tf.gather(tf.math.unsorted_segment_min(index, doc, num_docs), doc)
    middle = tf.maximum(sentences_in_doc // 2, 1)
    cut = (chunks_in_doc == 1) & (sentences_in_doc >= 2) & (index_in_doc == middle)
    new_chunk = tf.logical_or(new_chunk, cut)

    chunk = tf.cumsum(tf.cast(new_chunk, tf.int64)) - 1
    num_chunks = tf.reduce_sum(tf.cast(new_chunk, tf.int64))
    chunks = tf.RaggedTensor.from_row_lengths(
        tokens.values, tf.math.unsorted_segment_sum(lengths, chunk, num_chunks), validate=False
    )
    chunk_doc = tf.boolean_mask(doc, new_chunk)
    pair = tf.where(tf.equal(chunk_doc[:-1], chunk_doc[1:]))[:, 0]
    return tf.gather(chunks, pair), tf.gather(chunks, pair + 1), tf.gather(keys, tf.gather(chunk_doc, pair))


def _combine_pair(first, second, cls_id, sep_id):
    """``[CLS] A [SEP] B [SEP]`` and type ids 0 / 1 for ragged [B, (tokens)] segments.

    Same result as ``tensorflow_text.combine_segments([A, B], cls_id, sep_id)``
    from a handful of flat scatter ops (the general version adds ~500 graph ops,
    which every dataset pays for in tracing and start-up time).
    """
    length_a, length_b = first.row_lengths(), second.row_lengths()
    total = length_a + length_b + 3
    splits = tf.concat([tf.zeros([1], total.dtype), tf.cumsum(total)], 0)
    start = splits[:-1]
    row_a, row_b = first.value_rowids(), second.value_rowids()
    in_a = tf.range(tf.size(row_a, out_type=row_a.dtype)) - tf.gather(first.row_starts(), row_a)
    in_b = tf.range(tf.size(row_b, out_type=row_b.dtype)) - tf.gather(second.row_starts(), row_b)
    where_a = tf.gather(start, row_a) + 1 + in_a
    where_b = tf.gather(start + 2 + length_a, row_b) + in_b
    specials = tf.concat([start, start + 1 + length_a, start + total - 1], 0)
    rows = tf.size(start)
    special_ids = tf.concat([tf.fill([rows], cls_id), tf.fill([rows], sep_id), tf.fill([rows], sep_id)], 0)
    positions = tf.concat([where_a, where_b, specials], 0)[:, tf.newaxis]
    size = splits[-1:]
    ids = tf.scatter_nd(positions, tf.concat([first.values, second.values, tf.cast(special_ids, first.dtype)], 0), size)
    second_part = tf.concat([where_b, start + total - 1], 0)[:, tf.newaxis]
    type_ids = tf.scatter_nd(second_part, tf.ones(tf.shape(second_part)[:1], first.dtype), size)
    ids.set_shape([None])
    type_ids.set_shape([None])
    return (
        tf.RaggedTensor.from_row_splits(ids, splits, validate=False),
        tf.RaggedTensor.from_row_splits(type_ids, splits, validate=False),
    )


def _random_next(second, keys, coin_seed, pick_seed):
    """Replaces B by another document's B for about half the rows; returns (B, labels int32)."""
    size = tf.shape(keys)[0]
    want_random = tf.random.stateless_uniform([size], coin_seed) < 0.5
    other_document = tf.not_equal(keys[:, tf.newaxis], keys[tf.newaxis, :])
    scores = tf.where(other_document, tf.random.stateless_uniform([size, size], pick_seed), -1.0)
    pick = tf.argmax(scores, axis=1, output_type=tf.int32)
    use_random = tf.logical_and(want_random, tf.reduce_any(other_document, axis=1))
    rows = tf.where(use_random, pick, tf.range(size))
    return tf.gather(second, rows), tf.cast(use_random, tf.int32)


def _stateless_row_shuffle(seed):
    """A `RandomItemSelector` shuffle_fn without hidden RNG state.

    The selector shuffles the selectable positions of each row separately; the
    flat positions differ between rows, so folding the first one into the
    seed gives every row its own permutation.
    """

    def shuffle(positions):
        first = tf.reduce_sum(positions[:1])
        row_seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(first, tf.int64))
        return tf.random.experimental.stateless_shuffle(positions, row_seed)

    return shuffle


class _StatelessMaskValuesChooser(tf_text.MaskValuesChooser):
    """`MaskValuesChooser` (80 % [MASK], 10 % random id, 10 % unchanged) with stateless randomness.

    The stock chooser draws from stateful RNG ops, whose sequence depends on
    the order in which parallel tf.data map calls reach them; a per-batch seed
    makes the dataset reproducible.
    """

    def __init__(self, vocab_size, mask_token, seed, mask_token_rate=0.8, random_token_rate=0.1):
        super().__init__(vocab_size, mask_token, mask_token_rate, random_token_rate)
        self._seed = seed

    def get_mask_values(self, masked_lm_ids):
        ids = masked_lm_ids.merge_dims(1, -1) if masked_lm_ids.ragged_rank > 1 else masked_lm_ids
        flat = ids.flat_values
        seeds = tf.random.experimental.stateless_split(self._seed, 2)
        draw = tf.random.stateless_uniform(tf.shape(flat), seeds[0])
        random_ids = tf.random.stateless_uniform(
            tf.shape(flat), seeds[1], minval=0, maxval=self.vocab_size, dtype=flat.dtype
        )
        mask_rate = self._mask_token_rate
        use_mask = draw < mask_rate
        use_random = tf.logical_and(draw >= mask_rate, draw < mask_rate + self.random_token_rate)
        values = tf.where(use_mask, tf.cast(self.mask_token, flat.dtype), flat)
        values = tf.where(use_random, random_ids, values)
        return ids.with_flat_values(values)


def _sorted_predictions(positions, original, max_predictions):
    """Ragged [B, (k)] positions/ids -> ascending, padded int32 [B, max] plus float32 weights."""
    big = tf.cast(tf.int32.max, positions.dtype)
    positions = positions.to_tensor(default_value=big, shape=[None, max_predictions])
    original = tf.cast(original.to_tensor(default_value=0, shape=[None, max_predictions]), tf.int32)
    order = tf.argsort(positions, axis=1, stable=True)
    positions = tf.gather(positions, order, batch_dims=1)
    original = tf.gather(original, order, batch_dims=1)
    real = positions != big
    positions = tf.cast(tf.where(real, positions, tf.zeros_like(positions)), tf.int32)
    return positions, original, tf.cast(real, tf.float32)
