"""BERT as a flat functional tf_keras model: config, encoder, heads and checkpoints."""

from bert.checkpoints import LoadedBert, load_google_checkpoint, load_hf, load_pretrained
from bert.config import BertConfig
from bert.encoder import BLOCK_PROJECTIONS, INPUT_NAMES, build_encoder
from bert.data import pretraining_dataset, split_sentences
from bert.heads import build_classifier, build_pretrainer, build_pretraining_network
from bert.layer_drop import drop_blocks
from bert.kits import StandardKit, UnitScaledKit
from bert.pretrainer import BertPretrainer
from bert.hf_weights import HFCheckpoint, minilm_path, read_hf_checkpoint
from bert.peft import trainable_only
from tfreparam.quantization import plugins as _quantization_plugins
from bert.preprocessing import LongestFirstTrimmer, Preprocessor, load_vocab

# bert.quantization imports TFMOT; it registers the BERT QuantizeConfigs when quantization is first used.
_quantization_plugins.register_config_module("bert.quantization")

__all__ = [
    "BLOCK_PROJECTIONS",
    "BertConfig",
    "BertPretrainer",
    "HFCheckpoint",
    "INPUT_NAMES",
    "LoadedBert",
    "LongestFirstTrimmer",
    "Preprocessor",
    "StandardKit",
    "UnitScaledKit",
    "build_classifier",
    "build_encoder",
    "build_pretrainer",
    "build_pretraining_network",
    "drop_blocks",
    "load_google_checkpoint",
    "load_hf",
    "load_pretrained",
    "load_vocab",
    "pretraining_dataset",
    "minilm_path",
    "read_hf_checkpoint",
    "split_sentences",
    "trainable_only",
]
