"""Every ```python block of README.md and docs/*.md runs, so the documentation cannot rot.

Namespaces (decided here, once):
- README.md: every block runs on its own, in a fresh namespace. A quickstart
  example must work when copied alone.
- docs/*.md: the blocks of one guide run in order in ONE namespace, because a
  guide is a walk-through (a later block may use the model an earlier one
  built). Each guide starts from an empty namespace.

Each document runs in its own temporary working directory (files a block
writes land there) and in the float32 Keras policy, which is restored
afterwards, whatever a block set. Blocks fenced as anything other than
```python (```bash, ```text) are not run; a fence language outside
`FENCES` fails, so that a misspelt ```Python cannot skip its block silently.
Keep blocks fast: tiny shapes, a couple of training steps, TFLite
conversions of tiny models only (the whole file runs in well under a minute
on one core).
"""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDES = sorted((ROOT / "docs").glob("*.md"))
DOCUMENTS = [README] + GUIDES
README_MAX_LINES = 150
FENCES = {"python", "bash", "text"}

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _name(path: pathlib.Path) -> str:
    return path.relative_to(ROOT).as_posix()


def code_blocks(path: pathlib.Path, language: str = "python") -> list[tuple[int, str]]:
    """(line number of the first code line, code) of every block fenced with `language`."""
    text = path.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, match.start(2)) + 1, match.group(2))
        for match in _FENCE.finditer(text)
        if match.group(1).strip() == language
    ]


def _run(path: pathlib.Path, line: int, code: str, namespace: dict) -> None:
    # Padded so that a traceback names the line in the markdown file.
    exec(compile("\n" * (line - 1) + code, str(path), "exec"), namespace)


@pytest.fixture
def doc_environment(tmp_path, monkeypatch):
    import tf_keras as keras

    monkeypatch.chdir(tmp_path)
    keras.mixed_precision.set_global_policy("float32")
    yield tmp_path
    keras.mixed_precision.set_global_policy("float32")
    keras.backend.clear_session()


@pytest.mark.parametrize("path", DOCUMENTS, ids=_name)
def test_python_blocks_run(path, doc_environment):
    blocks = code_blocks(path)
    assert blocks, f"{_name(path)} has no ```python block"
    shared = {"__name__": "__docs__"}
    for line, code in blocks:
        namespace = {"__name__": "__docs__"} if path == README else shared
        _run(path, line, code, namespace)


@pytest.mark.parametrize("path", DOCUMENTS, ids=_name)
def test_fences_are_known_languages(path):
    text = path.read_text(encoding="utf-8")
    languages = {match.group(1).strip() for match in _FENCE.finditer(text)}
    assert languages <= FENCES, f"{_name(path)}: unknown fence language(s) {sorted(languages - FENCES)}"
    assert text.count("```") % 2 == 0, f"{_name(path)}: unbalanced ``` fences"


@pytest.mark.parametrize("path", DOCUMENTS, ids=_name)
def test_relative_links_resolve(path):
    text = path.read_text(encoding="utf-8")
    missing = [
        target for target in _LINK.findall(text)
        if "://" not in target and not target.startswith("mailto:") and not (path.parent / target).exists()
    ]
    assert not missing, f"{_name(path)} links to files that do not exist: {missing}"


def test_readme_is_a_quickstart():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; keep it <= {README_MAX_LINES}"
    assert GUIDES, "docs/ has no guides"
    text = "\n".join(lines)
    unlinked = [_name(guide) for guide in GUIDES if f"({_name(guide)})" not in text]
    assert not unlinked, f"README.md does not link to {unlinked}"


def test_block_extraction(tmp_path):
    sample = tmp_path / "sample.md"
    sample.write_text("intro\n```python\na = 1\n```\n\n```bash\nmake test\n```\n```python\nb = a + 1\n```\n")
    assert code_blocks(sample) == [(3, "a = 1\n"), (10, "b = a + 1\n")]
    assert code_blocks(sample, "bash") == [(7, "make test\n")]
