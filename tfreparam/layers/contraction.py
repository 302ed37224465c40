"""Planning and running the factor-by-factor contraction of a reparameterized layer.

A reparameterized kernel is a small tensor network: the input `x` (one batch
axis `n` and the input modes) meets a handful of factors (low-rank matrices,
Kronecker factors, tensor-train cores, Tucker cores...) that share named axes.
`ContractionPlan` picks the order of pairwise contractions with the lowest
cost -- FLOPs plus a per-element charge for every activation transpose, which
on CPUs costs as much as a sizeable matmul -- by dynamic programming over
subsets of factors, and runs each step as transpose -> reshape -> matmul, the
ops every backend (XLA, TFLite, ONNX) handles well.

Every step contracts the running activation with one factor. The plan never
multiplies two factors together: such weight-only subgraphs are constant-folded
by the TFLite converter into a dense matrix, silently undoing the compression.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import tensorflow as tf

BATCH = "n"  # label of the (flattened, dynamic) example axis of the activation

# Planning cost of moving one activation element in a transpose, in FLOPs.
# Measured on 2-core AVX-512 CPUs: transposing a 50 MB activation takes as
# long as ~1.3 GFLOP of matmul, i.e. ~25 FLOPs per byte moved, ~100 per float32
# element; both the transpose and its gradient pay it, as do the matmuls.
TRANSPOSE_COST = 100


@dataclasses.dataclass(frozen=True)
class Operand:
    """A factor as seen by the planner: one label and static size per axis."""

    labels: tuple[str, ...]
    shape: tuple[int, ...]

    def __post_init__(self):
        if len(self.labels) != len(self.shape):
            raise ValueError(f"Operand labels {self.labels} do not match shape {self.shape}.")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"Operand labels {self.labels} repeat an axis.")


@dataclasses.dataclass(frozen=True)
class _Step:
    operand: int
    state_labels: tuple[str, ...]  # logical axes of the state before the step
    batch: tuple[str, ...]  # shared labels kept as matmul batch axes
    kept: tuple[str, ...]  # state-only labels (include BATCH)
    contracted: tuple[str, ...]  # shared labels summed over
    new: tuple[str, ...]  # factor-only labels
    flops_per_example: int
    moved_per_example: int  # activation elements transposed before the matmul


def _prod(values) -> int:
    return int(math.prod(values))


class ContractionPlan:
    """The cheapest sequence of pairwise contractions of `x` with `operands`.

    Args:
      input_labels/input_shape: the modes the input features are reshaped into.
      operands: the factors, each with labelled axes.
      output_labels: the modes of the output features, in row-major order.
    """

    def __init__(
        self,
        input_labels: Sequence[str],
        input_shape: Sequence[int],
        operands: Sequence[Operand],
        output_labels: Sequence[str],
    ):
        self.input_labels = tuple(input_labels)
        self.output_labels = tuple(output_labels)
        self.operands = tuple(operands)
        self.sizes = {BATCH: 1}
        for labels, shape in [(self.input_labels, tuple(input_shape))] + [
            (op.labels, op.shape) for op in self.operands
        ]:
            for label, size in zip(labels, shape):
                if self.sizes.setdefault(label, size) != size:
                    raise ValueError(
                        f"Axis {label!r} has size {self.sizes[label]} in one factor "
                        f"and {size} in another."
                    )
        self._check_every_label_is_used()
        self.steps = self._best_order()

    # -- planning ---------------------------------------------------------

    def _check_every_label_is_used(self):
        counts = {}
        for labels in [self.input_labels, self.output_labels] + [op.labels for op in self.operands]:
            for label in labels:
                counts[label] = counts.get(label, 0) + 1
        lonely = sorted(label for label, count in counts.items() if count < 2)
        if lonely:
            raise ValueError(f"Axes {lonely} appear in only one place of the tensor network.")

    def _state_after(self, done: frozenset) -> tuple[str, ...]:
        """Labels alive after contracting the factors in `done` (in a canonical order)."""
        needed = set(self.output_labels) | {BATCH}
        for i, op in enumerate(self.operands):
            if i not in done:
                needed.update(op.labels)
        seen = (BATCH,) + self.input_labels
        for i in sorted(done):
            seen += self.operands[i].labels
        alive = []
        for label in seen:
            if label in needed and label not in alive:
                alive.append(label)
        return tuple(alive)

    def _step(self, done: frozenset, index: int, state: tuple[str, ...]) -> _Step:
        op = self.operands[index]
        after = set(self._state_after(done | {index}))
        shared = [label for label in state if label in op.labels]
        batch = tuple(label for label in shared if label in after)
        contracted = tuple(label for label in shared if label not in after)
        kept = tuple(label for label in state if label not in op.labels)
        # Output axes first, in output order; axes a later factor contracts go
        # last, where the next step wants them (reordering a factor is free).
        new = tuple(sorted(
            (label for label in op.labels if label not in state),
            key=lambda label: (0, self.output_labels.index(label)) if label in self.output_labels else (1, 0),
        ))
        flops = 2 * _prod(self.sizes[label] for label in batch + kept + contracted + new)
        moved = _moved(state, batch + kept + contracted, self.sizes)
        return _Step(index, state, batch, kept, contracted, new, flops, moved)

    def _best_order(self) -> tuple[_Step, ...]:
        # Dynamic programming over subsets of factors: which axes are alive after
        # a subset does not depend on the order it was applied in (their order,
        # and so later transposes, does; each subset keeps its cheapest path).
        count = len(self.operands)
        best = {frozenset(): (0, ())}
        for size in range(count):
            for done, (cost, steps) in sorted(
                ((k, v) for k, v in best.items() if len(k) == size), key=lambda kv: sorted(kv[0])
            ):
                state = (
                    (BATCH,) + self.input_labels
                    if not steps
                    else self._labels_after_step(steps[-1])
                )
                for index in range(count):
                    if index in done:
                        continue
                    step = self._step(done, index, state)
                    key = done | {index}
                    total = cost + step.flops_per_example + TRANSPOSE_COST * step.moved_per_example
                    if len(key) == count:  # the final reorder into output order
                        final = _moved(self._labels_after_step(step), (BATCH,) + self.output_labels, self.sizes)
                        total += TRANSPOSE_COST * final
                    if key not in best or total < best[key][0]:
                        best[key] = (total, steps + (step,))
        return best[frozenset(range(count))][1]

    @staticmethod
    def _labels_after_step(step: _Step) -> tuple[str, ...]:
        return step.batch + step.kept + step.new

    @property
    def flops_per_example(self) -> int:
        """Multiply-adds x 2 for one input row (the plan is linear in the batch)."""
        return sum(step.flops_per_example for step in self.steps)

    def describe(self) -> str:
        lines = []
        for step in self.steps:
            lines.append(
                f"factor {step.operand}: batch={step.batch} contract={step.contracted} "
                f"keep={step.kept} new={step.new} flops/example={step.flops_per_example} "
                f"transposed/example={step.moved_per_example}"
            )
        return "\n".join(lines)

    # -- execution --------------------------------------------------------

    def __call__(self, x: tf.Tensor, factors: Sequence[tf.Tensor], between=None) -> tf.Tensor:
        """Applies the plan to `x` of shape (N, prod(input_shape)).

        `between`: optional callables, one per step but the last, each applied
        to the running activation after its step (QAT puts fake-quants there).
        """
        state_labels = (BATCH,) + self.input_labels
        state = x
        for index, step in enumerate(self.steps):
            op = self.operands[step.operand]
            target = step.batch + step.kept + step.contracted
            state = _permute(state, state_labels, target, self.sizes)
            m = -1  # the BATCH axis is always among `kept`
            k = _prod(self.sizes[label] for label in step.contracted)
            b = _prod(self.sizes[label] for label in step.batch)
            factor = _permute(
                tf.reshape(factors[step.operand], op.shape),
                op.labels,
                step.batch + step.contracted + step.new,
                self.sizes,
            )
            width = _prod(self.sizes[label] for label in step.new)
            if step.batch:
                state = tf.matmul(tf.reshape(state, (b, m, k)), tf.reshape(factor, (b, k, width)))
            else:
                state = tf.matmul(tf.reshape(state, (m, k)), tf.reshape(factor, (k, width)))
            if between is not None and index < len(self.steps) - 1:
                state = between[index](state)
            state_labels = self._labels_after_step(step)
        state = _permute(state, state_labels, (BATCH,) + self.output_labels, self.sizes)
        return tf.reshape(state, (-1, _prod(self.sizes[label] for label in self.output_labels)))


def _groups(labels, target):
    """Runs of `target` labels that are consecutive and in order in `labels` too."""
    labels, target = tuple(labels), tuple(target)
    groups = []
    for label in target:
        if groups and labels.index(label) == labels.index(groups[-1][-1]) + 1:
            groups[-1].append(label)
        else:
            groups.append([label])
    return groups


def _moved(labels, target, sizes) -> int:
    """Elements per example a transpose from `labels` to `target` order moves (0 if none)."""
    groups = _groups(labels, target)
    order = [tuple(labels).index(group[0]) for group in groups]
    if order == sorted(order):
        return 0
    return _prod(sizes[label] for label in labels if label != BATCH)


def _permute(tensor, labels, target, sizes):
    """Transposes `tensor` (logical axes `labels`) to `target` order.

    Axes that stay adjacent and in order are merged first, so the transpose has
    as few dimensions as possible (TFLite's TRANSPOSE supports at most 6) and
    an identity permutation costs nothing.
    """
    labels, target = tuple(labels), tuple(target)
    groups = _groups(labels, target)
    source_groups = sorted(groups, key=lambda group: labels.index(group[0]))
    perm = [source_groups.index(group) for group in groups]
    if perm == sorted(perm):
        return tensor
    shape = [
        -1 if BATCH in group else _prod(sizes[label] for label in group) for group in source_groups
    ]
    return tf.transpose(tf.reshape(tensor, shape), perm)
