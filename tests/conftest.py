"""Shared pytest set-up: deterministic seeds, a quiet TensorFlow, the MiniLM once per worker, memory released per module."""

import ctypes
import gc
import hashlib
import os
import sys

# Test-process settings only (the library itself never sets these).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Two pytest workers share two cores: multi-threaded OpenBLAS then spins on a
# busy machine and a 384x1536 SVD takes seconds instead of ~0.1 s.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, settings

settings.register_profile(
    "tfreparam",
    deadline=None,
    max_examples=12,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
settings.load_profile("tfreparam")


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)
    tf.random.set_seed(0)
    yield


@pytest.fixture(scope="session")
def minilm_checkpoint():
    """The bundled MiniLM (`bert.load_hf("minilm")`: `.model`, `.config`), loaded once per pytest worker.

    Shared by every module that reads it, so it is read-only: a test that changes weights builds its own
    (`bert.load_pretrained("minilm")`). The session's end checks that no test changed it.
    """
    import bert

    checkpoint = bert.load_hf("minilm")
    before = _fingerprint(checkpoint.model)
    yield checkpoint
    assert _fingerprint(checkpoint.model) == before, "a test changed the shared MiniLM's weights"


@pytest.fixture(scope="session")
def minilm_encoder(minilm_checkpoint):
    """The shared MiniLM encoder (`bert.load_pretrained("minilm")`); read-only, see `minilm_checkpoint`."""
    return minilm_checkpoint.model


def _fingerprint(model):
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(weight.numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module", autouse=True)
def _release_memory_after_module():
    """Gives a module's TensorFlow memory back once its own fixtures are gone.

    A pytest worker runs many modules (`--dist loadfile`): without this it keeps
    what each left behind. tf2onnx, Keras and TFMOT leave reference cycles
    that hold whole graphs (a MiniLM ONNX conversion: 3 GB) until a full
    collection; `clear_session` drops Keras' global graph and name counters
    (each module then starts from fresh names, as when it runs alone);
    `malloc_trim` returns the freed pages to the system.
    """
    yield
    keras = sys.modules.get("tf_keras")
    if keras is not None:
        keras.backend.clear_session()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
