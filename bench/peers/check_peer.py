"""Import check for a freshly built peer venv: `python check_peer.py keras_hub|model_garden|torch`.

Run by setup.sh with the peer venv's interpreter; fails loudly if the peer's
model class cannot be imported, so a broken venv is never stamped as ready.
"""

import os
import sys


def main(name: str) -> None:
    if name == "keras_hub":
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        import keras
        import keras_hub

        assert keras.backend.backend() == "tensorflow", keras.backend.backend()
        print("keras", keras.__version__, "keras_hub", keras_hub.__version__, keras_hub.models.BertBackbone)
    elif name == "model_garden":
        import tensorflow as tf
        from official.nlp.modeling import layers, networks

        print("tensorflow", tf.__version__, networks.BertEncoderV2, layers.MaskedLM)
    elif name == "torch":
        import onnxruntime
        import torch
        import transformers

        assert not torch.version.cuda, f"expected the CPU build of torch, got CUDA {torch.version.cuda}"
        print("torch", torch.__version__, "transformers", transformers.__version__,
              "onnxruntime", onnxruntime.__version__)
    else:
        raise SystemExit(f"unknown peer {name!r}")


if __name__ == "__main__":
    main(sys.argv[1])
