"""The evaluation protocol of `recipes.compress`: which text compresses a model, which text judges it.

Every sentence carries its domain. The *compression domains* are split by a
hash of each sentence into calibration / train (distillation) / in-domain
held-out parts. The *held-out domains* never reach compression at all: the
compression stages (calibration, importance, refit, distillation) receive
only a `CompressionText`, which by construction holds no sentence of a
held-out domain, of a held-out domain's labelled or retrieval set, or equal
to one of them; `EvaluationText` (in-domain held-out sentences, held-out
domains' sentences, their labelled probe sets and retrieval pairs) goes to
evaluation only. A compression domain's labelled set is a probe too (the
*in-domain probe*), restricted to the texts its hash puts in the in-domain
held-out part, so that the probe, like the cosine, is reported both
in-domain and on held-out domains.

Sources: the built-in corpus (`recipes.corpus`, domains minus
`--heldout_domains`), or `--train_files` (one domain per file, named after
it) for compression and `--eval_files` (one held-out domain per file) for
evaluation. An optional synthetic "vocab" domain (random whole words of the
model's vocabulary: no corpus text at all) widens calibration and
distillation beyond the registers of the compression domains.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Callable, Optional

from recipes import corpus

FRACTIONS = {"calibration": 0.1, "train": 0.7, "heldout": 0.2}
VOCAB_DOMAIN = "vocab"


def _rank(text: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{text}".encode()).hexdigest()


def _sample(sentences, count: int, salt: str) -> list:
    """The first `count` by a salted hash: a fixed sample that does not follow the part-assignment hash."""
    key = (lambda s: _rank(s.text, salt)) if sentences and isinstance(sentences[0], corpus.Sentence) else (
        lambda s: _rank(s, salt))
    return sorted(sentences, key=key)[:count]


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


@dataclasses.dataclass(frozen=True)
class CompressionText:
    """The only text the compression stages see: sentences of the compression domains, in two parts."""

    calibration: tuple  # of corpus.Sentence
    train: tuple
    excluded_domains: frozenset  # the held-out domains: none of their sentences may be here

    def __post_init__(self):
        for part in ("calibration", "train"):
            sentences = getattr(self, part)
            if not sentences:
                raise ValueError(f"The compression text has no {part} sentences; give more text.")
            leaked = sorted({s.domain for s in sentences if s.domain in self.excluded_domains})
            if leaked:
                raise ValueError(f"Held-out domain(s) {leaked} in the {part} part of the compression text.")

    @property
    def domains(self) -> tuple:
        return tuple(sorted({s.domain for s in self.calibration + self.train}))

    def texts(self, part: str) -> list[str]:
        return [s.text for s in getattr(self, part)]

    def counts(self) -> dict:
        return {part: _count(getattr(self, part)) for part in ("calibration", "train")}


@dataclasses.dataclass(frozen=True)
class EvaluationText:
    """Text that only evaluation sees: {domain: sentences} in and out of compression, labelled probe sets."""

    in_domain: dict  # compression domain -> held-out part of it
    heldout: dict  # held-out domain -> its sentences
    probes: dict  # labelled set name -> (texts, labels), of held-out domains only
    # the same of compression domains, only texts of their in-domain held-out part (never calibration or train)
    in_domain_probes: dict = dataclasses.field(default_factory=dict)
    retrieval: dict = dataclasses.field(default_factory=dict)  # set name -> (queries, targets), held-out domains'

    def counts(self) -> dict:
        return {"in_domain_heldout": {d: len(v) for d, v in self.in_domain.items()},
                "heldout_domains": {d: len(v) for d, v in self.heldout.items()},
                "probe": {name: len(texts) for name, (texts, _) in self.probes.items()},
                "in_domain_probe": {name: len(texts) for name, (texts, _) in self.in_domain_probes.items()},
                "retrieval": {name: len(queries) for name, (queries, _) in self.retrieval.items()}}


@dataclasses.dataclass(frozen=True)
class Protocol:
    compression: CompressionText
    evaluation: EvaluationText

    def counts(self) -> dict:
        return {**self.compression.counts(), **self.evaluation.counts()}


def _count(sentences) -> dict:
    counts = {}
    for s in sentences:
        counts[s.domain] = counts.get(s.domain, 0) + 1
    return dict(sorted(counts.items()))


def vocab_sentences(vocab_path: str, count: int, seed: int = 0) -> list[str]:
    """`count` synthetic sentences of 6-30 whole lower-case words of the vocabulary, drawn uniformly."""
    import numpy as np

    with open(vocab_path, encoding="utf-8") as fh:
        words = [w.strip() for w in fh if re.fullmatch(r"[a-z]{2,}", w.strip())]
    if not words:
        raise ValueError(f"{vocab_path} has no whole lower-case words for the synthetic vocab domain.")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        text = " ".join(rng.choice(words, int(rng.integers(6, 31))))
        out.append(text[0].upper() + text[1:] + ".")
    return out


def _file_domains(files: str, flag: str, log) -> dict:
    """{domain name (the file's name): unique sentences} of a comma-separated file list."""
    from recipes import text_data

    domains, seen = {}, set()
    for path in text_data.check_files(files, flag):
        name = os.path.basename(path) or path
        while name in domains:
            name += "'"
        sentences = [s for s in text_data.file_sentences([path], log=log) if s not in seen]
        seen.update(sentences)
        domains[name] = sentences
    return domains


def _probe_sets(domains, probe_sentences: int, folds: int, keep: Callable[[str], bool] = lambda text: True) -> dict:
    """The labelled sets whose texts are text of `domains` (and `keep`): up to `probe_sentences` each, classes
    with >= folds examples."""
    probes = {}
    for name, domain in corpus.TASK_DOMAINS.items():
        if domain not in domains:
            continue
        pairs = []
        for split in corpus.SPLITS:
            pairs += [p for p in zip(*corpus.labelled(name, split)) if keep(p[0])]
        pairs = sorted(pairs, key=lambda p: _rank(p[0], "probe"))[:probe_sentences]
        counts = {}
        for _, label in pairs:
            counts[label] = counts.get(label, 0) + 1
        pairs = [p for p in pairs if counts[p[1]] >= folds]
        if len({label for _, label in pairs}) >= 2:
            probes[name] = (tuple(t for t, _ in pairs), tuple(label for _, label in pairs))
    return probes


def _retrieval_sets(domains, pairs: int) -> dict:
    """The retrieval sets whose text is text of `domains`: up to `pairs` (query, target) pairs each, by hash."""
    sets = {}
    for name, domain in corpus.RETRIEVAL_DOMAINS.items():
        if domain in domains and pairs:
            chosen = sorted(zip(*corpus.retrieval_pairs(name)), key=lambda p: _rank(p[0], "retrieval"))[:pairs]
            sets[name] = (tuple(q for q, _ in chosen), tuple(t for _, t in chosen))
    return sets


def build(settings, vocab_path: Optional[str] = None, log: Callable[[str], None] = print) -> Protocol:
    """The protocol of `settings` (a `CompressSettings`): compression text and evaluation text, disjoint."""
    # Held-out domains first: their text (and labelled sets) is what compression must never see.
    labelled = []
    if settings.eval_files:
        heldout_all = _file_domains(settings.eval_files, "--eval_files", log)
        probes, retrieval = {}, {}
    else:
        heldout_all = {d: [s.text for s in corpus.load(d)] for d in settings.heldout_domains}
        probes = _probe_sets(heldout_all, settings.probe_sentences, settings.probe_folds)
        retrieval = _retrieval_sets(heldout_all, settings.retrieval_pairs)
        # Every text of their labelled and retrieval sets, not only the samples (--train_files may hold the rest).
        labelled = [t for name, domain in corpus.TASK_DOMAINS.items() if domain in heldout_all
                    for split in corpus.SPLITS for t in corpus.labelled(name, split)[0]]
        labelled += [t for name, domain in corpus.RETRIEVAL_DOMAINS.items() if domain in heldout_all
                     for texts in corpus.retrieval_pairs(name) for t in texts]
    forbidden = {_normal(t) for texts in heldout_all.values() for t in texts}
    forbidden |= {_normal(t) for t in labelled}

    if settings.train_files:
        source = {d: [corpus.Sentence(t, d) for t in texts]
                  for d, texts in _file_domains(settings.train_files, "--train_files", log).items()}
    else:
        names = settings.compression_domains or tuple(
            d for d in corpus.DOMAINS if settings.eval_files or d not in settings.heldout_domains)
        source = {d: corpus.load(d) for d in names}
    clashing = sorted(set(source) & set(heldout_all))
    if clashing:
        raise ValueError(f"Domain(s) {clashing} are both compression text and held out; rename the files.")

    calibration, train, in_domain = [], [], {}
    dropped = 0
    for domain, sentences in source.items():
        kept = [s for s in sentences if _normal(s.text) not in forbidden]
        dropped += len(sentences) - len(kept)
        parts = corpus.split_parts(kept, FRACTIONS)
        calibration += _sample(parts["calibration"], settings.calibration_per_domain, "calibration")
        train += _sample(parts["train"], settings.train_per_domain, "train")
        held = _sample(parts["heldout"], settings.eval_per_domain, "evaluation")
        if held:
            in_domain[domain] = tuple(s.text for s in held)
    if dropped:
        log(f"[text] {dropped} compression sentences equal to held-out text were left out of compression")
    if settings.vocab_domain:
        if vocab_path is None:
            raise ValueError("The synthetic vocab domain needs the model's vocab.txt (vocab_path).")
        synthetic = vocab_sentences(vocab_path, settings.calibration_per_domain + settings.train_per_domain,
                                    seed=settings.seed)
        synthetic = [corpus.Sentence(t, VOCAB_DOMAIN) for t in synthetic if _normal(t) not in forbidden]
        calibration += synthetic[:settings.calibration_per_domain]
        train += synthetic[settings.calibration_per_domain:]
    if not in_domain:
        raise ValueError("No in-domain held-out sentences: the compression text is too small; give more text.")
    in_domain_probes = {}
    if not settings.train_files:
        # A labelled text the hash puts in the held-out part is no calibration or train sentence (the same text
        # lands in the same part); normalised, it must not equal one either, nor any held-out-domain text.
        seen = forbidden | {_normal(s.text) for s in calibration + train}
        bounds = corpus.split_bounds(FRACTIONS)
        in_domain_probes = _probe_sets(
            source, settings.probe_sentences, settings.probe_folds,
            keep=lambda text: corpus.part_of(text, bounds) == "heldout" and _normal(text) not in seen)
    # A fixed interleaving of the domains (by hash), so every batch mixes them.
    calibration = tuple(sorted(calibration, key=lambda s: _rank(s.text, "order")))
    train = tuple(sorted(train, key=lambda s: _rank(s.text, "order")))
    compression = CompressionText(calibration, train, frozenset(heldout_all))
    heldout = {d: tuple(_sample(texts, settings.eval_per_domain, "evaluation")) for d, texts in heldout_all.items()}
    short = [d for d, texts in heldout.items() if len(texts) < 11]
    if short:
        raise ValueError(f"Held-out domain(s) {short} have fewer than 11 sentences (top-10 neighbours need 11); "
                         "give more text.")
    return Protocol(compression, EvaluationText(in_domain, heldout, probes, in_domain_probes, retrieval))
