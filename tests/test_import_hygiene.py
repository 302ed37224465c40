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


_LAZY_PROBE = r"""
import json, sys, time
start = time.perf_counter()
import tfreparam as tr
seconds = time.perf_counter() - start
heavy_after_import = sorted(m for m in ("tensorflow", "tf_keras", "tensorflow_model_optimization") if m in sys.modules)
# The first name touched imports TensorFlow from inside one of our modules (tr.LowRank, tr.reparameterize and
# tr.LowRankDense each raised a circular ImportError once); our layers and bert's are registered after it.
first = type(tr.LowRank(rank=2)).__name__
import tf_keras
registered = sorted({key.split(">")[0] for key in tf_keras.saving.get_custom_objects()})
modules = ["distribute", "precision", "resilience", "distill", "fidelity", "unit_scaling", "accumulation", "allocation"]
listed = [name for name in modules if name in dir(tr)]
kinds = {name: type(getattr(tr, name)).__name__ for name in modules}
strategy = type(tr.distribute.strategy("auto")).__name__
names = {name: callable(getattr(tr, name)) for name in
         ("LowRankDense", "LoRADense", "BlockTerm", "LoRA", "reparameterize", "report", "fold", "prune", "quantize_model",
          "cluster", "save_adapters")}
print(json.dumps({"seconds": seconds, "heavy": heavy_after_import, "listed": listed, "kinds": kinds,
                  "strategy": strategy, "names": names, "first": first, "registered": registered}))
"""


def test_import_is_lazy_and_every_documented_module_is_an_attribute():
    # Issue 16.9: tr.distribute, tr.precision, ... raised AttributeError; 16.17: importing pulled in TensorFlow.
    result = subprocess.run([sys.executable, "-c", _LAZY_PROBE], capture_output=True, text=True, timeout=300,
                            check=True)
    state = json.loads(result.stdout.strip().splitlines()[-1])
    assert state["heavy"] == [] and state["seconds"] < 1.0, state
    assert len(state["listed"]) == 8, state["listed"]
    assert set(state["kinds"].values()) == {"module"}, state["kinds"]
    assert state["strategy"].endswith("Strategy"), state["strategy"]
    assert all(state["names"].values()), state["names"]
    assert state["first"] == "LowRank" and {"bert", "tfreparam"} <= set(state["registered"]), state


_TFMOT_PROBE = r"""
import tensorflow_model_optimization as tfmot
import tf_keras as keras
import tfreparam as tr

inputs = keras.Input((12,))
model = keras.Model(inputs, tr.KroneckerDense(8, num_terms=2, name="kron")(inputs))
clustered = tfmot.clustering.keras.cluster_weights(
    model, number_of_clusters=4, cluster_centroids_init=tfmot.clustering.keras.CentroidInitialization.LINEAR)
pruned = tfmot.sparsity.keras.prune_low_magnitude(model)
print(type(clustered.layers[-1]).__name__, type(pruned.layers[-1]).__name__)
"""


def test_plain_tfmot_accepts_our_layers_without_importing_tfreparam_sparsity():
    # The layers enrol in TFMOT's ABCs themselves, now that `import tfreparam` no longer imports `sparsity`.
    result = subprocess.run([sys.executable, "-c", _TFMOT_PROBE], capture_output=True, text=True, timeout=300,
                            check=True)
    assert result.stdout.strip().splitlines()[-1] == "ClusterWeights PruneLowMagnitude"


_LOAD_PROBE = r"""
import sys
IMPORTS
import numpy as np
import tf_keras as keras
model = keras.models.load_model(sys.argv[1], compile=False)
print(type(model.layers[1]).__name__, np.asarray(model(np.ones((1, 8), "float32"))).round(5).tolist())
"""


def test_saved_model_loads_after_a_bare_import_tfreparam(tmp_path):
    # A .keras file with a LowRankDense failed to load after `import tfreparam` alone ('str' object is not callable):
    # tf_keras only finds registered classes, and the lazy package had not imported its layers.
    import numpy as np
    import tf_keras as keras

    import tfreparam as tr

    inputs = keras.Input((8,))
    model = keras.Model(inputs, tr.LowRankDense(6, rank=3, name="low_rank")(inputs))
    path = str(tmp_path / "low_rank.keras")
    model.save(path)
    expected = np.asarray(model(np.ones((1, 8), "float32"))).round(5).tolist()
    before = "import tfreparam\nassert 'tensorflow' not in sys.modules"  # registers once tf_keras is imported
    for imports in (before, "import tf_keras\nimport tfreparam"):
        probe = _LOAD_PROBE.replace("IMPORTS", imports)
        result = subprocess.run([sys.executable, "-c", probe, path], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-1500:]
        assert result.stdout.strip().splitlines()[-1] == f"LowRankDense {expected}"
