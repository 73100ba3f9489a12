"""A verdict on a claim is stated once: in README's generated scorecards (``b2lib.reporting.claims`` +
``b2lib.reporting.frontpage``).

Any other page may name a verdict only inside a ``<!-- verdict:KEY -->…<!-- /verdict -->`` marker, whose word must
equal the scorecard's; an unmarked verdict (a bold status word, or "not reproduced", "inconclusive", "not shown",
"partly reproduced" in prose) in README outside its generated blocks, in docs/, or in a notebook's markdown or outputs
fails here, naming the file and the words. Notebook 08 displays the scorecards themselves: its outputs must equal a
fresh render.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from b2lib.reporting.frontpage import VERDICT_MARK, render_blocks, verdict_problems, verdicts

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"<!-- frontpage:(\w+) -->.*?<!-- /frontpage:\1 -->", re.S)
UNMARKED = re.compile(
    r"\*\*(reproduced|partly|not reproduced|inconclusive|shown|not shown)\*\*"
    r"|\b(not reproduced|partly reproduced|inconclusive|not shown)\b",
    re.I,
)


def unmarked_verdicts(text: str) -> list[str]:
    """The verdict words in ``text`` outside generated blocks and verdict markers."""
    text = VERDICT_MARK.sub("", BLOCK.sub("", text))
    return [m.group(0) for m in UNMARKED.finditer(text)]


def _texts(path: Path) -> list[tuple[str, str]]:
    """``(where, text)`` of one page: a markdown file whole; a notebook's markdown cells and outputs one by one."""
    rel = str(path.relative_to(ROOT))
    if path.suffix == ".md":
        return [(rel, path.read_text())]
    out = []
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        texts = ["".join(cell["source"])] if cell["cell_type"] == "markdown" else []
        for o in cell.get("outputs", []):
            texts.append("".join(o.get("text", "")))
            texts += ["".join(v) for k, v in o.get("data", {}).items() if k.startswith("text/")]
        out += [(f"{rel} cell {i}", t) for t in texts]
    return out


#: the pages a verdict could be stated on (notebook 08 displays the scorecards themselves: checked below)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] + [
    p for p in sorted((ROOT / "notebooks").glob("*.ipynb")) if not p.name.startswith("08_")
]


def test_unmarked_verdict_finder_closed_cases():
    assert unmarked_verdicts("the claim is **partly** met") == ["**partly**"]
    assert unmarked_verdicts("the flow row is inconclusive") == ["inconclusive"]
    assert unmarked_verdicts("<!-- verdict:flow -->inconclusive<!-- /verdict -->") == []
    assert unmarked_verdicts("the run reproduced results/main exactly; partly because") == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_verdict_outside_the_scorecard(page):
    found = [f"{where}: {words}" for where, text in _texts(page) if (words := unmarked_verdicts(text))]
    assert not found, "verdict words outside the scorecard (cite it with a verdict marker instead):\n" + "\n".join(
        found
    )


def test_every_verdict_marker_agrees_with_the_scorecard():
    found = verdicts(ROOT / "results")
    problems = [p for page in PAGES for where, text in _texts(page) for p in verdict_problems(text, found, where)]
    assert not problems, "\n".join(problems)


def test_notebook_08_shows_the_scorecards_of_the_committed_results():
    nb = json.loads((ROOT / "notebooks" / "08_figures.ipynb").read_text())
    shown = "\n".join(
        "".join(out.get("data", {}).get("text/markdown", "")) for cell in nb["cells"] for out in cell.get("outputs", [])
    )
    blocks = render_blocks(ROOT / "results")
    for name in ("scorecard", "extensions"):
        assert blocks[name].strip() in shown, f"notebook 08's {name} is stale: re-execute notebooks/08_figures.ipynb"
