"""Where notebooks write: ``results/<name>/`` for real runs, a throw-away folder for smoke runs (CI, tests)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["REPO_ROOT", "is_smoke", "results_dir"]

#: The repository root (notebooks resolve paths from here, whatever directory the kernel starts in).
REPO_ROOT = Path(__file__).resolve().parent.parent


def is_smoke() -> bool:
    """True when ``B2_SMOKE=1``: the test suite and CI run every notebook at toy size."""
    return os.environ.get("B2_SMOKE") == "1"


def results_dir(name: str, smoke: bool | None = None) -> Path:
    """``results/<name>`` for a real run; a fresh temporary folder for a smoke run (never touching ``results/``)."""
    smoke = is_smoke() if smoke is None else smoke
    path = Path(tempfile.mkdtemp(prefix=f"smoke_{name}_")) if smoke else REPO_ROOT / "results" / name
    path.mkdir(parents=True, exist_ok=True)
    return path
