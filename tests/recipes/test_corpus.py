"""The built-in corpus: the stdlib docstrings, the committed multi-domain snapshot and its labelled sets."""

import collections
import os

import pytest

from recipes import corpus, labelled_data
from tools import make_corpus

SNIPPET = os.path.join(os.path.dirname(__file__), "wordnet_snippet.txt")
# lexnames(5WN): the lexicographer file numbers of the synsets in the snippet.
LEXNAMES = {5: "noun.animal", 6: "noun.artifact", 12: "noun.feeling", 19: "noun.phenomenon",
            34: "verb.consumption", 38: "verb.motion"}
FRACTIONS = {"calibration": 0.2, "train": 0.6, "heldout": 0.2}
NBSP = "\xa0"
# A Debian Reference text rendering in miniature, as the real one is laid out: headings with no-break spaces,
# prose indented by 4 spaces (some first lines by no-break spaces), code and lists indented deeper.
MANUAL_TEXT = f"""Debian Reference

Table of Contents

1. GNU/Linux tutorials

    This preface paragraph is before the first chapter here.

Chapter{NBSP}1.{NBSP}GNU/Linux tutorials

    I think learning a computer system is like learning a new
{NBSP * 3} language. You have to practice it yourself.

1.1.{NBSP}Console basics

      * A list item is not a prose paragraph at all.

    $ ls -la /tmp

    The shell prompt waits for the next command.

Chapter{NBSP}2.{NBSP}Debian package management

    Packages are installed with the package tools. See Chapter 1 for the basics.

Appendix{NBSP}A.{NBSP}Appendix

    Here are backgrounds of this document in the appendix.

A.1.{NBSP}The Debian maze
"""


def test_corpus_is_prose_and_deterministic():
    sentences = corpus.stdlib_sentences()
    assert len(sentences) > 1000
    assert sentences == corpus.stdlib_sentences()
    assert len(set(sentences)) == len(sentences)
    for sentence in sentences[:200]:
        assert sentence[0].isupper() and sentence[-1] in ".!?"
        assert 6 <= len(sentence.split()) <= 60


def test_split_is_disjoint_stable_and_proportional():
    sentences = corpus.stdlib_sentences()
    parts = corpus.split(sentences, {"calibration": 0.1, "train": 0.8, "heldout": 0.1})
    sets = {name: set(part) for name, part in parts.items()}
    assert not sets["calibration"] & sets["train"] and not sets["train"] & sets["heldout"]
    assert not sets["calibration"] & sets["heldout"]
    assert sum(map(len, parts.values())) == len(sentences)
    assert abs(len(parts["heldout"]) / len(sentences) - 0.1) < 0.03
    # Adding sentences never moves an existing one to another part.
    more = corpus.split(sentences + ["A brand new sentence that was not there before."], {"calibration": 0.1, "train": 0.8, "heldout": 0.1})
    assert set(parts["heldout"]) <= set(more["heldout"])


# -- the snapshot -------------------------------------------------------------------


def _raw_synsets():
    """(lexname, definition, examples) read straight from the raw lines: field 2 is the lexicographer file."""
    with open(SNIPPET, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                continue
            fields, gloss = line.split(" | ")
            parts = [p.strip() for p in gloss.strip().split(";")]
            definition = "; ".join(p for p in parts if not p.startswith('"'))
            examples = [p.strip('"') for p in parts if p.startswith('"')]
            yield LEXNAMES[int(fields.split()[1])], definition, examples


def test_every_domain_is_present_clean_and_counted():
    sentences = corpus.load()
    counts = collections.Counter(s.domain for s in sentences)
    assert set(counts) == set(corpus.DOMAINS) and len(corpus.DOMAINS) == 5
    assert all(n >= 1500 for n in counts.values()), counts
    assert dict(counts) == corpus.manifest()["domains"]
    for sentence in sentences:
        assert 4 <= len(sentence.text.split()) <= 64 and sentence.text == " ".join(sentence.text.split())
        assert "<" not in sentence.text and "{" not in sentence.text and "http://" not in sentence.text
    assert [s.text for s in corpus.load("bible")] == [s.text for s in sentences if s.domain == "bible"]


def test_no_text_in_two_domains_or_twice():
    keys = [" ".join(s.text.lower().split()) for s in corpus.load()]
    assert len(keys) == len(set(keys))


def test_unknown_domain_is_refused_by_name():
    with pytest.raises(ValueError, match=r"Unknown corpus domain\(s\) \['news'\]; choose from"):
        corpus.load(["wordnet", "news"])


def test_split_parts_are_disjoint_deterministic_and_independent_of_other_domains():
    sentences = corpus.load()
    parts = corpus.split_parts(sentences, FRACTIONS)
    texts = {name: {s.text for s in part} for name, part in parts.items()}
    assert sum(map(len, texts.values())) == len(sentences)
    assert not texts["calibration"] & texts["train"] and not texts["train"] & texts["heldout"]
    assert not texts["calibration"] & texts["heldout"]
    for name, fraction in FRACTIONS.items():
        assert abs(len(parts[name]) / len(sentences) - fraction) < 0.02
    shuffled = corpus.split_parts(sentences[::-1], FRACTIONS)
    assert {n: set(p) for n, p in shuffled.items()} == {n: set(p) for n, p in parts.items()}
    # Leaving domains out (as a held-out-domain evaluation does) moves no sentence to another part.
    for domain in corpus.DOMAINS:
        alone = corpus.split_parts(corpus.load(domain), FRACTIONS)
        for name in FRACTIONS:
            assert alone[name] == [s for s in parts[name] if s.domain == domain]


def test_snapshot_is_small_enough_to_commit():
    files = [os.path.join(corpus.DATA_DIR, n) for n in os.listdir(corpus.DATA_DIR)]
    assert sum(os.path.getsize(f) for f in files) <= 5 * 1024 * 1024


@pytest.mark.parametrize("name, classes", [("wordnet_lexname", 40), ("debian_section", 40)])
def test_labelled_sets_are_sized_balanced_and_disjoint(name, classes):
    train_texts, train_labels = corpus.labelled(name, "train")
    eval_texts, eval_labels = corpus.labelled(name, "eval")
    assert len(train_texts) >= 10000 and len(eval_texts) >= 2000
    counts = collections.Counter(train_labels)
    assert len(counts) >= classes and set(eval_labels) <= set(counts)
    assert max(counts.values()) <= 3.5 * min(counts.values()), counts  # no class swamps the others
    assert not set(train_texts) & set(eval_texts)
    info = corpus.manifest()["tasks"][name]
    assert (info["train"], info["eval"]) == (len(train_texts), len(eval_texts))
    assert info["domain"] == corpus.TASK_DOMAINS[name]


def test_labels_are_wordnets_own():
    """Definitions in the labelled set carry the lexicographer file written in the raw WordNet line."""
    labelled = {}
    for split in corpus.SPLITS:
        labelled.update(zip(*corpus.labelled("wordnet_lexname", split)))
    checked = 0
    for lexname, definition, _ in _raw_synsets():
        if definition in labelled:
            assert labelled[definition] == lexname, definition
            checked += 1
    assert checked == 5  # hammer, anger, rain, eat, swim (dog's definition was not among the 400 animals kept)


def test_wordnet_parser_matches_the_raw_lines():
    with open(SNIPPET, encoding="utf-8") as f:
        lines = [line for line in f if not line.startswith("#")]
    parsed = list(make_corpus.wordnet_synsets(lines, LEXNAMES))
    assert parsed == list(_raw_synsets())
    assert parsed[0] == ("noun.animal", "a member of the genus Canis (probably descended from the common wolf) "
                         "that has been domesticated by man since prehistoric times; occurs in many breeds",
                         ["the dog barked all night"])


def test_gloss_pairs_are_each_synsets_first_clean_example_and_its_definition():
    synsets = list(_raw_synsets())
    assert make_corpus.gloss_pairs(synsets) == [
        ("the dog barked all night", synsets[0][1]),
        ("She was eating a banana", "take in solid food"),
        ("this snake swims through the soil where it lives", "move as if gliding through water")]
    # A text two synsets share cannot say which answer is right: both synsets' pairs go.
    shared = synsets + [("noun.animal", "a domestic animal kept as a pet", ["the dog barked all night"])]
    assert [q for q, _ in make_corpus.gloss_pairs(shared)] == ["She was eating a banana",
                                                                "this snake swims through the soil where it lives"]


def test_committed_retrieval_pairs_are_unique_and_counted():
    queries, targets = corpus.retrieval_pairs("wordnet_gloss")
    info = corpus.manifest()["retrieval"]["wordnet_gloss"]
    assert len(queries) == len(targets) == info["pairs"] == 2000 and info["found"] > 10000
    normal = lambda texts: {" ".join(t.lower().split()) for t in texts}  # noqa: E731
    assert len(normal(queries)) == len(normal(targets)) == 2000 and not normal(queries) & normal(targets)
    assert all(make_corpus.clean(t) == t for t in queries + targets)
    with pytest.raises(ValueError, match="Unknown retrieval set 'nope'"):
        corpus.retrieval_pairs("nope")


def test_task_csv_files_read_back_with_the_recipes_reader(tmp_path):
    train_path, eval_path = corpus.write_task_csv("debian_section", str(tmp_path))
    texts, labels = labelled_data.read_examples(train_path, ["text"], "label")
    assert [t for (t,) in texts] == corpus.labelled("debian_section", "train")[0]
    assert labels == corpus.labelled("debian_section", "train")[1]
    eval_texts, eval_labels = labelled_data.read_examples(eval_path, ["text"], "label")
    names, _, _ = labelled_data.label_ids(labels, eval_labels)
    assert "python" in names and len(eval_texts) == corpus.manifest()["tasks"]["debian_section"]["eval"]
    with pytest.raises(ValueError, match=r"Unknown labelled set 'imdb'; choose from"):
        corpus.labelled("imdb", "train")


def test_manual_sentences_are_labelled_by_their_chapter():
    sentences, labelled = make_corpus.manual_sentences(MANUAL_TEXT)
    assert labelled == [
        ("I think learning a computer system is like learning a new language.", "ch01"),
        ("You have to practice it yourself.", "ch01"),
        ("The shell prompt waits for the next command.", "ch01"),
        ("Packages are installed with the package tools.", "ch02"),
        ("See Chapter 1 for the basics.", "ch02"),
    ]
    # The manual domain keeps the preface's and the appendix's sentences too; only they have no chapter.
    assert sentences == ["This preface paragraph is before the first chapter here.", *(t for t, _ in labelled),
                         "Here are backgrounds of this document in the appendix."]
    assert list(make_corpus.manual_paragraphs(MANUAL_TEXT))[1] == (
        "I think learning a computer system is like learning a new language. You have to practice it yourself.")


def test_manual_chapter_set_is_the_committed_chapters_of_manual_sentences():
    info = corpus.manifest()["tasks"]["manual_chapter"]
    assert (info["domain"], info["min_class"], info["per_class"]) == ("manual", 60, 200)
    train_texts, train_labels = corpus.labelled("manual_chapter", "train")
    eval_texts, eval_labels = corpus.labelled("manual_chapter", "eval")
    counts = collections.Counter(train_labels + eval_labels)
    assert dict(counts) == info["classes"] and (info["train"], info["eval"]) == (len(train_texts), len(eval_texts))
    # Chapters 5 (network setup) and 7 (GUI) have 58 and 59 sentences: below the 60 kept.
    assert sorted(counts) == [f"ch{n:02d}" for n in (1, 2, 3, 4, 6, 8, 9, 10, 11, 12)]
    assert all(60 <= n <= 200 for n in counts.values()) and sum(counts.values()) == 1318
    assert counts["ch01"] == counts["ch02"] == counts["ch09"] == 200 and counts["ch08"] == 70
    assert not set(train_texts) & set(eval_texts) and set(eval_labels) <= set(train_labels)
    assert abs(len(eval_texts) / 1318 - make_corpus.EVAL_FRACTION) < 0.03
    # Each text is a manual sentence, or no corpus sentence at all (another domain had it: dropped from both).
    domains = {" ".join(s.text.lower().split()): s.domain for s in corpus.load()}
    found = collections.Counter(domains.get(" ".join(t.lower().split())) for t in train_texts + eval_texts)
    assert set(found) == {"manual", None} and found[None] <= 5, found


def test_cleaning_rules():
    assert make_corpus.clean("a hand tool with a heavy rigid head") == "a hand tool with a heavy rigid head"
    assert make_corpus.clean("too short here") is None
    assert make_corpus.clean(" ".join(["word"] * 65)) is None
    assert make_corpus.clean("Run <b>this</b> now please friend") is None
    assert make_corpus.clean("Set x = 3 before calling it") is None
    assert make_corpus.clean("See https://example.org for the details") is None
    assert make_corpus.clean("No end punctuation in this one", need_end=True) is None
    assert make_corpus.section_label("contrib/net") == "net" and make_corpus.section_label("libs") == "libs"
