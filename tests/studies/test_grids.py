"""Study grids (each variant changes one thing, equal budgets) and the report's tables (closed forms)."""

from pathlib import Path

import pytest

from b2lib.experiments.experiment import RunConfig
from b2lib.experiments.presets import trainer_config
from b2lib.studies.grids import SENSITIVITY, compat_runs, sensitivity_runs, strategy_runs


def _images(cfg: RunConfig, method="b2") -> int:
    t = trainer_config(
        cfg.preset,
        method,
        stages=cfg.stages,
        images_per_stage=cfg.images_per_stage,
        branches=cfg.branches,
        **cfg.overrides,
    )
    return t.num_stages * t.images_per_stage


def test_sensitivity_points_change_one_thing_at_equal_budget(tmp_path):
    base = RunConfig()
    runs = sensitivity_runs(base, tmp_path)
    assert [(f, v) for f, v, _ in runs] == [(f, v) for f, vs in SENSITIVITY.items() for v in vs]
    budgets = {_images(cfg) for _, _, cfg in runs}
    assert budgets == {640}
    dirs = [cfg.output_dir for _, _, cfg in runs]
    assert dirs.count(str(tmp_path / "default")) == len(SENSITIVITY)  # the default point is one run
    for factor, value, cfg in runs:
        t = trainer_config(
            "embedded",
            "b2",
            stages=cfg.stages,
            images_per_stage=cfg.images_per_stage,
            branches=cfg.branches,
            **cfg.overrides,
        )
        got = {
            "branches": t.num_branches,
            "split_start": t.split_start,
            "stages": t.num_stages,
            "threshold": t.pos_threshold,
        }[factor]
        assert got == value and (factor == "threshold" or t.pos_threshold == 0.5)


def test_strategy_and_compat_grids(tmp_path):
    s = strategy_runs(RunConfig(), tmp_path, seeds=[0, 1])
    assert [c.output_dir for c in s] == [str(tmp_path / m) for m in ("ddpo", "progressive", "branch", "b2")]
    assert all(len(c.methods) == 1 and c.seeds == (0, 1) for c in s)
    configs = {m: trainer_config("embedded", m) for m in ("ddpo", "progressive", "branch", "b2")}
    assert [configs[m].progressive for m in configs] == [False, True, False, True]
    assert [configs[m].num_branches > 1 for m in configs] == [False, False, True, True]
    assert {_images(RunConfig(), m) for m in configs} == {640}
    c = compat_runs(RunConfig(), tmp_path, seeds=[0, 1], algorithms=("ppo", "grpo"))
    assert [x.overrides["algorithm"] for x in c] == ["ppo", "ppo", "grpo", "grpo"]
    assert [Path(x.output_dir).name for x in c] == ["ppo_ddpo", "ppo_b2", "grpo_ddpo", "grpo_b2"]
    assert all(x.seeds == (0, 1) for x in c)
    groups = [x.trainer_config(x.methods[0], 0).samples_per_prompt for x in c]
    assert groups == [1, 1, 4, 1]  # grpo without B²: groups of B


def test_reusable_runs_all_or_nothing(tmp_path, monkeypatch):
    from b2lib.studies.grids import reusable_runs

    monkeypatch.setenv("B2_SMOKE", "0")
    for s in (0, 1):
        (tmp_path / f"counting_seed{s}").mkdir()
    (tmp_path / "counting_seed0" / "summary.json").write_text("{}")
    assert reusable_runs("templates", "counting", [0, 1], results=tmp_path) == []  # seed 1 unfinished
    (tmp_path / "counting_seed1" / "summary.json").write_text("{}")
    assert reusable_runs("templates", "counting", [0, 1], results=tmp_path) == [
        tmp_path / "counting_seed0",
        tmp_path / "counting_seed1",
    ]
    assert reusable_runs("templates", "binding", [0], results=tmp_path) == []
    monkeypatch.setenv("B2_SMOKE", "1")
    assert reusable_runs("templates", "counting", [0, 1], results=tmp_path) == []  # smoke runs never reuse


def test_group_census_counts_kinds_and_kept_samples():
    import torch

    from b2lib.algorithm.advantages import HistoryNormalizer
    from b2lib.studies.grids import group_census

    class Traj:
        group_ids = torch.tensor([0, 0, 1, 1, 2, 2])

    class Fake:  # the three trainer methods group_census uses, with fixed outcomes
        normalizer = HistoryNormalizer(8)

        def sample_stage(self, stage, trained_steps=None, draw=0):
            return Traj(), torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 1.0])  # flat at 0, flat at 1, mixed

        def advantages(self, traj, rewards):
            self.normalizer(["p"] * 6, rewards)  # changes the normaliser: the census must undo it
            adv = torch.tensor([-1.0, -1.0, 1.0, 1.0, -1.0, 1.0])
            return adv, torch.tensor([True, False, True, False, True, True])

    fake = Fake()
    before = fake.normalizer.state_dict()
    t = group_census(fake, draws=2)
    assert len(t) == 6 and fake.normalizer.state_dict() == before
    first = t[t.draw == 0].set_index("group")
    assert list(first["kind"]) == ["flat_low", "flat_high", "mixed"]
    assert list(first["kept_neg"]) == [1, 0, 1] and list(first["kept_pos"]) == [0, 1, 1]


def test_census_summary_shares_and_kept_per_group():
    import pandas as pd

    from b2lib.studies.grids import census_summary

    census = pd.DataFrame(
        {
            "trained_steps": [10] * 4,
            "group": [0, 1, 2, 3],
            "kind": ["flat_low", "flat_low", "flat_high", "mixed"],
            "kept_pos": [0, 0, 1, 1],
            "kept_neg": [1, 0, 0, 1],
        }
    )
    t = census_summary(census).loc[10]
    assert t.loc["flat_low", "groups"] == 2 and t.loc["flat_low", "share"] == 0.5
    assert t.loc["mixed", "kept_per_group"] == 2 and t.loc["flat_low", "kept_per_group"] == 0.5


def test_compat_plan_reuses_a_folder_only_for_the_cell_its_trainer_settings_match(tmp_path):
    """The coarse recipe trains B² with the group-relative update and DDPO with PPO-clip, so a folder of the main job
    may stand in for b2@grpo and ddpo@ppo only; every other cell is trained, and a cell finished here that a reused
    folder also matches is a replicate."""
    from b2lib.studies.grids import compat_plan
    from b2lib.utils.rundir import check_fingerprint

    base = RunConfig(methods=("ddpo", "b2"), seeds=(0, 1), stages=3, recipe="coarse", eval_splits=("test",))

    def finished(folder, cfg):
        check_fingerprint(folder, cfg.settings())
        (folder / "summary.json").write_text("{}")
        return folder

    main_b2 = finished(tmp_path / "main_b2", RunConfig(methods=("b2",), seeds=(0, 1), stages=3, recipe="coarse"))
    assert main_b2.exists() and base.trainer_config("b2", 0).algorithm == "grpo"
    out = tmp_path / "compat"
    plan = compat_plan(base, out, seeds=(0, 1), reuse=[main_b2])
    labels = {label: folder for folder, _, label in plan.models}
    assert labels["b2@grpo"] == main_b2 and labels["b2@ppo"] == out / "ppo_b2"
    assert labels["ddpo@ppo"] == out / "ppo_ddpo"  # the main job's DDPO would run other stages under B²@PPO's work
    assert [Path(c.output_dir).name for c in plan.train] == ["ppo_ddpo", "ppo_b2", "dpok_ddpo", "dpok_b2", "grpo_ddpo"]
    assert plan.replicates == [] and plan.renames[1] == {"b2": "b2@ppo"}
    (out / "grpo_b2").mkdir(parents=True)
    (out / "grpo_b2" / "summary.json").write_text("{}")  # trained here already: read back, and a replicate
    plan = compat_plan(base, out, seeds=(0, 1), reuse=[main_b2])
    assert plan.folders[-1] == out / "grpo_b2" and plan.replicates == [(out / "grpo_b2", main_b2, "b2", "grpo")]


def test_sensitivity_plan_reads_the_default_point_from_a_matching_folder_and_pairs_each_point_with_it(tmp_path):
    """Seed-major points; the default point of every seed from a reused folder that holds that seed's B² with the
    same settings (not trained again); each point − default computed on the shared test images."""
    import json

    import numpy as np
    import pandas as pd

    from b2lib.studies.grids import sensitivity_comparisons, sensitivity_plan
    from b2lib.utils.rundir import check_fingerprint

    base = RunConfig(methods=("b2",), seeds=(0,), stages=4, eval_splits=("test",))
    main = tmp_path / "main"
    check_fingerprint(main, RunConfig(methods=("b2",), seeds=(0, 1), stages=4).settings())
    (main / "summary.json").write_text("{}")
    grid = {"threshold": [0.5, 0.7]}
    plan = sensitivity_plan(base, tmp_path / "sens", seeds=(0, 1), grid=grid, reuse=[main])
    assert [(f, v, Path(c.output_dir).name, c.seeds) for f, v, c in plan.runs] == [
        ("threshold", 0.5, "main", (0,)),
        ("threshold", 0.7, "threshold_0.7", (0,)),
        ("threshold", 0.5, "main", (1,)),
        ("threshold", 0.7, "threshold_0.7", (1,)),
    ]
    assert [Path(c.output_dir).parent.name for c in plan.train] == ["seed0", "seed1"]
    assert plan.label("threshold", 0.5) == "default" and plan.label("threshold", 0.7) == "threshold=0.7"
    untrained = sensitivity_plan(base, tmp_path / "sens", seeds=(0,), grid=grid)
    assert [Path(c.output_dir).name for c in untrained.train] == ["default", "threshold_0.7"]

    # per-image scores: the default's seed s scores 0.5 + 0.01 s on every image, the point's 0.1 more
    def images(folder, seeds, offset):
        rows = [
            dict(method="base", seed=np.nan, split="test", image=i, prompt=f"p{i % 4}", reward=0.4) for i in range(8)
        ]
        rows += [
            dict(method="b2", seed=s, split="test", image=i, prompt=f"p{i % 4}", reward=0.5 + 0.01 * s + offset)
            for s in seeds
            for i in range(8)
        ]
        pd.DataFrame(rows).to_csv(folder / "eval_images.csv", index=False)
        (folder / "summary.json").write_text(json.dumps({"template": "counting"}))

    images(main, (0, 1, 2), 0.0)  # a seed the study does not run is left out of the default
    for s in (0, 1):
        folder = tmp_path / "sens" / f"seed{s}" / "threshold_0.7"
        folder.mkdir(parents=True)
        images(folder, (s,), 0.1)
    table = sensitivity_comparisons(plan)
    row = table[table["metric"] == "reward"].iloc[0]
    assert (row["factor"], row["value"], row["a"], row["b"]) == ("threshold", 0.7, "threshold=0.7", "default")
    assert row["diff"] == pytest.approx(0.1) and row["seeds_a"] == row["seeds_b"] == 2


def test_the_main_sensitivity_grid_is_centred_on_the_main_setup():
    """Every factor of notebook 06's grid holds the main setup's own value, so the main job's B² is its default."""
    from b2lib.experiments.setups import MAIN, MAIN_SENSITIVITY
    from b2lib.studies.grids import sensitivity_defaults

    main = RunConfig(
        methods=("b2",),
        seeds=(0,),
        stages=MAIN["stages"],
        recipe=MAIN["recipe"],
        method_overrides=MAIN["method_overrides"],
    )
    defaults = sensitivity_defaults(main)
    assert set(MAIN_SENSITIVITY) <= set(SENSITIVITY)
    assert all(defaults[factor] in values for factor, values in MAIN_SENSITIVITY.items())


def _eval_folder(folder, base_shift, method_shift, method="b2", n=8):
    """A run folder with per-image scores only: the base model's and one method's (seed 0) on ``n`` test images."""
    import json

    import numpy as np
    import pandas as pd

    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"template": "counting"}))
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.9, n)
    rows = []
    for model, m, seed, r in (
        ("base", "base", None, base + base_shift),
        (f"{method}_seed0", method, 0, base + method_shift),
    ):
        for i in range(n):
            rows.append(
                dict(
                    model=model,
                    method=m,
                    seed=seed,
                    split="test",
                    image=i,
                    prompt=f"p{i % 4}",
                    reward=r[i],
                    bertscore=0.5,
                    judge_all_ok=bool(i % 2),
                )
            )
    pd.DataFrame(rows).to_csv(folder / "eval_images.csv", index=False)
    return folder


def test_dtype_comparisons_pair_each_method_and_the_base_across_dtypes(tmp_path):
    from b2lib.studies.grids import dtype_comparisons

    ref = _eval_folder(tmp_path / "fp32", base_shift=0.0, method_shift=0.05)
    other = _eval_folder(tmp_path / "bf16", base_shift=0.01, method_shift=0.07)
    c = dtype_comparisons({"b2": ref}, {"b2": other}, "@bf16").set_index(["metric", "a", "b"])
    assert set(c.loc["reward"].index) == {("base@bf16", "base"), ("b2@bf16", "b2"), ("b2@bf16", "base")}
    assert abs(c.loc[("reward", "base@bf16", "base"), "diff"] - 0.01) < 1e-9  # the evaluation's precision alone
    assert abs(c.loc[("reward", "b2@bf16", "b2"), "diff"] - 0.02) < 1e-9
    assert abs(c.loc[("reward", "b2@bf16", "base"), "diff"] - 0.07) < 1e-9
    with pytest.raises(ValueError, match="same methods"):
        dtype_comparisons({"b2": ref}, {"ddpo": other}, "@bf16")
