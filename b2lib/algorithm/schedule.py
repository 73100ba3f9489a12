"""Backward progressive training: which last steps of the chain are trained at each stage.

A pure, immutable object. ``schedule(stage)`` is ``s``, the number of *trained steps*: the final denoising steps that
form the trained interval (steps ``T - s .. T - 1`` of a ``T``-step chain; B² branches at index ``T - s``). It starts
small (late steps are easiest to credit with the final reward) and grows to ``end`` by the last stage.

Vocabulary, one word per meaning: *trained steps* ``s`` is the interval's length, which the paper calls the *split
step* (hence the config fields ``split_start``/``split_end``, ``s`` at the first/last stage, and the metrics column
``split_step``, ``s`` of that stage: always with "step", always this length); the *branch point* ``T - s`` is the chain
index where the shared prefix ends; a bare *split* is only ever the data split (train/test prompts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

__all__ = ["ProgressiveSchedule", "SignalChosenBranchPoint", "informative_history"]


@dataclass(frozen=True)
class ProgressiveSchedule:
    """Linear growth of the trained interval from ``start`` to ``end`` of ``num_steps`` over ``num_stages`` stages.

    With at least as many stages as interval sizes (the reference: 100 stages, 14 -> 20) the sizes form equal
    plateaus, ``s_i = start + floor(i * (end - start + 1) / num_stages)``: the reference's formula exactly. With
    fewer stages, sizes are spaced evenly from ``start`` to ``end`` so the last stage still trains the whole interval.

    ``start > end`` runs the other way, the interval's first step moving *forward* from early (noisy) steps to late
    ones, as MixGRPO's sliding window does: the same plateaus, mirrored (``s_i = start - (its growth from end)``).
    """

    num_stages: int
    start: int
    end: int
    num_steps: int

    def __post_init__(self) -> None:
        if self.num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {self.num_stages}.")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}.")
        if not (self.start >= 1 and self.end >= 1):
            raise ValueError(f"Need start >= 1 and end >= 1, got start={self.start}, end={self.end}.")
        if max(self.start, self.end) > self.num_steps:
            raise ValueError(
                f"The interval cannot be longer than the chain: start={self.start}, end={self.end}, "
                f"num_steps={self.num_steps}. Use values <= {self.num_steps}."
            )

    @classmethod
    def reference(cls) -> "ProgressiveSchedule":
        """The paper's reference schedule: 100 stages, last 14 -> 20 of 20 DDIM steps."""
        return cls(num_stages=100, start=14, end=20, num_steps=20)

    @classmethod
    def full(cls, num_stages: int, num_steps: int) -> "ProgressiveSchedule":
        """No progression: every stage trains the whole chain (DDPO)."""
        return cls(num_stages=num_stages, start=num_steps, end=num_steps, num_steps=num_steps)

    def __len__(self) -> int:
        return self.num_stages

    def __call__(self, stage: int) -> int:
        """Split step (trained interval length) at ``stage`` (0-based)."""
        if not 0 <= stage < self.num_stages:
            raise ValueError(f"stage {stage} is outside 0..{self.num_stages - 1}.")
        if self.start > self.end:  # the window moving forward: the growth schedule from end to start, mirrored
            grown = ProgressiveSchedule(self.num_stages, self.end, self.start, self.num_steps)
            return self.start + self.end - grown(stage)
        sizes = self.end - self.start + 1
        if self.num_stages >= sizes:
            return self.start + (stage * sizes) // self.num_stages
        if self.num_stages == 1:
            return self.end
        return self.start + round(stage * (self.end - self.start) / (self.num_stages - 1))

    def interval(self, stage: int) -> tuple[int, int]:
        """Trained step indices ``[first, last + 1)`` of the chain at ``stage``."""
        s = self(stage)
        return self.num_steps - s, self.num_steps

    @property
    def trained_steps(self) -> list[int]:
        """The trained steps of every stage, first to last."""
        return [self(i) for i in range(self.num_stages)]


def informative_history(log: Sequence[Mapping]) -> list[tuple[int, float]]:
    """``(trained steps, informative share)`` of each logged stage (a trainer's stage metrics: ``split_step``,
    ``groups``, ``flat_groups``): the share of its branch groups whose branches did not all get the same reward. Stages
    without groups are left out."""
    return [(int(m["split_step"]), 1.0 - m["flat_groups"] / m["groups"]) for m in log if m.get("groups", 0) > 0]


@dataclass(frozen=True)
class SignalChosenBranchPoint:
    """B²'s trained steps with the branch point set by the signal: the backward schedule ``planned``, moved earlier
    (towards x_T) one step at a time while the branch groups at the current depth stop disagreeing.

    Why: under a binary reward, siblings branched late share most of their chain and pass or fail together, so most
    groups are flat and carry no comparison; branching earlier makes them disagree. The backward order is kept
    wherever the share allows: the depth never shrinks, and it grows faster than ``planned`` only when the mean
    informative share of the last ``window`` stages at the current depth is below ``target``. A share that never falls
    below ``target`` leaves ``planned`` as it is; a flat share reaches x_T after ``window`` stages per step.

    ``history``: ``(trained steps, informative share)`` of the stages before ``stage``, in order
    (:func:`informative_history` of a trainer's log).
    """

    planned: ProgressiveSchedule
    target: float
    window: int = 2

    def __post_init__(self) -> None:
        if not 0.0 < self.target <= 1.0:
            raise ValueError(f"target must be an informative share in (0, 1], got {self.target}.")
        if self.window < 1:
            raise ValueError(f"window must be >= 1 stage, got {self.window}.")
        if self.planned.start > self.planned.end:
            raise ValueError(
                "A signal-chosen branch point deepens B²'s backward schedule; the planned schedule moves forward "
                f"(start={self.planned.start} > end={self.planned.end}). Use start <= end."
            )

    def __call__(self, stage: int, history: Sequence[tuple[int, float]] = ()) -> int:
        planned = self.planned(stage)
        if not history:
            return planned
        depth = history[-1][0]
        shares = []
        for steps, share in reversed(history):  # the trailing stages at the current depth
            if steps != depth or len(shares) == self.window:
                break
            shares.append(share)
        deeper = len(shares) == self.window and sum(shares) / len(shares) < self.target
        return min(self.planned.num_steps, max(planned, depth + int(deeper)))

    def deepest(self) -> list[int]:
        """The trained steps of every stage under a share that is always flat (0): the deepest path the setting can
        take, so an upper bound of every stage's sampling cost before the run."""
        history: list[tuple[int, float]] = []
        for stage in range(self.planned.num_stages):
            history.append((self(stage, history), 0.0))
        return [steps for steps, _ in history]
