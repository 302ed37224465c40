"""Shared pytest set-up: deterministic seeds and a quiet TensorFlow."""

import os

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
