"""Restartable stages for long recipes: one timing line per stage, finished stages skipped on re-run.

Each stage stores its result under `<directory>/stages/<name>/`: `result.json`
(a JSON-able dict) and whatever files it writes there (e.g. a saved model),
plus `done.json` holding a fingerprint of everything the result depends on
(the stage's own settings and the fingerprints of the stages it read). A
re-run with the same fingerprint loads the stored result instead of
recomputing it; a changed setting re-runs that stage and every stage after
it that depends on it. An interrupted stage never wrote `done.json`, so it
simply runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Callable, Optional


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-able parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Stage:
    """Handle passed to a stage function: where to put files, and the stage's fingerprint."""

    def __init__(self, name: str, directory: str, key: str):
        self.name, self.directory, self.key = name, directory, key

    def path(self, filename: str) -> str:
        return os.path.join(self.directory, filename)


class Pipeline:
    """Runs named stages in order, printing `[prefix] name: 12.3s` (or `skipped`) for each."""

    def __init__(self, directory: str, prefix: str = "recipe", log: Callable[[str], None] = None):
        self.root = os.path.join(directory, "stages")
        self.prefix = prefix
        self.log = log or (lambda line: print(line, flush=True))
        self.timings: dict[str, float] = {}
        self.skipped: list[str] = []

    def _dir(self, name):
        return os.path.join(self.root, name.replace("/", "__").replace(" ", "_"))

    def done(self, name: str, key: str) -> bool:
        marker = os.path.join(self._dir(name), "done.json")
        if not os.path.exists(marker):
            return False
        with open(marker) as f:
            return json.load(f).get("key") == key

    def run(self, name: str, fn: Callable[[Stage], dict], *depends_on: str, settings=None,
            cache: bool = True) -> dict:
        """The stage's result dict: stored if already done with the same key, else `fn(stage)`.

        `depends_on`: keys (fingerprints) of earlier results this stage uses;
        `settings`: JSON-able settings of this stage. `cache=False` always runs
        it (cheap stages whose result is not JSON, e.g. loading a model).
        """
        key = fingerprint(name, settings, depends_on)
        directory = self._dir(name)
        if cache and self.done(name, key):
            with open(os.path.join(directory, "result.json")) as f:
                result = json.load(f)
            self.skipped.append(name)
            self.log(f"[{self.prefix}] {name}: skipped (finished in an earlier run; delete {directory} to redo)")
            result["_key"] = key
            return result
        if cache and os.path.isdir(directory):
            shutil.rmtree(directory)  # stale or interrupted: start clean
        os.makedirs(directory, exist_ok=True)
        self.log(f"[{self.prefix}] {name} ...")
        start = time.perf_counter()
        result = fn(Stage(name, directory, key)) or {}
        seconds = time.perf_counter() - start
        self.timings[name] = seconds
        result = dict(result, seconds=round(seconds, 2))
        if cache:
            with open(os.path.join(directory, "result.json"), "w") as f:
                json.dump(result, f, indent=2, default=_jsonable)
            with open(os.path.join(directory, "done.json"), "w") as f:
                json.dump({"key": key, "seconds": seconds}, f)
        self.log(f"[{self.prefix}] {name}: {seconds:.1f}s")
        result["_key"] = key
        return result

    def directory(self, name: str) -> str:
        return self._dir(name)


class StagedJob:
    """Stage bookkeeping shared by the recipes' run classes: `self.pipe` (a Pipeline) and `self.results`."""

    pipe: Pipeline
    results: dict

    def _stage(self, name, fn, *depends, settings=None, cache=True) -> dict:
        result = self.pipe.run(name, fn, *depends, settings=settings, cache=cache)
        self.results[name] = result
        return result

    def _skipped(self, name: str) -> bool:
        return name in self.pipe.skipped

    def _path(self, stage: str, filename: str) -> str:
        return os.path.join(self.pipe.directory(stage), filename)


def _jsonable(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(value)


def stage_key(result: Optional[dict]) -> Optional[str]:
    return None if result is None else result.get("_key")
