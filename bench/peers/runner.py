"""The measurement protocol every BERT implementation's runner follows.

Each implementation (ours and each peer) runs in its own process, started by
`bench/bert_peers.py` with that implementation's interpreter (a peer venv under
`bench/peers/.venvs/`, or our `.venv`). The runner script builds the model,
hands a no-argument step callable to `measure()`, and `measure()` prints one
line `BENCH_RESULT {json}` that the orchestrator reads back.

This module imports only the standard library and `bench.common` (also
stdlib-only), so it works in every venv; runner scripts put the repository
root on `sys.path` before importing it.

What is measured, identically for every implementation:
  * inference: the encoder's forward pass (dropout off) on a batch of token
    ids, segment ids and an all-ones padding mask; the step returns only once
    the sequence output is materialised on the host.
  * training: one full MLM training step -- encoder, gather the hidden states
    at `num_predictions` masked positions per sequence, MLM transform (dense +
    GELU + LayerNorm), decoder tied to the word embeddings plus an output bias,
    mean sparse cross-entropy, gradients, and an Adam update (lr 1e-4) of every
    weight -- with dropout on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:
    # Appended, not prepended: in a peer venv nothing of ours may shadow the peer's packages.
    sys.path.append(REPO_ROOT)

from bench import common  # noqa: E402  (needs the path above)

RESULT_PREFIX = "BENCH_RESULT "
MODES = ("inference", "training")


@dataclasses.dataclass(frozen=True)
class Shape:
    """A BERT encoder shape, spelled the way every implementation needs it."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    type_vocab_size: int = 2

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads


SHAPES = {
    # all-MiniLM-L6-v2's shape, and BERT-base's; both use the uncased BERT vocabulary.
    "minilm": Shape("minilm", num_layers=6, hidden_size=384, num_heads=12, intermediate_size=1536),
    "base": Shape("base", num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
}

DEFAULT_BATCH = {"inference": 32, "training": 16}
NUM_PREDICTIONS = 20  # masked positions per sequence in the MLM step (BERT's max_predictions_per_seq)
LEARNING_RATE = 1e-4


def limit_threads(threads: int) -> None:
    """Caps the thread pools that read environment variables; call before importing a framework.

    The frameworks' own pools are set by each runner as well (TF: intra-op
    threads; PyTorch: `torch.set_num_threads`), since not all read these.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None, variants=("default",)) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(SHAPES), default="minilm")
    parser.add_argument("--mode", choices=MODES, default="inference")
    parser.add_argument("--variant", choices=variants, default=variants[0])
    parser.add_argument("--batch", type=int, default=None, help="default: 32 (inference), 16 (training)")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max_foreign_load", type=float, default=0.1,
                        help="largest fraction of the CPU other processes may use during a run")
    parser.add_argument("--max_attempts", type=int, default=3, help="runs tried before keeping a disturbed one")
    parser.add_argument("--idle_timeout_s", type=float, default=60.0,
                        help="how long to wait for an idle machine before each attempt")
    parser.add_argument("--vocab_size", type=int, default=None, help="override (smoke tests use a small vocabulary)")
    parser.add_argument("--num_layers", type=int, default=None, help="override (smoke tests use 1 layer)")
    args = parser.parse_args(argv)
    if args.batch is None:
        args.batch = DEFAULT_BATCH[args.mode]
    for name in ("batch", "seq", "threads", "repeats", "max_attempts"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    shape = SHAPES[args.config]
    overrides = {k: getattr(args, k) for k in ("vocab_size", "num_layers") if getattr(args, k)}
    args.shape = dataclasses.replace(shape, **overrides)
    if args.seq > args.shape.max_position_embeddings:
        parser.error(f"--seq {args.seq} exceeds the {args.shape.max_position_embeddings} position embeddings")
    if args.mode == "training" and args.seq <= NUM_PREDICTIONS:
        parser.error(f"--seq must exceed the {NUM_PREDICTIONS} masked positions of the training step")
    limit_threads(args.threads)
    return args


@dataclasses.dataclass
class Batch:
    """One batch of inputs as numpy arrays (each runner converts them to its own tensors)."""

    token_ids: "object"  # (batch, seq) int32, never 0 ([PAD])
    segment_ids: "object"  # (batch, seq) int32: first half 0, second half 1
    padding_mask: "object"  # (batch, seq) int32, all ones (every position is a real token)
    mask_positions: "object"  # (batch, NUM_PREDICTIONS) int32, sorted, distinct, never 0 ([CLS])
    mask_labels: "object"  # (batch, NUM_PREDICTIONS) int32 target token ids


def make_batch(args) -> Batch:
    import numpy as np

    rng = np.random.default_rng(0)
    b, s, vocab = args.batch, args.seq, args.shape.vocab_size
    segment_ids = np.zeros((b, s), np.int32)
    segment_ids[:, s // 2:] = 1
    positions = np.stack([np.sort(rng.choice(np.arange(1, s), NUM_PREDICTIONS, replace=False)) for _ in range(b)])
    return Batch(
        token_ids=rng.integers(1, vocab, (b, s), dtype=np.int32),
        segment_ids=segment_ids,
        padding_mask=np.ones((b, s), np.int32),
        mask_positions=positions.astype(np.int32),
        mask_labels=rng.integers(1, vocab, (b, NUM_PREDICTIONS), dtype=np.int32),
    )


def measure(step, args, impl: str, extra: dict = None) -> dict:
    """Times `step` (a no-argument callable that returns once its work is done) and prints the record.

    The step was already called once by the runner (tracing / compiling is
    not timed). Runs are repeated while other processes take more than
    `--max_foreign_load` of the CPU, at most `--max_attempts` times;
    `disturbed` is true when no attempt was quiet.
    """
    cpu_seconds = []  # this process's CPU time per call: a contention-robust view of the work done

    def timed_step():
        start = common._own_cpu_seconds()
        result = step()
        cpu_seconds.append(common._own_cpu_seconds() - start)
        return result

    timing = common.quiet_timing(
        timed_step,
        repeats=args.repeats,
        warmup=args.warmup,
        max_foreign_load=args.max_foreign_load,
        max_attempts=args.max_attempts,
        idle_timeout_s=args.idle_timeout_s,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    record = {
        "impl": impl,
        "config": args.config,
        "mode": args.mode,
        "variant": args.variant,
        "seq_per_s": args.batch / timing.median,
        "peak_rss_mb": common.peak_rss_mb(),
        "batch": args.batch,
        "seq_length": args.seq,
        "threads": args.threads,
        "step_ms": 1e3 * timing.median,
        # CPU seconds per step in the last attempt (all threads of this process; spinning included).
        "cpu_ms_per_step": 1e3 * sorted(cpu_seconds[-args.repeats:])[args.repeats // 2],
        "times_ms": [1e3 * t for t in timing.seconds],
        "spread": timing.spread,
        "foreign_load": timing.foreign_load,
        "attempts": timing.attempts,
        "disturbed": timing.foreign_load > args.max_foreign_load,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if args.shape != SHAPES[args.config]:
        record["shape_override"] = dataclasses.asdict(args.shape)
    record.update(extra or {})
    print(RESULT_PREFIX + json.dumps(record), flush=True)
    return record


def parse_result(stdout: str) -> dict:
    """The record a runner printed (the last `BENCH_RESULT` line of its stdout)."""
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise ValueError("The runner printed no BENCH_RESULT line; see its stderr.")
    return json.loads(lines[-1][len(RESULT_PREFIX):])
