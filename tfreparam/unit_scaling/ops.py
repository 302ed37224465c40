"""Unit-scaled ops (Blake, Orr & Luschi, "Unit Scaling", ICML 2023).

Each op multiplies its forward output and each of its gradients by its own
constant, chosen so that, for unit-variance inputs, weights and incoming
gradients at initialisation, every output and every outgoing gradient also
has unit variance. Forward and backward scales differ, so the gradients are
the true gradients times a per-tensor constant; an optimizer that is
invariant to gradient scale per tensor (Adam) is unaffected, and all tensors
sit near the centre of the float16/float8 range, so no loss scaling is needed.

Scales used here (N = rows of the batch, i.e. tokens):
  matmul x·W (in→out): forward ÷√in, input gradient ÷√out, weight gradient ÷√N.
  embedding lookup: forward ×1, table gradient ×√(vocab / N) (each row sums
    N/vocab token gradients on average).
  attention: scores q·kᵀ ÷√d (gradients ÷√S); context p·v unscaled forward
    (see `attention` for why), gradient wrt p ×S/√(e·d).
  residual add: √(1-τ)·skip + √τ·branch; with these weights both the forward
    sum and the gradient summed at the branch point keep unit variance.
  softmax cross-entropy: the loss value is the ordinary mean; its gradient wrt
    the logits is (softmax - one_hot)·√vocab per example, not ÷ examples.
  activation f (GELU, ReLU): forward ÷RMS(f(z)), input gradient ÷RMS(f'(z)),
    for z ~ N(0, 1) (exact Gaussian moments, `ACTIVATION_MOMENTS`).
  sum of n tensors: forward ÷√n; each input's gradient ×1, and ÷√k for an
    input broadcast k times (its gradient is a sum of k terms).
"""

from __future__ import annotations

import math

import tensorflow as tf


def _rows(x: tf.Tensor) -> tf.Tensor:
    """Number of rows (all axes but the last) of `x`, as a float."""
    return tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)


def scale_gradient(x, scale):
    """Identity forward; multiplies the gradient by `scale` (a Python or tensor constant)."""

    @tf.custom_gradient
    def op(value):
        def grad(upstream):
            return upstream * tf.cast(scale, upstream.dtype)

        return tf.identity(value), grad

    return op(x)


def scaled(x, forward_scale, backward_scale):
    """`x * forward_scale` forward, `gradient * backward_scale` backward."""

    @tf.custom_gradient
    def op(value):
        def grad(upstream):
            return upstream * tf.cast(backward_scale, upstream.dtype)

        return value * tf.cast(forward_scale, value.dtype), grad

    return op(x)


def matmul(x, w):
    """Unit-scaled `x @ w` for x (..., in) and w (in, out) (see module doc for the scales)."""
    fan_in, fan_out = int(w.shape[0]), int(w.shape[1])

    @tf.custom_gradient
    def op(inputs, kernel):
        flat = tf.reshape(inputs, (-1, fan_in))
        out = tf.matmul(flat, kernel) * tf.cast(1.0 / math.sqrt(fan_in), flat.dtype)
        out = tf.reshape(out, tf.concat([tf.shape(inputs)[:-1], [fan_out]], 0))

        def grad(upstream):
            g = tf.reshape(upstream, (-1, fan_out))
            grad_x = tf.matmul(g, kernel, transpose_b=True) * tf.cast(1.0 / math.sqrt(fan_out), g.dtype)
            batch_scale = tf.math.rsqrt(tf.cast(tf.shape(g)[0], tf.float32))
            grad_w = tf.matmul(flat, g, transpose_a=True) * tf.cast(batch_scale, g.dtype)
            return tf.reshape(grad_x, tf.shape(inputs)), grad_w

        return out, grad

    return op(x, w)


def linear(x, w, b=None):
    """Unit-scaled dense: `matmul(x, w) + b`; the bias gradient is scaled ÷√N too."""
    y = matmul(x, w)
    if b is not None:
        y = y + scaled(b, 1.0, tf.math.rsqrt(_rows(y)))
    return y


def low_rank(x, u, v, b=None):
    """Unit-scaled `(x·U)·V`: two unit-scaled matmuls, so the rank-r middle is unit too."""
    return linear(matmul(x, u), v, b)


def embedding(ids, table):
    """Unit-scaled lookup: rows of a unit-variance table; table gradient ×√(vocab / tokens)."""
    vocab = int(table.shape[0])
    tokens = tf.cast(tf.size(ids), tf.float32)
    table = scale_gradient(table, tf.sqrt(vocab / tf.maximum(tokens, 1.0)))
    return tf.gather(table, tf.cast(ids, tf.int32))


# RMS of f(z) and of f'(z) for z ~ N(0, 1), by Gauss-Hermite quadrature (tests recompute them).
ACTIVATION_MOMENTS = {
    "gelu": (0.652090, 0.675167),
    "gelu_tanh": (0.652069, 0.675143),
    "relu": (math.sqrt(0.5), math.sqrt(0.5)),
}


def activation(x, fn, name):
    """Unit-scaled elementwise `fn` (one of `ACTIVATION_MOMENTS`): unit RMS out and back for unit inputs."""
    if name not in ACTIVATION_MOMENTS:
        raise ValueError(f"No unit-scaling moments for activation {name!r}; known: {sorted(ACTIVATION_MOMENTS)}.")
    out_rms, grad_rms = ACTIVATION_MOMENTS[name]
    return scaled(fn(scale_gradient(x, 1.0 / grad_rms)), 1.0 / out_rms, 1.0)


def add(tensors):
    """Unit-scaled sum of n same-width tensors (broadcasting allowed), see the module doc."""
    tensors = [tf.convert_to_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("add needs at least one tensor.")
    shape = tf.shape(tensors[0])
    for t in tensors[1:]:
        shape = tf.broadcast_dynamic_shape(shape, tf.shape(t))
    size = tf.cast(tf.reduce_prod(shape), tf.float32)
    # An input broadcast k times gets a gradient summed over k copies: ÷√k keeps it unit.
    inputs = [scale_gradient(t, tf.math.rsqrt(size / tf.cast(tf.size(t), tf.float32))) for t in tensors]
    return scaled(tf.add_n([tf.broadcast_to(t, shape) for t in inputs]), 1.0 / math.sqrt(len(tensors)), 1.0)


def residual_add(skip, residual, tau=0.5):
    """√(1-τ)·skip + √τ·residual forward; the residual's gradient is NOT scaled by √τ.

    τ is the share of the output variance that comes from the residual branch.
    The branch's √τ is forward-only, so the gradients inside the branch stay
    unit; pair it with `scale_gradient(x, √τ)` where the branch leaves the skip
    (Blake et al.'s residual split), so that the skip (√(1-τ)·g) and branch
    (√τ·g') gradients recombine at the split into unit variance.
    """
    if not 0.0 < tau < 1.0:
        raise ValueError(f"Residual weight tau must be in (0, 1), got {tau}.")
    return tf.cast(math.sqrt(1.0 - tau), skip.dtype) * skip + scaled(residual, math.sqrt(tau), 1.0)


def batched_matmul(a, b, transpose_b=False, forward_scale=1.0, grad_a_scale=1.0, grad_b_scale=1.0):
    """`a @ b` (batched) with separate forward and per-input gradient scales."""

    @tf.custom_gradient
    def op(left, right):
        out = tf.matmul(left, right, transpose_b=transpose_b) * tf.cast(forward_scale, left.dtype)

        def grad(upstream):
            if transpose_b:  # out = l rᵀ: dl = g r, dr = gᵀ l
                grad_left = tf.matmul(upstream, right)
                grad_right = tf.matmul(upstream, left, transpose_a=True)
            else:  # out = l r: dl = g rᵀ, dr = lᵀ g
                grad_left = tf.matmul(upstream, right, transpose_b=True)
                grad_right = tf.matmul(left, upstream, transpose_a=True)
            return (grad_left * tf.cast(grad_a_scale, upstream.dtype),
                    grad_right * tf.cast(grad_b_scale, upstream.dtype))

        return out, grad

    return op(a, b)


def attention(q, k, v, bias=None):
    """Unit-scaled multi-head attention on (batch, heads, seq, head_size) q, k, v.

    `bias` (broadcastable to (batch, heads, seq_q, seq_k)) is added to the
    scores (use large negatives for padding). The softmax runs in float32.
    Returns the context (batch, heads, seq_q, head_size) and the probabilities.
    """
    head_size = int(q.shape[-1])
    seq_q = tf.cast(tf.shape(q)[-2], tf.float32)
    seq_k = tf.cast(tf.shape(k)[-2], tf.float32)
    scores = batched_matmul(
        q, k, transpose_b=True, forward_scale=1.0 / math.sqrt(head_size),
        grad_a_scale=tf.math.rsqrt(seq_k), grad_b_scale=tf.math.rsqrt(seq_q),
    )
    scores = tf.cast(scores, tf.float32)
    if bias is not None:
        scores = scores + tf.cast(bias, tf.float32)
    probs = tf.nn.softmax(scores, axis=-1)
    # Forward: the plain weighted average of v. Token representations in a
    # transformer are strongly correlated across positions (a shared component
    # from the segment/position embeddings that attention averaging
    # reinforces), so the average of unit-variance values stays near unit scale;
    # the "independent values" rescaling ×√S would blow it up to ~√S instead.
    # Backward: for unit-variance scores z the probabilities are e^z / (S·√e) on
    # average, so RMS(p) = √e / S and the softmax Jacobian p ⊙ (dp - <p, dp>)
    # shrinks its gradient by S/√e: the gradient wrt the probabilities is
    # ×S/√(e·d) (÷√d for the head_size-long sum that forms it).
    context = batched_matmul(
        tf.cast(probs, v.dtype), v, forward_scale=1.0,
        grad_a_scale=seq_k / math.sqrt(math.e * head_size), grad_b_scale=1.0,
    )
    return context, probs


def softmax_cross_entropy(labels, logits, weights=None):
    """Mean sparse softmax cross-entropy whose logit gradient has unit scale.

    Forward: the usual weighted mean of -log softmax(logits)[label] (float32).
    Backward: (softmax - one_hot(label)) · weight · √vocab per example (times
    the upstream gradient), instead of dividing by the number of examples, so
    the gradient entering the network is O(1) however large the batch.
    """
    logits = tf.convert_to_tensor(logits)
    vocab = int(logits.shape[-1])
    labels = tf.cast(labels, tf.int32)
    weights = tf.ones(tf.shape(labels), tf.float32) if weights is None else tf.cast(weights, tf.float32)

    @tf.custom_gradient
    def op(z):
        z32 = tf.cast(z, tf.float32)
        per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=z32)
        loss = tf.reduce_sum(per_example * weights) / (tf.reduce_sum(weights) + 1e-5)

        def grad(upstream):
            residual = tf.nn.softmax(z32, axis=-1) - tf.one_hot(labels, vocab, dtype=tf.float32)
            g = residual * weights[..., tf.newaxis] * (math.sqrt(vocab) * upstream)
            return tf.cast(g, z.dtype)

        return loss, grad

    return op(logits)
