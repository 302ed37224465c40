"""tfreparam: reparameterized dense layers and BERT compression for tf_keras.

Importing the package changes no global TensorFlow state: it sets no
environment variables, policies or logging levels (TFMOT's import-time
`TF_USE_LEGACY_KERAS` is undone in `tfreparam.sparsity._tfmot`).

Subpackages: `layers`, `decompose` (pure numpy), `sparsity` (pruning),
`clustering`, `quantization` (QAT), `distill`, `fidelity`, `export`,
`distribute`, `precision`, `unit_scaling`, `accumulation`, `resilience`.
"""

from tfreparam import decompose, layers
from tfreparam.layers import (
    BlockTermDense,
    CPDense,
    KroneckerDense,
    LoRADense,
    LowRankDense,
    ReparameterizedDense,
    TTDense,
    TuckerDense,
)
from tfreparam.report import CompressionReport, report
from tfreparam.specs import CP, Keep, Kronecker, LowRank, TensorTrain, Tucker
from tfreparam.surgery import fold, reparameterize

# Eager on purpose: importing `sparsity` enrolls our layers in TFMOT's
# PrunableLayer / ClusterableLayer ABCs, so plain `tfmot` calls accept them.
from tfreparam import clustering, quantization, sparsity  # noqa: E402  isort: skip
# tf2onnx, onnxruntime and LiteRT load only when an exporter runs.
from tfreparam import export  # noqa: E402
from tfreparam.clustering import cluster, strip_clustering  # noqa: E402
from tfreparam.quantization import quantize_model, quantize_scope  # noqa: E402
from tfreparam.sparsity import prune, sparsity_report, strip  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BlockTermDense",
    "CP",
    "CPDense",
    "CompressionReport",
    "Keep",
    "Kronecker",
    "KroneckerDense",
    "LoRADense",
    "LowRank",
    "LowRankDense",
    "ReparameterizedDense",
    "TTDense",
    "TensorTrain",
    "Tucker",
    "TuckerDense",
    "cluster",
    "clustering",
    "decompose",
    "export",
    "fold",
    "layers",
    "prune",
    "quantization",
    "quantize_model",
    "quantize_scope",
    "report",
    "reparameterize",
    "sparsity",
    "sparsity_report",
    "strip",
    "strip_clustering",
]
