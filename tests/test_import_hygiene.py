"""Importing tfreparam leaves global TensorFlow / Keras state alone."""

import json
import subprocess
import sys

_PROBE = r"""
import json, os, sys, logging
import tensorflow as tf
import tf_keras as keras

def snapshot():
    return {
        "env": dict(os.environ),
        "policy": keras.mixed_precision.global_policy().name,
        "tf_log_level": tf.get_logger().level,
        "root_log_level": logging.getLogger().level,
        "floatx": keras.backend.floatx(),
        "eager": tf.executing_eagerly(),
    }

before = snapshot()
sys.stderr.write("@@MARK@@\n"); sys.stderr.flush()
import tfreparam, tfreparam.layers, bert
print(json.dumps({"before": before, "after": snapshot()}))
"""


def test_import_changes_no_global_state():
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300, check=True
    )
    state = json.loads(result.stdout.strip().splitlines()[-1])
    assert state["after"] == state["before"]
    # Nothing printed by importing tfreparam itself.
    after_mark = result.stderr.split("@@MARK@@", 1)[1].strip()
    assert after_mark == "", after_mark
