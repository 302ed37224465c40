"""FLOP inventory of a BERT inference pass or MLM training step, and the matmul-bound ceiling.

Pure arithmetic (no TensorFlow, no flags): `bench/gemm.py` times each product
listed here and turns the timings into a seq/s ceiling with `ceiling`.
"""

from __future__ import annotations

import dataclasses

from bench.peers import runner


@dataclasses.dataclass(frozen=True)
class Matmul:
    """`count` products of shape (batch, m, k) . (batch, k, n) (batch 1 = a plain 2-D matmul).

    `transpose_a` / `transpose_b` say how the operands are stored, as the
    backward pass's products read them (dX = dY . Wᵀ, dW = Xᵀ . dY).
    """

    name: str
    m: int
    k: int
    n: int
    batch: int = 1
    count: int = 1
    transpose_a: bool = False
    transpose_b: bool = False

    @property
    def flops(self) -> int:
        """FLOPs of one product (2 per multiply-add)."""
        return 2 * self.batch * self.m * self.k * self.n

    @property
    def key(self) -> tuple:
        """Products with the same key run the same kernel; each key is timed once."""
        return (self.batch, self.m, self.k, self.n, self.transpose_a, self.transpose_b)


def _projection(name, tokens, n_in, n_out, count, backward):
    products = [Matmul(name, tokens, n_in, n_out, count=count)]
    if backward:
        products += [
            Matmul(name + " dX", tokens, n_out, n_in, count=count, transpose_b=True),
            Matmul(name + " dW", n_in, tokens, n_out, count=count, transpose_a=True),
        ]
    return products


def matmul_inventory(shape, mode: str, batch: int, seq: int,
                     num_predictions: int = runner.NUM_PREDICTIONS) -> list[Matmul]:
    """Every matrix product of one inference pass or one MLM training step of a BERT `shape`.

    Leaves out the pooler (and, for training, the NSP head): a single
    (batch, h) . (h, h) product, < 0.1 % of the FLOPs.
    """
    if mode not in runner.MODES:
        raise ValueError(f"mode must be one of {runner.MODES}, got {mode!r}.")
    backward = mode == "training"
    L, h, i, heads, d = shape.num_layers, shape.hidden_size, shape.intermediate_size, shape.num_heads, shape.head_size
    tokens = batch * seq
    bh = batch * heads
    products = []
    products += _projection("q/k/v/output projection", tokens, h, h, 4 * L, backward)
    products += _projection("ffn intermediate", tokens, h, i, L, backward)
    products += _projection("ffn output", tokens, i, h, L, backward)
    # scores = q . kᵀ and context = probs . v, per head.
    products.append(Matmul("attention q.kT", seq, d, seq, batch=bh, count=L, transpose_b=True))
    products.append(Matmul("attention probs.v", seq, seq, d, batch=bh, count=L))
    if backward:
        products += [
            Matmul("attention d(q) = dS.k", seq, seq, d, batch=bh, count=L),
            Matmul("attention d(k) = dSᵀ.q", seq, seq, d, batch=bh, count=L, transpose_a=True),
            Matmul("attention d(probs) = dC.vᵀ", seq, d, seq, batch=bh, count=L, transpose_b=True),
            Matmul("attention d(v) = probsᵀ.dC", seq, seq, d, batch=bh, count=L, transpose_a=True),
        ]
        predictions = batch * num_predictions
        products += _projection("mlm transform", predictions, h, h, 1, backward)
        products += [
            Matmul("mlm decoder (tied)", predictions, h, shape.vocab_size, transpose_b=True),
            Matmul("mlm decoder dX", predictions, shape.vocab_size, h),
            Matmul("mlm decoder dE", shape.vocab_size, predictions, h, transpose_a=True),
        ]
    return products


def total_flops(products: list[Matmul]) -> int:
    return sum(p.count * p.flops for p in products)


def ceiling(products: list[Matmul], gflops_by_key: dict, batch: int) -> dict:
    """The seq/s a model would reach if it did nothing but its matmuls, each at its measured speed."""
    seconds = sum(p.count * p.flops / (1e9 * gflops_by_key[p.key]) for p in products)
    flops = total_flops(products)
    return {
        "flops_per_batch": flops,
        "gflop_per_seq": flops / batch / 1e9,
        "matmul_seconds_per_batch": seconds,
        "effective_gflops": flops / seconds / 1e9,
        "ceiling_seq_per_s": batch / seconds,
    }
