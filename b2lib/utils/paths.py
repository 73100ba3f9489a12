"""Where notebooks write: ``results/<name>/`` for real runs, a throw-away folder for smoke runs (CI, tests)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["REPO_ROOT", "is_smoke", "results_dir", "code_version"]

#: The repository root (notebooks resolve paths from here, whatever directory the kernel starts in).
REPO_ROOT = Path(__file__).resolve().parents[2]


def is_smoke() -> bool:
    """True when ``B2_SMOKE=1``: the test suite and CI run every notebook at toy size."""
    return os.environ.get("B2_SMOKE") == "1"


def results_dir(name: str, smoke: bool | None = None) -> Path:
    """``results/<name>`` for a real run; a fresh temporary folder for a smoke run (never touching ``results/``)."""
    smoke = is_smoke() if smoke is None else smoke
    path = Path(tempfile.mkdtemp(prefix=f"smoke_{name}_")) if smoke else REPO_ROOT / "results" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def code_version() -> dict | None:
    """The git commit of the code that produced a result, and whether ``b2lib/`` had uncommitted changes; None outside
    a git checkout (e.g. an installed wheel). Written into every run's ``summary.json`` so numbers name their code."""
    import subprocess

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        # only the library counts: notebooks and results/ change as runs write them
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "b2lib"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}
