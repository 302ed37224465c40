r"""Compress a pretrained BERT sentence encoder and judge it on text it never saw: the main job (`make demo`).

    python -m recipes.compress                                   # the demo: all-MiniLM-L6-v2, 1.45x int8 target
    python -m recipes.compress --target_speedup=1.8 --report_dir=reports/fast
    python -m recipes.compress --train_files=mine.txt --eval_files=theirs.txt
    python -m recipes.compress --policy=lowrank --budget=0.5     # low-rank factorization instead of pruning

Protocol: the built-in corpus's --heldout_domains (default wordnet, manual)
never reach compression; the other domains are split by hash into
calibration / distillation / in-domain held-out parts. Every model is
judged on both: cosine and nearest-neighbour agreement with the original's
sentence embeddings, and a linear probe on the held-out domains' labelled set.

Stages (one line each; finished stages are skipped when the same command runs
again, see `recipes.pipeline`): load, text, reference, then for the default
--policy=structured: importance (output sensitivity of every head and FFN
neuron on the compression text) -> latency model (structures timed in int8
on this machine) -> prune (the heads and neurons that keep the most
importance at --target_speedup) -> refit (least-squares refit of the output
projections; off unless --refit); then distill (cached teacher), layer drop (baseline, same
distillation budget), export, evaluate, latency (side by side), report.
Writes report.md, metrics.json, pareto.png, model_int8.tflite,
model_fp32.tflite and compressed_encoder.keras to --report_dir.
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from recipes import cli, compress_settings
from recipes.compress_settings import CompressSettings

# Each recipe has its own flag set, so several recipes can be imported in one process (tests, sweep).
FLAGS = flags.FlagValues()
_D = CompressSettings()


def _flag(kind, name, help_text, default=None, **kwargs):
    default = getattr(_D, name) if default is None and hasattr(_D, name) else default
    if kind == "list" and default is not None:
        default = [str(v) for v in default]
    return getattr(flags, f"DEFINE_{kind}")(name=name, default=default, help=help_text, flag_values=FLAGS, **kwargs)


# model and method
_flag("string", "model", "Hugging Face BERT directory (config.json + model.safetensors + vocab.txt) or 'minilm'.")
_flag("enum", "policy", "How to compress: 'structured' (remove attention heads and FFN neurons at --target_speedup), "
      "or factorize the projections at --budget: 'lowrank', 'kronecker', 'tt'.", enum_values=list(
          compress_settings.POLICIES))
_flag("float", "target_speedup", "Structured: wanted batch-1 int8 speed-up over the original's int8 file; the task "
      "path: wanted batch-1 fp32 speed-up of the student over the teacher. Resolved against latency measured on "
      "this machine.")
_flag("float", "speedup_margin", "Aim this much above --target_speedup (the latency model's error).")
_flag("list", "head_widths", "Structured: query/key and value/output width of every kept head, e.g. 8,24 (of "
      "MiniLM's 32), from a whitened per-head SVD of the trained weights; 'auto': a quarter and three quarters of "
      "the head size; 'full' keeps heads whole.", default=["auto"])
_flag("float", "min_head_share", "Structured: share of each block's attention heads it always keeps (rounded up, at "
      "least one); the search chooses the rest. Below 1, heads are also removed.")
_flag("list", "drop_blocks", "Structured: blocks to remove whole before heads and neurons are searched, e.g. 4 "
      "(never the last); the search spends their latency on the other blocks.")
_flag("enum", "importance", "Output whose sensitivity ranks heads and neurons: 'sequence' (token states), "
      "'embedding' (mean-pooled), 'hidden' (every block's output).",
      enum_values=list(compress_settings.IMPORTANCE_TARGETS))
_flag("integer", "importance_draws", "Random projections per batch of the sensitivity estimate.")
_flag("bool", "refit", "Least-squares refit of the output projections after pruning (off: it lowers held-out-domain "
      "cosine after distillation).")
_flag("float", "refit_ridge", "Ridge of the refit, relative to the mean diagonal of its Gram matrix.")
_flag("float", "budget", "Share of the encoder-projection kernel parameters to keep, in (0, 1] (lowrank / kronecker / "
      "tt).")
_flag("string", "ranks", "Low-rank only: a fixed rank for every projection (int), instead of --budget.")
_flag("list", "methods", "Low-rank factorizations to compare (the best in-domain one is kept): svd, whitened, best.")
# protocol
_flag("string", "train_files", "Comma-separated text files to compress on (each file is a domain; default: the "
      "built-in corpus minus --heldout_domains).")
_flag("string", "eval_files", "Comma-separated text files of held-out domains (each file is one; default: "
      "--heldout_domains of the built-in corpus).")
_flag("list", "heldout_domains", "Built-in domains kept out of compression entirely: wordnet, debian, stdlib, "
      "manual, bible.")
_flag("list", "compression_domains", "Built-in domains to compress on (default: every domain not held out).")
_flag("bool", "vocab_domain", "Add a synthetic domain of random whole words of the model's vocabulary to the "
      "compression text (no corpus text; widens calibration and distillation).")
_flag("integer", "calibration_per_domain", "Calibration sentences per compression domain (importance, refit).")
_flag("integer", "train_per_domain", "Distillation sentences per compression domain.")
_flag("integer", "eval_per_domain", "Evaluation sentences per domain (in-domain held-out part; held-out domains).")
_flag("integer", "probe_sentences", "Labelled sentences per probe set.")
_flag("integer", "retrieval_pairs", "Held-out retrieval pairs (a WordNet example sentence -> its definition, among "
      "all the pairs' definitions) when wordnet is held out; 0: none.")
_flag("integer", "probe_folds", "Folds of the linear probe's cross-validation.")
_flag("float", "probe_l2", "L2 weight of the probe's logistic regression (on standardised embeddings).")
_flag("integer", "seq_length", "Maximum tokens per sentence; exported files use this fixed length.")
# distillation
_flag("integer", "distill_steps", "Distillation steps of ours and of the layer-drop baseline (0: none).")
_flag("integer", "batch_size", "Distillation batch size.")
# No flag default: unset, the settings resolve the job's own (2e-4 for the encoder, 1e-4 with --task_model).
flags.DEFINE_float("learning_rate", None, "Peak distillation learning rate (linear warm-up 10 %, then linear decay); "
                   "default 2e-4, or 1e-4 with --task_model.", flag_values=FLAGS)
_flag("float", "hidden_weight", "Weight of the hidden-state MSE (the sentence-encoder job; the task path has "
      "--task_hidden_weight).")
_flag("float", "embedding_weight", "Weight of the sentence-embedding cosine distance.")
# baselines and measurement
_flag("list", "baselines", "Baselines beside ours: int8 (of the original), layer_drop, minilm_l3.")
_flag("list", "layer_drop_keep", "Blocks the layer-drop baseline keeps, e.g. 0,1,2 (default: the first K whose "
      "int8 latency best matches ours).")
_flag("integer", "latency_rounds", "Interleaved rounds of batch-1 calls per latency measurement.")
_flag("integer", "latency_threads", "Interpreter threads when timing (1 is the most stable on a shared machine).")
# optional stages and outputs
_flag("float", "sparsity", "Also prune the compressed model to this sparsity (tfreparam.sparsity).")
_flag("string", "m_by_n", "Also prune to structured M:N sparsity, e.g. '2:4' (tfreparam.sparsity).")
_flag("bool", "qat", "Quantization-aware training of the compressed model (tfreparam.quantization).")
_flag("integer", "qat_steps", "Quantization-aware training steps with --qat.")
_flag("list", "export", "Extra artifacts beside model_int8.tflite and model_fp32.tflite: saved_model, onnx.")
_flag("enum", "int8", "How the int8 files are quantized: 'dynamic' (int8 weights, activations quantized at run "
      "time), 'full' (fully-integer int8; with --qat from the trained ranges) or 'int16x8' (fully integer, int8 "
      "weights, int16 activations). Full-integer int8 loses much of MiniLM's fidelity (per-tensor int8 cannot hold "
      "its residual-stream outliers); int16x8 keeps it.", enum_values=list(compress_settings.INT8_MODES))
_flag("string", "report_dir", "Where report.md, metrics.json, plots, models and stage outputs go.")
_flag("string", "conversion_cache", "Where converted files of the original (the task path: the teacher) are kept by "
      "content, to be reused by any run that converts the same model the same way (default: "
      "<report_dir>/conversions; a sweep and --preset=thorough share one).")
_flag("integer", "seed", "Seed of the text sampling, masks of the latency probes, and distillation.")
_flag("enum", "preset", "'demo': one run; 'thorough': leave-one-domain-out over every built-in domain "
      "(one run each, in <report_dir>/heldout_<domain>, averaged in lodo.md), with 600 distillation steps and "
      "200 latency rounds where those flags are not given.",
      enum_values=list(compress_settings.PRESETS))
# the task path (issue 15)
_flag("string", "task_model", "A fine-tuned classifier directory (recipes.finetune --output_dir) to compress for "
      "its task instead of the sentence encoder.")
_flag("list", "text_fields", "Task path: the text column(s) of the task's files.")
_flag("string", "label_field", "Task path: the label column.")
_flag("float", "temperature", "Task path: softening temperature of the soft-target loss.")
_flag("float", "alpha", "Task path: weight of the soft-target loss (1 - alpha: the hard labels).")
_flag("integer", "task_epochs", "Task path: distillation epochs over the training files.")
_flag("float", "task_hidden_weight", "Task path: weight of the hidden-state MSE against the live teacher (0: soft "
      "targets and labels only, from cached teacher logits; > 0 costs ~50 % more time per epoch).")


def check_flags(f) -> CompressSettings:
    """Validated settings from the flag values; raises app.UsageError naming the problem."""
    return compress_settings.from_flags(f)


def run(settings: CompressSettings) -> dict:
    """The whole job; returns the metrics written to metrics.json."""
    # TensorFlow's SavedModel writer (every TFLite conversion) logs at INFO through absl: keep the log readable.
    logging.set_verbosity(logging.WARNING)
    if settings.task_model:
        from recipes import task_compress

        return task_compress.run(settings)
    if settings.preset == "thorough":
        return leave_one_domain_out(settings)
    from recipes import stages

    return stages.CompressRun(settings).run()


def leave_one_domain_out(settings: CompressSettings) -> dict:
    """One run per built-in domain held out (the others compress); `recipes.lodo` writes lodo.md / lodo.json."""
    from recipes import corpus, lodo, stages

    runs = {}
    settings = settings.shared_conversions()
    for domain in corpus.DOMAINS:
        one = settings.replace(preset="demo", heldout_domains=(domain,), compression_domains=(),
                               report_dir=os.path.join(settings.report_dir, f"heldout_{domain}"))
        runs[domain] = stages.CompressRun(one).run()
    return lodo.write(settings.report_dir, runs)


main = cli.main(FLAGS, check_flags, run)
parse_flags = cli.flags_parser(FLAGS)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
