r"""Compress a pretrained BERT end to end: the main job (`make demo`).

Stages (one timing line each; finished stages are skipped when the same
command is run again, see `recipes.pipeline`):

  load        the checkpoint (default: the bundled all-MiniLM-L6-v2) as a flat Keras BERT
  text        calibration / distillation / held-out sentences that never overlap
              (default: the stdlib-docstring corpus; or --train_files / --eval_files)
  calibrate   input Gram matrices of every encoder projection (padding excluded)
  factorize   each method in --methods at --budget of the projection parameters:
                svd       plain truncated SVD, uniform ranks
                whitened  activation-aware SVD, uniform ranks
                best      whitened SVD + ranks allocated by measured sensitivity
                          under the same total budget + sequential refitting
                          (each layer calibrated on the already-compressed
                          model's inputs, targeted at the original outputs)
              (--policy=kronecker / tt replace the low-rank family)
  distill     --distill_steps of embedding + hidden-state + attention
              distillation from the original (`tfreparam.distill.Distiller`)
              for each method in --distill_methods
  prune / qat / export   with --sparsity / --m_by_n, --qat, --export
  report      report.md, metrics.json and PNG plots in --report_dir

    python -m recipes.compress --budget=0.5 --report_dir=reports/demo
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time

import numpy as np
from absl import app, flags

from recipes import cli, pipeline as pipeline_lib

# Each recipe has its own flag set, so several recipes can be imported in one process (tests, sweep).
FLAGS = flags.FlagValues()


def _flag(kind, *args, **kwargs):
    return getattr(flags, f"DEFINE_{kind}")(*args, flag_values=FLAGS, **kwargs)


_flag("string", "model", "minilm", "Hugging Face BERT directory (config.json + model.safetensors + vocab.txt) or 'minilm'.")
_flag("enum", "policy", "lowrank", ["lowrank", "kronecker", "tt"], "Reparameterization family of the encoder projections.")
_flag("float", "budget", 0.5, "Share of the encoder-projection kernel parameters to keep, in (0, 1].")
_flag("string", "ranks", None, "Low-rank only: a fixed rank for every projection (int), instead of --budget.")
_flag("list", "methods", ["svd", "whitened", "best"], "Low-rank factorizations to compare: svd, whitened, best.")
_flag("list", "distill_methods", ["best"], "Methods to distil after factorizing (a subset of --methods; empty: none).")
_flag("string", "train_files", None, "Comma-separated text files for calibration and distillation (default: built-in corpus).")
_flag("string", "eval_files", None, "Comma-separated text files of held-out sentences (default: a held-out part of the training text).")
_flag("integer", "calibration_sentences", 384, "Sentences for the calibration statistics.")
_flag("integer", "heldout_sentences", 384, "Held-out sentences for the fidelity metrics.")
_flag("integer", "sensitivity_sentences", 64, "Sentences on which per-layer sensitivity is measured (method best).")
_flag("integer", "seq_length", 64, "Maximum tokens per sentence.")
_flag("integer", "distill_steps", 400, "Distillation steps per distilled method (0: skip distillation).")
_flag("integer", "batch_size", 32, "Distillation batch size.")
_flag("float", "learning_rate", 1e-4, "Peak distillation learning rate (linear warm-up then decay).")
_flag("float", "hidden_weight", 1.0, "Weight of the hidden-state MSE.")
_flag("float", "attention_weight", 1.0, "Weight of the attention-probability MSE.")
_flag("float", "embedding_weight", 10.0, "Weight of the sentence-embedding cosine distance.")
_flag("float", "sparsity", None, "Prune the compressed model to this sparsity (tfreparam.sparsity).")
_flag("string", "m_by_n", None, "Structured M:N sparsity, e.g. '2:4' (tfreparam.sparsity).")
_flag("bool", "qat", False, "Quantization-aware training of the compressed model (tfreparam.quantization).")
_flag("integer", "qat_steps", 50, "Quantization-aware training steps with --qat.")
_flag("list", "export", ["tflite_int8"], "Artifacts to write: saved_model, tflite_int8, onnx (tfreparam.export).")
_flag("enum", "int8", "dynamic", ["dynamic", "full", "int16x8"],
      "How model_int8.tflite is quantized: 'dynamic' (int8 weights, activations quantized at run time), "
      "'full' (fully-integer int8; with --qat from the trained ranges) or 'int16x8' (fully integer, int8 "
      "weights, int16 activations, calibrated). Full-integer int8 loses much of MiniLM's fidelity (per-tensor "
      "int8 cannot hold its residual-stream outliers; see README); int16x8 keeps it.")
_flag("string", "report_dir", "reports/demo", "Where report.md, metrics.json, plots and stage outputs go.")
_flag("integer", "seed", 0, "Seed of the distillation data order and initialisation.")

PROJECTIONS = r"layer_\d+/(attention/(query|key|value|output)|ffn/(intermediate|output))"
METHODS = ("svd", "whitened", "best")
EXPORT_FORMATS = ("saved_model", "tflite_int8", "onnx")
_LOG_PREFIX = "compress"


def log(line: str) -> None:
    print(line, flush=True)


# -- flag checks: everything that can be wrong is reported before any long work ---------


def check_flags(f) -> dict:
    """Validated settings from the flag values; raises app.UsageError naming the problem."""
    if not 0.0 < f.budget <= 1.0:
        raise app.UsageError(f"--budget must be in (0, 1], got {f.budget}.")
    methods = [m.strip() for m in f.methods if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if f.policy == "lowrank" and (unknown or not methods):
        raise app.UsageError(f"--methods must be a non-empty subset of {list(METHODS)}; got {f.methods}.")
    if f.policy != "lowrank":
        methods = [f.policy]
    distilled = [m.strip() for m in f.distill_methods if m.strip()]
    if f.policy != "lowrank":
        distilled = [f.policy] if distilled else []
    missing = sorted(set(distilled) - set(methods))
    if missing:
        raise app.UsageError(f"--distill_methods {missing} are not among --methods {methods}.")
    rank = None
    if f.ranks is not None:
        if f.policy != "lowrank":
            raise app.UsageError("--ranks applies to --policy=lowrank; use --budget for kronecker / tt.")
        try:
            rank = int(f.ranks)
        except ValueError:
            raise app.UsageError(f"--ranks must be one integer rank for every projection, got {f.ranks!r}.") from None
        if rank < 1:
            raise app.UsageError(f"--ranks must be >= 1, got {rank}.")
    for name in ("calibration_sentences", "sensitivity_sentences", "seq_length", "batch_size"):
        if getattr(f, name) < 1:
            raise app.UsageError(f"--{name} must be >= 1, got {getattr(f, name)}.")
    if f.heldout_sentences < 2:
        raise app.UsageError(f"--heldout_sentences must be >= 2 (nearest neighbours need two), got {f.heldout_sentences}.")
    if f.distill_steps < 0:
        raise app.UsageError(f"--distill_steps must be >= 0, got {f.distill_steps}.")
    if f.learning_rate <= 0:
        raise app.UsageError(f"--learning_rate must be > 0, got {f.learning_rate}.")
    for name in ("hidden_weight", "attention_weight", "embedding_weight"):
        if getattr(f, name) < 0:
            raise app.UsageError(f"--{name} must be >= 0, got {getattr(f, name)}.")
    if f.sparsity is not None and not 0.0 < f.sparsity < 1.0:
        raise app.UsageError(f"--sparsity must be in (0, 1), got {f.sparsity}.")
    m_by_n = None
    if f.m_by_n:
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", f.m_by_n)
        if not match or not 0 < int(match.group(1)) < int(match.group(2)):
            raise app.UsageError(f"--m_by_n must look like '2:4' (M < N), got {f.m_by_n!r}.")
        m_by_n = (int(match.group(1)), int(match.group(2)))
    exports = [e.strip() for e in f.export if e.strip()]
    bad = sorted(set(exports) - set(EXPORT_FORMATS))
    if bad:
        raise app.UsageError(f"--export takes {list(EXPORT_FORMATS)}; got unknown {bad}.")
    _require_modules(f.sparsity is not None or m_by_n is not None, f.qat, exports)
    if f.qat_steps < 1:
        raise app.UsageError(f"--qat_steps must be >= 1, got {f.qat_steps}.")
    if f.qat and f.int8 != "full" and "tflite_int8" in exports:
        raise app.UsageError("--qat trains int8 ranges for a fully-integer model: pass --int8=full with it.")
    try:
        from recipes import text_data

        for flag, value in (("--train_files", f.train_files), ("--eval_files", f.eval_files)):
            if value is not None:
                text_data.check_files(value, flag)
        _check_model_dir(f.model)
        cli.check_output_dir(f.report_dir, "--report_dir")
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    return dict(model=f.model, policy=f.policy, budget=f.budget, rank=rank, methods=methods, distilled=distilled,
                train_files=f.train_files, eval_files=f.eval_files, calibration_sentences=f.calibration_sentences,
                heldout_sentences=f.heldout_sentences, sensitivity_sentences=f.sensitivity_sentences,
                seq_length=f.seq_length, distill_steps=f.distill_steps, batch_size=f.batch_size,
                learning_rate=f.learning_rate, hidden_weight=f.hidden_weight, attention_weight=f.attention_weight,
                embedding_weight=f.embedding_weight, sparsity=f.sparsity, m_by_n=m_by_n, qat=f.qat,
                qat_steps=f.qat_steps, int8=f.int8, export=exports, report_dir=f.report_dir, seed=f.seed)


def _require_modules(prune: bool, qat: bool, exports) -> None:
    needed = [("--sparsity / --m_by_n", "tfreparam.sparsity", prune), ("--qat", "tfreparam.quantization", qat),
              ("--export", "tfreparam.export", bool(exports))]
    for flag, module, wanted in needed:
        if wanted and importlib.util.find_spec(module) is None:
            raise app.UsageError(
                f"{flag} needs {module}, which this checkout does not have yet; run without {flag.split(' ')[0]}."
            )


def _check_model_dir(model: str) -> None:
    """A BERT checkpoint directory: config.json of a BERT model, safetensors weights and a vocabulary."""
    if model == "minilm":
        return
    if not os.path.isdir(model):
        raise ValueError(f"Checkpoint directory {model!r} does not exist.")
    config = os.path.join(model, "config.json")
    if not os.path.isfile(config):
        raise ValueError(f"{model!r} is not a Hugging Face BERT directory: it has no config.json.")
    try:
        with open(config) as fh:
            values = json.load(fh)
    except json.JSONDecodeError as error:
        raise ValueError(f"{config} is not valid JSON: {error}") from None
    model_type = values.get("model_type", "bert")
    if model_type != "bert" or "hidden_size" not in values or "num_hidden_layers" not in values:
        raise ValueError(
            f"{model!r} is not a BERT checkpoint (config.json says model_type={model_type!r}); compress needs a "
            "BERT encoder (model_type 'bert')."
        )
    for name in ("model.safetensors", "vocab.txt"):
        if not os.path.isfile(os.path.join(model, name)):
            raise ValueError(f"Checkpoint directory {model!r} has no {name}.")


# -- the stages ------------------------------------------------------------------------


def projection_names(encoder) -> list[str]:
    return [layer.name for layer in encoder.layers if re.fullmatch(PROJECTIONS, layer.name)]


def encoder_view(model):
    """The model with only the serving outputs (`sequence_output`, `pooled_output`)."""
    import tf_keras as keras

    outputs = {k: model.output[k] for k in ("sequence_output", "pooled_output")}
    return keras.Model(model.inputs, outputs, name=model.name)


def policy_for(settings, method: str, names, ranks=None):
    import tfreparam as tr

    if settings["policy"] == "kronecker":
        return {PROJECTIONS: tr.Kronecker(param_budget=settings["budget"])}
    if settings["policy"] == "tt":
        return {PROJECTIONS: tr.TensorTrain(param_budget=settings["budget"], num_cores=2)}
    lowrank_method = "svd" if method == "svd" else "whitened"
    if ranks is not None:
        return {re.escape(n): tr.LowRank(rank=int(ranks[n]), method=lowrank_method) for n in names}
    if settings["rank"] is not None:
        return {PROJECTIONS: tr.LowRank(rank=settings["rank"], method=lowrank_method)}
    return {PROJECTIONS: tr.LowRank(param_budget=settings["budget"], method=lowrank_method)}


def save_model(model, path: str) -> None:
    model.save_weights(path)


def rebuild(encoder, settings, method, names, ranks, path):
    """The compressed model of a finished stage: same structure (ranks), stored weights."""
    import tfreparam as tr

    model = tr.reparameterize(encoder, policy_for(settings, "svd" if settings["policy"] == "lowrank" else method,
                                                  names, ranks))
    model.load_weights(path)
    return model


def layer_ranks(model, names) -> dict:
    return {n: int(getattr(model.get_layer(n), "rank", 0) or 0) for n in names}


def factorize(settings, ctx, method):
    """Compress with `method`; returns (model, result dict)."""
    import tfreparam as tr
    from tfreparam import allocation, decompose, fidelity

    encoder, names, grams = ctx["encoder"], ctx["names"], ctx["grams"]
    result = {"method": method}
    ranks = None
    if method == "best":
        sensitivity_batches = ctx["sensitivity"]
        ranks, sensitivity = allocation.allocate_for_model(
            encoder, names, grams, settings["budget"], sensitivity_batches, probe_fraction=settings["budget"])
        result["sensitivity"] = sensitivity
    policy = policy_for(settings, method, names, ranks)
    if method == "best":
        model = tr.reparameterize(encoder, policy, calibration_data=ctx["calibration_ds"], sequential=True)
    else:
        model = tr.reparameterize(encoder, policy, statistics=grams)
    report = tr.report((encoder, model))
    rows = [r for r in report.rows if r.name in grams]
    errors = {r.name: decompose.output_error(
        encoder.get_layer(r.name).kernel.numpy().astype(np.float64),
        model.get_layer(r.name).dense_kernel().numpy(), grams[r.name].gram) for r in rows}
    result.update(fidelity.embedding_fidelity(ctx["reference"], fidelity.mean_pooled(model, ctx["heldout"])))
    result.update(
        output_error=float(np.mean(list(errors.values()))),
        layer_output_errors=errors,
        params_before=sum(r.params_before for r in rows),
        params_after=sum(r.params_after for r in rows),
        total_params_before=int(encoder.count_params()),
        total_params_after=int(model.count_params()),
        ranks=layer_ranks(model, names) if settings["policy"] == "lowrank" else None,
        layers=report.to_dict()["layers"],
        table=report.to_markdown(),
    )
    return model, result


def distil(settings, ctx, student, method):
    """Distil `student` from the original encoder; returns the result dict (fidelity after)."""
    import tf_keras as keras

    from recipes import optim, text_data
    from tfreparam import distill, fidelity

    keras.utils.set_random_seed(settings["seed"])
    steps = settings["distill_steps"]
    data = text_data.training_dataset(ctx["preprocessor"], ctx["parts"]["train"], settings["batch_size"],
                                      seed=settings["seed"])
    distiller = distill.Distiller(
        student, ctx["teacher"], hidden_weight=settings["hidden_weight"],
        attention_weight=settings["attention_weight"], embedding_weight=settings["embedding_weight"])
    schedule = optim.WarmupLinearDecay(settings["learning_rate"], steps, warmup_steps=max(1, steps // 10))
    distiller.compile(optimizer=keras.optimizers.Adam(schedule))
    epochs = min(steps, 6)  # a progress line every ~1/6 of the run
    per_epoch = [steps // epochs + (1 if i < steps % epochs else 0) for i in range(epochs)]
    history = {}
    for epoch, count in enumerate(per_epoch):
        h = distiller.fit(data, initial_epoch=epoch, epochs=epoch + 1, steps_per_epoch=count, verbose=2)
        for k, v in h.history.items():
            history.setdefault(k, []).extend(float(x) for x in v)
    result = {"method": method, "steps": steps, "history": history}
    result.update(fidelity.embedding_fidelity(ctx["reference"], fidelity.mean_pooled(student, ctx["heldout"])))
    return result


def run(settings: dict) -> dict:
    """The whole job; returns the metrics written to metrics.json."""
    import tf_keras as keras

    import bert
    from bert.sentences import as_dataset
    from recipes import report as report_lib, text_data
    from tfreparam import calibration as calibration_lib, fidelity

    start = time.perf_counter()
    report_dir = settings["report_dir"]
    os.makedirs(report_dir, exist_ok=True)
    pipe = pipeline_lib.Pipeline(report_dir, prefix=_LOG_PREFIX, log=log)
    ctx = {}

    def load(stage):
        loaded = bert.load_hf(settings["model"], output_hidden_states=True, output_attentions=True)
        ctx["encoder"] = loaded.model
        ctx["teacher"] = bert.load_hf(settings["model"], output_hidden_states=True, output_attentions=True).model
        ctx["preprocessor"] = bert.Preprocessor.from_pretrained(settings["model"], seq_length=settings["seq_length"])
        return {"config": loaded.config.to_dict()}

    loaded = pipe.run(f"load {settings['model']}", load, cache=False)
    ctx["names"] = names = projection_names(ctx["encoder"])
    if not names:
        raise ValueError(f"{settings['model']} has no encoder projections named like {PROJECTIONS}.")

    def text(stage):
        parts = text_data.sentence_parts(settings["train_files"], settings["eval_files"])
        ctx["parts"] = parts
        return {"sentences": {k: len(v) for k, v in parts.items()}}

    text_info = pipe.run("text", text, cache=False)
    parts = ctx["parts"]
    pre = ctx["preprocessor"]
    ctx["calibration"] = text_data.tokenized(pre, parts["calibration"][:settings["calibration_sentences"]])
    ctx["calibration_ds"] = as_dataset(ctx["calibration"])
    ctx["heldout"] = text_data.tokenized(pre, parts["heldout"][:settings["heldout_sentences"]])
    ctx["sensitivity"] = text_data.tokenized(pre, parts["calibration"][:settings["sensitivity_sentences"]])
    ctx["reference"] = fidelity.mean_pooled(ctx["encoder"], ctx["heldout"])
    data_key = pipeline_lib.fingerprint(settings["model"], settings["train_files"], settings["eval_files"],
                                        settings["calibration_sentences"], settings["heldout_sentences"],
                                        settings["seq_length"], text_info["sentences"])

    def calibrate(stage):
        layers = [ctx["encoder"].get_layer(n) for n in names]
        ctx["grams"] = calibration_lib.input_grams(ctx["encoder"], layers, ctx["calibration_ds"])
        return {"layers": len(layers)}

    factor_settings = {k: settings[k] for k in ("policy", "budget", "rank", "sensitivity_sentences")}
    results, models = {}, {}
    needs_grams = [m for m in settings["methods"]
                   if not pipe.done(f"factorize/{m}", pipeline_lib.fingerprint(f"factorize/{m}", factor_settings,
                                                                                (data_key,)))]
    if needs_grams:
        pipe.run("calibrate", calibrate, cache=False)
    for method in settings["methods"]:
        def stage_fn(stage, method=method):
            model, result = factorize(settings, ctx, method)
            save_model(model, stage.path("model.weights.h5"))
            models[method] = model
            return result

        results[method] = pipe.run(f"factorize/{method}", stage_fn, data_key, settings=factor_settings)
        log(f"[{_LOG_PREFIX}]   {method}: held-out cosine {results[method]['cosine']:.4f}, "
            f"NN agreement {results[method]['nn_agreement']:.3f}, output error {results[method]['output_error']:.4f}")

    def model_of(method):
        if method not in models:
            path = os.path.join(pipe.directory(f"factorize/{method}"), "model.weights.h5")
            models[method] = rebuild(ctx["encoder"], settings, method, names, results[method].get("ranks"), path)
        return models[method]

    distill_settings = {k: settings[k] for k in ("distill_steps", "batch_size", "learning_rate", "hidden_weight",
                                                 "attention_weight", "embedding_weight", "seed")}
    distilled, final = {}, {}
    if settings["distill_steps"] > 0:
        for method in settings["distilled"]:
            def stage_fn(stage, method=method):
                student = model_of(method)
                result = distil(settings, ctx, student, method)
                save_model(student, stage.path("model.weights.h5"))
                return result

            distilled[method] = pipe.run(f"distill/{method}", stage_fn, results[method]["_key"],
                                         settings=distill_settings)
            log(f"[{_LOG_PREFIX}]   {method} distilled: held-out cosine {distilled[method]['cosine']:.4f}, "
                f"NN agreement {distilled[method]['nn_agreement']:.3f}")
            if pipe.skipped and pipe.skipped[-1] == f"distill/{method}":
                models[method] = model_of(method)
                models[method].load_weights(os.path.join(pipe.directory(f"distill/{method}"), "model.weights.h5"))

    best_method = max(settings["methods"], key=lambda m: (distilled.get(m) or results[m])["cosine"])
    final_result = distilled.get(best_method) or results[best_method]
    final_model = model_of(best_method)

    extra, final_key = {}, (distilled.get(best_method) or results[best_method])["_key"]
    if settings["sparsity"] is not None or settings["m_by_n"] is not None:
        prune_settings = {k: settings[k] for k in ("sparsity", "m_by_n", "batch_size", "learning_rate", "seed")}
        prune_settings["steps"] = max(settings["distill_steps"] // 4, 1)

        def prune_fn(stage):
            model, result = prune(settings, ctx, final_model, prune_settings["steps"])
            save_model(model, stage.path("model.weights.h5"))
            ctx["pruned"] = model
            return result

        extra["prune"] = pipe.run("prune", prune_fn, final_key, settings=prune_settings)
        final_key = extra["prune"]["_key"]
        if "pruned" not in ctx:  # finished earlier: same structure as the factorized model, pruned weights
            final_model.load_weights(os.path.join(pipe.directory("prune"), "model.weights.h5"))
        else:
            final_model = ctx["pruned"]
        final_result = extra["prune"]
    if settings["qat"]:
        def qat_fn(stage):
            ctx["qat"], result = quantization_aware(settings, ctx, final_model)
            return result

        # Not cached: a QAT model is rebuilt from the stage before it in seconds, and
        # its fake-quant state does not round-trip through a weights file.
        extra["qat"] = pipe.run("qat", qat_fn, final_key, settings={"steps": settings["qat_steps"]}, cache=False)
        final_key = extra["qat"]["_key"]
        final_model = ctx["qat"]
        final_result = extra["qat"]
    if settings["export"]:
        def export_fn(stage):
            return export(settings, ctx, final_model, report_dir)

        extra["export"] = pipe.run("export", export_fn, final_key, settings={"formats": settings["export"]})

    base = results[best_method]
    metrics = {
        "model": settings["model"],
        "policy": settings["policy"],
        "budget": settings["budget"],
        "seq_length": settings["seq_length"],
        "params_before": base["params_before"],
        "params_after": base["params_after"],
        "total_params_before": base["total_params_before"],
        "total_params_after": base["total_params_after"],
        "best_method": best_method,
        "embedding_cosine_heldout": final_result["cosine"],
        "embedding_cosine_min_heldout": final_result["cosine_min"],
        "nn_agreement_heldout": final_result["nn_agreement"],
        "output_error_svd": results["svd"]["output_error"] if "svd" in results else None,
        "output_error_whitened": results["whitened"]["output_error"] if "whitened" in results else None,
        "tflite_int8_bytes": extra.get("export", {}).get("tflite_int8_bytes"),
        "tflite_fp32_dense_bytes": extra.get("export", {}).get("tflite_fp32_dense_bytes"),
        "int8_embedding_cosine": extra.get("export", {}).get("int8_embedding_cosine"),
        "tflite_int8_mode": extra.get("export", {}).get("tflite_int8_mode"),
        "sentences": text_info["sentences"],
        "methods": {m: _summary(results[m], distilled.get(m)) for m in settings["methods"]},
        "distill_steps": settings["distill_steps"] if distilled else 0,
        # Stages skipped in this run report the seconds they took when they ran.
        "stage_seconds": {**{f"factorize/{m}": r.get("seconds") for m, r in results.items()},
                          **{f"distill/{m}": r.get("seconds") for m, r in distilled.items()},
                          **{k: r.get("seconds") for k, r in extra.items()},
                          **{k: round(v, 1) for k, v in pipe.timings.items()}},
        "stages_skipped": list(pipe.skipped),
        **extra,
    }
    compressed_path = os.path.join(report_dir, "compressed_encoder.keras")
    encoder_view(final_model).save(compressed_path)
    metrics["compressed_model"] = compressed_path
    metrics["seconds_total"] = round(time.perf_counter() - start, 1)
    text_report = report_lib.write(report_dir, metrics, results[best_method]["table"], results)
    print(text_report)
    log(f"[{_LOG_PREFIX}] report written to {os.path.abspath(report_dir)}")
    del keras
    return metrics


def _summary(factorized: dict, distilled: dict | None) -> dict:
    keys = ("cosine", "cosine_min", "nn_agreement")
    summary = {k: factorized[k] for k in keys}
    summary.update(output_error=factorized["output_error"], params_after=factorized["params_after"])
    if distilled:
        summary.update({f"distilled_{k}": distilled[k] for k in keys})
    return summary


def prune(settings, ctx, model, steps):
    """Magnitude (or M:N) pruning of the compressed model while distilling; returns (stripped model, result)."""
    import tf_keras as keras

    from recipes import text_data
    from tfreparam import distill, fidelity, sparsity

    wrapped = sparsity.prune(model, target_sparsity=settings["sparsity"] or 0.0, schedule="constant",
                             m_by_n=settings["m_by_n"], frequency=1, skip_unsupported=True)
    data = text_data.training_dataset(ctx["preprocessor"], ctx["parts"]["train"], settings["batch_size"],
                                      seed=settings["seed"])
    distiller = distill.Distiller(wrapped, ctx["teacher"], hidden_weight=settings["hidden_weight"],
                                  embedding_weight=settings["embedding_weight"])
    distiller.compile(optimizer=keras.optimizers.Adam(settings["learning_rate"] / 2))
    distiller.fit(data, epochs=1, steps_per_epoch=steps, verbose=2, callbacks=[sparsity.UpdatePruningStep()])
    stripped = sparsity.strip(wrapped)
    result = {"sparsity": settings["sparsity"], "m_by_n": settings["m_by_n"], "steps": steps}
    result.update(fidelity.embedding_fidelity(ctx["reference"], fidelity.mean_pooled(stripped, ctx["heldout"])))
    kernels = [w for w in stripped.weights if "kernel" in w.name or w.name.split("/")[-1].split(":")[0] in ("u", "v")]
    total = sum(int(np.prod(w.shape)) for w in kernels)
    result["zero_fraction"] = float(sum(int(np.sum(w.numpy() == 0)) for w in kernels) / max(total, 1))
    return stripped, result


def quantization_aware(settings, ctx, model):
    """QAT of the compressed encoder, trained to match the original's hidden states; returns (model, result)."""
    import tensorflow as tf
    import tf_keras as keras

    from recipes import text_data
    from tfreparam import fidelity, quantization

    pruned = settings["sparsity"] is not None or settings["m_by_n"] is not None
    qat = quantization.quantize_model(encoder_view(model), scheme="pqat" if pruned else "default_8bit",
                                      calibration_data=ctx["calibration"][:4])
    data = text_data.training_dataset(ctx["preprocessor"], ctx["parts"]["train"], settings["batch_size"],
                                      seed=settings["seed"])
    teacher = encoder_view(ctx["teacher"])
    targets = data.map(lambda x: (x, {"sequence_output": teacher(x, training=False)["sequence_output"]}))
    qat.compile(optimizer=keras.optimizers.Adam(settings["learning_rate"] / 4),
                loss={"sequence_output": "mse"})
    qat.fit(targets, epochs=1, steps_per_epoch=settings["qat_steps"], verbose=2)
    result = {"steps": settings["qat_steps"], "scheme": "pqat" if pruned else "default_8bit"}
    result.update(fidelity.embedding_fidelity(ctx["reference"], fidelity.mean_pooled(qat, ctx["heldout"])))
    del tf
    return qat, result


def _padded(batches, seq_length):
    """Batches padded back to `seq_length` (TFLite models have a fixed sequence length)."""
    out = []
    for b in batches:
        pad = seq_length - b["input_mask"].shape[1]
        out.append({k: np.pad(np.asarray(v), ((0, 0), (0, pad))).astype(np.int32) for k, v in b.items()})
    return out


_INT8_LABELS = {"dynamic": "TFLite dynamic-range int8", "full": "TFLite full-integer int8", "int16x8": "TFLite int16x8"}


def export(settings, ctx, model, report_dir):
    """The artifacts of --export in `report_dir`: sizes, batch-1 latencies, int8 fidelity vs the fp32 Keras model."""
    from tfreparam import export as export_lib, fidelity
    from tfreparam.export import runners

    view, seq = encoder_view(model), settings["seq_length"]
    heldout = _padded(ctx["heldout"], seq)
    one_sentence = {k: v[:1] for k, v in heldout[0].items()}
    result = {"artifact_bytes": {}, "latency_ms": {}}

    def measure(name, path):
        size = result["artifact_bytes"][name] = export_lib.artifact_bytes(path)
        # Median of 10 single-sentence calls, the runtime each format is served with.
        result["latency_ms"][name] = runners.runner_for(path).latency(one_sentence, repeats=10, warmup=2)["median_ms"]
        return size

    if "saved_model" in settings["export"]:
        path = os.path.join(report_dir, "saved_model")
        export_lib.saved_model(view, path, preprocessor=ctx["preprocessor"])
        result["saved_model_bytes"] = measure("SavedModel", path)
    if "tflite_int8" in settings["export"]:
        path = os.path.join(report_dir, "model_int8.tflite")
        representative = _padded(ctx["calibration"][:4], seq)
        # --int8=dynamic: int8 weights, activations quantized per batch at run time (faithful on MiniLM);
        # --int8=full: fully-integer (calibrated, or from QAT ranges); int16x8: fully integer, 16-bit activations.
        mode = {"full": "int8", "dynamic": "dynamic", "int16x8": "int16x8"}[settings["int8"]]
        export_lib.tflite(view, path, mode=mode, representative_data=representative, seq_length=seq, check=False)
        result["tflite_int8_mode"] = settings["int8"]
        result["tflite_int8_bytes"] = measure(_INT8_LABELS[settings["int8"]], path)
        dense_path = os.path.join(report_dir, "stages", "export", "dense_fp32.tflite")
        export_lib.tflite(encoder_view(ctx["encoder"]), dense_path, mode="fp32", seq_length=seq, check=False)
        result["tflite_fp32_dense_bytes"] = measure("TFLite fp32, original dense", dense_path)
        os.remove(dense_path)  # only its size and latency are reported
        int8 = []
        for batch in heldout:
            out = export_lib.run_artifact(path, batch)["sequence_output"]
            mask = batch["input_mask"][..., None].astype(np.float64)
            int8.append((out * mask).sum(1) / mask.sum(1))
        keras_embeddings = fidelity.mean_pooled(view, heldout)
        result["int8_embedding_cosine"] = fidelity.embedding_fidelity(keras_embeddings, np.concatenate(int8))["cosine"]
        result["int8_size_ratio"] = result["tflite_int8_bytes"] / result["tflite_fp32_dense_bytes"]
    if "onnx" in settings["export"]:
        path = os.path.join(report_dir, "model.onnx")
        export_lib.onnx(view, path)
        result["onnx_bytes"] = measure("ONNX", path)
    return result


main = cli.main(FLAGS, check_flags, run)
parse_flags = cli.flags_parser(FLAGS)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
