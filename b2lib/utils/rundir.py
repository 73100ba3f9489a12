"""Run folders that cannot be mislabelled or written twice: a settings fingerprint and an OS lock per folder.

Why: a run folder is resumable (checkpoints), so pointing a run at an existing folder continues what is there. Without
a check, a different template, schedule or learning rate would silently mix into the old run and its files would carry
the new label; two processes on one folder would overwrite each other's tables. The fingerprint (``run.json``) holds
the settings that define the run's numbers; the lock (``.lock``, ``fcntl.flock``) is held while a process writes the
folder and released by the OS when the process ends, even by ``kill -9``.

OS faults while writing a run folder end in one message that names the fix, not a raw traceback: a folder that cannot
be written (read-only file system, no permission) raises :class:`OutputNotWritableError` before any model is loaded
(:func:`prepare_output_dir`, and the lock and ``run.json`` writes), and a full disk raises :class:`DiskFullError`
naming the file, the space needed and free, and where the run resumes (:func:`disk_full_guard`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = [
    "RunSettingsError",
    "RunLockedError",
    "OutputFolderError",
    "OutputNotWritableError",
    "DiskFullError",
    "is_disk_full",
    "disk_full_guard",
    "not_writable_guard",
    "prepare_output_dir",
    "write_text_atomic",
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


class OutputFolderError(OSError):
    """An OS fault while writing a run's output folder, told as one message that names the fix.

    Why an ``OSError``: callers that already handle OS errors keep handling these, and ``errno`` keeps the original
    code (``ENOSPC``, ``EROFS``, ...). It is raised ``from None``, so a traceback ends in this message alone, not in
    the low-level error (safetensors' included) that it replaces."""

    def __init__(self, message: str, code: int | None = None, path: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.errno = code
        self.filename = str(path) if path is not None else None

    def __str__(self) -> str:  # OSError's own would prefix "[Errno 28]" and append the file name a second time
        return str(self.args[0])

    def __reduce__(self):  # OSError's would rebuild from (errno, strerror, filename): keep the message (run_many's
        # worker processes send their errors back pickled)
        return type(self), (self.args[0], self.errno, self.filename)


class OutputNotWritableError(OutputFolderError):
    """The output folder (or a file in it) cannot be written: a read-only file system or no permission."""


class DiskFullError(OutputFolderError):
    """The disk (or the user's quota) filled up while a run wrote a file."""


#: the error codes of a full disk (or quota) and of a folder that cannot be written
DISK_FULL_ERRNOS = frozenset(c for c in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if c is not None)
NOT_WRITABLE_ERRNOS = frozenset((errno.EROFS, errno.EACCES, errno.EPERM))
#: how safetensors (a Rust library: its own exception type, the OS message inside) words a full disk or quota
_DISK_FULL_TEXT = ("No space left on device", "os error 28", "code: 28", "Disk quota exceeded", "os error 122")
#: where the fix is set, in each entry point's spelling
_OUTPUT_DIR_HOW = "(papermill: -p output_dir <folder>; command line: --output-dir <folder>)"


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` is a full disk or quota: an ``OSError`` with ``ENOSPC``/``EDQUOT``, or safetensors'
    ``SafetensorError`` (not an ``OSError``) whose message carries the OS's words for it."""
    if isinstance(err, OSError) and not isinstance(err, OutputFolderError):
        return err.errno in DISK_FULL_ERRNOS
    return type(err).__name__ == "SafetensorError" and any(t in str(err) for t in _DISK_FULL_TEXT)


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (where free space can be measured before the path exists)."""
    path = Path(path).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _mb(n_bytes: float) -> str:
    """Bytes as MB, with a decimal below 10 MB so a small file does not read as "0 MB"."""
    mb = n_bytes / 1e6
    return f"{mb:.1f}" if mb < 10 else f"{mb:.0f}"


def disk_full_error(
    path: str | os.PathLike, what: str, needed_bytes: int | None, then: str, code: int = errno.ENOSPC
) -> DiskFullError:
    """The :class:`DiskFullError` for ``what`` at ``path``: how much it needs and how much is free, the fix, and
    ``then`` (what a rerun does: where it resumes)."""
    path = Path(path)
    try:
        free = f"{_mb(shutil.disk_usage(_existing(path)).free)} MB free"
    except OSError:  # pragma: no cover - the file system is gone altogether
        free = "free space unknown"
    need = f"needs ~{_mb(needed_bytes)} MB; " if needed_bytes else ""
    reason = "disk quota exceeded" if code == getattr(errno, "EDQUOT", None) else "no space left on device"
    return DiskFullError(
        f"{reason} while writing {what} {path} ({need}{free}): free space or point output_dir at another disk "
        f"{_OUTPUT_DIR_HOW}; {then}",
        code,
        path,
    )


def _code(err: BaseException) -> int:
    """The OS error code of a disk-full error (safetensors' carries it only in its text)."""
    if isinstance(err, OSError) and err.errno:
        return err.errno
    return getattr(errno, "EDQUOT", errno.ENOSPC) if "quota" in str(err).lower() else errno.ENOSPC


@contextlib.contextmanager
def disk_full_guard(
    path: str | os.PathLike, what: str, then: str | Callable[[], str], needed_bytes: int | None = None
) -> Iterator[None]:
    """Turn a full disk inside the block into a :class:`DiskFullError` naming ``what`` at ``path``, the space it
    needs, the fix, and ``then`` (what a rerun does; a callable is asked only when the disk is full, since finding
    out can cost a read). Every other error passes through unchanged; removing half-written files is the block's
    job, since only it knows which are its own."""
    try:
        yield
    except Exception as err:
        if not is_disk_full(err):
            raise
        note = then() if callable(then) else then
        raise disk_full_error(path, what, needed_bytes, note, _code(err)) from None


def not_writable_error(folder: str | os.PathLike, err: OSError) -> OutputNotWritableError:
    """The :class:`OutputNotWritableError` for ``folder``, naming the file the OS refused when it is not the folder."""
    reason = "read-only file system" if err.errno == errno.EROFS else "permission denied"
    where = f": cannot write {err.filename}" if err.filename and Path(err.filename) != Path(folder) else ""
    return OutputNotWritableError(
        f"output folder {folder} is not writable ({reason}{where}): choose another output_dir {_OUTPUT_DIR_HOW}",
        err.errno,
        folder,
    )


@contextlib.contextmanager
def not_writable_guard(folder: str | os.PathLike, then: str = "nothing more was written") -> Iterator[None]:
    """Turn a refused write inside the block (``EROFS``, ``EACCES``, ``EPERM``) into an
    :class:`OutputNotWritableError` naming the folder and the fix, and a full disk into a :class:`DiskFullError`
    (``then``: what that leaves); every other error passes through."""
    try:
        yield
    except OutputFolderError:
        raise
    except OSError as err:
        if err.errno in NOT_WRITABLE_ERRNOS:
            raise not_writable_error(folder, err) from None
        if err.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(err.filename or folder, "the run folder", None, then, err.errno) from None
        raise


def prepare_output_dir(folder: str | os.PathLike) -> Path:
    """Create the run folder and prove it can be written, before any model is loaded.

    Why a probe file: ``os.access`` answers for the permission bits (and root passes those anyway) but not for every
    file system that refuses writes, and a run that only finds out after minutes of model loading, or at its first
    checkpoint, has wasted them. The probe is created and removed at once; the error names the fix."""
    folder = Path(folder)
    probe = folder / f".write-probe-{os.getpid()}"
    with not_writable_guard(folder, "nothing was written yet"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
            probe.unlink()
        except OSError as err:
            if err.filename is not None and Path(err.filename) == probe:
                err.filename = str(folder)  # the probe is ours: the folder is what the user chose
            raise
    return folder


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temp file and a rename: a crash or a full disk leaves the old file or the
    new one, never a truncated one (the temp file is removed when the write fails). Why it matters: a half-written
    ``summary.json`` would mark an unfinished run as done (``run_many`` skips folders that have one)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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
    evaluation split added by :func:`b2lib.experiments.reevaluate.add_eval_split`) calls it to record what the folder
    now holds."""
    folder = Path(folder)
    path = folder / FINGERPRINT_FILE
    digest = fingerprint(settings)
    with not_writable_guard(folder, f"{path} was not written (nothing else was changed)"):
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(
            path, json.dumps({"fingerprint": digest, "settings": json.loads(_canonical(settings))}, indent=2)
        )
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
        with not_writable_guard(self.folder, "the folder was not locked and nothing was written"):
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
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        try:
            with not_writable_guard(self.folder, "the folder was not locked and nothing was written"):
                fh.seek(0)
                fh.truncate()
                fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {started} ({' '.join(sys.argv)[:200]})")
                fh.flush()
        except OSError:
            fh.close()  # releases the lock: the run does not start
            raise
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
