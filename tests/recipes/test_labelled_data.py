"""`recipes.labelled_data`: labelled CSV / TSV / JSONL files, each bad input refused in one line before training."""

import json

import numpy as np
import pytest
from absl import app

from recipes import finetune, labelled_data


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def _jsonl(tmp_path, rows, name="data.jsonl"):
    return _write(tmp_path, name, "\n".join(json.dumps(r) for r in rows) + "\n")


def _finetune_flags(*argv):
    finetune.FLAGS.unparse_flags()
    finetune.FLAGS(["finetune", *argv])
    return finetune.check_flags(finetune.FLAGS)


def test_ragged_csv_rows_are_refused_with_their_line(tmp_path):
    # Before: csv.DictReader put the extra field under the key None, and a short row got label None.
    path = _write(tmp_path, "train.csv", "text,label\ngood film,pos\nslow, dull film,neg\nfine,pos\n")
    with pytest.raises(ValueError, match=r"train\.csv:3: 3 fields where the header has 2; quote fields that contain ','"):
        labelled_data.read_examples(path, ["text"], "label")
    short = _write(tmp_path, "short.csv", "text,label\ngood film,pos\nno label at all\n")
    with pytest.raises(app.UsageError, match=r"short\.csv:3: 1 fields where the header has 2"):
        _finetune_flags(f"--train_file={short}", "--text_fields=text")


def test_a_row_without_a_label_is_refused(tmp_path):
    path = _write(tmp_path, "train.csv", "text,label\ngood film,pos\nslow film,\nfine,neg\n")
    with pytest.raises(app.UsageError, match=r"train\.csv:3: no label \(column 'label' is empty\)"):
        _finetune_flags(f"--train_file={path}", "--text_fields=text")


def test_a_jsonl_line_without_a_label_is_refused(tmp_path):
    rows = [{"sentence": "good", "label": 1}, {"sentence": "bad", "label": 0}, {"sentence": "meh"}]
    path = _jsonl(tmp_path, rows)
    with pytest.raises(app.UsageError, match=r"data\.jsonl:3: no label \(field 'label' is missing or empty\)"):
        _finetune_flags(f"--train_file={path}")  # before: a raw KeyError


def test_missing_text_fields_list_the_available_columns(tmp_path):
    csv_path = _write(tmp_path, "train.csv", "text,label\nhello there,1\nhi again,0\n")
    with pytest.raises(app.UsageError, match=r"has no column\(s\) \['sentence'\]; its columns are \['label', 'text'\]"):
        _finetune_flags(f"--train_file={csv_path}")
    rows = [{"premise": "a", "hypothesis": "b", "label": 1}, {"hypothesis": "c", "label": 0}]
    path = _jsonl(tmp_path, rows)
    with pytest.raises(ValueError, match=r"data\.jsonl:2: no text in field\(s\) \['premise'\]; this line has"):
        labelled_data.read_examples(path, ["premise", "hypothesis"], "label")  # before: a raw KeyError
    with pytest.raises(ValueError, match=r"has no column\(s\) \['text'\]; its columns are \['hypothesis', 'label', 'premise'\]"):
        labelled_data.read_examples(path, ["text"], "label")


def test_numeric_labels_have_one_spelling(tmp_path):
    # Before: "1" and "1.0" were two classes (and JSON 1 vs "1" two more spellings of them).
    csv_path = _write(tmp_path, "train.csv", "text,label\na,1\nb,1.0\nc,0\nd,0.0\ne, 01 \n")
    texts, labels = labelled_data.read_examples(csv_path, ["text"], "label")
    assert labels == ["1", "1", "0", "0", "1"]
    path = _jsonl(tmp_path, [{"t": "a", "y": 1}, {"t": "b", "y": 1.0}, {"t": "c", "y": "1"}, {"t": "d", "y": 0}])
    _, labels = labelled_data.read_examples(path, ["t"], "y")
    assert labels == ["1", "1", "1", "0"]
    dev = _jsonl(tmp_path, [{"text": "f", "label": 1.0}, {"text": "g", "label": "0"}], name="dev.jsonl")
    settings = _finetune_flags(f"--train_file={csv_path}", f"--eval_file={dev}", "--text_fields=text")
    assert settings["label_names"] == ["0", "1"]
    spellings = ["1", "1.0", "01", "1e0", " 1 ", 1, 1.0, "+1.000"]
    assert {labelled_data.canonical_label(s) for s in spellings} == {"1"}
    assert [labelled_data.canonical_label(s) for s in ("0.50", "-0", "1.5", " abc ", True, "nan", "12345678901234567890")] \
        == ["0.5", "0", "1.5", "abc", "True", "nan", "12345678901234567890"]


def test_label_ids_order_numbers_by_value_and_name_unseen_eval_labels():
    names, train, evaluation = labelled_data.label_ids(["10", "2", "1", "2"], ["1", "10"])
    assert names == ["1", "2", "10"]
    np.testing.assert_array_equal(train, [2, 1, 0, 1])
    np.testing.assert_array_equal(evaluation, [0, 2])
    with pytest.raises(ValueError, match=r"Eval labels \['maybe', 'unsure'\] never occur in the training data"):
        labelled_data.label_ids(["yes", "no"], ["yes", "maybe", "unsure"])


def test_unseen_eval_labels_stop_finetune_before_training(tmp_path):
    train = _write(tmp_path, "train.csv", "text,label\na b,yes\nc d,no\n")
    dev = _write(tmp_path, "dev.csv", "text,label\ne f,yes\ng h,maybe\n")
    with pytest.raises(app.UsageError, match=r"Eval labels \['maybe'\] never occur"):
        _finetune_flags(f"--train_file={train}", f"--eval_file={dev}", "--text_fields=text")


def test_tsv_fields_keep_their_quotes(tmp_path):
    path = _write(tmp_path, "train.tsv", 'sentence\tlabel\n"hi" she said\t1\nit\'s "fine"\t0\n')
    texts, labels = labelled_data.read_examples(path, ["sentence"], "label")
    assert texts == [('"hi" she said',), ('it\'s "fine"',)] and labels == ["1", "0"]


def test_other_bad_files(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9 cr\xe8me,1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"is not UTF-8 text .*save it as UTF-8"):
        labelled_data.read_examples(str(latin), ["text"], "label")
    with pytest.raises(ValueError, match=r"is empty; it needs a header row"):
        labelled_data.read_examples(_write(tmp_path, "empty.csv", "\n"), ["text"], "label")
    with pytest.raises(ValueError, match=r"has no examples"):
        labelled_data.read_examples(_write(tmp_path, "header.csv", "text,label\n"), ["text"], "label")
    with pytest.raises(ValueError, match=r"data\.jsonl:1 is a JSON list, not an object"):
        labelled_data.read_examples(_write(tmp_path, "data.jsonl", "[1, 2]\n"), ["text"], "label")
    # A BOM (as spreadsheet programs write) is not part of the first column's name.
    bom = tmp_path / "bom.csv"
    bom.write_bytes("text,label\nok then,1\n".encode("utf-8-sig"))
    assert labelled_data.read_examples(str(bom), ["text"], "label") == ([("ok then",)], ["1"])
