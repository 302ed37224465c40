"""report.md, metrics.json and pareto.png of a compress run (matplotlib, Agg backend).

`metrics(run)` gathers a finished `recipes.stages.CompressRun` into the
metrics dict (the headline keys, plus per-model rows); `write` puts it
on disk as metrics.json and as a report for a reader: the Pareto table
first (quality against batch-1 latency and file size), then in-domain vs
held-out-domain figures per model, the probe, the baselines, how our model
was built, and the stages in pipeline order.
"""

from __future__ import annotations

import json
import os

# Row order of the Pareto table: (key, model, format).
ROWS = (
    ("original_fp32", "original", "fp32"),
    ("original_int8", "original", "int8"),
    ("compressed_fp32", "ours", "fp32"),
    ("compressed_int8", "ours", "int8"),
    ("layer_drop_fp32", "layer drop", "fp32"),
    ("layer_drop_int8", "layer drop", "int8"),
    ("original_int8_onnxruntime", "original", "int8"),
    ("compressed_int8_onnxruntime", "ours", "int8"),
    ("minilm_l3_fp32", "MiniLM-L3", "fp32"),
    ("minilm_l3_int8", "MiniLM-L3", "int8"),
)
# Where each row's quality comes from (evaluate stage results; fp32 TFLite computes what Keras computes).
QUALITY_OF = {"original_int8": "original_int8", "compressed_fp32": "compressed", "compressed_int8": "compressed_int8",
              "layer_drop_fp32": "layer_drop", "layer_drop_int8": "layer_drop_int8", "minilm_l3_fp32": "minilm_l3",
              "minilm_l3_int8": "minilm_l3_int8", "original_int8_onnxruntime": "original_int8_onnxruntime",
              "compressed_int8_onnxruntime": "compressed_int8_onnxruntime"}
STAGE_NAMES = {"load": "load the checkpoint", "text": "split the text (protocol)",
               "reference": "the original's embeddings and probe", "importance": "importance of heads and neurons",
               "latency model": "latency model (timed structures)", "prune": "choose and remove heads and neurons",
               "refit": "least-squares refit", "distill": "distillation (ours)",
               "layer drop": "distillation (layer-drop baseline)", "magnitude prune": "magnitude pruning",
               "qat": "quantization-aware training", "export": "export", "evaluate": "evaluate every model",
               "latency": "batch-1 latency, side by side"}
# Models of the per-set probe table (evaluate stage keys), after the original.
PROBE_MODELS = ("compressed", "compressed_int8", "layer_drop", "layer_drop_int8", "minilm_l3", "minilm_l3_int8")
# ... and of the retrieval table: the files that embed the retrieval pairs (embedding_eval.PARETO_GROUPS).
RETRIEVAL_MODELS = ("compressed_int8", "layer_drop_int8", "minilm_l3", "minilm_l3_int8")
EQUAL_LATENCY = 1.05  # latencies within 5 % count as equal (the noise of side-by-side timing on a shared machine)
EARLIER_DEPTH_MARGIN = 0.01  # an earlier block probing this much better than the output is named in the report


def _fmt(value, pattern="{:.4f}"):
    return "—" if value is None else pattern.format(value)


def _row(run_results, key):
    """One Pareto row's figures: quality (None where not measured), latency, speed-up, size."""
    evaluate = run_results["evaluate"]
    timing = run_results["latency"]["timing"]
    files = run_results["export"]["bytes"]
    if key not in files:
        return None
    quality = {} if key == "original_fp32" else evaluate.get(QUALITY_OF[key], {})
    reference_probe = run_results["reference"]["probe"]
    row = {"key": key, "heldout_cosine": 1.0 if key == "original_fp32" else quality.get("heldout_mean", {}).get("cosine"),
           "heldout_cosine_min": 1.0 if key == "original_fp32" else quality.get("heldout_mean", {}).get("cosine_min"),
           "heldout_nn_agreement": 1.0 if key == "original_fp32" else quality.get("heldout_mean", {}).get("nn_agreement"),
           "heldout_nn_agreement_top10": 1.0 if key == "original_fp32" else quality.get("heldout_mean", {}).get(
               "nn_agreement_top10"),
           "in_domain_cosine": 1.0 if key == "original_fp32" else quality.get("in_domain_mean", {}).get("cosine"),
           "probe": (sum(reference_probe.values()) / len(reference_probe) if reference_probe else None)
           if key == "original_fp32" else quality.get("probe_mean"),
           "in_domain_probe": _mean(run_results["reference"]["in_domain_probe"])
           if key == "original_fp32" else quality.get("in_domain_probe_mean"),
           "retrieval": _mean({n: f["top1"] for n, f in run_results["reference"].get("retrieval", {}).items()})
           if key == "original_fp32" else quality.get("retrieval_mean"),
           "latency_ms": timing[key]["ms"], "latency_median_ms": timing[key]["median_ms"],
           "speedup": timing[key].get("speedup"), "bytes": files[key]}
    return row


def metrics(run) -> dict:
    """The metrics of a finished run (see the module docstring)."""
    r, s = run.results, run.s
    evaluate = r["evaluate"]
    ours, ours8 = evaluate["compressed"], evaluate["compressed_int8"]
    reference_probe = r["reference"]["probe"]
    rows = [row for row in (_row(r, key) for key, _, _ in ROWS) if row is not None]
    by_key = {row["key"]: row for row in rows}
    m = {
        "model": s.model,
        "policy": s.policy,
        "seq_length": s.seq_length,
        "protocol": {"compression_domains": r["text"]["compression_domains"],
                     "heldout_domains": r["text"]["heldout_domains"], "probe_sets": r["text"]["probe_sets"],
                     "in_domain_probe_sets": r["text"]["in_domain_probe_sets"],
                     "retrieval_sets": r["text"].get("retrieval_sets", [])},
        "sentences": r["text"]["sentences"],
        "heldout_domain_cosine": ours["heldout_mean"]["cosine"],
        "heldout_domain_cosine_min": ours["heldout_mean"]["cosine_min"],
        "heldout_domain_nn_agreement": ours["heldout_mean"]["nn_agreement"],
        "heldout_domain_nn_agreement_top10": ours["heldout_mean"]["nn_agreement_top10"],
        "in_domain_cosine": ours["in_domain_mean"]["cosine"],
        "in_domain_cosine_min": ours["in_domain_mean"]["cosine_min"],
        "in_domain_nn_agreement": ours["in_domain_mean"]["nn_agreement"],
        "in_domain_nn_agreement_top10": ours["in_domain_mean"]["nn_agreement_top10"],
        "in_domain_minus_heldout_cosine": ours["in_domain_mean"]["cosine"] - ours["heldout_mean"]["cosine"],
        "heldout_domain_cosine_int8": ours8["heldout_mean"]["cosine"],
        "per_domain": {"in_domain": {d: v for d, v in ours["in_domain"].items()},
                       "heldout": {d: v for d, v in ours["heldout"].items()}},
        "probe_accuracy_original": _mean(reference_probe),
        "probe_accuracy_compressed": ours.get("probe_mean"),
        "probe_accuracy_compressed_int8": ours8.get("probe_mean"),
        "probes": {name: {"original": acc, **{model: evaluate.get(model, {}).get("probe", {}).get(name)
                                              for model in PROBE_MODELS}}
                   for name, acc in reference_probe.items()},
        # The probe on the compression domains' own labelled sets (held-out sentences of them): the in-domain side.
        "in_domain_probe_accuracy_original": _mean(r["reference"]["in_domain_probe"]),
        "in_domain_probe_accuracy_compressed_int8": ours8.get("in_domain_probe_mean"),
        "in_domain_probes": {name: {"original": acc,
                                    **{model: evaluate.get(model, {}).get("in_domain_probe", {}).get(name)
                                       for model in PROBE_MODELS}}
                             for name, acc in r["reference"]["in_domain_probe"].items()},
        # Held-out retrieval (a query's own target among the set's): {set: {model: {"top1", "top10"}}}.
        "retrieval": {name: {"original": figures, **{model: evaluate.get(model, {}).get("retrieval", {}).get(name)
                                                     for model in RETRIEVAL_MODELS}}
                      for name, figures in r["reference"].get("retrieval", {}).items()},
        # The original's probe at each depth (embedding layer, then after each block; the last is its output).
        "probe_by_depth_original": r["reference"]["probe_by_depth"],
        "in_domain_probe_by_depth_original": r["reference"]["in_domain_probe_by_depth"],
        "latency_ms": {row["key"]: row["latency_ms"] for row in rows},
        "speedup_vs_original_int8": {row["key"]: row["speedup"] for row in rows},
        "compressed_int8_speedup": by_key["compressed_int8"]["speedup"],
        "bytes": {row["key"]: row["bytes"] for row in rows},
        "int8_cosine_to_keras": evaluate["int8_cosine_to_keras"],
        "int8_cosine_to_keras_min": evaluate["int8_cosine_to_keras_min"],
        "int8_mode": s.int8,
        "l3_int8_weights": r["export"].get("l3_int8_weights"),
        "baselines": _baselines(run, by_key),
        "onnxruntime": same_runtime(by_key),
        "models": rows,
        "parameters": {"original": r["load"]["parameters"], "compressed": int(run.models["compressed"].count_params())},
        "distillation": {k: r["distill"][k] for k in ("steps", "seconds", "layer_map", "history", "trained_parameters",
                                                      "train_embeddings", "dropout")
                         if k in r["distill"]} if "distill" in r else None,
        "stage_seconds": {name: res.get("seconds") for name, res in r.items()
                          if name in STAGE_NAMES or name.startswith("factorize/")},
        "stages_skipped": list(run.pipe.skipped),
        "compressed_model": r["export"]["keras"],
        "files": r["export"]["files"],
    }
    if s.policy == "structured":
        m["structure"] = {k: r["prune"][k] for k in ("heads_per_block", "neurons_per_block", "retained_score",
                                                     "predicted_speedup", "aimed_speedup", "measured_speedup",
                                                     "checks", "min_heads", "dropped_blocks", "head_widths",
                                                     "head_size") if k in r["prune"]}
        m["target_speedup"] = s.target_speedup
        if "refit" in r:
            m["refit"] = {"mean_error_before": _mean(r["refit"]["errors_before"]),
                          "mean_error_after": _mean(r["refit"]["errors_after"])}
    else:
        m["factorize"] = {"best": r["factorize"]["best"], "budget": s.budget,
                          "methods": {k: {"in_domain_cosine": v["in_domain_cosine"], "params_after": v["params_after"],
                                          "params_before": v["params_before"]}
                                      for k, v in r["factorize"]["methods"].items()}}
    if "latency model" in r:
        m["latency_model"] = dict(r["latency model"]["model"])
    for name in ("magnitude prune", "qat"):
        if name in r:
            m[name.replace(" ", "_")] = {k: v for k, v in r[name].items() if not k.startswith("_")}
    m["probe_differences"] = probe_differences(run)
    m["in_domain_probe_differences"] = probe_differences(run, "in_domain_probes")
    m["retrieval_differences"] = retrieval_differences(run)
    m["verdict"] = verdict(by_key, m["probes"], m["probe_differences"].get("ours_int8_minus_layer_drop_int8"))
    m["targets"] = targets(m)
    return m


# Issue 14's bar for the demo's default setting: (key, what, check).
TARGETS = (
    ("speedup", "int8 speed-up over the original's int8 >= 1.4x", lambda m: m["compressed_int8_speedup"] >= 1.4),
    ("heldout_cosine", "held-out-domain cosine >= 0.90", lambda m: m["heldout_domain_cosine"] >= 0.90),
    ("probe", "probe within 4 points of the original",
     lambda m: m["probe_accuracy_compressed"] is None
     or m["probe_accuracy_original"] - m["probe_accuracy_compressed"] <= 0.04),
    ("gap", "in-domain minus held-out-domain cosine <= 0.03", lambda m: m["in_domain_minus_heldout_cosine"] <= 0.03),
    ("layer_drop", "higher cosine and probe than layer drop at equal or lower latency",
     lambda m: m["verdict"]["beats_layer_drop"] is not False),
)


def targets(m: dict) -> dict:
    """{key: {"what", "met"[, "note"]}} for each of TARGETS (met: True / False); the layer-drop bar, met as
    measured with a probe lead inside its interval's noise, says so in its note."""
    out = {key: {"what": what, "met": bool(check(m))} for key, what, check in TARGETS}
    if out["layer_drop"]["met"] and m["verdict"].get("probe_lead") == "within noise":
        out["layer_drop"]["note"] = "as measured; the probe lead is within noise"
    return out


def _in_onnxruntime(key: str) -> bool:
    """Whether a Pareto row's file runs in ONNX Runtime (MiniLM-L3's, and ours and the original's beside it)."""
    return key.startswith("minilm_l3") or key.endswith("_onnxruntime")


def same_runtime(by_key) -> dict | None:
    """Ours and MiniLM-L3 against the original, all three int8 files in ONNX Runtime (None without them)."""
    keys = ("original_int8_onnxruntime", "compressed_int8_onnxruntime", "minilm_l3_int8")
    if not all(k in by_key for k in keys):
        return None
    base = by_key["original_int8_onnxruntime"]["latency_ms"]
    return {"runtime": "onnxruntime", **{f"{k}_ms": by_key[k]["latency_ms"] for k in keys},
            "compressed_int8_speedup": base / by_key["compressed_int8_onnxruntime"]["latency_ms"],
            "minilm_l3_int8_speedup": base / by_key["minilm_l3_int8"]["latency_ms"]}


def _mean(values: dict):
    values = [v for v in values.values() if v is not None]
    return sum(values) / len(values) if values else None


def _baselines(run, by_key) -> dict:
    r = run.results
    out = {}
    if "original_int8" in by_key:
        out["int8"] = {"heldout_domain_cosine": by_key["original_int8"]["heldout_cosine"],
                       "heldout_domain_cosine_min": by_key["original_int8"]["heldout_cosine_min"],
                       "probe_accuracy": by_key["original_int8"]["probe"],
                       "latency_ms": by_key["original_int8"]["latency_ms"], "bytes": by_key["original_int8"]["bytes"],
                       "mode": run.s.int8}
    if "layer_drop_int8" in by_key:
        q = r["evaluate"]["layer_drop"]
        out["layer_drop"] = {"keep_blocks": run.layer_drop_info["keep"],
                             "heldout_domain_cosine": q["heldout_mean"]["cosine"],
                             "heldout_domain_cosine_min": q["heldout_mean"]["cosine_min"],
                             "heldout_domain_nn_agreement": q["heldout_mean"]["nn_agreement"],
                             "in_domain_cosine": q["in_domain_mean"]["cosine"],
                             "probe_accuracy": q.get("probe_mean"),
                             "int8": {k: by_key["layer_drop_int8"][k]
                                      for k in ("heldout_cosine", "probe", "in_domain_probe", "retrieval",
                                                "latency_ms", "speedup", "bytes")},
                             "latency_ms": by_key["layer_drop_int8"]["latency_ms"],
                             "latency_ms_fp32": by_key["layer_drop_fp32"]["latency_ms"],
                             "bytes": by_key["layer_drop_int8"]["bytes"],
                             "predicted_ratio": run.layer_drop_info["predicted_ratio"],
                             "distillation": run.layer_drop_info.get("distillation")}
    if "minilm_l3_fp32" in by_key:
        out["minilm_l3"] = {"probe_accuracy": by_key["minilm_l3_fp32"]["probe"],
                            "probe_accuracy_int8": by_key["minilm_l3_int8"]["probe"],
                            "latency_ms": by_key["minilm_l3_fp32"]["latency_ms"],
                            "latency_ms_int8": by_key["minilm_l3_int8"]["latency_ms"],
                            "bytes": by_key["minilm_l3_fp32"]["bytes"], "bytes_int8": by_key["minilm_l3_int8"]["bytes"],
                            "runtime": "onnxruntime",
                            "note": "its own embedding space: cosine to the original is not comparable"}
    return out


def probe_differences(run, group: str = "probes") -> dict:
    """Our int8 file's mean probe accuracy minus the original's and the layer drop's, with paired intervals.

    From the embeddings the evaluate stage stored (the same sentences and folds for every model), so the
    differences are exactly those of the probe table; the intervals say whether a difference of a point or
    two is more than the choice of probe sentences explains. `group`: "probes" (held-out domains) or
    "in_domain_probes".
    """
    from recipes import embedding_eval

    labels, s = (run.eval_sets.labels if group == "probes" else run.eval_sets.in_domain_labels), run.s
    if not labels:
        return {}

    def answers(embeddings):
        return embedding_eval.probe_answers(embeddings, labels, s.probe_folds, s.probe_l2, group=group)

    stored = lambda name: run._path("evaluate", f"{name}.npz")  # noqa: E731
    ours, original = answers(embedding_eval.load(stored("compressed_int8"))), answers(run.reference_embeddings)
    out = {"ours_int8_minus_original": embedding_eval.paired_difference(ours, original)}
    if os.path.isfile(stored("layer_drop_int8")):
        layer_drop = answers(embedding_eval.load(stored("layer_drop_int8")))
        out["ours_int8_minus_layer_drop_int8"] = embedding_eval.paired_difference(ours, layer_drop)
        # The lead an exact copy of the original would have: the most any model faithful to it can reach.
        out["original_minus_layer_drop_int8"] = embedding_eval.paired_difference(original, layer_drop)
    return out


def retrieval_differences(run) -> dict:
    """Our int8 file's top-1 retrieval minus the original's, the layer drop's and MiniLM-L3 int8's, paired.

    From the stored embeddings, like `probe_differences` (no training here: cosine ranks only).
    """
    from recipes import embedding_eval

    original = embedding_eval.retrieval_answers(run.reference_embeddings)
    if not original:
        return {}
    stored = lambda name: run._path("evaluate", f"{name}.npz")  # noqa: E731
    ours = embedding_eval.retrieval_answers(embedding_eval.load(stored("compressed_int8")))
    out = {"ours_int8_minus_original": embedding_eval.paired_difference(ours, original)}
    for key, name in (("ours_int8_minus_layer_drop_int8", "layer_drop_int8"),
                      ("ours_int8_minus_minilm_l3_int8", "minilm_l3_int8")):
        if os.path.isfile(stored(name)):
            out[key] = embedding_eval.paired_difference(
                ours, embedding_eval.retrieval_answers(embedding_eval.load(stored(name))))
    return out


def earlier_depths_probe_better(by_depth: dict, margin: float = EARLIER_DEPTH_MARGIN) -> dict:
    """{set: {"depth", "accuracy", "output"}} for each set whose probe is best at a depth before the output's, by
    more than `margin`: there a layer drop can keep features the original's own output has lost, and a model
    faithful to the output cannot beat one."""
    out = {}
    for name, accuracies in by_depth.items():
        best = max(range(len(accuracies) - 1), key=accuracies.__getitem__)
        if accuracies[best] - accuracies[-1] > margin:
            out[name] = {"depth": best, "accuracy": accuracies[best], "output": accuracies[-1]}
    return out


def _depth_name(depth: int, depths: int) -> str:
    """Depth 0 is the embedding layer's output; depth k the output of block k - 1 (blocks count from 0)."""
    if depth == 0:
        return "embeddings"
    return f"after block {depth - 1}" + (" (output)" if depth == depths - 1 else "")


def _points(d: dict) -> str:
    """A probe difference in points with its interval: '-1.2 points (95 % interval -2.4 to +0.1, 4,000 sentences)'."""
    return (f"{100 * d['difference']:+.1f} points (95 % interval {100 * d['low']:+.1f} to {100 * d['high']:+.1f}, "
            f"{d['examples']:,} sentences)")


def verdict(by_key, probes: dict | None = None, probe_difference: dict | None = None) -> dict:
    """Does ours (int8) beat layer drop (int8): higher cosine and probe at equal or lower latency?

    `probes` ({set: {model: accuracy}}, metrics' "probes"): with more than one probe set, the text gives each
    set's figures too, so a reader sees which set decides the mean. `probe_difference` (`probe_differences`'
    entry against the layer drop): the text quotes it with its interval. The verdict itself compares the
    accuracies as measured (issue 14's bar); `probe_lead` says how far to trust the probe's side of it: "clear"
    (the interval is above zero), "within noise" (it spans zero) or "behind" (below zero); None without one.
    A win whose probe lead is within noise is written as a match on the probe, not as a lead.
    """
    ours, drop = by_key.get("compressed_int8"), by_key.get("layer_drop_int8")
    if ours is None or drop is None:
        return {"beats_layer_drop": None, "text": "No layer-drop baseline in this run."}
    faster = ours["latency_ms"] <= drop["latency_ms"] * EQUAL_LATENCY
    cosine = ours["heldout_cosine"] > drop["heldout_cosine"]
    probe = ours["probe"] is None or drop["probe"] is None or ours["probe"] > drop["probe"]
    speed = (f"{ours['latency_ms']:.2f} ms against {drop['latency_ms']:.2f} ms"
             + (" (equal within 5 %)" if abs(ours["latency_ms"] / drop["latency_ms"] - 1) <= EQUAL_LATENCY - 1 else ""))
    per_set = [(name, p.get("compressed_int8"), p.get("layer_drop_int8")) for name, p in (probes or {}).items()]
    per_set = [(name, a, b) for name, a, b in per_set if a is not None and b is not None]
    figures = (f"held-out-domain cosine {ours['heldout_cosine']:.4f} against {drop['heldout_cosine']:.4f}"
               + (f", probe {ours['probe']:.3f} against {drop['probe']:.3f}"
                  if ours["probe"] is not None and drop["probe"] is not None else "")
               + (" (" + ", ".join(f"{name} {a:.3f} against {b:.3f}" for name, a, b in per_set) + ")"
                  if len(per_set) > 1 else "")
               + (f"; probe difference {_points(probe_difference)}" if probe_difference else ""))
    lead = None
    if probe_difference:
        lead = ("clear" if probe_difference["low"] > 0 else "behind" if probe_difference["high"] < 0
                else "within noise")
    if faster and cosine and probe and lead == "within noise":
        text = (f"Our int8 model beats the layer-drop baseline on held-out-domain cosine and matches it on the probe "
                f"(its lead there is within the noise of the sentences drawn): {figures}, at {speed}.")
    elif faster and cosine and probe:
        text = f"Our int8 model beats the layer-drop baseline: {figures}, at {speed}."
    else:
        lost = [what for what, ok in (("it is slower", faster), ("its held-out-domain cosine is not higher", cosine),
                                      ("its probe accuracy is not higher", probe)) if not ok]
        text = (f"Our int8 model does NOT beat the layer-drop baseline at equal latency: {' and '.join(lost)} "
                f"({figures}; {speed}).")
    return {"beats_layer_drop": bool(faster and cosine and probe), "probe_lead": lead, "text": text}


# -- writing -------------------------------------------------------------------------------


def write(report_dir: str, metrics: dict) -> str:
    """Writes metrics.json, report.md and pareto.png; returns the report text."""
    os.makedirs(report_dir, exist_ok=True)
    plots = plot_pareto(report_dir, metrics)
    metrics["plots"] = plots
    with open(os.path.join(report_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2, default=str)
    text = "\n".join(_report_lines(metrics))
    with open(os.path.join(report_dir, "report.md"), "w") as f:
        f.write(text)
    return text


_LABELS = {key: f"{model}, {fmt}" for key, model, fmt in ROWS}


def _runtime(key, m):
    if _in_onnxruntime(key):
        if key == "minilm_l3_fp32":
            return "ONNX Runtime"
        # 7-bit where this CPU lacks VNNI (exports.onnx_int8): name it, it is part of the files' figures.
        bits = m.get("l3_int8_weights")
        return "ONNX Runtime (dynamic int8" + (f", {bits} per-channel weights)" if bits else ")")
    if key.endswith("int8"):
        return {"dynamic": "TFLite dynamic-range int8", "full": "TFLite full-integer int8",
                "int16x8": "TFLite int16x8"}[m["int8_mode"]]
    return "TFLite fp32"


def _report_lines(m: dict) -> list[str]:
    protocol = m["protocol"]
    lines = ["# Compression report", "",
             f"Model {m['model']}, compressed with `--policy={m['policy']}`"
             + (f" to a {m['target_speedup']}x int8 speed-up target" if m["policy"] == "structured" else "") + ". "
             f"Compression text: {', '.join(protocol['compression_domains'])}. Held-out domains (never used for "
             f"calibration, importance, refit or distillation): {', '.join(protocol['heldout_domains'])}. "
             f"Linear probe: {', '.join(protocol['probe_sets']) or 'none (no labelled set for these domains)'}"
             + (f"; in-domain: {', '.join(protocol['in_domain_probe_sets'])}" if protocol.get("in_domain_probe_sets")
                else "") + ".", "",
             f"**{m['verdict']['text']}**", ""] + _retrieval_headline(m) + _depth_note(m) + [
             "Targets of this job's default setting: "
             + "; ".join(f"{t['what']}: {'met' if t['met'] else '**not met**'}"
                         + (f" ({t['note']})" if t.get("note") else "") for t in m["targets"].values())
             + ".", "",
             "## Quality against speed and size", "",
             f"Batch 1, sequence length {m['seq_length']}, interleaved calls on this machine: ms is the 20th "
             "percentile of each file's calls (contention only adds time, and more to longer calls), speed-up the "
             "ratio to the original's int8 file. Cosine and neighbour agreement: mean over the "
             "held-out domains of each sentence embedding's cosine to the original's (min: the worst sentence). "
             "Probe: k-fold accuracy of a logistic regression on the held-out domains' labelled sets; in-domain "
             "probe: the same on the compression domains' labelled sets, only their texts that fell in the in-domain "
             "held-out part (never calibration or distillation text)."
             + (" Retrieval: how often a held-out query's own answer is the most cosine-similar of all the set's "
                "answers (top-1)." if m.get("retrieval") else ""), "",
             "| model | runtime | held-out cosine | min | NN top-1 | NN top-10 | in-domain cosine | probe | "
             "in-domain probe | " + ("retrieval | " if m.get("retrieval") else "") + "ms | speed-up | MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if m.get("retrieval") else "")
             + "---:|---:|---:|"]
    for row in m["models"]:
        lines.append(f"| {_LABELS[row['key']]} | {_runtime(row['key'], m)} | {_fmt(row['heldout_cosine'])} | "
                     f"{_fmt(row['heldout_cosine_min'])} | {_fmt(row['heldout_nn_agreement'], '{:.3f}')} | "
                     f"{_fmt(row['heldout_nn_agreement_top10'], '{:.3f}')} | {_fmt(row['in_domain_cosine'])} | "
                     f"{_fmt(row['probe'], '{:.3f}')} | {_fmt(row.get('in_domain_probe'), '{:.3f}')} | "
                     + (f"{_fmt(row.get('retrieval'), '{:.3f}')} | " if m.get("retrieval") else "")
                     + f"{row['latency_ms']:.2f} | {_fmt(row['speedup'], '{:.2f}x')} | "
                     f"{row['bytes'] / 1e6:.1f} |")
    if "minilm_l3" in m["baselines"]:
        lines += ["", "MiniLM-L3 has its own embedding space, so its cosine to the original means nothing: only its "
                  "probe" + (" and retrieval accuracy" if m.get("retrieval") else " accuracy") + ", latency and size "
                  "compare."]
    lines += ["", "The fp32 models and the original's int8 file are measured on cosine and the held-out probe (the "
              "Pareto table's quality); the in-domain probe" + (" and retrieval are" if m.get("retrieval") else " is")
              + " measured on the int8 files that ship (and the original), so those cells read —."]
    ort = m.get("onnxruntime")
    if ort:
        lines += ["", "In one runtime (ONNX Runtime, every file dynamic int8 the same way; tf2onnx's graph of ours and "
                  "the original, sentence-transformers' own of MiniLM-L3): the original "
                  f"{ort['original_int8_onnxruntime_ms']:.2f} ms, ours {ort['compressed_int8_onnxruntime_ms']:.2f} ms "
                  f"({ort['compressed_int8_speedup']:.2f}x), MiniLM-L3 {ort['minilm_l3_int8_ms']:.2f} ms "
                  f"({ort['minilm_l3_int8_speedup']:.2f}x). The original's and ours are embedded there for cosine "
                  "only (no probe): their probe is the TFLite int8 files'."]
    lines += ["", "![quality against latency and size](pareto.png)", ""]

    lines += ["## In-domain and held-out-domain figures (ours, fp32)", "",
              "| text | domain | sentences | cosine | min cosine | NN top-1 | NN top-10 |",
              "|---|---|---:|---:|---:|---:|---:|"]
    counts = m["sentences"]
    for group, title, count_key in (("in_domain", "in-domain held-out", "in_domain_heldout"),
                                    ("heldout", "held-out domain", "heldout_domains")):
        for domain, f in m["per_domain"][group].items():
            lines.append(f"| {title} | {domain} | {counts[count_key].get(domain, '—')} | {f['cosine']:.4f} | "
                         f"{f['cosine_min']:.4f} | {f['nn_agreement']:.3f} | {f['nn_agreement_top10']:.3f} |")
    lines += ["", f"In-domain minus held-out-domain cosine: {m['in_domain_minus_heldout_cosine']:+.4f}.", ""]

    if m["probes"]:
        lines += ["## Linear probe (held-out domains)", ""] + _probe_table(m["probes"], counts["probe"])
        for key, difference in m.get("probe_differences", {}).items():
            name = _DIFFERENCE_NAMES[key]
            lines.append(f"- {name[:1].upper()}{name[1:]}, mean over the sets: {_points(difference)}; the "
                         "interval resamples the probe sentences (paired, the same folds for both models), not the "
                         "probe's training.")
        lines.append("")
    if m.get("in_domain_probes"):
        lines += ["## Linear probe (in-domain: the compression domains' labelled sets, held-out sentences)", "",
                  "The same probe on text of the domains compression saw, but only sentences the hash split kept out "
                  "of calibration and distillation: how much of the original a model keeps where it was compressed, "
                  "to read beside the held-out domains above (which decide the verdict).", ""]
        lines += _probe_table(m["in_domain_probes"], counts["in_domain_probe"])
        for key, difference in m.get("in_domain_probe_differences", {}).items():
            lines.append(f"- In-domain, {_DIFFERENCE_NAMES[key]}: {_points(difference)}.")
        lines.append("")

    lines += _retrieval_section(m)
    lines += _depth_table(m)
    lines += ["## Baselines", ""]
    b = m["baselines"]
    if "int8" in b:
        lines.append(f"- **int8 of the original** ({b['int8']['mode']}): held-out cosine "
                     f"{_fmt(b['int8']['heldout_domain_cosine'])}, {b['int8']['latency_ms']:.2f} ms, "
                     f"{b['int8']['bytes'] / 1e6:.1f} MB.")
    if "layer_drop" in b:
        d = b["layer_drop"]
        dist = d.get("distillation") or {}
        lines.append(f"- **Layer drop**: blocks {d['keep_blocks']} of the original (the depth whose predicted int8 "
                     f"latency is nearest ours), distilled with our budget ({dist.get('steps', 0)} steps, same "
                     f"batches and losses): held-out cosine {d['heldout_domain_cosine']:.4f} (fp32), in-domain "
                     f"{d['in_domain_cosine']:.4f}, probe {_fmt(d['probe_accuracy'], '{:.3f}')}; int8 "
                     f"{d['latency_ms']:.2f} ms.")
    if "minilm_l3" in b:
        l3 = b["minilm_l3"]
        lines.append(f"- **paraphrase-MiniLM-L3-v2** (sentence-transformers, ONNX): probe "
                     f"{_fmt(l3['probe_accuracy'], '{:.3f}')} (int8 {_fmt(l3['probe_accuracy_int8'], '{:.3f}')}), "
                     f"{l3['latency_ms']:.2f} ms fp32 / {l3['latency_ms_int8']:.2f} ms int8 in ONNX Runtime.")
    lines.append("")

    lines += ["## How our model was built", ""]
    if m["policy"] == "structured":
        st = m["structure"]
        if st.get("dropped_blocks"):
            lines += [f"Blocks {st['dropped_blocks']} of the original removed whole (--drop_blocks) before the "
                      "search; the lists below are the remaining blocks', in order.", ""]
        if st.get("head_widths"):
            qk, vo = st["head_widths"]
            lines += [f"Every kept head narrowed to query/key width {qk} and value width {vo} of {st['head_size']} "
                      "(--head_widths): each head's attention logits and value-output product replaced by their "
                      "nearest rank on the calibration text's inputs (a whitened per-head SVD), so every head keeps "
                      "its attention pattern in fewer dimensions.", ""]
        lines += [f"Heads kept per block: {list(st['heads_per_block'].values())}"
                  + (f" (at least {st['min_heads']} each, --min_head_share)" if st.get("min_heads", 1) > 1 else "")
                  + "; FFN neurons kept per block: "
                  f"{list(st['neurons_per_block'].values())} (share of the importance kept: "
                  f"{st['retained_score']:.3f}). Aimed at {st['aimed_speedup']:.2f}x (target plus margin); the "
                  f"latency model predicted {st['predicted_speedup']:.2f}x, the pruned structure measured "
                  f"{st['measured_speedup']:.2f}x when it was chosen"
                  + (f" (after {len(st['checks']) - 1} re-search(es) with a budget shrunk by the miss: "
                     + ", ".join(f"{c['measured_speedup']:.2f}x" for c in st["checks"]) + ")"
                     if len(st["checks"]) > 1 else "")
                  + f", and {_fmt(m['compressed_int8_speedup'], '{:.2f}x')} in the side-by-side timing below "
                  + ("(after refit and distillation, which keep the structure)." if m.get("refit") else
                     "(after distillation, which keeps the structure). No least-squares refit (--refit): it raises "
                     "held-out-domain cosine before distillation and lowers it after.")]
        if m.get("refit"):
            lines += ["", f"Least-squares refit of the output projections: mean relative error of the residual sums "
                      f"{m['refit']['mean_error_before']:.4f} before, {m['refit']['mean_error_after']:.4f} after."]
    else:
        f = m["factorize"]
        lines += ["| method | in-domain cosine | parameters kept |", "|---|---:|---:|"]
        lines += [f"| {k} | {v['in_domain_cosine']:.4f} | {v['params_after']:,} of {v['params_before']:,} |"
                  for k, v in f["methods"].items()]
        lines += ["", f"Kept: {f['best']} (the best in-domain cosine), at {f['budget']:.0%} of the projection "
                  "parameters."]
    lm = m.get("latency_model")
    if lm:
        lines += ["", "Latency model fitted on this machine (int8 time relative to the original's): "
                  f"{lm['constant']:.3f} + {lm['per_block']:.4f}·blocks + {lm['per_head']:.5f}·heads + "
                  + (f"{lm['per_head_width']:.5f}·head widths (kept heads, each weighted by its share of a whole "
                     "head's width) + " if lm.get("per_head_width") else "")
                  + f"{lm['per_neuron']:.2e}·neurons.", "", "| timed structure | measured | predicted |",
                  "|---|---:|---:|"]
        lines += [f"| {p['structure']} | {p['measured']:.3f} | {p['predicted']:.3f} |" for p in lm["points"]]
    if m.get("distillation"):
        d = m["distillation"]
        history = d["history"]
        first, last = history[0], history[-1]
        lines += ["", f"Distillation: {d['steps']} steps, {d['seconds']:.0f} s; hidden-state loss {_fmt(first[1])} -> "
                  f"{_fmt(last[1])}, embedding loss {_fmt(first[2])} -> {_fmt(last[2])} (TensorBoard logs in "
                  "tensorboard/)"
                  + (f"; {d['trained_parameters']:,} parameters trained"
                     + ("" if d["train_embeddings"] else " (the embedding layers stay the original's)")
                     + f", dropout {'on' if d['dropout'] else 'off'}." if "trained_parameters" in d else ".")]
    lines += ["", f"Parameters: {m['parameters']['original']:,} -> {m['parameters']['compressed']:,}. "
              f"The int8 file keeps cosine {m['int8_cosine_to_keras']:.4f} (min {m['int8_cosine_to_keras_min']:.4f}) "
              f"to our Keras model" + (" — below 0.99!" if m["int8_cosine_to_keras"] < 0.99 else "") + ".", ""]

    lines += ["## Stages", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {_stage_name(name)} | {_fmt(seconds, '{:.1f}')} |" for name, seconds in m["stage_seconds"].items()]
    if m["stages_skipped"]:
        lines += ["", "Skipped in this run (their seconds are from the run that did them): "
                  + ", ".join(_stage_name(n) for n in m["stages_skipped"]) + "."]
    lines += ["", f"Total: {m['seconds_total']:.1f} s.", ""]
    return lines


_DIFFERENCE_NAMES = {"ours_int8_minus_original": "ours int8 minus the original",
                     "ours_int8_minus_layer_drop_int8": "ours int8 minus layer drop int8",
                     "ours_int8_minus_minilm_l3_int8": "ours int8 minus MiniLM-L3 int8",
                     "original_minus_layer_drop_int8": "the original minus layer drop int8 (the lead of an exact copy "
                                                       "of the original: the most a model faithful to it can reach)"}


_RETRIEVAL_TITLES = {"wordnet_gloss": "a WordNet example sentence -> its synset's definition"}


def _retrieval_headline(m: dict) -> list[str]:
    """Under the verdict: held-out retrieval, ours against the layer drop, the original and MiniLM-L3."""
    r = m.get("retrieval_differences") or {}
    if not r or "ours_int8_minus_layer_drop_int8" not in r:
        return []
    mean = lambda model: _mean({n: (f.get(model) or {}).get("top1") for n, f in m["retrieval"].items()})  # noqa: E731
    line = (f"Held-out retrieval ({', '.join(m['retrieval'])}: {r['ours_int8_minus_original']['examples']:,} "
            f"queries, each searching all its set's answers; top-1): ours int8 "
            f"{_fmt(mean('compressed_int8'), '{:.3f}')}, layer drop int8 {_fmt(mean('layer_drop_int8'), '{:.3f}')} "
            f"({_points(r['ours_int8_minus_layer_drop_int8']).replace('sentences', 'queries')} for ours), "
            f"the original {_fmt(mean('original'), '{:.3f}')}")
    if "ours_int8_minus_minilm_l3_int8" in r:
        line += f", MiniLM-L3 int8 {_fmt(mean('minilm_l3_int8'), '{:.3f}')}"
    return [line + ".", ""]


def _retrieval_section(m: dict) -> list[str]:
    if not m.get("retrieval"):
        return []
    lines = ["## Retrieval (held-out domain)", "",
             "Each query searches all the set's answers by cosine (the encoder used as a semantic-search user uses "
             "it); top-1: its own answer comes first, top-10: among the ten nearest. Every model ranks in its own "
             "embedding space, so MiniLM-L3 compares here.", "",
             ]
    names = {"original": "original (Keras fp32)", "compressed_int8": "ours int8", "layer_drop_int8": "layer drop int8",
             "minilm_l3": "MiniLM-L3 fp32", "minilm_l3_int8": "MiniLM-L3 int8"}  # RETRIEVAL_MODELS, after the original
    for name, by_model in m["retrieval"].items():
        lines += [f"{name}: {_RETRIEVAL_TITLES.get(name, name)}, {m['sentences']['retrieval'][name]:,} queries.", "",
                  "| model | top-1 | top-10 |", "|---|---:|---:|"]
        lines += [f"| {label} | {by_model[model]['top1']:.3f} | {by_model[model]['top10']:.3f} |"
                  for model, label in names.items() if by_model.get(model)]
        lines.append("")
    for key, difference in (m.get("retrieval_differences") or {}).items():
        name = _DIFFERENCE_NAMES[key]
        lines.append(f"- Top-1, {name}: {_points(difference).replace('sentences', 'queries')}; the interval "
                     "resamples the queries (paired).")
    return lines + [""]


def _probe_table(probes: dict, counts: dict) -> list[str]:
    """One row per labelled set: its examples, the original's accuracy, then each of PROBE_MODELS'."""
    lines = ["| labelled set | examples | original | ours fp32 | ours int8 | layer drop fp32 | layer drop int8 | "
             "MiniLM-L3 fp32 | MiniLM-L3 int8 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, p in probes.items():
        lines.append(f"| {name} | {counts.get(name, '—')} | {p['original']:.3f} | "
                     + " | ".join(_fmt(p.get(model), "{:.3f}") for model in PROBE_MODELS) + " |")
    return lines + [""]


def _depth_note(m: dict) -> list[str]:
    """A paragraph under the verdict for each held-out probe set on which an earlier block beats the output."""
    earlier = earlier_depths_probe_better(m["probe_by_depth_original"])
    if not earlier:
        return []
    depths = len(next(iter(m["probe_by_depth_original"].values())))
    found = "; ".join(f"on {name} the original's own hidden state {_depth_name(e['depth'], depths)} probes "
                      f"{e['accuracy']:.3f} against its output's {e['output']:.3f}" for name, e in earlier.items())
    ceiling = m.get("probe_differences", {}).get("original_minus_layer_drop_int8")
    lead = (f" Even an exact copy of the original would lead the layer drop by {_points(ceiling)} on the held-out "
            "probe." if ceiling else "")
    return [f"Read the probe with its depth profile: {found}. There a layer drop keeps features that the original's "
            "output has lost, while a model faithful to the output inherits the output's accuracy; see \"The "
            f"original's probe by depth\" below.{lead}", ""]


def _depth_table(m: dict) -> list[str]:
    """The original's probe accuracy at each depth, held-out sets then in-domain ones."""
    rows = [(name, "held-out", a) for name, a in m["probe_by_depth_original"].items()]
    rows += [(name, "in-domain", a) for name, a in m["in_domain_probe_by_depth_original"].items()]
    if not rows:
        return []
    depths = len(rows[0][2])
    lines = ["## The original's probe by depth", "",
             "The same probe (same folds) on the original's mean-pooled hidden states after each block. The last "
             "column is the embedding every model is compared with; a set that probes better at an earlier depth "
             "rewards a model that keeps that depth's features (a layer drop) over one faithful to the output.", "",
             "| labelled set | text | " + " | ".join(_depth_name(d, depths) for d in range(depths)) + " |",
             "|---|---|" + "---:|" * depths]
    for name, text, accuracies in rows:
        best = max(range(depths), key=accuracies.__getitem__)
        lines.append(f"| {name} | {text} | "
                     + " | ".join((f"**{a:.3f}**" if d == best else f"{a:.3f}") for d, a in enumerate(accuracies))
                     + " |")
    return lines + [""]


def _stage_name(name: str) -> str:
    if name.startswith("factorize/"):
        return f"factorize ({name.split('/', 1)[1]})"
    return STAGE_NAMES.get(name, name)


def plot_pareto(report_dir: str, metrics: dict) -> list[str]:
    """pareto.png: held-out cosine, probe accuracy (and retrieval, where measured) against batch-1 latency and file
    size, one point per file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = metrics["models"]
    panels = [("heldout_cosine", "held-out-domain cosine to the original"),
              ("probe", "probe accuracy (held-out domains)")]
    if any(row.get("retrieval") is not None for row in rows):
        panels.append(("retrieval", "retrieval top-1 (held-out domain)"))
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 3.75 * len(panels)))
    colours = {"original": "tab:gray", "ours": "tab:red", "layer drop": "tab:blue", "MiniLM-L3": "tab:green"}
    marks = {"fp32": "o", "int8": "s", "int8 (ONNX Runtime)": "^"}
    labelled = set()
    for r, (quality, title) in enumerate(panels):
        for c, (x_key, x_title) in enumerate((("latency_ms", "batch-1 latency (ms)"), ("bytes", "file size (MB)"))):
            ax = axes[r][c]
            for row in rows:
                key = row["key"]
                model, fmt = next((mo, fo) for k, mo, fo in ROWS if k == key)
                if fmt == "int8" and _in_onnxruntime(key):
                    fmt = "int8 (ONNX Runtime)"
                y = row.get(quality)
                if y is None or (quality == "heldout_cosine" and model == "MiniLM-L3"):
                    continue
                x = row[x_key] / (1e6 if x_key == "bytes" else 1)
                label = f"{model}, {fmt}"
                ax.scatter([x], [y], color=colours[model], marker=marks[fmt],
                           label=label if label not in labelled else None)
                labelled.add(label)
            ax.set_xlabel(x_title)
            ax.set_ylabel(title)
            ax.grid(alpha=0.3)
    handles, labels = [], []
    for ax in axes.flat:
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    name = os.path.basename(metrics["model"].rstrip("/"))
    fig.suptitle(f"{name}: quality against batch-1 latency and size (sequence length {metrics['seq_length']})")
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    fig.savefig(os.path.join(report_dir, "pareto.png"), dpi=100)
    plt.close(fig)
    return ["pareto.png"]


def plot_sweep(path: str, rows: list[dict]) -> None:
    """Held-out-domain cosine and probe accuracy against measured int8 speed-up: ours, layer drop, the original."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probes = any(r.get("probe_int8") is not None for r in rows)
    fig, axes = plt.subplots(1, 2 if probes else 1, figsize=(11 if probes else 6, 4), squeeze=False)
    panels = [("heldout_domain_cosine", "layer_drop_cosine", "held-out-domain cosine (Keras fp32 models)")]
    if probes:
        panels.append(("probe_int8", "layer_drop_probe_int8", "held-out-domain probe accuracy (int8 files)"))
    for ax, (ours_key, drop_key, label) in zip(axes[0], panels):
        points = sorted((r["speedup"], r[ours_key]) for r in rows if r.get("speedup") and r.get(ours_key) is not None)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label="ours")
        drops = sorted((r["layer_drop_speedup"], r[drop_key]) for r in rows
                       if r.get("layer_drop_speedup") and r.get(drop_key) is not None)
        if drops:
            ax.plot([p[0] for p in drops], [p[1] for p in drops], marker="s", linestyle="--", label="layer drop")
        original = [r["probe_original_int8"] for r in rows if r.get("probe_original_int8") is not None]
        if ours_key == "probe_int8" and original:
            ax.axhline(sum(original) / len(original), color="grey", linestyle=":", label="original int8 (1.00x)")
        ax.set_xlabel("int8 speed-up over the original's int8 (measured)")
        ax.set_ylabel(label)
        if ours_key == "heldout_domain_cosine":
            ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
