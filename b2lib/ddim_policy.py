"""The DDIM policy: Stable Diffusion 1.x (a UNet predicting noise) with DDIM's Gaussian step, the paper's policy.

Every method delegates to the pure math of :mod:`b2lib.ddim` and to the two model calls below, which sampling and the
update's log-prob recomputation share, so the policy whose log-prob is optimised is exactly the one that sampled.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from .ddim import ddim_posterior_mean_std, ddim_step_with_logprob
from .policy import Cond, Policy
from .precision import model_autocast

__all__ = ["DDIMPolicy", "predict_noise", "decode_latents", "DECODE_BATCH"]


def predict_noise(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    timesteps: torch.Tensor | int,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None,
    guidance_scale: float,
) -> torch.Tensor:
    """Guided noise prediction with ONE UNet call on the ``[uncond, cond]`` batch (same as diffusers' pipeline).

    Used both when sampling and when training, so the policy whose log-prob is optimised is the sampled one. Under
    :func:`b2lib.precision.compute_dtype` ``("bf16")`` the UNet runs in bf16 autocast and its output is cast back to the
    latents' dtype before guidance, so what follows (guidance, the DDIM step, the log-prob) is computed in fp32.
    """
    if prompt_embeds.shape[0] != latents.shape[0]:
        raise ValueError(
            f"{prompt_embeds.shape[0]} prompt embeddings for {latents.shape[0]} latents: give one embedding per sample "
            "(repeat_interleave the prompt embeddings over branches)."
        )
    timesteps = torch.as_tensor(timesteps, device=latents.device)
    if negative_prompt_embeds is None or guidance_scale <= 1.0:
        with model_autocast(latents.device):
            out = unet(latents, timesteps, encoder_hidden_states=prompt_embeds).sample
        return out.to(latents.dtype)  # a no-op in fp32
    if negative_prompt_embeds.shape != prompt_embeds.shape:
        raise ValueError(
            f"negative_prompt_embeds {tuple(negative_prompt_embeds.shape)} "
            f"!= prompt_embeds {tuple(prompt_embeds.shape)}."
        )
    if timesteps.ndim == 1:
        timesteps = timesteps.repeat(2)
    model_input, embeds = torch.cat([latents, latents]), torch.cat([negative_prompt_embeds, prompt_embeds])
    with model_autocast(latents.device):
        out = unet(model_input, timesteps, encoder_hidden_states=embeds).sample
    uncond, cond = out.to(latents.dtype).chunk(2)
    return uncond + guidance_scale * (cond - uncond)


#: Latents per VAE decode call. The decoder's activations are the largest tensors of sampling (full resolution,
#: wide channels): past a few dozen images they fall out of the CPU caches and the decode slows down per image (the
#: embedded world on this project's 2-core CPU: 4.4 ms/image in chunks of 4-16, 10 ms/image in one batch of 80).
#: Chunks also bound the decode's peak memory on a GPU, like diffusers' ``vae.enable_slicing()`` but less finely.
DECODE_BATCH = 16


def decode_latents(pipe, latents: torch.Tensor, batch_size: int | None = DECODE_BATCH) -> torch.Tensor:
    """VAE-decode to float images in ``[0, 1]``, kept in memory for the reward (no PNG round trip).

    ``batch_size`` latents are decoded per call (``None``: all at once); each image's pixels do not depend on it. Under
    bf16 compute (:mod:`b2lib.precision`) the decoder runs in autocast and its output is cast back to the latents'
    dtype before the arithmetic below. The VAE's ``shift_factor`` (SD3's latents are shifted as well as scaled) is
    undone when its config has one.
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}.")
    scaled = latents / pipe.vae.config.scaling_factor
    shift = getattr(pipe.vae.config, "shift_factor", None)
    if shift:
        scaled = scaled + shift
    step = batch_size or max(1, len(scaled))
    with model_autocast(latents.device):
        chunks = [pipe.vae.decode(chunk, return_dict=False)[0] for chunk in scaled.split(step)]
    images = torch.cat([chunk.to(latents.dtype) for chunk in chunks])  # a no-op in fp32
    return (images / 2 + 0.5).clamp(0, 1).float()


class DDIMPolicy(Policy):
    """``pipe.unet`` under DDIM: the step keys are the scheduler's timesteps; ``noise_level`` is ``eta``."""

    denoiser_name = "unet"

    def __init__(self, pipe: StableDiffusionPipeline) -> None:
        if not isinstance(pipe.scheduler, DDIMScheduler):
            raise ValueError(
                f"The pipeline's scheduler is {type(pipe.scheduler).__name__}; B²-DiffuRL needs DDIM's Gaussian step. "
                "Use `b2lib.models.ensure_ddim(pipe)` or "
                "`pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`."
            )
        super().__init__(pipe)

    def step_keys(self) -> torch.Tensor:
        return self.scheduler.timesteps

    def encode(self, prompts: list[str], guidance_scale: float) -> Cond:
        cond, uncond = self.pipe.encode_prompt(list(prompts), self.device, 1, guidance_scale > 1.0)
        return Cond(cond, uncond)

    def initial_noise(self, n: int, generator: torch.Generator | None, dtype: torch.dtype) -> torch.Tensor:
        config = self.pipe.unet.config
        shape = (n, config.in_channels, config.sample_size, config.sample_size)
        noise = randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)
        return noise * self.scheduler.init_noise_sigma

    def predict(
        self, model: torch.nn.Module, latents: torch.Tensor, key: torch.Tensor, cond: Cond, guidance_scale: float
    ) -> torch.Tensor:
        model_input = self.scheduler.scale_model_input(latents, key)
        return predict_noise(model, model_input, key, cond.embeds, cond.negative, guidance_scale)

    def mean_std(
        self, pred: torch.Tensor, key: torch.Tensor, latents: torch.Tensor, noise_level: float, explore_grid: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return ddim_posterior_mean_std(self.scheduler, pred, key, latents, noise_level, explore_grid)

    def step(
        self,
        pred: torch.Tensor,
        key: torch.Tensor,
        latents: torch.Tensor,
        noise_level: float,
        generator: torch.Generator | None,
        explore_grid: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return ddim_step_with_logprob(
            self.scheduler, pred, key, latents, noise_level, generator=generator, explore_grid=explore_grid
        )

    def deterministic_step(self, pred: torch.Tensor, key: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return self.scheduler.step(pred, key, latents, eta=0.0).prev_sample

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return decode_latents(self.pipe, latents)
