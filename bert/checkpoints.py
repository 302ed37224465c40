"""Loading pretrained BERT weights: Hugging Face directories and Google TF1 checkpoints.

Both loaders go through one name map from our layer names to each format's
tensor names, so a weight is either loaded with a checked shape or reported:
missing, unexpected and mis-shaped tensors are summarised together in one
short error that names the config field the checkpoint disagrees with.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from bert.config import BertConfig
from bert.encoder import build_encoder
from bert.heads import build_classifier, build_pretraining_network
from bert.hf_weights import encoder_prefix, read_hf_checkpoint
from tfreparam.surgery import reparameterize

_logger = logging.getLogger(__name__)

HEAD_PREFIXES = ("mlm/", "nsp/", "classifier/")
# `load_hf(head=...)` values: the task heads a Hugging Face checkpoint can carry.
HEADS = ("classifier",)


@dataclasses.dataclass(frozen=True)
class _Entry:
    layer: str  # our layer name
    index: int  # position in layer.get_weights()
    hf: str
    google: str
    # HF stores Linear weights (out, in) and Google stores NSP weights (2, in);
    # Keras wants (in, out).
    transpose_hf: bool
    transpose_google: bool


def _name_map(config: BertConfig, with_heads: bool, classifier: bool = False) -> list[_Entry]:
    entries = []

    def add(layer, index, hf, google, transpose_hf=False, transpose_google=False):
        entries.append(_Entry(layer, index, hf, google, transpose_hf, transpose_google))

    def dense(layer, hf, google):
        add(layer, 0, f"{hf}.weight", f"{google}/kernel", transpose_hf=True)
        add(layer, 1, f"{hf}.bias", f"{google}/bias")

    def norm(layer, hf, google):
        add(layer, 0, f"{hf}.weight", f"{google}/gamma")
        add(layer, 1, f"{hf}.bias", f"{google}/beta")

    add("embeddings/word", 0, "embeddings.word_embeddings.weight", "bert/embeddings/word_embeddings")
    add("embeddings/type", 0, "embeddings.token_type_embeddings.weight", "bert/embeddings/token_type_embeddings")
    add("embeddings/position", 0, "embeddings.position_embeddings.weight", "bert/embeddings/position_embeddings")
    norm("embeddings/layer_norm", "embeddings.LayerNorm", "bert/embeddings/LayerNorm")
    for i in range(config.num_layers):
        ours, hf, g = f"layer_{i}", f"encoder.layer.{i}", f"bert/encoder/layer_{i}"
        for part in ("query", "key", "value"):
            dense(f"{ours}/attention/{part}", f"{hf}.attention.self.{part}", f"{g}/attention/self/{part}")
        dense(f"{ours}/attention/output", f"{hf}.attention.output.dense", f"{g}/attention/output/dense")
        norm(f"{ours}/attention/layer_norm", f"{hf}.attention.output.LayerNorm", f"{g}/attention/output/LayerNorm")
        dense(f"{ours}/ffn/intermediate", f"{hf}.intermediate.dense", f"{g}/intermediate/dense")
        dense(f"{ours}/ffn/output", f"{hf}.output.dense", f"{g}/output/dense")
        norm(f"{ours}/ffn/layer_norm", f"{hf}.output.LayerNorm", f"{g}/output/LayerNorm")
    dense("pooler/dense", "pooler.dense", "bert/pooler/dense")
    if with_heads:
        dense("mlm/transform", "cls.predictions.transform.dense", "cls/predictions/transform/dense")
        norm("mlm/layer_norm", "cls.predictions.transform.LayerNorm", "cls/predictions/transform/LayerNorm")
        add("mlm/output_bias", 0, "cls.predictions.bias", "cls/predictions/output_bias")
        add("nsp/dense", 0, "cls.seq_relationship.weight", "cls/seq_relationship/output_weights",
            transpose_hf=True, transpose_google=True)
        add("nsp/dense", 1, "cls.seq_relationship.bias", "cls/seq_relationship/output_bias")
    if classifier:  # BertForSequenceClassification's Linear(hidden, num_labels) on the pooled output
        # Google's run_classifier.py names it output_weights (num_labels, hidden) / output_bias.
        add("classifier/dense", 0, "classifier.weight", "output_weights", transpose_hf=True, transpose_google=True)
        add("classifier/dense", 1, "classifier.bias", "output_bias")
    return entries


def _assign(model: keras.Model, entries, lookup: Callable[[_Entry], Optional[np.ndarray]],
            available: set, used_name: Callable[[_Entry], str], transpose: Callable[[_Entry], bool],
            strict: bool, source: str, config: BertConfig, config_name: str, num_labels: Optional[int] = None):
    """Loads every entry via `lookup`; raises one short error summarising all problems."""
    missing, mismatched, fresh_heads = [], [], set()
    missing_heads_only = True
    new_weights = {}
    for entry in entries:
        value = lookup(entry)
        layer = model.get_layer(entry.layer)
        if value is None:
            if not strict and entry.layer.startswith(HEAD_PREFIXES):
                fresh_heads.add(entry.layer.split("/")[0])
                continue
            missing.append(used_name(entry))
            missing_heads_only &= entry.layer.startswith(HEAD_PREFIXES)
            continue
        flip = transpose(entry)
        if flip:
            value = value.T
        weights = new_weights.setdefault(entry.layer, layer.get_weights())
        expected = weights[entry.index].shape
        if value.shape != expected:  # reported in the checkpoint's layout
            found = tuple(value.shape)
            mismatched.append((used_name(entry), found[::-1] if flip else found,
                               tuple(expected)[::-1] if flip else tuple(expected)))
            continue
        weights[entry.index] = value
    unexpected = sorted(available - {used_name(e) for e in entries} - _IGNORED) if strict else []
    if missing or mismatched or unexpected:
        raise ValueError(_mismatch_message(source, config, config_name, missing, mismatched, unexpected,
                                           available, missing_heads_only, num_labels))
    for name, weights in new_weights.items():
        model.get_layer(name).set_weights(weights)
    if fresh_heads:
        _logger.warning("%s has no weights for heads %s; they are freshly initialised.", source, sorted(fresh_heads))
    return sorted(fresh_heads)


# How many tensors of each kind an error names; the rest are counted.
_SHOWN = 3
# Config fields that set a tensor dimension, for naming the likely culprit of a shape mismatch.
_WIDTH_FIELDS = ("hidden_size", "intermediate_size", "vocab_size", "max_position_embeddings", "type_vocab_size",
                 "embedding_size")


def _mismatch_message(source, config, config_name, missing, mismatched, unexpected, available, heads_only,
                      num_labels=None) -> str:
    """One line: the first few tensors of each problem, their counts, and the likely cause with its fix."""
    parts = []
    if mismatched:
        parts.append(_listing("mis-shaped tensors", [f"'{name}': checkpoint {found}, model {expected}"
                                                     for name, found, expected in mismatched]))
    if missing:
        parts.append(_listing("missing tensors", [repr(name) for name in missing]))
    if unexpected:
        parts.append(_listing("unexpected tensors", [repr(name) for name in unexpected]))
    cause = _likely_cause(config, config_name, mismatched, available, num_labels)
    classifier_missing = any(name.startswith("classifier.") for name in missing)
    if cause:
        advice = f"Likely cause: {cause}; make the config match the checkpoint."
    elif not mismatched and not missing and unexpected and all(n.startswith("classifier.") for n in unexpected):
        advice = ("It is a BertForSequenceClassification checkpoint: load it with head='classifier' (or pass "
                  "strict=False to take the encoder alone).")
    elif not mismatched and heads_only and classifier_missing:
        advice = ("It has no classifier.* tensors (an encoder, not a BertForSequenceClassification checkpoint): "
                  "fine-tune it first, or pass strict=False for a freshly initialised classifier.")
    elif not mismatched and heads_only:
        advice = "To initialise the absent pretraining heads and ignore extra tensors, pass strict=False."
    else:
        advice = f"Check that {config_name} belongs to this checkpoint."
    return f"{source} does not match {config_name}: " + "; ".join(parts) + ". " + advice


def _listing(label, items):
    shown = ", ".join(items[:_SHOWN]) + (", ..." if len(items) > _SHOWN else "")
    return f"{label}: [{shown}]" + (f" ({len(items)} in all)" if len(items) > _SHOWN else "")


def _likely_cause(config, config_name, mismatched, available, num_labels=None) -> Optional[str]:
    """The config field that disagrees with the checkpoint, judged from the tensors' shapes and names."""
    for name, found, expected in mismatched:
        # classifier.weight is (num_labels, hidden) and classifier.bias (num_labels,) in the checkpoint's layout.
        if name.startswith("classifier.") and num_labels is not None and found[0] != expected[0] \
                and expected[0] == num_labels:
            return (f"{config_name} says num_labels={num_labels} (its id2label) but the checkpoint's classifier "
                    f"has {found[0]} outputs")
    widths = collections.Counter(
        (want, got) for _, found, expected in mismatched if len(found) == len(expected)
        for got, want in zip(found, expected) if got != want
    )
    if widths:
        (want, got), _ = widths.most_common(1)[0]
        fields = [name for name in _WIDTH_FIELDS if getattr(config, name) == want]
        if fields:
            return f"{config_name} says {fields[0]}={want} but the checkpoint's tensors are {got} wide"
        return f"the checkpoint's tensors are {got} wide where {config_name} implies {want}"
    layers = {int(m.group(1)) for name in available for m in [re.search(r"layer[._](\d+)\b", name)] if m}
    if layers and max(layers) + 1 != config.num_layers:
        return f"{config_name} says num_layers={config.num_layers} but the checkpoint has {max(layers) + 1} layers"
    return None


# Bookkeeping tensors that are not weights.
_IGNORED = {"embeddings.position_ids", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias",
            "global_step"}


@dataclasses.dataclass
class LoadedBert:
    config: BertConfig
    model: keras.Model  # the encoder, or the pretraining network with heads
    fresh_heads: list  # heads the checkpoint had no weights for


def load_hf(path: str, with_heads: bool = False, strict: bool = True, layer_policy=None,
            calibration_data=None, head: Optional[str] = None, **encoder_kwargs) -> LoadedBert:
    """Reads a Hugging Face BERT directory (config.json + model.safetensors) with numpy.

    Returns the encoder, or with `with_heads` the pretraining network whose MLM/NSP
    heads are loaded when the checkpoint has them (freshly initialised and
    listed in `fresh_heads` otherwise, which needs strict=False). With
    `head="classifier"`, a `BertForSequenceClassification` directory becomes
    `bert.build_classifier` with its weights: the pooler (tanh dense on
    [CLS]), dropout, then `classifier.weight/bias`, exactly Hugging Face's
    forward; `num_labels` is the length of config.json's `id2label` (or its
    `num_labels`, else 2 as in Hugging Face) and the dropout its
    `classifier_dropout` (else `hidden_dropout_prob`). With a
    `layer_policy`, the loaded encoder's projections are then reparameterized
    by `tfreparam.reparameterize` (decomposed from the pretrained weights).
    """
    if head is not None and head not in HEADS:
        raise ValueError(f"head must be None (the encoder) or one of {list(HEADS)}, got {head!r}.")
    if head is not None and with_heads:
        raise ValueError("with_heads (the MLM/NSP pretraining heads) and head='classifier' exclude each other.")
    checkpoint = read_hf_checkpoint(path)
    config = BertConfig.from_hf_config(checkpoint.config)
    tensors = dict(checkpoint.tensors)
    prefix = encoder_prefix(tensors)
    if prefix:  # BertForPreTraining / BertForSequenceClassification: strip "bert." from encoder tensors
        tensors = {name[len(prefix):] if name.startswith(prefix) else name: value for name, value in tensors.items()}
    num_labels = None
    if head == "classifier":
        num_labels = classifier_num_labels(checkpoint.config, checkpoint.path)
        dropout = checkpoint.config.get("classifier_dropout")
        dropout = config.hidden_dropout if dropout is None else float(dropout)
        model = build_classifier(build_encoder(config, **encoder_kwargs), num_labels, dropout=dropout)
    else:
        model = _build(config, with_heads, encoder_kwargs)
    if not with_heads:
        tensors = {name: value for name, value in tensors.items() if not name.startswith("cls.")}
    fresh = _assign(
        model, _name_map(config, with_heads, classifier=head == "classifier"), lambda e: tensors.get(e.hf),
        set(tensors), lambda e: e.hf, lambda e: e.transpose_hf, strict,
        f"Checkpoint {checkpoint.path}", config, "its config.json", num_labels=num_labels,
    )
    model = _reparameterize(model, layer_policy, calibration_data)
    return LoadedBert(config, model, fresh)


def classifier_num_labels(hf_config: dict, source: str = "config.json") -> int:
    """The number of classes of a Hugging Face classifier config: len(id2label), else num_labels, else 2."""
    id2label = hf_config.get("id2label")
    declared = hf_config.get("num_labels")
    if id2label is not None and not isinstance(id2label, dict):
        raise ValueError(f"{source}: id2label must map class ids to names, got {str(id2label)[:80]}.")
    if id2label and declared is not None and int(declared) != len(id2label):
        raise ValueError(f"{source}: num_labels={declared} but id2label names {len(id2label)} classes; "
                         "make them agree.")
    count = len(id2label) if id2label else int(declared) if declared is not None else 2
    if count < 2:
        raise ValueError(f"{source}: a classifier needs two or more labels; its config.json gives {count}.")
    return count


def load_google_checkpoint(ckpt_prefix: str, config: BertConfig, with_heads: bool = False,
                           strict: bool = True, **encoder_kwargs) -> LoadedBert:
    """Reads an original Google BERT TF1 checkpoint (`bert/encoder/layer_N/...`, `cls/...`)."""
    try:
        reader = tf.train.load_checkpoint(ckpt_prefix)
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as error:
        raise ValueError(f"Cannot read the TF checkpoint {ckpt_prefix!r}: {error}") from error
    available = set(reader.get_variable_to_shape_map())
    model = _build(config, with_heads, encoder_kwargs)
    if not with_heads:
        available = {name for name in available if not name.startswith("cls/")}
    fresh = _assign(
        model, _name_map(config, with_heads),
        lambda e: reader.get_tensor(e.google) if e.google in available else None,
        {name for name in available if not _is_optimizer_slot(name)},
        lambda e: e.google, lambda e: e.transpose_google, strict,
        f"Checkpoint {ckpt_prefix}", config, "the BertConfig",
    )
    return LoadedBert(config, model, fresh)


def _is_optimizer_slot(name: str) -> bool:
    return name.endswith(("/adam_m", "/adam_v")) or name == "global_step"


def _build(config, with_heads, encoder_kwargs):
    if with_heads:
        return build_pretraining_network(config, build_encoder(config, **encoder_kwargs))
    return build_encoder(config, **encoder_kwargs)


def _reparameterize(model, layer_policy, calibration_data):
    if layer_policy is None:
        return model
    return reparameterize(model, layer_policy, calibration_data=calibration_data)


def load_pretrained(name_or_path: str = "minilm", **kwargs) -> keras.Model:
    """The encoder of a Hugging Face checkpoint directory; "minilm" = the bundled all-MiniLM-L6-v2."""
    return load_hf(name_or_path, **kwargs).model
