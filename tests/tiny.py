"""Tiny Stable-Diffusion-architecture pipelines built from config (random weights, no download): the tests' models.

Lives with the tests, not in the library: nothing but the suite needs it. ``conftest.py`` wraps it as fixtures, and
the multi-process scripts in ``tests/scripts`` import it by path.
"""

from __future__ import annotations

import os

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel

from b2lib.training.models import assemble_pipeline, clip_text_encoder


def build_tiny_pipeline(
    seed: int = 0,
    image_size: int = 16,
    text_dim: int = 32,
    unet_channels: tuple[int, ...] = (32, 64),
    max_length: int = 16,
    tokenizer_dir: str | os.PathLike | None = None,
) -> StableDiffusionPipeline:
    """A Stable-Diffusion-architecture pipeline with random weights, built from config (no download).

    For tests: every component is the real diffusers/transformers class, just small. The VAE halves the resolution
    per extra block (``image_size`` 16 -> 8x8x4 latents with two blocks).
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=image_size // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=unet_channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=text_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=image_size,
    )
    text_encoder = clip_text_encoder(text_dim, 2 * text_dim, num_layers=2, max_length=max_length)
    return assemble_pipeline(vae, unet, text_encoder, max_length, tokenizer_dir)
