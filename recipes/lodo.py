"""The leave-one-domain-out summary of `--preset=thorough`: lodo.md and lodo.json.

Each built-in domain is held out in turn while the others compress; each
fold's run measures ours beside its own baselines (same text, budget and
machine). The summary compares inside each fold first, then averages the
folds, so no figure mixes models from different runs:

- cosine to the original on the held-out domain (int8 files: ours, the
  layer drop, the original's int8) and ours in-domain, with the gap;
- the probe on the held-out domain's labelled set, for the folds whose
  domain has one, with the paired difference ours − layer drop;
- retrieval on the held-out domain's pairs, for the folds that have them;
- the int8 speed-ups each run measured.

Averages are over the folds that have the figure; speed-ups, being ratios,
average geometrically. The mean of the folds' probe differences gets an
interval from theirs by a normal approximation: each fold's bootstrap
interval gives its standard error, and the folds (different sentences,
separately trained students) are independent, so the errors add in
quadrature.
"""

from __future__ import annotations

import json
import math
import os

# The int8 files whose held-out cosine the summary compares (keys of a run's metrics["models"] rows).
COMPARED = ("compressed_int8", "layer_drop_int8", "original_int8", "minilm_l3_int8")
DIFFERENCES = ("ours_int8_minus_layer_drop_int8", "ours_int8_minus_original")
# The task tables' models: the original (its Keras model's figure), then the int8 files.
TASK_MODELS = ("original_fp32", "compressed_int8", "layer_drop_int8", "minilm_l3_int8")
Z95 = 1.959964  # the normal quantile of a two-sided 95 % interval


def fold(metrics: dict) -> dict:
    """One run's figures for the summary (its metrics.json as `recipes.report.metrics` wrote it)."""
    rows = {row["key"]: row for row in metrics["models"]}
    runtime = metrics.get("onnxruntime") or {}
    return {
        "heldout_cosine": {k: rows[k]["heldout_cosine"] for k in COMPARED if k in rows},
        # Both sides of the gap from our int8 file, as the comparison with the layer drop's int8 file is.
        "in_domain_cosine": rows["compressed_int8"]["in_domain_cosine"],
        "gap": rows["compressed_int8"]["in_domain_cosine"] - rows["compressed_int8"]["heldout_cosine"],
        "probe_sets": sorted(metrics.get("probes") or {}),
        "probe": {k: rows[k]["probe"] for k in TASK_MODELS if k in rows},
        "probe_differences": {k: metrics.get("probe_differences", {}).get(k) for k in DIFFERENCES},
        "retrieval_sets": list(metrics.get("retrieval") or {}),
        "retrieval": {k: rows[k].get("retrieval") for k in TASK_MODELS if k in rows},
        "retrieval_differences": {k: (metrics.get("retrieval_differences") or {}).get(k) for k in DIFFERENCES},
        "speedup": {k: rows[k]["speedup"] for k in ("compressed_int8", "layer_drop_int8") if k in rows},
        "onnxruntime_speedup": {k: runtime.get(f"{k}_speedup") for k in ("compressed_int8", "minilm_l3_int8")},
        "beats_layer_drop": metrics["verdict"]["beats_layer_drop"],
        "probe_lead": metrics["verdict"].get("probe_lead"),
        # Every stage's seconds, from the run that did it: a fold's cost even when a rerun reused its stages.
        "seconds": sum(v for v in metrics.get("stage_seconds", {}).values() if v),
    }


def average_difference(differences: list[dict]) -> dict | None:
    """The mean of independent folds' probe differences, with a normal-approximation 95 % interval."""
    differences = [d for d in differences if d]
    if not differences:
        return None
    k = len(differences)
    mean = sum(d["difference"] for d in differences) / k
    error = math.sqrt(sum(((d["high"] - d["low"]) / (2 * Z95)) ** 2 for d in differences)) / k
    return {"difference": mean, "low": mean - Z95 * error, "high": mean + Z95 * error,
            "examples": sum(d["examples"] for d in differences), "folds": k}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _geometric_mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def summarize(runs: dict[str, dict]) -> dict:
    """{"folds": {domain: fold}, "average": {...}, "beats_layer_drop": {domain: bool}} of {domain: metrics}."""
    folds = {domain: fold(m) for domain, m in runs.items()}
    labelled = [f for f in folds.values() if f["probe_sets"]]
    searched = [f for f in folds.values() if f["retrieval_sets"]]
    every = list(folds.values())
    average = {
        "heldout_cosine": {k: _mean(f["heldout_cosine"].get(k) for f in every) for k in COMPARED},
        "in_domain_cosine": _mean(f["in_domain_cosine"] for f in every),
        "gap": _mean(f["gap"] for f in every),
        "probe": {k: _mean(f["probe"].get(k) for f in labelled) for k in TASK_MODELS},
        "probe_differences": {k: average_difference([f["probe_differences"][k] for f in labelled])
                              for k in DIFFERENCES},
        "speedup": {k: _geometric_mean(f["speedup"].get(k) for f in every)
                    for k in ("compressed_int8", "layer_drop_int8")},
        "onnxruntime_speedup": {k: _geometric_mean(f["onnxruntime_speedup"].get(k) for f in every)
                                for k in ("compressed_int8", "minilm_l3_int8")},
        "labelled_folds": len(labelled),
        "retrieval": {k: _mean(f["retrieval"].get(k) for f in searched) for k in TASK_MODELS},
        "retrieval_differences": {k: average_difference([f["retrieval_differences"][k] for f in searched])
                                  for k in DIFFERENCES},
        "retrieval_folds": len(searched),
        "seconds": sum(f["seconds"] or 0.0 for f in every),
    }
    return {"folds": folds, "average": average,
            "beats_layer_drop": {domain: f["beats_layer_drop"] for domain, f in folds.items()}}


def _fmt(value, pattern="{:.4f}") -> str:
    return "—" if value is None else pattern.format(value)


def _points(d: dict | None) -> str:
    if not d:
        return "—"
    return f"{100 * d['difference']:+.1f} ({100 * d['low']:+.1f} to {100 * d['high']:+.1f})"


def _speed(value) -> str:
    return _fmt(value, "{:.2f}x")


def markdown(summary: dict) -> str:
    """lodo.md: the verdict, then fidelity and speed per fold, then the probe per labelled fold."""
    folds, average = summary["folds"], summary["average"]
    wins = [d for d, f in folds.items() if f["beats_layer_drop"]]
    clear = [d for d, f in folds.items() if f["probe_sets"] and f["probe_lead"] == "clear"]
    behind = [d for d, f in folds.items() if f["probe_sets"] and f["probe_lead"] == "behind"]
    lead = average["probe_differences"]["ours_int8_minus_layer_drop_int8"]
    lines = ["# Leave-one-domain-out", "",
             f"Each of {len(folds)} domains held out in turn (never used to calibrate, allocate or distil); every "
             "figure compares models of the same run, then averages the runs.", "",
             f"- Ours (int8) beats the layer drop (higher held-out cosine and probe at equal latency) on "
             f"{len(wins)} of {len(folds)} folds" + (f" ({', '.join(wins)})" if wins else "") + ".",
             f"- Probe, ours − layer drop, mean over the {average['labelled_folds']} folds with a labelled set: "
             + (f"{100 * lead['difference']:+.1f} points (95 % interval {100 * lead['low']:+.1f} to "
                f"{100 * lead['high']:+.1f}, normal approximation over independent folds)" if lead else "—")
             + f"; clearly ahead on {len(clear)}"
             + (f" ({', '.join(clear)})" if clear else "") + f", clearly behind on {len(behind)}"
             + (f" ({', '.join(behind)})" if behind else "") + ".",
             f"- Time: {average['seconds'] / 60:.0f} min of stages over all folds (a stage reused from an earlier "
             "run counts the seconds it took there).", "",
             "## Fidelity on the held-out domain (mean cosine to the original's embeddings) and speed", "",
             "| held-out domain | ours int8 | layer drop int8 | original int8 | ours int8 in-domain | gap "
             "| speed-up: ours int8 | layer drop int8 | ONNX Runtime: ours int8 | MiniLM-L3 int8 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def fidelity_row(name, f):
        cos = f["heldout_cosine"]
        return (f"| {name} | {_fmt(cos.get('compressed_int8'))} | {_fmt(cos.get('layer_drop_int8'))} | "
                f"{_fmt(cos.get('original_int8'))} | {_fmt(f['in_domain_cosine'])} | {_fmt(f['gap'], '{:+.4f}')} | "
                f"{_speed(f['speedup'].get('compressed_int8'))} | {_speed(f['speedup'].get('layer_drop_int8'))} | "
                f"{_speed(f['onnxruntime_speedup'].get('compressed_int8'))} | "
                f"{_speed(f['onnxruntime_speedup'].get('minilm_l3_int8'))} |")

    lines += [fidelity_row(domain, f) for domain, f in folds.items()]
    lines += [fidelity_row("**average**", average), "",
              "Speed-ups are over the original's int8 in the same runtime (TFLite, or ONNX Runtime for the last two "
              "columns), batch 1; ratios average geometrically. In-domain: held-out sentences of the compression "
              "domains, by our int8 file; gap: in-domain minus held-out-domain cosine.", ""]
    lines += _task_table("Linear probe on the held-out domain's labelled set", folds, average, "probe",
                         "Each fold's interval resamples its probe sentences (paired); the average's combines them "
                         "as independent folds.")
    lines += _task_table("Retrieval on the held-out domain's pairs (top-1, each model in its own space)", folds,
                         average, "retrieval", "Each fold's interval resamples its queries (paired).")
    return "\n".join(lines)


def _task_table(title: str, folds: dict, average: dict, task: str, note: str) -> list[str]:
    """A task's table ("probe" or "retrieval"): each fold that has the task, then the average of two or more."""
    def row(name, sets, figures, differences):
        return (f"| {name} | {sets} | " + " | ".join(_fmt(figures.get(k), "{:.3f}") for k in TASK_MODELS)
                + f" | {_points(differences['ours_int8_minus_layer_drop_int8'])} | "
                f"{_points(differences['ours_int8_minus_original'])} |")

    rows = [row(domain, ", ".join(f[f"{task}_sets"]), f[task], f[f"{task}_differences"])
            for domain, f in folds.items() if f[f"{task}_sets"]]
    if not rows:
        return []
    if len(rows) > 1:
        rows.append(row("**average**", "", average[task], average[f"{task}_differences"]))
    return [f"## {title}", "", "| held-out domain | set | original | ours int8 | layer drop int8 | MiniLM-L3 int8 "
            "| ours − layer drop (points, 95 %) | ours − original |", "|---|---|---:|---:|---:|---:|---:|---:|",
            *rows, "", note, ""]


def write(report_dir: str, runs: dict[str, dict]) -> dict:
    """Writes lodo.json and lodo.md under `report_dir` from {held-out domain: that run's metrics}."""
    summary = summarize(runs)
    with open(os.path.join(report_dir, "lodo.json"), "w") as f:
        json.dump(summary, f, indent=2)
    text = markdown(summary)
    with open(os.path.join(report_dir, "lodo.md"), "w") as f:
        f.write(text)
    print(text, flush=True)
    return summary
