"""Every numbered notebook in ``notebooks/`` is committed with the outputs of its full run, so a reader who opens it in
JupyterLab (or on a Git host) sees its tables and figures without running anything.

The test suite re-executes each notebook at smoke size (nbval, in a temporary copy); this file checks the *committed*
files: every code cell executed, in order, none ending in an error, and a notebook that draws figures shows at least
one of them inline.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
_DRAWS = re.compile(r"\b(save_figure|done\(|plt\.|\.plot\(|_plot\(|_grid\(|curves|image_grid|figure)")


def _code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def unexecuted_cells(path: Path) -> list[int]:
    """Indices (among code cells) of cells without an execution count: never run, or run and cleared."""
    return [i for i, c in enumerate(_code_cells(path)) if c.get("execution_count") is None]


def error_cells(path: Path) -> list[int]:
    return [i for i, c in enumerate(_code_cells(path)) if any(o["output_type"] == "error" for o in c["outputs"])]


def shown_figures(path: Path) -> int:
    return sum("image/png" in o.get("data", {}) for c in _code_cells(path) for o in c["outputs"])


def draws_figures(path: Path) -> bool:
    return any(_DRAWS.search("".join(c["source"])) for c in _code_cells(path))


def test_every_numbered_notebook_is_found():
    assert len(NOTEBOOKS) >= 13, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_with_the_outputs_of_its_full_run(path):
    missing = unexecuted_cells(path)
    assert not missing, (
        f"{path.name}: code cells {missing} have no outputs of a run; execute it end to end "
        f"(papermill {path.relative_to(path.parents[1])} executed.ipynb, then copy it back) before committing"
    )
    assert not error_cells(path), f"{path.name}: cells {error_cells(path)} end in an error"
    counts = [c["execution_count"] for c in _code_cells(path)]
    assert counts == sorted(counts), f"{path.name}: cells were run out of order ({counts})"
    if draws_figures(path):
        assert shown_figures(path) > 0, f"{path.name} draws figures but shows none inline"


def test_the_checks_fail_on_a_notebook_that_was_never_run(tmp_path):
    nb = {
        "cells": [
            {"cell_type": "code", "execution_count": None, "outputs": [], "source": ["fig = curves(x)\n"]},
            {"cell_type": "markdown", "source": ["text"]},
        ]
    }
    path = tmp_path / "99_x.ipynb"
    path.write_text(json.dumps(nb))
    assert unexecuted_cells(path) == [0] and draws_figures(path) and shown_figures(path) == 0
