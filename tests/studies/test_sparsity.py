"""The informative share of branch groups under a binary reward, against closed forms and simulation."""

import math

import numpy as np
import pandas as pd
import pytest

from b2lib.studies.sparsity import (
    census_prediction,
    flat_probability,
    groups_needed,
    informative_share,
    sibling_correlation,
)


def test_flat_probability_closed_forms():
    assert flat_probability(0.3, 0.0, 4) == pytest.approx(0.3**4 + 0.7**4)
    for p, rho in [(0.2, 0.1), (0.5, 0.5), (0.9, 0.3)]:  # B = 2: 1 - 2 p (1 - p)(1 - rho)
        assert flat_probability(p, rho, 2) == pytest.approx(1 - 2 * p * (1 - p) * (1 - rho))
    assert flat_probability(0.3, 1.0, 4) == 1.0 and flat_probability(0.0, 0.2, 4) == 1.0
    assert flat_probability(0.3, 1e-9, 4) == pytest.approx(0.3**4 + 0.7**4, rel=1e-6)  # continuous at rho -> 0
    assert informative_share(0.25, 0.0, 4) == pytest.approx(1 - 0.25**4 - 0.75**4)
    assert informative_share(0.25, 0.0, 16) > informative_share(0.25, 0.0, 4)  # more branches, more signal
    assert informative_share(0.25, 0.5, 4) < informative_share(0.25, 0.0, 4)  # agreeing siblings, less
    with pytest.raises(ValueError, match="at least 2"):
        flat_probability(0.5, 0.1, 1)
    with pytest.raises(ValueError, match="p must"):
        flat_probability(1.5, 0.1, 4)


def _simulate(p, rho, b, groups, rng):
    s = (1 - rho) / rho
    rates = rng.beta(p * s, (1 - p) * s, size=groups)
    return rng.binomial(b, rates) / b


def test_sibling_correlation_and_prediction_recover_a_simulated_census():
    rng = np.random.default_rng(0)
    p, rho, b = 0.25, 0.3, 4
    means = _simulate(p, rho, b, 40_000, rng)
    p_hat, rho_hat = sibling_correlation(means, b)
    assert p_hat == pytest.approx(p, abs=0.01) and rho_hat == pytest.approx(rho, abs=0.02)
    measured = float(((means > 0) & (means < 1)).mean())
    assert informative_share(p_hat, rho_hat, b) == pytest.approx(measured, abs=0.01)
    independent = rng.binomial(b, p, size=40_000) / b
    assert sibling_correlation(independent, b)[1] == pytest.approx(0.0, abs=0.02)
    assert math.isnan(sibling_correlation(np.zeros(5), b)[1])


def test_census_prediction_reads_a_census_table():
    rng = np.random.default_rng(1)
    rows = []
    for steps, (p, rho) in {10: (0.2, 0.6), 20: (0.3, 0.1)}.items():
        for g, m in enumerate(_simulate(p, rho, 4, 4000, rng)):
            kind = "mixed" if 0 < m < 1 else ("flat_low" if m == 0 else "flat_high")
            rows.append({"trained_steps": steps, "group": g, "kind": kind, "branches": 4, "reward_mean": m})
    table = census_prediction(pd.DataFrame(rows))
    assert list(table["trained_steps"]) == [10, 20] and (table["groups"] == 4000).all()
    assert np.allclose(table["predicted"], table["measured"], atol=0.03)
    assert (table["independent"] >= table["measured"] - 0.02).all()  # agreement only removes signal
    assert groups_needed(0.25, 8) == 32 and groups_needed(0.0, 8) == math.inf


def test_axis_runs_rates_and_gain_table(tmp_path):
    import torch

    from b2lib.experiments.experiment import RunConfig
    from b2lib.studies.sparsity import AXIS, gain_vs_sparsity, positive_rates, sparsity_plot, sparsity_runs
    from b2lib.world.prompts import sample_scene
    from b2lib.world.scenes import caption, render_batch

    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, "counting") for _ in range(8)]
    images = torch.from_numpy(render_batch(scenes)).permute(0, 3, 1, 2).float() / 255.0
    prompts = [caption(s) for s in scenes[:4]] + [caption(s) for s in scenes[5:] + scenes[4:5]]  # half mismatched
    rates = positive_rates(images, prompts, clip_scores=np.full(8, 0.7))
    assert list(rates["reward"]) == list(AXIS) and rates["positive_rate"].iloc[0] == 1.0
    assert rates["positive_rate"].is_monotonic_decreasing  # the axis gets sparser, measured on the same images

    runs = sparsity_runs(RunConfig(methods=("ddpo", "b2")), tmp_path, seeds=(0, 1))
    assert [r.reward for r in runs[::4]] == list(AXIS) and len(runs) == 16  # reward by reward: whole columns first
    assert runs[-1].output_dir == str(tmp_path / "judge_strict" / "b2_seed1")
    assert runs[-1].reward == "judge_strict" and runs[-1].methods == ("b2",) and runs[-1].seeds == (1,)
    negated = sparsity_runs(RunConfig(methods=("b2",), reward_sign=-1), tmp_path, ["judge_strict"], seeds=(3,))
    assert [r.output_dir for r in negated] == [str(tmp_path / "judge_strict_negated" / "b2_seed3")]  # its own folder
    assert negated[0].reward_sign == -1 and negated[0].settings() != runs[-1].settings()

    def comp(d):
        return pd.DataFrame(
            {
                "metric": ["judge_all_ok", "reward"],
                "a": ["b2", "b2"],
                "b": ["base", "base"],
                "diff": [d, 0.0],
                "low": [d - 0.1, 0.0],
                "high": [d + 0.1, 0.0],
            }  # fmt: skip
        )

    table = gain_vs_sparsity({r: comp(0.1 * i) for i, r in enumerate(AXIS)}, rates)
    assert len(table) == 4 and list(table["diff"]) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert list(table["positive_rate"]) == list(rates["positive_rate"])
    sparsity_plot(table)


def test_branch_census_scores_the_same_samples_with_every_reward(make_pipe):
    import torch

    from b2lib import B2Trainer, TrainerConfig
    from b2lib.studies.sparsity import branch_census

    def brightness(images, prompts):
        return images.mean((1, 2, 3))

    def above_median(images, prompts):  # binary: half the images, so some groups mixed, some flat
        b = brightness(images, prompts)
        return (b > b.median()).float()

    cfg = TrainerConfig.b2(num_steps=4, num_stages=1, split_start=2, prompts_per_stage=3, sample_batch_size=3,
                           num_branches=2, progress=False)  # fmt: skip
    trainer = B2Trainer(make_pipe(), brightness, ["a red circle", "two blue squares"], cfg)
    census = branch_census(trainer, {"dense": brightness, "binary": above_median}, draws=2)
    assert len(census) == 2 * 2 * 3 and set(census["reward"]) == {"dense", "binary"}  # rewards x draws x groups
    dense, binary = (census[census.reward == r].reset_index(drop=True) for r in ("dense", "binary"))
    assert (dense["kind"] == "mixed").all()  # continuous scores: siblings never tie
    assert set(binary["reward_mean"]) <= {0.0, 0.5, 1.0} and (census["branches"] == 2).all()
    assert ((binary["reward_mean"] == 0.5) == (binary["kind"] == "mixed")).all()
    assert census_prediction(census[census.reward == "binary"], by="reward")["groups"].iloc[0] == 6
    assert torch.is_tensor(above_median(torch.rand(4, 3, 8, 8), ["a"] * 4))


def test_group_kind_is_the_one_definition_of_flat_groups():
    from b2lib.studies.sparsity import group_kind

    assert group_kind([0.0, 1.0, 0.0], 0.3) == "mixed"
    assert group_kind([0.0, 0.0], 0.3) == "flat_low"
    assert group_kind([1.0, 1.0], 0.3) == "flat_high"
    assert group_kind([0.3, 0.3], 0.3) == "flat_high"  # at the mean counts as high, as the stage log's flat_low_groups
