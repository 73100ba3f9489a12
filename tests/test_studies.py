"""Study grids (each variant changes one thing, equal budgets) and the report's tables (closed forms)."""

import json

import pandas as pd
import pytest

from b2lib.experiment import RunConfig, run_many
from b2lib.presets import trainer_config
from b2lib.report import format_mean_std, mean_std, readme_table, update_readme
from b2lib.studies import SENSITIVITY, compat_runs, sensitivity_runs, strategy_runs


def _images(cfg: RunConfig, method="b2") -> int:
    t = trainer_config(cfg.preset, method, stages=cfg.stages or None, images_per_stage=cfg.images_per_stage or None,
                       branches=cfg.branches or None, **cfg.overrides)
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
        t = trainer_config("embedded", "b2", stages=cfg.stages or None, images_per_stage=cfg.images_per_stage or None,
                           branches=cfg.branches or None, **cfg.overrides)
        got = {"branches": t.num_branches, "split_start": t.split_start, "stages": t.num_stages,
               "threshold": t.pos_threshold}[factor]
        assert got == value and (factor == "threshold" or t.pos_threshold == 0.5)


def test_strategy_and_compat_grids(tmp_path):
    s = strategy_runs(RunConfig(), tmp_path, seeds=[0, 1])
    assert len(s) == 8 and len({c.output_dir for c in s}) == 8 and all(len(c.methods) == 1 for c in s)
    configs = {m: trainer_config("embedded", m) for m in ("ddpo", "progressive", "branch", "b2")}
    assert [configs[m].progressive for m in configs] == [False, True, False, True]
    assert [configs[m].num_branches > 1 for m in configs] == [False, False, True, True]
    assert {_images(RunConfig(), m) for m in configs} == {640}
    c = compat_runs(RunConfig(), tmp_path, seeds=[0], algorithms=("ppo", "grpo"))
    assert [x.overrides["algorithm"] for x in c] == ["ppo", "ppo", "grpo", "grpo"]
    assert [x.overrides.get("samples_per_prompt", 1) for x in c] == [1, 1, 4, 1]  # grpo without B²: groups of B


def test_run_many_rejects_clashing_folders(tmp_path):
    with pytest.raises(ValueError, match="output_dir"):
        run_many([RunConfig()])
    with pytest.raises(ValueError, match="share an output_dir"):
        run_many([RunConfig(output_dir=str(tmp_path)), RunConfig(output_dir=str(tmp_path))])


def test_mean_std_closed_form_and_base_counted_once():
    ev = pd.DataFrame({"template": ["t"] * 5, "method": ["base", "base", "b2", "b2", "b2"],
                       "model": ["base", "base", "b2_seed0", "b2_seed1", "b2_seed2"], "split": ["test"] * 5,
                       "reward_mean": [0.5, 0.5, 0.6, 0.7, 0.8]})
    t = mean_std(ev, by=["template", "method"], columns=["reward_mean"])
    assert t.loc[("t", "b2"), "reward_mean_mean"] == pytest.approx(0.7)
    assert t.loc[("t", "b2"), "reward_mean_std"] == pytest.approx(0.1)
    assert t.loc[("t", "base"), "n"] == 1 and t.loc[("t", "b2"), "n"] == 3
    assert format_mean_std(t, ["reward_mean"]).loc[("t", "b2"), "CLIPScore"] == "0.700 ± 0.100"


def test_readme_table_from_files_and_markers(tmp_path):
    (tmp_path / "templates").mkdir()
    rows = []
    for m, v in (("base", 0.2), ("ddpo", 0.3), ("b2", 0.5)):
        rows.append({"template": "counting", "method": m, "judge_all_ok_mean": v, "judge_all_ok_std": 0.05,
                     "reward_mean_mean": v, "reward_mean_std": 0.01, "clip_diversity_mean": 0.1,
                     "clip_diversity_std": 0.0, "pixel_diversity_mean": 0.2, "pixel_diversity_std": 0.0, "n": 3})
    pd.DataFrame(rows).set_index(["template", "method"]).to_csv(tmp_path / "templates" / "main_table.csv")
    table = readme_table(tmp_path)
    line = next(x for x in table.splitlines() if "judge aligned" in x)
    assert "b2 0.500 ± 0.050" in line and "B² higher" in line and "3 seeds" in line
    assert "DDPO higher" not in table
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- results-table:start -->\nold\n<!-- results-table:end -->\nb\n")
    assert update_readme(readme, "NEW")
    assert readme.read_text() == "a\n<!-- results-table:start -->\nNEW\n<!-- results-table:end -->\nb\n"
    readme.write_text("no markers")
    assert not update_readme(readme, "NEW")


def test_readme_table_speed_rows_say_goal_and_bound(tmp_path):
    (tmp_path / "performance").mkdir()
    pd.DataFrame([
        {"measurement": "share", "key": "unet_share_sampling", "min": 0.89, "median": 0.895, "max": 0.9,
         "goal": 0.9, "met": False, "bound": 0.908},
        {"measurement": "chain", "key": "branching_chain", "min": 1.6, "median": 1.68, "max": 1.7, "goal": 1.6,
         "met": True, "bound": float("nan")},
        {"measurement": "loop", "key": "branch_loop", "min": 1.2, "median": 1.3, "max": 1.4, "goal": float("nan"),
         "met": None, "bound": float("nan")},
    ]).to_csv(tmp_path / "performance" / "speed.csv", index=False)
    lines = {x.split("|")[1].strip(): x for x in readme_table(tmp_path).splitlines()[2:]}
    assert "0.895 [0.890, 0.900] (goal ≥ 0.90: **missed**); best reachable 0.908" in lines["Speed: share"]
    assert "(goal ≥ 1.60: met)" in lines["Speed: chain"] and "best reachable" not in lines["Speed: chain"]
    assert "goal" not in lines["Speed: loop"]


def test_reusable_runs_all_or_nothing(tmp_path, monkeypatch):
    from b2lib.studies import reusable_runs

    monkeypatch.setenv("B2_SMOKE", "0")
    for s in (0, 1):
        (tmp_path / f"counting_seed{s}").mkdir()
    (tmp_path / "counting_seed0" / "summary.json").write_text("{}")
    assert reusable_runs("templates", "counting", [0, 1], results=tmp_path) == []  # seed 1 unfinished
    (tmp_path / "counting_seed1" / "summary.json").write_text("{}")
    assert reusable_runs("templates", "counting", [0, 1], results=tmp_path) == [tmp_path / "counting_seed0",
                                                                               tmp_path / "counting_seed1"]
    assert reusable_runs("templates", "binding", [0], results=tmp_path) == []
    monkeypatch.setenv("B2_SMOKE", "1")
    assert reusable_runs("templates", "counting", [0, 1], results=tmp_path) == []  # smoke runs never reuse


def test_code_version_names_the_commit():
    from b2lib.paths import code_version

    v = code_version()
    if v is not None:  # a git checkout (CI clones one); None for an installed wheel
        assert len(v["commit"]) == 40 and isinstance(v["dirty"], bool)


def test_readme_table_snr_rows(tmp_path):
    (tmp_path / "snr").mkdir()
    base = dict(reward="clip", selection=True, images=32, draws=40, signal=0.0, noise=1.0)
    pd.DataFrame([
        {**base, "estimator": "ddpo", "steps": "interval", "n_steps": 20, "snr": 0.002, "snr_low": -0.004,
         "snr_high": 0.008},
        {**base, "estimator": "ddpo", "steps": "late half", "n_steps": 10, "snr": 0.5, "snr_low": 0.4, "snr_high": 0.6},
        {**base, "estimator": "b2_first_window1", "steps": "interval", "n_steps": 1, "snr": 0.05, "snr_low": 0.02,
         "snr_high": 0.08},
    ]).to_csv(tmp_path / "snr" / "snr.csv", index=False)
    lines = [x for x in readme_table(tmp_path).splitlines() if "Gradient SNR" in x]
    assert len(lines) == 2  # whole intervals only
    assert "ddpo (clip reward, 20 trained steps" in lines[0] and "no signal resolved" in lines[0]
    assert "per image ≤ 2.5e-04" in lines[0]
    assert "1 trained step," in lines[1] and "| signal resolved |" in lines[1]
