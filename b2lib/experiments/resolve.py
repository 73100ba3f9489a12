"""A run's configuration resolved once: :func:`resolve` turns a :class:`~b2lib.experiments.runconfig.RunConfig` into
one :class:`ResolvedRun` (its scale, template, prompts, jobs, each job's trainer settings with its budget applied,
the evaluation's chain, the fingerprint), which the run loop, each model's job and the worker processes receive.

Why: before, every layer looked the run's preset, prompts and trainer settings up again from the configuration
(a preset rebuilt about twenty times per run, each method's trainer settings three times); now the lookups happen
here, once, and nothing below looks a preset up by name.
"""

from __future__ import annotations

from dataclasses import dataclass

from b2lib.evaluation.generate import subset
from b2lib.experiments.presets import Preset, canonical_template, get_preset, load_prompts, trainer_config
from b2lib.experiments.runconfig import BASE, RunConfig, job_label
from b2lib.training.config import TrainerConfig

__all__ = ["ResolvedRun", "resolve", "job_order", "train_prompts", "eval_split_prompts", "eval_chain"]


@dataclass(frozen=True)
class ResolvedRun:
    """Everything a run's jobs need that follows from its configuration alone (picklable: worker processes get it)."""

    cfg: RunConfig
    scale: Preset
    template: str
    train_prompts: list[str]
    split_prompts: dict[str, list[str]]
    jobs: list[tuple[str, int | None]]
    trainers: dict[str, TrainerConfig]  # by job label (``progress`` off: a job sets its own)
    chain: dict  # the evaluation's chain: num_steps, guidance_scale, eta
    settings: dict  # the run folder's fingerprint (RunConfig.settings)


def job_order(cfg: RunConfig) -> list[tuple[str, int | None]]:
    """The run's jobs in the order their rows appear in ``eval.csv``: the base model, then seed by seed each method."""
    return [(BASE, None)] + [(m, s) for s in cfg.seeds for m in cfg.methods]


def train_prompts(cfg: RunConfig) -> list[str]:
    """The prompts the run trains on: its own list if it set one, else the template's training split."""
    return list(cfg.train_prompts) if cfg.train_prompts else load_prompts(cfg.preset, cfg.template, "train")


def eval_split_prompts(cfg: RunConfig, train: list[str] | None = None) -> dict[str, list[str]]:
    """The prompts each evaluation split scores (``"test"``, ``"train"``): the run's own lists if it set them, else the
    template's, cut to ``eval_max_prompts`` evenly spaced ones. One place, so an evaluation added to a finished run
    (:func:`b2lib.experiments.reevaluate.add_eval_split`) scores exactly what the run itself would have. ``train``:
    :func:`train_prompts`, when the caller has them already."""
    train = train_prompts(cfg) if train is None else train
    test = list(cfg.eval_prompts) if cfg.eval_prompts else load_prompts(cfg.preset, cfg.template, "test")
    return {
        "test": test if cfg.eval_prompts else subset(test, cfg.eval_max_prompts),
        "train": subset(train, cfg.eval_max_prompts),
    }


def eval_chain(cfg: RunConfig, scale: Preset) -> dict:
    """The chain the models are evaluated with: the steps, guidance and eta the run trains with (its ``overrides``
    over the scale's; a tree's levels are not the chain's), or ``cfg.eval_steps`` steps where set; a flow model with
    its deterministic ODE chain, as the stock pipeline samples."""
    chain = trainer_config(cfg.preset, "ddpo", **{k: v for k, v in cfg.overrides.items() if not k.startswith("tree")})
    eta = 0.0 if scale.family == "sd3" else chain.eta
    return {"num_steps": cfg.eval_steps or chain.num_steps, "guidance_scale": chain.guidance_scale, "eta": eta}


def resolve(cfg: RunConfig) -> ResolvedRun:
    """``cfg`` resolved: every lookup of the run done here, once."""
    scale = get_preset(cfg.preset)
    train = train_prompts(cfg)
    jobs = job_order(cfg)
    trainers = {job_label(m, s): cfg.trainer_config(m, s) for m, s in jobs if m != BASE}
    return ResolvedRun(
        cfg=cfg,
        scale=scale,
        template=canonical_template(cfg.template),
        train_prompts=train,
        split_prompts=eval_split_prompts(cfg, train),
        jobs=jobs,
        trainers=trainers,
        chain=eval_chain(cfg, scale),
        settings=cfg.settings(trainers),
    )
