"""Run folders that cannot be mislabelled or written twice: a settings fingerprint and an OS lock per folder.

Why: a run folder is resumable (checkpoints), so pointing a run at an existing folder continues what is there. Without
a check, a different template, schedule or learning rate would silently mix into the old run and its files would carry
the new label; two processes on one folder would overwrite each other's tables. The fingerprint (``run.json``) holds
the settings that define the run's numbers; the lock (``.lock``, ``fcntl.flock``) is held while a process writes the
folder and released by the OS when the process ends, even by ``kill -9``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "RunSettingsError",
    "RunLockedError",
    "fingerprint",
    "check_fingerprint",
    "record_settings",
    "reuse_problems",
    "reusable",
    "move_aside",
    "RunLock",
    "flatten",
]

FINGERPRINT_FILE = "run.json"
LOCK_FILE = ".lock"


class RunSettingsError(ValueError):
    """A run folder holds a run with other settings than the ones asked for."""


class RunLockedError(RuntimeError):
    """Another process is writing the run folder."""


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and scalars are leaves), for naming the fields that differ."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _canonical(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))


def fingerprint(settings: dict) -> str:
    """SHA-256 of the settings' canonical JSON (key order does not matter; tuples and lists are the same)."""
    return hashlib.sha256(_canonical(json.loads(_canonical(settings))).encode()).hexdigest()


def check_fingerprint(folder: str | os.PathLike, settings: dict) -> str:
    """Write ``run.json`` into a folder that has none; in one that has one, raise :class:`RunSettingsError` naming
    every field whose value differs from ``settings`` (and the fix) unless the fingerprints agree."""
    folder = Path(folder)
    path = folder / FINGERPRINT_FILE
    digest = fingerprint(settings)
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise RunSettingsError(
                f"{path} is not valid JSON ({err}); it records which run the folder holds. "
                "Restore it, or start over in a new output folder."
            ) from None
        if saved.get("fingerprint") == digest:
            return digest
        old, new = flatten(json.loads(_canonical(saved.get("settings", {})))), flatten(json.loads(_canonical(settings)))
        diffs = [
            f"  {k}: folder has {old.get(k, '(unset)')!r}, asked for {new.get(k, '(unset)')!r}"
            for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)
        ]
        raise RunSettingsError(
            f"{folder} holds a run with other settings, so resuming would mix two runs:\n"
            + "\n".join(diffs)
            + "\nFix: use another output folder (run_name / --run-name, output_dir / --output-dir), or start over here "
            "with resume=False (--no-resume): the folder's present content is then moved aside, not deleted."
        )
    return record_settings(folder, settings)


def record_settings(folder: str | os.PathLike, settings: dict) -> str:
    """Write ``settings`` and their fingerprint to the folder's ``run.json`` (atomically: a crash leaves the old file
    or the new one). :func:`check_fingerprint` calls it for a new folder; a finished run whose settings grew (an
    evaluation split added by :func:`b2lib.reevaluate.add_eval_split`) calls it to record what the folder now holds."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FINGERPRINT_FILE
    digest = fingerprint(settings)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"fingerprint": digest, "settings": json.loads(_canonical(settings))}, indent=2))
    tmp.replace(path)
    return digest


#: run settings that make two folders' evaluations pairable (the same prompts, the same noise, the same reward)
_EVAL_SETTINGS = (
    "template",
    "preset",
    "reward",
    "reward_sign",
    "eval_images",
    "eval_max_prompts",
    "eval_n_per_prompt",
    "eval_seed",
    "eval_prompts",
    "train_prompts",
)


def reuse_problems(folders: list[str | os.PathLike], settings: dict) -> list[str]:
    """Why finished run folders made elsewhere cannot stand in for a run with ``settings`` (empty: they can).

    Why: a study (Table 1) may take a template's models from runs already made with its setup instead of training
    them again. That holds only if every model it asks for (``settings["trainer"]``: method x seed) is in one of the
    folders with exactly the trainer settings asked for, every folder is finished, and every folder was evaluated
    alike (the run settings in ``_EVAL_SETTINGS``), so the models pair image by image. Each problem names the folder
    and the field."""
    problems, held = [], set()
    asked_run, asked = settings["run"], settings["trainer"]
    for folder in map(Path, folders):
        path = folder / FINGERPRINT_FILE
        if not path.exists() or not (folder / "summary.json").exists():
            problems.append(f"{folder}: not a finished run folder (no {FINGERPRINT_FILE} or summary.json)")
            continue
        saved = json.loads(_canonical(json.loads(path.read_text()).get("settings", {})))
        want = json.loads(_canonical(settings))
        for key in _EVAL_SETTINGS:
            if saved["run"].get(key) != want["run"].get(key):
                problems.append(f"{folder}: run.{key} is {saved['run'].get(key)!r}, asked for {asked_run.get(key)!r}")
        missing = set(want["run"].get("eval_splits", ["test"])) - set(saved["run"].get("eval_splits", ["test"]))
        if missing:
            problems.append(f"{folder}: not evaluated on the split(s) {sorted(missing)}")
        for model, tcfg in saved.get("trainer", {}).items():
            if model not in asked:
                continue
            old, new = flatten(tcfg), flatten(want["trainer"][model])
            problems += [
                f"{folder}: trainer.{model}.{k} is {old.get(k, '(unset)')!r}, asked for {new.get(k, '(unset)')!r}"
                for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)
            ]
            held.add(model)
    problems += [f"no folder holds {model}" for model in asked if model not in held]
    return problems


def reusable(folders: list[str | os.PathLike], settings: dict) -> list[Path]:
    """``folders`` as paths when they can stand in for a run with ``settings`` (:func:`reuse_problems`); otherwise a
    :class:`RunSettingsError` listing every problem."""
    problems = reuse_problems(folders, settings)
    if problems:
        raise RunSettingsError(
            "These run folders cannot stand in for the run asked for:\n" + "\n".join(f"  {p}" for p in problems)
        )
    return [Path(f) for f in folders]


def move_aside(folder: str | os.PathLike) -> Path | None:
    """Move everything in ``folder`` (but its lock file) into a new sibling ``<folder>.replaced-<UTC time>``: a run
    started over keeps nothing of the old one in its folder, and loses nothing. Returns the new folder, or None when
    there was nothing to move."""
    folder = Path(folder)
    if not folder.exists():
        return None
    children = [p for p in folder.iterdir() if p.name != LOCK_FILE]
    if not children:
        return None
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = folder.with_name(f"{folder.name}.replaced-{stamp}")
    target.mkdir(parents=True)
    for child in children:
        shutil.move(str(child), str(target / child.name))
    return target


class RunLock:
    """An exclusive, non-blocking OS lock on ``<folder>/.lock`` for as long as the ``with`` block runs.

    A second process on the same folder fails at once with :class:`RunLockedError` naming the holder (pid, host,
    start time, command). The OS releases the lock when the holder exits or is killed. Where ``fcntl`` does not
    exist (Windows) the lock is skipped with a warning.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._fh = None

    def __enter__(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            import warnings

            warnings.warn("No fcntl here: the run folder is not locked against a second process.", stacklevel=2)
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fh = open(self.folder / LOCK_FILE, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "(no holder information)"
            fh.close()
            raise RunLockedError(
                f"{self.folder} is being written by another process: {holder}. Wait for it to finish, or use another "
                "output folder (run_name / --run-name, output_dir / --output-dir)."
            ) from None
        fh.seek(0)
        fh.truncate()
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {started} ({' '.join(sys.argv)[:200]})")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            import fcntl

            self._fh.seek(0)
            self._fh.truncate()
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
