"""Pretraining the embedded world from scratch: the VAE, the text-to-image model (UNet + text encoder), and the CLIP.

Everything trains on rendered scenes with their captions, on CPU, in minutes. One entry point,
:func:`pretrain_world`, writes the shipped weights folder and a report of wall times, parameter counts and sizes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DiffusionPipeline, StableDiffusionPipeline
from diffusers.optimization import get_cosine_schedule_with_warmup
from tqdm.auto import tqdm

from b2lib.rewards.base import OPENAI_MEAN, OPENAI_STD
from b2lib.world.models import build_world_clip, build_world_pipeline, save_world_clip
from b2lib.world.prompts import perturb_prompt, random_caption_scene
from b2lib.world.scenes import caption, render_batch

__all__ = [
    "PretrainConfig",
    "DenoiserRecipe",
    "make_dataset",
    "train_denoiser",
    "train_vae",
    "train_text_to_image",
    "train_clip",
    "pretrain_world",
]


@dataclass
class PretrainConfig:
    """Sizes of the pretraining run. ``full()`` is what made the shipped weights; ``smoke()`` checks the code path."""

    seed: int = 0
    n_images: int = 16_000
    vae_images: int = 8_000
    vae_steps: int = 400
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    t2i_steps: int = 2_500
    t2i_batch: int = 64
    t2i_lr: float = 5e-4
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    clip_steps: int = 800
    clip_batch: int = 128
    clip_lr: float = 5e-4

    @classmethod
    def full(cls, **kw) -> "PretrainConfig":
        return cls(**kw)

    @classmethod
    def smoke(cls, **kw) -> "PretrainConfig":
        base = dict(
            n_images=256,
            vae_images=128,
            vae_steps=3,
            t2i_steps=3,
            clip_steps=3,
            vae_batch=8,
            t2i_batch=8,
            clip_batch=16,
        )
        base.update(kw)
        return cls(**base)


def make_dataset(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``n`` random scenes of all three templates: uint8 images ``(n, 64, 64, 3)`` and their captions."""
    rng = np.random.default_rng(seed)
    scenes = [random_caption_scene(rng) for _ in range(n)]
    return render_batch(scenes), [caption(s) for s in scenes]


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], the VAE's range."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def train_vae(pipe: StableDiffusionPipeline, images: np.ndarray, cfg: PretrainConfig, progress: bool = True) -> dict:
    """Autoencoder: L1 + MSE reconstruction and a tiny KL (SD's recipe, minus the GAN). Then sets
    ``scaling_factor`` = 1 / std of the latents, so the diffusion model sees unit-variance latents as SD's does."""
    vae = pipe.vae.train().requires_grad_(True)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = _to_tensor(images[: cfg.vae_images])
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, 20, cfg.vae_steps)
    losses = []
    for _ in tqdm(range(cfg.vae_steps), desc="VAE", disable=not progress):
        x = data[torch.randint(len(data), (cfg.vae_batch,), generator=gen)]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen)).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + cfg.vae_kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        lat = torch.cat([vae.encode(data[i : i + 256]).latent_dist.mean for i in range(0, min(len(data), 2048), 256)])
        rec = vae.decode(lat[:256]).sample
    vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
    return {
        "final_loss": float(np.mean(losses[-20:])),
        "recon_mae_01": float((rec - data[:256]).abs().mean() / 2),
        "scaling_factor": vae.config.scaling_factor,
    }


def _tokenize(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    return tokenizer(
        list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


@torch.no_grad()
def _ema_update(ema: list[torch.Tensor], params: list[torch.nn.Parameter], decay: float) -> None:
    torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)


@dataclass(frozen=True)
class DenoiserRecipe:
    """The settings of :func:`train_denoiser`, under one set of names (the two worlds' configs name some apart)."""

    seed: int
    steps: int
    batch: int
    lr: float
    warmup: int
    weight_decay: float
    caption_dropout: float
    ema_decay: float
    #: where the loop keeps its state (weights, EMA, optimizer, schedule, random generator, losses) every
    #: ``checkpoint_every`` steps; a run started with an existing file resumes from it and ends where an
    #: uninterrupted run would have (None: no checkpoints)
    checkpoint: str | None = None
    checkpoint_every: int = 200


#: ``loss_fn(x0, noise, token_ids, generator)``: a step's loss from clean latents, their noise and the captions' ids
#: (one tensor per tokenizer); it draws whatever else it needs (timesteps, noise levels) from ``generator``
DenoiserLoss = Callable[[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Generator], torch.Tensor]


def _encode_latents(vae: torch.nn.Module, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior's mean and std of every image: encoded once, so each step re-samples the posterior (cheap)
    instead of re-running the encoder."""
    with torch.no_grad():
        data = _to_tensor(images)
        dists = [vae.encode(data[i : i + 512]).latent_dist for i in range(0, len(data), 512)]
        return torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])


def train_denoiser(
    pipe: DiffusionPipeline,
    images: np.ndarray,
    captions: Sequence[str],
    recipe: DenoiserRecipe,
    modules: Sequence[torch.nn.Module],
    tokenizers: Sequence,
    loss_fn: DenoiserLoss,
    desc: str,
    progress: bool = True,
    shift_factor: float = 0.0,
) -> dict:
    """The one pretraining loop of both worlds' text-to-image models (the DDIM world's UNet by epsilon prediction, the
    flow world's MM-DiT by rectified flow), so the two are trained alike and differ only in ``loss_fn``.

    ``modules`` (the denoiser and its text encoders) train jointly on the frozen VAE's latents of ``images``, in the
    convention ``(z - shift_factor) * scaling_factor``; ``caption_dropout`` of the captions become "" so
    classifier-free guidance has an unconditional model. Each step: AdamW on a cosine schedule with warmup, gradients
    clipped to norm 1, then an exponential moving average (``ema_decay``), whose weights are the ones kept. Every
    random draw comes from one generator seeded ``recipe.seed + 1``, so a run is reproducible end to end.
    Returns first/final loss (mean of the first 10, last 50 steps), the per-step losses, the encoding time and the
    seconds per step.
    """
    t_start = time.perf_counter()
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    sf = pipe.vae.config.scaling_factor
    mean, std = _encode_latents(pipe.vae, images)
    encode_s = time.perf_counter() - t_start
    unique = sorted(set(captions))
    row = {c: i for i, c in enumerate(unique)}
    ids_tables = [_tokenize(tok, unique + [""]) for tok in tokenizers]  # each distinct caption tokenized once
    cap_index, empty = torch.tensor([row[c] for c in captions]), len(unique)
    params = [p for module in modules for p in module.parameters()]
    for module in modules:
        module.train().requires_grad_(True)
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, recipe.warmup, recipe.steps)
    state = _LoopState(params, ema, opt, sched, gen)
    start = state.resume(recipe.checkpoint)
    bar = tqdm(range(start, recipe.steps), desc=desc, disable=not progress, initial=start, total=recipe.steps)
    for step in bar:
        t_step = time.perf_counter()
        idx = torch.randint(len(mean), (recipe.batch,), generator=gen)
        x0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen) - shift_factor) * sf
        cap = cap_index[idx].clone()
        cap[torch.rand(recipe.batch, generator=gen) < recipe.caption_dropout] = empty
        noise = torch.randn(x0.shape, generator=gen)
        loss = loss_fn(x0, noise, [ids[cap] for ids in ids_tables], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        _ema_update(ema, params, recipe.ema_decay)
        state.losses.append(loss.item())
        state.step_s.append(time.perf_counter() - t_step)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(state.losses[-50:]):.4f}")
        if recipe.checkpoint and ((step + 1) % recipe.checkpoint_every == 0 or step + 1 == recipe.steps):
            state.save(recipe.checkpoint, step + 1)
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    for module in modules:
        module.eval().requires_grad_(False)
    losses, step_s = state.losses, state.step_s
    return {
        "final_loss": float(np.mean(losses[-50:])),
        "first_loss": float(np.mean(losses[:10])),
        "encode_s": encode_s,
        "resumed_at_step": start,
        "s_per_step_median": float(np.median(step_s)) if step_s else 0.0,
        "s_per_step_min": float(np.min(step_s)) if step_s else 0.0,
        "losses": [round(x, 5) for x in losses],
    }


class _LoopState:
    """Everything :func:`train_denoiser` needs to stop after any step and carry on as if it never had: the weights,
    their EMA, the optimizer and its schedule, the random generator and the losses so far."""

    def __init__(self, params, ema, opt, sched, gen: torch.Generator) -> None:
        self.params, self.ema, self.opt, self.sched, self.gen = params, ema, opt, sched, gen
        self.losses: list[float] = []
        self.step_s: list[float] = []

    def save(self, path: str, step: int) -> None:
        """Write the state atomically (a temporary file renamed over the old one), so a kill mid-write leaves the
        previous checkpoint intact."""
        state = {
            "step": step,
            "params": [p.detach().clone() for p in self.params],
            "ema": self.ema,
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "gen": self.gen.get_state(),
            "losses": self.losses,
            "step_s": self.step_s,
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{path}.tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def resume(self, path: str | None) -> int:
        """Load ``path`` if it exists and return the step to carry on from (0 for a fresh start)."""
        if not path or not Path(path).is_file():
            return 0
        state = torch.load(path, weights_only=False)
        if len(state["params"]) != len(self.params):
            raise ValueError(f"The checkpoint {path} is of another model; delete it to start afresh.")
        with torch.no_grad():
            for p, saved in zip(self.params, state["params"]):
                p.copy_(saved)
            for e, saved in zip(self.ema, state["ema"]):
                e.copy_(saved)
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.gen.set_state(state["gen"])
        self.losses, self.step_s = list(state["losses"]), list(state["step_s"])
        return int(state["step"])


def train_text_to_image(
    pipe: StableDiffusionPipeline,
    images: np.ndarray,
    captions: Sequence[str],
    cfg: PretrainConfig,
    progress: bool = True,
) -> dict:
    """Train the UNet and the text encoder jointly on (latent, caption) pairs with epsilon prediction, as SD is trained
    (:func:`train_denoiser`: caption dropout for classifier-free guidance, EMA weights kept). Returns first and final
    loss."""
    unet, text_encoder = pipe.unet, pipe.text_encoder
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)

    def loss_fn(lat: torch.Tensor, noise: torch.Tensor, ids: list[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.t2i_batch,), generator=gen)
        noisy = noise_sched.add_noise(lat, noise, t)
        emb = text_encoder(ids[0])[0]
        return F.mse_loss(unet(noisy, t, encoder_hidden_states=emb).sample, noise)

    recipe = DenoiserRecipe(
        cfg.seed, cfg.t2i_steps, cfg.t2i_batch, cfg.t2i_lr, 100, 1e-2, cfg.caption_dropout, cfg.ema_decay
    )
    out = train_denoiser(
        pipe, images, captions, recipe, [unet, text_encoder], [pipe.tokenizer], loss_fn, "UNet + text encoder", progress
    )
    return {"final_loss": out["final_loss"], "first_loss": out["first_loss"]}


def _clip_batch_images(images: np.ndarray, idx: np.ndarray, gen: torch.Generator) -> torch.Tensor:
    """Normalised CLIP input with light corruption (noise, blur) so the reward also reads blurry generated images."""
    x = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float() / 255.0
    n = x.shape[0]
    blur = torch.rand(n, generator=gen) < 0.3
    if blur.any():
        x[blur] = F.avg_pool2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = (x + 0.03 * torch.rand(n, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def train_clip(
    model: torch.nn.Module,
    tokenizer,
    images: np.ndarray,
    captions: Sequence[str],
    cfg: PretrainConfig,
    progress: bool = True,
) -> dict:
    """Contrastive training with *hard negatives*: each image is also contrasted with a wrong caption of its own
    template (one count, colour, shape or relation changed, or colours swapped), so CLIPScore becomes sensitive to
    exactly the attributes the RL is meant to fix. Duplicate captions in a batch are all positives (soft targets)."""
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    rng = np.random.default_rng(cfg.seed + 2)
    captions = list(captions)
    token_cache: dict[str, torch.Tensor] = {}

    def tokens(texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in token_cache]
        if missing:
            for t, ids in zip(missing, tokenizer(missing)):
                token_cache[t] = ids
        return torch.stack([token_cache[t] for t in texts])

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.clip_lr, weight_decay=0.1)
    sched = get_cosine_schedule_with_warmup(opt, 50, cfg.clip_steps)
    model.train()
    losses, accs = [], []
    for _ in tqdm(range(cfg.clip_steps), desc="CLIP", disable=not progress):
        idx = rng.integers(len(captions), size=cfg.clip_batch)
        caps = [captions[i] for i in idx]
        texts = list(dict.fromkeys(caps + [perturb_prompt(c, rng) for c in caps]))
        row = {t: i for i, t in enumerate(texts)}
        pos = torch.tensor([row[c] for c in caps])
        img = F.normalize(model.encode_image(_clip_batch_images(images, idx, gen)), dim=-1)
        txt = F.normalize(model.encode_text(tokens(texts)), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T  # (B, T)
        target_i2t = F.one_hot(pos, len(texts)).float()
        # text -> image over the captions present in the batch: every image with that caption is a positive
        present = torch.unique(pos)
        target_t2i = (pos[None, :] == present[:, None]).float()
        target_t2i = target_t2i / target_t2i.sum(1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(logits, target_i2t) + F.cross_entropy(logits[:, present].T, target_t2i))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        losses.append(loss.item())
        accs.append((logits.argmax(1) == pos).float().mean().item())
    model.eval().requires_grad_(False)
    return {"final_loss": float(np.mean(losses[-20:])), "train_top1_with_hard_negatives": float(np.mean(accs[-20:]))}


def _folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _start_report(out: Path, cfg) -> tuple[dict, np.ndarray, list[str]]:
    """The output folder, the report's head (config, threads) and the scenes (timed): how both worlds begin."""
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"config": asdict(cfg), "threads": torch.get_num_threads()}
    t = time.perf_counter()
    images, captions = make_dataset(cfg.n_images, cfg.seed)
    report["data_s"] = time.perf_counter() - t
    return report, images, captions


def _timed(report: dict, key: str, train: Callable[..., dict], *args) -> None:
    """``report[key]``: what ``train(*args)`` returns, with its wall time."""
    t = time.perf_counter()
    report[key] = train(*args)
    report[key]["wall_s"] = time.perf_counter() - t


def _finish_report(out: Path, report: dict, parts: Sequence[str]) -> dict:
    """The total time (scenes and the timed ``parts``) and ``out/report.json``."""
    report["total_s"] = report["data_s"] + sum(report[k]["wall_s"] for k in parts)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def pretrain_world(out_dir: str | Path, cfg: PretrainConfig | None = None, progress: bool = True) -> dict:
    """Train all of the world from scratch and write ``out_dir/pipeline`` (diffusers), ``out_dir/clip`` (open_clip)
    and ``out_dir/report.json`` (wall time per component, parameter counts, file sizes, final losses)."""
    cfg = cfg or PretrainConfig.full()
    out = Path(out_dir)
    report, images, captions = _start_report(out, cfg)

    pipe = build_world_pipeline(cfg.seed)
    _timed(report, "vae", train_vae, pipe, images, cfg, progress)
    _timed(report, "text_to_image", train_text_to_image, pipe, images, captions, cfg, progress)
    pipe.save_pretrained(out / "pipeline", safe_serialization=True)

    clip, tokenizer = build_world_clip(cfg.seed)
    _timed(report, "clip", train_clip, clip, tokenizer, images, captions, cfg, progress)
    save_world_clip(clip, out / "clip")

    report["params"] = {
        "unet": _params(pipe.unet),
        "vae": _params(pipe.vae),
        "text_encoder": _params(pipe.text_encoder),
        "clip": _params(clip),
    }
    report["size_mb"] = {"pipeline": _folder_mb(out / "pipeline"), "clip": _folder_mb(out / "clip")}
    return _finish_report(out, report, ("vae", "text_to_image", "clip"))
