"""The built-in English corpus: real text in five domains, plus labelled sets, shipped as a snapshot.

`load` reads `recipes/data/corpus.jsonl.gz` (built by `python -m tools.make_corpus`
from Debian packages; see recipes/data/README.md): sentences tagged with their
domain, deduplicated across domains. `split_parts` / `split` assign each
sentence to one part by a hash of its text alone, so parts never overlap and a
sentence's part stays the same whatever else is loaded (other domains
included). `labelled` gives the labelled sets (WordNet lexicographer files,
Debian sections, Debian Reference chapters). `stdlib_sentences` builds the docstring domain live from the
running Python.
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import importlib
import inspect
import io
import json
import os
import re
import sys
import warnings
from typing import NamedTuple

# Modules whose import has side effects (GUI, sound, network, interpreter state).
_SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3",
         "ensurepip", "venv", "pydoc_data", "__main__", "__hello__", "__phello__", "_pyrepl", "xxlimited"}

_SENTENCE_END = re.compile(r"(?<=[a-z0-9\)][.!?])\s+(?=[A-Z])")
_CODE_LIKE = re.compile(r"[=<>{}\[\]_`|\\#@*~^$]|::|->|\(\)|\.\w+\(|\b\w+\.\w+\b|\.\.\.")


def _docstrings():
    names = sorted(name for name in sys.stdlib_module_names if not name.startswith("_") and name not in _SKIP)
    for name in names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except Exception:  # platform-specific or optional modules
            continue
        yield inspect.getdoc(module) or ""
        for _, member in sorted(vars(module).items(), key=lambda kv: kv[0]):
            if (inspect.isclass(member) or inspect.isfunction(member)) and getattr(member, "__module__", None) == name:
                yield inspect.getdoc(member) or ""


def _sentences(text):
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        for sentence in _SENTENCE_END.split(paragraph):
            yield sentence.strip()


def _is_prose(sentence: str) -> bool:
    words = sentence.split()
    if not 6 <= len(words) <= 60 or not sentence[0].isupper() or sentence[-1] not in ".!?":
        return False
    if _CODE_LIKE.search(sentence):
        return False
    letters = sum(c.isalpha() for c in sentence)
    return letters / len(sentence) > 0.75


def stdlib_sentences(limit: int | None = None) -> list[str]:
    """Unique prose sentences from stdlib docstrings, in a deterministic order."""
    seen, result = set(), []
    for doc in _docstrings():
        for sentence in _sentences(doc):
            if sentence not in seen and _is_prose(sentence):
                seen.add(sentence)
                result.append(sentence)
    result.sort(key=_digest)
    return result[:limit] if limit else result


def _digest(sentence: str) -> str:
    return hashlib.sha256(sentence.encode()).hexdigest()


def split_bounds(fractions: dict[str, float]):
    """The bounds `part_of` takes (cumulative shares of the fractions): computed once for many texts."""
    total = sum(fractions.values())
    if not fractions or total <= 0 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"fractions must be non-negative and sum to more than 0, got {fractions}.")
    bounds, running = [], 0.0
    for name, fraction in fractions.items():
        running += fraction / total
        bounds.append((running, name))
    return bounds


def part_of(text: str, bounds) -> str:
    """The part (a key of the fractions) that `split` and `split_parts` put `text` in."""
    position = int(_digest(text)[:8], 16) / 16**8
    return next(name for bound, name in bounds if position < bound or bound == bounds[-1][0])


def split(sentences, fractions: dict[str, float]) -> dict[str, list[str]]:
    """Disjoint parts by a stable hash of each sentence, e.g. {"calibration": .1, "train": .8, "heldout": .1}."""
    return split_parts(sentences, fractions)


# -- the snapshot: domains and labelled sets ------------------------------------------

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
DOMAINS = ("wordnet", "debian", "stdlib", "manual", "bible")
TASKS = ("wordnet_lexname", "debian_section", "manual_chapter")
# The domain whose text each labelled set's texts are: keep a held-out domain's set out of compression.
TASK_DOMAINS = {"wordnet_lexname": "wordnet", "debian_section": "debian", "manual_chapter": "manual"}
SPLITS = ("train", "eval")
# Retrieval sets: (query, target) pairs of one domain's text; a query's answer is its own target among all.
RETRIEVAL_DOMAINS = {"wordnet_gloss": "wordnet"}


class Sentence(NamedTuple):
    text: str
    domain: str


def _data_file(name: str) -> str:
    path = os.path.join(DATA_DIR, name)
    if not os.path.isfile(path):
        raise ValueError(f"The corpus snapshot file {path} is missing; restore recipes/data/ from git "
                         "or rebuild it with `python -m tools.make_corpus`.")
    return path


@functools.lru_cache(maxsize=1)
def _snapshot() -> tuple[Sentence, ...]:
    with gzip.open(_data_file("corpus.jsonl.gz"), "rt", encoding="utf-8") as f:
        return tuple(Sentence(row["text"], row["domain"]) for row in map(json.loads, f))


def _check_domains(domains) -> tuple[str, ...]:
    if isinstance(domains, str):
        domains = [domains]
    domains = tuple(domains)
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown or not domains:
        raise ValueError(f"Unknown corpus domain(s) {unknown or list(domains)}; choose from {list(DOMAINS)}.")
    return domains


def load(domains=None) -> list[Sentence]:
    """The snapshot's sentences of `domains` (a name or names; default all), in a fixed order."""
    wanted = set(_check_domains(domains if domains is not None else DOMAINS))
    return [s for s in _snapshot() if s.domain in wanted]


def split_parts(sentences, fractions: dict[str, float]) -> dict[str, list]:
    """`split` for `Sentence`s (or plain strings): each one's part depends on its text only."""
    bounds = split_bounds(fractions)
    parts = {name: [] for name in fractions}
    for sentence in sentences:
        parts[part_of(sentence.text if isinstance(sentence, Sentence) else sentence, bounds)].append(sentence)
    return parts


def _check_task(name: str, split_name: str | None = None) -> None:
    if name not in TASKS:
        raise ValueError(f"Unknown labelled set {name!r}; choose from {list(TASKS)}.")
    if split_name is not None and split_name not in SPLITS:
        raise ValueError(f"Unknown split {split_name!r} of {name}; choose from {list(SPLITS)}.")


@functools.lru_cache(maxsize=8)
def _task_csv(name: str, split_name: str) -> str:
    with gzip.open(_data_file(f"{name}.{split_name}.csv.gz"), "rt", encoding="utf-8", newline="") as f:
        return f.read()


def labelled(name: str, split: str) -> tuple[list[str], list[str]]:
    """(texts, labels) of a labelled set (one of `TASKS`) and split ("train", "eval")."""
    _check_task(name, split)
    rows = list(csv.DictReader(io.StringIO(_task_csv(name, split))))
    return [r["text"] for r in rows], [r["label"] for r in rows]


@functools.lru_cache(maxsize=4)
def retrieval_pairs(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(queries, targets) of a retrieval set (one of `RETRIEVAL_DOMAINS`): row i's answer is targets[i]."""
    if name not in RETRIEVAL_DOMAINS:
        raise ValueError(f"Unknown retrieval set {name!r}; choose from {list(RETRIEVAL_DOMAINS)}.")
    with gzip.open(_data_file(f"{name}.pairs.csv.gz"), "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return tuple(r["query"] for r in rows), tuple(r["target"] for r in rows)


def write_task_csv(name: str, out_dir: str) -> tuple[str, str]:
    """`out_dir`/train.csv and `out_dir`/eval.csv (columns text,label) of a labelled set; returns their paths."""
    _check_task(name)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for split_name in SPLITS:
        path = os.path.join(out_dir, f"{split_name}.csv")
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(_task_csv(name, split_name))
        paths.append(path)
    return tuple(paths)


def manifest() -> dict:
    """The snapshot's provenance and counts (recipes/data/manifest.json)."""
    with open(_data_file("manifest.json"), encoding="utf-8") as f:
        return json.load(f)
