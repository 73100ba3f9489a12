"""TrainerConfig: its presets for B² and DDPO, validation, the algorithms, and what enters the fingerprint."""

import pytest
from trainer_helpers import _small, redness

from b2lib import B2Trainer, TrainerConfig


def test_ddpo_config_is_b2_with_the_strategies_off():
    b2, ddpo = TrainerConfig.b2(), TrainerConfig.ddpo()
    changed = {k for k in vars(b2) if getattr(b2, k) != getattr(ddpo, k)}
    assert changed == {"progressive", "num_branches", "selection", "normalization"}
    assert ddpo.schedule.trained_steps == [20] * 100
    assert b2.schedule.trained_steps[0] == 14 and b2.schedule.trained_steps[-1] == 20


def test_bad_config():
    with pytest.raises(ValueError, match="num_branches >= 2"):
        TrainerConfig.b2(num_branches=1)
    with pytest.raises(ValueError, match="longer than the chain"):
        TrainerConfig.b2(split_end=25)
    with pytest.raises(ValueError, match="prompts"):
        B2Trainer(None, redness, [], TrainerConfig.b2())


def test_algorithm_config():
    assert TrainerConfig.b2().algorithm == "ppo" and TrainerConfig.b2().kl_coef == 0.01
    with pytest.raises(ValueError, match=r"\('ppo', 'dpok', 'grpo'\)"):
        TrainerConfig.b2(algorithm="trpo")
    for algorithm in ("dpok", "grpo"):
        with pytest.raises(ValueError, match="use_lora=True"):
            TrainerConfig.ddpo(algorithm=algorithm, use_lora=False)
    TrainerConfig.ddpo(use_lora=False)  # ppo fine-tunes the whole UNet if asked
    with pytest.raises(ValueError, match="kl_coef"):
        TrainerConfig.b2(algorithm="dpok", kl_coef=-0.1)


def test_fields_added_later_stay_out_of_the_fingerprint_at_their_default():
    """Run folders written before explore_grid existed keep their fingerprint: the field is recorded only when set,
    and a config rebuilt from the record is the same config."""
    from b2lib.training.trainer import ADDED_FIELDS

    assert "explore_grid" in ADDED_FIELDS
    d = TrainerConfig.b2().to_dict()
    assert "explore_grid" not in d and TrainerConfig(**d).to_dict() == d and TrainerConfig(**d).explore_grid == 0
    d = TrainerConfig.b2(explore_grid=2).to_dict()
    assert d["explore_grid"] == 2 and TrainerConfig(**d).explore_grid == 2
    with pytest.raises(ValueError, match="explore_grid"):
        TrainerConfig.b2(explore_grid=-1)


def test_tree_config_checks_and_fingerprint():
    cfg = TrainerConfig.b2(**_small(window=1, tree=[[2, 2], [4, 2]]))
    assert cfg.tree == ((2, 2), (4, 2))
    d = cfg.to_dict()
    assert d["tree"] == [[2, 2], [4, 2]] and TrainerConfig(**d).to_dict() == d and TrainerConfig(**d).tree == cfg.tree
    assert "tree" not in TrainerConfig.b2().to_dict() and "tree_progressive" not in TrainerConfig.b2().to_dict()
    with pytest.raises(ValueError, match="window"):  # segments of 2 and 3 steps: levels would not stack
        TrainerConfig.b2(**_small(tree=((1, 2), (3, 2))))
    with pytest.raises(ValueError, match="increasing"):
        TrainerConfig.b2(**_small(window=1, tree=((4, 2), (2, 2))))
