"""What a reader meets (README, docs/, the notebooks, scripts/) must not carry the vocabulary of how the work was
organised, nor paths of the machine that ran it.

Why: the repository is read by people who never saw the machinery that produced it. A "session", a GPU "lease", a
"deliverable 3" or an "issue #41" points at something they cannot open, and ``/work/<checkout>/results/...`` in a
committed output is a path on a machine they do not have (``python -m b2lib.notebook clean`` rewrites those).

The rules, case-insensitive, on whole words:

* **Internal words** ``session(s)``, ``lease(s)``, ``deliverable(s)``, ``working period(s)``, everywhere: prose,
  notebook cells (markdown and code) and notebook outputs. A word that is part of code is not prose and is skipped: one
  glued to ``.`` or ``/`` before it, or followed by ``.<name>`` or ``(`` (``requests.sessions``, ``sessions.py``,
  ``Session(``); ``\\b`` already leaves identifiers such as ``session_id`` or ``InferenceSession`` alone.
* **Issue references**: ``issue 41`` and ``issue #41`` everywhere; a bare ``#41`` only in prose (Markdown files,
  markdown cells, scripts), since in code and outputs ``#000`` is a colour and ``#1`` a comment's numbering.
* **Machine paths**: an absolute ``/tmp/``, ``/work/``, ``/root/`` or ``/home/`` path in a committed notebook's
  *outputs* (text only, never image data), with :data:`b2lib.notebook.MACHINE_PATH` (the cleaner's own pattern, so
  the check and the fix agree). Cell sources may name such paths (``tmp_path`` and examples are code, not records).

Each failure names the file, the line (or the notebook's cell, part and line) and the word.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from b2lib.notebook import MACHINE_PATH

REPO = Path(__file__).resolve().parents[2]

_CODE_BEFORE = r"(?<![./])"
_CODE_AFTER = r"(?!\.\w|\()"
INTERNAL = re.compile(
    _CODE_BEFORE + r"\b(sessions?|leases?|deliverables?|working\s+periods?)\b" + _CODE_AFTER, re.IGNORECASE
)
ISSUE = re.compile(r"\bissues?\s*#?\s*\d+\b", re.IGNORECASE)
BARE_REF = re.compile(r"(?<![\w&#/])#\d{1,5}\b(?![\w-])")


def prose_files() -> list[Path]:
    """Every file the rules apply to: README, docs, scripts, and the committed notebooks (``notebooks/`` and the
    executed records of other runs kept under ``results/``)."""
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    files += sorted(p for p in (REPO / "scripts").rglob("*") if p.is_file() and p.suffix in {".py", ".sh", ".md"})
    files += sorted((REPO / "notebooks").glob("*.ipynb")) + sorted((REPO / "results").rglob("*.ipynb"))
    return [p for p in files if p.exists() and ".ipynb_checkpoints" not in p.parts]


def word_hits(text: str, prose: bool) -> list[tuple[int, str]]:
    """(line number, word) of every internal word and issue reference in ``text``; bare ``#N`` only when ``prose``."""
    patterns = (INTERNAL, ISSUE, BARE_REF) if prose else (INTERNAL, ISSUE)
    return [
        (n, m.group(0))
        for n, line in enumerate(text.splitlines(), 1)
        for pattern in patterns
        for m in pattern.finditer(line)
    ]


def _output_texts(out: dict) -> list[str]:
    """The text an output shows: a stream, the ``text/*`` representations, an error's traceback; no image data."""
    join = "".join
    texts = [join(out["text"]) if isinstance(out.get("text"), list) else out.get("text", "")]
    texts += [join(v) if isinstance(v, list) else v for k, v in out.get("data", {}).items() if k.startswith("text/")]
    return texts + list(out.get("traceback", []))


def notebook_hits(nb: dict) -> list[str]:
    """Every rule's hits in a notebook: ``cell <i> <part> line <n>: '<word>'``."""
    found = []
    for i, cell in enumerate(nb.get("cells", [])):
        source = "".join(cell.get("source", []))
        part = cell.get("cell_type", "cell")
        found += [f"cell {i} {part} source line {n}: {w!r}" for n, w in word_hits(source, prose=part == "markdown")]
        for k, out in enumerate(cell.get("outputs", [])):
            for text in _output_texts(out):
                found += [f"cell {i} output {k} line {n}: {w!r}" for n, w in word_hits(text, prose=False)]
                found += [
                    f"cell {i} output {k} line {n}: machine path {m.group(0)!r}"
                    for n, line in enumerate(text.splitlines(), 1)
                    for m in MACHINE_PATH.finditer(line)
                ]
    return found


def file_hits(path: Path) -> list[str]:
    if path.suffix == ".ipynb":
        return notebook_hits(json.loads(path.read_text(encoding="utf-8")))
    return [f"line {n}: {w!r}" for n, w in word_hits(path.read_text(encoding="utf-8"), prose=True)]


@pytest.mark.parametrize("path", prose_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_internal_words_or_machine_paths(path):
    hits = file_hits(path)
    rel = path.relative_to(REPO)
    assert not hits, f"{rel}: internal words, issue references or machine paths:\n" + "\n".join(
        f"  {rel} {h}" for h in hits
    )


def test_the_rules_catch_what_they_should_and_nothing_else():
    caught = [
        "did not fit the session.",
        "Sessions ran",
        "one lease of a GPU",
        "deliverable 3",
        "in this working period",
        "see issue 41",
        "Issue #32 says",
        "fixed in #41",
    ]
    for text in caught:
        assert word_hits(text, prose=True), text
    clean = [
        "import requests.sessions",
        "site-packages/requests/sessions.py",
        "ort.InferenceSession(path)",
        "session_id = 3",
        "please release the lock",
        "colour #1f77b4 and entity &#39;",
        "tmp_path / 'x'",
        "the issues with this",
    ]
    for text in clean:
        assert not word_hits(text, prose=True), text
    assert not word_hits("ax.plot(x, color='#000')  # 1", prose=False)
    out = {"output_type": "stream", "name": "stdout", "text": ["results in /tmp/clean/results/main\n"]}
    image = {"output_type": "display_data", "data": {"image/png": "AAAA/tmp/BBBB", "text/plain": ["<Figure>"]}}
    nb = {"cells": [{"cell_type": "code", "source": ["f(tmp_path, '/tmp/x')\n"], "outputs": [out, image]}]}
    assert notebook_hits(nb) == ["cell 0 output 0 line 1: machine path '/tmp/'"]
