"""Pretraining the flow world from scratch: the MM-DiT and both CLIP text encoders, by rectified flow, on CPU.

The VAE is the DDIM world's, frozen, so the flow world learns the same latent space from the same rendered scenes
(:func:`b2lib.world.pretrain.make_dataset`) and the two worlds are comparable image for image. One entry point,
:func:`pretrain_flow_world`, writes the shipped ``flow_weights`` folder and a report of wall time, sizes and losses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusion3Pipeline

from b2lib.policies.base import Cond
from b2lib.policies.flow import compact_zero_tokens, predict_velocity
from b2lib.world.flow_models import (
    MAX_SEQUENCE_LENGTH,
    build_flow_world_pipeline,
    encode_prompt_ids,
    load_flow_world_pipeline,
)
from b2lib.world.pretrain import (
    DenoiserRecipe,
    _finish_report,
    _folder_mb,
    _params,
    _start_report,
    _timed,
    train_denoiser,
)

__all__ = [
    "FlowPretrainConfig",
    "SHIPPED_PHASES",
    "sample_sigmas",
    "train_flow_text_to_image",
    "pretrain_flow_world",
    "regenerate_flow_world",
]


@dataclass
class FlowPretrainConfig:
    """Sizes of the flow world's pretraining. ``full()`` is what makes the shipped weights; ``smoke()`` checks the code.

    ``threads``: torch threads while :func:`pretrain_flow_world` runs (None: leave torch's setting), 1 by default
    because the cores are shared: measured at batch 64 with a niced background job on the other core, 1 thread takes
    0.77 s/step and 2 threads 1.8-2.0 s/step (their OpenMP barriers stall whenever a core is taken), 2.5x slower.
    On idle cores 2 threads should reach ~0.56 s/step (the DDIM world's UNet step is 0.89 s on 1 thread here and took
    0.66 s on 2 idle threads, weights/report.json; the MM-DiT step costs 0.85-0.95x the UNet's).
    ``steps``: 1 thread, batch 64: 0.79 s/step median, 0.68 s best, over 20 steps; encoding 2,048 images took 21 s, so
    16k take ~3 min. 2,800 steps: ~40 min in all (35-45 min).
    ``ema_decay`` 0.995 averages the last ~200 steps (~7% of the run); SD's 0.999 would still carry the early,
    untrained weights of so short a run (0.999^1000 = 37%).
    ``sigma_sampling`` "logit_normal" (SD3's default, m=0, s=1): noise levels drawn as sigmoid(N(m, s^2)), which puts
    the training signal on intermediate noise, where the velocity is hardest to predict and matters most to samples
    (SD3 paper, Esser et al. 2024, best of their rectified-flow variants); at the ends the optimal velocity is either
    trivial (sigma -> 1: the input minus the mean latent) or unlearnable (sigma -> 0: the noise, barely visible in the
    input). "uniform" draws sigma ~ U(0, 1), the plain rectified-flow objective.
    """

    seed: int = 0
    n_images: int = 16_000
    steps: int = 2_800
    batch: int = 64
    lr: float = 3e-4
    warmup: int = 100
    weight_decay: float = 1e-2
    caption_dropout: float = 0.1
    ema_decay: float = 0.995
    sigma_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    threads: int | None = 1
    #: a flow-world pipeline folder to start from instead of random weights: a further phase of pretraining, on its
    #: own warmup and cosine schedule (None: from scratch)
    init_from: str | None = None
    #: steps between checkpoints (``out_dir/checkpoint.pt``); an interrupted run started again resumes there
    checkpoint_every: int = 200

    @classmethod
    def full(cls, **kw) -> "FlowPretrainConfig":
        return cls(**kw)

    @classmethod
    def smoke(cls, **kw) -> "FlowPretrainConfig":
        base = dict(n_images=48, steps=3, batch=4, warmup=1)
        base.update(kw)
        return cls(**base)


def sample_sigmas(n: int, cfg: FlowPretrainConfig, shift: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` training noise levels in (0, 1): drawn by ``cfg.sigma_sampling``, then shifted as the scheduler shifts its
    sampling grid (sigma -> shift*sigma / (1 + (shift-1)*sigma); the identity at the world's shift 1), so training and
    sampling agree on what a noise level means."""
    if cfg.sigma_sampling == "logit_normal":
        sigma = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(n, generator=generator))
    elif cfg.sigma_sampling == "uniform":
        sigma = torch.rand(n, generator=generator)
    else:
        raise ValueError(f"sigma_sampling must be 'logit_normal' or 'uniform', not {cfg.sigma_sampling!r}.")
    return shift * sigma / (1 + (shift - 1) * sigma)


def train_flow_text_to_image(
    pipe: StableDiffusion3Pipeline,
    images: np.ndarray,
    captions: Sequence[str],
    cfg: FlowPretrainConfig,
    progress: bool = True,
    checkpoint: str | None = None,
) -> dict:
    """Train the transformer and both text encoders jointly by rectified flow, from scratch.

    Each step noises a latent on the straight path x_sigma = (1 - sigma) x0 + sigma eps and regresses the transformer
    on the velocity eps - x0 (what ``FlowMatchEulerDiscreteScheduler.step`` integrates), with the timestep given as
    sigma * num_train_timesteps, exactly as the SD3 pipeline passes it. ``caption_dropout`` of the captions become ""
    so classifier-free guidance has an unconditional model (the pipeline's negative prompt is "" by default). Latents
    come from the frozen VAE, encoded once (the posterior is re-sampled per step), in SD3's convention
    (z - shift_factor) * scaling_factor. The weights kept are an exponential moving average (``ema_decay``).
    Returns first/final loss, the per-step losses, the encoding time and the seconds per step
    (:func:`b2lib.world.pretrain.train_denoiser`, the loop both worlds share).
    """
    transformer, encoders = pipe.transformer, [pipe.text_encoder, pipe.text_encoder_2]
    n_train = pipe.scheduler.config.num_train_timesteps
    shift = float(pipe.scheduler.config.shift)
    compact_zero_tokens(transformer)

    def loss_fn(x0: torch.Tensor, noise: torch.Tensor, ids: list[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        sigma = sample_sigmas(cfg.batch, cfg, shift, gen)
        s = sigma.view(-1, 1, 1, 1)
        noisy = (1.0 - s) * x0 + s * noise
        embeds, pooled = encode_prompt_ids(pipe, *ids)
        # one zero "T5" token standing for the stock pipeline's MAX_SEQUENCE_LENGTH (b2lib.policies.flow)
        pred = predict_velocity(
            transformer, noisy, sigma * n_train, Cond(embeds, pooled=pooled), 1.0, MAX_SEQUENCE_LENGTH
        )
        return F.mse_loss(pred, noise - x0)

    recipe = DenoiserRecipe(
        cfg.seed,
        cfg.steps,
        cfg.batch,
        cfg.lr,
        cfg.warmup,
        cfg.weight_decay,
        cfg.caption_dropout,
        cfg.ema_decay,
        checkpoint,
        cfg.checkpoint_every,
    )
    modules, tokenizers = [transformer, *encoders], [pipe.tokenizer, pipe.tokenizer_2]
    shift_factor = pipe.vae.config.shift_factor or 0.0
    desc = "MM-DiT + text encoders"
    return train_denoiser(pipe, images, captions, recipe, modules, tokenizers, loss_fn, desc, progress, shift_factor)


def pretrain_flow_world(out_dir: str | Path, cfg: FlowPretrainConfig | None = None, progress: bool = True) -> dict:
    """Train the flow world from scratch (on the shipped DDIM world's VAE) and write ``out_dir/pipeline``
    (``StableDiffusion3Pipeline.save_pretrained``, safetensors) and ``out_dir/report.json`` (wall times, parameter
    counts, file sizes, per-step losses)."""
    cfg = cfg or FlowPretrainConfig.full()
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _pretrain_flow_world(Path(out_dir), cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _pretrain_flow_world(out: Path, cfg: FlowPretrainConfig, progress: bool) -> dict:
    report, images, captions = _start_report(out, cfg)
    if cfg.init_from:
        pipe = load_flow_world_pipeline(cfg.init_from)
        report["earlier_phases"] = _earlier_phases(Path(cfg.init_from))
    else:
        pipe = build_flow_world_pipeline(cfg.seed)
    checkpoint = str(out / "checkpoint.pt")
    _timed(report, "text_to_image", train_flow_text_to_image, pipe, images, captions, cfg, progress, checkpoint)
    pipe.save_pretrained(out / "pipeline", safe_serialization=True)

    report["params"] = {
        name: _params(getattr(pipe, name)) for name in ("transformer", "text_encoder", "text_encoder_2", "vae")
    }
    report["size_mb"] = {"pipeline": _folder_mb(out / "pipeline")}
    report["max_sequence_length"] = MAX_SEQUENCE_LENGTH
    report["scheduler_shift"] = float(pipe.scheduler.config.shift)
    report["total_steps"] = cfg.steps + sum(p["config"]["steps"] for p in report.get("earlier_phases", []))
    return _finish_report(out, report, ("text_to_image",))


#: The phases that made the shipped weights, in order, each a change to :meth:`FlowPretrainConfig.full` and each
#: starting from the last one's weights: 2,800 steps from random weights, then 4,000 more on a warm restart of the
#: cosine schedule at a lower peak and a longer average (the loss had stopped falling under the first schedule's
#: last, near-zero learning rates, while the base model still drew 6 % of counting's test images right).
SHIPPED_PHASES: tuple[dict, ...] = (
    {},
    dict(steps=4_000, lr=2e-4, warmup=100, ema_decay=0.998),
)


def regenerate_flow_world(
    out_dir: str | Path, phases: tuple[dict, ...] = SHIPPED_PHASES, progress: bool = True, **common
) -> dict:
    """Run the pretraining ``phases`` in turn (each ``FlowPretrainConfig.full(**common, **phase)``, a phase after the
    first starting from the one before), phase ``k`` in ``out_dir/phase<k>``, and copy the last one's pipeline and
    report to ``out_dir/pipeline`` and ``out_dir/report.json``: what the shipped ``flow_weights`` folder holds. A
    finished phase is not run again, and an interrupted one resumes from its checkpoint."""
    import shutil

    out = Path(out_dir)
    report, earlier = {}, None
    for k, phase in enumerate(phases, start=1):
        folder = out / f"phase{k}"
        cfg = FlowPretrainConfig.full(**{**common, **phase, "init_from": earlier})
        done = (folder / "report.json").is_file() and (folder / "pipeline" / "model_index.json").is_file()
        if done:
            report = json.loads((folder / "report.json").read_text())
        else:
            report = pretrain_flow_world(folder, cfg, progress)
        earlier = str(folder / "pipeline")
    shutil.copytree(Path(earlier), out / "pipeline", dirs_exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _earlier_phases(pipeline_dir: Path) -> list[dict]:
    """The reports of the phases that made ``pipeline_dir`` (its sibling ``report.json``), oldest first, so the report
    of a further phase carries the whole pretraining: every phase's settings, losses and wall time."""
    path = pipeline_dir.parent / "report.json"
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    return [*earlier.pop("earlier_phases", []), earlier]
