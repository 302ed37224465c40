"""Mixed-precision policies for training tfreparam models and the BERT.

`set_policy("mixed_float16" | "mixed_bfloat16" | "float32")` sets the global
tf_keras dtype policy, so layers created afterwards compute in float16 /
bfloat16 while keeping float32 variables. `policy_scope(...)` does the same
for a `with` block and restores the previous policy on exit (tests, recipes
that build several models). `wrap_optimizer` puts an optimizer in a
`LossScaleOptimizer` under "mixed_float16" (float16 gradients underflow
without loss scaling; bfloat16 has float32's exponent range and needs none).

What stays float32 in our models: variables (the policy's variable dtype),
the attention softmax (`bert.layers.AttentionMath` casts the scores),
LayerNormalization (tf_keras computes it in float32 for half inputs), and the
losses (`bert.BertPretrainer` casts logits to float32; pass float32 logits to
Keras losses yourself in custom code, or use `float32_output`).
"""

from __future__ import annotations

import contextlib

import tensorflow as tf
import tf_keras as keras

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
# Pure half precision (no float32 master variables): for unit-scaling experiments only.
_EXPERT_POLICIES = ("float16", "bfloat16")


def _check(name: str, allow_pure: bool = False) -> str:
    allowed = POLICIES + (_EXPERT_POLICIES if allow_pure else ())
    if isinstance(name, keras.mixed_precision.Policy):
        name = name.name
    if name not in allowed:
        raise ValueError(f"Unknown precision policy {name!r}; choose one of {allowed}.")
    return name


def set_policy(name: str, allow_pure: bool = False) -> keras.mixed_precision.Policy:
    """Sets the global tf_keras dtype policy and returns it.

    `allow_pure=True` also accepts "float16" / "bfloat16" (variables in half
    precision too), which ordinary training should not use.
    """
    policy = keras.mixed_precision.Policy(_check(name, allow_pure))
    keras.mixed_precision.set_global_policy(policy)
    return policy


def get_policy() -> keras.mixed_precision.Policy:
    return keras.mixed_precision.global_policy()


@contextlib.contextmanager
def policy_scope(name: str, allow_pure: bool = False):
    """`with policy_scope("mixed_bfloat16"): model = build()`; restores the previous policy after."""
    previous = keras.mixed_precision.global_policy()
    try:
        yield set_policy(name, allow_pure)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def wrap_optimizer(optimizer, policy=None):
    """The optimizer to compile with under `policy` (default: the global one).

    Under "mixed_float16" returns a dynamic `LossScaleOptimizer` around it
    (`model.fit` then scales the loss and unscales the gradients; a custom
    loop must use `get_scaled_loss` / `get_unscaled_gradients`, or call
    `optimizer.minimize(loss, vars, tape=tape)`, which does both). Otherwise,
    or if it is already wrapped, returns it unchanged.
    """
    name = _check(policy or keras.mixed_precision.global_policy().name, allow_pure=True)
    optimizer = keras.optimizers.get(optimizer)
    if name == "mixed_float16" and not isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer):
        return keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def float32_output(name: str = "float32_output") -> keras.layers.Layer:
    """A linear `Activation` that casts its input to float32: put it before the loss / softmax."""
    return keras.layers.Activation("linear", dtype="float32", name=name)


def compute_dtype(policy=None) -> tf.DType:
    policy = keras.mixed_precision.Policy(_check(policy, True)) if policy else keras.mixed_precision.global_policy()
    return tf.as_dtype(policy.compute_dtype)
