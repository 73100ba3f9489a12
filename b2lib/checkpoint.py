"""Checkpoints without pickle: trainable weights and optimizer tensors in safetensors, everything else in JSON.

Why not ``accelerator.save_state``: it pickles the optimizer and RNG states. Here no RNG state is needed (a stage's
randomness is derived from ``(seed, stage)``), the optimizer's tensors go to safetensors and its scalars to JSON, so a
checkpoint can be inspected and loaded without executing code. Writes are atomic (temp folder, then rename), so a
crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "save_lora"]


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in state["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(trainer, folder: str | os.PathLike) -> Path:
    """Write ``trainer``'s resumable state to ``folder`` (replaced atomically)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    named = trainer.named_trainable()
    save_file({k: v.detach().contiguous().cpu() for k, v in named.items()}, str(tmp / "trainable.safetensors"))
    opt_tensors, opt_meta = _optimizer_tensors(trainer.optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    meta = {
        "stage": trainer.stage,
        "images_seen": trainer.images_seen,
        "unet_rows_seen": trainer.unet_rows_seen,
        "log": trainer.log,
        "normalizer": trainer.normalizer.state_dict(),
        "optimizer": opt_meta,
        "config": trainer.config.to_dict(),
    }
    (tmp / "trainer.json").write_text(json.dumps(meta))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def load_checkpoint(trainer, folder: str | os.PathLike) -> None:
    """Restore a state written by :func:`save_checkpoint` into a freshly built trainer of the same configuration."""
    folder = Path(folder)
    files = [folder / n for n in ("trainable.safetensors", "optimizer.safetensors", "trainer.json")]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete checkpoint (missing {', '.join(missing)}).")
    meta = json.loads(files[2].read_text())
    named = trainer.named_trainable()
    weights = load_file(str(files[0]))
    if set(weights) != set(named) or any(weights[k].shape != p.shape for k, p in named.items()):
        raise ValueError(
            f"Checkpoint {folder} holds different trainable parameters than this trainer "
            "(was it written with another LoRA rank / use_lora setting?)."
        )
    with torch.no_grad():
        for name, param in named.items():
            param.copy_(weights[name].to(param.device, param.dtype))
    _restore_optimizer(trainer.optimizer, load_file(str(files[1])), meta["optimizer"])
    trainer.normalizer.load_state_dict(meta["normalizer"])
    trainer.stage = meta["stage"]
    trainer.images_seen = meta["images_seen"]
    trainer.unet_rows_seen = meta.get("unet_rows_seen", 0)
    trainer.log = meta["log"]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The ``checkpoints/stage_XXXX`` folder of the highest stage in ``run_dir``, if any."""
    ckpts = sorted(Path(run_dir, "checkpoints").glob("stage_[0-9][0-9][0-9][0-9]"))
    return ckpts[-1] if ckpts else None


def save_lora(pipe, folder: str | os.PathLike) -> Path:
    """Save the UNet's LoRA adapter in diffusers' format: ``StableDiffusionPipeline.load_lora_weights(folder)`` on the
    base pipeline restores the fine-tuned model."""
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layers = get_peft_model_state_dict(pipe.unet)
    if not layers:
        raise ValueError("The UNet has no LoRA adapter to save (was the trainer run with use_lora=False?).")
    type(pipe).save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
    return folder
