"""metrics.json, report.md and accuracy_vs_latency.png of the task path; the sweep's table and plot.

metrics.json keys:
  task.accuracy, task.macro_f1   {teacher_fp32, teacher_int8, student_fp32, student_int8} on the eval file
  latency_ms                     the same four: batch-1 median ms at the first measured length (128)
  latency_ms_by_seq              {"128": {...four}, "64": {...four}}
  speedup                        {"128": {...four}, "64": {...four}}: median per-round t(teacher fp32) / t(model)
  bytes                          the same four: the .tflite files at the teacher's sequence length
plus the student's structure, the latency model, the distillation history,
the stage times, the process CPU time and the load average.
"""

from __future__ import annotations

import json
import os

ROLES = ("teacher_fp32", "teacher_int8", "student_fp32", "student_int8")
# The targets: (role, minimum speed-up over the teacher fp32, largest accuracy drop in points).
CRITERIA = (("student_fp32", 2.0, 1.0), ("student_int8", 4.0, 1.5))


def metrics(job) -> dict:
    """The metrics of a finished `recipes.task_compress.TaskCompression`."""
    r = job.results
    quality = {"teacher_fp32": r["soft targets"]["teacher_fp32"], "student_fp32": r["distil"]["student_fp32"],
               "teacher_int8": r["evaluate"]["teacher_int8"], "student_int8": r["evaluate"]["student_int8"]}
    by_length = r["latency"]["by_length"]
    first = str(job.lengths[0])
    latency = {length: {role: by_length[length][role]["median_ms"] for role in ROLES} for length in by_length}
    speedup = {length: {role: by_length[length][role]["speedup"] for role in ROLES} for length in by_length}
    prune = r["prune"]
    teacher_accuracy = quality["teacher_fp32"]["accuracy"]
    checks = {}
    for role, least, points in CRITERIA:
        drop = 100 * (teacher_accuracy - quality[role]["accuracy"])
        checks[role] = {"speedup": speedup[first][role], "accuracy_drop_points": drop,
                        "wanted_speedup": least, "allowed_drop_points": points,
                        "met": bool(speedup[first][role] >= least and drop <= points)}
    s = job.s
    return {
        "task_model": os.path.abspath(s.task_model),
        "task": {"accuracy": {role: quality[role]["accuracy"] for role in ROLES},
                 "macro_f1": {role: quality[role]["macro_f1"] for role in ROLES}},
        "latency_ms": latency[first],
        "latency_ms_by_seq": latency,
        "speedup": speedup,
        "bytes": dict(r["export"]["bytes"]),
        "targets": checks,
        "target_speedup": s.target_speedup,
        "data": job.data.summary(),
        "seq_length": job.export_length,
        "student": {"heads_fraction_removed": prune["heads_fraction"],
                    "neurons_fraction_removed": prune["neurons_fraction"],
                    "heads_kept": prune["heads_kept"], "neurons_kept": prune["neurons_kept"],
                    "flops_ratio": prune["flops_ratio_measured"], "predicted_speedup": prune["predicted_speedup"],
                    "params": prune["params"], "before_distillation": prune["before_distillation"]},
        "latency_model": {k: r["latency model"][k] for k in ("intercept", "slope", "points")},
        "distillation": {k: r["distil"][k] for k in ("epochs", "steps", "epoch_loss", "seconds")}
        | {"temperature": s.temperature, "alpha": s.alpha, "hidden_weight": s.task_hidden_weight,
           "batch_size": s.batch_size, "learning_rate": s.learning_rate},
        "int8": s.int8 + (" (quantization-aware)" if s.qat else ""),
        "parity": {"fp32_tflite_vs_keras_max_abs_probability":
                   r["evaluate"]["fp32_tflite_vs_keras_max_abs_probability"],
                   "saved_model": r["export"]["saved_model_parity"]},
        "files": {"student_fp32": r["export"]["files"]["student_fp32"],
                  "student_int8": r["export"]["files"]["student_int8"], "saved_model": r["export"]["saved_model"]},
        "stage_seconds": {name: round(seconds, 1) for name, seconds in job.pipe.timings.items()},
        "skipped_stages": list(job.pipe.skipped),
    }


def table(m: dict) -> list[str]:
    lengths = list(m["latency_ms_by_seq"])
    head = "| model | accuracy | macro-F1 | Δacc (points) | " + " | ".join(
        f"latency seq {n} | speed-up" for n in lengths) + " | file |"
    lines = [head, "|---|---:|---:|---:|" + "---:|---:|" * len(lengths) + "---:|"]
    base = m["task"]["accuracy"]["teacher_fp32"]
    for role in ROLES:
        accuracy = m["task"]["accuracy"][role]
        cells = [f"{m['latency_ms_by_seq'][n][role]:.2f} ms | {m['speedup'][n][role]:.2f}x" for n in lengths]
        lines.append(f"| {role} | {accuracy:.4f} | {m['task']['macro_f1'][role]:.4f} | "
                     f"{100 * (accuracy - base):+.2f} | " + " | ".join(cells) + f" | {m['bytes'][role] / 1e6:.1f} MB |")
    return lines


def write(report_dir: str, m: dict) -> str:
    """metrics.json, report.md and accuracy_vs_latency.png; returns report.md's text."""
    with open(os.path.join(report_dir, "metrics.json"), "w") as f:
        json.dump(m, f, indent=2)
    plot(os.path.join(report_dir, "accuracy_vs_latency.png"), m)
    student = m["student"]
    blocks = sorted(student["heads_kept"], key=int)
    lines = [f"# Task compression of {os.path.basename(m['task_model'].rstrip('/'))}", "",
             f"{m['data']['train_examples']} training and {m['data']['eval_examples']} eval examples, "
             f"{m['data']['classes']} classes. Batch-1 latency: median of interleaved rounds on this machine "
             f"(speed-up: median per-round ratio to the teacher fp32). int8: {m['int8']}.", ""]
    lines += table(m)
    lines += ["", "## Targets", ""]
    for role, c in m["targets"].items():
        lines.append(f"- {role}: {c['speedup']:.2f}x (wanted >= {c['wanted_speedup']:g}x), accuracy "
                     f"{-c['accuracy_drop_points']:+.2f} points (allowed -{c['allowed_drop_points']:g}): "
                     f"{'met' if c['met'] else 'NOT met'}")
    lines += ["", "## Student", "",
              f"Target {m['target_speedup']:g}x fp32; {student['heads_fraction_removed']:.0%} of the heads and "
              f"{student['neurons_fraction_removed']:.0%} of the FFN neurons removed by task importance "
              f"(predicted {student['predicted_speedup']:.2f}x; FLOPs x{student['flops_ratio']:.3f}; parameters "
              f"{student['params']['teacher']:,} -> {student['params']['student']:,}).",
              "", "| block | " + " | ".join(blocks) + " |", "|---|" + "---:|" * len(blocks),
              "| heads kept | " + " | ".join(str(student["heads_kept"][b]) for b in blocks) + " |",
              "| FFN neurons kept | " + " | ".join(str(student["neurons_kept"][b]) for b in blocks) + " |", "",
              f"Before distillation: accuracy {student['before_distillation']['accuracy']:.4f}. Distillation: "
              f"{m['distillation']['epochs']} epochs ({m['distillation']['steps']} steps, "
              f"{m['distillation']['seconds']:.0f} s), T={m['distillation']['temperature']:g}, "
              f"alpha={m['distillation']['alpha']:g}, hidden_weight={m['distillation']['hidden_weight']:g}.", "",
              "Latency model (fp32, seq " + next(iter(m["latency_ms_by_seq"])) + "): t/t(teacher) = "
              f"{m['latency_model']['intercept']:.3f} + {m['latency_model']['slope']:.3f} x FLOPs ratio; "
              + "; ".join(f"{p['name']} FLOPs x{p['flops_ratio']:.3f}: measured {p['measured']:.3f}, "
                          f"fit {p['predicted']:.3f}" for p in m["latency_model"]["points"]) + ".", "",
              "## Time", "",
              "| stage | seconds |", "|---|---:|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in m["stage_seconds"].items()]
    if "seconds_total" in m:
        lines += [f"| **total** | **{m['seconds_total']:.1f}** |", "",
                  f"Process CPU time {m['process_cpu_seconds']:.0f} s; load average (1, 5, 15 min) at the start "
                  f"{m['load_average']['start']}, at the end {m['load_average']['end']}."]
    if m["skipped_stages"]:
        lines += ["", f"Reused from an earlier run: {', '.join(m['skipped_stages'])}."]
    lines += ["", "## Files", "",
              f"- `student_fp32.tflite`, `student_int8.tflite`: token ids (seq {m['seq_length']}) -> probabilities",
              "- `saved_model/`: signatures `serving_default` / `token_ids` (token ids) and `strings` / "
              "`string_pairs` (raw text, tokenized in the graph) -> probabilities",
              "", "![accuracy against latency](accuracy_vs_latency.png)", ""]
    text = "\n".join(lines)
    with open(os.path.join(report_dir, "report.md"), "w") as f:
        f.write(text)
    return text


def plot(path: str, m: dict) -> None:
    """Accuracy against batch-1 latency, one point per file (filled: first length, hollow: the others)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"teacher": "tab:gray", "student": "tab:red"}
    marks = {"fp32": "o", "int8": "s"}
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, length in enumerate(m["latency_ms_by_seq"]):
        for role in ROLES:
            who, fmt = role.split("_")
            ax.scatter([m["latency_ms_by_seq"][length][role]], [m["task"]["accuracy"][role]], marker=marks[fmt],
                       s=60, facecolors=colours[who] if i == 0 else "none", edgecolors=colours[who],
                       label=f"{who} {fmt}, seq {length}")
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 latency (ms, log scale)")
    ax.set_ylabel("eval accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"{os.path.basename(m['task_model'].rstrip('/'))}: accuracy against latency")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- the sweep --------------------------------------------------------------------------------------


def sweep_row(value: float, m: dict) -> dict:
    first = next(iter(m["latency_ms_by_seq"]))
    row = {"target_speedup": value}
    for role in ROLES:
        row[role] = {"accuracy": m["task"]["accuracy"][role], "macro_f1": m["task"]["macro_f1"][role],
                     "latency_ms": m["latency_ms_by_seq"][first][role], "speedup": m["speedup"][first][role],
                     "bytes": m["bytes"][role]}
    row["seq_length"] = int(first)
    return row


def write_sweep(root: str, rows: list[dict]) -> str:
    """sweep.json, sweep.md and sweep.png (accuracy against latency of every run's four files)."""
    with open(os.path.join(root, "sweep.json"), "w") as f:
        json.dump(rows, f, indent=2)
    lines = ["| target | student fp32 acc | latency | speed-up | student int8 acc | latency | speed-up | "
             "teacher fp32 acc | teacher int8 acc |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s32, s8 = r["student_fp32"], r["student_int8"]
        lines.append(f"| {r['target_speedup']:g}x | {s32['accuracy']:.4f} | {s32['latency_ms']:.2f} ms | "
                     f"{s32['speedup']:.2f}x | {s8['accuracy']:.4f} | {s8['latency_ms']:.2f} ms | {s8['speedup']:.2f}x | "
                     f"{r['teacher_fp32']['accuracy']:.4f} | {r['teacher_int8']['accuracy']:.4f} |")
    table_text = "\n".join(lines)
    with open(os.path.join(root, "sweep.md"), "w") as f:
        f.write(f"# Task-path sweep of --target_speedup\n\n{table_text}\n\n![sweep](sweep.png)\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for role, colour, mark in (("student_fp32", "tab:red", "o"), ("student_int8", "tab:red", "s")):
        points = sorted((r[role]["latency_ms"], r[role]["accuracy"]) for r in rows)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=mark, color=colour,
                linestyle="-" if role.endswith("fp32") else "--", label=role.replace("_", " "))
    for role, mark in (("teacher_fp32", "o"), ("teacher_int8", "s")):
        ax.scatter([r[role]["latency_ms"] for r in rows], [r[role]["accuracy"] for r in rows], marker=mark,
                   color="tab:gray", label=role.replace("_", " "))
    ax.set_xscale("log")
    ax.set_xlabel(f"batch-1 latency (ms, seq {rows[0]['seq_length']}, log scale)" if rows else "latency")
    ax.set_ylabel("eval accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(root, "sweep.png"), dpi=100)
    plt.close(fig)
    return table_text
