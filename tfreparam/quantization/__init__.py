"""Quantization-aware training (TFMOT) for tfreparam layers and whole flat BERTs.

`quantize_model(model, scheme, calibration_data)` annotates every layer --
factorized layers, Dense, LayerNorm, embeddings, BERT attention (registered by
`bert.quantization`) -- and applies TFMOT QAT; `quantize_scope()` loads saved
QAT models; `register_quantize_config` extends the registry to new layer
classes; `calibrate` sets activation ranges from data.

Names are loaded lazily: importing TFMOT sets `TF_USE_LEGACY_KERAS` in the
environment, which importing `tfreparam` or `bert` must not do.
"""

import importlib

_EXPORTS = {
    "SCHEMES": "apply",
    "InputQuantizeLayer": "apply",
    "calibrate": "apply",
    "initialize_weight_ranges": "apply",
    "quantize_model": "apply",
    "quantize_scope": "apply",
    "unquantized_layers": "apply",
    "AddQuantizeConfig": "add",
    "PartialSumAdd": "add",
    "DenseQuantizeConfig": "configs",
    "LayerNormQuantizeConfig": "layer_norm",
    "QuantizableLayerNormalization": "layer_norm",
    "LoRAQuantizeConfig": "configs",
    "NoOpQuantizeConfig": "configs",
    "OutputQuantizeConfig": "configs",
    "ReparameterizedDenseQuantizeConfig": "configs",
    "WeightsQuantizeConfig": "configs",
    "ActivationQuantizer": "quantizers",
    "NamedQuantizer": "quantizers",
    "activation_quantizer": "quantizers",
    "weight_quantizer": "quantizers",
    "quantizable": "registry",
    "quantize_config_for": "registry",
    "register_quantize_config": "registry",
    "register_config_module": "plugins",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"tfreparam.quantization.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tfreparam.quantization' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
