"""The two scales of every experiment, one code path: only the models, the prompts and the sizes differ.

* ``"paper"``: Stable Diffusion v1.4 and OpenCLIP ViT-H-14 (laion2B-s32B-b79K) from the hub, the paper's prompt
  templates, the reference hyper-parameters (``TrainerConfig`` defaults), fp16 on GPU.
* ``"embedded"``: the shape world whose weights ship in ``b2lib/world/weights``, on CPU, in minutes.
* ``"smoke"``: the embedded world at toy size (:data:`SMOKE`), the same code path in seconds: what the test suite and
  CI run every notebook at (:mod:`b2lib.notebook`), and ``--preset smoke`` on the command line.
* ``"flow"``: the embedded world's flow-matching model (a tiny SD3: :mod:`b2lib.world.flow_models`, weights in
  ``b2lib/world/flow_weights``), the same prompts, judge and CLIP, trained through the flow-SDE policy
  (:mod:`b2lib.policies.flow`) at the embedded sizes (:data:`FLOW`).
* ``"paper_flow"``: Stable Diffusion 3.5 Medium from the hub with the paper's CLIP reward, bf16 on GPU, the flow-GRPO
  family's noise level and guidance (:data:`PAPER_FLOW`).

A preset is the one place a scale's defaults live: its models and device (:class:`Preset`), its trainer settings
(``TrainerConfig``'s defaults for the paper, :data:`EMBEDDED` for the world, with :data:`SMOKE` laid over them) and
its evaluation sizes. Every entry point (``RunConfig``, the CLI, the studies, the benchmark, the notebooks' smoke
size) reads them from here, with 0 meaning "the preset's".

Templates are named by what they test; the paper's names are accepted too: ``template1``/``counting`` (the paper's
"a {animal} {activity}", mirrored in the world by counting), ``template2``/``binding`` ("{colour} {fruit}"),
``template3``/``relation`` ("{object} {relation} {object}").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from b2lib.rewards.base import ClipScore
from b2lib.training.config import TrainerConfig
from b2lib.training.models import load_sd3_pipeline, load_sd_pipeline
from b2lib.training.recipes import RECIPES
from b2lib.world.flow_models import load_flow_world_pipeline
from b2lib.world.models import load_clip_score, load_world_pipeline
from b2lib.world.prompts import split_prompts

__all__ = [
    "METHOD_NAMES",
    "PRESETS",
    "TEMPLATE_ALIASES",
    "EMBEDDED",
    "SMOKE",
    "FLOW",
    "PAPER_FLOW",
    "PAPER_FLOW_MODEL",
    "EMBEDDED_TUNED",
    "TUNED_AS",
    "RECIPES",
    "SIGNAL_TARGET",
    "Preset",
    "get_preset",
    "canonical_template",
    "load_prompts",
    "load_models",
    "trainer_config",
    "method_config",
]

PRESETS = ("embedded", "paper", "smoke", "flow", "paper_flow")
TEMPLATE_ALIASES = {
    "counting": "counting",
    "template1": "counting",
    "binding": "binding",
    "template2": "binding",
    "relation": "relation",
    "template3": "relation",
}
#: trainable methods: B²-DiffuRL, the DDPO baseline, each strategy alone (ablations), trees, the flow-GRPO family's
#: samplers, a GRPO-style group on any policy, and B² with its branch point chosen by the signal, as configurations of
#: the same trainer (:func:`method_config`)
METHOD_NAMES = (
    "ddpo", "b2", "progressive", "branch", "tree", "flow_grpo", "mixgrpo", "tempflow", "grpo", "b2_signal"
)  # fmt: skip
#: "b2_signal"'s informative share (``TrainerConfig.branch_target``) when not set: deepen the branch point while
#: fewer than half of the branch groups carry a comparison (a group is then more often flat than informative)
SIGNAL_TARGET = 0.5
#: MixGRPO's sliding SDE window, in steps (of a 20-step chain), when ``window`` is not set
MIXGRPO_WINDOW = 4
_PAPER_FILES = {"counting": "template1", "binding": "template2", "relation": "template3"}
_PROMPT_DIR = Path(__file__).resolve().parents[1] / "data" / "prompts"  # b2lib/data/prompts


@dataclass(frozen=True)
class Preset:
    """A scale's models, device and evaluation sizes (its trainer settings: :func:`trainer_config`)."""

    name: str
    pipeline: str  # hub name or folder ("" = the shipped world weights)
    clip_model: str
    clip_pretrained: str
    device: str
    torch_dtype: torch.dtype
    world: bool = False  # the embedded world's models, prompts and judge (embedded, smoke, flow)
    family: str = "sd"  # "sd": SD 1.x + DDIM; "sd3": an SD3-family flow-matching model + the flow-SDE policy
    eval_images: int = 512  # per model and split (RunConfig.eval_images = 0)
    eval_max_prompts: int = 0  # 0: every prompt of the split (RunConfig.eval_max_prompts = 0)
    eval_n_per_prompt: int = 0  # 0: enough for eval_images (RunConfig.eval_n_per_prompt = 0)


def _paper(name: str) -> Preset:
    cuda = torch.cuda.is_available()
    dtype = torch.float16 if cuda else torch.float32
    return Preset(
        name, "CompVis/stable-diffusion-v1-4", "ViT-H-14", "laion2b_s32b_b79k", "cuda" if cuda else "cpu", dtype
    )


def _paper_flow(name: str) -> Preset:
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32  # SD3.5 runs in bf16 (fp16 overflows its activations)
    return Preset(
        name, PAPER_FLOW_MODEL, "ViT-H-14", "laion2b_s32b_b79k", "cuda" if cuda else "cpu", dtype, family="sd3"
    )


def _world(name: str) -> Preset:
    sizes = {k: v for k, v in SMOKE.items() if k.startswith("eval_")} if name == "smoke" else {}
    family = "sd3" if name == "flow" else "sd"
    return Preset(name, "", "b2-world-clip", "", "cpu", torch.float32, world=True, family=family, **sizes)


#: the scales, by name: each entry builds its :class:`Preset` (the paper's probe CUDA when built)
SCALES = {"paper": _paper, "paper_flow": _paper_flow, "embedded": _world, "smoke": _world, "flow": _world}


def get_preset(name: str) -> Preset:
    """The scale ``name`` (a key of :data:`SCALES`)."""
    if name not in SCALES:
        raise ValueError(f"Unknown preset {name!r}: use one of {PRESETS}.")
    return SCALES[name](name)


def canonical_template(template: str) -> str:
    if template not in TEMPLATE_ALIASES:
        raise ValueError(f"Unknown template {template!r}: use one of {sorted(TEMPLATE_ALIASES)}.")
    return TEMPLATE_ALIASES[template]


def load_prompts(preset: str, template: str, split: str = "train") -> list[str]:
    """The train or test prompts of a template at the given scale."""
    template = canonical_template(template)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    if not get_preset(preset).world:
        return json.loads((_PROMPT_DIR / f"{_PAPER_FILES[template]}_{split}.json").read_text())

    train, test = split_prompts(template)
    return train if split == "train" else test


def load_models(preset: str | Preset, model_dir: str = "", clip_dir: str = "", device: str | None = None):
    """``(pipeline, ClipScore)`` for a preset; ``model_dir``/``clip_dir`` override the defaults (a local folder, or
    for the paper preset a hub name / CLIP checkpoint file). Without hub access the paper preset fails here, with
    an error that says so. ``preset``: a scale's name, or the :class:`Preset` a resolved run holds."""
    p = preset if isinstance(preset, Preset) else get_preset(preset)
    device = device or p.device
    if p.world:
        if p.family == "sd3":
            pipe = load_flow_world_pipeline(model_dir or None, device=device)
        else:
            pipe = load_world_pipeline(model_dir or None, device=device)
        return pipe, load_clip_score(clip_dir or None, device=device)

    load = load_sd3_pipeline if p.family == "sd3" else load_sd_pipeline
    pipe = load(model_dir or p.pipeline, torch_dtype=p.torch_dtype, device=device)
    reward = ClipScore.from_pretrained(
        p.clip_model,
        clip_dir or p.clip_pretrained,
        device=device,
        precision="fp16" if p.torch_dtype == torch.float16 else "fp32",
    )
    return pipe, reward


def trainer_config(
    preset: str,
    method: str,
    stages: int | None = 0,
    images_per_stage: int | None = 0,
    branches: int | None = 0,
    seed: int = 0,
    recipe: str = "paper",
    **overrides,
) -> TrainerConfig:
    """The ``TrainerConfig`` of ``method`` at a scale, in three layers, later ones winning: the scale's trainer
    settings (the paper's reference values, or :data:`EMBEDDED` with the method's tuned point :data:`EMBEDDED_TUNED`,
    and for ``"smoke"`` the toy sizes of :data:`SMOKE` over them),
    the sizes (``stages``, ``images_per_stage``, ``branches``; 0 or None = the scale's), then ``overrides`` (any
    ``TrainerConfig`` field). :func:`method_config` then turns the method's name into its switches. ``recipe`` (a key
    of :data:`RECIPES`) adds the method's estimator switches to the first layer: ``"paper"`` none, ``"coarse"`` coarse
    exploration (and, for the branching methods, one trained step per branch and group-relative advantages).

    0 means "the scale's default" here as in :class:`~b2lib.experiments.experiment.RunConfig`, the CLI and the
    notebooks, so a default changed in :data:`EMBEDDED` (or ``TrainerConfig``) is seen by every entry point."""
    if method not in METHOD_NAMES:
        raise ValueError(f"Unknown method {method!r}: use one of {METHOD_NAMES}.")
    if recipe not in RECIPES:
        raise ValueError(f"Unknown recipe {recipe!r}: use one of {sorted(RECIPES)}.")
    scale = get_preset(preset)
    if not scale.world:
        mixed = "fp16" if scale.torch_dtype == torch.float16 else "no"
        fields: dict = {"mixed_precision": mixed}  # the rest: TrainerConfig's defaults, the reference values
        if scale.family == "sd3":
            fields = {**PAPER_FLOW, "mixed_precision": "no"}  # bf16 weights already: no fp16 autocast on top
        scale_images = None  # the reference's prompts_per_stage prefixes x its branches
    else:
        tuned = EMBEDDED_TUNED.get(TUNED_AS.get(method, method), {}) if scale.family == "sd" else {}
        toy = {k: v for k, v in SMOKE.items() if not k.startswith("eval_")} if scale.name == "smoke" else {}
        flow = FLOW if scale.family == "sd3" else {}
        fields = {k: v for k, v in {**EMBEDDED, **flow, **tuned, **toy}.items() if k != "images_per_stage"}
        scale_images = toy.get("images_per_stage", EMBEDDED["images_per_stage"])
    fields.update(RECIPES[recipe].get(method, {}))
    fields["seed"] = seed
    if stages:
        fields["num_stages"] = stages
    fields.update(overrides)
    b = branches or fields.pop("num_branches", TrainerConfig.num_branches)
    fields.pop("num_branches", None)
    images = images_per_stage or scale_images or TrainerConfig.prompts_per_stage * b
    if method == "ddpo" and "split_start" not in overrides:  # no interval to start: the field keeps its default
        fields.pop("split_start", None)
    return method_config(method, fields, images, b)


def method_config(method: str, fields: dict, images_per_stage: int, branches: int) -> TrainerConfig:
    """The one place a method's name becomes switches, at ``images_per_stage`` generated images per stage for every
    method (the equal budget): "b2" (both strategies: ``images_per_stage // branches`` prefixes x ``branches``),
    "ddpo" (neither: ``images_per_stage`` independent trajectories), and one strategy alone for the ablations:
    "progressive" (backward progressive training, DDPO's sampling) and "branch" (branch-based sampling and selection
    over the whole chain); "tree" (a branch tree, ``fields["tree"]`` its levels: ``images_per_stage // leaves``
    prompts, one tree each; :mod:`b2lib.algorithm.tree`). The flow-GRPO family, as configurations: "flow_grpo" (groups
    of ``branches`` independent samples per prompt, the SDE on every step, group-relative advantages), "mixgrpo" (the
    same, with the SDE only inside a ``window`` of steps sliding forward over the stages and the ODE elsewhere) and
    "tempflow" (one branch point at ``split_start`` with the ODE before it and after its SDE step). "grpo" is
    "flow_grpo"'s grouping under its family's name, for any policy (on DDIM: groups of independent samples per
    prompt). "b2_signal": "b2" with its branch point chosen by the signal (``branch_target``, default
    :data:`SIGNAL_TARGET`: :class:`~b2lib.algorithm.schedule.SignalChosenBranchPoint`). ``fields`` (other
    ``TrainerConfig`` fields) is shared, so methods differ only where the paper says they do. Pure: no defaults are
    read here."""
    if method == "tree":
        if not fields.get("tree"):
            raise ValueError(
                "method 'tree' needs its levels: overrides={'tree': [[branch_at, branches], ...], 'window': 1}, "
                "e.g. [[5, 2], [10, 2]] for a depth-2 tree of 4 leaves per prompt."
            )
        leaves = math.prod(int(b) for _, b in fields["tree"])
        if images_per_stage % leaves:
            raise ValueError(
                f"images_per_stage={images_per_stage} must be a multiple of the tree's {leaves} leaves per prompt "
                "for an equal budget."
            )
        return TrainerConfig.b2(**{**fields, "prompts_per_stage": images_per_stage // leaves})
    if method == "b2_signal":
        target = fields.get("branch_target") or SIGNAL_TARGET
        return method_config("b2", {**fields, "branch_target": target}, images_per_stage, branches)
    if method in ("b2", "branch"):
        if images_per_stage % branches:
            raise ValueError(
                f"images_per_stage={images_per_stage} must be a multiple of branches={branches} for an equal budget."
            )
        switches = dict(num_branches=branches, prompts_per_stage=images_per_stage // branches)
        if method == "branch":  # branch-based sampling alone: the interval is the whole chain, branched at x_T
            switches["progressive"] = False
        return TrainerConfig.b2(**{**fields, **switches})
    if method in ("flow_grpo", "grpo", "mixgrpo"):
        # groups of `branches` independent samples per prompt, z within the group (GRPO), every sampled SDE step
        # trained; MixGRPO: the SDE only in a window of steps that slides forward over the stages, the ODE elsewhere
        if images_per_stage % branches:
            raise ValueError(
                f"images_per_stage={images_per_stage} must be a multiple of the group size {branches} (branches)."
            )
        switches = dict(prompts_per_stage=images_per_stage, samples_per_prompt=branches, algorithm="grpo")
        if method == "mixgrpo":
            steps = fields.get("num_steps", TrainerConfig.num_steps)
            window = fields.get("window") or MIXGRPO_WINDOW
            switches.update(progressive=True, split_start=steps, split_end=window, window=window, prefix_eta=0.0)
        return TrainerConfig.ddpo(**{**fields, **switches})
    if method == "tempflow":
        # one branch point with the ODE before it and after its one SDE step: B²'s branches at a fixed split
        if images_per_stage % branches:
            raise ValueError(
                f"images_per_stage={images_per_stage} must be a multiple of branches={branches} for an equal budget."
            )
        split = fields.get("split_start", TrainerConfig.split_start)
        switches = dict(
            num_branches=branches,
            prompts_per_stage=images_per_stage // branches,
            progressive=False,
            split_end=split,
            window=1,
            prefix_eta=0.0,
            algorithm="grpo",
        )
        return TrainerConfig.b2(**{**fields, **switches})
    if method == "progressive":  # backward progressive training alone: DDPO's sampler and normaliser
        return TrainerConfig.ddpo(**{**fields, "prompts_per_stage": images_per_stage, "progressive": True})
    if method == "ddpo":
        return TrainerConfig.ddpo(**{**fields, "prompts_per_stage": images_per_stage})
    raise ValueError(f"Unknown method {method!r}: use one of {METHOD_NAMES}.")


#: Embedded-scale hyper-parameters (CPU, minutes), shared by every method. The adapter wraps every linear and
#: convolution of the UNet ("all"): with attention only, the policy barely moved (approx KL ~1e-7 per stage). One
#: epoch per stage halves the update's cost, so the equal-budget search of notebook 02 fits on two cores.
EMBEDDED: dict = dict(
    num_stages=20,
    images_per_stage=32,
    num_branches=4,
    num_steps=20,
    eta=1.0,
    guidance_scale=5.0,
    split_start=10,
    sample_batch_size=16,
    epochs_per_stage=1,
    train_batch_size=8,
    grad_accum=4,
    timestep_chunk=0,  # all interval steps of a micro-batch in one forward: same gradient, ~3x faster on CPU
    lr=1e-3,
    lora_rank=8,
    lora_targets="all",
    history=8,
)

#: The flow world's settings over :data:`EMBEDDED`: the flow-SDE's noise level ``a`` (``eta``; Flow-GRPO's 0.7), a
#: LoRA on every linear of the MM-DiT's blocks (both streams), and the world's own guidance scale, 3.0: the highest
#: judge on its train prompts (all three templates, 20 ODE steps) of 1.5, 2, 3, 4 and 5, ties going to the higher
#: CLIPScore (:func:`b2lib.world.evaluation.guidance_scan`, notebook 01). At the DDIM world's 5.0 the flow world
#: oversaturates: its train judge falls from 0.156 to 0.109. Each method's learning rate and optimizer steps per
#: stage come from its own search on this world (notebook 15).
FLOW: dict = dict(eta=0.7, lora_targets="mmdit", guidance_scale=3.0)

#: The paper scale for flow models: SD3.5 Medium (gated on the hub), Flow-GRPO's noise level and guidance, a LoRA on
#: the MM-DiT; the rest are ``TrainerConfig``'s reference values.
PAPER_FLOW_MODEL = "stabilityai/stable-diffusion-3.5-medium"
PAPER_FLOW: dict = dict(eta=0.7, guidance_scale=4.5, lora_targets="mmdit", lora_rank=32)

#: The smoke size: the embedded world's settings with these laid over them (trainer fields, then the evaluation sizes
#: of :class:`Preset`): a 4-step chain trained from step 2, 2 stages of 8 images, 2 branches, 4 evaluation images over
#: 2 prompts. The same code path as a real run, in seconds. :data:`b2lib.notebook.SMOKE` (what notebooks run under
#: the test suite) is derived from it.
SMOKE: dict = dict(
    num_stages=2,
    images_per_stage=8,
    num_branches=2,
    num_steps=4,
    split_start=2,
    eval_images=4,
    eval_max_prompts=2,
    eval_n_per_prompt=2,
)

#: Per method, the point of the equal-budget search (notebook 02, ``results/tuning/choice.json``) with the highest
#: train-split reward gain over 2 seeds; methods without a search of their own (the ablation variants) keep
#: ``EMBEDDED``'s values. A test checks that these equal the recorded choice.
EMBEDDED_TUNED: dict[str, dict] = {
    "ddpo": dict(lr=1e-3, grad_accum=4),
    "b2": dict(lr=3e-4, grad_accum=1),
}

#: Methods without a search of their own that take another method's tuned point: a tree is B² with more levels and
#: "b2_signal" is B² with a moving branch point, so both get B²'s step size and steps per stage (the same tuning
#: budget, spent once).
TUNED_AS: dict[str, str] = {"tree": "b2", "b2_signal": "b2"}
