"""The binary-reward lever search: every grid point becomes a valid run of its method, and the choice is the best
mean train-split gain over every seed."""

import pandas as pd
import pytest

from b2lib.experiments.experiment import RunConfig
from b2lib.studies.levers import LEVERS, choose_levers, chosen_overrides, lever_runs, point_tag


def test_point_tag_is_folder_safe_and_distinct():
    tags = [point_tag(p) for points in LEVERS.values() for p in points]
    assert len(set(tags)) == len(tags)
    assert all(all(ch.isalnum() or ch in "._-" for ch in t) for t in tags)
    assert point_tag({"tree": ((0, 2), (10, 2)), "lr": 3e-4}) == "tree0x2-10x2_lr0.0003"


def test_equal_search_budget_and_every_point_is_a_valid_run(tmp_path):
    # B²'s family (B² and its tree) and DDPO get as many grid points each
    assert len(LEVERS["b2"]) + len(LEVERS["tree"]) == len(LEVERS["ddpo"])
    base = RunConfig(methods=("b2",), reward="judge", eval_images=256)
    runs = lever_runs(base, tmp_path, seeds=(0, 1))
    assert len(runs) == 2 * sum(len(p) for p in LEVERS.values())
    assert len({cfg.output_dir for _, cfg in runs}) == len(runs)
    for point, cfg in runs:
        method = cfg.methods[0]
        t = cfg.trainer_config(method, cfg.seeds[0])
        assert cfg.eval_splits == ("train",) and not cfg.bertscore and cfg.reward == "judge"
        assert t.lr == point["lr"]
        if method == "b2":
            assert t.split_start == point["split_start"] and t.num_branches == point.get("num_branches", 4)
            assert t.prompts_per_stage * t.num_branches == 32  # the same images per stage at every point
        if method == "ddpo":
            assert t.samples_per_prompt == point["samples_per_prompt"] and t.prompts_per_stage == 32
        if method == "tree":
            assert t.tree == point["tree"] and t.prompts_per_stage * t.tree_leaves == 32


def test_choose_levers_takes_the_best_mean_over_complete_points():
    table = pd.DataFrame(
        [
            ("b2", "a", 0, 0.10), ("b2", "a", 1, 0.00),  # mean 0.05
            ("b2", "b", 0, 0.04), ("b2", "b", 1, 0.08),  # mean 0.06: chosen
            ("b2", "c", 0, 0.50),  # one seed only: not eligible
            ("ddpo", "x", 0, -0.02), ("ddpo", "x", 1, 0.00),
        ],
        columns=["method", "point", "seed", "gain"],
    )  # fmt: skip
    choice = choose_levers(table)
    chosen = choice[choice["chosen"]].set_index("method")
    assert chosen.loc["b2", "point"] == "b" and chosen.loc["b2", "gain"] == pytest.approx(0.06)
    assert chosen.loc["ddpo", "point"] == "x" and "c" not in set(choice["point"])
    levers = {"b2": [{"lr": 1.0}], "ddpo": [{"lr": 2.0}]}
    choice = choice.assign(point=choice["point"].map({"b": "lr1", "a": "a", "x": "lr2"}))
    assert chosen_overrides(choice, levers) == {"b2": {"lr": 1.0}, "ddpo": {"lr": 2.0}}


def test_stage_census_counts_informative_and_flat_groups():
    from b2lib.studies.levers import stage_census

    metrics = pd.DataFrame(
        {
            "method": ["b2", "b2", "ddpo"],
            "stage": [0, 1, 0],
            "images": [32, 32, 32],
            "groups": [8, 8, 32],
            "flat_groups": [6, 4, 0],
            "flat_low_groups": [5, 4, 0],
            "kept": [4, 8, 32],
        }
    )
    c = stage_census(metrics).set_index("method")
    assert list(c.index) == ["b2"]  # DDPO's samples are groups of one: nothing to compare within
    assert c.loc["b2", "informative"] == 3 and c.loc["b2", "flat_low"] == 4.5 and c.loc["b2", "flat_high"] == 0.5
    assert c.loc["b2", "informative_share"] == pytest.approx(3 / 8) and c.loc["b2", "kept"] == 6


def test_stages_for_signal_and_goals():
    from b2lib.studies.levers import goal_table, stages_for_signal

    assert stages_for_signal(2.0, 8.0, 120) == 480  # a quarter of the groups informative: four times the stages
    assert stages_for_signal(0.0, 8.0, 120) == float("inf")
    comparisons = pd.DataFrame(
        {
            "metric": ["judge_all_ok"] * 3 + ["reward"],
            "split": ["test"] * 4,
            "a": ["b2", "b2", "ddpo", "b2"],
            "b": ["base", "ddpo", "base", "base"],
            "diff": [0.03, 0.01, -0.02, 0.5],
            "low": [0.01, -0.01, -0.05, 0.4],
            "high": [0.05, 0.03, 0.01, 0.6],
        }
    )
    goals = goal_table(comparisons).set_index("goal")
    assert goals.loc["b2 above base", "met"] and not goals.loc["b2 above ddpo", "met"]
    assert len(goals) == 2  # no tree rows in the table, and the CLIPScore row is not a goal


def test_survivors_prune_points_far_below_the_best_first_seed(tmp_path):
    from b2lib.studies.levers import survivors

    levers = {
        "b2": [{"split_start": 10, "lr": 3e-4}, {"split_start": 10, "lr": 3e-3}],
        "ddpo": [{"samples_per_prompt": 1, "lr": 1e-3}],
    }
    runs = lever_runs(RunConfig(reward="judge"), tmp_path, seeds=(0, 1), levers=levers)
    first = pd.DataFrame(
        {
            "method": ["b2", "b2", "ddpo"],
            "point": [point_tag(p) for p in (levers["b2"][0], levers["b2"][1], levers["ddpo"][0])],
            "gain": [0.03, -0.20, -0.05],
        }
    )
    later = survivors([r for r in runs if r[1].seeds[0] == 1], first, margin=0.1)
    kept = {(c.methods[0], point_tag(p)) for p, c in later}
    assert kept == {("b2", "split_start10_lr0.0003"), ("ddpo", "samples_per_prompt1_lr0.001")}


def test_choose_levers_breaks_ties_by_grid_order():
    for order in (["a", "b"], ["b", "a"]):
        t = pd.DataFrame({"method": ["b2"] * 4, "point": order * 2, "seed": [0, 0, 1, 1], "gain": [0.1, 0.0, 0.0, 0.1]})
        choice = choose_levers(t)
        assert choice.loc[choice["chosen"], "point"].item() == order[0]


def test_census_by_branch_point_pairs_training_with_the_base_census():
    from b2lib.studies.levers import census_by_branch_point

    metrics = pd.DataFrame(
        {
            "method": ["b2"] * 3 + ["ddpo"],
            "split_step": [10, 10, 20, 20],
            "images": [32, 32, 32, 32],
            "groups": [8, 8, 8, 32],
            "flat_groups": [8, 6, 4, 0],
            "reward_mean": [0.2, 0.3, 0.25, 0.3],
        }
    )
    prediction = pd.DataFrame(
        {"reward": ["judge", "judge", "judge_strict"], "B": [4, 4, 4], "trained_steps": [10, 20, 10],
         "predicted": [0.11, 0.53, 0.9]}
    )  # fmt: skip
    t = census_by_branch_point(metrics, prediction).set_index("split_step")
    assert list(t["method"]) == ["b2", "b2"] and (t["branches"] == 4).all()
    assert t.loc[10, "measured"] == pytest.approx(0.125) and t.loc[10, "stages"] == 2
    assert t.loc[20, "measured"] == pytest.approx(0.5) and t.loc[20, "predicted"] == pytest.approx(0.53)
    assert t.loc[10, "predicted"] == pytest.approx(0.11)  # the strict reward's row is not used


def test_signal_budget_reads_the_reference_run(tmp_path):
    import json

    from b2lib.studies.levers import signal_budget

    trainer = {"b2_seed0": {"prompts_per_stage": 8, "num_stages": 120}}
    (tmp_path / "run.json").write_text(json.dumps({"settings": {"trainer": trainer}}))
    census = pd.DataFrame({"method": ["b2"], "informative": [2.0]})
    choice = pd.DataFrame({"method": ["b2", "b2"], "point": ["a", "b"], "informative_per_stage": [2.0, 4.0]})
    b = signal_budget(census, choice, tmp_path).set_index("point")
    assert b.loc["trained (5 seeds)", "stages_needed"] == 480 and b.loc["search: b", "stages_needed"] == 240
    assert signal_budget(census, choice, tmp_path / "missing").empty
