r"""Build the committed multi-domain corpus snapshot (`recipes/data/`) from Debian packages.

    python -m tools.make_corpus                          # rebuild recipes/data/ (apt-get, dpkg-deb, network; root)
    python -m tools.make_corpus --retrieval_only         # add only the retrieval sets (downloads wordnet-base)
    python -m tools.make_corpus --export_task=wordnet_lexname --out_dir=/tmp/wn
        # /tmp/wn/train.csv and /tmp/wn/eval.csv (columns text,label) from the committed snapshot, for
        # --train_files=/tmp/wn/train.csv --eval_files=/tmp/wn/eval.csv --text_fields=text --label_field=label

Sources (real text people wrote; see recipes/data/README.md for versions and licenses):

  wordnet  WordNet 3.0 glosses and example sentences         (Debian wordnet-base)
  debian   Debian package long descriptions                  (the archive's Packages + Translation-en)
  stdlib   the Python standard library's docstrings          (`recipes.corpus.stdlib_sentences`)
  manual   the Debian Reference manual, prose paragraphs     (debian-reference-en)
  bible    the King James Bible, one verse per row           (bible-kjv-text, read with bible-kjv)

Labelled sets (labels the sources assigned):

  wordnet_lexname  a synset's definition -> its lexicographer file (noun.animal, verb.motion, ...)
  debian_section   a package's synopsis + first description sentence -> its archive Section
  manual_chapter   a sentence of the Debian Reference -> its chapter (ch01 ... ch12)

Retrieval sets (pairs the sources made):

  wordnet_gloss    a synset's example sentence -> the synset's definition

Every step is deterministic: sentences are chosen and split by SHA-256 of their
text, rows are written in a fixed order and the gzip headers carry no time, so
the same package versions give byte-identical files.
"""

from __future__ import annotations

import collections
import csv
import glob
import gzip
import hashlib
import io
import json
import os
import platform
import re
import subprocess
import tempfile

from absl import app, flags

# Its own flag set, like the recipes: importing this module beside a benchmark (tests) defines no global flags.
FLAGS = flags.FlagValues()
flags.DEFINE_string("out_dir", None, "Where the snapshot goes (default: recipes/data), or the CSVs with "
                    "--export_task.", flag_values=FLAGS)
flags.DEFINE_integer("per_domain", 15000, "Most sentences kept per domain (chosen by a hash of the text).",
                     flag_values=FLAGS)
flags.DEFINE_integer("per_class", 400, "Most examples kept per label in each labelled set (chosen by hash).",
                     flag_values=FLAGS)
flags.DEFINE_integer("min_class", 150, "Labels with fewer examples than this are dropped from a labelled set.",
                     flag_values=FLAGS)
flags.DEFINE_string("export_task", None, "Write train.csv / eval.csv of this labelled set (from the committed "
                    "snapshot) to --out_dir instead of rebuilding.", flag_values=FLAGS)
flags.DEFINE_integer("retrieval_pairs", 2000, "Pairs kept in each retrieval set (chosen by a hash of the "
                     "target).", flag_values=FLAGS)
flags.DEFINE_bool("retrieval_only", False, "Add the retrieval sets to the committed snapshot from the same "
                  "wordnet-base version, leaving every other file as it is (downloads only wordnet-base).",
                  flag_values=FLAGS)
flags.DEFINE_string("workdir", None, "Keep downloads here (default: a temporary directory, removed afterwards).",
                    flag_values=FLAGS)

PACKAGES = ("wordnet-base", "debian-reference-en", "bible-kjv-text", "bible-kjv")
EVAL_FRACTION = 0.15
MIN_WORDS, MAX_WORDS = 4, 64

# Markup and code: tags, entities, braces, shell/regex/programming punctuation, URLs.
_CODE_LIKE = re.compile(r"[<>{}\[\]=\\|`#$@^~*_]|::|->|\(\)|&\w+;|https?:|www\.|\w\.\w+\(")
# Sentence end: a lower-case letter, digit or closing bracket/quote, end punctuation, space, a capital.
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\"'][.!?])\s+(?=[\"(]?[A-Z])")
_END = re.compile(r"[.!?][\"')]*$")


# -- cleaning ---------------------------------------------------------------


def key(text: str) -> str:
    """What counts as the same sentence: the models are uncased, so case and spacing do not."""
    return " ".join(text.lower().split())


def digest(text: str, salt: str = "") -> str:
    return hashlib.sha256((salt + text).encode()).hexdigest()


def clean(text: str, need_end: bool = False) -> str | None:
    """`text` with single spaces if it is a prose sentence of 4-64 words, else None."""
    text = " ".join(text.split())
    words = text.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS or _CODE_LIKE.search(text):
        return None
    if not (text[0].isalnum() or text[0] in "\"'(") or any(ord(c) < 32 for c in text):
        return None
    if need_end and not _END.search(text):
        return None
    if sum(c.isalpha() for c in text) / len(text) < 0.7:
        return None
    return text


def sentences_of(paragraph: str, need_end: bool = True):
    for sentence in _SENTENCE_END.split(" ".join(paragraph.split())):
        sentence = clean(sentence, need_end)
        if sentence:
            yield sentence


# -- sources ------------------------------------------------------------------


def lexnames(manpage: str) -> dict[int, str]:
    """{lexicographer file number: name} from WordNet's lexnames(5WN) manual page."""
    names = {}
    for line in manpage.splitlines():
        match = re.match(r"^(\d\d)\s+((?:noun|verb|adj|adv)\.\w+)\s", line)
        if match:
            names[int(match.group(1))] = match.group(2)
    return names


def wordnet_synsets(lines, names: dict[int, str]):
    """(lexname, definition, [examples]) of each synset line of a WordNet data.* file.

    A data line is `offset lex_filenum ss_type ... | gloss`; the gloss is a
    definition followed by examples in double quotes, separated by semicolons.
    """
    for line in lines:
        if line.startswith("  ") or " | " not in line:  # the license header
            continue
        fields, gloss = line.split(" | ", 1)
        gloss = gloss.strip()
        quote = gloss.find('"')
        definition = (gloss[:quote] if quote >= 0 else gloss).strip().rstrip(";").strip()
        examples = re.findall(r'"([^"]+)"', gloss[quote:]) if quote >= 0 else []
        yield names[int(fields.split()[1])], definition, examples


def debian_records(text: str):
    """The `Field: value` stanzas of an apt index (Packages / Translation-en), continuation lines kept."""
    for stanza in text.split("\n\n"):
        record, field = {}, None
        for line in stanza.split("\n"):
            if line.startswith((" ", "\t")) and field:
                record[field] += "\n" + line
            elif ":" in line:
                field, value = line.split(":", 1)
                record[field] = value.strip()
        if record:
            yield record


def description_paragraphs(long_description: str):
    """Prose paragraphs of a Debian long description: ' .' separates them; lists and verbatim lines are skipped."""
    paragraph = []
    for line in long_description.split("\n"):
        if line.strip() == "." or line.startswith("  ") or re.match(r"^\s*([-*+o]|\d+[.)])\s", line):
            if paragraph:
                yield " ".join(paragraph)
            paragraph = []
        else:
            paragraph.append(line.strip())
    if paragraph:
        yield " ".join(paragraph)


def section_label(section: str) -> str:
    """'contrib/net' and 'non-free/net' are the section 'net'."""
    return section.rsplit("/", 1)[-1]


_CHAPTER = re.compile(r"Chapter (\d+)\. \S.*")
_APPENDIX = re.compile(r"Appendix [A-Z]\. \S.*")


def manual_chapter_paragraphs(text: str):
    """(chapter, paragraph) of each prose paragraph of the Debian Reference's text rendering.

    Prose paragraphs are the 4-space indented blocks (code, tables, lists skipped). The chapter is
    "chNN" from the last heading line `Chapter N. Title` above the paragraph; None in the preface
    (before chapter 1) and the appendix (after `Appendix A. ...`).
    """
    text = text.replace("\xa0", " ")  # the rendering indents some lines and spaces headings with no-break spaces
    chapter = None
    for block in re.split(r"\n\s*\n", text):
        heading = _CHAPTER.fullmatch(block.strip())
        if heading or _APPENDIX.fullmatch(block.strip()):
            chapter = f"ch{int(heading.group(1)):02d}" if heading else None
            continue
        lines = block.split("\n")
        if all(re.match(r"^ {4}[A-Za-z0-9\"'(]", line) for line in lines):
            yield chapter, " ".join(line.strip() for line in lines)


def manual_paragraphs(text: str):
    """Prose paragraphs of the Debian Reference's text rendering, chapters or not."""
    return (paragraph for _, paragraph in manual_chapter_paragraphs(text))


# -- building -------------------------------------------------------------------


def _run(*command, **kwargs):
    try:
        return subprocess.run(command, check=True, capture_output=True, text=True, **kwargs).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        detail = (getattr(error, "stderr", None) or str(error)).strip().splitlines()[-1:]
        raise app.UsageError(f"`{' '.join(command[:2])}` failed ({' '.join(detail)}); rebuilding the snapshot needs "
                             "Debian's apt-get and dpkg-deb, root (for apt-get update) and the network.") from None


def fetch(workdir: str, packages=PACKAGES) -> dict:
    """Downloads and unpacks the packages and the archive's English descriptions; returns provenance."""
    lists = os.path.join(workdir, "lists")
    os.makedirs(os.path.join(lists, "partial"), exist_ok=True)
    # Our own index and cache directories: the machine's apt state is left untouched; Translation-en
    # carries the long descriptions that `apt-cache dumpavail` lacks when languages are disabled.
    apt = ["-o", f"Dir::State::Lists={lists}", "-o", f"Dir::Cache={os.path.join(workdir, 'cache')}",
           "-o", "Acquire::Languages=en", "-o", "Debug::NoLocking=1"]
    os.makedirs(os.path.join(workdir, "cache", "archives", "partial"), exist_ok=True)
    _run("apt-get", *apt, "update")
    debs = os.path.join(workdir, "debs")
    os.makedirs(debs, exist_ok=True)
    _run("apt-get", *apt, "download", *packages, cwd=debs)
    versions, root = {}, os.path.join(workdir, "root")
    for deb in sorted(glob.glob(os.path.join(debs, "*.deb"))):
        versions[_run("dpkg-deb", "-f", deb, "Package").strip()] = _run("dpkg-deb", "-f", deb, "Version").strip()
        _run("dpkg-deb", "-x", deb, root)
    releases = {}
    for path in sorted(glob.glob(os.path.join(lists, "*_InRelease"))):
        with open(path, errors="replace") as f:
            head = dict(re.findall(r"^(Suite|Date): (.*)$", f.read(4000), re.M))
        releases[head.get("Suite", os.path.basename(path))] = head.get("Date")
    return dict(root=root, lists=lists, versions=versions, releases=releases)


def _index_text(path: str) -> str:
    return _run("/usr/lib/apt/apt-helper", "cat-file", path)


def _lists(lists: str, kind: str) -> list[str]:
    return sorted(p for p in glob.glob(os.path.join(lists, f"*_{kind}*")) if "_main_" in p)


def read_wordnet(root: str) -> list[tuple[str, str, list[str]]]:
    """(lexname, definition, [examples]) of every synset of an unpacked wordnet-base, in file order."""
    with gzip.open(os.path.join(root, "usr/share/man/man5/lexnames.5WN.gz"), "rt") as f:
        names = lexnames(f.read())
    synsets = []
    for part in ("noun", "verb", "adj", "adv"):
        with open(os.path.join(root, f"usr/share/wordnet/data.{part}"), encoding="utf-8") as f:
            synsets.extend(wordnet_synsets(f, names))
    return synsets


def build_wordnet(synsets):
    """The wordnet domain's sentences and the (definition, lexname) pairs of its labelled set."""
    sentences, labelled = [], []
    for lexname, definition, examples in synsets:
        for text in (definition, *examples):
            text = clean(text)
            if text:
                sentences.append(text)
        definition = clean(definition)
        if definition:
            labelled.append((definition, lexname))
    return sentences, labelled


def gloss_pairs(synsets) -> list[tuple[str, str]]:
    """(example sentence, its synset's definition): the first example of each synset that cleans.

    A text that two synsets share (as example or as definition) cannot say which answer is right, so its
    pairs are dropped, as is a pair whose example is its definition.
    """
    pairs = []
    for _, definition, examples in synsets:
        definition = clean(definition)
        example = next((e for e in map(clean, examples) if e), None)
        if definition and example and key(example) != key(definition):
            pairs.append((example, definition))
    uses = collections.Counter(key(text) for pair in pairs for text in pair)
    return [(q, t) for q, t in pairs if uses[key(q)] == 1 and uses[key(t)] == 1]


def retrieval_pairs(synsets) -> dict[str, list[tuple[str, str]]]:
    """{retrieval set: every (query, target) pair found} (RETRIEVAL_DOMAINS names the sets)."""
    return {"wordnet_gloss": gloss_pairs(synsets)}


def retrieval_set(pairs, count: int) -> list[tuple[str, str]]:
    """Up to `count` pairs chosen by SHA-256("retrieval:" + target), in the order of SHA-256(query)."""
    chosen = sorted(pairs, key=lambda pair: digest(pair[1], "retrieval:"))[:count]
    return sorted(chosen, key=lambda pair: digest(pair[0]))


def build_debian(lists: str):
    sections = {}
    for path in _lists(lists, "Packages"):
        for record in debian_records(_index_text(path)):
            if "Section" in record and "Description-md5" in record:
                sections.setdefault((record["Package"], record["Description-md5"]), section_label(record["Section"]))
    sentences, labelled = [], {}
    for path in _lists(lists, "Translation-en"):
        for record in debian_records(_index_text(path)):
            section = sections.get((record.get("Package"), record.get("Description-md5")))
            synopsis, _, body = record.get("Description-en", "").partition("\n")
            paragraphs = list(description_paragraphs(body))
            found = [s for p in paragraphs for s in sentences_of(p)]
            sentences.extend(found)
            if section is None:
                continue
            synopsis = " ".join(synopsis.split())
            text = clean(f"{synopsis}. {found[0]}" if found else synopsis)
            if text:
                # Sibling packages (one per architecture, flavour, ...) share a description with a templated
                # synopsis: keep one text per description and section, so near-copies do not fill both splits.
                group = (key(found[0]) if found else key(synopsis), section)
                if group not in labelled or digest(text) < digest(labelled[group]):
                    labelled[group] = text
    return sentences, [(text, section) for (_, section), text in sorted(labelled.items())]


def manual_sentences(text: str):
    """(sentences, labelled): every prose sentence of the manual, and (sentence, chapter) of those in a chapter."""
    sentences, labelled = [], []
    for chapter, paragraph in manual_chapter_paragraphs(text):
        for sentence in sentences_of(paragraph):
            sentences.append(sentence)
            if chapter:
                labelled.append((sentence, chapter))
    return sentences, labelled


def build_manual(root: str):
    with gzip.open(os.path.join(root, "usr/share/debian-reference/debian-reference.en.txt.gz"), "rt") as f:
        return manual_sentences(f.read())


def build_bible(root: str):
    verses = _run(os.path.join(root, "usr/bin/bible"), "-f", "-p", os.path.join(root, "usr/lib"), "gen1:1-rev22:21")
    result = []
    for line in verses.splitlines():
        text = clean(line.split(" ", 1)[1]) if " " in line else None  # "Ge1:1 In the beginning ..."
        if text:
            result.append(text)
    return result


def build_stdlib():
    from recipes import corpus

    return corpus.stdlib_sentences()


def choose(texts, limit: int, salt: str) -> list[str]:
    """Up to `limit` texts, chosen by a salted hash (so the choice is independent of the split hash)."""
    return sorted(texts, key=lambda t: digest(t, salt))[:limit]


def deduplicated(by_domain: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each domain's unique texts; a text (case- and space-insensitive) found in two domains is dropped from both."""
    owners = collections.defaultdict(set)
    unique = {}
    for domain, texts in by_domain.items():
        unique[domain] = {}
        for text in texts:
            unique[domain].setdefault(key(text), text)
            owners[key(text)].add(domain)
    return {d: [t for k, t in texts.items() if len(owners[k]) == 1] for d, texts in unique.items()}


def labelled_set(pairs, per_class: int, min_class: int, salt: str) -> dict[str, list[tuple[str, str]]]:
    """{"train", "eval"} rows of (text, label): texts with one label only, rare labels dropped, big ones capped."""
    labels, texts = collections.defaultdict(set), {}
    for text, label in pairs:
        labels[key(text)].add(label)
        texts.setdefault(key(text), text)
    by_label = collections.defaultdict(list)
    for k, found in labels.items():
        if len(found) == 1:  # a text the source files under two labels is ambiguous
            by_label[found.pop()].append(texts[k])
    rows = []
    for label in sorted(by_label):
        if len(by_label[label]) >= min_class:
            rows.extend((text, label) for text in choose(by_label[label], per_class, salt))
    rows.sort(key=lambda row: digest(row[0]))
    cut = lambda row: int(digest(row[0])[:8], 16) / 16**8 < EVAL_FRACTION  # noqa: E731
    return {"train": [r for r in rows if not cut(r)], "eval": [r for r in rows if cut(r)]}


def _write_gzip(path: str, text: str) -> None:
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
        f.write(text.encode("utf-8"))


def csv_text(rows, header=("text", "label")) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(list(header))
    writer.writerows(rows)
    return out.getvalue()


def write_snapshot(out_dir: str, corpus_rows: dict[str, list[str]], tasks: dict, provenance: dict) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    lines = []
    for domain, texts in corpus_rows.items():
        for text in sorted(texts, key=digest):
            lines.append(json.dumps({"text": text, "domain": domain}, ensure_ascii=False))
    _write_gzip(os.path.join(out_dir, "corpus.jsonl.gz"), "\n".join(lines) + "\n")
    manifest = {
        "packages": provenance["versions"],
        "debian_indexes": provenance["releases"],
        "python": platform.python_version(),
        "per_domain": FLAGS.per_domain,
        "per_class": FLAGS.per_class,
        "min_class": FLAGS.min_class,
        "eval_fraction": EVAL_FRACTION,
        "domains": {d: len(t) for d, t in corpus_rows.items()},
        "tasks": {},
    }
    for name, parts in tasks.items():
        for split, rows in parts.items():
            _write_gzip(os.path.join(out_dir, f"{name}.{split}.csv.gz"), csv_text(rows))
        manifest["tasks"][name] = {
            "domain": TASK_DOMAINS[name],
            **task_limits(name),
            **{split: len(rows) for split, rows in parts.items()},
            "classes": dict(sorted(collections.Counter(label for _, label in parts["train"] + parts["eval"]).items())),
        }
    _write_manifest(out_dir, manifest)
    return manifest


def write_retrieval(out_dir: str, manifest: dict, pairs: dict[str, list[tuple[str, str]]]) -> None:
    """`<name>.pairs.csv.gz` (columns query,target) of each retrieval set; their counts go into the manifest."""
    manifest["retrieval_pairs"], manifest["retrieval"] = FLAGS.retrieval_pairs, {}
    for name, found in pairs.items():
        rows = retrieval_set(found, FLAGS.retrieval_pairs)
        _write_gzip(os.path.join(out_dir, f"{name}.pairs.csv.gz"), csv_text(rows, header=("query", "target")))
        manifest["retrieval"][name] = {"domain": RETRIEVAL_DOMAINS[name], "found": len(found), "pairs": len(rows)}
    _write_manifest(out_dir, manifest)


def _write_manifest(out_dir: str, manifest: dict) -> None:
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=False)
        f.write("\n")


TASK_DOMAINS = {"wordnet_lexname": "wordnet", "debian_section": "debian", "manual_chapter": "manual"}
RETRIEVAL_DOMAINS = {"wordnet_gloss": "wordnet"}
# The Debian Reference has ~1,900 sentences in its 12 chapters (58 to 389 each): --min_class=150 would keep
# 3 chapters and --per_class=400 would leave 6.5x more of chapter 1 than of chapter 5. Its own limits keep the
# 10 chapters with >= 60 sentences, at most 200 each (max/min ~3 like the other sets), about 1,300 rows.
OWN_LIMITS = {"manual_chapter": {"per_class": 200, "min_class": 60}}


def task_limits(name: str) -> dict:
    """{"per_class", "min_class"} of a labelled set: its own, or the flags'."""
    return OWN_LIMITS.get(name, {"per_class": FLAGS.per_class, "min_class": FLAGS.min_class})


def build(out_dir: str, workdir: str) -> dict:
    provenance = fetch(workdir)
    root = provenance["root"]
    synsets = read_wordnet(root)
    wordnet, wordnet_labels = build_wordnet(synsets)
    debian, debian_labels = build_debian(provenance["lists"])
    manual, manual_labels = build_manual(root)
    raw = {"wordnet": wordnet, "debian": debian, "stdlib": build_stdlib(), "manual": manual,
           "bible": build_bible(root)}
    unique = deduplicated(raw)
    corpus_rows = {d: choose(texts, FLAGS.per_domain, "corpus:") for d, texts in unique.items()}
    pairs = {"wordnet_lexname": wordnet_labels, "debian_section": debian_labels, "manual_chapter": manual_labels}
    tasks = {name: labelled_set(pairs[name], **task_limits(name), salt="task:") for name in TASK_DOMAINS}
    manifest = write_snapshot(out_dir, corpus_rows, tasks, provenance)
    write_retrieval(out_dir, manifest, retrieval_pairs(synsets))
    write_licenses(out_dir, root)
    write_readme(out_dir, manifest)
    for domain, texts in raw.items():
        print(f"{domain:8s} {len(texts):7d} sentences found, {len(unique[domain]):7d} unique, "
              f"{manifest['domains'][domain]:6d} kept")
    for name, info in manifest["tasks"].items():
        print(f"{name}: {len(info['classes'])} classes, {info['train']} train / {info['eval']} eval")
    print(f"packages: {manifest['packages']}")
    print(f"snapshot written to {os.path.abspath(out_dir)} ({_size(out_dir)} bytes)")
    return manifest


def add_retrieval(out_dir: str, workdir: str) -> dict:
    """The retrieval sets of an existing snapshot, from the wordnet-base version its manifest names."""
    with open(os.path.join(out_dir, "manifest.json")) as f:
        manifest = json.load(f)
    provenance = fetch(workdir, packages=("wordnet-base",))
    want, got = manifest["packages"]["wordnet-base"], provenance["versions"]["wordnet-base"]
    if want != got:
        raise app.UsageError(f"The snapshot was built from wordnet-base {want}, the archive has {got}: rebuild the "
                             "whole snapshot (python -m tools.make_corpus) instead of --retrieval_only.")
    write_retrieval(out_dir, manifest, retrieval_pairs(read_wordnet(provenance["root"])))
    write_readme(out_dir, manifest)
    for name, info in manifest["retrieval"].items():
        print(f"{name}: {info['found']} pairs found, {info['pairs']} kept")
    return manifest


LICENSED = ("wordnet-base", "debian-reference-en", "bible-kjv-text")


def write_licenses(out_dir: str, root: str) -> None:
    """The Debian copyright files of the packages whose text is in the snapshot (WordNet's license asks for it)."""
    parts = []
    for package in LICENSED:
        with open(os.path.join(root, "usr/share/doc", package, "copyright"), encoding="utf-8") as f:
            parts.append(f"{'=' * 72}\n{package}: /usr/share/doc/{package}/copyright\n{'=' * 72}\n{f.read().rstrip()}\n")
    with open(os.path.join(out_dir, "LICENSES.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(parts))


_README = """\
# Built-in multi-domain corpus and labelled sets (generated by `python -m tools.make_corpus`; do not edit)

Real English text that people wrote, from public offline sources, for calibration,
distillation and evaluation (`recipes.corpus.load`, `recipes.corpus.labelled`).
Loading needs only Python: no apt, no network.

## Domains (`corpus.jsonl.gz`: one {{"text", "domain"}} object per line)

| domain | source | license | sentences |
|---|---|---|---:|
{domain_rows}

Cleaning: whitespace collapsed; 4-64 words; no markup or code-like text (tags, braces, `=`, `$`, `_`,
URLs, ...); at least 70 % letters; manual and debian sentences end with . ! or ?. Duplicates are
removed case- and space-insensitively; a text found in two domains is dropped from both. At most
{per_domain} sentences per domain, chosen by SHA-256("corpus:" + text). `recipes.corpus.split_parts`
assigns parts by SHA-256 of the text alone, so a sentence's part never depends on what else is loaded.

## Labelled sets (`<name>.train.csv.gz`, `<name>.eval.csv.gz`: CSV with columns text,label)

| name | text | label | domain of its text | classes | train | eval | min per label | max per label |
|---|---|---|---|---:|---:|---:|---:|---:|
{task_rows}

Labels are the source's own: WordNet's lexicographer file of the synset (lexnames(5WN)); the Debian
archive's Section of the package (`contrib/x`, `non-free/x` -> `x`); the Debian Reference's chapter
(`chNN` from the heading `Chapter N. Title` above the paragraph; the preface and the appendix have none).
A text filed under two labels is dropped; labels with fewer than "min per label" examples are dropped; at
most "max per label" examples per label (chosen by SHA-256("task:" + text)). The manual has ~1,900
sentences in 12 chapters, so `manual_chapter` has its own limits (the others use `--min_class`,
`--per_class`). Eval = the examples whose SHA-256(text) falls in the first {eval_percent} % of the hash
range.

**The labelled texts are text of their domain**: a `wordnet_lexname` text is a WordNet definition (the
same text may also be a `wordnet` corpus sentence), a `debian_section` text is a package synopsis plus
the first sentence of its description (that sentence may be a `debian` corpus sentence), a
`manual_chapter` text is a sentence of the Debian Reference (a `manual` corpus sentence unless another
domain has it too). An evaluation that holds a domain out of compression must use that domain's labelled
set only for probing.

## Retrieval sets (`<name>.pairs.csv.gz`: CSV with columns query,target)

| name | query | target | domain of its text | pairs found | pairs kept |
|---|---|---|---|---:|---:|
{retrieval_rows}

A query's answer is its own row's target, among every target of the set. `wordnet_gloss` pairs each
synset's first example sentence that cleans with the synset's definition; a text that two synsets share
is dropped. At most {retrieval_pairs} pairs, chosen by SHA-256("retrieval:" + target). Like the labelled
sets, these are text of their domain, for evaluation only.

Plain CSV files for the recipes' `--train_files=train.csv --label_field=label --text_fields=text`:

    python -m tools.make_corpus --export_task=wordnet_lexname --out_dir=/tmp/wordnet_lexname

## Provenance

Debian packages: {packages}.
Debian archive indexes (Packages + Translation-en, main): {indexes}.
Python {python} (stdlib docstrings).
The copyright files of the packages are in `LICENSES.txt`.

## Rebuild

    python -m tools.make_corpus          # needs apt-get, dpkg-deb and the network (root, for apt-get update)

Same package versions and Python give byte-identical files.
"""

_SOURCES = {
    "wordnet": ("WordNet 3.0 definitions and example sentences (Debian `wordnet-base`)",
                "WordNet 3.0 license (Princeton; see LICENSES.txt)"),
    "debian": ("Debian package long descriptions (archive Translation-en)", "each package's license"),
    "stdlib": ("Python standard-library docstrings", "PSF License"),
    "manual": ("The Debian Reference, prose paragraphs (`debian-reference-en`)", "GPL-2+"),
    "bible": ("King James Bible verses (`bible-kjv-text`, read with `bible-kjv`)",
              "public domain (Crown patent in the UK)"),
}
_TASKS = {
    "wordnet_lexname": ("synset definition", "lexicographer file"),
    "debian_section": ("package synopsis. first description sentence", "archive Section"),
    "manual_chapter": ("Debian Reference sentence", "chapter (`chNN`)"),
}


_RETRIEVAL = {"wordnet_gloss": ("an example sentence of a synset", "the synset's definition")}


def write_readme(out_dir: str, manifest: dict) -> None:
    domain_rows = "\n".join(f"| {d} | {_SOURCES[d][0]} | {_SOURCES[d][1]} | {n} |"
                             for d, n in manifest["domains"].items())
    task_rows = "\n".join(f"| {name} | {_TASKS[name][0]} | {_TASKS[name][1]} | {t['domain']} | "
                           f"{len(t['classes'])} | {t['train']} | {t['eval']} | {t['min_class']} | {t['per_class']} |"
                           for name, t in manifest["tasks"].items())
    retrieval_rows = "\n".join(f"| {name} | {_RETRIEVAL[name][0]} | {_RETRIEVAL[name][1]} | {r['domain']} | "
                                f"{r['found']} | {r['pairs']} |" for name, r in manifest.get("retrieval", {}).items())
    text = _README.format(
        domain_rows=domain_rows, task_rows=task_rows, retrieval_rows=retrieval_rows,
        retrieval_pairs=manifest.get("retrieval_pairs"),
        per_domain=manifest["per_domain"],
        eval_percent=round(manifest["eval_fraction"] * 100),
        packages=", ".join(f"`{p}` {v}" for p, v in sorted(manifest["packages"].items())),
        indexes=", ".join(f"{suite} ({date})" for suite, date in manifest["debian_indexes"].items()),
        python=manifest["python"])
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(text)


def _size(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
    if FLAGS.export_task:
        from recipes import corpus

        if not FLAGS.out_dir:
            raise app.UsageError("--export_task needs --out_dir (where train.csv and eval.csv go).")
        try:
            paths = corpus.write_task_csv(FLAGS.export_task, FLAGS.out_dir)
        except ValueError as error:
            raise app.UsageError(str(error)) from None
        print("\n".join(paths))
        return
    for name in ("per_domain", "per_class", "min_class", "retrieval_pairs"):
        if getattr(FLAGS, name) < 1:
            raise app.UsageError(f"--{name} must be >= 1, got {getattr(FLAGS, name)}.")
    out_dir = FLAGS.out_dir or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                            "recipes", "data")
    job = add_retrieval if FLAGS.retrieval_only else build
    if FLAGS.workdir:
        os.makedirs(FLAGS.workdir, exist_ok=True)
        job(out_dir, FLAGS.workdir)
    else:
        with tempfile.TemporaryDirectory() as workdir:
            job(out_dir, workdir)


if __name__ == "__main__":
    from recipes import cli

    app.run(main, flags_parser=cli.flags_parser(FLAGS, __doc__))
