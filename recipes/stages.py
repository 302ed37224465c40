"""The stages of `recipes.compress`, in pipeline order, over one `CompressSettings`.

`CompressRun(settings).run()` goes through

  load            the checkpoint as a flat Keras BERT (hidden states out) and its tokenizer
  text            the protocol (`recipes.protocol`): compression text; evaluation text
  reference       the original's embeddings of the evaluation text, and its probe accuracy
  method          --policy=structured: importance -> latency model -> prune -> refit
                  --policy=lowrank / kronecker / tt: calibrate -> factorize/<method> -> latency model
  distill         ours, from the cached teacher (`recipes.distillation`)
  layer drop      the first K blocks, K matched to our latency, same distillation budget
  prune / qat     optional: --sparsity / --m_by_n, --qat
  export          TFLite fp32 + int8 of the original, ours and the layer drop; MiniLM-L3 fp32 + int8 ONNX,
                  and ours and the original in ONNX Runtime int8 too (same runtime as L3)
  evaluate        every model on the evaluation text (`recipes.embedding_eval`)
  latency         batch-1 latency of every file, side by side (`recipes.latency`)
  report          report.md, metrics.json, pareto.png (`recipes.report`)

Each stage is a method; `recipes.pipeline` skips a stage finished earlier
with the same settings and inputs. Only `text` ever sees held-out text, and
it hands the compression stages a `protocol.CompressionText`, which holds none.
"""

from __future__ import annotations

import os
import re
import time

import numpy as np

from recipes import baselines, compress_settings, conversion_cache, distillation, embedding_eval, exports, latency
from recipes import pipeline as pipeline_lib, protocol, text_data

PROJECTIONS = r"layer_\d+/(attention/(query|key|value|output)|ffn/(intermediate|output))"
LOG_PREFIX = "compress"
CALIBRATION_BATCH = 32
# Re-searches of the pruned structure when its measured int8 speed-up misses the target.
MAX_PRUNE_CORRECTIONS = 2
REFERENCE_OUTPUTS = ("embeddings", "probe", "in_domain_probe", "probe_by_depth", "in_domain_probe_by_depth",
                     "retrieval")


def log(line: str) -> None:
    print(line, flush=True)


def _bar(label: str, total: int, unit: str = "batch"):
    """progress(done, total) drawing a bar of `total` units under a log line."""
    log(f"[{LOG_PREFIX}]   {label}")
    bar = distillation.progress_bar(total, unit=unit)
    return lambda done, _total: bar.update(done)


def _counter(label: str, total: int):
    """progress() advancing a bar of `total` text sets by one."""
    log(f"[{LOG_PREFIX}]   {label}")
    bar = distillation.progress_bar(total, unit="set")
    done = [0]

    def step():
        done[0] += 1
        bar.update(done[0])

    return step


def _rounds_bar(files: int, rounds: int):
    log(f"[{LOG_PREFIX}]   timing {files} files: {rounds} interleaved rounds of batch-1 calls")
    bar = distillation.progress_bar(rounds, unit="round")
    return bar.update


class CompressRun(pipeline_lib.StagedJob):
    """One run of the main job; see the module docstring. `run()` returns the metrics written to metrics.json."""

    def __init__(self, settings, log_fn=log):
        self.s = settings
        self.log = log_fn
        self.dir = settings.report_dir
        os.makedirs(self.dir, exist_ok=True)
        self.pipe = pipeline_lib.Pipeline(self.dir, prefix=LOG_PREFIX, log=log_fn)
        self.results = {}
        self.models = {}
        self._teacher_cache = None
        self._narrowed = None
        # The original's files (and the latency probes cut from it), kept by content: converted once per directory.
        self.conversions = conversion_cache.ConversionCache(
            settings.conversion_cache or os.path.join(self.dir, "conversions"))

    # -- orchestration -----------------------------------------------------------------

    def run(self) -> dict:
        from recipes import report

        start = time.perf_counter()
        self.load()
        self.text()
        self.reference()
        if self.s.policy == "structured":
            self.importance()
            self.latency_model()
            self.prune_structure()
            self.refit()
        else:
            self.factorize()
            if "layer_drop" in self.s.baselines:  # only to match the layer drop's depth to our speed
                self.latency_model()
        self.distill()
        if "layer_drop" in self.s.baselines:
            self.layer_drop()
        # The teacher's cached hidden states (~1.5 GB for MiniLM's demo) serve only the two distillations; freed
        # before export, whose tf2onnx conversions take ~4 GB of their own.
        self._teacher_cache = None
        if self.s.sparsity is not None or self.s.m_by_n is not None:
            self.magnitude_prune()
        if self.s.qat:
            self.quantization_aware()
        self.export()
        self.evaluate()
        self.measure_latency()
        metrics = report.metrics(self)
        metrics["seconds_total"] = round(time.perf_counter() - start, 1)
        text = report.write(self.dir, metrics)
        print(text, flush=True)
        self.log(f"[{LOG_PREFIX}] report written to {os.path.abspath(self.dir)}")
        return metrics

    # -- load, text, reference ---------------------------------------------------------------

    def load(self):
        import bert

        def fn(stage):
            loaded = bert.load_hf(self.s.model, output_hidden_states=True)
            self.encoder, self.config = loaded.model, loaded.config
            self.preprocessor = bert.Preprocessor.from_pretrained(self.s.model, seq_length=self.s.seq_length)
            return {"blocks": self.config.num_layers, "heads": self.config.num_heads,
                    "intermediate": self.config.intermediate_size, "parameters": int(self.encoder.count_params())}

        self._stage("load", fn, settings={"model": self.s.model}, cache=False)
        self.depth = self.config.num_layers
        # --drop_blocks: the original less those blocks is what importance, search and pruning start from.
        self.kept_blocks = [b for b in range(self.depth) if b not in self.s.drop_blocks]
        self.base = bert.drop_blocks(self.encoder, self.kept_blocks) if self.s.drop_blocks else self.encoder
        self.min_heads = compress_settings.min_heads(self.s.min_head_share, self.config.num_heads)
        # ("auto",) when the settings were built directly rather than from flags.
        self.head_widths = (compress_settings.head_widths(self.s.head_widths, self.config.head_size)
                            if self.s.policy == "structured" else ())
        self.vocab_path = os.path.join(bert.minilm_path() if self.s.model == "minilm" else self.s.model, "vocab.txt")

    def text(self):
        def fn(stage):
            self.protocol = protocol.build(self.s, self.vocab_path, log=self.log)
            self.eval_sets = embedding_eval.EvalSets(self.protocol.evaluation, self.preprocessor)
            return {"sentences": self.protocol.counts(), "compression_domains": list(self.protocol.compression.domains),
                    "heldout_domains": list(self.protocol.evaluation.heldout),
                    "probe_sets": list(self.protocol.evaluation.probes),
                    "in_domain_probe_sets": list(self.protocol.evaluation.in_domain_probes),
                    "retrieval_sets": list(self.protocol.evaluation.retrieval)}

        self._stage("text", fn, cache=False)
        c, e = self.protocol.compression, self.protocol.evaluation
        texts = [c.texts("calibration"), c.texts("train"), sorted(e.in_domain.items()), sorted(e.heldout.items()),
                 sorted((k, list(v[0]), list(v[1])) for k, v in e.probes.items()),
                 sorted((k, list(v[0]), list(v[1])) for k, v in e.in_domain_probes.items()),
                 sorted((k, list(v[0]), list(v[1])) for k, v in e.retrieval.items())]
        self.text_key = pipeline_lib.fingerprint(self.s.model, self.s.seq_length, texts)
        self.calibration_key = pipeline_lib.fingerprint(self.s.model, self.s.seq_length, texts[0])
        self.train_key = pipeline_lib.fingerprint(texts[1])

    def calibration_batches(self) -> list[dict]:
        """The compression text's calibration part, tokenized (the only text importance and refit see)."""
        if not hasattr(self, "_calibration"):
            texts = self.protocol.compression.texts("calibration")
            self._calibration = [{k: np.asarray(v) for k, v in b.items()} for b in
                                 text_data.tokenized(self.preprocessor, texts, CALIBRATION_BATCH)]
        return self._calibration

    def representative(self) -> list[dict]:
        """Calibration batches padded to the export length: representative data of full-integer exports."""
        feeds = []
        for b in self.calibration_batches()[:8]:
            pad = self.s.seq_length - b["input_mask"].shape[1]
            feeds.append({k: np.pad(v[:16], ((0, 0), (0, pad))).astype(np.int32) for k, v in b.items()})
        return feeds

    def reference(self):
        def fn(stage):
            sets, folds, l2 = self.eval_sets, self.s.probe_folds, self.s.probe_l2
            bar = _counter(f"the original's embeddings of {sets.count()} text sets", sets.count())
            # Every block's output in one pass: the last is the embedding itself.
            by_depth = sets.embed(embedding_eval.keras_depth_embedder(self.encoder), progress=bar)
            embeddings = {group: {name: depths[-1] for name, depths in arrays.items()}
                          for group, arrays in by_depth.items()}
            embedding_eval.save(stage.path("embeddings.npz"), embeddings)
            # Where an earlier block probes better than the output, a layer drop keeps what a model faithful to
            # the output cannot: the report says so beside the verdict. The last depth is the output's probe.
            probes = embedding_eval.probe_by_depth(by_depth, sets.labels, folds, l2)
            in_domain = embedding_eval.probe_by_depth(by_depth, sets.in_domain_labels, folds, l2,
                                                      group="in_domain_probes")
            return {"probe": {name: a[-1] for name, a in probes.items()},
                    "in_domain_probe": {name: a[-1] for name, a in in_domain.items()},
                    "probe_by_depth": probes, "in_domain_probe_by_depth": in_domain,
                    "retrieval": embedding_eval.retrieval_figures(embeddings).get("retrieval", {})}

        # `outputs` names what the stage writes: a cache from before one of them existed is redone.
        self._stage("reference", fn, self.text_key,
                    settings=dict(self.s.subset("probe_folds", "probe_l2"), outputs=REFERENCE_OUTPUTS))
        self.reference_embeddings = embedding_eval.load(self._path("reference", "embeddings.npz"))

    # -- the structured method ---------------------------------------------------------------

    def importance(self):
        from tfreparam.sparsity import structured

        def fn(stage):
            batches = self.calibration_batches()
            heads, neurons = structured.output_sensitivity(
                self.base, batches, target=self.s.importance, draws=self.s.importance_draws, seed=self.s.seed,
                progress=_bar(f"output sensitivity of every head and FFN neuron ({self.s.importance_draws} draws x "
                              f"{len(batches)} batches)", self.s.importance_draws * len(batches)))
            np.savez(stage.path("scores.npz"), **{f"heads/{b}": v for b, v in heads.items()},
                     **{f"neurons/{b}": v for b, v in neurons.items()})
            return {"sentences": len(self.protocol.compression.calibration)}

        self._stage("importance", fn, self.calibration_key,
                    settings=self.s.subset("importance", "importance_draws", "seed", "drop_blocks"))
        with np.load(self._path("importance", "scores.npz")) as data:
            self.head_scores = {int(k.split("/")[1]): data[k] for k in data.files if k.startswith("heads/")}
            self.neuron_scores = {int(k.split("/")[1]): data[k] for k in data.files if k.startswith("neurons/")}

    def latency_model(self):
        """Times probe structures (and, for factorized models, ours) against the original in int8; fits the model."""
        import bert
        from tfreparam.sparsity import narrowing, structured

        heads, neurons = self.config.num_heads, self.config.intermediate_size

        def fn(stage):
            rng = np.random.default_rng(self.s.seed)
            files = {"original": self.encoder}
            shapes = {"original": (self.depth, self.depth * heads, self.depth * neurons)}
            for probe in latency.probe_structures(self.depth, heads, neurons, narrowed=self.head_widths):
                model = self.encoder
                if "head_widths" in probe:  # timing only: the plain SVD narrows as fast as the whitened one
                    model = narrowing.narrow_heads(model, *probe["head_widths"])
                elif probe["keep_blocks"] < self.depth:
                    model = bert.drop_blocks(model, list(range(probe["keep_blocks"])))
                else:
                    removed_heads = {b: sorted(rng.choice(heads, heads - probe["heads_per_block"], replace=False)
                                               .tolist()) for b in range(self.depth)}
                    removed_neurons = {b: sorted(rng.choice(neurons, neurons - probe["neurons_per_block"],
                                                            replace=False).tolist()) for b in range(self.depth)}
                    model = structured.remove_heads_and_neurons(model, removed_heads, removed_neurons,
                                                                seq_length=self.s.seq_length).model
                files[probe["name"]] = model
                b = probe["keep_blocks"]
                shapes[probe["name"]] = (b, b * probe["heads_per_block"], b * probe["neurons_per_block"],
                                         b * probe["heads_per_block"] * self._width_share(probe.get("head_widths")))
            if self.s.policy != "structured":
                files["ours"] = self.models["compressed"]
            runners = {}
            self.log(f"[{LOG_PREFIX}]   exporting {len(files)} structures to {exports.INT8_LABELS[self.s.int8]}")
            bar = distillation.progress_bar(len(files), unit="file")
            for i, (name, model) in enumerate(files.items()):
                if name == "ours":
                    content = exports.tflite_bytes(model, self.s.int8, self.representative())
                else:  # the original and structures cut from it by seed: the same in every run of a sweep
                    content = self.conversions.tflite(model, self.s.int8, self.representative(),
                                                      label=f"latency probe {name}")
                if name == "original":
                    exports.write(stage.path("original_int8.tflite"), content)
                runners[name] = latency.tflite_runner(content, threads=self.s.latency_threads)
                bar.update(i + 1)
            timing = latency.side_by_side(runners, self._one_sentence(), rounds=self.s.latency_rounds,
                                          base="original", seed=self.s.seed,
                                          progress=_rounds_bar(len(runners), self.s.latency_rounds))
            measured = {n: 1.0 / timing[n]["speedup"] for n in shapes}
            model = latency.fit_latency_model(measured, shapes)
            result = {"model": model.to_dict(), "timing": timing}
            if "ours" in timing:
                result["ours_ratio"] = 1.0 / timing["ours"]["speedup"]
            return result

        depends = [self.calibration_key] + ([self.results["factorize"]["_key"]] if self.s.policy != "structured" else [])
        # Since 2026-12-05 the TFLite files take any length (`exports.tflite_bytes`): a cache from before redoes.
        result = self._stage("latency model", fn, *depends,
                             settings=dict(self.s.subset("model", "int8", "seq_length", "latency_rounds",
                                                         "latency_threads", "seed", "head_widths"), tflite_length="any"))
        self.latency_fit = latency.LatencyModel.from_dict(result["model"])
        if "ours_ratio" in result:
            self.our_ratio = result["ours_ratio"]

    def _one_sentence(self) -> dict:
        """One typical sentence (the in-domain held-out part's median length), padded to the export length."""
        text_set = next(iter(self.eval_sets.in_domain.values()))
        batch = text_set.padded(self.s.seq_length)[len(text_set.batches) // 2]
        return {k: v[:1] for k, v in batch.items()}

    def prune_structure(self):
        """Heads and neurons to remove for the target, checked against a measurement of the pruned model itself.

        The fitted latency model is linear in whole-model counts; a structure
        with very uneven blocks (one head here, eleven there) runs slower
        than it predicts. So the chosen structure is exported and timed
        against the original's int8 file; while it misses the target, the
        time budget shrinks by the miss and the search runs again.
        """
        from tfreparam.sparsity import structured

        fit = self.latency_fit
        fixed = fit.constant + fit.per_block * len(self.kept_blocks)
        head_cost = fit.head_cost(self._width_share(self.head_widths))
        aimed = self.s.target_speedup + self.s.speedup_margin
        goal = 1.0 / aimed
        # Accept a structure measured at least halfway into the margin: the final side-by-side timing has noise too.
        accept = self.s.target_speedup + self.s.speedup_margin / 2

        def select(budget):
            try:
                return structured.search_structure(self.head_scores, self.neuron_scores, max(head_cost, 1e-9),
                                                   max(fit.per_neuron, 1e-9), budget, min_heads=self.min_heads)
            except ValueError as error:
                raise ValueError(f"--target_speedup={self.s.target_speedup}: {error} (this machine's fitted latency "
                                 f"model leaves {fixed:.2f} of the original's int8 time to blocks, embeddings and "
                                 "LayerNorms, which pruning does not remove)") from None

        def fn(stage):
            def measure(selection):
                return self._measured_ratio(selection), fixed + selection.cost

            def report(check):
                self.log(f"[{LOG_PREFIX}]   structure {check['attempt']}: predicted {check['predicted_speedup']:.2f}x, "
                         f"measured {check['measured_speedup']:.2f}x (accepted from {accept:.2f}x)")

            selection, checks = latency.search_until_measured(select, measure, fixed, goal, 1.0 / accept,
                                                              MAX_PRUNE_CORRECTIONS, on_check=report)
            last = checks[-1]
            return {"removed_heads": selection.removed_heads, "removed_neurons": selection.removed_neurons,
                    "heads_per_block": selection.heads_per_block, "neurons_per_block": selection.neurons_per_block,
                    "retained_score": selection.retained_score, "min_heads": self.min_heads,
                    "head_widths": list(self.head_widths) or None, "head_size": self.config.head_size,
                    "dropped_blocks": list(self.s.drop_blocks),
                    "predicted_ratio": last["predicted_ratio"],
                    "predicted_speedup": last["predicted_speedup"], "measured_ratio": last["measured_ratio"],
                    "measured_speedup": last["measured_speedup"], "aimed_speedup": aimed, "checks": checks}

        result = self._stage("prune", fn, self.results["importance"]["_key"], self.results["latency model"]["_key"],
                             settings=self.s.subset("target_speedup", "speedup_margin", "min_head_share",
                                                    "latency_rounds", "latency_threads", "head_widths"))
        self.models["compressed"] = self._pruned(
            {int(k): v for k, v in result["removed_heads"].items()},
            {int(k): v for k, v in result["removed_neurons"].items()})
        # Matching the layer-drop baseline to ours: the measured time of our structure, not the prediction.
        self.our_ratio = result["measured_ratio"]
        self.compressed_key = result["_key"]

    def _width_share(self, widths) -> float:
        """A head narrowed to `widths` (query/key, value) as a share of a whole head's width; 1 for ()."""
        return sum(widths) / (2 * self.config.head_size) if widths else 1.0

    def _narrowed_base(self):
        """The base with every head narrowed to --head_widths (whitened on the calibration text), built once."""
        from tfreparam.sparsity import narrowing

        if not self.head_widths:
            return self.base
        if self._narrowed is None:
            self.log(f"[{LOG_PREFIX}]   narrowing every head to {self.head_widths[0]}/{self.head_widths[1]} of "
                     f"{self.config.head_size} (whitened per-head SVD)")
            moments = narrowing.attention_input_moments(self.base, self.calibration_batches())
            self._narrowed = narrowing.narrow_heads(self.base, *self.head_widths, moments=moments)
        return self._narrowed

    def _pruned(self, removed_heads: dict, removed_neurons: dict):
        from tfreparam.sparsity import structured

        return structured.remove_heads_and_neurons(self._narrowed_base(), removed_heads, removed_neurons,
                                                   seq_length=self.s.seq_length).model

    def _measured_ratio(self, selection) -> float:
        """t(pruned) / t(original) in int8, side by side (the original's file from the latency model stage)."""
        model = self._pruned(selection.removed_heads, selection.removed_neurons)
        content = exports.tflite_bytes(model, self.s.int8, self.representative())
        runners = {"original": latency.tflite_runner(self._path("latency model", "original_int8.tflite"),
                                                     threads=self.s.latency_threads),
                   "pruned": latency.tflite_runner(content, threads=self.s.latency_threads)}
        rounds = max(self.s.latency_rounds // 2, 20)
        timing = latency.side_by_side(runners, self._one_sentence(), rounds=rounds, base="original", seed=self.s.seed,
                                      progress=_rounds_bar(2, rounds))
        return 1.0 / timing["pruned"]["speedup"]

    def refit(self):
        from tfreparam.sparsity import reconstruct

        if not self.s.refit:
            return
        model = self.models["compressed"]

        def fn(stage):
            branches = 2 * self.depth
            outcome = reconstruct.refit_output_projections(
                model, self.encoder, self.calibration_batches(), ridge=self.s.refit_ridge,
                progress=_bar(f"least-squares refit of {branches} output projections", branches, "projection"))
            model.save_weights(stage.path("model.weights.h5"))
            return {"errors_before": outcome.errors_before, "errors_after": outcome.errors_after,
                    "tokens": outcome.tokens}

        result = self._stage("refit", fn, self.compressed_key, self.calibration_key,
                             settings=self.s.subset("refit_ridge"))
        if self._skipped("refit"):
            model.load_weights(self._path("refit", "model.weights.h5"))
        self.compressed_key = result["_key"]

    # -- the factorized methods (--policy=lowrank / kronecker / tt) ------------------------------

    def _projection_names(self) -> list[str]:
        return [layer.name for layer in self.encoder.layers if re.fullmatch(PROJECTIONS, layer.name)]

    def _policy(self, method: str, ranks=None):
        import tfreparam as tr

        if self.s.policy == "kronecker":
            return {PROJECTIONS: tr.Kronecker(param_budget=self.s.budget)}
        if self.s.policy == "tt":
            return {PROJECTIONS: tr.TensorTrain(param_budget=self.s.budget, num_cores=2)}
        kind = "svd" if method == "svd" else "whitened"
        if ranks is not None:
            return {re.escape(n): tr.LowRank(rank=int(r), method=kind) for n, r in ranks.items()}
        if self.s.ranks is not None:
            return {PROJECTIONS: tr.LowRank(rank=self.s.ranks, method=kind)}
        return {PROJECTIONS: tr.LowRank(param_budget=self.s.budget, method=kind)}

    def factorize(self):
        """Factorizes with each of --methods (low rank) or the Kronecker / TT family; keeps the best in-domain."""
        import tfreparam as tr
        from bert.sentences import as_dataset
        from tfreparam import allocation, calibration

        names = self._projection_names()
        methods = list(self.s.methods) if self.s.policy == "lowrank" else [self.s.policy]
        settings = self.s.subset("policy", "budget", "ranks")
        grams = {}

        def statistics():
            if not grams:
                layers = [self.encoder.get_layer(n) for n in names]
                self.log(f"[{LOG_PREFIX}]   input Gram matrices of {len(layers)} projections")
                grams.update(calibration.input_grams(self.encoder, layers, as_dataset(self.calibration_batches())))
            return grams

        results, models = {}, {}
        for method in methods:
            def fn(stage, method=method):
                ranks = None
                if method == "best":
                    ranks, _ = allocation.allocate_for_model(
                        self.encoder, names, statistics(), self.s.budget, self.calibration_batches()[:2],
                        probe_fraction=self.s.budget)
                if method == "best":
                    model = tr.reparameterize(self.encoder, self._policy(method, ranks),
                                              calibration_data=as_dataset(self.calibration_batches()), sequential=True)
                elif self.s.policy == "lowrank" and method == "svd":
                    model = tr.reparameterize(self.encoder, self._policy(method))
                else:
                    model = tr.reparameterize(self.encoder, self._policy(method), statistics=statistics())
                model.save_weights(stage.path("model.weights.h5"))
                models[method] = model
                rows = [r for r in tr.report((self.encoder, model)).rows if r.name in names]
                in_domain = self._in_domain_cosine(model)
                return {"method": method, "in_domain_cosine": in_domain,
                        "params_before": sum(r.params_before for r in rows),
                        "params_after": sum(r.params_after for r in rows),
                        "ranks": {n: int(getattr(model.get_layer(n), "rank", 0) or 0) for n in names}}

            results[method] = self._stage(f"factorize/{method}", fn, self.calibration_key, settings=settings)
        best = max(methods, key=lambda m: results[m]["in_domain_cosine"])
        model = models.get(best)
        if model is None:  # finished in an earlier run: the same structure, the stored weights
            policy = self._policy("svd", results[best]["ranks"]) if self.s.policy == "lowrank" else self._policy(best)
            model = tr.reparameterize(self.encoder, policy)
            model.load_weights(self._path(f"factorize/{best}", "model.weights.h5"))
        self.models["compressed"] = model
        self.results["factorize"] = dict(results[best], methods=results, best=best)
        self.compressed_key = results[best]["_key"]

    def _in_domain_cosine(self, model) -> float:
        embed = embedding_eval.keras_embedder(model)
        figures = [float(np.mean(np.sum(_unit(embed(s)) * _unit(self.reference_embeddings["in_domain"][d]), 1)))
                   for d, s in self.eval_sets.in_domain.items()]
        return float(np.mean(figures))

    # -- distillation: ours and the layer-drop baseline ---------------------------------------------

    def teacher_cache(self):
        if self._teacher_cache is None:
            self.log(f"[{LOG_PREFIX}]   teacher outputs for {self.s.distill_steps} batches of {self.s.batch_size}")
            self._teacher_cache = distillation.TeacherCache.build(
                self.encoder, self.preprocessor, self.protocol.compression.texts("train"), self.s.batch_size,
                self.s.distill_steps, seed=self.s.seed)
        return self._teacher_cache

    def _distil(self, name: str, model, layer_map, depends):
        settings = dict(self.s.subset("distill_steps", "batch_size", "learning_rate", "hidden_weight",
                                      "embedding_weight", "seed"), **distillation.STUDENT_CHOICES)

        def fn(stage):
            result = distillation.distil(
                model, self.teacher_cache(), layer_map, self.s.distill_steps, self.s.learning_rate,
                self.s.hidden_weight, self.s.embedding_weight, seed=self.s.seed, **distillation.STUDENT_CHOICES,
                log_dir=os.path.join(self.dir, "tensorboard", name.replace(" ", "_")))
            model.save_weights(stage.path("model.weights.h5"))
            return result

        result = self._stage(name, fn, depends, self.train_key, settings=settings)
        if self._skipped(name):
            model.load_weights(self._path(name, "model.weights.h5"))
        return result

    def distill(self):
        if self.s.distill_steps == 0:
            return
        # Block i of ours learns the original block it came from (hidden state 0 is the embeddings' output).
        layer_map = {i + 1: b + 1 for i, b in enumerate(self.kept_blocks)}
        result = self._distil("distill", self.models["compressed"], layer_map, self.compressed_key)
        self.compressed_key = result["_key"]

    def layer_drop(self):
        import bert

        if self.s.layer_drop_keep:
            keep, predicted = list(self.s.layer_drop_keep), {}
        else:
            keep, predicted = baselines.choose_layer_drop(self.latency_fit, self.depth, self.config.num_heads,
                                                          self.config.intermediate_size, self.our_ratio)
        model = bert.drop_blocks(self.encoder, keep)
        self.models["layer_drop"] = model
        self.layer_drop_info = {"keep": keep, "predicted_ratio": {str(k): v for k, v in predicted.items()},
                                "our_ratio": self.our_ratio}
        if self.s.distill_steps:
            layer_map = distillation.uniform_layer_map(len(keep), self.depth)
            result = self._distil("layer drop", model, layer_map, pipeline_lib.fingerprint(keep, self.s.model))
            self.layer_drop_info["distillation"] = {k: result[k] for k in ("steps", "layer_map", "seconds")}
            self.layer_drop_key = result["_key"]
        else:
            self.layer_drop_key = pipeline_lib.fingerprint(keep, self.s.model)

    # -- optional: magnitude pruning, quantization-aware training -------------------------------------

    def magnitude_prune(self):
        import tf_keras as keras

        from tfreparam import distill, sparsity

        model = self.models["compressed"]
        steps = max(self.s.distill_steps // 4, 1)

        def fn(stage):
            wrapped = sparsity.prune(model, target_sparsity=self.s.sparsity or 0.0, schedule="constant",
                                     m_by_n=self.s.m_by_n, frequency=1, skip_unsupported=True)
            data = text_data.training_dataset(self.preprocessor, self.protocol.compression.texts("train"),
                                              self.s.batch_size, seed=self.s.seed)
            distiller = distill.Distiller(wrapped, self.encoder, hidden_weight=self.s.hidden_weight,
                                          embedding_weight=self.s.embedding_weight)
            distiller.compile(optimizer=keras.optimizers.Adam(self.s.learning_rate / 2))
            distiller.fit(data, epochs=1, steps_per_epoch=steps, verbose=0,
                          callbacks=[sparsity.UpdatePruningStep(), _progress_callback(steps, ("hidden_loss",
                                                                                               "embedding_loss"))])
            stripped = sparsity.strip(wrapped)
            stripped.save_weights(stage.path("model.weights.h5"))
            self.models["compressed"] = stripped
            kernels = [w for w in stripped.weights
                       if "kernel" in w.name or w.name.split("/")[-1].split(":")[0] in ("u", "v")]
            total = sum(int(np.prod(w.shape)) for w in kernels)
            zeros = sum(int(np.sum(w.numpy() == 0)) for w in kernels)
            return {"sparsity": self.s.sparsity, "m_by_n": self.s.m_by_n, "steps": steps,
                    "zero_fraction": zeros / max(total, 1)}

        result = self._stage("magnitude prune", fn, self.compressed_key,
                             settings=self.s.subset("sparsity", "m_by_n", "batch_size", "learning_rate", "seed"))
        if self._skipped("magnitude prune"):
            model.load_weights(self._path("magnitude prune", "model.weights.h5"))
        self.compressed_key = result["_key"]

    def quantization_aware(self):
        import tf_keras as keras

        from tfreparam import quantization, tracing

        model = self.models["compressed"]

        def fn(stage):
            pruned = self.s.sparsity is not None or self.s.m_by_n is not None
            qat = quantization.quantize_model(exports.encoder_view(model), scheme="pqat" if pruned else "default_8bit",
                                              calibration_data=self.calibration_batches()[:4])
            data = text_data.training_dataset(self.preprocessor, self.protocol.compression.texts("train"),
                                              self.s.batch_size, seed=self.s.seed)
            teacher = exports.encoder_view(self.encoder)
            targets = data.map(lambda x: (x, {"sequence_output": teacher(x, training=False)["sequence_output"]}))
            qat.compile(optimizer=keras.optimizers.Adam(self.s.learning_rate / 4), loss={"sequence_output": "mse"})
            tracing.build_for_fit(qat)  # fit's step traced once, not twice
            qat.fit(targets, epochs=1, steps_per_epoch=self.s.qat_steps, verbose=0,
                    callbacks=[_progress_callback(self.s.qat_steps, ("loss",))])
            self.models["qat"] = qat
            return {"steps": self.s.qat_steps, "scheme": "pqat" if pruned else "default_8bit"}

        # Not cached: a QAT model is rebuilt in seconds and its fake-quant state does not round-trip a weights file.
        result = self._stage("qat", fn, self.compressed_key, settings=self.s.subset("qat_steps"), cache=False)
        self.qat_key = result["_key"]

    # -- export, evaluate, latency ---------------------------------------------------------------------

    def export(self):
        """TFLite fp32 + int8 of the original, ours and the layer drop; ONNX files (L3's fp32; ONNX Runtime int8 of
        L3, ours and the original); compressed_encoder.keras."""
        files = {"compressed_fp32": os.path.join(self.dir, "model_fp32.tflite"),
                 "compressed_int8": os.path.join(self.dir, "model_int8.tflite"),
                 "original_fp32": self._path("export", "original_fp32.tflite"),
                 "original_int8": self._path("export", "original_int8.tflite")}
        if "layer_drop" in self.models:
            files.update(layer_drop_fp32=self._path("export", "layer_drop_fp32.tflite"),
                         layer_drop_int8=self._path("export", "layer_drop_int8.tflite"))
        if "minilm_l3" in self.s.baselines:
            files.update(minilm_l3_fp32=exports.l3_path(), minilm_l3_int8=self._path("export", "minilm_l3_int8.onnx"))
            if not self.s.qat:  # ONNX has no form for QAT's fake-quant layers
                # Ours and the original in L3's runtime and quantization too: a runtime's own speed is not ours.
                files.update(original_int8_onnxruntime=self._path("export", "original_int8.onnx"),
                             compressed_int8_onnxruntime=self._path("export", "compressed_int8.onnx"))
        final = self.models.get("qat", self.models["compressed"])

        def fn(stage):
            hits = len(self.conversions.hits)
            sources = {"compressed_fp32": (self.models["compressed"], None), "compressed_int8": (final, self.s.int8)}
            if "layer_drop" in self.models:
                sources.update(layer_drop_fp32=(self.models["layer_drop"], None),
                               layer_drop_int8=(self.models["layer_drop"], self.s.int8))
            self.log(f"[{LOG_PREFIX}]   converting {len(sources) + 2} TFLite files")
            bar = distillation.progress_bar(len(sources) + 2, unit="file")
            for i, (name, (model, mode)) in enumerate(sources.items()):
                exports.write(files[name], exports.tflite_bytes(model, mode, self.representative()))
                bar.update(i + 1)
            for i, (name, mode) in enumerate((("original_fp32", None), ("original_int8", self.s.int8))):
                exports.write(files[name], self.conversions.tflite(self.encoder, mode, self.representative(),
                                                                   label=name))
                bar.update(len(sources) + i + 1)
            l3_weights = None
            if "minilm_l3_int8" in files:
                l3_weights = exports.onnx_int8(files["minilm_l3_fp32"], files["minilm_l3_int8"])
            onnx_files = [(n, m) for n, m in (("original_int8_onnxruntime", self.encoder),
                                              ("compressed_int8_onnxruntime", self.models["compressed"])) if n in files]
            if onnx_files:
                self.log(f"[{LOG_PREFIX}]   converting {len(onnx_files)} ONNX files (tf2onnx, ONNX Runtime int8)")
                bar = distillation.progress_bar(len(onnx_files), unit="file")
                for i, (name, model) in enumerate(onnx_files):
                    if model is self.encoder:
                        self.conversions.onnx_int8(model, files[name], label=name)
                    else:
                        exports.keras_onnx_int8(model, files[name])
                    bar.update(i + 1)
            keras_path = os.path.join(self.dir, "compressed_encoder.keras")
            exports.encoder_view(final).save(keras_path)
            extra = self._extra_exports(self.models["compressed"])
            return {"files": files, "bytes": {n: _size(p) for n, p in files.items()}, "keras": keras_path,
                    "extra": extra, "l3_int8_weights": l3_weights, "reused": self.conversions.hits[hits:]}

        depends = [self.compressed_key, getattr(self, "layer_drop_key", None), getattr(self, "qat_key", None),
                   self.results.get("latency model", {}).get("_key")]
        # The names of the files it writes are part of its settings: a run from before a file was added redoes it.
        settings = dict(self.s.subset("int8", "seq_length", "export", "baselines"), files=sorted(files),
                        tflite_length="any")
        result = self._stage("export", fn, *depends, settings=settings, cache=not self.s.qat)
        self.files = result["files"]

    def _extra_exports(self, model) -> dict:
        """--export: SavedModel / ONNX of the float model (ONNX has no form for QAT's fake-quant layers)."""
        from tfreparam import export as export_lib

        out = {}
        if "saved_model" in self.s.export:
            path = os.path.join(self.dir, "saved_model")
            export_lib.saved_model(exports.encoder_view(model), path, preprocessor=self.preprocessor)
            out["saved_model"] = {"path": path, "bytes": export_lib.artifact_bytes(path)}
        if "onnx" in self.s.export:
            path = os.path.join(self.dir, "model.onnx")
            export_lib.onnx(exports.encoder_view(model), path)
            out["onnx"] = {"path": path, "bytes": export_lib.artifact_bytes(path)}
        return out

    def evaluate(self):
        """Every model's figures on the evaluation text, against the original's embeddings."""
        import bert

        s, seq = self.s, self.s.seq_length
        every, tasks, pareto = embedding_eval.EVERY_GROUP, embedding_eval.TASK_GROUPS, embedding_eval.PARETO_GROUPS
        artifact = lambda name: embedding_eval.artifact_embedder(self.files[name])  # noqa: E731
        candidates = {  # name: (embedder factory, the groups of text sets it embeds)
            "original_int8": (lambda: artifact("original_int8"), pareto),
            "compressed": (lambda: embedding_eval.keras_embedder(self.models["compressed"]), pareto),
            "compressed_int8": (lambda: artifact("compressed_int8"), every),
        }
        if "layer_drop" in self.models:
            candidates["layer_drop"] = (lambda: embedding_eval.keras_embedder(self.models["layer_drop"]), pareto)
            candidates["layer_drop_int8"] = (lambda: artifact("layer_drop_int8"), every)
        if "minilm_l3" in s.baselines:  # another embedding space: its cosine to the original means nothing
            for name, file in (("minilm_l3", "minilm_l3_fp32"), ("minilm_l3_int8", "minilm_l3_int8")):
                candidates[name] = (lambda file=file: embedding_eval.l3_embedder(self.files[file]), tasks)
        # The ONNX Runtime files are here for latency in one runtime with L3; their cosine shows that runtime's own
        # int8 loss. Their probe stayed within 0.01 of the TFLite int8 files' and cost ~110 s of a demo (ONNX
        # Runtime's int8 runs batches at half TFLite's speed on AVX2), so they embed the fidelity sets only.
        for name in ("original_int8_onnxruntime", "compressed_int8_onnxruntime"):
            if name in self.files:
                candidates[name] = (lambda name=name: artifact(name), embedding_eval.FIDELITY_GROUPS)

        def fn(stage):
            results = {}
            # L3 has its own (the same uncased) vocabulary: tokenize for it with MiniLM's tokenizer.
            l3_sets = self.eval_sets if s.model == "minilm" else embedding_eval.EvalSets(
                self.protocol.evaluation, bert.Preprocessor.from_pretrained("minilm", seq_length=seq))
            total = sum((l3_sets if n.startswith("minilm_l3") else self.eval_sets).count(groups)
                        for n, (_, groups) in candidates.items())
            bar = _counter(f"embedding the evaluation text with {len(candidates)} models", total)
            for name, (make, groups) in candidates.items():
                sets = l3_sets if name.startswith("minilm_l3") else self.eval_sets
                embeddings = sets.embed(make(), groups, progress=bar)
                embedding_eval.save(stage.path(f"{name}.npz"), embeddings)
                results[name] = embedding_eval.quality(self.reference_embeddings, embeddings, sets.labels,
                                                       s.probe_folds, s.probe_l2,
                                                       in_domain_labels=sets.in_domain_labels)
                self.log(f"[{LOG_PREFIX}]   {name}: " + _summary(results[name]))
            # The int8 file of ours against ours in Keras (not against the original): the export's own loss.
            keras_ours = embedding_eval.load(stage.path("compressed.npz"))
            int8_ours = embedding_eval.load(stage.path("compressed_int8.npz"))
            cosines = [np.sum(_unit(keras_ours[g][d]) * _unit(int8_ours[g][d]), 1)
                       for g in ("in_domain", "heldout") for d in keras_ours[g]]
            results["int8_cosine_to_keras"] = float(np.mean(np.concatenate(cosines)))
            results["int8_cosine_to_keras_min"] = float(np.min(np.concatenate(cosines)))
            return results

        depends = [self.results["export"]["_key"], self.text_key, self.results["reference"]["_key"]]
        # ONNX and TFLite files run each batch at its own length since 2026-12-05 (were padded to seq_length); the
        # export stage's key changes with its files, so older caches redo.
        # Since 2026-12-05 (evening) the fp32 models and the original's int8 embed PARETO_GROUPS only.
        settings = dict(s.subset("probe_folds", "probe_l2"), onnx_batches="trimmed", onnx_probe=False,
                        fp32_groups="pareto")
        self._stage("evaluate", fn, *depends, settings=settings, cache=not s.qat)

    def measure_latency(self):
        def fn(stage):
            runners = {}
            for name, path in self.files.items():
                if path.endswith(".onnx"):
                    runners[name] = latency.onnx_runner(path, threads=self.s.latency_threads)
                else:
                    runners[name] = latency.tflite_runner(path, threads=self.s.latency_threads)
            return {"timing": latency.side_by_side(runners, self._one_sentence(), rounds=self.s.latency_rounds,
                                                   base="original_int8", seed=self.s.seed,
                                                   progress=_rounds_bar(len(runners), self.s.latency_rounds))}

        self._stage("latency", fn, self.results["export"]["_key"],
                    settings=self.s.subset("latency_rounds", "latency_threads"), cache=not self.s.qat)


def _progress_callback(steps: int, names):
    """A Keras callback drawing our progress bar with only the named (non-zero) losses."""
    import tf_keras as keras

    bar = distillation.progress_bar(steps)
    return keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: bar.update(
        batch + 1, values=[(n.replace("_loss", ""), float(logs[n])) for n in names if n in (logs or {})]))


def _unit(a):
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def _size(path: str) -> int:
    from tfreparam.export import artifact_bytes

    return int(artifact_bytes(path))


def _summary(q: dict) -> str:
    parts = []
    if "heldout_mean" in q:
        parts.append(f"held-out-domain cosine {q['heldout_mean']['cosine']:.4f}")
        parts.append(f"in-domain cosine {q['in_domain_mean']['cosine']:.4f}")
    if "probe_mean" in q:
        parts.append(f"probe {q['probe_mean']:.3f}")
    return ", ".join(parts) or "no figures"
