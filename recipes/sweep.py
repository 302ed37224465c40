r"""Plain vs whitened vs best, before and after distillation, at several budgets.

Runs `recipes.compress` once per budget (each in `<report_dir>/budget_XX/`,
so finished stages are reused on a re-run) and writes `sweep.md`,
`sweep.json` and `sweep.png` (fidelity vs kept parameters) to --report_dir.
Every compress flag applies (e.g. --distill_steps, --train_files).

    python -m recipes.sweep --budgets=0.25,0.5,0.75 --distill_methods=svd,whitened,best
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from recipes import compress  # noqa: F401  defines the shared flags

FLAGS = compress.FLAGS
flags.DEFINE_list("budgets", ["0.25", "0.5", "0.75"], "Budgets to sweep (shares of projection parameters).",
                  flag_values=FLAGS)


def sweep(settings: dict, budgets) -> list[dict]:
    from recipes import report as report_lib

    rows = []
    root = settings["report_dir"]
    for budget in budgets:
        run_settings = dict(settings, budget=budget, report_dir=os.path.join(root, f"budget_{round(budget * 100):02d}"))
        metrics = compress.run(run_settings)
        for method, m in metrics["methods"].items():
            rows.append(dict(budget=budget, method=method, params_after=m["params_after"], **{
                k: m.get(k) for k in ("cosine", "cosine_min", "nn_agreement", "output_error", "distilled_cosine",
                                      "distilled_nn_agreement")}))
    with open(os.path.join(root, "sweep.json"), "w") as f:
        json.dump(rows, f, indent=2)
    lines = ["| budget | method | cosine | NN agreement | output error | distilled cosine | distilled NN agreement |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        fmt = lambda v, p="{:.4f}": "—" if v is None else p.format(v)  # noqa: E731
        lines.append(f"| {r['budget']:.0%} | {r['method']} | {r['cosine']:.4f} | {r['nn_agreement']:.3f} | "
                     f"{r['output_error']:.4f} | {fmt(r['distilled_cosine'])} | "
                     f"{fmt(r['distilled_nn_agreement'], '{:.3f}')} |")
    table = "\n".join(lines)
    with open(os.path.join(root, "sweep.md"), "w") as f:
        f.write(f"# Sweep ({settings['distill_steps']} distillation steps per distilled method)\n\n{table}\n\n"
                "![sweep](sweep.png)\n")
    report_lib.plot_sweep(os.path.join(root, "sweep.png"), rows)
    print(table, flush=True)
    print(f"[sweep] written to {os.path.abspath(root)}", flush=True)
    return rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
    try:
        budgets = [float(b) for b in FLAGS.budgets]
    except ValueError:
        raise app.UsageError(f"--budgets must be numbers in (0, 1], got {FLAGS.budgets}.") from None
    if not budgets or any(not 0 < b <= 1 for b in budgets):
        raise app.UsageError(f"--budgets must be numbers in (0, 1], got {FLAGS.budgets}.")
    settings = compress.check_flags(FLAGS)
    sweep(settings, budgets)


if __name__ == "__main__":
    FLAGS.set_default("report_dir", "reports/sweep")
    app.run(main, flags_parser=compress.parse_flags)
