"""Study grids (each variant changes one thing, equal budgets) and the report's tables (closed forms)."""

from pathlib import Path

from b2lib.experiment import RunConfig
from b2lib.presets import trainer_config
from b2lib.studies import SENSITIVITY, compat_runs, sensitivity_runs, strategy_runs


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
    from b2lib.studies import reusable_runs

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

    from b2lib.advantages import HistoryNormalizer
    from b2lib.studies import group_census

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

    from b2lib.studies import census_summary

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
