"""Rewards: callables ``(images (N, 3, H, W) in [0, 1], N prompts) -> N scores``, higher is better.

- ``base``: the contract and its checks (a score per image, finite), CLIPScore (the embedded world's and the hub's),
  the sign control (``Negated``) and a test reward (``Redness``);
- ``bertscore``: BERTScore of an image's caption against its prompt (a BLIP captioner at the paper scale; the world
  supplies its own programmatic captioner).
"""

from b2lib.rewards.base import (
    ClipScore,
    Negated,
    Redness,
    RewardFn,
    RewardNotFiniteError,
    check_finite,
    check_reward_output,
)

__all__ = ["ClipScore", "Negated", "Redness", "RewardFn", "RewardNotFiniteError", "check_finite", "check_reward_output"]
