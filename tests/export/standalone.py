"""Serve an exported SavedModel in a child Python that cannot import tfreparam or bert.

The child drops the repository and the editable-install finder from
`sys.path` / `sys.meta_path`, proves that `tfreparam` and `bert` no longer
import, then loads the SavedModel with TensorFlow (and tensorflow_text for the
string signatures) only, and writes each signature's outputs to an `.npz`.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]

_CHILD = r"""
import json, os, sys
config = json.loads(sys.argv[1])
repo = os.path.realpath(config["repo"])
# The repository itself (the venv inside it stays: it is where TensorFlow lives),
# and the editable install's finder and path hook.
sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != repo and "__editable__" not in p]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "") + repr(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if "editable" not in getattr(h, "__module__", "") + repr(h)]
sys.path_importer_cache.clear()
blocked = {}
for name in ("tfreparam", "bert"):
    try:
        __import__(name)
        blocked[name] = False
    except ImportError:
        blocked[name] = True
import numpy as np
import tensorflow as tf
if config["strings"]:
    import tensorflow_text  # registers the tokenizer ops
loaded = tf.saved_model.load(config["path"])
feeds = dict(np.load(config["feeds"], allow_pickle=True))
results = {}
for signature, names in config["signatures"].items():
    function = loaded.signatures[signature]
    outputs = function(**{name: tf.constant(feeds[f"{signature}/{name}"]) for name in names})
    results.update({f"{signature}/{key}": value.numpy() for key, value in outputs.items()})
np.savez(config["out"], **results)
project_modules = sorted(m for m in sys.modules if m.split(".")[0] in ("tfreparam", "bert"))
print(json.dumps({"blocked": blocked, "modules": project_modules, "signatures": sorted(loaded.signatures)}))
"""


def serve_without_project(path, feeds: dict, tmp_path, strings=False):
    """feeds: {signature: {input name: array}} -> ({"signature/output": array}, child report)."""
    flat = {f"{sig}/{name}": value for sig, inputs in feeds.items() for name, value in inputs.items()}
    np.savez(tmp_path / "feeds.npz", **flat)
    config = {"repo": str(REPO), "path": str(path), "feeds": str(tmp_path / "feeds.npz"),
              "out": str(tmp_path / "served.npz"), "strings": strings,
              "signatures": {sig: sorted(inputs) for sig, inputs in feeds.items()}}
    result = subprocess.run(
        [sys.executable, "-I", "-c", _CHILD, json.dumps(config)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return dict(np.load(tmp_path / "served.npz")), report
