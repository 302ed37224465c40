"""`quantize_model`: TFMOT quantization-aware training for whole tfreparam / BERT models."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras import quantize as tfmot_quantize
from tensorflow_model_optimization.python.core.quantization.keras import quantize_scheme as tfmot_scheme
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.cluster_preserve import (
    default_8bit_cluster_preserve_quantize_scheme as cqat_scheme,
)
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
    default_8bit_prune_preserve_quantize_scheme as pqat_scheme,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_scheme as default_scheme,
)
from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer as tfmot_quantize_layer
from tensorflow_model_optimization.python.core.quantization.keras import quantize_wrapper

from tfreparam.quantization import quantizers, registry

SCHEMES = ("default_8bit", "pqat", "cqat")

# Scheme name -> (TFMOT scheme factory, what our weight quantizers preserve).
_SCHEMES = {
    "default_8bit": (default_scheme.Default8BitQuantizeScheme, quantizers.PRESERVE_NONE),
    "pqat": (pqat_scheme.Default8BitPrunePreserveQuantizeScheme, quantizers.PRESERVE_SPARSITY),
    "cqat": (lambda: cqat_scheme.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=False),
             quantizers.PRESERVE_CLUSTERS),
}

# Layers that need no quantization wrapper at all.
_PASS_THROUGH = (keras.layers.InputLayer,)


def quantize_scope(*args):
    """A scope in which saved QAT models (TFMOT wrappers, tfreparam / bert configs) deserialize.

    `with quantize_scope(): model = keras.models.load_model(path)`. Extra
    dicts of custom objects may be passed, as to TFMOT's `quantize_scope`.
    """
    return tfmot_quantize.quantize_scope(
        registry.serializable_objects(), {"InputQuantizeLayer": InputQuantizeLayer}, *args)


def quantize_model(model: keras.Model, scheme: str = "default_8bit", calibration_data=None) -> keras.Model:
    """A quantization-aware copy of a Functional or Sequential `model`, ready for `compile` + `fit`.

    Every top-level layer is wrapped: tfreparam layers, BERT layers and generic
    Keras layers TFMOT lacks (LayerNormalization, Embedding, any Activation)
    get the configs in `tfreparam.quantization.registry`; the rest (Dense,
    Add, Dropout, ...) TFMOT's own. Weights are copied; `model` is unchanged.

    Schemes: "default_8bit"; "pqat" (pruning-preserving: weights that are zero
    when QAT starts stay zero); "cqat" (cluster-preserving: each weight keeps
    its set of unique values). Strip pruning / clustering wrappers first.

    Weight ranges start at each weight's current max |w| (TFMOT would start
    them at [-6, 6] until the first training step). With `calibration_data`
    (batches the model accepts), activation ranges start at the observed
    min / max too (see `calibrate`); otherwise at TFMOT's [-6, 6].

    Raises ValueError for subclassed or nested models, a mixed-precision policy,
    layers no config covers, and layers a collaborative scheme cannot preserve.
    """
    if scheme not in _SCHEMES:
        raise ValueError(f"Unknown QAT scheme {scheme!r}; expected one of {SCHEMES}.")
    _check_model(model)
    make_scheme, preserve = _SCHEMES[scheme]
    tfmot_scheme_instance = make_scheme()
    tfmot_registry = tfmot_scheme_instance.get_quantize_registry()

    def annotate(original):
        if isinstance(original, _PASS_THROUGH):
            return original
        layer = registry.quantizable(original)  # the same layer, or a copy with QAT hooks
        config = registry.quantize_config_for(layer)
        if config is None:
            if _tfmot_supports(tfmot_registry, layer):
                return tfmot_quantize.quantize_annotate_layer(layer)
            raise ValueError(
                f"Layer '{layer.name}' ({type(layer).__name__}) has no QuantizeConfig: neither tfreparam's "
                "registry nor TFMOT's covers it. Register one with "
                "`tfreparam.quantization.register_quantize_config(layer_class, factory)`."
            )
        if preserve is not None and original.trainable_weights:
            if not getattr(config, "supports_preservation", False):
                if not _has_structure(original, preserve):
                    # Nothing pruned or clustered here (e.g. embeddings): plain QAT loses nothing.
                    return tfmot_quantize.quantize_annotate_layer(layer, config)
                raise ValueError(
                    f"Layer '{layer.name}' ({type(original).__name__}) cannot be quantized with scheme={scheme!r}: "
                    f"{_why_not_preserved(original)} Use scheme='default_8bit', or exclude the layer."
                )
            config.preserve = preserve
        return tfmot_quantize.quantize_annotate_layer(layer, config)

    annotated = keras.models.clone_model(model, clone_function=annotate)
    annotated.set_weights(model.get_weights())
    with quantize_scope():
        qat_model = tfmot_quantize.quantize_apply(annotated, scheme=_FloatInputsOnly(tfmot_scheme_instance))
        qat_model = _with_reloadable_input_quantizers(qat_model)
    initialize_weight_ranges(qat_model)
    if calibration_data is not None:
        calibrate(qat_model, calibration_data)
    return qat_model


@keras.utils.register_keras_serializable(package="tfreparam")
class InputQuantizeLayer(tfmot_quantize_layer.QuantizeLayer):
    """TFMOT's input `QuantizeLayer`, buildable once only.

    `.keras` loading builds a layer from its config and then calls it;
    TFMOT's layer never marks itself built, so it would create its range
    variables twice and fail to load its own weights.
    """

    def build(self, input_shape):
        if self.built:
            return
        super().build(input_shape)
        self.built = True


def _with_reloadable_input_quantizers(qat_model):
    if not any(type(layer) is tfmot_quantize_layer.QuantizeLayer for layer in qat_model.layers):
        return qat_model

    def swap(layer):
        if type(layer) is tfmot_quantize_layer.QuantizeLayer:
            return InputQuantizeLayer.from_config(layer.get_config())
        return layer

    swapped = keras.models.clone_model(qat_model, clone_function=swap)
    swapped.set_weights(qat_model.get_weights())
    return swapped


def initialize_weight_ranges(qat_model: keras.Model) -> None:
    """Sets every weight quantizer's range to +-max |w| of its (masked) weight, as training would."""
    for layer in qat_model.layers:
        if not isinstance(layer, quantize_wrapper.QuantizeWrapper):
            continue
        for weight, _, variables in layer._weight_vars:
            if isinstance(variables, dict) and "min_var" in variables:
                value = tf.convert_to_tensor(weight)
                if "sparsity_mask" in variables:
                    value = value * variables["sparsity_mask"]
                quantizers.set_symmetric_range(variables, value)
        hook = getattr(layer.quantize_config, "initialize_ranges", None)
        if hook is not None:
            hook(layer)


def calibrate(qat_model: keras.Model, data, max_batches: int | None = None) -> int:
    """Sets activation ranges of a QAT model to the min / max seen on `data`; returns the batch count.

    `data`: one batch (an array or a dict of arrays) or an iterable of batches
    (a `tf.data.Dataset` of features or of (features, labels)). Runs eagerly in
    inference mode (no dropout). Covers tfreparam's activation quantizers,
    i.e. every layer `quantize_model` annotated from its registry.
    """
    if isinstance(data, (dict, tf.Tensor)) or hasattr(data, "__array__"):
        data = [data]
    # TFMOT's input QuantizeLayers (ranges start at [0, 0]) are set from their inputs directly.
    input_quantizers = [layer for layer in qat_model.layers
                        if isinstance(layer, tfmot_quantize_layer.QuantizeLayer) and getattr(layer, "quantizer_vars", None)]
    inputs_of = keras.Model(qat_model.inputs, [layer.input for layer in input_quantizers]) if input_quantizers else None
    count = 0
    with quantizers.calibrating():
        for batch in data:
            if isinstance(batch, tuple):
                batch = batch[0]
            if inputs_of is not None:
                values = inputs_of(batch, training=False)
                values = values if isinstance(values, (list, tuple)) else [values]
                for layer, value in zip(input_quantizers, values):
                    quantizers.observe_range(value, layer.quantizer_vars)
            qat_model(batch, training=False)
            count += 1
            if max_batches is not None and count >= max_batches:
                break
    if not count:
        raise ValueError("calibrate() got no batches: pass at least one batch of model inputs.")
    # Configs whose ranges depend on each other settle them once all are observed.
    for layer in qat_model.layers:
        tie = getattr(getattr(layer, "quantize_config", None), "tie_ranges", None)
        if tie is not None:
            tie(layer)
    return count


def unquantized_layers(model: keras.Model) -> list[str]:
    """Names of the layers of a QAT model that no quantization wrapper covers (inputs excluded)."""
    return [
        layer.name
        for layer in model.layers
        if not isinstance(layer, (quantize_wrapper.QuantizeWrapper, keras.layers.InputLayer))
        and not isinstance(layer, tfmot_quantize_layer.QuantizeLayer)
    ]


# A weight counts as pruned above this share of exact zeros, and as clustered at
# or below this many distinct values (TFMOT clusters to at most 256).
_PRUNED_ZERO_SHARE = 0.01
_CLUSTERED_MAX_VALUES = 256


def _has_structure(layer, preserve) -> bool:
    """Whether a weight of `layer` carries the sparsity / clustering `preserve` asks to keep."""
    for weight in layer.trainable_weights:
        value = weight.numpy()
        if preserve == quantizers.PRESERVE_SPARSITY and np.mean(value == 0) > _PRUNED_ZERO_SHARE:
            return True
        if (preserve == quantizers.PRESERVE_CLUSTERS and value.size > _CLUSTERED_MAX_VALUES
                and np.unique(value).size <= _CLUSTERED_MAX_VALUES):
            return True
    return False


def _why_not_preserved(layer) -> str:
    if type(layer).__name__ == "LoRADense":
        return ("a LoRADense is quantized as its merged kernel W + (alpha/rank)·A·B, which has no "
                "zeros or clusters of its own to preserve (merge() it before pruning or clustering).")
    return "its QuantizeConfig does not support weight preservation."


def _tfmot_supports(tfmot_registry, layer) -> bool:
    try:
        return bool(tfmot_registry.supports(layer))
    except (ValueError, KeyError):
        return False


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"quantize_model expects a tf_keras Model, got {type(model).__name__}. "
            "(Keras 3 `tf.keras` models cannot be quantized by TFMOT; build them with `tf_keras`.)"
        )
    if not isinstance(model, keras.Sequential) and not getattr(model, "_is_graph_network", False):
        raise ValueError(
            f"Model '{model.name}' is a subclassed model; TFMOT can only quantize Functional or Sequential "
            "models. For a BertPretrainer, quantize its `.network` (the flat functional model)."
        )
    if not model.built:
        raise ValueError(f"Model '{model.name}' is not built; call it on data or `build(input_shape)` first.")
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    if nested:
        raise ValueError(
            f"Model '{model.name}' nests models {nested}; TFMOT only wraps top-level layers, so their "
            "layers would stay float. Build the model flat (as bert.build_encoder does)."
        )
    wrapped = [layer.name for layer in model.layers if type(layer).__name__ in ("PruneLowMagnitude", "ClusterWeights")]
    if wrapped:
        raise ValueError(
            f"Layers {wrapped} still carry pruning / clustering wrappers; call "
            "tfmot.sparsity.keras.strip_pruning / tfmot.clustering.keras.strip_clustering (or tfreparam.strip) "
            "before quantization-aware training."
        )
    _check_precision(model)


def _check_precision(model):
    policy = keras.mixed_precision.global_policy()
    mixed = [
        f"{layer.name} ({layer.dtype_policy.name})"
        for layer in model.layers
        if layer.dtype_policy.compute_dtype != "float32" and not isinstance(layer, keras.layers.InputLayer)
    ]
    if mixed or policy.compute_dtype != "float32":
        where = f"layers {mixed[:5]}{' ...' if len(mixed) > 5 else ''}" if mixed else "no layer yet"
        raise ValueError(
            "Quantization-aware training needs float32 compute, but "
            f"the global Keras policy is '{policy.name}' and {where} compute in lower precision. "
            "TFMOT's fake-quant ops (FakeQuantWithMinMaxVars) are float32-only, so a float16/bfloat16 "
            "model fails deep inside TFMOT. Fine-tune in mixed precision first if you like, then call "
            "keras.mixed_precision.set_global_policy('float32'), rebuild the model in float32, copy the "
            "weights (float32 variables carry over unchanged) and run QAT on that."
        )


class _FloatInputsOnly(tfmot_scheme.QuantizeScheme):
    """A TFMOT scheme whose layout transform adds input QuantizeLayers to float inputs only.

    TFMOT puts a fake-quant after every model input that feeds a quantized
    layer; BERT's token ids and masks are int32 and must reach the embeddings
    and the attention mask untouched.
    """

    def __init__(self, scheme):
        self._scheme = scheme

    def get_layout_transformer(self):
        return _FloatInputsLayout(self._scheme.get_layout_transformer())

    def get_quantize_registry(self):
        return self._scheme.get_quantize_registry()


class _FloatInputsLayout:
    def __init__(self, layout):
        self._layout = layout

    def apply(self, model, layer_quantize_map):
        integer_inputs = {layer.name for layer in model._input_layers if not tf.as_dtype(layer.dtype).is_floating}
        kept = {name: value for name, value in layer_quantize_map.items() if name not in integer_inputs}
        return self._layout.apply(model, kept)
