"""Cost accounting: a stage's and a whole run's model work, in sample-rows of a forward (a CFG step counts 2 rows).

Why its own module: the studies compare methods at equal *compute*, so each method's number of stages is fixed before
training from :func:`nominal_work`, and the curves are drawn against the rows each run logged (:func:`unet_rows`).
The counts are of the denoising network's rows, a UNet's or a transformer's alike: the policy does not change them.
"""

from __future__ import annotations

import math
from dataclasses import replace

from b2lib.algorithm.tree import _check_levels, tree_unet_rows
from b2lib.training.config import TrainerConfig

__all__ = ["trained_steps_per_sample", "unet_rows", "TRAIN_ROW_WORK", "nominal_work", "equal_work_stages"]


def trained_steps_per_sample(interval_steps: int, fraction: float) -> int:
    """How many of a sample's ``interval_steps`` an epoch trains: ``ceil(fraction * steps)``, at least 1."""
    return max(1, math.ceil(fraction * interval_steps - 1e-9))


def unet_rows(
    cfg: TrainerConfig,
    n_images: int,
    n_trained: int,
    trained_steps: int,
    processes: int = 1,
    interval: int | None = None,
) -> dict[str, int]:
    """One stage's UNet work, in sample-rows of a forward (a CFG step counts 2 rows), over all processes.

    ``unet_rows_sample``: the prefix once per branch group and the interval once per image (B²), the whole chain per
    image (plain sampling); ``interval`` is the number of steps after the split (default ``trained_steps``; larger
    under a ``window``, whose deterministic tail is sampled but not trained). ``unet_rows_train``: forward rows of
    the update, ``epochs x trained samples x interval
    steps`` (a backward costs about two forwards more; the same factor for every method). Why: B² trains only the kept
    samples on the interval, so at an equal image budget it does less UNet work; this is the compute view of the
    curves, next to images generated.
    """
    cfg_rows = 2 if cfg.guidance_scale > 1.0 else 1
    groups = n_images // cfg.num_branches
    interval = trained_steps if interval is None else interval  # steps after the split (> trained ones with a window)
    sample = (
        groups * (cfg.num_steps - interval) + n_images * interval if cfg.num_branches >= 2 else n_images * cfg.num_steps
    )
    train = cfg.epochs_per_stage * n_trained * trained_steps_per_sample(trained_steps, cfg.timestep_fraction)
    return {"unet_rows_sample": sample * cfg_rows * processes, "unet_rows_train": train * cfg_rows * processes}


#: forward-equivalents of one training row: its forward and its backward (about two forwards)
TRAIN_ROW_WORK = 3


def nominal_work(cfg: TrainerConfig) -> int:
    """A whole run's UNet work before it runs, in forward-equivalent sample-rows: every stage's sampling rows plus its
    training rows x :data:`TRAIN_ROW_WORK` (+1 under ``dpok``/``grpo``: the reference model's forward), counting as
    kept every sample the selection could keep (at most the best and the worst of each branch group).

    Why: an equal *compute* budget (``RunConfig.budget="compute"``) must fix each method's number of stages before
    training; counting B²'s upper bound of kept samples errs in the other methods' favour. A tree (``cfg.tree``)
    samples its nodes (:func:`b2lib.algorithm.tree.tree_unet_rows`) and trains the stored steps of its open levels'
    nodes, at most the best and the worst of each sibling group under selection."""
    if cfg.tree is not None:
        return _nominal_tree_work(cfg)
    images = cfg.images_per_stage
    branched = cfg.num_branches >= 2
    n_trained = min(images, 2 * (images // cfg.num_branches)) if branched and cfg.selection else images
    per_train_row = TRAIN_ROW_WORK + (1 if cfg.algorithm in ("dpok", "grpo") else 0)
    total = 0
    # a signal-chosen branch point is counted at its deepest path (every group flat): the other methods' favour again
    steps = cfg.signal_branching.deepest() if cfg.branch_target is not None else cfg.schedule.trained_steps
    for stage in range(cfg.num_stages):
        interval = steps[stage]
        trained = min(cfg.window, interval) if cfg.window else interval
        rows = unet_rows(cfg, images, n_trained, trained, interval=interval)
        total += rows["unet_rows_sample"] + per_train_row * rows["unet_rows_train"]
    return total


def _nominal_tree_work(cfg: TrainerConfig) -> int:

    levels = _check_levels(cfg.tree, cfg.num_steps)
    guided = cfg.guidance_scale > 1.0
    sample = cfg.prompts_per_stage * tree_unet_rows(levels, cfg.num_steps, guidance=guided)["tree"]
    ends = [lv.branch_at for lv in levels[1:]] + [cfg.num_steps]
    stored = [
        e - lv.branch_at if cfg.window is None else min(cfg.window, e - lv.branch_at) for lv, e in zip(levels, ends)
    ]
    nodes, parents = [], 1
    for lv in levels:  # per prompt: the nodes of each level, and the sibling groups they form
        kept = parents * lv.branches
        nodes.append(min(kept, 2 * parents) if cfg.selection else kept)
        parents *= lv.branches
    per_train_row = TRAIN_ROW_WORK + (1 if cfg.algorithm in ("dpok", "grpo") else 0)
    total = 0
    for stage in range(cfg.num_stages):
        rows = sum(
            nodes[k] * trained_steps_per_sample(stored[k], cfg.timestep_fraction) for k in cfg.tree_levels_at(stage)
        )
        train = cfg.epochs_per_stage * cfg.prompts_per_stage * rows * (2 if guided else 1)
        total += sample + per_train_row * train
    return total


def equal_work_stages(cfg: TrainerConfig, work: int) -> int:
    """The most stages of ``cfg`` (its other settings as they are) whose :func:`nominal_work` stays within ``work``;
    at least 1."""
    stages = 1
    while nominal_work(replace(cfg, num_stages=stages + 1)) <= work:
        stages += 1
    return stages
