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

__all__ = ["ProgressiveSchedule"]


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
