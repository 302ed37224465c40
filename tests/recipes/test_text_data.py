"""`recipes.text_data`: which files are text, how files become sentences (both layouts), and the recipe's checks."""

import os
import random
import shutil
import textwrap

import pytest
from absl import app

import bert.data
from recipes import compress, text_data

SAMPLE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "pretraining_sample.txt")
BINARY = shutil.which("ls") or "/bin/ls"


def _glosses(n, seed=0):
    """`n` distinct WordNet-like glosses: lower case, no end punctuation, 3-20 words."""
    rng = random.Random(seed)
    words = ("a the of small animal tool used for making cutting water light heavy person who works in "
             "with by moving quickly state being feeling strong any plant having leaves").split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 20))) + f" {i}" for i in range(n)]


@pytest.fixture
def no_tensorflow_splitting(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("file_sentences called the TensorFlow splitter")

    monkeypatch.setattr(bert.data, "split_sentences", refuse)


# -- which files are text ---------------------------------------------------------------


def test_binary_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"--train_files: '.*' is not a text file \(binary data\)"):
        text_data.check_files(BINARY, "--train_files")
    latin = tmp_path / "random.dat"  # no NUL byte, but mostly bytes that are not UTF-8
    latin.write_bytes(bytes(random.Random(0).randrange(128, 256) for _ in range(5000)))
    with pytest.raises(ValueError, match="is not a text file"):
        text_data.check_files(str(latin), "--eval_files")
    accents = tmp_path / "accents.txt"
    accents.write_text("Un café crème à l'hôtel, s'il vous plaît.\nZürich liegt am See.\n", encoding="utf-8")
    assert text_data.check_files(f"{accents},{SAMPLE}", "--train_files") == [str(accents), SAMPLE]


def _compress_flags(*argv):
    compress.FLAGS.unparse_flags()
    compress.FLAGS(["compress", *argv])
    return compress.check_flags(compress.FLAGS)


def test_compress_refuses_binary_training_text_and_unwritable_report_dirs(tmp_path):
    with pytest.raises(app.UsageError, match=r"is not a text file \(binary data\)"):
        _compress_flags(f"--train_files={BINARY}", f"--report_dir={tmp_path}")
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    with pytest.raises(app.UsageError, match=r"--report_dir: '.*taken' is a file, not a directory"):
        _compress_flags(f"--report_dir={a_file}")
    with pytest.raises(app.UsageError, match=r"--report_dir: '.*taken/sub' is below '.*taken', which is a file"):
        _compress_flags(f"--report_dir={a_file}/sub")
    with pytest.raises(app.UsageError, match=r"--report_dir: '/proc/x' cannot be created or written"):
        _compress_flags("--report_dir=/proc/x")
    settings = _compress_flags(f"--report_dir={tmp_path / 'new' / 'dir'}")
    assert settings.report_dir == str(tmp_path / "new" / "dir") and not (tmp_path / "new").exists()


# -- files to sentences -------------------------------------------------------------------


def test_python_splitter_agrees_with_the_in_graph_one():
    texts = ["First one. Second one! Third? Yes.", 'He said "stop." Then left.', "Pi is 3.14 and U.S.A. is long.",
             "Wait\u2026 what (really.) ok", "e.g. this ends early. Dr. Watson came.", "  no end here  ",
             "Tabs.\tand\nnewlines. end", "...", "Trailing space. "]
    for text in texts:
        expected = [s.decode() for s in bert.data.split_sentences(text).numpy()]
        assert text_data.split_sentences(text) == expected, text


def test_one_gloss_per_line_gives_one_sentence_per_line(tmp_path, no_tensorflow_splitting):
    """Issue 16.7: 9,000 glosses without final periods used to merge into a few giant 'sentences'."""
    glosses = _glosses(9000)
    per_line, per_paragraph = tmp_path / "lines.txt", tmp_path / "paragraphs.txt"
    per_line.write_text("\n".join(glosses) + "\n")
    per_paragraph.write_text("\n\n".join(glosses) + "\n")
    logged = []
    assert text_data.file_sentences([str(per_line)], log=logged.append) == glosses
    assert text_data.file_sentences([str(per_paragraph)], log=logged.append) == glosses
    assert logged == [f"[text] {per_line}: 9000 sentences (a line break ends a sentence)",
                      f"[text] {per_paragraph}: 9000 sentences (a line break ends a sentence)"]


def test_wrapped_prose_is_joined_within_paragraphs(no_tensorflow_splitting):
    logged = []
    sentences = text_data.file_sentences([SAMPLE], log=logged.append)
    assert "Fishing boats leave the quay at four in the morning, their engines coughing in the cold air." in sentences
    assert "The worst storm, in the winter of her tenth year, took the roof off the barn!" in sentences
    # No sentence is a piece of a wrapped line, and every one ends at end punctuation.
    assert not any(s.startswith("quay at four") for s in sentences)
    assert all(s[-1] in ".!?\"'" for s in sentences), [s for s in sentences if s[-1] not in ".!?\"'"]
    assert logged == [f"[text] {SAMPLE}: {len(sentences)} sentences (wrapped prose: lines joined within paragraphs)"]


def test_layout_detection():
    glosses = _glosses(300)
    assert not text_data.is_wrapped(glosses)
    assert text_data.is_wrapped(textwrap.fill(" ".join(g + "." for g in glosses), 72).splitlines())
    # Wrapped glosses without final periods, one paragraph each, are still prose wrapped at a width.
    assert text_data.is_wrapped("\n\n".join(textwrap.fill(g, 60) for g in glosses).splitlines())
    # One sentence per line, punctuated: either reading gives the same sentences.
    lines = [g.capitalize() + "." for g in glosses]
    units, _ = text_data.text_units("\n".join(lines))
    assert [s for u in units for s in text_data.split_sentences(u)] == lines


def test_sentence_parts_of_user_files_report_each_file(tmp_path, capsys):
    path = tmp_path / "glosses.txt"
    path.write_text("\n".join(_glosses(500)))
    parts = text_data.sentence_parts(str(path))
    assert sum(map(len, parts.values())) == 500
    assert f"[text] {path}: 500 sentences" in capsys.readouterr().out
