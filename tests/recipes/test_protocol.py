"""The compress protocol: held-out domains never reach calibration, importance, refit or distillation.

The spy tests run the real recipe (on a tiny random BERT) and record what the
compression algorithms themselves receive: the token rows given to the
importance estimate, the least-squares refit and the low-rank calibration, and
the texts the teacher cache (distillation) tokenizes. None of them may be a
sentence of a held-out domain or of its labelled or retrieval set.
"""

import numpy as np
import pytest
import tensorflow as tf

import bert
from recipes import compress, corpus, distillation, latency, protocol, stages
from recipes.compress_settings import CompressSettings
from tfreparam import calibration
from tfreparam.sparsity import reconstruct, structured

SMALL = dict(calibration_per_domain=12, train_per_domain=24, eval_per_domain=12, probe_sentences=60, probe_folds=2)


def _build(**changes):
    return protocol.build(CompressSettings(**{**SMALL, **changes}), vocab_path=f"{bert.minilm_path()}/vocab.txt",
                          log=lambda line: None)


def _texts(sentences):
    return [s.text for s in sentences]


def _labelled_texts(domains):
    """Every text of the labelled sets whose texts are text of `domains` (both splits)."""
    return [t for name, domain in corpus.TASK_DOMAINS.items() if domain in domains
            for split in corpus.SPLITS for t in corpus.labelled(name, split)[0]]


def _retrieval_texts(domains):
    """Every query and target of the retrieval sets whose texts are text of `domains`."""
    return [t for name, domain in corpus.RETRIEVAL_DOMAINS.items() if domain in domains
            for texts in corpus.retrieval_pairs(name) for t in texts]


def test_parts_are_disjoint_deterministic_and_free_of_heldout_text():
    first, again = _build(), _build()
    assert first == again
    c, e = first.compression, first.evaluation
    calibration_texts, train_texts = set(_texts(c.calibration)), set(_texts(c.train))
    in_domain = {t for texts in e.in_domain.values() for t in texts}
    assert not calibration_texts & train_texts and not calibration_texts & in_domain and not train_texts & in_domain
    assert set(e.heldout) == {"wordnet", "manual"} and set(e.probes) == {"wordnet_lexname", "manual_chapter"}
    assert set(c.domains) == {"debian", "stdlib", "bible", "vocab"} and "vocab" not in e.in_domain
    heldout = {" ".join(s.text.lower().split()) for d in ("wordnet", "manual") for s in corpus.load(d)}
    heldout |= {" ".join(t.lower().split()) for t in _labelled_texts(("wordnet", "manual"))}
    heldout |= {" ".join(t.lower().split()) for t in _retrieval_texts(("wordnet",))}
    for text in calibration_texts | train_texts:
        assert " ".join(text.lower().split()) not in heldout
    counts = first.counts()
    assert counts["calibration"] == {"bible": 12, "debian": 12, "stdlib": 12, "vocab": 12}
    assert counts["heldout_domains"] == {"wordnet": 12, "manual": 12}
    # WordNet held out: its example -> definition pairs, row i's answer target i, sampled from the snapshot's.
    queries, targets = e.retrieval["wordnet_gloss"]
    assert counts["retrieval"] == {"wordnet_gloss": 1000} and len(targets) == 1000 == len(set(targets))
    every = dict(zip(*corpus.retrieval_pairs("wordnet_gloss")))
    assert all(every[q] == t for q, t in zip(queries, targets))
    assert _build(retrieval_pairs=0).evaluation.retrieval == {}


def test_other_heldout_choices_move_the_probe_and_the_domains():
    p = _build(heldout_domains=("debian",), vocab_domain=False)
    assert set(p.evaluation.probes) == {"debian_section"} and set(p.evaluation.heldout) == {"debian"}
    assert p.evaluation.retrieval == {}  # WordNet is compression text here: its pairs would be in-domain
    assert "debian" not in p.compression.domains and "vocab" not in p.compression.domains
    p = _build(heldout_domains=("manual",), compression_domains=("bible",), vocab_domain=False)
    assert p.compression.domains == ("bible",) and set(p.evaluation.probes) == {"manual_chapter"}
    # The Debian Reference's chapter probe: up to 60 sentences, a chapter kept only with >= probe_folds of them.
    texts, labels = p.evaluation.probes["manual_chapter"]
    assert 50 <= len(texts) <= 60 and set(texts) <= set(_labelled_texts(("manual",)))
    assert all(label.startswith("ch") and labels.count(label) >= 2 for label in labels)


def _hash_position(text: str) -> float:
    """Where a text falls in [0, 1): the split's documented hash (sha256, first 8 hex digits), recomputed here."""
    import hashlib

    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 16**8


def test_in_domain_probes_use_only_the_held_out_part_of_a_compression_domain():
    p = _build(probe_sentences=400)
    probes = p.evaluation.in_domain_probes
    # Debian is compressed on by default, so its section probe is the in-domain one; the held-out ones stay put.
    assert set(probes) == {"debian_section"} and set(p.evaluation.probes) == {"wordnet_lexname", "manual_chapter"}
    texts, labels = probes["debian_section"]
    assert 350 <= len(texts) <= 400 and set(texts) <= set(_labelled_texts(("debian",)))
    assert all(labels.count(label) >= 2 for label in labels)
    # calibration 0.1 + train 0.7 of the hash line: every probe text lies in the last 0.2, the held-out part.
    assert min(_hash_position(t) for t in texts) >= 0.8
    # ... so no probe text is a calibration or distillation sentence of the whole Debian domain, normalised or not.
    normal = lambda t: " ".join(t.lower().split())  # noqa: E731
    compressed = {normal(s.text) for s in corpus.load("debian") if _hash_position(s.text) < 0.8}
    assert not {normal(t) for t in texts} & compressed
    assert p.counts()["in_domain_probe"] == {"debian_section": len(texts)}
    # With Debian held out instead, its probe is a held-out one and the other two sets are the in-domain ones.
    other = _build(heldout_domains=("debian",)).evaluation
    assert set(other.probes) == {"debian_section"} and set(other.in_domain_probes) == {"wordnet_lexname",
                                                                                       "manual_chapter"}


def test_compression_text_refuses_a_heldout_sentence():
    ok = corpus.Sentence("A sentence.", "bible")
    with pytest.raises(ValueError, match=r"Held-out domain\(s\) \['wordnet'\] in the train part"):
        protocol.CompressionText((ok,), (ok, corpus.Sentence("a gloss", "wordnet")), frozenset({"wordnet"}))


def test_no_labelled_text_of_a_heldout_domain_reaches_compression_from_train_files(tmp_path):
    """The probe samples 60 texts of each held-out set; the other labelled texts must stay out of compression too.

    So must every retrieval pair of a held-out domain, sampled or not."""
    labelled = _labelled_texts(("wordnet", "manual")) + _retrieval_texts(("wordnet",))
    filler = [f"Compression sentence number {i} is here." for i in range(200)]
    mine = tmp_path / "mine.txt"
    mine.write_text("\n".join(labelled + filler))
    p = _build(train_files=str(mine), vocab_domain=False)
    assert set(p.evaluation.probes) == {"wordnet_lexname", "manual_chapter"}
    compressed = {" ".join(t.lower().split()) for t in _texts(p.compression.calibration) + _texts(p.compression.train)}
    # The file reader splits a few labelled texts into other sentences; none of those may be a labelled text.
    assert len(compressed) == 12 + 24 and not compressed & {" ".join(t.lower().split()) for t in labelled}


def test_user_files_are_domains_and_shared_sentences_stay_out_of_compression(tmp_path):
    mine = tmp_path / "mine.txt"
    theirs = tmp_path / "theirs.txt"
    shared = "This exact sentence is in both files."
    mine.write_text("\n".join([shared] + [f"Compression sentence number {i} is here." for i in range(200)]))
    theirs.write_text("\n".join([shared] + [f"Held-out sentence number {i} is there." for i in range(30)]))
    p = _build(train_files=str(mine), eval_files=str(theirs), vocab_domain=False, heldout_domains=())
    assert set(p.evaluation.heldout) == {"theirs.txt"} and p.compression.domains == ("mine.txt",)
    assert shared not in _texts(p.compression.calibration) + _texts(p.compression.train)
    assert p.evaluation.probes == {} and p.evaluation.in_domain_probes == {}


# -- the spies: what the compression algorithms receive ----------------------------------------------------

RUN = ["--seq_length=32", "--calibration_per_domain=12", "--train_per_domain=24", "--eval_per_domain=12",
       "--probe_sentences=60", "--retrieval_pairs=40", "--probe_folds=2", "--distill_steps=2", "--batch_size=8",
       "--importance_draws=1", "--baselines=layer_drop"]


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def heldout_rows():
    """Token rows (without padding) of every sentence of the held-out domains, their labelled and retrieval sets."""
    pre = bert.Preprocessor.from_pretrained("minilm", seq_length=32)
    texts = [s.text for d in ("wordnet", "manual") for s in corpus.load(d)]
    texts += _labelled_texts(("wordnet", "manual")) + _retrieval_texts(("wordnet",))
    rows = set()
    for i in range(0, len(texts), 2048):
        batch = pre(tf.constant(texts[i:i + 2048]))
        ids, mask = np.asarray(batch["input_word_ids"]), np.asarray(batch["input_mask"])
        rows.update(tuple(r[m.astype(bool)]) for r, m in zip(ids, mask))
    return rows


def _rows(batches):
    out = []
    for b in batches:
        b = b[0] if isinstance(b, (tuple, list)) else b
        ids, mask = np.asarray(b["input_word_ids"]), np.asarray(b["input_mask"])
        out += [tuple(r[m.astype(bool)]) for r, m in zip(ids, mask)]
    return out


@pytest.mark.parametrize("policy", ["structured", "lowrank"])
def test_no_heldout_sentence_reaches_compression(policy, tiny_bert, tmp_path, monkeypatch, heldout_rows):
    seen = {}

    def spy(module, name, grab):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            seen.setdefault(name, []).extend(grab(*args, **kwargs))
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    spy(structured, "output_sensitivity", lambda model, data, *a, **k: _rows(data))
    spy(reconstruct, "refit_output_projections", lambda student, teacher, data, *a, **k: _rows(data))
    spy(calibration, "input_grams", lambda model, layers, data, *a, **k: _rows(list(data.as_numpy_iterator())))
    # The teacher cache tokenizes the distillation text with length_batches: record the texts it is given.
    texts = []
    original_batches = distillation.length_batches
    monkeypatch.setattr(distillation, "length_batches",
                        lambda pre, t, *a, **k: texts.extend(t) or original_batches(pre, t, *a, **k))

    # Latency is not what this test is about: a fixed latency model instead of timing exported files.
    def fixed_latency(self):
        self.results["latency model"] = {"_key": "fixed"}
        self.latency_fit = latency.LatencyModel(0.1, 0.05, 0.01, 0.0005, [])
        self.our_ratio = 0.7

    monkeypatch.setattr(stages.CompressRun, "latency_model", fixed_latency)
    # ... and the pruned structure "measures" what that model predicts (no file of the original to time it against).
    monkeypatch.setattr(stages.CompressRun, "_measured_ratio", lambda self, selection: 0.1 + 0.05 * self.depth
                        + selection.cost)
    monkeypatch.setattr(stages.CompressRun, "export", lambda self: (_ for _ in ()).throw(_Stop()))
    compress.FLAGS.unparse_flags()
    compress.FLAGS(["compress", f"--model={tiny_bert}", f"--report_dir={tmp_path}", f"--policy={policy}",
                    "--methods=svd,whitened", "--refit", *RUN])
    with pytest.raises(_Stop):  # everything up to export: compression and both distillations ran
        compress.run(compress.check_flags(compress.FLAGS))
    grabbed = ["output_sensitivity", "refit_output_projections"] if policy == "structured" else ["input_grams"]
    for name in grabbed:
        assert seen.get(name), f"{name} was never called"
        leaked = [row for row in seen[name] if row in heldout_rows]
        assert not leaked, f"{name} received {len(leaked)} held-out sentences"
    assert len(texts) == 3 * 24 + 24  # three corpus domains' train parts and the vocab domain's, cached once
    heldout_texts = {s.text for d in ("wordnet", "manual") for s in corpus.load(d)}
    heldout_texts |= set(_retrieval_texts(("wordnet",)))
    assert not set(texts) & heldout_texts
