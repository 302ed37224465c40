"""Batch-1 latency measured side by side on this machine, and a latency model fitted to such measurements.

On a shared, noisy machine two models timed one after the other can differ
by 2x from one minute to the next. `side_by_side` therefore interleaves:
each round gives every model one turn, in a shuffled order, with one sentence
(padded to the export's sequence length). A turn is a few back-to-back calls
of which only the last is timed: a served model is called again and again
with its weights in cache, while the first call after another model's turn
reloads them from memory (measured on the demo's files: with the fp32 files
in the rounds, one cold call per turn put the original's int8 file at 5.1 ms
instead of 3.4 ms and turned a 1.54x speed-up into 1.35x). Contention only ever adds time,
and a longer call is interrupted more often than a short one, so a busy
machine inflates medians unevenly (on a 2-core machine at load 7 the
original's median was 1.8x its 20th percentile, a pruned model's 1.07x).
The latency of a model is therefore the 20th percentile of its calls, and
its speed-up over the base the ratio of the two 20th percentiles; the
median and the paired median ratio (over rounds, of t(base) / t(model) in
the same round) are reported beside them. One interpreter thread by
default: under contention a multi-threaded call waits on a busy core.

`fit_latency_model` times a few structures of the encoder (random heads and
FFN neurons removed, half the blocks dropped) against the original in int8
and fits, by non-negative least squares,

    t / t(original) = constant + per_block · blocks + per_head · heads + per_head_width · widths
                      + per_neuron · neurons

where `widths` counts kept heads weighted by their width ((query/key + value
width) / twice the head size: a whole head is 1, `narrowing.narrow_heads` to
8/24 of 32 is 0.5); a head's softmax costs the same however narrow it is, its
projections and products shrink with it. The narrowed structure is timed only
when the job narrows heads (otherwise heads and widths are one column). So a
target speed-up becomes a budget of heads and neurons
(`tfreparam.sparsity.search_structure`) and a layer-drop depth can be
matched to a pruned model's speed.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import time
from typing import Callable, Mapping

import numpy as np


def tflite_runner(path_or_bytes, threads: int | None = 1) -> Callable:
    """call(feed) of a `.tflite` file or flatbuffer through its signature runner."""
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(path_or_bytes, (bytes, bytearray)):
        interpreter = Interpreter(model_content=bytes(path_or_bytes), num_threads=threads)
    else:
        interpreter = Interpreter(model_path=str(path_or_bytes), num_threads=threads)
    runner = interpreter.get_signature_runner(next(iter(interpreter.get_signature_list())))
    names = set(runner.get_input_details())

    def call(feed):
        return runner(**{k: v for k, v in feed.items() if k in names})

    call.interpreter = interpreter  # keeps it alive with the runner
    return call


# sentence-transformers' ONNX graphs (MiniLM-L3) name BERT's inputs as Hugging Face does.
HF_INPUTS = {"input_ids": "input_word_ids", "attention_mask": "input_mask", "token_type_ids": "input_type_ids"}


def onnx_runner(path: str, threads: int | None = 1) -> Callable:
    """call(feed) of an ONNX encoder in onnxruntime: our export's inputs or Hugging Face's names (MiniLM-L3)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    inputs = [(i.name, HF_INPUTS.get(i.name, i.name), np.int64 if i.type == "tensor(int64)" else np.int32)
              for i in session.get_inputs()]

    def call(feed):
        return session.run(None, {name: np.asarray(feed[source]).astype(dtype) for name, source, dtype in inputs})

    return call


def side_by_side(runners: Mapping[str, Callable], feed: Mapping[str, np.ndarray], rounds: int = 200,
                 warmup: int = 5, base: str | None = None, seed: int = 0,
                 progress: Callable[[int], None] | None = None, calls_per_turn: int = 2) -> dict:
    """{name: {"ms", "median_ms", "speedup", "paired_median_speedup"}}: interleaved batch-1 timing.

    `ms` is the 20th percentile of the model's calls (see the module docstring);
    `speedup` = ms(base) / ms(name) and `paired_median_speedup` (median over
    rounds of t(base) / t(name)) are present when `base` is one of the runners.
    `progress(rounds done)` is called after each round; each turn makes
    `calls_per_turn` calls and times the last (a warm call). Two suffice: on the
    demo's ten files (AVX2, 2 cores, 100 rounds, twice each) every speed-up
    with two calls per turn was within 0.02 of three's, in two thirds the time.
    """
    if calls_per_turn < 1:
        raise ValueError(f"calls_per_turn must be >= 1, got {calls_per_turn}.")
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name](feed)
    times = {name: [] for name in names}
    order = random.Random(seed)
    for _ in range(rounds):
        order.shuffle(names)
        for name in names:
            for _ in range(calls_per_turn - 1):
                runners[name](feed)
            start = time.perf_counter()
            runners[name](feed)
            times[name].append((time.perf_counter() - start) * 1e3)
        if progress is not None:
            progress(len(times[names[0]]))
    result = {}
    for name, values in times.items():
        values = np.asarray(values)
        result[name] = {"ms": float(np.percentile(values, 20)), "median_ms": float(np.median(values))}
    if base in times:
        for name, values in times.items():
            result[name]["speedup"] = result[base]["ms"] / result[name]["ms"]
            result[name]["paired_median_speedup"] = float(np.median(np.asarray(times[base]) / np.asarray(values)))
    return result


def search_until_measured(select: Callable, measure: Callable, fixed: float, goal: float, accept: float,
                          corrections: int, on_check: Callable[[dict], None] | None = None):
    """Searches a structure for a time `goal`; re-searches while the structure's measured time misses.

    Times are ratios t / t(original). select(budget) returns a structure
    whose modelled cost fits `budget` (the time left after the `fixed`
    part); measure(structure) returns (measured, predicted). A structure is
    accepted when measured <= `accept`; otherwise the model was optimistic
    by measured / predicted, and the next search gets the budget that meets
    `goal` under that optimism (at most `corrections` re-searches; the last
    structure is kept). Returns the structure and one check per search.
    """
    checks, budget = [], goal - fixed
    for attempt in range(1, corrections + 2):
        structure = select(budget)
        measured, predicted = measure(structure)
        check = {"attempt": attempt, "budget": budget, "predicted_ratio": predicted, "measured_ratio": measured,
                 "predicted_speedup": 1.0 / predicted, "measured_speedup": 1.0 / measured}
        checks.append(check)
        if on_check is not None:
            on_check(check)
        if measured <= accept:
            break
        budget = goal * predicted / measured - fixed
    return structure, checks


@dataclasses.dataclass
class LatencyModel:
    """t / t(original int8) as a linear function of the structure (see the module docstring)."""

    constant: float
    per_block: float
    per_head: float
    per_neuron: float
    points: list  # [{"structure", "blocks", "heads", "neurons", "head_widths", "measured", "predicted"}]
    per_head_width: float = 0.0

    def ratio(self, blocks: int, heads: int, neurons: int, head_widths: float | None = None) -> float:
        """Predicted t / t(original); `head_widths` as in the module docstring (default: whole heads)."""
        widths = heads if head_widths is None else head_widths
        return (self.constant + self.per_block * blocks + self.per_head * heads + self.per_head_width * widths
                + self.per_neuron * neurons)

    def head_cost(self, width_share: float = 1.0) -> float:
        """The predicted time of one kept head whose width is `width_share` of a whole head's."""
        return self.per_head + self.per_head_width * width_share

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "LatencyModel":
        return cls(**values)


def fit_nonnegative(features: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """argmin ||F c − t|| over c >= 0, by trying every support (a handful of coefficients)."""
    features, targets = np.asarray(features, np.float64), np.asarray(targets, np.float64)
    best = None
    columns = features.shape[1]
    for size in range(1, columns + 1):
        for support in itertools.combinations(range(columns), size):
            sub = features[:, support]
            solution = np.linalg.lstsq(sub, targets, rcond=None)[0]
            if np.any(solution < 0):
                continue
            residual = float(np.sum((sub @ solution - targets) ** 2))
            if best is None or residual < best[0] - 1e-15:
                coefficients = np.zeros(columns)
                coefficients[list(support)] = solution
                best = (residual, coefficients)
    if best is None:
        raise ValueError("No non-negative latency model fits the measurements.")
    return best[1]


def probe_structures(num_blocks: int, heads: int, neurons: int, narrowed: tuple = ()) -> list[dict]:
    """The structures timed for the fit: {name, keep_blocks, heads_per_block, neurons_per_block[, head_widths]}.

    `narrowed` (query/key, value width) adds every head narrowed to those
    widths, so the fit can tell a head's fixed cost from its width's.
    """
    extra = [dict(name=f"every head narrowed to {narrowed[0]}/{narrowed[1]}", keep_blocks=num_blocks,
                  heads_per_block=heads, neurons_per_block=neurons, head_widths=tuple(narrowed))] if narrowed else []
    return extra + [
        dict(name="half the heads and half the FFN neurons", keep_blocks=num_blocks,
             heads_per_block=max(1, heads // 2), neurons_per_block=max(1, neurons // 2)),
        dict(name="a quarter of the heads", keep_blocks=num_blocks, heads_per_block=max(1, heads // 4),
             neurons_per_block=neurons),
        dict(name="a quarter of the FFN neurons", keep_blocks=num_blocks, heads_per_block=heads,
             neurons_per_block=max(1, neurons // 4)),
        dict(name="half the blocks", keep_blocks=max(1, num_blocks // 2), heads_per_block=heads,
             neurons_per_block=neurons),
    ]


def fit_latency_model(measured: Mapping[str, float], structures: Mapping[str, tuple]) -> LatencyModel:
    """Fits the model to {name: measured t / t(original)} of {name: (blocks, heads, neurons[, head_widths])}.

    Without `head_widths` a structure's heads are whole (widths = heads).
    """
    names = list(measured)
    shapes = {n: (*structures[n][:3], structures[n][3] if len(structures[n]) > 3 else structures[n][1])
              for n in names}
    # Columns: constant, blocks, heads, neurons, widths. With whole heads only, widths repeat heads and the
    # fit (which prefers the earlier column on a tie) keeps per_head_width at 0.
    features = np.array([[1.0, *shapes[n]] for n in names], np.float64)
    targets = np.array([measured[n] for n in names])
    c = fit_nonnegative(features, targets)
    model = LatencyModel(float(c[0]), float(c[1]), float(c[2]), float(c[3]), [], per_head_width=float(c[4]))
    model.points = [{"structure": n, "blocks": int(shapes[n][0]), "heads": int(shapes[n][1]),
                     "neurons": int(shapes[n][2]), "head_widths": float(shapes[n][3]), "measured": float(measured[n]),
                     "predicted": float(model.ratio(*shapes[n]))} for n in names]
    return model
