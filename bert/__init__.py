"""A flat functional Keras BERT and its checkpoints.

So far: reading Hugging Face BERT checkpoints (config + safetensors) with numpy,
including the bundled all-MiniLM-L6-v2.
"""

from bert.hf_weights import HFCheckpoint, minilm_path, read_hf_checkpoint

__all__ = ["HFCheckpoint", "minilm_path", "read_hf_checkpoint"]
