"""Parameter-efficient fine-tuning: freeze everything but adapters, LoRA factors or heads."""

from __future__ import annotations

import tf_keras as keras

from tfreparam.layers.lora import LoRADense

_HEAD_PREFIXES = ("classifier/", "mlm/", "nsp/")
_KINDS = ("adapters", "lora", "heads")


def _selected(layer, kind) -> bool:
    if kind == "adapters":
        # Houlsby et al. train the adapters together with the layer norms.
        return "/adapter/" in layer.name or isinstance(layer, keras.layers.LayerNormalization)
    if kind == "lora":
        return isinstance(layer, LoRADense)
    return layer.name.startswith(_HEAD_PREFIXES)


def trainable_only(model: keras.Model, kind: str) -> keras.Model:
    """Freezes every top-level layer except the `kind` ones ("adapters", "lora" or "heads").

    Returns the model (modified in place). Raises if the model has no such
    layers, since training would silently update nothing.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}.")
    selected = [layer for layer in model.layers if _selected(layer, kind)]
    if not [layer for layer in selected if layer.weights and not isinstance(layer, keras.layers.LayerNormalization)]:
        hint = {"adapters": "build it with BertConfig(adapter_size=...)",
                "lora": "inject adapters with tfreparam.reparameterize(model, {pattern: tfreparam.LoRA(rank=8)})",
                "heads": "add a head, e.g. bert.build_classifier"}[kind]
        raise ValueError(f"The model has no {kind} to train; {hint}.")
    for layer in model.layers:
        layer.trainable = _selected(layer, kind)
    return model
