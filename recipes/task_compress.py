r"""The task path of `recipes.compress`: a fine-tuned classifier compressed for its own task, judged by its metric.

    python -m recipes.compress --task_model=runs/finetune --train_files=train.csv --eval_files=eval.csv \
        --text_fields=text --label_field=label --target_speedup=2 --report_dir=reports/task

--task_model is a `recipes.finetune --output_dir` or a Hugging Face
BertForSequenceClassification directory (`recipes.task_model.load`).
--target_speedup is the wanted batch-1 fp32 speed-up of the student over the
teacher at the teacher's sequence length, resolved against latency measured on
this machine.

Stages (`recipes.pipeline`: a finished stage is skipped when the same command
runs again; one timing line each, progress bars for the long ones):

  check          read and validate the files and the teacher (every bad-input error, before any long work)
  tokenize       the texts with the teacher's preprocessor
  soft targets   the teacher's logits on the training and eval examples, once; teacher fp32 accuracy
  latency model  the teacher and two probe structures timed side by side in fp32 (`recipes.task_student`)
  prune          heads and FFN neurons ranked by task importance, removed to the structure the target needs
  distil         soft targets at --temperature mixed with the hard labels (--alpha), --task_epochs epochs
                 over length-grouped batches (plus, with --task_hidden_weight, hidden-state MSE); TensorBoard in
                 <report_dir>/tensorboard
  qat            with --qat: quantization-aware training (--qat_steps) for the fully-integer int8 file
  export         student_fp32.tflite, student_int8.tflite (token ids -> probabilities), saved_model/ (token
                 ids and raw strings -> probabilities), and the teacher's files for the comparison
  evaluate       accuracy and macro-F1 of the int8 files on the eval file, one example per call
  latency        batch-1 latency of the eight files (fp32 / int8 x teacher / student x two lengths), side by side

Writes report.md, metrics.json and accuracy_vs_latency.png to --report_dir.
Task-aware factorization (Fisher-weighted / whitened low rank) is not a stage:
see docs/task.md for why.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
from absl import app

from recipes import conversion_cache, pipeline as pipeline_lib

LOG_PREFIX = "task"
LATENCY_LENGTHS = (128, 64)
IMPORTANCE_EXAMPLES = 1024
PROBE_ROUNDS = 40
ROLES = ("teacher_fp32", "teacher_int8", "student_fp32", "student_int8")


def log(line: str) -> None:
    print(line, flush=True)


def run(settings) -> dict:
    """The task path for `settings` (a `recipes.compress_settings.CompressSettings`); returns metrics.json's dict."""
    return TaskCompression(settings).run()


def settings_errors(s) -> list[str]:
    """Problems of the task-path settings alone (no file is read)."""
    errors = []
    if not s.train_files:
        errors.append("--task_model needs --train_files: labelled CSV / TSV / JSONL files to distil on.")
    if not s.eval_files:
        errors.append("--task_model needs --eval_files: labelled files to measure the task metric on.")
    if s.task_epochs < 1:
        errors.append(f"--task_epochs must be >= 1, got {s.task_epochs}.")
    if s.task_hidden_weight < 0:
        errors.append(f"--task_hidden_weight must be >= 0, got {s.task_hidden_weight}.")
    return errors


class TaskCompression(pipeline_lib.StagedJob):
    """One run of the task path; see the module docstring."""

    def __init__(self, settings, log_fn=log):
        self.s = settings
        self.log = log_fn
        self.dir = settings.report_dir
        self.results: dict = {}
        self.models: dict = {}
        self.epochs = int(settings.task_epochs)

    # -- orchestration ------------------------------------------------------------------------------

    def run(self) -> dict:
        from recipes import task_report

        start, cpu = time.perf_counter(), time.process_time()
        load_start = os.getloadavg()
        self.check()
        os.makedirs(self.dir, exist_ok=True)
        self.pipe = pipeline_lib.Pipeline(self.dir, prefix=LOG_PREFIX, log=self.log)
        # The teacher's files, kept by content: a sweep's runs (and re-runs) convert them once.
        self.conversions = conversion_cache.ConversionCache(
            self.s.conversion_cache or os.path.join(self.dir, "conversions"))
        self.pipe.timings["check"] = self.check_seconds
        self.tokenize()
        self.soft_targets()
        self.latency_model()
        self.prune()
        self.distil()
        if self.s.qat:
            self.quantization_aware()
        self.export()
        self.evaluate()
        self.measure_latency()
        metrics = task_report.metrics(self)
        metrics.update(seconds_total=round(time.perf_counter() - start, 1),
                       process_cpu_seconds=round(time.process_time() - cpu, 1),
                       load_average={"start": [round(v, 2) for v in load_start],
                                     "end": [round(v, 2) for v in os.getloadavg()]})
        text = task_report.write(self.dir, metrics)
        print(text, flush=True)
        self.log(f"[{LOG_PREFIX}] report written to {os.path.abspath(self.dir)}")
        return metrics

    # -- check: every bad input, before any long work ---------------------------------------------------

    def check(self) -> None:
        """Reads the files and the teacher; raises app.UsageError (one line) for anything wrong."""
        from recipes import task_data, task_model

        start = time.perf_counter()
        errors = settings_errors(self.s)
        if errors:
            raise app.UsageError(errors[0])
        self.log(f"[{LOG_PREFIX}] check: reading the labelled files and the teacher {self.s.task_model}")
        try:
            # The files first (cheap), then the teacher: a broken CSV is reported without loading a model.
            task_data.read_task_files(self.s.train_files, self.s.eval_files, self.s.text_fields, self.s.label_field)
            teacher = task_model.load(self.s.task_model)
            data = task_data.load(self.s.train_files, self.s.eval_files, self.s.text_fields, self.s.label_field,
                                  teacher.label_names, teacher.text_fields)
        except ValueError as error:
            raise app.UsageError(str(error)) from None
        if len(data.train_texts) < self.s.batch_size:
            raise app.UsageError(f"{len(data.train_texts)} training examples cannot fill one batch of "
                                 f"{self.s.batch_size}; give more examples or a smaller --batch_size.")
        self.teacher, self.data = teacher, data
        positions = _max_positions(teacher.model)
        self.export_length = int(teacher.seq_length)
        self.lengths = [n for n in LATENCY_LENGTHS if n <= positions] or [self.export_length]
        self.data_key = pipeline_lib.fingerprint(
            task_data.files_fingerprint(data.files["train"]), task_data.files_fingerprint(data.files["eval"]),
            list(self.s.text_fields), self.s.label_field)
        self.teacher_key = pipeline_lib.fingerprint(_directory_stamp(self.s.task_model))
        self.check_seconds = time.perf_counter() - start
        summary = data.summary()
        self.log(f"[{LOG_PREFIX}] check: {summary['train_examples']} training and {summary['eval_examples']} eval "
                 f"examples, {summary['classes']} classes (labels matched by {data.mapping}); teacher "
                 f"{teacher.source} classifier, seq_length {self.export_length} ({self.check_seconds:.1f}s)")

    # -- stages ---------------------------------------------------------------------------------------

    def tokenize(self):
        from recipes import task_model

        def fn(stage):
            self.log(f"[{LOG_PREFIX}]   tokenizing {len(self.data.train_texts) + len(self.data.eval_texts)} texts")
            train = task_model.encode(self.teacher.preprocessor, self.data.train_texts)
            evaluation = task_model.encode(self.teacher.preprocessor, self.data.eval_texts)
            np.savez(stage.path("features.npz"), **{f"train/{k}": v for k, v in train.items()},
                     **{f"eval/{k}": v for k, v in evaluation.items()})
            lengths = train["input_mask"].sum(1)
            return {"train_tokens_mean": float(lengths.mean()), "train_tokens_max": int(lengths.max()),
                    "truncated_train": int(np.sum(lengths >= self.export_length))}

        result = self._stage("tokenize", fn, self.data_key, self.teacher_key)
        with np.load(self._path("tokenize", "features.npz")) as f:
            self.train_x = {k.split("/", 1)[1]: f[k] for k in f.files if k.startswith("train/")}
            self.eval_x = {k.split("/", 1)[1]: f[k] for k in f.files if k.startswith("eval/")}
        self.tokens_key = result["_key"]

    def soft_targets(self):
        from recipes import task_model
        from recipes.distillation import progress_bar

        def fn(stage):
            logits = {}
            for split, features in (("eval", self.eval_x), ("train", self.train_x)):
                n = len(features["input_mask"])
                self.log(f"[{LOG_PREFIX}]   teacher logits on the {n} {split} examples")
                bar = progress_bar(n, unit="example")
                logits[split] = task_model.predict_logits(self.teacher.model, features, 64,
                                                          progress=lambda done: bar.update(done))
            np.savez(stage.path("logits.npz"), **logits)
            return {"teacher_fp32": _metrics(logits["eval"], self.data.eval_labels, self.data.num_classes),
                    "teacher_train_accuracy": float(np.mean(np.argmax(logits["train"], -1) == self.data.train_labels))}

        result = self._stage("soft targets", fn, self.tokens_key, self.teacher_key)
        with np.load(self._path("soft targets", "logits.npz")) as f:
            self.train_logits, self.eval_logits = f["train"].astype(np.float32), f["eval"].astype(np.float32)
        self.soft_key = result["_key"]
        m = result["teacher_fp32"]
        self.log(f"[{LOG_PREFIX}]   teacher fp32: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}")

    def latency_model(self):
        from recipes import task_student

        rounds = min(self.s.latency_rounds, PROBE_ROUNDS)

        def fn(stage):
            model = task_student.fit_latency(self.teacher.model, self.lengths[0], stage.directory, rounds=rounds,
                                             threads=self.s.latency_threads, log=self.log)
            return model.to_dict()

        result = self._stage("latency model", fn, self.teacher_key,
                             settings={"length": self.lengths[0], "rounds": rounds,
                                       "threads": self.s.latency_threads})
        self.latency = task_student.TaskLatencyModel.from_dict(result)
        self.latency_key = result["_key"]
        for p in result["points"]:
            self.log(f"[{LOG_PREFIX}]   {p['name']}: FLOPs x{p['flops_ratio']:.3f}, latency x{p['measured']:.3f} "
                     f"(fit x{p['predicted']:.3f})")

    def prune(self):
        from recipes import task_student

        wanted = self.s.target_speedup * (1.0 + self.s.speedup_margin)
        try:
            structure = self.latency.structure_for(wanted)
        except ValueError as error:
            raise app.UsageError(str(error)) from None

        def fn(stage):
            self.log(f"[{LOG_PREFIX}]   removing {structure['heads_fraction']:.0%} of the heads and "
                     f"{structure['neurons_fraction']:.0%} of the FFN neurons by task importance "
                     f"(predicted fp32 speed-up {structure['predicted_speedup']:.2f}x for a target of "
                     f"{self.s.target_speedup:g}x + {self.s.speedup_margin:.0%} margin)")
            pruned = task_student.prune(self.teacher.model, self.train_x, self.data.train_labels,
                                        structure["heads_fraction"], structure["neurons_fraction"],
                                        examples=IMPORTANCE_EXAMPLES, seed=self.s.seed, seq_length=self.lengths[0])
            self.log(f"[{LOG_PREFIX}]   {pruned}")
            pruned.model.save(stage.path("pruned.keras"))
            self.models["pruned"] = pruned.model
            kept = task_student.unit_counts(pruned.model)
            before = _metrics(_logits(pruned.model, self.eval_x), self.data.eval_labels, self.data.num_classes)
            heads = {str(b): int(pruned.model.get_layer(f"layer_{b}/attention/math").num_heads)
                     for b in range(kept["blocks"])}
            neurons = {str(b): int(pruned.model.get_layer(f"layer_{b}/ffn/intermediate").units)
                       for b in range(kept["blocks"])}
            return {**structure, "heads_kept": heads, "neurons_kept": neurons, "units": kept,
                    "flops_ratio_measured": pruned.flops_after / pruned.flops_before,
                    "params": {"teacher": int(pruned.params_before), "student": int(pruned.params_after)},
                    "before_distillation": before}

        result = self._stage("prune", fn, self.tokens_key, self.teacher_key, self.latency_key,
                             settings={"target_speedup": self.s.target_speedup, "margin": self.s.speedup_margin,
                                       "examples": IMPORTANCE_EXAMPLES, "seed": self.s.seed})
        self.prune_key = result["_key"]
        m = result["before_distillation"]
        self.log(f"[{LOG_PREFIX}]   before distillation: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}")

    def distil(self):
        from recipes import task_student

        def fn(stage):
            student = self.models.get("pruned") or _load(self._path("prune", "pruned.keras"))
            log_dir = os.path.join(self.dir, "tensorboard")
            self.log(f"[{LOG_PREFIX}]   {self.epochs} epochs of {-(-len(self.data.train_labels) // self.s.batch_size)}"
                     f" batches; T={self.s.temperature:g}, alpha={self.s.alpha:g}, hidden_weight="
                     f"{self.s.task_hidden_weight:g}, lr {self.s.learning_rate:g}; TensorBoard: {log_dir}")
            history = task_student.distil(
                student, self.train_x, self.data.train_labels, self.train_logits, epochs=self.epochs,
                batch_size=self.s.batch_size, learning_rate=self.s.learning_rate, temperature=self.s.temperature,
                alpha=self.s.alpha, seed=self.s.seed, hidden_weight=self.s.task_hidden_weight,
                teacher=self.teacher.model if self.s.task_hidden_weight > 0 else None, log_dir=log_dir)
            student.save(stage.path("student.keras"))
            self.models["student"] = student
            logits = _logits(student, self.eval_x)
            np.save(stage.path("eval_logits.npy"), logits)
            return {**history, "student_fp32": _metrics(logits, self.data.eval_labels, self.data.num_classes)}

        result = self._stage("distil", fn, self.prune_key, self.soft_key,
                             settings={"epochs": self.epochs, "batch_size": self.s.batch_size,
                                       "learning_rate": self.s.learning_rate, "temperature": self.s.temperature,
                                       "alpha": self.s.alpha, "hidden_weight": self.s.task_hidden_weight,
                                       "seed": self.s.seed})
        self.distil_key = result["_key"]
        self.final_key = self.distil_key
        m = result["student_fp32"]
        self.log(f"[{LOG_PREFIX}]   student fp32: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}")

    def student(self):
        if "student" not in self.models:
            self.models["student"] = _load(self._path("distil", "student.keras"))
        return self.models["student"]

    def quantization_aware(self):
        from recipes import task_student

        def fn(stage):
            self.models["qat"] = task_student.quantization_aware(
                self.student(), self.train_x, self.data.train_labels, self.train_logits, steps=self.s.qat_steps,
                batch_size=self.s.batch_size, learning_rate=self.s.learning_rate, temperature=self.s.temperature,
                alpha=self.s.alpha, seed=self.s.seed)
            return {"steps": self.s.qat_steps, "scheme": "default_8bit"}

        # Not cached: a QAT model is rebuilt in seconds and its fake-quant state does not round-trip a file.
        result = self._stage("qat", fn, self.distil_key, settings={"steps": self.s.qat_steps}, cache=False)
        self.final_key = result["_key"]

    def export(self):
        from recipes import exports, task_export
        from recipes.distillation import progress_bar

        lengths = sorted(set(self.lengths) | {self.export_length}, reverse=True)
        files = {"student_fp32": os.path.join(self.dir, "student_fp32.tflite"),
                 "student_int8": os.path.join(self.dir, "student_int8.tflite")}
        for length in lengths:
            for role in ROLES:
                files[f"{role}@{length}"] = self._path("export", f"{role}_{length}.tflite")

        def fn(stage):
            student = self.student()
            int8_student = self.models.get("qat", student)
            representative = task_export.representative_batches(self.train_x, self.export_length, seed=self.s.seed)
            jobs = []
            for length in lengths:
                rep = [{k: v[:, :length] for k, v in b.items()} for b in representative] if length <= \
                    self.export_length else task_export.representative_batches(self.train_x, length)
                jobs += [(f"teacher_fp32@{length}", self.teacher.model, None, rep),
                         (f"teacher_int8@{length}", self.teacher.model, self.s.int8, rep),
                         (f"student_fp32@{length}", student, None, rep),
                         (f"student_int8@{length}", int8_student, self.s.int8, rep)]
            self.log(f"[{LOG_PREFIX}]   converting {len(jobs)} TFLite files (token ids -> probabilities) and the "
                     "SavedModel")
            bar = progress_bar(len(jobs) + 1, unit="file")
            hits = len(self.conversions.hits)
            for i, (name, model, mode, rep) in enumerate(jobs):
                length = int(name.split("@")[1])
                if model is self.teacher.model:
                    data = exports.calibration_data(mode, rep)  # what the converter reads
                    kept = self.conversions.file(model, ("task_tflite", mode, length, data), ".tflite",
                                                 lambda path: task_export.tflite_file(model, path, mode, length, rep),
                                                 label=name)
                    shutil.copyfile(kept, files[name])
                else:
                    task_export.tflite_file(model, files[name], mode, length, rep)
                bar.update(i + 1)
            for role in ("student_fp32", "student_int8"):
                shutil.copyfile(files[f"{role}@{self.export_length}"], files[role])
            saved = os.path.join(self.dir, "saved_model")
            if os.path.isdir(saved):
                shutil.rmtree(saved)
            parity = task_export.saved_model_dir(student, saved, self.teacher.preprocessor,
                                                 [t[0] for t in self.data.eval_texts[:8]])
            bar.update(len(jobs) + 1)
            sizes = {role: os.path.getsize(files[f"{role}@{self.export_length}"]) for role in ROLES}
            return {"files": files, "saved_model": saved, "bytes": sizes, "saved_model_parity": parity,
                    "lengths": lengths, "reused": self.conversions.hits[hits:]}

        result = self._stage("export", fn, self.final_key, settings={"int8": self.s.int8, "lengths": lengths},
                             cache=not self.s.qat)
        self.files = result["files"]
        self.export_key = result["_key"]

    def evaluate(self):
        from recipes import task_export
        from recipes.distillation import progress_bar

        def fn(stage):
            out = {}
            length = self.export_length
            for role in ("teacher_int8", "student_int8"):
                n = len(self.eval_x["input_mask"])
                self.log(f"[{LOG_PREFIX}]   {role}: {n} eval examples, one per call (seq {length})")
                bar = progress_bar(n, unit="example")
                probabilities = task_export.tflite_probabilities(self.files[f"{role}@{length}"], self.eval_x, length,
                                                                 progress=lambda done: bar.update(done))
                out[role] = _metrics(probabilities, self.data.eval_labels, self.data.num_classes)
            # The fp32 files against the Keras models on the first eval examples (the fp32 rows are Keras's).
            sub = {k: v[:64] for k, v in self.eval_x.items()}
            parity = {}
            for role, logits in (("teacher_fp32", self.eval_logits[:64]),
                                 ("student_fp32", np.load(self._path("distil", "eval_logits.npy"))[:64])):
                lite = task_export.tflite_probabilities(self.files[f"{role}@{length}"], sub, length)
                parity[role] = float(np.abs(lite - task_export.softmax(logits)).max())
            out["fp32_tflite_vs_keras_max_abs_probability"] = parity
            return out

        result = self._stage("evaluate", fn, self.export_key, cache=not self.s.qat)
        for role in ("teacher_int8", "student_int8"):
            m = result[role]
            self.log(f"[{LOG_PREFIX}]   {role}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}")

    def measure_latency(self):
        from recipes import latency
        from recipes.distillation import progress_bar

        def fn(stage):
            lengths = self.eval_x["input_mask"].sum(1)
            index = int(np.argsort(lengths, kind="stable")[len(lengths) // 2])  # a median-length eval example
            out = {}
            for length in self.lengths:
                feed = {k: _pad_row(v[index], length) for k, v in self.eval_x.items()}
                runners = {role: latency.tflite_runner(self.files[f"{role}@{length}"], self.s.latency_threads)
                           for role in ROLES}
                self.log(f"[{LOG_PREFIX}]   seq {length}: {self.s.latency_rounds} interleaved rounds of batch-1 calls")
                bar = progress_bar(self.s.latency_rounds, unit="round")
                out[str(length)] = latency.side_by_side(runners, feed, rounds=self.s.latency_rounds,
                                                        base="teacher_fp32", seed=self.s.seed, progress=bar.update)
            return {"by_length": out, "example_tokens": int(lengths[index])}

        self._stage("latency", fn, self.export_key,
                    settings={"rounds": self.s.latency_rounds, "threads": self.s.latency_threads,
                              "lengths": self.lengths}, cache=not self.s.qat)


# -- helpers ------------------------------------------------------------------------------------------


def _metrics(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Accuracy and macro-F1 of the argmax of `scores` (logits or probabilities)."""
    from recipes import task_model

    m = task_model.classification_metrics(labels, np.argmax(scores, axis=-1), num_classes)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


def _logits(model, features: dict) -> np.ndarray:
    from recipes import task_model

    return task_model.predict_logits(model, features, 64)


def _load(path: str):
    import tf_keras as keras

    import bert  # noqa: F401  registers the BERT layers
    import tfreparam.layers  # noqa: F401

    return keras.models.load_model(path, compile=False)


def _pad_row(row: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros((1, length), np.int32)
    n = min(length, len(row))
    out[0, :n] = row[:n]
    return out


def _max_positions(model) -> int:
    try:
        return int(model.get_layer("embeddings/position").weights[0].shape[0])
    except ValueError:
        return max(LATENCY_LENGTHS)


def _directory_stamp(directory: str) -> list:
    """(name, size, mtime) of every file of a directory: changes when the teacher is rewritten."""
    stamp = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            info = os.stat(path)
            stamp.append([name, info.st_size, int(info.st_mtime)])
    return [os.path.abspath(directory), stamp]


# -- the budget sweep ---------------------------------------------------------------------------------


# Stages that do not depend on the target: the sweep computes them once and copies them to the other runs, so
# every run prunes against the same latency model.
SHARED_STAGES = ("tokenize", "soft targets", "latency model")


def sweep(settings, values) -> list[dict]:
    """One task-path run per --target_speedup value; sweep.md / sweep.json / sweep.png in --report_dir."""
    from recipes import task_report

    root = settings.report_dir
    rows, first = [], None
    settings = settings.shared_conversions()  # the teacher's files converted once for every run
    for value in values:
        one = settings.replace(target_speedup=value, report_dir=os.path.join(root, f"speedup_{value:g}"))
        if first is not None:
            _copy_stages(first, one.report_dir, SHARED_STAGES)
        rows.append(task_report.sweep_row(value, run(one)))
        first = first or one.report_dir
    text = task_report.write_sweep(root, rows)
    print(text, flush=True)
    print(f"[sweep] written to {os.path.abspath(root)}", flush=True)
    return rows


def _copy_stages(source_dir: str, target_dir: str, names) -> None:
    """Finished stages of one run's report directory copied to another's (the pipeline then skips them)."""
    source = pipeline_lib.Pipeline(source_dir)
    target = pipeline_lib.Pipeline(target_dir)
    for name in names:
        src, dst = source.directory(name), target.directory(name)
        if os.path.isfile(os.path.join(src, "done.json")) and not os.path.exists(dst):
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.tflite"))
