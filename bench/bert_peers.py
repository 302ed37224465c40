"""Our BERT next to the implementations users would pick instead, measured in one run.

What it measures, for the MiniLM shape (6 x 384, 12 heads, FFN 1536) and the
BERT-base shape (12 x 768, 12 heads, FFN 3072), fp32, 2 threads each:
  * inference: the encoder forward pass on batch 32 x seq 128;
  * training: one full MLM training step on batch 16 x seq 128 (20 masked
    positions per sequence, tied decoder, Adam);
in sequences/s and peak RSS, for
  * tfreparam / tfreparam_xla: `bert.build_encoder` / `bert.build_pretraining_network`
    in a `tf.function` without / with `jit_compile` (and, for MiniLM, the same
    with every encoder projection a 50 %-parameter `LowRankDense`: variant lowrank50);
  * keras_hub: KerasHub `BertBackbone` + `MaskedLMHead` (Keras 3, TF backend);
  * model_garden: TF Model Garden `BertEncoderV2` + `MaskedLM` (tf-models-official);
  * torch: Hugging Face `transformers.BertModel` / `BertForMaskedLM` on the PyTorch CPU build.

How: every (implementation, config, mode) runs in a fresh process -- peers
with the interpreter of their own venv under `bench/peers/.venvs/` (built by
`bash bench/peers/setup.sh`; a peer whose venv is missing is skipped) -- so
peak RSS is that model's alone and no framework shares a thread pool with
another. The protocol (inputs, loss, timing) is `bench/peers/runner.py`:
after an untimed first call, the median of `--repeats` steps; a run during
which other processes used more than `--max_foreign_load` of the CPU
(/proc/stat minus the runner's own CPU time) is repeated up to
`--max_attempts` times, and marked `disturbed` if none was quiet.

"% of ceiling" divides by the matmul-bound ceiling of `bench/gemm.py`
(`bench/results/gemm.json`, measured first by `make bench`).

Run (from the repository root):

    python -m bench.gemm && python -m bench.bert_peers   # writes bench/results/bert_peers.{json,md}
    python -m bench.bert_peers --quick                    # smoke run on tiny shapes, prints only
    python -m bench.bert_peers --configs minilm --modes inference --impls tfreparam,torch
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags, logging

from bench import common
from bench.peers import runner

FLAGS = flags.FLAGS
IMPLS = ("tfreparam", "tfreparam_xla", "keras_hub", "model_garden", "torch")
PEERS = ("keras_hub", "model_garden", "torch")

flags.DEFINE_list("configs", ["minilm", "base"], "BERT shapes: minilm, base.")
flags.DEFINE_list("modes", list(runner.MODES), "inference and/or training.")
flags.DEFINE_list("impls", list(IMPLS), f"Implementations, of {IMPLS}.")
flags.DEFINE_list("lowrank_configs", ["minilm"], "Configs that also run our 50 %-parameter low-rank encoder.")
flags.DEFINE_bool("peer_xla", False, "Also run the TF peers with jit_compile=True (not their CPU default).")
flags.DEFINE_integer("threads", 2, "Threads for every implementation.")
flags.DEFINE_integer("repeats", 5, "Timed steps per run (the median is kept).")
flags.DEFINE_integer("warmup", 2, "Untimed steps before the timed ones (after the untimed first call).")
flags.DEFINE_float("max_foreign_load", 0.1, "Largest fraction of the CPU other processes may use during a run.")
flags.DEFINE_integer("max_attempts", 3, "Runs tried per measurement before a disturbed one is kept.")
flags.DEFINE_float("idle_timeout_s", 60.0, "How long each attempt waits for an idle machine first.")
flags.DEFINE_integer("timeout_s", 1200, "Wall-clock limit of one runner process.")
flags.DEFINE_string("gemm_json", "bench/results/gemm.json", "Ceilings from `python -m bench.gemm`.")
flags.DEFINE_string("out_dir", "bench/results", "Where bert_peers.json and bert_peers.md go.")
flags.DEFINE_bool("quick", False, "Smoke run: 1 layer, vocabulary 1000, batch 2 x seq 32, one repeat, "
                  "no files written unless --out_dir is given explicitly.")

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS_DIR = os.path.join(HERE, "peers")
VENVS_DIR = os.path.join(PEERS_DIR, ".venvs")


# -- which processes to start ---------------------------------------------------


def interpreter(impl: str) -> str | None:
    """The Python that runs `impl`: ours is this one; a peer's is its venv's (None if not built)."""
    if impl.startswith("tfreparam"):
        return sys.executable
    python = os.path.join(VENVS_DIR, impl, "bin", "python")
    return python if os.path.exists(python) else None


def script(impl: str) -> str:
    name = "tfreparam" if impl.startswith("tfreparam") else impl
    return os.path.join(PEERS_DIR, f"run_{name}.py")


def plan(configs, modes, impls, lowrank_configs, peer_xla) -> list[tuple[str, str, str, str]]:
    """(impl, variant, config, mode) of every run, grouped by (config, mode) so ratios come from one stretch."""
    for name, values, allowed in (("configs", configs, runner.SHAPES), ("modes", modes, runner.MODES),
                                  ("impls", impls, IMPLS), ("lowrank_configs", lowrank_configs, runner.SHAPES)):
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ValueError(f"Unknown --{name} {unknown}; choose from {sorted(allowed)}.")
    runs = []
    for config in configs:
        for mode in modes:
            for impl in impls:
                if impl == "tfreparam":
                    variants = ["graph"] + (["lowrank50"] if config in lowrank_configs else [])
                elif impl == "tfreparam_xla":
                    variants = ["xla"] + (["lowrank50_xla"] if config in lowrank_configs else [])
                elif impl == "torch":
                    variants = ["eager"]
                else:
                    variants = ["graph"] + (["xla"] if peer_xla else [])
                runs += [(impl, variant, config, mode) for variant in variants]
    return runs


def runner_args(variant, config, mode) -> list[str]:
    args = [f"--config={config}", f"--mode={mode}", f"--variant={variant}", f"--threads={FLAGS.threads}",
            f"--repeats={FLAGS.repeats}", f"--warmup={FLAGS.warmup}",
            f"--max_foreign_load={FLAGS.max_foreign_load}", f"--max_attempts={FLAGS.max_attempts}",
            f"--idle_timeout_s={FLAGS.idle_timeout_s}"]
    if FLAGS.quick:
        args += ["--num_layers=1", "--vocab_size=1000", "--batch=2", "--seq=32"]
    return args


def run_one(impl, variant, config, mode) -> dict:
    """Starts the runner process for one measurement; returns its record (or an error record)."""
    base = {"impl": impl, "variant": variant, "config": config, "mode": mode}
    python = interpreter(impl)
    if python is None:
        return {**base, "skipped": f"no venv at bench/peers/.venvs/{impl}: run `bash bench/peers/setup.sh {impl}`"}
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(FLAGS.threads)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONPATH", None)  # each venv sees only its own packages (+ bench/ via runner.py)
    command = [python, script(impl)] + runner_args(variant, config, mode)
    start = time.monotonic()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=FLAGS.timeout_s, env=env,
                              cwd=os.path.dirname(HERE))
    except subprocess.TimeoutExpired:
        return {**base, "error": f"timed out after {FLAGS.timeout_s} s"}
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        return {**base, "error": f"exit code {proc.returncode}: {tail}"}
    record = runner.parse_result(proc.stdout)
    record["process_s"] = time.monotonic() - start
    return record


# -- derived figures ----------------------------------------------------------------


def load_ceilings(path: str) -> dict:
    """{(config, mode): ceiling seq/s} from bench.gemm's JSON ({} if it is missing or from a --quick run)."""
    if not os.path.exists(path):
        logging.warning("No %s: run `python -m bench.gemm` first for the %% of ceiling column.", path)
        return {}
    with open(path) as f:
        payload = json.load(f)
    if payload.get("quick"):
        logging.warning("%s comes from a --quick run; ignoring it.", path)
        return {}
    return {(config, mode): result[mode]["ceiling_seq_per_s"]
            for config, result in payload["configs"].items() for mode in runner.MODES if mode in result}


def is_dense_ours(record) -> bool:
    return record["impl"].startswith("tfreparam") and not record["variant"].startswith("lowrank")


def annotate(records: list[dict], ceilings: dict) -> None:
    """Adds pct_of_ceiling (dense models), vs_fastest_peer, and vs_dense (low-rank variants).

    Records of shrunken shapes (`shape_override`, as in --quick) get no % of ceiling.
    """
    ok = [r for r in records if "seq_per_s" in r]
    for r in ok:
        key = (r["config"], r["mode"])
        if key in ceilings and not r["variant"].startswith("lowrank") and "shape_override" not in r:
            r["ceiling_seq_per_s"] = ceilings[key]
            r["pct_of_ceiling"] = 100.0 * r["seq_per_s"] / ceilings[key]
        peers = [p["seq_per_s"] for p in ok if p["impl"] in PEERS and (p["config"], p["mode"]) == key]
        if peers:
            r["vs_fastest_peer"] = r["seq_per_s"] / max(peers)
        if r["variant"].startswith("lowrank"):
            dense_variant = "xla" if r["variant"].endswith("xla") else "graph"
            dense = [d for d in ok if d["impl"] == r["impl"] and d["variant"] == dense_variant
                     and (d["config"], d["mode"]) == key]
            if dense:
                r["vs_dense"] = r["seq_per_s"] / dense[0]["seq_per_s"]


def evaluate_targets(records: list[dict]) -> list[dict]:
    """The issue's targets, each from figures of this one run."""
    ok = [r for r in records if "seq_per_s" in r]
    verdicts = []
    for config in sorted({r["config"] for r in ok}):
        for mode in runner.MODES:
            group = [r for r in ok if (r["config"], r["mode"]) == (config, mode)]
            ours = [r for r in group if is_dense_ours(r)]
            peers = [r for r in group if r["impl"] in PEERS]
            if ours and peers:
                best, fastest = max(ours, key=_speed), max(peers, key=_speed)
                ratio = best["seq_per_s"] / fastest["seq_per_s"]
                verdicts.append(_verdict(config, mode, f"our fp32 ({_label(best)}) vs fastest peer ({_label(fastest)})",
                                         ratio, 1.0, "x", best, fastest))
            if mode == "inference":
                for r in ours:
                    if "pct_of_ceiling" in r:
                        verdicts.append(_verdict(config, mode, f"{_label(r)} % of matmul ceiling",
                                                 r["pct_of_ceiling"], 85.0, "%", r))
            for r in group:
                if "vs_dense" in r:
                    verdicts.append(_verdict(config, mode, f"{_label(r)} vs dense", r["vs_dense"], 1.4, "x", r))
    return verdicts


def _speed(record):
    return record["seq_per_s"]


def _label(record) -> str:
    return record["impl"] if record["variant"] in ("graph", "xla", "eager") else f"{record['impl']} {record['variant']}"


def _verdict(config, mode, what, value, minimum, unit, *records) -> dict:
    return {"config": config, "mode": mode, "target": what, "value": value, "minimum": minimum, "unit": unit,
            "met": value >= minimum, "disturbed": any(r.get("disturbed") for r in records)}


# -- reporting --------------------------------------------------------------------


def table(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    headers = ["config", "mode", "impl", "variant", "seq/s", "% of ceiling", "vs fastest peer", "peak RSS MB"]
    rows = []
    for r in records:
        head = [r["config"], r["mode"], r["impl"], r["variant"]]
        if "seq_per_s" not in r:
            rows.append(head + [r.get("skipped") and "skipped" or "failed", "-", "-", "-"])
            continue
        mark = "*" if r["disturbed"] else ""
        rows.append(head + [
            f"{r['seq_per_s']:.1f}{mark}",
            f"{r['pct_of_ceiling']:.0f}%" if "pct_of_ceiling" in r else "-",
            f"{r['vs_fastest_peer']:.2f}x" if "vs_fastest_peer" in r else "-",
            f"{r['peak_rss_mb']:.0f}",
        ])
    return headers, rows


def targets_table(verdicts):
    headers = ["config", "mode", "target", "value", "needed", "met"]
    rows = [[v["config"], v["mode"], v["target"],
             f"{v['value']:.2f}{v['unit']}" if v["unit"] == "x" else f"{v['value']:.0f}%",
             f">= {v['minimum']:g}{v['unit']}", ("yes" if v["met"] else "NO") + (" (disturbed)" if v["disturbed"] else "")]
            for v in verdicts]
    return headers, rows


def markdown_report(records, verdicts, machine) -> str:
    disturbed = any(r.get("disturbed") for r in records)
    frameworks = sorted({f"{r['impl']}: {r['framework']}" for r in records if "framework" in r})
    problems = [f"- {r['impl']} {r['variant']} {r['config']} {r['mode']}: {r.get('skipped') or r.get('error')}"
                for r in records if "seq_per_s" not in r]
    lines = [
        "# BERT next to its peers",
        "",
        f"fp32 on CPU, {FLAGS.threads} threads per implementation, each run in its own process. Inference: "
        f"encoder forward pass, batch {runner.DEFAULT_BATCH['inference']} × seq 128. Training: one MLM step "
        f"(batch {runner.DEFAULT_BATCH['training']} × seq 128, {runner.NUM_PREDICTIONS} masked positions per "
        "sequence, tied decoder, Adam). Median of "
        f"{FLAGS.repeats} steps after {FLAGS.warmup} warm-up steps. % of ceiling: measured seq/s over the "
        "matmul-bound ceiling of `bench/gemm.py` (dense models). `lowrank50`: every encoder projection a "
        "`LowRankDense` with 50 % of the parameters.",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs, {machine['time']}. "
        "Generated by `python -m bench.bert_peers` (`make bench`).",
        "",
        common.markdown_table(*table(records)),
        "",
        "`*`: other processes used more than "
        f"{FLAGS.max_foreign_load:.0%} of the CPU in every attempt (up to {FLAGS.max_attempts}); the least "
        "disturbed attempt is shown." + (
            " **Some figures here were taken on a busy machine**: absolute seq/s and % of ceiling (the "
            "ceiling is measured at another moment, so it can even pass 100 %) mean little; ratios between "
            "neighbouring runs somewhat more." if disturbed else ""),
        "",
        "## Targets (ratios within this run)",
        "",
        common.markdown_table(*targets_table(verdicts)),
        "",
        "## Versions",
        "",
        *[f"- {line}" for line in frameworks],
        "",
    ]
    if problems:
        lines += ["## Not measured", "", *problems, ""]
    return "\n".join(lines)


def write_results(records, verdicts, machine, complete: bool) -> None:
    """bert_peers.json (the records), bert_peers.meta.json (machine, flags, targets) and bert_peers.md."""
    common.write_json(os.path.join(FLAGS.out_dir, "bert_peers.json"), records)
    common.write_json(os.path.join(FLAGS.out_dir, "bert_peers.meta.json"), {
        "benchmark": "bert_peers", "complete": complete, "machine": machine, "targets": verdicts,
        "flags": {name: FLAGS[name].value for name in ("configs", "modes", "impls", "lowrank_configs", "peer_xla",
                                                       "threads", "repeats", "warmup", "max_foreign_load",
                                                       "max_attempts", "quick")},
    })
    report = markdown_report(records, verdicts, machine)
    if not complete:
        report = report.replace("# BERT next to its peers\n", "# BERT next to its peers\n\n**Partial: the run was "
                                "interrupted; only the rows below were measured.**\n", 1)
    with open(os.path.join(FLAGS.out_dir, "bert_peers.md"), "w") as f:
        f.write(report)


def main(argv):
    del argv
    if FLAGS.quick:
        for name, value in (("repeats", 1), ("warmup", 0), ("max_attempts", 1), ("idle_timeout_s", 0.0),
                            ("configs", ["minilm"])):
            if not FLAGS[name].present:
                FLAGS[name].value = value
    runs = plan(FLAGS.configs, FLAGS.modes, FLAGS.impls, FLAGS.lowrank_configs, FLAGS.peer_xla)
    machine = common.machine_info()
    ceilings = load_ceilings(FLAGS.gemm_json)
    write = not FLAGS.quick or FLAGS["out_dir"].present
    records = []
    for index, (impl, variant, config, mode) in enumerate(runs, 1):
        logging.info("[%d/%d] %s %s %s %s", index, len(runs), impl, variant, config, mode)
        record = run_one(impl, variant, config, mode)
        if "seq_per_s" in record:
            logging.info("  %.1f seq/s, peak RSS %.0f MB%s", record["seq_per_s"], record["peak_rss_mb"],
                         " (disturbed)" if record["disturbed"] else "")
        else:
            logging.warning("  %s", record.get("skipped") or record.get("error"))
        records.append(record)
        if write:  # after every run, so that an interrupted benchmark keeps what it measured
            annotate(records, ceilings)
            write_results(records, evaluate_targets(records), machine, complete=index == len(runs))
    annotate(records, ceilings)
    verdicts = evaluate_targets(records)
    print(common.text_table(*table(records)))
    print()
    print(common.text_table(*targets_table(verdicts)))
    if any("error" in r for r in records):
        raise SystemExit("Some runs failed; see the log above.")


if __name__ == "__main__":
    app.run(main)
