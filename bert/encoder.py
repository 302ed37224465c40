"""`build_encoder`: BERT as a flat functional Keras model.

Every projection (q, k, v, attention output, FFN in/out, embedding projection,
pooler) is its own top-level layer with a stable name, e.g.
`layer_3/attention/query`, so TFMOT wrappers, `keras.models.clone_model` and
tfreparam policies can reach it. A `layer_policy` (the same spec objects as
`tfreparam.reparameterize`, matched against these names) picks each
projection's class, so factorized BERTs can be built from scratch.
"""

from __future__ import annotations

import tf_keras as keras

from bert import layers as bert_layers
from bert.config import BertConfig
from tfreparam.specs import spec_for

INPUT_NAMES = ("input_word_ids", "input_mask", "input_type_ids")

# The projections of one transformer block, by name suffix.
BLOCK_PROJECTIONS = (
    "attention/query",
    "attention/key",
    "attention/value",
    "attention/output",
    "ffn/intermediate",
    "ffn/output",
)


class _Builder:
    """Creates the named layers of one encoder, honouring the layer policy."""

    def __init__(self, config: BertConfig, layer_policy):
        self.config = config
        self.policy = layer_policy
        self._shared = {}

    def projection(self, name, in_features, units, activation=None):
        shared_name = self._shared_name(name)
        if shared_name in self._shared:
            return self._shared[shared_name]
        spec = spec_for(self.policy, shared_name)
        kwargs = dict(activation=activation, name=shared_name)
        if self.config.unit_scaled:
            from bert import unit_scaled  # unit_scaled imports heads, which imports this module

            layer = unit_scaled.projection(spec, in_features, units, **kwargs)
        elif spec is None:
            layer = keras.layers.Dense(
                units, kernel_initializer=bert_layers.truncated_normal(self.config.initializer_range), **kwargs
            )
        else:
            layer = spec.make_layer(in_features, units, **kwargs)
        self._shared[shared_name] = layer
        return layer

    def layer(self, name, factory):
        """A non-projection layer (LayerNorm, dropout...), shared across depth if configured."""
        shared_name = self._shared_name(name)
        if shared_name not in self._shared:
            self._shared[shared_name] = factory(shared_name)
        return self._shared[shared_name]

    def _shared_name(self, name):
        # ALBERT-style sharing: every block reuses block 0's layers ("shared/...").
        if self.config.share_layers and name.startswith("layer_"):
            return "shared/" + name.split("/", 1)[1]
        return name

    def layer_norm(self, name):
        if self.config.unit_scaled:
            from bert import unit_scaled

            return self.layer(name, lambda n: unit_scaled.layer_norm(n, self.config.layer_norm_eps))
        return self.layer(name, lambda n: keras.layers.LayerNormalization(epsilon=self.config.layer_norm_eps, name=n))

    def bias(self, name):
        """The MLM output bias (unit-scaled gradient under unit scaling)."""
        if self.config.unit_scaled:
            from bert import unit_scaled

            return unit_scaled.UnitScaledBias(name=name)
        return bert_layers.Bias(name=name)

    def dropout(self, name, rate):
        return self.layer(name, lambda n: keras.layers.Dropout(rate, name=n))


def build_encoder(
    config: BertConfig,
    layer_policy=None,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
    name: str = "bert_encoder",
) -> keras.Model:
    """A flat functional BERT encoder.

    Inputs: `input_word_ids`, `input_mask`, `input_type_ids` (int32, (batch, seq)).
    Outputs (a dict): `sequence_output` (batch, seq, hidden), `pooled_output`
    (batch, hidden); with `output_hidden_states`, `hidden_states` (a list of
    num_layers + 1 tensors: embeddings, then each block's output); with
    `output_attentions`, `attention_probs` (a list of (batch, heads, seq, seq)).
    """
    c = config
    b = _Builder(c, layer_policy)
    word_ids = keras.Input((None,), dtype="int32", name="input_word_ids")
    mask = keras.Input((None,), dtype="int32", name="input_mask")
    type_ids = keras.Input((None,), dtype="int32", name="input_type_ids")

    # Unit scaling: unit-variance embedding tables (and its own layers below).
    us = _unit_scaled_module(c)
    init_range = 1.0 if us else c.initializer_range
    word_class = us.UnitScaledWordEmbedding if us else bert_layers.WordEmbedding
    word = word_class(c.vocab_size, c.embedding_width, init_range, name="embeddings/word")
    x = word(word_ids)
    if us:
        types = us.UnitScaledTypeEmbedding(c.type_vocab_size, c.embedding_width, name="embeddings/type")(type_ids)
    else:
        types = keras.layers.Embedding(
            c.type_vocab_size, c.embedding_width,
            embeddings_initializer=bert_layers.truncated_normal(init_range), name="embeddings/type",
        )(type_ids)
    positions = bert_layers.PositionEmbedding(
        c.max_position_embeddings, init_range, name="embeddings/position"
    )(x)
    x = (us.embedding_sum if us else _add)("embeddings/add")([x, types, positions])
    x = b.layer_norm("embeddings/layer_norm")(x)
    x = keras.layers.Dropout(c.hidden_dropout, name="embeddings/dropout")(x)
    if c.embedding_width != c.hidden_size:
        x = b.projection("embeddings/projection", c.embedding_width, c.hidden_size)(x)

    hidden_states, attentions = [x], []
    act = bert_layers.activation(c.activation)
    for i in range(c.num_layers):
        p = f"layer_{i}"
        xb = b.layer(f"{p}/attention/split", us.residual_split)(x) if us else x  # unit-scaled branch gradient
        q = b.projection(f"{p}/attention/query", c.hidden_size, c.hidden_size)(xb)
        k = b.projection(f"{p}/attention/key", c.hidden_size, c.hidden_size)(xb)
        v = b.projection(f"{p}/attention/value", c.hidden_size, c.hidden_size)(xb)
        attention = b.layer(
            f"{p}/attention/math",
            lambda n: (us.UnitScaledAttentionMath if us else bert_layers.AttentionMath)(
                c.num_heads, c.attention_dropout, return_probs=output_attentions, name=n
            ),
        )
        context = attention([q, k, v, mask])
        if output_attentions:
            context, probs = context
            attentions.append(probs)
        y = b.projection(f"{p}/attention/output", c.hidden_size, c.hidden_size)(context)
        y = b.dropout(f"{p}/attention/dropout", c.hidden_dropout)(y)
        y = _adapter(b, f"{p}/attention/adapter", y)
        residual = us.residual_add if us else _add
        x = b.layer_norm(f"{p}/attention/layer_norm")(b.layer(f"{p}/attention/residual", residual)([x, y]))

        xb = b.layer(f"{p}/ffn/split", us.residual_split)(x) if us else x
        h = b.projection(f"{p}/ffn/intermediate", c.hidden_size, c.intermediate_size)(xb)
        h = b.layer(f"{p}/ffn/activation",
                    lambda n: us.activation(c.activation, n) if us else keras.layers.Activation(act, name=n))(h)
        y = b.projection(f"{p}/ffn/output", c.intermediate_size, c.hidden_size)(h)
        y = b.dropout(f"{p}/ffn/dropout", c.hidden_dropout)(y)
        y = _adapter(b, f"{p}/ffn/adapter", y)
        x = b.layer_norm(f"{p}/ffn/layer_norm")(b.layer(f"{p}/ffn/residual", residual)([x, y]))
        hidden_states.append(x)

    first = bert_layers.FirstToken(name="pooler/first_token")(x)
    pooled = b.projection("pooler/dense", c.hidden_size, c.hidden_size, activation="tanh")(first)
    outputs = {"sequence_output": x, "pooled_output": pooled}
    if output_hidden_states:
        outputs["hidden_states"] = hidden_states
    if output_attentions:
        outputs["attention_probs"] = attentions
    return keras.Model([word_ids, mask, type_ids], outputs, name=name)


def _add(name):
    return keras.layers.Add(name=name)


def _unit_scaled_module(config):
    """`bert.unit_scaled` if the config asks for unit scaling, else None."""
    if not config.unit_scaled:
        return None
    from bert import unit_scaled

    return unit_scaled


def _adapter(b: _Builder, name, x):
    """Houlsby bottleneck adapter x + up(gelu(down(x))); `up` starts at zero (identity)."""
    size = b.config.adapter_size
    if not size:
        return x
    down = b.layer(f"{name}/down", lambda n: keras.layers.Dense(
        size, activation="gelu", kernel_initializer=bert_layers.truncated_normal(1e-3), name=n))
    up = b.layer(f"{name}/up", lambda n: keras.layers.Dense(b.config.hidden_size, kernel_initializer="zeros", name=n))
    return b.layer(f"{name}/residual", _add)([x, up(down(x))])


def word_embedding_layer(encoder: keras.Model) -> bert_layers.WordEmbedding:
    return encoder.get_layer("embeddings/word")
