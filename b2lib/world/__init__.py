"""The shape world: a procedural 64x64 world of flat coloured shapes, its prompt templates with
train/test splits, and a programmatic judge. Pure numpy/scipy/Pillow (no torch), so datasets and
evaluation can run anywhere."""

from b2lib.world.judge import (
    Detection,
    JudgeResult,
    alignment_rate,
    degrade,
    detect_objects,
    judge,
    judge_accuracy,
    judge_batch,
)
from b2lib.world.prompts import (
    TEMPLATES,
    PromptSpec,
    all_prompts,
    format_prompt,
    parse_prompt,
    perturb_prompt,
    prompt_split,
    random_caption_scene,
    sample_scene,
    split_prompts,
    template_of,
)
from b2lib.world.scenes import (
    BACKGROUND,
    CANVAS,
    COLOURS,
    COUNT_WORDS,
    COUNTS,
    RELATIONS,
    SHAPES,
    SIZE_RANGE,
    Obj,
    Scene,
    caption,
    render,
    render_batch,
)

__all__ = [
    "BACKGROUND",
    "CANVAS",
    "COLOURS",
    "COUNT_WORDS",
    "COUNTS",
    "RELATIONS",
    "SHAPES",
    "SIZE_RANGE",
    "TEMPLATES",
    "Detection",
    "JudgeResult",
    "Obj",
    "PromptSpec",
    "Scene",
    "alignment_rate",
    "all_prompts",
    "caption",
    "degrade",
    "detect_objects",
    "format_prompt",
    "judge",
    "judge_accuracy",
    "judge_batch",
    "parse_prompt",
    "perturb_prompt",
    "prompt_split",
    "random_caption_scene",
    "render",
    "render_batch",
    "sample_scene",
    "split_prompts",
    "template_of",
]

_LAZY = {
    "load_world_pipeline": "models",
    "load_clip_score": "models",
    "load_bertscore": "models",
    "WEIGHTS_DIR": "models",
}
__all__ += list(_LAZY)


def __getattr__(name: str):
    """The model loaders import torch/diffusers, so they load on first use: the world itself stays torch-free."""
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
