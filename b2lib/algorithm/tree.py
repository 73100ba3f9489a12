"""Branch trees: a shared prefix that splits at several chain indices, with B² as the depth-1 case.

A tree is a list of :class:`Level` s, each a chain index where every live node splits into ``branches`` children. All
live nodes of all prompts advance together, one batched UNet call per step, so a tree of ``L`` leaves per prompt costs
``prefix + sum_k nodes_k x segment_k`` UNet rows instead of ``L x T`` for independent samples
(:func:`tree_unet_rows`). Each level's *segment* (from its split to the next split, or to the end of the chain) is
stored per node, so a transition shared by several leaves is stored and trained once, with the advantage of the node
it belongs to (:func:`tree_advantages`: the node's value, the mean reward of its leaves, against its siblings').

Why trees: B² compares samples that share everything up to one split, so their reward difference is credited to what
came after it. A tree does the same at every level at once: siblings at level ``k`` share everything before split
``k``, so the difference of their values is credited to segment ``k``; and every leaf reward is used by every level
above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from diffusers import DiffusionPipeline

from b2lib.algorithm.advantages import GROUP_EPS, select_in_groups
from b2lib.algorithm.sampling import Trajectories, _sample_levels
from b2lib.algorithm.schedule import ProgressiveSchedule
from b2lib.policies.base import Policy

__all__ = [
    "Level",
    "TreeSample",
    "sample_tree",
    "tree_unet_rows",
    "node_values",
    "tree_advantages",
    "select_nodes",
    "depth_schedule",
    "trained_levels",
    "level_transitions",
    "tree_training_batch",
]


@dataclass(frozen=True)
class Level:
    """Every live node splits into ``branches`` children at chain index ``branch_at`` (0 = at x_T)."""

    branch_at: int
    branches: int


@dataclass
class TreeSample:
    """A sampled tree. ``leaves`` is one row per leaf, prompt-major in tree order (leaf ``i`` of prompt ``p`` is row
    ``p * L + i``), storing the last level's segment, exactly what :func:`b2lib.algorithm.sampling.sample_branches`
    stores for a depth-1 tree; its ``group_ids`` are the leaves' parents (siblings share one).

    ``segments[k]`` holds level ``k``'s stored transitions, one row per node of that level (``latents``,
    ``next_latents``, ``timesteps``, ``log_probs``; node ``j`` of level ``k`` is a child of node ``j // branches_k`` of
    level ``k - 1``, level ``-1`` being the prompts). ``ancestors[i, k]`` is leaf ``i``'s node at level ``k``.
    """

    leaves: Trajectories
    segments: list[dict[str, torch.Tensor]]
    ancestors: torch.Tensor  # (leaves, depth) long
    levels: tuple[Level, ...]
    unet_rows: int

    @property
    def depth(self) -> int:
        return len(self.levels)

    def parents(self, level: int) -> torch.Tensor:
        """For each node of ``level``, its parent's index at ``level - 1`` (the prompt's index at level 0)."""
        nodes = int(self.ancestors[:, level].max()) + 1
        return torch.arange(nodes) // self.levels[level].branches


def _check_levels(levels: Sequence[Level], num_steps: int) -> tuple[Level, ...]:
    levels = tuple(Level(*lv) if not isinstance(lv, Level) else lv for lv in levels)
    if not levels:
        raise ValueError("A tree needs at least one level, e.g. [Level(branch_at=10, branches=4)] (B²).")
    at = [lv.branch_at for lv in levels]
    if any(b < 1 for b in (lv.branches for lv in levels)):
        raise ValueError(f"branches must be >= 1 at every level, got {[lv.branches for lv in levels]}.")
    if at != sorted(set(at)) or at[0] < 0 or at[-1] >= num_steps:
        raise ValueError(
            f"branch points {at} must be distinct, increasing and inside the chain [0, {num_steps}): each level "
            "splits the nodes of the one before."
        )
    return levels


def tree_unet_rows(levels: Sequence[Level], num_steps: int, prompts: int = 1, guidance: bool = True) -> dict:
    """UNet sample-rows of one tree per prompt (a guided step counts 2), against as many independent samples.

    ``ratio`` = independent / tree is the most a tree can speed sampling up (the UNet being nearly all the work):
    the bound the speed benchmark compares tree sampling with."""
    levels = _check_levels(levels, num_steps)
    rows, nodes = levels[0].branch_at, 1
    for k, lv in enumerate(levels):
        nodes *= lv.branches
        end = levels[k + 1].branch_at if k + 1 < len(levels) else num_steps
        rows += nodes * (end - lv.branch_at)
    factor = (2 if guidance else 1) * prompts
    independent = nodes * num_steps
    return {
        "tree": rows * factor,
        "independent": independent * factor,
        "leaves": nodes * prompts,
        "ratio": independent / rows,
    }


def sample_tree(
    pipe: DiffusionPipeline | Policy,
    prompts: Sequence[str],
    levels: Sequence[Level],
    num_steps: int = 20,
    guidance_scale: float = 5.0,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    window: int | None = None,
    explore_grid: int = 0,
    prefix_eta: float | None = None,
) -> TreeSample:
    """Sample one tree per prompt (see the module docstring).

    ``window``: only the first ``window`` steps after each split are stochastic (and stored); the rest of each segment
    runs deterministically (DDIM, eta = 0), so the randomness of the tree sits where it branches. ``None``: every step
    after the first split is stochastic. A one-level tree ``[Level(T - s, B)]`` is
    :func:`b2lib.algorithm.sampling.sample_branches` ``(prompts, B, s)``: same generator, same images, same stored
    transitions. ``explore_grid``: the stored steps explore only a coarse lattice, and ``prefix_eta`` sets the noise of
    the shared prefix, as in ``sample_branches``.
    """
    levels = _check_levels(levels, num_steps)
    leaves, segments = _sample_levels(
        pipe,
        prompts,
        [(lv.branch_at, lv.branches) for lv in levels],
        num_steps,
        guidance_scale,
        eta,
        generator,
        window=window,
        explore_grid=explore_grid,
        prefix_eta=prefix_eta,
    )
    # leave inference mode: stored tensors become ordinary tensors, usable by the training forward pass
    segments = [{key: value.clone() for key, value in rec.items()} for rec in segments]
    sizes = [lv.branches for lv in levels]
    leaf = torch.arange(len(leaves))
    # a leaf's node at level k: integer division by the number of leaves under one node of that level
    ancestors = torch.stack(
        [torch.div(leaf, math.prod(sizes[k + 1 :]), rounding_mode="floor") for k in range(len(levels))], dim=1
    )
    rows = tree_unet_rows(levels, num_steps, len(prompts), guidance=leaves.negative_prompt_embeds is not None)["tree"]
    return TreeSample(leaves, segments, ancestors, levels, rows)


def node_values(rewards: torch.Tensor, ancestors: torch.Tensor) -> list[torch.Tensor]:
    """Per level, each node's value: the mean reward of the leaves below it (its backed-up return)."""
    rewards = torch.as_tensor(rewards, dtype=torch.float64)
    out = []
    for k in range(ancestors.shape[1]):
        ids = ancestors[:, k]
        count = torch.zeros(int(ids.max()) + 1, dtype=torch.float64).index_add_(0, ids, torch.ones_like(rewards))
        out.append(torch.zeros_like(count).index_add_(0, ids, rewards) / count)
    return out


def tree_advantages(
    rewards: torch.Tensor, tree_or_ancestors, branches: Sequence[int] | None = None, eps: float = GROUP_EPS
) -> list[torch.Tensor]:
    """Step-specific advantages: per level, each node's value minus the mean value of its siblings (the children of
    its parent), divided by ``std + eps``, the population standard deviation of those differences over the level's
    nodes of the same prompt. Credit for segment ``k`` therefore comes only from what differs after split ``k``.
    ``eps`` is in reward units, as in :func:`b2lib.algorithm.advantages.group_relative_advantages` (so a depth-1 tree's
    advantages are GRPO's within the branch group): siblings that barely differ get advantages shrunk towards 0
    rather than noise blown up to unit scale, and siblings that agree exactly get 0.

    Pass a :class:`TreeSample`, or ``ancestors`` with the levels' ``branches``."""
    if isinstance(tree_or_ancestors, TreeSample):
        ancestors = tree_or_ancestors.ancestors
        branches = [lv.branches for lv in tree_or_ancestors.levels]
    else:
        ancestors = torch.as_tensor(tree_or_ancestors)
        if branches is None:
            raise ValueError("branches (children per node, per level) is needed with a bare ancestors tensor.")
    out = []
    for k, value in enumerate(node_values(rewards, ancestors)):
        b = branches[k]
        siblings = value.view(-1, b)
        diff = (siblings - siblings.mean(dim=1, keepdim=True)).flatten()
        nodes_per_prompt = math.prod(branches[: k + 1])
        by_prompt = diff.view(-1, nodes_per_prompt)
        std = by_prompt.std(dim=1, unbiased=False, keepdim=True)
        out.append((by_prompt / (std + eps)).flatten().float())
    return out


def select_nodes(
    z: torch.Tensor, branches: int, pos_threshold: float = 0.5, neg_threshold: float = -0.5
) -> torch.Tensor:
    """Width pruning with B²'s rule at one level: among each node's siblings keep the best if its advantage is at least
    ``pos_threshold`` and the worst if it is below ``neg_threshold``
    (:func:`b2lib.algorithm.advantages.select_in_groups`)."""

    parents = torch.arange(len(z)) // branches
    return select_in_groups(z, parents, pos_threshold, neg_threshold)


def depth_schedule(num_stages: int, depth: int, start: int = 1) -> ProgressiveSchedule:
    """Backward-progressive training over a tree's levels: B²'s interval schedule with levels in place of steps.

    ``schedule(stage)`` is the number of open levels, from ``start`` (the deepest ones) at the first stage to all
    ``depth`` at the last, in equal plateaus; :func:`trained_levels` turns it into level indices. Why the deepest
    first: as with B²'s interval, the last splits are closest to the reward, so their credit is the least noisy."""
    return ProgressiveSchedule(num_stages=num_stages, start=start, end=depth, num_steps=depth)


def trained_levels(schedule: ProgressiveSchedule, stage: int) -> list[int]:
    """The levels trained at ``stage``: the deepest ``schedule(stage)`` ones (level indices, shallowest first)."""
    depth = schedule.num_steps
    return list(range(depth - schedule(stage), depth))


def level_transitions(tree: TreeSample, level: int) -> Trajectories:
    """Level ``level``'s stored transitions as :class:`~b2lib.algorithm.sampling.Trajectories`, one row per node: what
    the trainer's update consumes. A node's embeddings and prompt are its leaves' (all equal); its ``group_ids`` is its
    parent (siblings share one); its ``images`` is its first leaf's (the update never reads them; kept so the rows
    select and concatenate like any sample's)."""
    seg = tree.segments[level]
    nodes = seg["latents"].shape[0]
    under = len(tree.leaves) // nodes  # leaves below one node of this level
    first_leaf = torch.arange(nodes) * under
    leaves = tree.leaves
    cond = leaves.cond(first_leaf)
    return Trajectories(
        latents=seg["latents"],
        next_latents=seg["next_latents"],
        timesteps=seg["timesteps"],
        log_probs=seg["log_probs"],
        prompt_embeds=cond.embeds,
        negative_prompt_embeds=cond.negative,
        images=leaves.images[first_leaf],
        group_ids=tree.parents(level),
        prompts=[leaves.prompts[i] for i in first_leaf.tolist()],
        pooled_prompt_embeds=cond.pooled,
        negative_pooled_prompt_embeds=cond.negative_pooled,
    )


def tree_training_batch(
    tree: TreeSample,
    rewards: torch.Tensor,
    levels: Sequence[int],
    selection: bool = True,
    pos_threshold: float = 0.5,
    neg_threshold: float = -0.5,
) -> tuple[Trajectories, torch.Tensor, torch.Tensor]:
    """The trained transitions of ``levels`` (indices, e.g. :func:`trained_levels`), their step-specific advantages
    (:func:`tree_advantages`) and the mask of rows to train: ``(transitions, z, keep)``, levels in the given order.

    ``selection``: B²'s rule among each node's siblings (:func:`select_nodes`: width pruning); otherwise every node
    of the trained levels is kept. Levels not listed are not trained (depth pruning, or the levels a progressive
    depth schedule has not opened yet). The levels must store the same number of steps per node (e.g. a ``window``
    no longer than the shortest segment), so their rows stack into one batch."""
    if not levels:
        raise ValueError("levels is empty: pass at least one level index to train (e.g. trained_levels(...)).")
    if any(not 0 <= k < tree.depth for k in levels):
        raise ValueError(f"levels {list(levels)} must be indices of the tree's {tree.depth} levels.")
    steps = {tree.segments[k]["timesteps"].shape[1] for k in levels}
    if len(steps) > 1:
        raise ValueError(
            f"The trained levels store different numbers of steps per node ({sorted(steps)}): set a window no longer "
            "than the shortest segment (e.g. window=1, the stochastic step at each branch point only)."
        )
    z_all = tree_advantages(rewards, tree)
    parts, zs, keeps = [], [], []
    for k in levels:
        z = z_all[k]
        parts.append(level_transitions(tree, k))
        zs.append(z)
        branches = tree.levels[k].branches
        keeps.append(
            select_nodes(z, branches, pos_threshold, neg_threshold)
            if selection
            else torch.ones_like(z, dtype=torch.bool)
        )
    return Trajectories.cat(parts), torch.cat(zs), torch.cat(keeps)
