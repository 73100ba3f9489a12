"""Keep each finished run folder of a study's queue at once: ``git commit`` of that folder alone."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit(folder: Path, message: str) -> bool:
    """``git commit`` of ``folder`` alone (its checkpoints are ignored by .gitignore) with ``message``, retried while
    another git command holds the index. Returns whether it committed."""
    rel = Path(folder).resolve().relative_to(ROOT)
    for attempt in range(20):
        add = subprocess.run(["git", "add", "--", str(rel)], cwd=ROOT, capture_output=True, text=True)
        if add.returncode == 0:
            done = subprocess.run(["git", "commit", "-q", "-m", message, "--", str(rel)], cwd=ROOT, capture_output=True)
            if done.returncode == 0:
                print(f"committed {rel}", flush=True)
                return True
        time.sleep(3 + attempt)
    print(f"could not commit {rel}; commit it by hand", flush=True)
    return False
