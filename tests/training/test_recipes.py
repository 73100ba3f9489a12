"""The estimator recipes are data read by both entries: a configuration built by hand and a run's presets."""

import pytest

from b2lib.experiments.presets import trainer_config
from b2lib.training.recipes import RECIPES, recipe_switches


def test_switches_are_a_copy_and_unknown_recipes_are_named():
    s = recipe_switches("coarse", "b2")
    assert s == {"window": 1, "explore_grid": 2, "algorithm": "grpo"}
    s["window"] = 9
    assert RECIPES["coarse"]["b2"]["window"] == 1
    assert recipe_switches("paper", "b2") == {} and recipe_switches("coarse", "unknown_method") == {}
    with pytest.raises(ValueError, match="coarse"):
        recipe_switches("fine", "b2")


@pytest.mark.parametrize("method", ["b2", "ddpo"])
def test_presets_apply_the_same_switches(method):
    cfg = trainer_config("embedded", method, recipe="coarse")
    assert all(getattr(cfg, k) == v for k, v in recipe_switches("coarse", method).items())


@pytest.mark.parametrize("method", ["flow_grpo", "mixgrpo", "tempflow", "b2", "tree"])
def test_the_flow_family_gets_the_coarse_exploration_and_keeps_its_own_switches(method):
    """Under the coarse recipe every flow method explores on the lattice; what makes a method itself (Flow-GRPO's
    every-step SDE and independent groups, MixGRPO's forward window, TempFlow's one step) is unchanged."""
    extra = {"tree": [[5, 2], [10, 2]], "window": 1} if method == "tree" else {}
    paper = trainer_config("flow", method, recipe="paper", **extra)
    coarse = trainer_config("flow", method, recipe="coarse", **extra)
    assert coarse.explore_grid == 2 and paper.explore_grid == 0
    if method in ("flow_grpo", "mixgrpo", "tempflow"):
        changed = {k for k in vars(paper) if getattr(paper, k) != getattr(coarse, k)}
        assert changed == {"explore_grid"}
