"""The built-in English corpus: sentences from the Python standard library's docstrings.

Every machine that runs the project has them, so demos, calibration and
benchmarks need no network and no user data. `split` assigns each sentence to
one part by a hash of its text, so parts never overlap and stay the same
whatever else is added to the corpus.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import pkgutil
import re
import sys
import warnings

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


def split(sentences, fractions: dict[str, float]) -> dict[str, list[str]]:
    """Disjoint parts by a stable hash of each sentence, e.g. {"calibration": .1, "train": .8, "heldout": .1}."""
    total = sum(fractions.values())
    if total <= 0 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"fractions must be non-negative and sum to more than 0, got {fractions}.")
    bounds, running = [], 0.0
    for name, fraction in fractions.items():
        running += fraction / total
        bounds.append((running, name))
    parts = {name: [] for name in fractions}
    for sentence in sentences:
        position = int(_digest(sentence)[:8], 16) / 16**8
        name = next(name for bound, name in bounds if position < bound or bound == bounds[-1][0])
        parts[name].append(sentence)
    return parts
