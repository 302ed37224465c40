r"""The compress job at several settings of its compression knob, one table and one plot.

--policy=structured (default) sweeps --speedups (int8 speed-up targets);
--policy=lowrank / kronecker / tt sweeps --budgets (shares of projection
parameters kept). Each run goes to `<report_dir>/speedup_X` or
`<report_dir>/budget_XX`, so finished stages are reused on a re-run, and
sweep.md, sweep.json and sweep.png (held-out-domain cosine against the
measured int8 speed-up, with the layer-drop baseline where it ran) go to
--report_dir. Every compress flag applies.

With --task_model (the task path, `recipes.task_compress`) it sweeps
--speedups as fp32 speed-up targets of the student over the teacher, one task
compression each, and draws eval accuracy against batch-1 latency of the four
files of every run (`recipes.task_report.write_sweep`). The task flags apply.

    python -m recipes.sweep --speedups=1.2,1.45,1.95
    python -m recipes.sweep --policy=lowrank --budgets=0.25,0.5,0.75 --baselines=int8
    python -m recipes.sweep --task_model=runs/finetune --train_files=train.csv --eval_files=eval.csv \
        --speedups=1.5,2,3 --report_dir=reports/task_sweep
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from recipes import compress  # noqa: F401  defines the shared flags

FLAGS = compress.FLAGS
flags.DEFINE_list("budgets", ["0.25", "0.5", "0.75"], "Budgets to sweep (shares of projection parameters; "
                  "--policy=lowrank / kronecker / tt).", flag_values=FLAGS)
# MiniLM-L6 without its last 1, 2, 3 blocks runs about 1.2x, 1.5x, 2x: at these targets every run has a layer drop
# of (nearly) its own speed to be compared with.
flags.DEFINE_list("speedups", ["1.2", "1.45", "1.95"], "Speed-up targets to sweep (--policy=structured: int8 over "
                  "the original's int8; with --task_model: fp32 student over the teacher).", flag_values=FLAGS)

COLUMNS = ("heldout_domain_cosine", "heldout_domain_cosine_min", "heldout_domain_nn_agreement", "in_domain_cosine",
           "probe_accuracy_compressed", "speedup", "layer_drop_cosine", "layer_drop_speedup")


def _row(value, metrics: dict) -> dict:
    """One run's line: ours (int8 file) beside the layer drop matched to its speed and the original's int8."""
    baselines = metrics.get("baselines", {})
    row = {"value": value, **{k: metrics.get(k) for k in COLUMNS[:5]}, "speedup": metrics.get("compressed_int8_speedup")}
    row["probe_int8"] = metrics.get("probe_accuracy_compressed_int8")
    row["latency_ms"] = metrics.get("latency_ms", {}).get("compressed_int8")
    row["probe_original_int8"] = baselines.get("int8", {}).get("probe_accuracy")
    drop = baselines.get("layer_drop")
    row["layer_drop_blocks"] = drop["keep_blocks"] if drop else None
    row["layer_drop_cosine"] = drop["heldout_domain_cosine"] if drop else None
    row["layer_drop_probe_int8"] = drop["int8"]["probe"] if drop else None
    row["layer_drop_latency_ms"] = drop["int8"]["latency_ms"] if drop else None
    row["layer_drop_speedup"] = drop["int8"]["speedup"] if drop else None
    row["probe_minus_layer_drop"] = metrics.get("probe_differences", {}).get("ours_int8_minus_layer_drop_int8")
    # The same for an exact copy of the original: the most a model faithful to it could lead by.
    row["original_probe_minus_layer_drop"] = metrics.get("probe_differences", {}).get("original_minus_layer_drop_int8")
    # The probe in-domain too (the compression domains' labelled sets, their held-out sentences), beside it.
    models = {m["key"]: m for m in metrics.get("models", [])}
    row["in_domain_probe_int8"] = models.get("compressed_int8", {}).get("in_domain_probe")
    row["layer_drop_in_domain_probe_int8"] = models.get("layer_drop_int8", {}).get("in_domain_probe")
    row["in_domain_probe_minus_layer_drop"] = metrics.get("in_domain_probe_differences", {}).get(
        "ours_int8_minus_layer_drop_int8")
    # Held-out retrieval (WordNet held out): each model ranks in its own space, so the difference needs no copy.
    row["retrieval_minus_layer_drop"] = (metrics.get("retrieval_differences") or {}).get(
        "ours_int8_minus_layer_drop_int8")
    row["beats_layer_drop"] = metrics.get("verdict", {}).get("beats_layer_drop")
    row["probe_lead"] = metrics.get("verdict", {}).get("probe_lead")  # "within noise": a win that is a probe tie
    return row


def _table(rows: list[dict], knob: str) -> str:
    """sweep.md's table: each run's model beside its speed-matched layer drop, then the original's probe."""
    fmt = lambda v, p="{:.4f}": "—" if v is None else p.format(v)  # noqa: E731
    lines = [f"| {knob} | held-out cosine | min | NN top-1 | in-domain cosine | probe (int8) | in-domain probe | "
             "int8 ms | speed-up | layer drop: blocks | cosine | probe (int8) | in-domain probe | ms | speed-up | "
             "probe, ours − layer drop (95 %) | probe, original − layer drop | in-domain probe, ours − layer drop | "
             "retrieval top-1, ours − layer drop | beats it |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]

    def points(d):
        return "—" if not d else f"{100 * d['difference']:+.1f} points ({100 * d['low']:+.1f} to {100 * d['high']:+.1f})"

    for r in rows:
        gap, in_domain_gap = points(r["probe_minus_layer_drop"]), points(r.get("in_domain_probe_minus_layer_drop"))
        ceiling = points(r.get("original_probe_minus_layer_drop"))
        blocks = "—" if r["layer_drop_blocks"] is None else ", ".join(map(str, r["layer_drop_blocks"]))
        lines.append(f"| {r['value']:g} | {fmt(r['heldout_domain_cosine'])} | {fmt(r['heldout_domain_cosine_min'])} | "
                     f"{fmt(r['heldout_domain_nn_agreement'], '{:.3f}')} | {fmt(r['in_domain_cosine'])} | "
                     f"{fmt(r['probe_int8'], '{:.3f}')} | {fmt(r.get('in_domain_probe_int8'), '{:.3f}')} | "
                     f"{fmt(r['latency_ms'], '{:.2f}')} | {fmt(r['speedup'], '{:.2f}x')} | {blocks} | "
                     f"{fmt(r['layer_drop_cosine'])} | {fmt(r['layer_drop_probe_int8'], '{:.3f}')} | "
                     f"{fmt(r.get('layer_drop_in_domain_probe_int8'), '{:.3f}')} | "
                     f"{fmt(r['layer_drop_latency_ms'], '{:.2f}')} | {fmt(r['layer_drop_speedup'], '{:.2f}x')} | "
                     f"{gap} | {ceiling} | {in_domain_gap} | {points(r.get('retrieval_minus_layer_drop'))} | "
                     f"{_beats(r)} |")
    originals = sorted({round(r["probe_original_int8"], 3) for r in rows if r["probe_original_int8"] is not None})
    lines += ["", "Cosine, min, NN top-1 and in-domain cosine: the Keras (fp32) models; probe, ms and speed-up: the "
              "int8 files."]
    if originals:  # every run times and probes the original's int8 file again; the same text gives the same figure
        lines[-1] += " The original's int8 file, probe accuracy: " + " / ".join(f"{v:.3f}" for v in originals) + "."
    return "\n".join(lines)


def _beats(row: dict) -> str:
    """The verdict as measured; a win whose probe lead is inside its interval says so."""
    if row["beats_layer_drop"] is None:
        return "—"
    if row["beats_layer_drop"] and row.get("probe_lead") == "within noise":
        return "yes (probe within noise)"
    return "yes" if row["beats_layer_drop"] else "no"


def sweep(settings, values) -> list[dict]:
    """One compress run per value (a speed-up target or a budget); returns the table's rows."""
    if settings.task_model:
        from recipes import task_compress

        return task_compress.sweep(settings, values)
    from recipes import report as report_lib

    root = settings.report_dir
    structured = settings.policy == "structured"
    rows = []
    # The original's files (and the latency probes cut from it) are the same in every run: converted once.
    settings = settings.shared_conversions()
    for value in values:
        if structured:
            one = settings.replace(target_speedup=value, report_dir=os.path.join(root, f"speedup_{value:g}"))
        else:
            one = settings.replace(budget=value, report_dir=os.path.join(root, f"budget_{round(value * 100):02d}"))
        rows.append(_row(value, compress.run(one)))
    with open(os.path.join(root, "sweep.json"), "w") as f:
        json.dump(rows, f, indent=2)
    knob = "target speed-up" if structured else "budget"
    table = _table(rows, knob)
    with open(os.path.join(root, "sweep.md"), "w") as f:
        f.write(f"# Sweep of the {knob} (--policy={settings.policy}, {settings.distill_steps} distillation steps)\n\n"
                f"{table}\n\n![sweep](sweep.png)\n")
    report_lib.plot_sweep(os.path.join(root, "sweep.png"), rows)
    print(table, flush=True)
    print(f"[sweep] written to {os.path.abspath(root)}", flush=True)
    return rows


def sweep_values(f, policy: str) -> list[float]:
    """The --speedups (structured) or --budgets values, checked; app.UsageError otherwise."""
    name, raw = ("speedups", f.speedups) if policy == "structured" else ("budgets", f.budgets)
    try:
        values = [float(v) for v in raw]
    except ValueError:
        raise app.UsageError(f"--{name} must be numbers, got {raw}.") from None
    low, high = (1.0, 20.0) if name == "speedups" else (0.0, 1.0)
    if not values or any(not low < v <= high for v in values):
        raise app.UsageError(f"--{name} must be numbers in ({low:g}, {high:g}], got {raw}.")
    return values


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
    settings = compress.check_flags(FLAGS)
    sweep(settings, sweep_values(FLAGS, "structured" if settings.task_model else settings.policy))


if __name__ == "__main__":
    FLAGS.set_default("report_dir", "reports/sweep")
    app.run(main, flags_parser=compress.parse_flags)
