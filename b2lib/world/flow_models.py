"""The embedded world's flow-matching model: a tiny Stable Diffusion 3 (diffusers), and its loader.

It sits beside the DDIM world of :mod:`b2lib.world.models` and shares its VAE (frozen), its CLIP BPE tokenizer and
its 20-token prompt budget, so the two worlds differ only in the denoiser and the noise process: an MM-DiT
(``SD3Transformer2DModel``) trained by rectified flow and sampled by ``FlowMatchEulerDiscreteScheduler``.
Everything is a stock diffusers object: a folder written by ``save_pretrained`` loads with
``StableDiffusion3Pipeline.from_pretrained`` and LoRA adapters round-trip through
``save_lora_weights``/``load_lora_weights``.

How diffusers' SD3 pipeline (0.42) treats this configuration, which the rest of the library must respect:

* **No T5.** With ``text_encoder_3=None`` the pipeline's ``_get_t5_prompt_embeds`` returns *zeros* of shape
  ``(N, max_sequence_length, joint_attention_dim)`` and appends them to the CLIP tokens, 256 of them by default. Those
  zeros are not inert: the context embedder has a bias, so every zero becomes a real (identical) token that all image
  tokens attend to. The world is trained with exactly what the stock default feeds (:data:`MAX_SEQUENCE_LENGTH` =
  256), so a stock ``pipe(prompt)`` samples what it learned; but it is *computed* as one zero token standing for the
  256 (:class:`b2lib.policies.flow.RepeatedTokenAttnProcessor`: identical keys weigh as one key with ``log 256`` added
  to its logit), which costs one token instead of 256. b2lib's sampler and trainer do the same
  (:class:`b2lib.policies.flow.FlowSDEPolicy`).
* **CLIP embeddings.** Each CLIP's *penultimate* hidden states (``hidden_states[-2]``) are concatenated on the
  feature axis and zero-padded up to ``joint_attention_dim``; here ``joint_attention_dim`` = 64 + 64 exactly, so the
  pad is empty. The pooled vector is the concatenation of both encoders' projected EOS embeddings (``text_embeds``):
  ``pooled_projection_dim`` = 64 + 64. ``encode_prompt`` returns prompt_embeds ``(N, 20, 128)`` and pooled
  ``(N, 128)``.
* **Loading.** ``save_pretrained`` records the absent T5 as ``[null, null]`` in ``model_index.json``, but
  ``StableDiffusion3Pipeline.from_pretrained(folder)`` still insists on every non-optional component: pass
  ``text_encoder_3=None, tokenizer_3=None`` (diffusers' documented T5-less loading), as
  :func:`load_flow_world_pipeline` does.
* **Latents.** The pipeline decodes ``latents / scaling_factor + shift_factor``, so the VAE config must hold a
  ``shift_factor``; the world's VAE gets 0.0, which keeps the latent arithmetic of the DDIM world (``z * scaling``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import CLIPTextModelWithProjection

from b2lib.policies.flow import STOCK_T5_TOKENS
from b2lib.training.models import clip_bpe_tokenizer, clip_text_encoder
from b2lib.world.models import MAX_TOKENS, WEIGHTS_DIR

__all__ = [
    "FLOW_WEIGHTS_DIR",
    "MAX_SEQUENCE_LENGTH",
    "SHIFT",
    "FLOW_LORA_TARGET_MODULES",
    "clip_text_encoder_with_projection",
    "build_flow_world_pipeline",
    "encode_prompt_ids",
    "load_flow_world_pipeline",
]

#: Where the flow world's shipped weights live: ``pipeline/`` (diffusers folder) and ``report.json``.
FLOW_WEIGHTS_DIR = Path(__file__).parent / "flow_weights"
#: Number of (all-zero) T5 tokens the pipeline appends when there is no T5, at its default: what the world is trained
#: with (computed as one token standing for all of them).
MAX_SEQUENCE_LENGTH = STOCK_T5_TOKENS
#: Timestep shift of the flow scheduler, sigma -> shift*sigma / (1 + (shift-1)*sigma). SD3 shifts towards high noise
#: because a large image, with many redundant latents, stays recognisable at noise levels where a small one is gone;
#: its rule shift = sqrt(m / n) for m latents against the n of its 256 px base (32x32) gives 4 at 1024 px (SD3 settled
#: on 3.0 there) and sqrt(16*16 / (32*32)) = 0.5 for the world. Below 1 would spend the few sampling steps on nearly
#: clean latents, so the world uses no shift (1.0): a uniform sigma grid, training noise levels as drawn.
SHIFT = 1.0
#: LoRA targets of the MM-DiT: the image stream's attention projections and the text stream's (``add_*_proj``,
#: ``to_add_out``; the last block has no ``to_add_out`` because its text stream ends there). Names as in diffusers'
#: ``Attention`` inside ``JointTransformerBlock``.
FLOW_LORA_TARGET_MODULES = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)

#: Width of each CLIP text encoder (hidden size and projection); SD3 pairs CLIP-L (768) and CLIP-bigG (1280).
_CLIP_WIDTH = 64

_REGENERATE = (
    'Regenerate them with `python -c "from b2lib.world.flow_pretrain import regenerate_flow_world; '
    "regenerate_flow_world('b2lib/world/flow_weights')\"` (~85 min on one CPU core), "
    "or restore them with `git checkout -- b2lib/world/flow_weights`."
)


def clip_text_encoder_with_projection(
    hidden: int, intermediate: int, num_layers: int, max_length: int, projection: int, heads: int = 4
) -> CLIPTextModelWithProjection:
    """A CLIP text encoder with its projection head (:func:`b2lib.training.models.clip_text_encoder` with
    ``projection``)."""
    return clip_text_encoder(hidden, intermediate, num_layers, max_length, heads, projection)


def _world_vae() -> AutoencoderKL:
    folder = WEIGHTS_DIR / "pipeline" / "vae"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"The flow world reuses the DDIM world's trained VAE, but {folder} is missing. Regenerate the DDIM world "
            "with `papermill notebooks/00_embedded_world.ipynb out.ipynb` or `git checkout -- b2lib/world/weights`."
        )
    return AutoencoderKL.from_pretrained(folder)


def build_flow_world_pipeline(seed: int = 0, vae: AutoencoderKL | None = None) -> StableDiffusion3Pipeline:
    """A randomly initialised flow world: MM-DiT + two CLIP text encoders, with the world's frozen VAE.

    The transformer sees the world's 16x16x4 latents as 8x8 = 64 patch tokens (patch 2) of width 128 (4 heads x 32),
    4 joint blocks: 2.3 M parameters, about the DDIM world's UNet (1.7 M) and as fast per training step, so it
    pretrains on 2 CPU cores in well under an hour. ``vae`` defaults to the shipped DDIM world's VAE
    (``b2lib/world/weights/pipeline/vae``); it is frozen and given ``shift_factor`` 0.0 if it has none (SD3's
    pipeline reads it).
    """
    vae = vae if vae is not None else _world_vae()
    vae.eval().requires_grad_(False)
    if vae.config.get("shift_factor") is None:
        vae.register_to_config(shift_factor=0.0)
    torch.manual_seed(seed)
    text_encoder = clip_text_encoder_with_projection(_CLIP_WIDTH, 4 * _CLIP_WIDTH, 3, MAX_TOKENS, _CLIP_WIDTH)
    text_encoder_2 = clip_text_encoder_with_projection(_CLIP_WIDTH, 4 * _CLIP_WIDTH, 3, MAX_TOKENS, _CLIP_WIDTH)
    heads, head_dim = 4, 32
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=vae.config.latent_channels,
        out_channels=vae.config.latent_channels,
        num_layers=4,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=2 * _CLIP_WIDTH,  # both CLIPs' hidden states side by side: no zero padding needed
        caption_projection_dim=heads * head_dim,  # the text stream runs at the transformer's width
        pooled_projection_dim=2 * _CLIP_WIDTH,  # both CLIPs' projected EOS embeddings side by side
        pos_embed_max_size=8,  # the 8x8 patch grid itself (SD3 keeps 96 for crops of larger images)
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=SHIFT)
    tokenizer = clip_bpe_tokenizer(model_max_length=MAX_TOKENS)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def encode_prompt_ids(
    pipe: StableDiffusion3Pipeline,
    input_ids: torch.Tensor,
    input_ids_2: torch.Tensor | None = None,
    max_sequence_length: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompt_embeds, pooled_prompt_embeds)`` of token ids, computed as ``pipe.encode_prompt`` computes them from
    text, but differentiable and without re-tokenizing: what training (and anything that backpropagates into the
    text encoders) needs. ``input_ids_2`` (for ``tokenizer_2``) defaults to ``input_ids``: the world's two tokenizers
    are the same. ``max_sequence_length`` zero "T5" tokens are appended; the default, 1, is the token that stands for
    the stock pipeline's :data:`MAX_SEQUENCE_LENGTH` under :class:`~b2lib.policies.flow.RepeatedTokenAttnProcessor`."""
    input_ids_2 = input_ids if input_ids_2 is None else input_ids_2
    hidden, pooled = [], []
    for encoder, ids in ((pipe.text_encoder, input_ids), (pipe.text_encoder_2, input_ids_2)):
        out = encoder(ids.to(encoder.device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])  # SD3 conditions on the penultimate layer (clip_skip=None)
        pooled.append(out.text_embeds)
    embeds = torch.cat(hidden, dim=-1)
    joint = pipe.transformer.config.joint_attention_dim
    embeds = F.pad(embeds, (0, joint - embeds.shape[-1]))
    if max_sequence_length:  # the T5 slot: zeros, as the pipeline fills it without T5
        embeds = torch.cat([embeds, embeds.new_zeros(embeds.shape[0], max_sequence_length, joint)], dim=1)
    return embeds, torch.cat(pooled, dim=-1)


def load_flow_world_pipeline(
    path: str | os.PathLike | None = None, device: str | torch.device | None = None
) -> StableDiffusion3Pipeline:
    """The flow world's pretrained ``StableDiffusion3Pipeline`` (default: the shipped ``flow_weights/pipeline``),
    loaded with stock ``from_pretrained`` from the local folder, T5 declared absent; moved to ``device`` if given."""
    folder = Path(path) if path is not None else FLOW_WEIGHTS_DIR / "pipeline"
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"The flow world's weights are missing: no pipeline folder at {folder}. {_REGENERATE}")
    try:
        pipe = StableDiffusion3Pipeline.from_pretrained(
            folder, text_encoder_3=None, tokenizer_3=None, local_files_only=True
        )
    except (OSError, ValueError, RuntimeError, json.JSONDecodeError) as err:
        raise RuntimeError(f"The flow world pipeline at {folder} could not be loaded ({err}). {_REGENERATE}") from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device) if device is not None else pipe
