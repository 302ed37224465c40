"""tfreparam: reparameterized dense layers and BERT compression for tf_keras.

Importing the package is instant and changes no global TensorFlow state: it
imports nothing heavy, sets no environment variables, policies or logging
levels. Every name below loads its module on first use (module
`__getattr__`), so `import tfreparam.decompose` stays free of TensorFlow.

Subpackages and modules: `layers`, `decompose` (pure numpy), `families`,
`specs`, `policy`, `surgery`, `compression_report` (`report`), `adapters`, `calibration`,
`allocation`, `sparsity` (pruning), `clustering`, `quantization` (QAT),
`distill`, `fidelity`, `export`, `distribute`, `precision`, `unit_scaling`,
`accumulation`, `resilience`, `tracing`.
"""

import importlib

from tfreparam import keras_registration

__version__ = "0.1.0"

# Public name -> the module that defines it.
_NAMES = {
    "BlockTermDense": "tfreparam.layers",
    "CPDense": "tfreparam.layers",
    "KroneckerDense": "tfreparam.layers",
    "LoRADense": "tfreparam.layers",
    "LowRankDense": "tfreparam.layers",
    "ReparameterizedDense": "tfreparam.layers",
    "TTDense": "tfreparam.layers",
    "TuckerDense": "tfreparam.layers",
    "BlockTerm": "tfreparam.specs",
    "CP": "tfreparam.specs",
    "Keep": "tfreparam.specs",
    "Kronecker": "tfreparam.specs",
    "LoRA": "tfreparam.specs",
    "LowRank": "tfreparam.specs",
    "TensorTrain": "tfreparam.specs",
    "Tucker": "tfreparam.specs",
    "LayerPolicy": "tfreparam.policy",
    "CompressionReport": "tfreparam.compression_report",
    "report": "tfreparam.compression_report",
    "fold": "tfreparam.surgery",
    "reparameterize": "tfreparam.surgery",
    "load_adapters": "tfreparam.adapters",
    "save_adapters": "tfreparam.adapters",
    "cluster": "tfreparam.clustering",
    "strip_clustering": "tfreparam.clustering",
    "quantize_model": "tfreparam.quantization",
    "quantize_scope": "tfreparam.quantization",
    "prune": "tfreparam.sparsity",
    "sparsity_report": "tfreparam.sparsity",
    "strip": "tfreparam.sparsity",
}

_SUBMODULES = (
    "accumulation",
    "adapters",
    "allocation",
    "calibration",
    "clustering",
    "compression_report",
    "decompose",
    "distill",
    "distribute",
    "export",
    "families",
    "fidelity",
    "layers",
    "policy",
    "precision",
    "quantization",
    "resilience",
    "sparsity",
    "specs",
    "surgery",
    "tracing",
    "unit_scaling",
)

__all__ = sorted(set(_NAMES) | set(_SUBMODULES))

# `keras.models.load_model` after `import tfreparam` must find our layers (without importing TensorFlow here).
keras_registration.install()


def __getattr__(name):
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"tfreparam.{name}")
    else:
        raise AttributeError(f"module 'tfreparam' has no attribute {name!r}")
    globals()[name] = value
    keras_registration.flush()  # a registration that waited for this import to finish (keras_registration)
    return value


def __dir__():
    return sorted(set(globals()) | set(_NAMES) | set(_SUBMODULES))
