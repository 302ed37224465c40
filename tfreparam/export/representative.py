"""Representative data for int8 / int16x8 calibration: checked up front, then fed one example at a time.

Accepted forms of `representative_data`:
  * one feed: a dict of input name -> array (a batch of examples);
  * an iterable of feeds (a list, a generator, a `tf.data.Dataset` of dicts);
  * a zero-argument callable returning such an iterable (the TFLite
    converter's own `representative_dataset` convention).
A feed may also be a list / tuple of arrays in the model's input order (what
`representative_dataset` generators often yield).

Every feed is checked against the model's inputs before the converter
starts: names, shapes, a consistent batch size, and finite float values. An
`inf` in calibration data crashes the converter's calibrator (segfault) and a
NaN silently leaves float ops in a "full-integer" file, so both are refused.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import numpy as np
import tensorflow as tf


def _describe(specs) -> str:
    return ", ".join(f"{name}: {_shape(spec.shape)} {spec.dtype.name}" for name, spec in specs.items())


def _shape(shape) -> str:
    dims = ["batch" if i == 0 else ("any" if d is None else str(d)) for i, d in enumerate(tf.TensorShape(shape))]
    return "(" + ", ".join(dims) + ")"


def _feeds(data) -> Iterable:
    if isinstance(data, Mapping):
        return [data]
    if callable(data):
        try:
            data = data()
        except TypeError as error:
            raise TypeError(
                "representative_data is callable, so it must take no arguments and return an iterable of "
                f"feeds (the TFLite converter's representative_dataset convention); calling it failed: {error}"
            ) from error
    if isinstance(data, Mapping) or not isinstance(data, Iterable) or isinstance(data, (str, bytes, np.ndarray)):
        raise TypeError(
            "representative_data must be a dict of input name -> array, an iterable of such dicts, or a "
            f"zero-argument callable returning one; got {type(data).__name__}."
        )
    return data


def _as_named(feed, index, specs) -> dict:
    names = list(specs)
    if isinstance(feed, (list, tuple)) and len(feed) == len(names) and all(hasattr(v, "shape") for v in feed):
        feed = dict(zip(names, feed))
    if not isinstance(feed, Mapping):
        raise ValueError(
            f"representative_data must be dicts of input name -> array (one batch each); feed {index} is a "
            f"{type(feed).__name__}. The model's inputs: {_describe(specs)}."
        )
    given = [str(name) for name in feed]
    if sorted(given) != sorted(names):
        raise ValueError(
            f"representative_data feed {index} has inputs {sorted(given)}; the model's inputs are "
            f"{_describe(specs)}."
        )
    return {name: np.asarray(feed[name]) for name in names}


def _check_feed(feed, index, specs) -> int:
    """The feed's batch size, after checking shapes and values against `specs`."""
    sizes = set()
    for name, value in feed.items():
        spec = specs[name]
        expected = spec.shape.as_list()
        if value.ndim != len(expected) or any(e is not None and e != v for e, v in zip(expected[1:], value.shape[1:])):
            raise ValueError(
                f"representative_data feed {index}: input {name!r} has shape {tuple(value.shape)}; the model "
                f"takes {_shape(expected)} (first axis: the batch). The model's inputs: {_describe(specs)}."
            )
        if spec.dtype.is_floating or np.issubdtype(value.dtype, np.floating):
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            if bad:
                raise ValueError(
                    f"representative_data feed {index}: input {name!r} has {bad} non-finite values (inf / NaN); "
                    "calibration needs finite values (an inf crashes the converter, a NaN leaves float ops). "
                    "Clean or drop those examples."
                )
        sizes.add(value.shape[0])
    if len(sizes) != 1:
        raise ValueError(f"representative_data feed {index} mixes batch sizes {sorted(sizes)} across its inputs.")
    return sizes.pop()


def checked_feeds(data, specs: Mapping[str, tf.TensorSpec]) -> list[dict]:
    """Every feed of `data` as a dict of arrays, checked against `specs` (see the module docstring)."""
    feeds = []
    for index, feed in enumerate(_feeds(data)):
        feed = _as_named(feed, index, specs)
        if _check_feed(feed, index, specs):
            feeds.append(feed)
    if not feeds:
        raise ValueError(f"representative_data is empty: give at least one batch of inputs ({_describe(specs)}).")
    return feeds


def converter_dataset(feeds: list[dict], specs: Mapping[str, tf.TensorSpec]) -> Callable:
    """The converter's `representative_dataset`: one example at a time, in the spec's dtypes."""

    def generate():
        for feed in feeds:
            for row in range(len(next(iter(feed.values())))):
                yield {name: feed[name][row:row + 1].astype(spec.dtype.as_numpy_dtype) for name, spec in specs.items()}

    return generate


def representative_text_batches(preprocessor, sentences: Iterable[str], batch_size: int = 16) -> list[dict]:
    """Tokenized batches (dicts of int32 arrays) of real `sentences`, for int8 calibration.

    `preprocessor` is a `bert.preprocessing.Preprocessor` (or any callable from
    a string tensor to the model-input dict); its `seq_length` must match the
    export's.
    """
    sentences = list(sentences)
    if not sentences:
        raise ValueError("representative_text_batches needs at least one sentence.")
    return [{name: value.numpy() for name, value in preprocessor(tf.constant(sentences[i:i + batch_size])).items()}
            for i in range(0, len(sentences), batch_size)]
