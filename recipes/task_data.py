"""The labelled files of the task path, read and checked against the teacher before any long work.

`read_task_files(train_files, eval_files, text_fields, label_field)` reads
comma-separated CSV / TSV / JSONL files with `recipes.labelled_data` (which
refuses ragged rows, rows without a label, missing columns, JSONL lines
without a label, and normalises "1" / "1.0" to one class) and refuses eval
labels that never occur in the training files. `match_teacher` then maps the
labels onto the teacher's classes:

- by name, when every label is one of the teacher's label names (numbers
  compared by value);
- by class id, when the teacher's names are Hugging Face's defaults
  (`LABEL_0`, `LABEL_1`, ...) and every label is an integer id of a class.

Anything else (a label the teacher does not know, a teacher trained on one
text column given two) is one `ValueError` line naming the problem.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

import numpy as np

from recipes.labelled_data import canonical_label, read_examples

_HF_DEFAULT = re.compile(r"LABEL_(\d+)")


@dataclasses.dataclass
class TaskData:
    """Texts (tuples of one or two strings) and class ids in the teacher's numbering."""

    train_texts: list
    train_labels: np.ndarray
    eval_texts: list
    eval_labels: np.ndarray
    label_names: list  # the teacher's, in class-id order
    mapping: str  # "name" or "id": how file labels became class ids
    files: dict  # {"train": [paths], "eval": [paths]}

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def summary(self) -> dict:
        seen = np.bincount(self.train_labels, minlength=self.num_classes)
        return {"train_examples": len(self.train_texts), "eval_examples": len(self.eval_texts),
                "classes": self.num_classes, "classes_in_train": int(np.sum(seen > 0)),
                "classes_in_eval": int(len(set(self.eval_labels.tolist()))), "label_mapping": self.mapping,
                "files": self.files}


def split_files(files, flag: str) -> list[str]:
    """The paths of a comma-separated flag value (or a list)."""
    paths = [p.strip() for p in (files.split(",") if isinstance(files, str) else files or ()) if p.strip()]
    if not paths:
        raise ValueError(f"{flag} names no files; the task path needs labelled CSV / TSV / JSONL files.")
    return paths


def _read_all(paths, text_fields, label_field):
    texts, labels = [], []
    for path in paths:
        t, l = read_examples(path, text_fields, label_field)
        texts += t
        labels += l
    return texts, labels


def read_task_files(train_files, eval_files, text_fields, label_field) -> tuple[list, list, list, list, dict]:
    """(train texts, train labels, eval texts, eval labels, files) with every check of `labelled_data`."""
    fields = [f for f in text_fields if f]
    if len(fields) not in (1, 2):
        raise ValueError(f"--text_fields names one text column or two (pairs); got {list(text_fields)}.")
    train_paths = split_files(train_files, "--train_files")
    eval_paths = split_files(eval_files, "--eval_files")
    train, train_y = _read_all(train_paths, fields, label_field)
    evaluation, eval_y = _read_all(eval_paths, fields, label_field)
    unseen = sorted(set(eval_y) - set(train_y))
    if unseen:
        shown = unseen if len(unseen) <= 10 else [*unseen[:10], f"... {len(unseen) - 10} more"]
        raise ValueError(f"Eval labels {shown} never occur in the training files; a student distilled on them "
                         "cannot be judged on those classes. Drop those eval rows or add training examples.")
    if len(set(train_y)) < 2:
        raise ValueError(f"The training files have only the label(s) {sorted(set(train_y))}; a classifier needs "
                         "two or more.")
    return train, train_y, evaluation, eval_y, {"train": train_paths, "eval": eval_paths}


def match_teacher(train_y, eval_y, label_names) -> tuple[np.ndarray, np.ndarray, str]:
    """(train ids, eval ids, "name" | "id") in the teacher's class order; ValueError if labels do not fit."""
    names = [str(n) for n in label_names]
    index = {canonical_label(n): i for i, n in enumerate(names)}  # file labels are canonical ("1.0" -> "1")
    if len(index) < len(names):
        index = {n: i for i, n in enumerate(names)}
    labels = set(train_y) | set(eval_y)
    if labels <= set(index):
        return (np.array([index[l] for l in train_y], np.int64), np.array([index[l] for l in eval_y], np.int64),
                "name")
    defaults = all(_HF_DEFAULT.fullmatch(n) and int(_HF_DEFAULT.fullmatch(n).group(1)) == i
                   for i, n in enumerate(names))
    ids = {l for l in labels if re.fullmatch(r"\d+", l)}
    if defaults and ids == labels and max(int(l) for l in labels) < len(names):
        return np.array([int(l) for l in train_y], np.int64), np.array([int(l) for l in eval_y], np.int64), "id"
    unknown = sorted(labels - set(index))
    shown = unknown if len(unknown) <= 8 else [*unknown[:8], f"... {len(unknown) - 8} more"]
    teacher = names if len(names) <= 12 else [*names[:12], "..."]
    raise ValueError(f"Labels {shown} of the data are not classes of the teacher, whose labels are {teacher}; "
                     "give the files the teacher was fine-tuned for (or its label names).")


def load(train_files, eval_files, text_fields, label_field, teacher_labels, teacher_text_fields=None) -> TaskData:
    """Reads, checks and maps the files onto the teacher's classes (see the module docstring)."""
    fields = [f for f in text_fields if f]
    if teacher_text_fields is not None and len(teacher_text_fields) != len(fields):
        kind = "sentence pairs" if len(teacher_text_fields) == 2 else "single texts"
        raise ValueError(f"The teacher was fine-tuned on {kind} ({list(teacher_text_fields)}) but --text_fields "
                         f"names {len(fields)} column(s) ({fields}); give {len(teacher_text_fields)}.")
    train, train_y, evaluation, eval_y, files = read_task_files(train_files, eval_files, fields, label_field)
    train_ids, eval_ids, mapping = match_teacher(train_y, eval_y, teacher_labels)
    return TaskData(train, train_ids, evaluation, eval_ids, list(teacher_labels), mapping, files)


def files_fingerprint(paths) -> list[str]:
    """SHA-256 (16 hex digits) of each file's bytes: a stage key that follows the data, not its path."""
    digests = []
    for path in paths:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digests.append(h.hexdigest()[:16])
    return digests
