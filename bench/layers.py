"""Training-step speed of the reparameterized layers against `Dense`.

What it measures: one training-like step of a layer on a (4096, in) input --
the forward pass under a `tf.GradientTape`, then the gradient with respect to
the input and every trainable weight, for a fixed random upstream gradient --
compared with the same step of a `keras.layers.Dense(out)`, for
(in -> out) = (768 -> 3072) and (3072 -> 768), at several ranks / term counts
of each layer family.

How: each step runs inside a `tf.function` traced once (graph mode, no XLA)
and, unless `--noxla`, a second one with `jit_compile=True`. After `--warmup`
untimed calls, `--repeats` calls are timed and the median kept. Before every
measurement the script waits for the machine to be idle, and it repeats a
measurement during which other processes used more than `--max_foreign_load`
of the CPU (read from /proc/stat, minus this process's own CPU time). All
cases are measured `--rounds` times, in turn, and each keeps its fastest
round's median (slow-downs from outside the VM do not show up in /proc/stat).

Reported per layer: parameters, FLOP ratio (dense_flops / flops of the forward
pass; the backward pass costs about twice the forward for both layers, so the
ratio holds for the whole step), measured speedup (dense time / layer time)
and efficiency = speedup / FLOP ratio (1.0 = the layer is as fast as its FLOP
count promises, relative to Dense).

Run (from the repository root):

    python -m bench.layers                 # full run, writes bench/results/layers.{json,md}
    python -m bench.layers --quick         # tiny smoke run, prints only
    python -m bench.layers --repeats 20 --warmup 5 --out_dir /tmp/results
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from absl import app, flags, logging

from bench import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 10, "Timed steps per measurement (the median is kept).")
flags.DEFINE_integer("warmup", 3, "Untimed steps before each measurement.")
flags.DEFINE_integer("rounds", 2, "Passes over all cases; each case keeps its fastest pass, "
                     "which filters out slow-downs the load check cannot see.")
flags.DEFINE_string("out_dir", "bench/results", "Where layers.json and layers.md go.")
flags.DEFINE_bool("quick", False, "Tiny smoke run: small batch, one config per family, no files "
                  "written unless --out_dir is given explicitly.")
flags.DEFINE_integer("batch", 4096, "Rows of the input (--quick uses 128).")
flags.DEFINE_bool("xla", True, "Also time the step compiled with XLA (jit_compile=True).")
flags.DEFINE_float("max_foreign_load", 0.1, "Largest fraction of the CPU other processes may "
                   "use during a measurement before it is repeated.")

SHAPES = ((768, 3072), (3072, 768))

# Tensor-train modes: 768 = 8·8·12 and 3072 = 16·16·12, ordered so that equal
# positions pair the small input modes with the large output modes (8↔16, 12↔12).
# Of all orderings of these factors, this pairing needs the fewest FLOPs.
TT_MODES = {768: (8, 8, 12), 3072: (16, 16, 12)}

TARGETS = (
    # (family, config filter, minimum efficiency)
    ("LowRankDense", lambda spec: spec.kwargs["rank"] <= 128, 0.8),
    ("KroneckerDense", lambda spec: True, 0.5),
    ("TTDense", lambda spec: True, 0.5),
)


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One layer configuration to benchmark."""

    family: str  # class name in tfreparam
    label: str  # short human-readable config
    kwargs: dict

    def make(self, units: int):
        import tfreparam as tr

        return getattr(tr, self.family)(units, **self.kwargs)


def layer_specs(in_features: int, out_features: int, quick: bool) -> list[LayerSpec]:
    """The configurations timed for one (in -> out) shape."""
    from tfreparam.layers import balanced_factors

    fin2, fout2 = balanced_factors(in_features, 2), balanced_factors(out_features, 2)
    tt = dict(input_factors=TT_MODES[in_features], output_factors=TT_MODES[out_features])
    two_modes = dict(input_factors=fin2, output_factors=fout2)
    modes = lambda f: "x".join(map(str, f))  # noqa: E731
    specs = [LayerSpec("LowRankDense", f"rank={r}", dict(rank=r)) for r in (32, 64, 128, 256)]
    specs += [
        LayerSpec("KroneckerDense", f"terms={k} ({modes(fin2)}->{modes(fout2)})", dict(num_terms=k))
        for k in (1, 4, 16)
    ]
    specs += [
        LayerSpec(
            "TTDense",
            f"ranks={r} ({modes(tt['input_factors'])}->{modes(tt['output_factors'])})",
            dict(tt, ranks=r),
        )
        for r in (8, 16, 32)
    ]
    specs += [
        LayerSpec("TuckerDense", f"ranks=16 ({modes(fin2)}->{modes(fout2)})", dict(two_modes, ranks=16)),
        LayerSpec("CPDense", f"rank=64 ({modes(fin2)}->{modes(fout2)})", dict(two_modes, rank=64)),
        LayerSpec(
            "BlockTermDense",
            f"ranks=8 blocks=4 ({modes(fin2)}->{modes(fout2)})",
            dict(two_modes, ranks=8, num_blocks=4),
        ),
    ]
    if quick:
        seen, kept = set(), []
        for spec in specs:
            if spec.family not in seen:
                seen.add(spec.family)
                kept.append(spec)
        specs = kept
    return specs


# -- the timed step -----------------------------------------------------------


def make_step(layer, x, dy, jit_compile: bool) -> Callable[[], object]:
    """A no-argument callable running one forward+backward step of `layer`.

    The step returns the output and all gradients so that nothing can be pruned
    from the graph; the `tf.function` is traced here, once.
    """
    import tensorflow as tf

    @tf.function(jit_compile=jit_compile, autograph=False)
    def step(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
        grads = tape.gradient(y, [x] + layer.trainable_variables, output_gradients=dy)
        return y, grads

    step(x, dy)  # trace (and compile) outside the timed region

    def run():
        result = step(x, dy)
        if step.experimental_get_tracing_count() != 1:
            raise RuntimeError(f"The step of {layer.name} was traced more than once.")
        return result

    return run


def measure(run: Callable[[], object]) -> common.Timing:
    return common.quiet_timing(
        run,
        repeats=FLAGS.repeats,
        warmup=FLAGS.warmup,
        max_foreign_load=FLAGS.max_foreign_load,
        log=lambda msg: logging.info(msg),
    )


def modes() -> list[tuple[str, bool]]:
    return [("graph", False)] + ([("xla", True)] if FLAGS.xla else [])


@dataclasses.dataclass
class Case:
    """One layer on one input shape: its description, step callables and best timings."""

    info: dict
    steps: dict  # mode -> no-argument step callable
    best: dict = dataclasses.field(default_factory=dict)  # mode -> fastest common.Timing

    @property
    def name(self) -> str:
        return f"{self.info['layer']} {self.info['config']} {self.info['in']}->{self.info['out']}"

    def measure_round(self) -> None:
        """Times every mode once more; keeps the round with the lowest median."""
        for mode, run in self.steps.items():
            timing = measure(run)
            if mode not in self.best or timing.median < self.best[mode].median:
                self.best[mode] = timing
        logging.info("%s: %s", self.name, ", ".join(
            f"{m} {1e3 * self.best[m].median:.1f} ms" for m in self.steps))


def make_case(layer, family: str, config: str, kwargs: dict, x, dy) -> Case:
    """Builds `layer` for `x` and traces (and for XLA compiles) its steps."""
    batch, in_features = x.shape
    layer.build((None, in_features))
    info = {
        "layer": family,
        "config": config,
        "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
        "in": int(in_features),
        "out": int(dy.shape[1]),
        "batch": int(batch),
        "params": layer.count_params(),
    }
    if family != "Dense":
        info.update(
            params=layer.num_params,
            dense_params=layer.dense_num_params,
            flops=layer.flops((batch,)),
            dense_flops=layer.dense_flops((batch,)),
            flop_ratio=layer.dense_flops((batch,)) / layer.flops((batch,)),
            plan=layer._plan.describe(),
        )
    steps = {mode: make_step(layer, x, dy, jit) for mode, jit in modes()}
    return Case(info, steps)


def shape_cases(in_features: int, out_features: int, batch: int, quick: bool) -> list[Case]:
    """The Dense baseline (first) and every layer spec for one (in -> out) shape."""
    import tensorflow as tf
    import tf_keras as keras

    tf.random.set_seed(0)
    x = tf.random.normal((batch, in_features))
    dy = tf.random.normal((batch, out_features))
    cases = [make_case(keras.layers.Dense(out_features), "Dense", "-", {}, x, dy)]
    for spec in layer_specs(in_features, out_features, quick):
        cases.append(make_case(spec.make(out_features), spec.family, spec.label, spec.kwargs, x, dy))
    return cases


def timing_record(timing: common.Timing, dense: common.Timing, flop_ratio: float) -> dict:
    speedup = dense.median / timing.median
    return {
        "median_ms": 1e3 * timing.median,
        "dense_median_ms": 1e3 * dense.median,
        "speedup": speedup,
        "efficiency": speedup / flop_ratio,
        "spread": timing.spread,
        "foreign_load": timing.foreign_load,
        "dense_foreign_load": dense.foreign_load,
        "attempts": timing.attempts,
        "times_ms": [1e3 * s for s in timing.seconds],
    }


def shape_records(cases: list[Case]) -> list[dict]:
    """One record per layer of a shape, timed relative to that shape's Dense case."""
    dense, layers = cases[0], cases[1:]
    records = []
    for case in layers:
        record = dict(case.info)
        for mode in case.steps:
            record[mode] = timing_record(case.best[mode], dense.best[mode], record["flop_ratio"])
        records.append(record)
    return records


# -- reporting ------------------------------------------------------------------


def table_rows(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    headers = ["layer", "config", "in->out", "params", "FLOP ratio", "ms", "dense ms",
               "speedup", "efficiency"]
    if FLAGS.xla:
        headers += ["XLA ms", "XLA dense ms", "XLA speedup", "XLA efficiency"]
    rows = []
    for r in records:
        row = [r["layer"], r["config"], f"{r['in']}->{r['out']}", f"{r['params']:,}",
               f"{r['flop_ratio']:.2f}"]
        for mode, _ in modes():
            t = r[mode]
            mark = lambda load: "*" if load > FLAGS.max_foreign_load else ""  # noqa: E731
            row += [f"{t['median_ms']:.1f}{mark(t['foreign_load'])}",
                    f"{t['dense_median_ms']:.1f}{mark(t['dense_foreign_load'])}",
                    f"{t['speedup']:.2f}", f"{t['efficiency']:.2f}"]
        rows.append(row)
    return headers, rows


def evaluate_targets(records: list[dict]) -> list[dict]:
    """Checks each efficiency target, separately for every timing mode (graph, XLA)."""
    verdicts = []
    for family, applies, minimum in TARGETS:
        for r in records:
            spec = LayerSpec(r["layer"], r["config"], r["kwargs"])
            if r["layer"] != family or not applies(spec):
                continue
            for mode, _ in modes():
                eff = r[mode]["efficiency"]
                verdicts.append({
                    "layer": family, "config": r["config"], "in->out": f"{r['in']}->{r['out']}",
                    "mode": mode, "efficiency": eff, "minimum": minimum, "met": eff >= minimum,
                })
    return verdicts


def targets_table(verdicts: list[dict]) -> tuple[list[str], list[list[str]]]:
    headers = ["layer", "config", "in->out", "mode", "efficiency", "target", "met"]
    rows = [[v["layer"], v["config"], v["in->out"], v["mode"], f"{v['efficiency']:.2f}",
             f">= {v['minimum']}", "yes" if v["met"] else "NO"] for v in verdicts]
    return headers, rows


def markdown_report(records, verdicts, machine) -> str:
    headers, rows = table_rows(records)
    t_headers, t_rows = targets_table(verdicts)
    batch = records[0]["batch"] if records else FLAGS.batch
    return "\n".join([
        "# Layer training-step benchmark",
        "",
        f"Forward + backward (gradients w.r.t. input and all weights) on a ({batch}, in) input, "
        f"median of {FLAGS.repeats} steps after {FLAGS.warmup} warm-up steps (fastest of "
        f"{FLAGS.rounds} rounds), `tf.function` "
        "traced once; `XLA` columns use `jit_compile=True`. FLOP ratio = dense_flops / flops "
        "(forward); speedup = Dense time / layer time; efficiency = speedup / FLOP ratio.",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs, TensorFlow "
        f"{machine.get('tensorflow', '?')}. Generated by `python -m bench.layers`.",
        "",
        common.markdown_table(headers, rows),
        "",
        "`*`: every attempt at this measurement was disturbed by other processes "
        f"(> {FLAGS.max_foreign_load:.0%} of the CPU); the least disturbed one is shown.",
        "",
        "## Targets (efficiency)",
        "",
        common.markdown_table(t_headers, t_rows),
        "",
    ])


def write_results(records, verdicts, machine) -> None:
    payload = {
        "benchmark": "layers",
        "flags": {name: FLAGS[name].value for name in
                  ("repeats", "warmup", "rounds", "batch", "xla", "quick", "max_foreign_load")},
        "machine": machine,
        "records": records,
        "targets": verdicts,
    }
    common.write_json(os.path.join(FLAGS.out_dir, "layers.json"), payload)
    with open(os.path.join(FLAGS.out_dir, "layers.md"), "w") as f:
        f.write(markdown_report(records, verdicts, machine))
    logging.info("Wrote %s/layers.{json,md}", FLAGS.out_dir)


def main(argv):
    del argv
    if FLAGS.quick:
        if not FLAGS["batch"].present:
            FLAGS.batch = 128
        if not FLAGS["repeats"].present:
            FLAGS.repeats = 3
        if not FLAGS["warmup"].present:
            FLAGS.warmup = 1
        if not FLAGS["rounds"].present:
            FLAGS.rounds = 1
    machine = common.machine_info()
    groups = [shape_cases(i, o, FLAGS.batch, FLAGS.quick) for i, o in SHAPES]
    for round_index in range(FLAGS.rounds):
        logging.info("Round %d of %d", round_index + 1, FLAGS.rounds)
        for cases in groups:
            for case in cases:
                case.measure_round()
    records = [record for cases in groups for record in shape_records(cases)]
    verdicts = evaluate_targets(records)
    print(common.text_table(*table_rows(records)))
    print()
    print(common.text_table(*targets_table(verdicts)))
    if not FLAGS.quick or FLAGS["out_dir"].present:
        write_results(records, verdicts, machine)


if __name__ == "__main__":
    app.run(main)
