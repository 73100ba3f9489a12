"""What an experiment evaluates with, derived from its :class:`~b2lib.experiments.runconfig.RunConfig` alone: the
prompts of each split, the judge, the text metric, the per-stage metric, the chain and the noise seed.

Why a module of its own: the run loop (:mod:`b2lib.experiments.experiment`), each model's job
(:mod:`b2lib.experiments.modeljobs`), a later re-evaluation (:mod:`b2lib.experiments.reevaluate`) and the studies
that regenerate a run's images must all score exactly what the run scored; they read it here.
"""

from __future__ import annotations

import functools

from b2lib.evaluation.generate import subset
from b2lib.experiments.presets import canonical_template, get_preset, load_prompts, trainer_config
from b2lib.experiments.runconfig import RunConfig
from b2lib.rewards.bertscore import BertScore
from b2lib.world import judge_batch
from b2lib.world.evaluation import judge_metrics
from b2lib.world.models import load_bertscore

__all__ = ["eval_split_prompts", "eval_settings", "judge_fn", "stage_metric_fn", "text_metric"]


def judge_fn(preset: str):
    if get_preset(preset).world:
        return judge_batch
    return None  # no programmatic judge for natural images


def stage_metric_fn(preset: str):
    if get_preset(preset).world:
        return judge_metrics
    return None


@functools.lru_cache(maxsize=2)
def text_metric(preset: str, device: str):
    """BERTScore for evaluation: the world's captioner + packaged MiniLM (embedded), BLIP + roberta-large (paper)."""
    if get_preset(preset).world:
        return load_bertscore(device=device)
    return BertScore.from_pretrained(device=device)


def eval_split_prompts(cfg: RunConfig) -> dict[str, list[str]]:
    """The prompts each evaluation split scores (``"test"``, ``"train"``): the run's own lists if it set them, else the
    template's, cut to ``eval_max_prompts`` evenly spaced ones. One place, so an evaluation added to a finished run
    (:func:`b2lib.experiments.reevaluate.add_eval_split`) scores exactly what the run itself would have."""
    template = canonical_template(cfg.template)
    train = list(cfg.train_prompts) if cfg.train_prompts else load_prompts(cfg.preset, template, "train")
    test = list(cfg.eval_prompts) if cfg.eval_prompts else load_prompts(cfg.preset, template, "test")
    return {
        "test": test if cfg.eval_prompts else subset(test, cfg.eval_max_prompts),
        "train": subset(train, cfg.eval_max_prompts),
    }


def eval_settings(cfg: RunConfig, device: str, bertscore: bool = True) -> dict:
    """Keyword arguments of :func:`b2lib.evaluation.generate.evaluate_prompts` for ``cfg``'s evaluation: its judge,
    noise seed, text metric, the chain the models were trained on (steps, eta, guidance; a tree's levels are not the
    chain's; a flow model is evaluated with its deterministic ODE chain, the stock pipeline's) and the run's compute
    dtype."""
    chain_fields = {k: v for k, v in cfg.overrides.items() if not k.startswith("tree")}
    chain = trainer_config(cfg.preset, "ddpo", **chain_fields)
    return dict(
        judge_fn=judge_fn(cfg.preset),
        seed=cfg.eval_seed,
        text_metric=text_metric(cfg.preset, device) if (cfg.bertscore and bertscore) else None,
        num_steps=chain.num_steps,
        guidance_scale=chain.guidance_scale,
        eta=0.0 if get_preset(cfg.preset).family == "sd3" else chain.eta,  # flow: the ODE, as stock samples
        dtype=cfg.dtype,
    )
