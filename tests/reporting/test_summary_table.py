"""``summary_table``: the full table of comparisons (results/summary.md), rebuilt from the study tables."""

import json

import pandas as pd

from b2lib.reporting.summary_table import readme_table
from b2lib.utils.tables import write_table


def test_readme_table_from_files_and_markers(tmp_path):
    (tmp_path / "templates").mkdir()
    rows = []
    for m, v in (("base", 0.2), ("ddpo", 0.3), ("b2", 0.5)):
        rows.append(
            {
                "template": "counting",
                "method": m,
                "judge_all_ok_mean": v,
                "judge_all_ok_std": 0.05,
                "reward_mean_mean": v,
                "reward_mean_std": 0.01,
                "clip_diversity_mean": 0.1,
                "clip_diversity_std": 0.0,
                "pixel_diversity_mean": 0.2,
                "pixel_diversity_std": 0.0,
                "n": 3,
            }
        )
    pd.DataFrame(rows).set_index(["template", "method"]).to_csv(tmp_path / "templates" / "main_table.csv")
    table = readme_table(tmp_path)
    line = next(x for x in table.splitlines() if "judge aligned" in x)
    assert "b2 0.500 ± 0.050" in line and "B² higher" in line and "3 seeds" in line
    assert "DDPO higher" not in table


def test_readme_table_speed_rows_say_goal_and_bound(tmp_path):
    (tmp_path / "performance").mkdir()
    pd.DataFrame(
        [
            {
                "measurement": "share",
                "key": "unet_share_sampling",
                "min": 0.89,
                "median": 0.895,
                "max": 0.9,
                "goal": 0.9,
                "met": False,
                "bound": 0.908,
            },
            {
                "measurement": "chain",
                "key": "branching_chain",
                "min": 1.6,
                "median": 1.68,
                "max": 1.7,
                "goal": 1.6,
                "met": True,
                "bound": float("nan"),
            },
            {
                "measurement": "loop",
                "key": "branch_loop",
                "min": 1.2,
                "median": 1.3,
                "max": 1.4,
                "goal": float("nan"),
                "met": None,
                "bound": float("nan"),
            },
        ]
    ).to_csv(tmp_path / "performance" / "speed.csv", index=False)
    lines = {x.split("|")[1].strip(): x for x in readme_table(tmp_path).splitlines()[2:]}
    assert "0.895 [0.890, 0.900] (goal ≥ 0.90: **missed**); best reachable 0.908" in lines["Speed: share"]
    assert "(goal ≥ 1.60: met)" in lines["Speed: chain"] and "best reachable" not in lines["Speed: chain"]
    assert "goal" not in lines["Speed: loop"]


def test_readme_table_snr_rows(tmp_path):
    (tmp_path / "snr").mkdir()
    base = dict(reward="clip", selection=True, images=32, draws=40, signal=0.0, noise=1.0)
    pd.DataFrame(
        [
            {
                **base,
                "estimator": "ddpo",
                "steps": "interval",
                "n_steps": 20,
                "snr": 0.002,
                "snr_low": -0.004,
                "snr_high": 0.008,
            },
            {
                **base,
                "estimator": "ddpo",
                "steps": "late half",
                "n_steps": 10,
                "snr": 0.5,
                "snr_low": 0.4,
                "snr_high": 0.6,
            },
            {
                **base,
                "estimator": "b2_first_window1",
                "steps": "interval",
                "n_steps": 1,
                "snr": 0.05,
                "snr_low": 0.02,
                "snr_high": 0.08,
            },
        ]
    ).to_csv(tmp_path / "snr" / "snr.csv", index=False)
    lines = [x for x in readme_table(tmp_path).splitlines() if "Gradient SNR" in x]
    assert len(lines) == 2  # whole intervals only
    assert "ddpo (clip reward, 20 trained steps" in lines[0] and "no signal resolved" in lines[0]
    assert "per image ≤ 2.5e-04" in lines[0]
    assert "1 trained step," in lines[1] and "| signal resolved |" in lines[1]


def _comparison_row(**changes) -> dict:
    """One row of a paired-comparison table (5 seeds, 512 images), with ``changes`` laid over it."""
    row = dict(
        template="counting",
        metric="judge_all_ok",
        a="b2",
        b="base",
        mean_a=0.3,
        mean_b=0.25,
        diff=0.05,
        low=0.01,
        high=0.09,
        seeds_a=5,
        images=512,
        verdict="b2 higher, +0.050 [+0.010, +0.090]",
    )
    return {**row, **changes}


def test_readme_table_sparse_reward_rows(tmp_path):
    row = _comparison_row()
    rows = [{**row, "split": "test"}, {**row, "split": "train"}]
    write_table(pd.DataFrame(rows), tmp_path / "sparse", "sparse_comparisons")
    lines = [x for x in readme_table(tmp_path).splitlines() if x.startswith("| Sparse reward")]
    assert len(lines) == 1  # test prompts only
    assert "5 seeds" in lines[0] and "b2 0.300 / base 0.250" in lines[0] and "b2 higher" in lines[0]


def test_readme_table_table1_rows_replace_mean_std_when_intervals_exist(tmp_path):
    row = _comparison_row(
        template="binding",
        metric="reward_mean",
        b="ddpo",
        mean_a=0.5,
        mean_b=0.45,
        low=-0.01,
        high=0.11,
        verdict="no difference resolved, +0.050 [-0.010, +0.110]",
    )
    idx = pd.MultiIndex.from_tuples([("binding", m) for m in ("base", "ddpo", "b2")], names=["template", "method"])
    mean_std_table = pd.DataFrame(
        {
            f"{c}_{k}": [0.5, 0.45, 0.5]
            for c in ("reward_mean", "judge_all_ok", "clip_diversity", "pixel_diversity")
            for k in ("mean", "std")
        }
        | {"n": [1, 5, 5]},
        index=idx,
    )
    write_table(mean_std_table, tmp_path / "templates", "main_table")
    before = [x for x in readme_table(tmp_path).splitlines() if x.startswith("| Table 1")]
    assert before and all("seeds)" in x for x in before)  # mean ± std rows while no intervals exist
    write_table(
        pd.DataFrame([{**row, "split": "test"}, {**row, "split": "train"}]),
        tmp_path / "templates",
        "table1_comparisons",
    )
    lines = [x for x in readme_table(tmp_path).splitlines() if x.startswith("| Table 1")]
    assert len(lines) == 1 and "b2 − ddpo (512 paired images, 5 seeds)" in lines[0]
    assert "no difference resolved" in lines[0]
    assert any(x.startswith("| Diversity · binding") for x in readme_table(tmp_path).splitlines())
    run = tmp_path / "templates" / "binding"  # notebook 04's run folder: the title states its recipe and budget
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"recipe": "coarse", "budget": "compute", "methods": ["ddpo", "b2"]}))
    pd.DataFrame({"method": ["ddpo"] * 2 + ["b2"] * 3, "stage": [0, 1, 0, 1, 2]}).to_csv(run / "metrics.csv")
    lines = [x for x in readme_table(tmp_path).splitlines() if x.startswith("| Table 1")]
    assert lines[0].startswith("| Table 1 (coarse recipe, equal UNet work: stages ddpo 2, b2 3) · binding")


def test_readme_table_coarse_recipe_rows(tmp_path):
    row = dict(
        template="counting",
        metric="reward_mean",
        a="b2",
        b="base",
        mean_a=0.82,
        mean_b=0.80,
        diff=0.02,
        low=0.01,
        high=0.03,
        seeds_a=5,
        images=512,
        verdict="b2 higher, +0.020 [+0.010, +0.030]",
    )
    write_table(
        pd.DataFrame([{**row, "split": "test"}, {**row, "split": "train"}]), tmp_path / "coarse", "coarse_comparisons"
    )
    lines = [x for x in readme_table(tmp_path).splitlines() if x.startswith("| Coarse recipe")]
    assert len(lines) == 2 and "train prompts" in lines[1] and "b2 0.820 / base 0.800" in lines[0]


def test_readme_table_sign_control_rows_per_recipe(tmp_path):
    row = {"method": "b2", "metric": "reward_mean", "seeds": 3, "images": 512}
    for k in ("gain", "signal", "drift"):
        row |= {k: 0.1, f"{k}_low": 0.05, f"{k}_high": 0.15}
    write_table(pd.DataFrame([row]), tmp_path / "signal", "sign_control")
    write_table(pd.DataFrame([{**row, "signal_low": -0.01}]), tmp_path / "signal_coarse", "coarse_sign_control")
    lines = [x for x in readme_table(tmp_path).splitlines() if x.startswith("| Learning vs drift")]
    assert len(lines) == 2
    assert "b2, counting" in lines[0] and "| signal resolved |" in lines[0]
    assert "b2, coarse recipe, counting" in lines[1] and "signal not resolved" in lines[1]


def test_readme_table_strategy_ablation_rows_carry_intervals(tmp_path):
    row = _comparison_row(
        metric="reward",
        mean_a=0.8,
        mean_b=0.78,
        diff=0.02,
        low=-0.01,
        high=0.05,
        verdict="no difference resolved, +0.020 [-0.010, +0.050]",
        split="test",
    )
    rows = [{**row, "a": a, "b": b} for a, b in (("progressive", "base"), ("b2", "branch"))]
    write_table(pd.DataFrame(rows), tmp_path / "ablations", "strategy_comparisons")
    lines = [x for x in readme_table(tmp_path).splitlines() if x.startswith("| Strategy ablation")]
    assert len(lines) == 2 and "progressive − base" in lines[0] and "b2 − branch" in lines[1]
    assert all("5 seeds" in x and "no difference resolved" in x for x in lines)


def test_readme_table_sensitivity_averages_seeds_and_falls_back_to_the_former_grid(tmp_path):
    old = pd.DataFrame({"factor": ["branches"] * 2, "value": [2, 4], "judge_all_ok": [0.2, 0.4]})
    write_table(old, tmp_path / "ablations_paper", "sensitivity_paper")
    line = next(x for x in readme_table(tmp_path).splitlines() if "Sensitivity to branches" in x)
    assert "1 seed)" in line and "former preset" in line and "2: 0.200, 4: 0.400" in line
    new = pd.DataFrame({"factor": ["branches"] * 4, "value": [2, 2, 4, 4], "judge_all_ok": [0.1, 0.3, 0.5, 0.7]})
    write_table(new, tmp_path / "ablations", "sensitivity")  # the main setup's grid, two seeds: replaces the former
    line = next(x for x in readme_table(tmp_path).splitlines() if "Sensitivity to branches" in x)
    assert "2 seeds)" in line and "former" not in line and "2: 0.200, 4: 0.600" in line


def test_generalisation_rows_put_each_gain_on_train_and_held_out_prompts_side_by_side(tmp_path):
    from b2lib.reporting.summary_table import generalisation_rows

    rows = [
        {**_comparison_row(), "split": "test"},
        {**_comparison_row(diff=0.2, low=0.1, high=0.3), "split": "train"},
        {**_comparison_row(a="ddpo", diff=0.01, low=-0.02, high=0.04), "split": "test"},
        {**_comparison_row(a="ddpo", diff=0.06, low=0.02, high=0.1), "split": "train"},
        {**_comparison_row(b="ddpo"), "split": "train"},  # method − method pairs are not gains over base
    ]
    assert generalisation_rows(pd.DataFrame(rows[:1])) == []  # test split only: the table has not run
    ((what, number, verdict),) = generalisation_rows(pd.DataFrame(rows))
    assert what == "Generalisation · counting: judge: aligned, gain over base on train vs held-out prompts"
    assert number == (
        "b2 train +0.200 [+0.100, +0.300] · test +0.050 [+0.010, +0.090] / "
        "ddpo train +0.060 [+0.020, +0.100] · test +0.010 [-0.020, +0.040]"
    )
    assert verdict == "b2: gain on both; ddpo: gain on train prompts only"
    write_table(pd.DataFrame(rows), tmp_path / "templates", "table1_comparisons")
    lines = readme_table(tmp_path).splitlines()
    assert sum(x.startswith("| Generalisation · counting: judge: aligned") for x in lines) == 1
    assert not any("train − test" in x for x in lines)  # the gap row without intervals gives way
