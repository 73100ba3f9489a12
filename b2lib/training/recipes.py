"""The estimator recipes: the switches each recipe lays over a method's configuration.

Why a module of its own, beside the configuration: a recipe is data about :class:`~b2lib.training.config.TrainerConfig`
fields, read both by a configuration built by hand (``TrainerConfig.b2(recipe="coarse")``) and by a run's resolution
(:mod:`b2lib.experiments.presets`), so the two cannot disagree.
"""

from __future__ import annotations

__all__ = ["RECIPES", "recipe_switches"]

_COARSE_BRANCHED = dict(window=1, explore_grid=2, algorithm="grpo")
#: Estimator recipes, per method: switches laid over the scale's settings (and its tuned point) before the sizes and
#: overrides. ``"paper"``: the paper's estimators as they are. ``"coarse"``: exploration on a 2 x 2 lattice per latent
#: channel (16 explored dimensions instead of 1024: ``TrainerConfig.explore_grid``); the branching methods (b2,
#: branch) also train only the step at the branch point, with the rest of the chain deterministic (``window=1``), and
#: compare each branch with its own group (``algorithm="grpo"``: z within the branch group, PPO-clip, KL to the base
#: model), so every reward difference the update sees comes from the trained step's exploration. Why: at the base
#: model this raised B²'s stage gradient SNR from 0.004 to 0.09 (notebook 10); DDPO has no group to compare within,
#: so it gets the coarse exploration alone. The flow-GRPO family (flow_grpo, or grpo on any policy, mixgrpo, tempflow)
#: already compares within groups, and tempflow already trains one step: each gets the coarse exploration, so under
#: either recipe every method differs from B² only where its paper says it does.
RECIPES: dict[str, dict[str, dict]] = {
    "paper": {},
    "coarse": {
        "b2": _COARSE_BRANCHED,
        "b2_signal": _COARSE_BRANCHED,
        "branch": _COARSE_BRANCHED,
        "tree": _COARSE_BRANCHED,
        "ddpo": dict(explore_grid=2),
        "progressive": dict(explore_grid=2),
        "flow_grpo": dict(explore_grid=2),
        "grpo": dict(explore_grid=2),
        "mixgrpo": dict(explore_grid=2),
        "tempflow": dict(explore_grid=2),
    },
}


def recipe_switches(recipe: str, method: str) -> dict:
    """``method``'s switches under ``recipe`` (a copy: callers may change it)."""
    if recipe not in RECIPES:
        raise ValueError(f"Unknown recipe {recipe!r}: use one of {sorted(RECIPES)}.")
    return dict(RECIPES[recipe].get(method, {}))
