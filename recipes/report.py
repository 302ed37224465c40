"""report.md, metrics.json and PNG plots of a compress run (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import os

_NAMES = {"svd": "truncated SVD", "whitened": "whitened SVD",
          "best": "best: sensitivity-allocated, sequential whitened SVD", "kronecker": "Kronecker", "tt": "tensor train"}


def _fmt(value, pattern="{:.4f}"):
    return "—" if value is None else pattern.format(value)


def method_table(metrics: dict) -> str:
    lines = ["| method | held-out cosine | min cosine | NN agreement | mean output error | after distillation: cosine | NN agreement |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for method, m in metrics["methods"].items():
        lines.append(
            f"| {_NAMES.get(method, method)} | {m['cosine']:.4f} | {m['cosine_min']:.4f} | {m['nn_agreement']:.3f} | "
            f"{m['output_error']:.4f} | {_fmt(m.get('distilled_cosine'))} | {_fmt(m.get('distilled_nn_agreement'), '{:.3f}')} |"
        )
    return "\n".join(lines)


def write(report_dir: str, metrics: dict, layer_table: str, results: dict) -> str:
    """Writes metrics.json, report.md and plots; returns the report text."""
    os.makedirs(report_dir, exist_ok=True)
    plots = plot_methods(report_dir, metrics) + plot_exports(report_dir, metrics)
    metrics = dict(metrics, plots=plots)
    with open(os.path.join(report_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2, default=str)
    m = metrics
    lines = [
        "# Compression report",
        "",
        f"Model: {m['model']}. Encoder projections ({m['policy']}) at {m['budget']:.0%} of their parameters: "
        f"{m['params_before']:,} -> {m['params_after']:,} (whole model {m['total_params_before']:,} -> "
        f"{m['total_params_after']:,}). Text: {m['sentences']}.",
        "",
        f"Result ({_NAMES.get(m['best_method'], m['best_method'])}"
        f"{', after %d distillation steps' % m['distill_steps'] if m['distill_steps'] else ''}): held-out embedding "
        f"cosine **{m['embedding_cosine_heldout']:.4f}** (min {m['embedding_cosine_min_heldout']:.4f}), "
        f"nearest-neighbour agreement {m['nn_agreement_heldout']:.3f}.",
        "",
        "## Methods (held-out sentences, never used for calibration or distillation)",
        "",
        method_table(m),
        "",
    ]
    if plots:
        lines += [f"![{os.path.splitext(p)[0]}]({p})" for p in plots] + [""]
    exported = (m.get("export") or {}).get("artifact_bytes")
    if exported:
        latency = m["export"]["latency_ms"]
        lines += ["## Exported files", "", f"Sequence length {m['seq_length']}; latency: median of 10 single-sentence "
                  "calls on this machine.", "", "| file | MB | batch-1 ms |", "|---|---:|---:|"]
        lines += [f"| {name} | {size / 1e6:.1f} | {latency[name]:.1f} |" for name, size in exported.items()]
        lines += [""]
    for key, title in (("prune", "Pruning"), ("qat", "Quantization-aware training"), ("export", "Export")):
        if m.get(key):
            lines += [f"## {title}", "", "```", json.dumps(m[key], indent=2, default=str), "```", ""]
    lines += ["## Stages", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {name} | {seconds} |" for name, seconds in m["stage_seconds"].items()]
    if m.get("stages_skipped"):
        lines += ["", f"Skipped in this run (seconds are from the run that did them): {', '.join(m['stages_skipped'])}."]
    lines += ["", f"Total: {m['seconds_total']:.1f} s.", "", f"## Per layer ({_NAMES.get(m['best_method'], m['best_method'])})",
              "", layer_table, ""]
    text = "\n".join(lines)
    with open(os.path.join(report_dir, "report.md"), "w") as f:
        f.write(text)
    return text


def plot_methods(report_dir: str, metrics: dict) -> list[str]:
    """fidelity.png: held-out cosine per method, before and after distillation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(metrics["methods"])
    before = [metrics["methods"][k]["cosine"] for k in methods]
    after = [metrics["methods"][k].get("distilled_cosine") for k in methods]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = range(len(methods))
    ax.bar([x - 0.2 for x in xs], before, width=0.4, label="factorized")
    ax.bar([x + 0.2 for x in xs], [a or 0 for a in after], width=0.4, label="+ distillation")
    ax.axhline(0.95, color="gray", linestyle="--", linewidth=1, label="target 0.95")
    ax.set_xticks(list(xs), methods)
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out embedding cosine")
    ax.set_title(f"{metrics['model']} at {metrics['budget']:.0%} of projection parameters")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(report_dir, "fidelity.png"), dpi=100)
    plt.close(fig)
    return ["fidelity.png"]


def plot_exports(report_dir: str, metrics: dict) -> list[str]:
    """exports.png: file size and batch-1 latency of each exported artifact (none: no plot)."""
    export = metrics.get("export") or {}
    sizes, latency = export.get("artifact_bytes"), export.get("latency_ms")
    if not sizes:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sizes)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.barh(names, [sizes[n] / 1e6 for n in names])
    left.set_xlabel("file size (MB)")
    right.barh(names, [latency[n] for n in names])
    right.set_xlabel("batch-1 latency (ms)")
    right.set_yticks([])
    fig.suptitle(f"{metrics['model']}: exported artifacts at sequence length {metrics['seq_length']}")
    fig.tight_layout()
    fig.savefig(os.path.join(report_dir, "exports.png"), dpi=100)
    plt.close(fig)
    return ["exports.png"]


def plot_sweep(path: str, rows: list[dict]) -> None:
    """Fidelity vs kept share of parameters, one line per method and stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in sorted({r["method"] for r in rows}):
        points = sorted((r["budget"], r["cosine"], r.get("distilled_cosine")) for r in rows if r["method"] == method)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{method}")
        if any(p[2] is not None for p in points):
            ax.plot([p[0] for p in points if p[2] is not None], [p[2] for p in points if p[2] is not None],
                    marker="s", linestyle="--", label=f"{method} + distillation")
    ax.axhline(0.95, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("share of projection parameters kept")
    ax.set_ylabel("held-out embedding cosine")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
