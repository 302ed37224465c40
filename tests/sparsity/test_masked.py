"""Movement pruning against a numpy re-implementation; L1 sparsification; the missing-callback error."""

import numpy as np
import pytest
import tf_keras as keras

import tfreparam as tr
from tfreparam import sparsity

RNG = np.random.default_rng(0)
N, IN, OUT = 32, 8, 6
X = RNG.normal(size=(N, IN)).astype("float32")
Y = RNG.normal(size=(N, OUT)).astype("float32")
LR, STEPS, BEGIN, END, FREQ, TARGET = 0.05, 6, 1, 5, 2, 0.75


def _cubic(step):
    """Zhu & Gupta's schedule from 0 at BEGIN to TARGET at END, or None off-schedule."""
    if step < BEGIN or step > END or (step - BEGIN) % FREQ:
        return None
    return TARGET * (1 - (1 - (step - BEGIN) / (END - BEGIN)) ** 3)


def _top(scores, s):
    keep = max(int(np.round(scores.size * (1 - s))), 1)
    mask = np.zeros(scores.size)
    mask[np.argsort(-scores.reshape(-1), kind="stable")[:keep]] = 1
    return mask.reshape(scores.shape)


def _numpy_movement(weights, grads_fn):
    """Full-batch SGD with masks W ⊙ M, scores S -= W ⊙ dL/d(W ⊙ M), masks from the schedule."""
    weights = [w.astype(np.float64) for w in weights]
    masks = [np.ones_like(w) for w in weights[:-1]]  # last entry is the bias
    scores = [np.zeros_like(w) for w in weights[:-1]]
    for step in range(1, STEPS + 1):
        grads = grads_fn([w * m for w, m in zip(weights, masks)] + [weights[-1]])
        for i in range(len(masks)):
            scores[i] -= weights[i] * grads[i]
            weights[i] -= LR * grads[i] * masks[i]
        weights[-1] -= LR * grads[-1]
        target = _cubic(step)
        if target is not None:
            masks = [_top(s, target) for s in scores]
    return masks, scores


def _mse_dpred(pred):
    return 2.0 * (pred - Y) / pred.size  # Keras "mse": mean over batch and outputs


def _dense_grads(params):
    kernel, bias = params
    d = _mse_dpred(X @ kernel + bias)
    return [X.T @ d, d.sum(0)]


def _low_rank_grads(params):
    u, v, bias = params
    d = _mse_dpred(X @ u @ v + bias)
    return [X.T @ (d @ v.T), (X @ u).T @ d, d.sum(0)]


@pytest.mark.parametrize(
    "make, grads_fn",
    [
        (lambda: keras.layers.Dense(OUT, name="proj"), _dense_grads),
        (lambda: tr.LowRankDense(OUT, rank=4, name="proj"), _low_rank_grads),
    ],
    ids=["dense", "low_rank"],
)
def test_movement_masks_match_numpy(make, grads_fn):
    inputs = keras.Input((IN,))
    model = keras.Model(inputs, make()(inputs))
    initial = [w.numpy() for w in model.weights]
    pruned = sparsity.movement_pruning(model, TARGET, begin_step=BEGIN, end_step=END, frequency=FREQ)
    pruned.compile(keras.optimizers.SGD(LR), "mse")
    pruned.fit(X, Y, epochs=STEPS, batch_size=N, verbose=0, callbacks=[sparsity.UpdateMasks()])
    masks, scores = _numpy_movement(initial, grads_fn)
    wrapper = pruned.layers[1]
    for entry, mask, score in zip(wrapper.entries, masks, scores):
        np.testing.assert_allclose(entry.score.numpy(), score, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(entry.mask.numpy(), mask)
    report = sparsity.sparsity_report(pruned)
    for row in report.rows:
        assert row.zeros == row.size - max(int(np.round(row.size * (1 - TARGET))), 1)
    stripped = sparsity.strip(pruned)
    assert type(stripped.layers[1]) is type(model.layers[1])
    np.testing.assert_allclose(stripped(X).numpy(), pruned(X, training=False).numpy(), atol=1e-6)


def test_l1_drives_weights_down_and_threshold_hits_target():
    inputs = keras.Input((IN,))
    model = keras.Model(inputs, tr.LowRankDense(OUT, rank=4, name="proj")(inputs))

    def l1_norms(l1):
        m = sparsity.l1_sparsification(model, 0.6, l1=l1)
        m.compile(keras.optimizers.Adam(0.02), "mse")
        m.fit(X, Y, epochs=40, batch_size=N, verbose=0, callbacks=[sparsity.UpdateMasks()])
        return m, [np.abs(e.weight.numpy()).sum() for e in m.layers[1].entries]

    _, weak = l1_norms(1e-6)
    strong_model, strong = l1_norms(0.05)
    assert all(s < 0.6 * w for s, w in zip(strong, weak)), (strong, weak)
    wrapper = strong_model.layers[1]
    for entry in wrapper.entries:  # threshold at the end of fit: the smallest |W| go
        w, mask = np.abs(entry.weight.numpy()), entry.mask.numpy()
        keep = max(int(np.round(w.size * 0.4)), 1)
        assert mask.sum() == keep
        assert w[mask == 0].max() <= w[mask == 1].min()
    # Zeros stay zero through further training.
    before = sparsity.sparsity_report(strong_model).as_dict()
    strong_model.fit(X, Y, epochs=2, batch_size=N, verbose=0, callbacks=[sparsity.UpdateMasks()])
    assert sparsity.sparsity_report(strong_model).as_dict() == before
    assert all(v == pytest.approx(0.6, abs=0.04) for v in before.values())


def test_missing_callback_is_loud_and_arguments_checked():
    inputs = keras.Input((IN,))
    model = keras.Model(inputs, keras.layers.Dense(OUT)(inputs))
    pruned = sparsity.movement_pruning(model, 0.5, 0, 4)
    pruned.compile("sgd", "mse")
    with pytest.raises(Exception, match="UpdateMasks"):
        pruned.fit(X, Y, epochs=1, batch_size=N, verbose=0)
    with pytest.raises(ValueError, match="end_step >= begin_step"):
        sparsity.movement_pruning(model, 0.5, 4, 2)
    with pytest.raises(ValueError, match="`l1` must be > 0"):
        sparsity.l1_sparsification(model, 0.5, l1=0.0)
    with pytest.raises(ValueError, match=r"Sparsities must be in \[0, 1\)"):
        sparsity.movement_pruning(model, 1.0, 0, 4)
