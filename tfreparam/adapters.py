"""Saving and loading LoRA adapters on their own (PEFT's adapter files, Keras 3's `save_lora_weights`).

A fine-tuned adapter is a few small matrices per layer; the frozen base model
is shared. `save_adapters` writes every `LoRADense`'s A and B (and its alpha,
so a mismatched scaling is caught) to one `.npz`; `load_adapters` puts them
into a model with the same adapted layers, e.g. a fresh
`reparameterize(base, {...: tfreparam.LoRA(rank=8)})` of the original base.
"""

from __future__ import annotations

import os

import numpy as np
import tf_keras as keras

from tfreparam.layers.lora import LoRADense

_FACTORS = ("lora_a", "lora_b")


def _adapted_layers(model: keras.Model) -> dict[str, LoRADense]:
    layers = {layer.name: layer for layer in model.layers if isinstance(layer, LoRADense)}
    if not layers:
        raise ValueError(
            f"Model '{model.name}' has no LoRADense layers; inject adapters first, e.g. "
            "tfreparam.reparameterize(model, {pattern: tfreparam.LoRA(rank=8)})."
        )
    unbuilt = [name for name, layer in layers.items() if not layer.built]
    if unbuilt:
        raise ValueError(f"LoRA layers {unbuilt} are not built yet; call the model on data first.")
    return layers


def adapter_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """{"<layer>/lora_a": A, "<layer>/lora_b": B, "<layer>/alpha": alpha} for every LoRADense of `model`."""
    weights = {}
    for name, layer in _adapted_layers(model).items():
        factors = layer.get_factors()
        for factor in _FACTORS:
            weights[f"{name}/{factor}"] = factors[factor]
        weights[f"{name}/alpha"] = np.asarray(layer.alpha, np.float64)
    return weights


def save_adapters(model: keras.Model, path: str) -> str:
    """Writes the adapters of `model` (not its base weights) to `path` (.npz); returns the path written."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    np.savez(path, **adapter_weights(model))
    return path


def load_adapters(model: keras.Model, path: str) -> None:
    """Loads adapters saved by `save_adapters` into the same-named LoRADense layers of `model`.

    Every adapted layer of `model` must be in the file and every layer in the
    file in `model`, with the same shapes and alpha; nothing is assigned
    unless all of them match.
    """
    layers = _adapted_layers(model)
    with np.load(os.fspath(path)) as stored:
        saved = {key: stored[key] for key in stored.files}
    in_file = {key.rsplit("/", 1)[0] for key in saved}
    missing, extra = sorted(set(layers) - in_file), sorted(in_file - set(layers))
    if missing or extra:
        raise ValueError(
            f"The adapters in {path} do not fit model '{model.name}': layers without saved adapters {missing}, "
            f"saved adapters for layers the model lacks {extra}."
        )
    for name, layer in layers.items():
        alpha = float(saved[f"{name}/alpha"])
        if alpha != layer.alpha:
            raise ValueError(f"Layer '{name}' has alpha={layer.alpha}, but its saved adapter was trained with alpha={alpha}.")
        expected = layer.get_factors()
        for factor in _FACTORS:
            shape = saved[f"{name}/{factor}"].shape
            if shape != expected[factor].shape:
                raise ValueError(
                    f"Saved {factor} of layer '{name}' has shape {shape}, the layer's has {expected[factor].shape} "
                    "(a different rank or layer size)."
                )
    for name, layer in layers.items():
        layer.set_factors({factor: saved[f"{name}/{factor}"] for factor in _FACTORS})
