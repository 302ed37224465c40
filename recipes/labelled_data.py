"""Labelled examples from CSV / TSV / JSONL files, with one clear error per problem before any long work.

CSV and TSV (by extension) have a header row; TSV fields are not quoted (a
`"` is an ordinary character there, as in GLUE's files). JSONL is one object
per line. A problem names the file, the line and what to do:

- a text or label column that does not exist (the available ones are listed);
- a CSV / TSV row with more or fewer fields than the header;
- a row with an empty or missing label, a JSONL line that is not an object;
- eval labels that never occur in the training data (`label_ids`).

Labels are strings. Numeric labels are normalised to one canonical form
(`canonical_label`): "1", "1.0", "01", "1e0", 1 and 1.0 are all "1", and
"0.50" is "0.5", so a column that mixes the spellings has one class per
value. Other labels are kept as written, without surrounding spaces.
"""

from __future__ import annotations

import csv
import decimal
import json
import os
import re

import numpy as np

EXTENSIONS = (".csv", ".tsv", ".jsonl", ".json")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def canonical_label(value) -> str:
    """One spelling per numeric label value (integral: no decimals; else no trailing zeros); other labels stripped."""
    text = value.strip() if isinstance(value, str) else str(value)
    if isinstance(value, bool) or not _NUMBER.fullmatch(text):
        return text
    number = decimal.Decimal(text)
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")


def _columns(path: str, available, wanted) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise ValueError(f"{path!r} has no column(s) {missing}; its columns are {sorted(available)}. "
                         "Set --text_fields / --label_field to some of these.")


def _read_table(path: str, delimiter: str, text_fields, label_field: str):
    quoting = {"quoting": csv.QUOTE_NONE} if delimiter == "\t" else {}
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, **quoting)
        header = next((row for row in reader if row), None)
        if header is None:
            raise ValueError(f"{path!r} is empty; it needs a header row and examples.")
        header = [name.strip() for name in header]
        _columns(path, header, (*text_fields, label_field))
        where = {name: header.index(name) for name in (*text_fields, label_field)}
        texts, labels = [], []
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line
            if len(row) != len(header):
                raise ValueError(
                    f"{path}:{line}: {len(row)} fields where the header has {len(header)}; "
                    f"quote fields that contain {delimiter!r}" + (" (or use a .tsv file)" if delimiter == "," else "")
                    + ", or fix the row.")
            label = row[where[label_field]].strip()
            if not label:
                raise ValueError(f"{path}:{line}: no label (column {label_field!r} is empty); "
                                 "label every example or drop the row.")
            texts.append(tuple(row[where[c]] for c in text_fields))
            labels.append(canonical_label(label))
    return texts, labels


def _read_jsonl(path: str, text_fields, label_field: str):
    texts, labels = [], []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not a JSON object ({error}).") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number} is a JSON {type(row).__name__}, not an object; "
                                 "give one object per line.")
            if not texts:  # the first example names the fields
                _columns(path, row, text_fields)
            absent = [c for c in text_fields if not isinstance(row.get(c), (str, int, float))]
            if absent:
                raise ValueError(f"{path}:{number}: no text in field(s) {absent}; this line has {sorted(row)}.")
            label = row.get(label_field)
            if label is None or (isinstance(label, str) and not label.strip()):
                raise ValueError(f"{path}:{number}: no label (field {label_field!r} is missing or empty); "
                                 "label every example or drop the line.")
            if not isinstance(label, (str, int, float)):
                raise ValueError(f"{path}:{number}: label {label!r} is not a string or a number.")
            texts.append(tuple(str(row[c]) for c in text_fields))
            labels.append(canonical_label(label))
    return texts, labels


def read_examples(path: str, text_fields, label_field: str) -> tuple[list[tuple[str, ...]], list[str]]:
    """(texts, labels) of a CSV / TSV / JSONL file: a tuple of `text_fields` values and a canonical label each."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in EXTENSIONS:
        raise ValueError(f"{path!r}: use a .csv, .tsv or .jsonl file (got {extension or 'no extension'}).")
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} does not exist.")
    try:
        if extension in (".jsonl", ".json"):
            texts, labels = _read_jsonl(path, text_fields, label_field)
        else:
            texts, labels = _read_table(path, "\t" if extension == ".tsv" else ",", text_fields, label_field)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path!r} is not UTF-8 text ({error.reason} at byte {error.start}); "
                         "save it as UTF-8.") from None
    if not texts:
        raise ValueError(f"{path!r} has no examples.")
    return texts, labels


def _sort_key(label: str):
    return decimal.Decimal(label)


def label_ids(train_labels, eval_labels) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(class names, train ids, eval ids). Numeric names sort by value, others alphabetically."""
    names = sorted({canonical_label(str(l)) for l in train_labels})
    if all(_NUMBER.fullmatch(n) for n in names):
        names.sort(key=_sort_key)
    index = {n: i for i, n in enumerate(names)}
    train = [canonical_label(str(l)) for l in train_labels]
    evaluation = [canonical_label(str(l)) for l in eval_labels]
    unknown = sorted(set(evaluation) - set(index))
    if unknown:
        shown = unknown if len(unknown) <= 10 else [*unknown[:10], f"... {len(unknown) - 10} more"]
        raise ValueError(f"Eval labels {shown} never occur in the training data (whose labels are "
                         f"{names[:20]}{' ...' if len(names) > 20 else ''}); a classifier cannot predict them.")
    return names, np.array([index[l] for l in train]), np.array([index[l] for l in evaluation])
