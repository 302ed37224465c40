"""Sentence embeddings of every model of a compress run, and the quality figures computed from them.

A `TextSet` tokenizes its sentences once (sorted by length, each batch cut
to its longest sentence); embeddings come back in the sentences' own order
whichever runtime computes them: a Keras encoder, a `.tflite` / ONNX file of
one (padded back to the length a file fixes, if it fixes one), or the
sentence-transformers MiniLM-L3 ONNX graph. `quality` turns a model's
embeddings into the figures of the report: per domain and averaged over the
in-domain held-out parts and over the held-out domains (cosine to the
original, min cosine, top-1 / top-10 neighbour agreement), and the linear
probe's accuracy on each held-out domain's labelled set and, apart, on each
compression domain's (its in-domain held-out texts only), and retrieval on each
held-out domain's pairs (a query's own target among all the set's targets, by
cosine: what a semantic-search user of the encoder gets). `keras_depth_embedder`
and `probe_by_depth` give the original's probe at every depth (embeddings, then
after each block), which tells whether a labelled set rewards earlier features.
"""

from __future__ import annotations

import os

import numpy as np

from recipes import text_data

EMBED_BATCH = 64
# The groups of text sets `EvalSets.embed` can embed: fidelity (compared with the original's embeddings), and the
# tasks: the labelled probe sets and the retrieval pairs (figures of each model's own embedding space).
FIDELITY_GROUPS = ("in_domain", "heldout")
PROBE_GROUPS = ("probes", "in_domain_probes")
TASK_GROUPS = PROBE_GROUPS + ("retrieval",)
EVERY_GROUP = TASK_GROUPS + FIDELITY_GROUPS
# The Pareto table's quality (cosine and the held-out probe): what the files that only stand beside ours there (the
# fp32 models, the original's int8) embed. Their in-domain probe and retrieval repeat the int8 files' and the
# original's to within a few thousandths, and cost ~45 s of a demo.
PARETO_GROUPS = FIDELITY_GROUPS + ("probes",)
RETRIEVAL_TOP = (1, 10)  # the report's retrieval figures: the own target first, or among the 10 nearest


class TextSet:
    """Sentences tokenized once, in length-sorted trimmed batches; embeddings return in the original order."""

    def __init__(self, preprocessor, texts, batch_size: int = EMBED_BATCH):
        texts = list(texts)
        if not texts:
            raise ValueError("A text set needs at least one sentence.")
        self.texts = texts
        self.order = np.argsort([len(t) for t in texts], kind="stable")
        ordered = [texts[i] for i in self.order]
        self.batches = _batches(preprocessor, ordered, batch_size)

    def __len__(self):
        return len(self.texts)

    def unsort(self, pooled: np.ndarray) -> np.ndarray:
        out = np.empty_like(pooled)
        out[self.order] = pooled
        return out

    def padded(self, seq_length: int) -> list[dict]:
        """The batches padded back to `seq_length` (for a file that fixes the sequence length)."""
        out = []
        for b in self.batches:
            pad = seq_length - b["input_mask"].shape[1]
            out.append({k: np.pad(v, ((0, 0), (0, pad))).astype(np.int32) for k, v in b.items()})
        return out


def _batches(preprocessor, ordered, batch_size):
    # tokenized() sorts by character length again: a stable sort of an already sorted list keeps its order.
    batches = text_data.tokenized(preprocessor, ordered, batch_size)
    return [{k: np.asarray(v).astype(np.int32) for k, v in b.items()} for b in batches]


def _pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    mask = mask[..., None].astype(np.float64)
    return (hidden.astype(np.float64) * mask).sum(1) / np.maximum(mask.sum(1), 1.0)


def keras_embedder(model):
    """embed(text_set) -> mean-pooled `sequence_output` of a Keras encoder (one traced function)."""
    import tensorflow as tf

    names = [t.name.split(":")[0] for t in model.inputs]
    spec = {name: tf.TensorSpec((None, None), tf.int32) for name in names}
    call = tf.function(lambda x: model(x, training=False)["sequence_output"], input_signature=[spec],
                       autograph=False)

    def embed(text_set: TextSet) -> np.ndarray:
        pooled = [_pool(call({k: tf.constant(b[k]) for k in names}).numpy(), b["input_mask"]) for b in text_set.batches]
        return text_set.unsort(np.concatenate(pooled))

    return embed


def keras_depth_embedder(model):
    """embed(text_set) -> (depths, sentences, width): the mean-pooled `hidden_states` of a Keras encoder built with
    `output_hidden_states` (the embedding layer's output, then each block's; the last is `sequence_output`)."""
    import tensorflow as tf

    names = [t.name.split(":")[0] for t in model.inputs]
    if "hidden_states" not in model.output:
        raise ValueError(f"{model.name} has no hidden_states output: build it with output_hidden_states=True.")
    spec = {name: tf.TensorSpec((None, None), tf.int32) for name in names}
    call = tf.function(lambda x: model(x, training=False)["hidden_states"], input_signature=[spec], autograph=False)

    def embed(text_set: TextSet) -> np.ndarray:
        pooled = []
        for b in text_set.batches:
            states = call({k: tf.constant(b[k]) for k in names})
            pooled.append(np.stack([_pool(h.numpy(), b["input_mask"]) for h in states]))
        by_depth = np.concatenate(pooled, axis=1)
        return np.stack([text_set.unsort(depth) for depth in by_depth])

    return embed


def artifact_embedder(path: str):
    """embed(text_set) from an exported `.tflite` / `.onnx` file of an encoder (its `sequence_output`)."""
    from tfreparam.export import runners

    # Every core: the TFLite interpreter's default is one thread (evaluation took 6 of a demo's 24 minutes on
    # 2 cores); the outputs are bit-identical to one thread's.
    runner = runners.runner_for(path, threads=os.cpu_count())
    # Padded back only where the file fixes the length: the compress job's TFLite files and tf2onnx's graphs run
    # each batch at its own length, a third to a half of the padded tokens of the demo's text, for the same
    # masked outputs.
    length = runner.sequence_length

    def embed(text_set: TextSet) -> np.ndarray:
        batches = text_set.batches if length is None else text_set.padded(length)
        pooled = [_pool(runner.run(b)["sequence_output"], b["input_mask"]) for b in batches]
        return text_set.unsort(np.concatenate(pooled))

    return embed


def l3_embedder(path: str, threads: int | None = None):
    """embed(text_set) from sentence-transformers' MiniLM-L3 ONNX graph: mean of its token embeddings."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    token_output = next(o.name for o in session.get_outputs() if o.type == "tensor(float)" and len(o.shape) == 3)

    def embed(text_set: TextSet) -> np.ndarray:
        pooled = []
        for b in text_set.batches:
            feed = {"input_ids": b["input_word_ids"].astype(np.int64), "attention_mask": b["input_mask"].astype(np.int64)}
            pooled.append(_pool(session.run([token_output], feed)[0], b["input_mask"]))
        return text_set.unsort(np.concatenate(pooled))

    return embed


class EvalSets:
    """The evaluation text tokenized: in-domain held-out parts, held-out domains, probe sets."""

    def __init__(self, evaluation, preprocessor):
        self.in_domain = {d: TextSet(preprocessor, texts) for d, texts in evaluation.in_domain.items()}
        self.heldout = {d: TextSet(preprocessor, texts) for d, texts in evaluation.heldout.items()}
        self.probes = {name: TextSet(preprocessor, texts) for name, (texts, _) in evaluation.probes.items()}
        self.labels = {name: list(labels) for name, (_, labels) in evaluation.probes.items()}
        self.in_domain_probes = {name: TextSet(preprocessor, texts)
                                 for name, (texts, _) in evaluation.in_domain_probes.items()}
        self.in_domain_labels = {name: list(labels) for name, (_, labels) in evaluation.in_domain_probes.items()}
        # "<set>.query" and "<set>.target": row i of the one is answered by row i of the other.
        self.retrieval = {f"{name}.{side}": TextSet(preprocessor, texts) for name, pair in evaluation.retrieval.items()
                          for side, texts in zip(("query", "target"), pair)}

    def _groups(self, groups) -> list[tuple[str, dict]]:
        unknown = set(groups) - set(EVERY_GROUP)
        if unknown:
            raise ValueError(f"Unknown evaluation groups {sorted(unknown)}; pick from {list(EVERY_GROUP)}.")
        return [(g, getattr(self, g)) for g in EVERY_GROUP if g in groups]

    def count(self, groups=EVERY_GROUP) -> int:
        """How many text sets `embed` embeds."""
        return sum(len(sets) for _, sets in self._groups(groups))

    def embed(self, embedder, groups=EVERY_GROUP, progress=None) -> dict:
        """{group: {name: array}} for the `groups` asked ("in_domain", "heldout", "probes", "in_domain_probes").

        `progress()` is called after each text set.
        """
        out = {}
        for group, sets in self._groups(groups):
            out[group] = {}
            for name, text_set in sets.items():
                out[group][name] = embedder(text_set)
                if progress is not None:
                    progress()
        return out


def save(path: str, embeddings: dict) -> None:
    flat = {f"{group}/{name}": array for group, arrays in embeddings.items() for name, array in arrays.items()}
    np.savez(path, **flat)


def load(path: str) -> dict:
    out = {}
    with np.load(path) as data:
        for key in data.files:
            group, name = key.split("/", 1)
            out.setdefault(group, {})[name] = data[key]
    return out


def probe_accuracies(embeddings: dict, labels: dict, folds: int, l2: float, group: str = "probes") -> dict:
    """{set: k-fold accuracy} of the labelled sets in `group` ("probes": held-out domains; "in_domain_probes")."""
    from tfreparam import fidelity

    return {name: fidelity.linear_probe(embeddings[group][name], labels[name], folds=folds, l2=l2)
            for name in labels}


def probe_by_depth(by_depth: dict, labels: dict, folds: int, l2: float, group: str = "probes") -> dict:
    """{set: [k-fold accuracy at each depth]} from `keras_depth_embedder`'s embeddings of the sets in `group`."""
    from tfreparam import fidelity

    return {name: [fidelity.linear_probe(depth, labels[name], folds=folds, l2=l2) for depth in by_depth[group][name]]
            for name in labels}


def probe_answers(embeddings: dict, labels: dict, folds: int, l2: float, group: str = "probes") -> dict:
    """{set: per-sentence bool array}: whether the cross-validated probe labels each probe sentence right."""
    from tfreparam import fidelity

    return {name: fidelity.probe_correct(embeddings[group][name], labels[name], folds=folds, l2=l2)
            for name in sorted(labels)}


def paired_difference(a: dict, b: dict) -> dict:
    """Mean accuracy of answers `a` minus `b` (`probe_answers` or `retrieval_answers` of two models), with a
    paired interval.

    {"difference", "low", "high", "examples", "per_set": {set: difference}}; see
    `tfreparam.fidelity.paired_accuracy_difference`.
    """
    from tfreparam import fidelity

    names = sorted(a)
    out = fidelity.paired_accuracy_difference([a[n] for n in names], [b[n] for n in names])
    out["per_set"] = {n: float(np.mean(a[n]) - np.mean(b[n])) for n in names}
    return out


def retrieval_correct(queries, targets, top: int = 1) -> np.ndarray:
    """Per query, whether its own target (the same row of `targets`) is among its `top` most cosine-similar targets.

    Ties count for the query: only targets strictly more similar than its own push it down.
    """
    q, t = (np.asarray(x, np.float64) for x in (queries, targets))
    if q.ndim != 2 or q.shape != t.shape or len(q) < 2:
        raise ValueError(f"Retrieval needs as many target as query embeddings (2 or more, one width); got {q.shape} "
                         f"and {t.shape}.")
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    scores = q @ t.T
    return np.sum(scores > np.diag(scores)[:, None], axis=1) < top


def retrieval_answers(embeddings: dict, top: int = 1) -> dict:
    """{set: per-query bool array} of the "retrieval" group's sets (`EvalSets.retrieval` names)."""
    group = embeddings.get("retrieval", {})
    names = sorted(name[:-len(".query")] for name in group if name.endswith(".query"))
    return {name: retrieval_correct(group[f"{name}.query"], group[f"{name}.target"], top) for name in names}


def quality(reference: dict, candidate: dict, labels: dict, folds: int, l2: float,
            in_domain_labels: dict | None = None) -> dict:
    """The report's figures for one model's embeddings against the original's (see the module docstring).

    Each figure comes from the groups `candidate` holds (`EvalSets.embed`): fidelity from "in_domain" /
    "heldout", the probes from "probes" / "in_domain_probes", retrieval from "retrieval".
    """
    from tfreparam import fidelity

    result = {}
    if "in_domain" in candidate:
        for group in ("in_domain", "heldout"):
            per_domain = {d: fidelity.embedding_fidelity(reference[group][d], candidate[group][d])
                          for d in reference[group]}
            result[group] = per_domain
            result[f"{group}_mean"] = {
                "cosine": float(np.mean([v["cosine"] for v in per_domain.values()])),
                "cosine_min": float(np.min([v["cosine_min"] for v in per_domain.values()])),
                "nn_agreement": float(np.mean([v["nn_agreement"] for v in per_domain.values()])),
                "nn_agreement_top10": float(np.mean([v["nn_agreement_top10"] for v in per_domain.values()])),
            }
    if labels and "probes" in candidate:
        result["probe"] = probe_accuracies(candidate, labels, folds, l2)
        result["probe_mean"] = float(np.mean(list(result["probe"].values())))
    if in_domain_labels and "in_domain_probes" in candidate:
        result["in_domain_probe"] = probe_accuracies(candidate, in_domain_labels, folds, l2, group="in_domain_probes")
        result["in_domain_probe_mean"] = float(np.mean(list(result["in_domain_probe"].values())))
    result.update(retrieval_figures(candidate))
    return result


def retrieval_figures(embeddings: dict) -> dict:
    """{"retrieval": {set: {"top1", "top10"}}, "retrieval_mean": mean top-1} of the retrieval sets held; {} if none."""
    figures = {}
    for top in RETRIEVAL_TOP:
        for name, correct in retrieval_answers(embeddings, top).items():
            figures.setdefault(name, {})[f"top{top}"] = float(np.mean(correct))
    if not figures:
        return {}
    return {"retrieval": figures, "retrieval_mean": float(np.mean([f["top1"] for f in figures.values()]))}
