"""`BertConfig`: the hyper-parameters of a BERT encoder."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Union

_ACTIVATIONS = ("gelu", "gelu_tanh", "relu")

# Hugging Face `hidden_act` values -> ours. "gelu" in HF BERT is the exact (erf) GELU.
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Shape and regularisation of a BERT encoder.

    `activation` is "gelu" (exact, erf-based: what BERT checkpoints were trained
    with) or "gelu_tanh" (the tanh approximation). `embedding_size` smaller than
    `hidden_size` factorises the embeddings (ALBERT); `share_layers` reuses one
    block's weights at every depth (ALBERT); `adapter_size` inserts Houlsby
    bottleneck adapters. `unit_scaled` builds a unit-scaled BERT (see
    `bert.unit_scaled`; `initializer_range` is then unused).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    activation: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    embedding_size: Optional[int] = None
    share_layers: bool = False
    adapter_size: Optional[int] = None
    # Unit Scaling (Blake et al. 2023; bert/unit_scaled.py): unit-variance weights and scaled ops.
    unit_scaled: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"BertConfig.{name} must be a positive integer, got {value!r}.")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}."
            )
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {self.activation!r}.")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1), got {getattr(self, name)}.")
        for name in ("embedding_size", "adapter_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"BertConfig.{name} must be a positive integer or None, got {value!r}.")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def embedding_width(self) -> int:
        return self.embedding_size or self.hidden_size

    def replace(self, **changes) -> "BertConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "BertConfig":
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"Unknown BertConfig fields {unknown}.")
        return cls(**values)

    @classmethod
    def from_hf_config(cls, config: Union[dict, str]) -> "BertConfig":
        """From a Hugging Face BERT `config.json` (path, directory or dict)."""
        if isinstance(config, (str, os.PathLike)):
            path = os.path.join(config, "config.json") if os.path.isdir(config) else config
            with open(path) as f:
                config = json.load(f)
        model_type = config.get("model_type", "bert")
        if model_type not in ("bert", "albert"):
            raise ValueError(f"Not a BERT config: model_type={model_type!r}.")
        act = config.get("hidden_act", "gelu")
        if act not in _HF_ACTIVATIONS:
            raise ValueError(f"Unsupported hidden_act {act!r}; supported: {sorted(_HF_ACTIVATIONS)}.")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("Only absolute position embeddings are supported.")
        embedding_size = config.get("embedding_size")
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=config["num_attention_heads"],
            intermediate_size=config["intermediate_size"],
            activation=_HF_ACTIVATIONS[act],
            max_position_embeddings=config.get("max_position_embeddings", 512),
            type_vocab_size=config.get("type_vocab_size", 2),
            hidden_dropout=config.get("hidden_dropout_prob", 0.1),
            attention_dropout=config.get("attention_probs_dropout_prob", 0.1),
            layer_norm_eps=config.get("layer_norm_eps", 1e-12),
            initializer_range=config.get("initializer_range", 0.02),
            embedding_size=embedding_size if embedding_size != config["hidden_size"] else None,
        )

    @classmethod
    def named(cls, name: str, **overrides) -> "BertConfig":
        """Standard sizes: tiny (2x128), mini (4x256), small (4x512), minilm (6x384), base, large."""
        sizes = {
            "tiny": dict(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512),
            "mini": dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
            "small": dict(hidden_size=512, num_layers=4, num_heads=8, intermediate_size=2048),
            "minilm": dict(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536),
            "base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
            "large": dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
        }
        if name not in sizes:
            raise ValueError(f"Unknown BERT size {name!r}; choose from {sorted(sizes)}.")
        return cls(**{**sizes[name], **overrides})
