"""One post-LN transformer block of the flat BERT: attention, then the FFN, each with its residual."""

from __future__ import annotations

import tf_keras as keras

import bert.layers as bert_layers
from bert.builder import LayerBuilder


def transformer_block(b: LayerBuilder, index: int, x, mask, return_probs: bool = False):
    """Block `layer_{index}` on hidden states x (batch, seq, hidden); returns (x, attention probs or None)."""
    c = b.config
    p = f"layer_{index}"
    h = c.hidden_size

    xb = _branch(b, f"{p}/attention/split", x)
    q = b.projection(f"{p}/attention/query", h, h)(xb)
    k = b.projection(f"{p}/attention/key", h, h)(xb)
    v = b.projection(f"{p}/attention/value", h, h)(xb)
    attention = b.layer(f"{p}/attention/math", lambda n: b.kit.attention(n, return_probs=return_probs))
    context, probs = attention([q, k, v, mask]), None
    if return_probs:
        context, probs = context
    y = b.projection(f"{p}/attention/output", h, h)(context)
    x = _residual(b, f"{p}/attention", x, y)

    xb = _branch(b, f"{p}/ffn/split", x)
    y = b.projection(f"{p}/ffn/intermediate", h, c.intermediate_size)(xb)
    y = b.layer(f"{p}/ffn/activation", b.kit.activation)(y)
    y = b.projection(f"{p}/ffn/output", c.intermediate_size, h)(y)
    x = _residual(b, f"{p}/ffn", x, y)
    return x, probs


def _branch(b, name, x):
    """The input of a residual branch (the kit may put a gradient-scaling layer on the way)."""
    split = b.layer(name, b.kit.residual_split)
    return x if split is None else split(x)


def _residual(b, prefix, x, y):
    """LayerNorm(x + adapter(dropout(y))): closes the branch `prefix` ("layer_i/attention" or "layer_i/ffn")."""
    rate = b.config.hidden_dropout
    y = b.layer(f"{prefix}/dropout", lambda n: keras.layers.Dropout(rate, name=n))(y)
    y = _adapter(b, f"{prefix}/adapter", y)
    return b.layer_norm(f"{prefix}/layer_norm")(b.layer(f"{prefix}/residual", b.kit.residual_add)([x, y]))


def _adapter(b, name, x):
    """Houlsby bottleneck adapter x + up(gelu(down(x))); `up` starts at zero (identity)."""
    size = b.config.adapter_size
    if not size:
        return x
    down = b.layer(f"{name}/down", lambda n: keras.layers.Dense(
        size, activation="gelu", kernel_initializer=bert_layers.truncated_normal(1e-3), name=n))
    up = b.layer(f"{name}/up", lambda n: keras.layers.Dense(b.config.hidden_size, kernel_initializer="zeros", name=n))
    return b.layer(f"{name}/residual", lambda n: keras.layers.Add(name=n))([x, up(down(x))])
