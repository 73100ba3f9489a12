"""VAE decoding of latents to images, shared by both policies (SD 1.x and SD3: the same call, SD3's latent shift
undone where its VAE config has one).
"""

from __future__ import annotations

import torch

from b2lib.utils.precision import model_autocast

__all__ = ["decode_latents", "DECODE_BATCH"]

#: Latents per VAE decode call. The decoder's activations are the largest tensors of sampling (full resolution,
#: wide channels): past a few dozen images they fall out of the CPU caches and the decode slows down per image (the
#: embedded world on this project's 2-core CPU: 4.4 ms/image in chunks of 4-16, 10 ms/image in one batch of 80).
#: Chunks also bound the decode's peak memory on a GPU, like diffusers' ``vae.enable_slicing()`` but less finely.
DECODE_BATCH = 16


def decode_latents(pipe, latents: torch.Tensor, batch_size: int | None = DECODE_BATCH) -> torch.Tensor:
    """VAE-decode to float images in ``[0, 1]``, kept in memory for the reward (no PNG round trip).

    ``batch_size`` latents are decoded per call (``None``: all at once); each image's pixels do not depend on it. Under
    bf16 compute (:mod:`b2lib.utils.precision`) the decoder runs in autocast and its output is cast back to the latents'
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
