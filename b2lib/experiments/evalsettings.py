"""What a run evaluates with: the judge, the text metric, the per-stage metric and the keyword arguments of the
evaluation, from its resolved run (:mod:`b2lib.experiments.resolve`, which also gives each split's prompts).

Why a module of its own: the run loop (:mod:`b2lib.experiments.experiment`), each model's job
(:mod:`b2lib.experiments.modeljobs`), a later re-evaluation (:mod:`b2lib.experiments.reevaluate`) and the studies
that regenerate a run's images must all score exactly what the run scored; they read it here.
"""

from __future__ import annotations

import functools

from b2lib.experiments.resolve import ResolvedRun, eval_split_prompts, resolve
from b2lib.experiments.runconfig import RunConfig
from b2lib.rewards.bertscore import BertScore
from b2lib.world import judge_batch
from b2lib.world.evaluation import judge_metrics
from b2lib.world.models import load_bertscore

__all__ = ["eval_split_prompts", "eval_settings", "judge_fn", "stage_metric_fn", "text_metric"]


def judge_fn(world: bool):
    """The programmatic judge of the embedded world; none for natural images."""
    return judge_batch if world else None


def stage_metric_fn(world: bool):
    """What a training stage logs beside its reward: the judge's rates in the embedded world."""
    return judge_metrics if world else None


@functools.lru_cache(maxsize=2)
def text_metric(world: bool, device: str):
    """BERTScore for evaluation: the world's captioner + packaged MiniLM (embedded), BLIP + roberta-large (paper)."""
    if world:
        return load_bertscore(device=device)
    return BertScore.from_pretrained(device=device)


def eval_settings(run: ResolvedRun | RunConfig, device: str, bertscore: bool = True) -> dict:
    """Keyword arguments of :func:`b2lib.evaluation.generate.evaluate_prompts` for a run's evaluation (a
    :class:`~b2lib.experiments.resolve.ResolvedRun`, or a configuration resolved here): its judge, noise seed, text
    metric, the chain the models were trained on and the run's compute dtype."""
    if isinstance(run, RunConfig):
        run = resolve(run)
    cfg, world = run.cfg, run.scale.world
    return dict(
        judge_fn=judge_fn(world),
        seed=cfg.eval_seed,
        text_metric=text_metric(world, device) if (cfg.bertscore and bertscore) else None,
        **run.chain,
        dtype=cfg.dtype,
    )
