"""The binary-reward study as data: the search, the budget, the study and the sign control are the runs the notebook
and the queue both build."""

import json

import pandas as pd
import pytest

from b2lib.studies.binary import (
    B2_FIELDS,
    BASELINE_FIELDS,
    BINARY_METHODS,
    SEARCH,
    BinaryStudy,
    expected_informative,
    expected_path,
    share_by_depth,
    study_budget,
)
from b2lib.training.config import TrainerConfig
from b2lib.utils.paths import REPO_ROOT

CHOICE = {"ddpo": {"samples_per_prompt": 8, "lr": 3e-4}, "grpo": {"num_branches": 8, "lr": 1e-3}}


def test_the_search_lays_each_point_over_the_baselines_fields_in_its_own_folder(tmp_path):
    study = BinaryStudy(out=tmp_path)
    runs = study.search_runs()
    assert len(runs) == sum(len(p) for p in SEARCH.values()) * len(study.search_seeds)
    assert len({cfg.output_dir for _, cfg in runs}) == len(runs)
    for point, cfg in runs:
        (m,) = cfg.methods
        assert cfg.reward == "judge" and cfg.eval_splits == ("train",) and not cfg.save_lora
        assert cfg.method_overrides == {m: {**BASELINE_FIELDS, **point}} and cfg.overrides == {}
        assert cfg.stages == study.search_stages and cfg.budget == "compute"
    # the group size is the method's own: DDPO's samples per prompt, the GRPO-style group's size
    point, cfg = next(r for r in runs if r[1].methods == ("grpo",) and r[0]["num_branches"] == 8)
    tcfg = cfg.trainer_config("grpo", 0)
    assert (tcfg.samples_per_prompt, tcfg.algorithm, tcfg.lr) == (8, "grpo", point["lr"])
    # the equal-compute reference (B²) is the same for every point: the point sits in the method's own fields
    stages = {cfg.trainer_config(cfg.methods[0], 0).num_stages for p, cfg in runs if cfg.methods == ("grpo",)}
    assert len(stages) == 1


def test_the_study_runs_every_arm_at_its_point_and_the_sign_control_beside_it(tmp_path):
    study = BinaryStudy(out=tmp_path, seeds=(0, 1), sign_seeds=(1,), stages=20)
    configs = study.study_configs(CHOICE)
    assert [c.output_dir for c in configs[: len(BINARY_METHODS)]] == [
        str(tmp_path / f"{m}_seed0") for m in BINARY_METHODS
    ]
    by = {(c.methods[0], c.seeds[0]): c for c in configs}
    assert by[("ddpo", 1)].trainer_config("ddpo", 1).samples_per_prompt == 8
    for m in ("b2", "b2_signal", "tree"):
        tcfg = by[(m, 0)].trainer_config(m, 0)
        assert (tcfg.lr, tcfg.grad_accum) == (B2_FIELDS["lr"], B2_FIELDS["grad_accum"])
        assert by[(m, 0)].save_lora and by[(m, 0)].bertscore and by[(m, 0)].reward == "judge"
    assert by[("b2_signal", 0)].trainer_config("b2_signal", 0).branch_target == study.signal_target
    assert by[("tree", 0)].trainer_config("tree", 0).tree == ((0, 2), (10, 2))
    (neg,) = study.sign_configs(CHOICE)
    twin = by[("b2_signal", 1)]
    assert neg.output_dir == str(tmp_path / "negated" / "b2_signal_seed1") and neg.reward_sign == -1
    assert neg.trainer_config("b2_signal", 1) == twin.trainer_config("b2_signal", 1)


def test_the_study_refuses_to_run_before_its_choice(tmp_path):
    with pytest.raises(FileNotFoundError, match="search first"):
        BinaryStudy(out=tmp_path, stages=20).study_configs()


def test_the_shares_interpolate_the_census_between_its_depths():
    census = pd.DataFrame({"reward": ["judge"] * 2, "B": [4, 4], "trained_steps": [10, 20], "predicted": [0.1, 0.5]})
    share = share_by_depth(census)
    assert share(10) == pytest.approx(0.1) and share(15) == pytest.approx(0.3) and share(20) == pytest.approx(0.5)
    assert share(5) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="8 branches"):
        share_by_depth(census, branches=8)


def test_the_expected_path_is_the_plan_or_the_signals_closed_form():
    plan = TrainerConfig.b2(num_steps=20, num_stages=40, split_start=10, num_branches=4, prompts_per_stage=8)
    assert expected_path(plan, lambda s: 0.0) == list(plan.schedule.trained_steps)
    assert expected_informative(plan, lambda s: 1.0) == 8 * 40
    chosen = TrainerConfig.b2(**{**plan.to_dict(), "branch_target": 0.5, "branch_window": 2})
    # a share below the target everywhere: one step deeper every two stages (10 + floor(k / 2)) up to x_T
    assert expected_path(chosen, lambda s: 0.0) == [min(20, 10 + k // 2) for k in range(40)]
    # a share above the target everywhere: the plan
    assert expected_path(chosen, lambda s: 1.0) == list(plan.schedule.trained_steps)


def test_the_budget_is_the_fewest_stages_that_reach_the_reference_groups(tmp_path):
    study = BinaryStudy(out=tmp_path)
    share = lambda s: 0.5  # noqa: E731
    got = study_budget(lambda n: study._base(n, "b2_signal"), share, reference_groups=400, step=10)
    # 8 groups per stage at a share of 0.5: 100 stages of the signal-chosen B², at B²'s compute
    assert got["method_stages"] * 4 >= 400 and got["expected_informative"] >= 400
    fewer = study._base(got["stages"] - 10, "b2_signal").trainer_config("b2_signal", 0)
    assert expected_informative(fewer, share) < 400


def test_the_recorded_budget_is_read_not_recomputed(tmp_path):
    (tmp_path / "budget.json").write_text(json.dumps({"stages": 70}))
    assert BinaryStudy(out=tmp_path).study_stages() == 70
    assert BinaryStudy(out=tmp_path, stages=30).study_stages() == 30


def test_the_fixed_fields_are_the_main_jobs_points():
    """B²'s arms and the baselines' fixed fields are the main job's recorded points (results/main/run.json)."""
    run = json.loads((REPO_ROOT / "results" / "main" / "run.json").read_text())["settings"]["run"]
    own = run["method_overrides"]
    assert own["b2"] == B2_FIELDS
    assert {k: own["ddpo"][k] for k in BASELINE_FIELDS} == BASELINE_FIELDS


def test_the_committed_budget_is_the_census_computation():
    """``results/binary_study/budget.json`` is what the census and the main job give today."""
    folder = REPO_ROOT / "results" / "binary_study"
    if not (folder / "budget.json").is_file():
        pytest.skip("the study's budget is not committed")
    recorded = json.loads((folder / "budget.json").read_text())
    import tempfile

    fresh = BinaryStudy(out=tempfile.mkdtemp()).budget(root=REPO_ROOT)
    assert fresh == recorded


def test_the_informative_groups_seen_are_summed_per_run_and_averaged_over_seeds():
    from b2lib.studies.binary import informative_seen

    rows = []
    for seed, flats in ((0, (8, 6)), (1, (4, 4))):
        for stage, flat in enumerate(flats):
            rows.append(dict(method="b2", seed=seed, stage=stage, images=32, groups=8, flat_groups=flat))
            rows.append(dict(method="ddpo", seed=seed, stage=stage, images=32, groups=32, flat_groups=0))
    out = informative_seen(pd.DataFrame(rows)).set_index("method")
    assert list(out.index) == ["b2"]  # DDPO's one-sample groups carry no comparison
    assert out.loc["b2", "informative"] == pytest.approx((2 + 8) / 2)
    assert (out.loc["b2", "informative_min"], out.loc["b2", "informative_max"]) == (2, 8)
    assert out.loc["b2", "share"] == pytest.approx((2 / 16 + 8 / 16) / 2)


def test_the_goals_read_the_arm_against_base_its_sign_control_and_the_better_baseline():
    from b2lib.studies.binary import goal_table

    def comp(a, b, diff, low, high, mean_a=0.3):
        return dict(metric="judge_all_ok", split="test", a=a, b=b, diff=diff, low=low, high=high, mean_a=mean_a)

    comparisons = pd.DataFrame(
        [
            comp("ddpo", "base", 0.01, -0.01, 0.03, mean_a=0.30),
            comp("grpo", "base", 0.03, 0.01, 0.05, mean_a=0.32),
            comp("b2_signal", "base", 0.04, 0.02, 0.06),
            comp("b2_signal", "grpo", 0.01, -0.01, 0.03),
            comp("b2_signal", "ddpo", 0.03, 0.01, 0.05),
            comp("b2", "base", 0.00, -0.02, 0.02),
            comp("b2", "grpo", -0.03, -0.05, -0.01),
        ]
    )
    signs = pd.DataFrame(
        [dict(method="b2_signal", metric="judge_all_ok", signal=0.05, signal_low=0.02, signal_high=0.08)]
    )
    goals = goal_table(comparisons, signs, arms=("b2", "b2_signal"))
    by = {(r.arm, r.goal): r for r in goals.itertuples()}
    assert by[("b2_signal", "above base")].met and not by[("b2", "above base")].met
    assert by[("b2_signal", "sign control: signal")].met and ("b2", "sign control: signal") not in by
    # the better baseline is GRPO (the higher test judge): B²'s signal arm is not behind it, nor resolved ahead
    vs = by[("b2_signal", "vs grpo (the better baseline)")]
    assert vs.met and not vs.ahead
    assert not by[("b2", "vs grpo (the better baseline)")].met


def test_the_sparsity_figure_gets_the_studys_arms_as_one_more_column_at_the_rewards_rate():
    from b2lib.studies.binary import sparsity_with_study

    axis = pd.DataFrame(
        [
            dict(reward=r, positive_rate=p, method="b2", metric=m, diff=0.1, low=0.0, high=0.2)
            for r, p in (("clip", 1.0), ("judge", 0.26))
            for m in ("judge_all_ok", "reward")
        ]
    )
    comparisons = pd.DataFrame(
        [
            dict(metric=m, split="test", a=a, b=b, diff=0.05, low=0.01, high=0.09)
            for m in ("judge_all_ok", "reward")
            for a, b in (("b2_signal", "base"), ("grpo", "base"), ("b2_signal", "grpo"))
        ]
    )
    table = sparsity_with_study(axis, comparisons)
    assert set(table["metric"]) == {"judge_all_ok"} and len(table) == 4  # two axis rows + the two arms − base
    new = table[table["reward"] == "judge, census budget"]
    assert set(new["method"]) == {"b2_signal", "grpo"} and (new["positive_rate"] == 0.26).all()
    with pytest.raises(ValueError, match="notebook 18"):
        sparsity_with_study(axis, comparisons, reward="judge_strict")


def test_the_census_is_measured_under_the_studys_recipe_once_and_then_read(tmp_path, monkeypatch):
    import b2lib.studies.sparsity as sparsity

    calls = []

    def fake(prompts, branches, images_per_stage, draws, preset, recipe, depths):
        calls.append((branches, images_per_stage, draws, preset, recipe, depths))
        prediction = pd.DataFrame(
            {"reward": ["judge"], "B": branches, "trained_steps": [depths[0]], "predicted": [0.3]}
        )
        return pd.DataFrame({"reward": ["judge"]}), prediction

    monkeypatch.setattr(sparsity, "census_study", fake)
    study = BinaryStudy(out=tmp_path, census_depths=(10, 20), census_draws=3)
    first = study.measure_census()
    assert calls == [([4], 32, 3, "embedded", "coarse", (10, 20))]
    assert (tmp_path / "census" / "census.csv").is_file() and first["predicted"].tolist() == [0.3]
    assert study.measure_census().equals(first) and len(calls) == 1


def test_notebook_20s_parameters_are_the_study_defaults_the_queue_runs():
    """The queue (scripts/binary_queue.py) builds BinaryStudy with its defaults; notebook 20 (written by
    scripts/make_notebook_20.py) with its parameters cell. Where the two differ, the notebook would run its own runs."""
    import dataclasses
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_notebook_20", REPO_ROOT / "scripts" / "make_notebook_20.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (cell,) = [c for c in module.nb.cells if "parameters" in c.metadata.get("tags", [])]
    params: dict = {}
    exec(cell.source, params)
    defaults = BinaryStudy(out="unused")
    shared = [f.name for f in dataclasses.fields(BinaryStudy) if f.name in params]
    assert set(shared) >= {"methods", "seeds", "stages", "search", "tree", "recipe", "sign_seeds", "census", "run_name"}
    for name in shared:
        value, default = params[name], getattr(defaults, name)
        assert (tuple(value) if isinstance(default, tuple) else value) == default, name
