"""`recipes.conversion_cache`: a converted file is reused exactly when its model and conversion are the same."""

import os

import numpy as np
import pytest
import tf_keras as keras

import bert
from recipes import conversion_cache, exports

CONFIG = bert.BertConfig(vocab_size=120, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                         max_position_embeddings=16)


def _encoder(seed: int = 0):
    keras.utils.set_random_seed(seed)
    return bert.build_encoder(CONFIG)


class _Maker:
    """A stand-in converter: writes `content` and counts its calls."""

    def __init__(self, content: bytes = b"converted"):
        self.calls, self.content = 0, content

    def __call__(self, path):
        self.calls += 1
        with open(path, "wb") as f:
            f.write(self.content)


def test_the_same_weights_in_another_model_object_reuse_the_file(tmp_path):
    cache, make = conversion_cache.ConversionCache(str(tmp_path)), _Maker()
    first = cache.file(_encoder(), ("tflite", "dynamic", 16, None), ".tflite", make, label="original_int8")
    again = cache.file(_encoder(), ("tflite", "dynamic", 16, None), ".tflite", make, label="original_int8")
    assert make.calls == 1 and first == again and cache.hits == ["original_int8"]
    assert open(again, "rb").read() == b"converted"


@pytest.mark.parametrize("change", ["weight", "mode", "length", "representative"])
def test_any_difference_converts_afresh(tmp_path, change):
    cache, make = conversion_cache.ConversionCache(str(tmp_path)), _Maker()
    data = [{"input_word_ids": np.zeros((2, 16), np.int32)}]
    cache.file(_encoder(), ("tflite", "full", 16, data), ".tflite", make)
    model, parts = _encoder(), ["tflite", "full", 16, data]
    if change == "weight":  # one weight of one projection, by a thousandth
        kernel = model.get_layer("layer_0/attention/query").kernel
        kernel.assign(kernel.numpy() + np.eye(*kernel.shape, dtype=np.float32) * 1e-3)
    elif change == "mode":
        parts[1] = "int16x8"
    elif change == "length":
        parts[2] = 8
    else:
        parts[3] = [{"input_word_ids": np.ones((2, 16), np.int32)}]
    cache.file(model, tuple(parts), ".tflite", make)
    assert make.calls == 2 and cache.hits == []
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".tflite")]) == 2


def test_a_failed_conversion_leaves_nothing_behind(tmp_path):
    cache = conversion_cache.ConversionCache(str(tmp_path))

    def broken(path):
        with open(path, "wb") as f:
            f.write(b"half a fi")
        raise RuntimeError("converter crashed")

    with pytest.raises(RuntimeError, match="converter crashed"):
        cache.file(_encoder(), ("tflite", None, 16, None), ".tflite", broken)
    assert os.listdir(tmp_path) == []
    make = _Maker()
    cache.file(_encoder(), ("tflite", None, 16, None), ".tflite", make)
    assert make.calls == 1  # the crash cached nothing


def test_a_kept_tflite_file_is_the_converters_own_bytes(tmp_path):
    model = _encoder()
    direct = exports.tflite_bytes(model, "dynamic")
    cache = conversion_cache.ConversionCache(str(tmp_path))
    assert cache.tflite(_encoder(), "dynamic") == direct
    assert cache.tflite(_encoder(), "dynamic", label="again") == direct and cache.hits == ["again"]
