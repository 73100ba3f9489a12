"""Checkpoints without pickle: trainable weights and optimizer tensors in safetensors, everything else in JSON.

Why not ``accelerator.save_state``: it pickles the optimizer and RNG states. Here no RNG state is needed (a stage's
randomness is derived from ``(seed, stage)``), the optimizer's tensors go to safetensors and its scalars to JSON, so a
checkpoint can be inspected and loaded without executing code. Writes are atomic (temp folder, then rename), so a
crash mid-write leaves the previous checkpoint intact; files are fsynced before the rename, so a power cut cannot
leave a renamed but empty checkpoint. The trainer keeps the last few (``TrainerConfig.keep_checkpoints``) and
:func:`latest_checkpoint` verifies each (files complete, JSON parseable, tensors finite) before trusting it, falling
back to an older one with a warning that names the broken file.

A full disk (``ENOSPC``/``EDQUOT``, or safetensors' own error carrying it) while writing a checkpoint or a LoRA export
removes the half-written temp folder, leaves the previous one as it was, and raises
:class:`~b2lib.utils.rundir.DiskFullError` naming the path, the space needed and free, the fix and where a rerun
resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from b2lib.utils.rundir import DISK_FULL_ERRNOS, disk_full_guard

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "verify_checkpoint",
    "checkpoint_stages",
    "save_lora",
    "save_unet",
    "check_lora",
    "BrokenLoraError",
    "CHECKPOINT_FILES",
    "LORA_FILE",
]

CHECKPOINT_FILES = ("trainable.safetensors", "optimizer.safetensors", "trainer.json")
#: the file diffusers' ``save_lora_weights`` writes and ``load_lora_weights`` reads
LORA_FILE = "pytorch_lora_weights.safetensors"


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # pragma: no cover - folders cannot be opened on some systems (Windows)
        return
    try:
        os.fsync(fd)
    except OSError as err:  # pragma: no cover - a full disk can surface only here (delayed allocation, NFS)
        if err.errno in DISK_FULL_ERRNOS:
            raise
    finally:
        os.close(fd)


def _split_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer ``state_dict`` as ``(tensors for safetensors, the rest for JSON)``."""
    tensors, scalars = {}, {}
    for pid, st in state["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The inverse of :func:`_split_optimizer`."""
    state: dict[int, dict] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    """The bytes ``tensors`` take on disk (safetensors stores them raw), for telling how much space a write needs."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _resume_note(checkpoint_dir: Path) -> str:
    """What rerunning does after a failed checkpoint write: resume from the newest usable checkpoint that is left.
    Called only on the error path, since verifying a checkpoint reads it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fallback is named in the note itself
        try:
            last = latest_checkpoint(checkpoint_dir, subdir="")
        except ValueError:
            last = None
    if last is None:
        return "no earlier checkpoint is complete, so a rerun starts from stage 0"
    return f"rerun it and it resumes from stage {int(last.name.split('_')[1])} (checkpoint {last} is intact)"


def save_checkpoint(trainer, folder: str | os.PathLike) -> Path:
    """Write ``trainer.state_dict()`` to ``folder`` (replaced atomically). Any failure removes the temp folder, so
    nothing half-written is left; a full disk raises :class:`~b2lib.utils.rundir.DiskFullError` saying how much space
    the checkpoint needs, how much is free and from which stage a rerun resumes."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    state = trainer.state_dict()
    weights = {k: v.contiguous().cpu() for k, v in state.pop("trainable").items()}
    opt_tensors, state["optimizer"] = _split_optimizer(state["optimizer"])
    meta = json.dumps(state)
    needed = _nbytes(weights) + _nbytes(opt_tensors) + len(meta)
    with disk_full_guard(folder, "checkpoint", lambda: _resume_note(folder.parent), needed):
        try:
            tmp.mkdir(parents=True)
            save_file(weights, str(tmp / "trainable.safetensors"))
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "trainer.json").write_text(meta)
            for name in CHECKPOINT_FILES:
                _fsync(tmp / name)
            _fsync(tmp)
        except BaseException:  # a full disk, a kill (KeyboardInterrupt), anything: no half-written folder stays
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    _fsync(folder.parent)
    return folder


def _read(folder: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(trainer.json, trainable tensors, optimizer tensors)``; errors name the file that is broken."""
    missing = [n for n in CHECKPOINT_FILES if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete checkpoint (missing {', '.join(missing)}).")
    try:
        meta = json.loads((folder / "trainer.json").read_text())
        meta["stage"], meta["optimizer"], meta["normalizer"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"{folder / 'trainer.json'} is unreadable or incomplete ({type(err).__name__}: {err})."
        ) from None
    tensors = []
    for name in CHECKPOINT_FILES[:2]:
        try:
            tensors.append(load_file(str(folder / name)))
        except Exception as err:  # safetensors raises its own error type for truncated or corrupt files
            raise ValueError(f"{folder / name} is not a readable safetensors file ({err}).") from None
    for name, values in zip(CHECKPOINT_FILES[:2], tensors):
        bad = [k for k, v in values.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise ValueError(
                f"{folder / name} holds non-finite values (in {', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}): the run had diverged when it was written."
            )
    return meta, tensors[0], tensors[1]


def verify_checkpoint(folder: str | os.PathLike) -> str | None:
    """None if ``folder`` is a usable checkpoint (every file present and readable, every tensor finite), else what is
    wrong with it, naming the file."""
    try:
        _read(Path(folder))
    except (FileNotFoundError, ValueError) as err:
        return str(err)
    return None


def load_checkpoint(trainer, folder: str | os.PathLike) -> None:
    """Restore a state written by :func:`save_checkpoint` into a freshly built trainer of the same configuration
    (``trainer.load_state_dict``: the optimizer keeps the trainer's *current* lr, betas, eps and weight decay)."""
    folder = Path(folder)
    meta, weights, opt_tensors = _read(folder)
    try:
        trainer.load_state_dict(
            {**meta, "trainable": weights, "optimizer": _join_optimizer(opt_tensors, meta["optimizer"])}
        )
    except ValueError as err:
        raise ValueError(f"Checkpoint {folder}: {err}") from None


def checkpoint_stages(checkpoint_dir: str | os.PathLike) -> list[Path]:
    """The ``stage_XXXX`` folders of a checkpoint directory, oldest first."""
    return sorted(Path(checkpoint_dir).glob("stage_[0-9][0-9][0-9][0-9]"))


def latest_checkpoint(run_dir: str | os.PathLike, subdir: str = "checkpoints") -> Path | None:
    """The newest *usable* ``<subdir>/stage_XXXX`` folder in ``run_dir`` (``subdir=""``: ``run_dir`` is the checkpoint
    directory itself), None if there is none. A broken one (see :func:`verify_checkpoint`) is skipped with a warning
    naming its file; if every one is broken the error says so, since starting over would silently lose the run."""
    stages = checkpoint_stages(Path(run_dir, subdir) if subdir else Path(run_dir))
    problems = []
    for folder in reversed(stages):
        problem = verify_checkpoint(folder)
        if problem is None:
            if problems:
                warnings.warn(f"Falling back to checkpoint {folder}: " + " ".join(problems), stacklevel=2)
            return folder
        problems.append(problem)
    if problems:
        raise ValueError(
            f"No usable checkpoint in {run_dir}: "
            + " ".join(problems)
            + " Repair or remove the broken folders, or start over (resume=False moves them aside)."
        )
    return None


#: what a rerun of a run does after a failed export: training is checkpointed, so it only exports (and evaluates) again
EXPORT_RERUN = "the model's training is checkpointed, so a rerun resumes it at its last stage and exports again"


def save_lora(pipe, folder: str | os.PathLike, then: str = EXPORT_RERUN) -> Path:
    """Save the denoiser's LoRA adapter in diffusers' format: ``load_lora_weights(folder)`` on the base pipeline
    restores the fine-tuned model (``StableDiffusionPipeline``: the UNet's; ``StableDiffusion3Pipeline``: the
    transformer's).

    Written to a temp folder that then replaces ``folder``, so a failed write (a full disk) leaves the previous export
    or none, never a truncated one; a full disk raises :class:`~b2lib.utils.rundir.DiskFullError` (``then``: what a
    rerun does)."""
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    name = "transformer" if getattr(pipe, "transformer", None) is not None else "unet"
    layers = get_peft_model_state_dict(getattr(pipe, name))
    if not layers:
        raise ValueError(f"The {name} has no LoRA adapter to save (was the trainer run with use_lora=False?).")
    kwargs = {f"{name}_lora_layers": layers}
    with disk_full_guard(folder, "the LoRA adapter", then, _nbytes(layers)):
        replace_folder(folder, lambda tmp: type(pipe).save_lora_weights(tmp, **kwargs, safe_serialization=True))
    return folder


class BrokenLoraError(ValueError):
    """A saved LoRA is missing its file, or the file is truncated or corrupt; the message names the file and the fix."""


def check_lora(folder: str | os.PathLike, run_dir: str | os.PathLike | None = None) -> Path:
    """``folder``'s LoRA file, checked readable (its safetensors header parses and covers the file) before diffusers
    loads it; else :class:`BrokenLoraError` naming the file and how to write it again. ``run_dir``: ``folder`` is a
    finished run's ``<run_dir>/<method>_seed<k>/lora``, and the fix is a rerun of that run.

    Why: a copy cut short or a disk that filled up outside :func:`save_lora` leaves a file that diffusers rejects with
    a bare header error, naming neither the model nor what would restore it."""
    from safetensors import safe_open

    path = Path(folder) / LORA_FILE
    if not path.is_file():
        problem = f"{Path(folder)} holds no {LORA_FILE}"
    else:
        try:
            with safe_open(str(path), "pt") as f:
                f.keys()
            return path
        except Exception as err:  # safetensors' own error type for a short or garbled header
            problem = f"{path} is truncated or corrupt ({path.stat().st_size} bytes; safetensors: {err})"
    raise BrokenLoraError(f"{problem}: {_lora_fix(Path(folder), run_dir)}")


def _lora_fix(folder: Path, run_dir: str | os.PathLike | None) -> str:
    """How to write a broken LoRA again: from the run's checkpoints when it has them, else by training over."""
    if run_dir is None:
        return (
            "save it again from the trained pipeline (b2lib.training.checkpoint.save_lora), or delete the folder and "
            "retrain."
        )
    run, label = Path(run_dir), folder.parent.name
    if latest_checkpoint(folder.parent) is not None:
        return (
            f"rerun the run with resume on, e.g. run_experiment(dataclasses.replace(run_config('{run}'), resume=True)) "
            "(from b2lib.experiments.experiment and b2lib.experiments.reevaluate; run_many and the notebooks skip "
            "finished folders): "
            f"{label} resumes at its last checkpoint and exports its LoRA again."
        )
    return (
        f"{folder.parent / 'checkpoints'} holds no checkpoint to export it from, so train the run over: rerun it with "
        f"resume=False (command line: --no-resume; the folder's content is moved aside), or delete {run} and rerun."
    )


def save_unet(pipe, folder: str | os.PathLike, then: str = EXPORT_RERUN) -> Path:
    """Save a fully fine-tuned UNet (``UNet2DConditionModel.from_pretrained(folder)`` loads it), written like
    :func:`save_lora`: through a temp folder, a full disk raising :class:`~b2lib.utils.rundir.DiskFullError`."""
    folder = Path(folder)
    needed = sum(p.numel() * p.element_size() for p in pipe.unet.parameters())
    with disk_full_guard(folder, "the fine-tuned UNet", then, needed):
        replace_folder(folder, lambda tmp: pipe.unet.save_pretrained(tmp, safe_serialization=True))
    return folder


def replace_folder(folder: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a fresh ``<folder>.tmp``, then put it in ``folder``'s place. Why: whatever goes wrong
    while writing (a full disk, a kill), the temp folder is removed and ``folder`` keeps what it had."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder
