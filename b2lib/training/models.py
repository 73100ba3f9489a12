"""Building and loading the models: a CLIP BPE tokenizer, tiny pipelines from config, hub/local loading, LoRA.

Everything here goes through stock diffusers/transformers/peft objects, so what b2lib trains is a normal
:class:`~diffusers.StableDiffusionPipeline` that the rest of the ecosystem can load and save.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

__all__ = [
    "clip_bpe_tokenizer",
    "load_sd_pipeline",
    "ensure_ddim",
    "add_lora",
    "adapters_disabled",
    "lora_fused",
    "LORA_TARGET_MODULES",
    "LORA_TARGET_MODULES_ALL",
    "LORA_TARGET_MODULES_MMDIT",
    "load_sd3_pipeline",
    "LORA_TARGETS",
]

#: The UNet attention projections that DDPO and the paper adapt with LoRA.
LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
#: Every linear and convolution of the UNet's blocks: attention, feed-forward, the transformers' in/out projections,
#: the resnets' convolutions and their timestep projections. Why: a small UNet keeps most of its capacity outside
#: attention, so an attention-only adapter barely changes its output (measured: approx KL ~1e-7 per stage on the
#: embedded world). Stock diffusers loads such an adapter with ``load_lora_weights`` (conv LoRA included; tested).
LORA_TARGET_MODULES_ALL = LORA_TARGET_MODULES + (
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "time_emb_proj",
)
#: An SD3-family MM-DiT's linears: both streams' attention projections (the text stream's ``add_*_proj`` and
#: ``to_add_out``) and feed-forwards (``ff``, ``ff_context``); names as in diffusers' ``JointTransformerBlock``.
LORA_TARGET_MODULES_MMDIT = LORA_TARGET_MODULES + (
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
)
#: ``TrainerConfig.lora_targets`` names -> module name lists
LORA_TARGETS = {"attention": LORA_TARGET_MODULES, "all": LORA_TARGET_MODULES_ALL, "mmdit": LORA_TARGET_MODULES_MMDIT}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode map (the base alphabet of the BPE vocabulary)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def clip_bpe_tokenizer(model_max_length: int = 77, cache_dir: str | os.PathLike | None = None) -> CLIPTokenizer:
    """A :class:`~transformers.CLIPTokenizer` built from the real CLIP BPE merges that ship inside open_clip.

    Why: the hub tokenizer (``openai/clip-vit-large-patch14``) cannot be downloaded here, but its vocabulary is exactly
    CLIP's 49,408-token BPE, whose merge list open_clip carries as ``bpe_simple_vocab_16e6.txt.gz``. Rebuilding
    ``vocab.json``/``merges.txt`` from it gives token ids identical to Stable Diffusion's tokenizer.
    """
    import open_clip

    bpe_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    alphabet = list(_bytes_to_unicode().values())
    vocab = alphabet + [a + "</w>" for a in alphabet] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out = Path(cache_dir) if cache_dir is not None else Path(tempfile.mkdtemp(prefix="clip_bpe_"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return CLIPTokenizer(
        str(out / "vocab.json"),
        str(out / "merges.txt"),
        model_max_length=model_max_length,
        pad_token="<|endoftext|>",
    )


def _sd_scheduler(**overrides) -> DDIMScheduler:
    """Stable Diffusion v1's DDIM configuration (``set_alpha_to_one=False`` keeps the last step stochastic)."""
    config = dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    config.update(overrides)
    return DDIMScheduler(**config)


def clip_text_encoder(
    hidden: int, intermediate: int, num_layers: int, max_length: int, heads: int = 4, projection: int | None = None
) -> CLIPTextModel:
    """A randomly initialised CLIP text transformer over CLIP's 49,408-token BPE vocabulary (SD's text encoder kind).
    ``projection``: with a projection head of that width (``CLIPTextModelWithProjection``, SD3's kind: its pooled
    ``text_embeds`` condition the MM-DiT's timestep embedding)."""
    extra = {} if projection is None else {"projection_dim": projection}
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        max_position_embeddings=max_length,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        **extra,
    )
    if projection is None:
        return CLIPTextModel(config)
    from transformers import CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(config)


def assemble_pipeline(vae, unet, text_encoder, max_length: int, tokenizer_dir=None) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline from components, with the CLIP BPE tokenizer, SD's DDIM and no safety checker."""
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_bpe_tokenizer(model_max_length=max_length, cache_dir=tokenizer_dir),
        unet=unet,
        scheduler=_sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def ensure_ddim(pipe: StableDiffusionPipeline) -> StableDiffusionPipeline:
    """Give the pipeline a DDIM scheduler with its own config (the policy view needs DDIM's Gaussian step)."""
    if not isinstance(pipe.scheduler, DDIMScheduler):
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


def load_sd_pipeline(
    name_or_path: str | os.PathLike,
    torch_dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> StableDiffusionPipeline:
    """Load a StableDiffusionPipeline from a local folder or a hub name, with DDIM and no safety checker.

    Errors say what to do: a local path that does not exist, or a hub name while the hub is unreachable/offline.
    """
    path = Path(name_or_path).expanduser()
    is_hub_name = (
        not path.exists() and str(name_or_path).count("/") == 1 and not str(name_or_path).startswith((".", "/", "~"))
    )
    if not path.exists() and not is_hub_name:
        raise FileNotFoundError(
            f"No pipeline folder at {path}. Pass a folder written by `pipe.save_pretrained(...)` or a hub name such as "
            "'CompVis/stable-diffusion-v1-4'."
        )
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(path) if path.exists() else str(name_or_path),
            torch_dtype=torch_dtype,
            safety_checker=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError) as err:
        if path.exists():
            raise
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        raise OSError(
            f"Could not load '{name_or_path}' from the Hugging Face hub"
            + (" (HF_HUB_OFFLINE is set)" if offline else " (is the hub reachable from this machine?)")
            + ". Download it where the hub is reachable (e.g. `huggingface-cli download "
            f"{name_or_path}`) or pass a local folder. Original error: {err}"
        ) from err
    ensure_ddim(pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_sd3_pipeline(
    name_or_path: str | os.PathLike,
    torch_dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
):
    """Load an SD3-family ``StableDiffusion3Pipeline`` (e.g. ``stabilityai/stable-diffusion-3.5-medium``) from a folder
    or the hub. Offline (``HF_HUB_OFFLINE``) or without hub access it fails at once, saying what to do; a folder saved
    without T5 (the flow world) loads with ``text_encoder_3=None``."""
    from diffusers import StableDiffusion3Pipeline

    path = Path(name_or_path).expanduser()
    if path.exists():
        t5 = json.loads((path / "model_index.json").read_text()).get("text_encoder_3", [None])[0] is None
        extra = {"text_encoder_3": None, "tokenizer_3": None} if t5 else {}
        pipe = StableDiffusion3Pipeline.from_pretrained(str(path), torch_dtype=torch_dtype, **extra)
    else:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        try:
            pipe = StableDiffusion3Pipeline.from_pretrained(str(name_or_path), torch_dtype=torch_dtype)
        except (OSError, ValueError) as err:
            raise OSError(
                f"Could not load '{name_or_path}' from the Hugging Face hub"
                + (" (HF_HUB_OFFLINE is set)" if offline else " (is the hub reachable from this machine?)")
                + ". SD3.5 models are gated: accept the licence on the hub, `huggingface-cli login`, then "
                f"`huggingface-cli download {name_or_path}` where the hub is reachable, or pass a local folder. "
                f"Original error: {err}"
            ) from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def add_lora(
    unet: UNet2DConditionModel,
    rank: int = 4,
    alpha: float | None = None,
    target_modules: tuple[str, ...] = LORA_TARGET_MODULES,
    seed: int | None = None,
) -> list[torch.nn.Parameter]:
    """Freeze the UNet and attach a peft LoRA adapter to its attention; return the trainable parameters.

    ``init_lora_weights='gaussian'`` zeroes the B matrices, so the adapted model starts exactly at the base model.
    The A matrices are random: with ``seed`` they are drawn from a generator seeded with it (the global generator is
    left as it was), so a run's adapter does not depend on what ran before it in the same process.
    """
    from peft import LoraConfig

    unet.requires_grad_(False)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        init_lora_weights="gaussian",
        target_modules=list(target_modules),
    )
    if seed is None:
        unet.add_adapter(config)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet.add_adapter(config)
    params = [p for p in unet.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"LoRA matched no module of the UNet; target_modules={target_modules}.")
    return params


@contextlib.contextmanager
def adapters_disabled(unet: UNet2DConditionModel) -> Iterator[UNet2DConditionModel]:
    """Run ``unet`` as its base model: LoRA adapters (added by :func:`add_lora`) off inside the block, on after.

    Why this and not ``unet.disable_adapters()`` alone: peft's enable/disable also rewrites ``requires_grad`` of the
    adapter weights (off, then on for the active adapter), which would silently change what the optimizer trains if
    an adapter had been frozen on purpose. Here every parameter's ``requires_grad`` is restored exactly.
    This is the reference model of DPOK/GRPO's KL: the pretrained weights, no copy kept.
    """
    if not getattr(unet, "_hf_peft_config_loaded", False):
        raise ValueError(
            "The UNet has no LoRA adapter, so there is no base model to fall back on: build the trainer with "
            "use_lora=True (b2lib.training.models.add_lora)."
        )
    flags = [(p, p.requires_grad) for p in unet.parameters()]
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()
        for param, flag in flags:
            param.requires_grad_(flag)


@contextlib.contextmanager
def lora_fused(unet: torch.nn.Module, enabled: bool = True) -> Iterator[torch.nn.Module]:
    """Inference with the LoRA deltas folded into the base weights, the exact weights restored on exit.

    Why: an unmerged adapter runs two extra small matmuls per adapted layer; on the embedded world's UNet (LoRA on
    every linear and convolution) that is ~40 % of a sampling forward on CPU, and sampling is most of a stage.
    Fused, the forward is the base model's cost. The base weights are copied before the merge and copied back after
    (not un-merged by subtraction), so 100 stages of fuse/restore leave the frozen weights bit-identical. Only for
    ``no_grad`` use: inside the block the adapter receives no gradient. A no-op without adapters or with
    ``enabled=False``; adapters that are disabled (:func:`adapters_disabled`) are not merged.
    """
    from peft.tuners.lora import LoraLayer

    layers = [m for m in unet.modules() if isinstance(m, LoraLayer)] if enabled else []
    layers = [m for m in layers if not m.disable_adapters and not m.merged]
    saved = [(m, m.get_base_layer().weight.detach().clone()) for m in layers]
    if torch.is_grad_enabled() and layers:
        raise RuntimeError("lora_fused is for sampling under torch.no_grad(): a fused adapter gets no gradient.")
    try:
        for m in layers:
            m.merge()
        yield unet
    finally:
        for m, weight in saved:
            m.get_base_layer().weight.data.copy_(weight)
            m.merged_adapters = []
