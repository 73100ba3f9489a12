"""Cost accounting in denoiser rows, against closed forms."""

import math

import pytest

from b2lib import TrainerConfig


def test_unet_rows_closed_form():
    from b2lib.training.trainer import unet_rows

    b2 = TrainerConfig.b2(num_steps=20, num_branches=4, prompts_per_stage=8, epochs_per_stage=1, guidance_scale=5.0)
    # 8 prefixes x 10 shared steps + 32 images x 10 interval steps, x2 for CFG; update: 12 kept x 10 steps x 2
    assert unet_rows(b2, 32, 12, 10) == {"unet_rows_sample": (8 * 10 + 32 * 10) * 2, "unet_rows_train": 12 * 10 * 2}
    ddpo = TrainerConfig.ddpo(num_steps=20, prompts_per_stage=32, epochs_per_stage=2, guidance_scale=1.0)
    assert unet_rows(ddpo, 32, 32, 20) == {"unet_rows_sample": 32 * 20, "unet_rows_train": 2 * 32 * 20}
    # a window of 2 trained steps in an interval of 10: the whole interval is sampled, 2 steps are trained
    assert unet_rows(b2, 32, 12, 2, interval=10) == {
        "unet_rows_sample": (8 * 10 + 32 * 10) * 2,
        "unet_rows_train": 12 * 2 * 2,
    }
    with pytest.raises(ValueError, match="window"):
        TrainerConfig.b2(window=0)


def test_nominal_work_closed_forms_and_equal_work_stages():
    from dataclasses import replace

    from b2lib.training.trainer import TRAIN_ROW_WORK, equal_work_stages, nominal_work

    # DDPO: no branches, no selection; every image's 20 steps sampled (x2 CFG), ceil(0.25 * 20) = 5 trained
    ddpo = TrainerConfig.ddpo(
        num_stages=7, prompts_per_stage=32, num_branches=1, num_steps=20, guidance_scale=5.0, timestep_fraction=0.25
    )
    assert not ddpo.selection and ddpo.epochs_per_stage == 2
    per_stage = 32 * 20 * 2 + TRAIN_ROW_WORK * 2 * 32 * 5 * 2
    assert nominal_work(ddpo) == 7 * per_stage
    # B² with a one-step window under GRPO: the prefix once per group, the interval once per image; at most the best
    # and the worst of each of the 8 groups trained, on one step, each row a forward, a backward and a reference forward
    b2 = TrainerConfig.b2(
        num_stages=5, prompts_per_stage=8, num_branches=4, num_steps=20, split_start=10, window=1, algorithm="grpo"
    )
    expected = 0
    for stage in range(5):
        s = b2.schedule(stage)
        sample = (8 * (20 - s) + 32 * s) * 2
        expected += sample + (TRAIN_ROW_WORK + 1) * b2.epochs_per_stage * 16 * 1 * 2
    assert nominal_work(b2) == expected
    # the equal-work count is the largest that fits
    budget = nominal_work(b2)
    n = equal_work_stages(replace(ddpo, num_stages=1), budget)
    assert nominal_work(replace(ddpo, num_stages=n)) <= budget < nominal_work(replace(ddpo, num_stages=n + 1))
    assert n == max(1, math.floor(budget / per_stage))
    # a depth-1 tree is B² with a fixed branch point: the same work
    kw = dict(num_stages=3, prompts_per_stage=8, num_steps=20, window=1, algorithm="grpo")
    tree1 = TrainerConfig.b2(tree=((10, 4),), **kw)
    fixed = TrainerConfig.b2(progressive=False, split_end=10, num_branches=4, **kw)
    assert nominal_work(tree1) == nominal_work(fixed)
    # a depth-2 tree, both levels open: nodes sampled once each; per prompt 2 level-0 nodes (1 group, both kept) and
    # 4 level-1 nodes (2 groups, at most 2 kept each), one stored step each, two epochs, a guided step 2 rows
    tree2 = TrainerConfig.b2(tree=((5, 2), (10, 2)), tree_progressive=False, **kw)
    sample = 8 * (5 + 2 * 5 + 4 * 10) * 2
    train = 2 * 8 * (2 + 4) * 1 * 2
    assert nominal_work(tree2) == 3 * (sample + (TRAIN_ROW_WORK + 1) * train)
