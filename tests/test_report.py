"""``report.sign_control``: learning vs drift from paired evaluations of runs trained on a reward and on its
negation."""

import json

import numpy as np
import pandas as pd
import pytest

from b2lib.report import format_mean_std, mean_std, readme_table, sign_control, update_readme
from b2lib.tables import write_table

PROMPTS = [f"prompt {i}" for i in range(8) for _ in range(4)]  # 8 prompts x 4 images


def _run(folder, sign, method, seed, base, trained):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"reward_sign": sign}))
    rows = []
    for label, meth, s, values in (("base", "base", None, base), (f"{method}_seed{seed}", method, seed, trained)):
        for i, (p, v) in enumerate(zip(PROMPTS, values)):
            rows.append(
                {
                    "model": label,
                    "method": meth,
                    "seed": s,
                    "split": "train",
                    "image": i,
                    "prompt": p,
                    "reward": v,
                    "judge_all_ok": float(v > 0.5),
                }
            )
    pd.DataFrame(rows).to_csv(folder / "eval_images.csv", index=False)
    return folder


def test_signal_and_drift_match_their_closed_form(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.7, len(PROMPTS))
    runs = []
    for seed in (0, 1, 2):
        up, down = 0.2 + 0.01 * seed, -0.1  # trained on the reward: +0.2; on its negation: -0.1 (per image)
        runs.append(_run(tmp_path / f"pos{seed}", 1, "b2", seed, base, base + up))
        runs.append(_run(tmp_path / f"neg{seed}", -1, "b2", seed, base, base + down))
    row = sign_control(runs, metrics=("reward",)).iloc[0]
    assert row["seeds"] == 3 and row["images"] == len(PROMPTS)
    assert row["gain"] == pytest.approx(0.21)
    assert row["signal"] == pytest.approx((0.21 + 0.1) / 2)
    assert row["drift"] == pytest.approx((0.21 - 0.1) / 2)
    assert row["gain"] == pytest.approx(row["signal"] + row["drift"])
    # the only variation is the seed offset of the positive runs: every interval is narrow and holds its estimate
    for name in ("gain", "signal", "drift"):
        assert row[f"{name}_low"] <= row[name] <= row[f"{name}_high"]
        assert row[f"{name}_high"] - row[f"{name}_low"] < 0.03


def test_unpaired_runs_are_refused(tmp_path):
    base = np.full(len(PROMPTS), 0.5)
    a = _run(tmp_path / "a", 1, "ddpo", 0, base, base)
    b = tmp_path / "b"
    _run(b, -1, "ddpo", 0, base, base)
    im = pd.read_csv(b / "eval_images.csv")
    im["prompt"] = im["prompt"] + " (other)"
    im.to_csv(b / "eval_images.csv", index=False)
    with pytest.raises(ValueError, match="paired"):
        sign_control([a, b])


def test_a_seed_without_its_negated_run_is_left_out(tmp_path):
    base = np.full(len(PROMPTS), 0.5)
    runs = [
        _run(tmp_path / "pos0", 1, "b2", 0, base, base + 0.1),
        _run(tmp_path / "neg0", -1, "b2", 0, base, base),
        _run(tmp_path / "pos1", 1, "b2", 1, base, base + 0.3),
    ]
    row = sign_control(runs, metrics=("reward",)).iloc[0]
    assert row["seeds"] == 1 and row["signal"] == pytest.approx(0.05)


def test_mean_std_closed_form_and_base_counted_once():
    ev = pd.DataFrame(
        {
            "template": ["t"] * 5,
            "method": ["base", "base", "b2", "b2", "b2"],
            "model": ["base", "base", "b2_seed0", "b2_seed1", "b2_seed2"],
            "split": ["test"] * 5,
            "reward_mean": [0.5, 0.5, 0.6, 0.7, 0.8],
        }
    )
    t = mean_std(ev, by=["template", "method"], columns=["reward_mean"])
    assert t.loc[("t", "b2"), "reward_mean_mean"] == pytest.approx(0.7)
    assert t.loc[("t", "b2"), "reward_mean_std"] == pytest.approx(0.1)
    assert t.loc[("t", "base"), "n"] == 1 and t.loc[("t", "b2"), "n"] == 3
    assert format_mean_std(t, ["reward_mean"]).loc[("t", "b2"), "CLIPScore"] == "0.700 ± 0.100"


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
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- results-table:start -->\nold\n<!-- results-table:end -->\nb\n")
    assert update_readme(readme, "NEW")
    assert readme.read_text() == "a\n<!-- results-table:start -->\nNEW\n<!-- results-table:end -->\nb\n"
    readme.write_text("no markers")
    assert not update_readme(readme, "NEW")


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


def test_reward_trend_closed_form():
    import numpy as np

    from b2lib.report import reward_trend

    rows = []
    for seed, slope in ((0, 0.01), (1, 0.02), (2, 0.03)):
        for stage in range(20):
            noise = 0.05 * (1 if stage % 4 in (0, 3) else -1)  # + - - +: orthogonal to 1 and to the stage
            rows.append({"method": "b2", "seed": seed, "stage": stage, "reward_mean": 0.3 + slope * stage + noise})
    t = reward_trend(pd.DataFrame(rows)).iloc[0]
    assert t["rise"] == pytest.approx(0.02 * 19) and t["seeds"] == 3 and t["stages"] == 20
    assert t["rise_low"] < t["rise"] < t["rise_high"]
    assert t["noise"] == pytest.approx(0.05 * np.sqrt(20 / 18))


def test_reward_trend_skips_missing_rewards_and_one_stage_runs():
    """A smoke run has one stage, and a stage without samples has no reward: neither may break the table."""
    from b2lib.report import reward_trend

    rows = [{"method": "b2", "seed": s, "stage": k, "reward_mean": 0.5 + 0.1 * k} for s in (0, 1) for k in range(3)]
    rows += [{"method": "b2", "seed": 0, "stage": 3, "reward_mean": float("nan")}]
    rows += [{"method": "tree", "seed": 0, "stage": 0, "reward_mean": 0.4}]
    t = reward_trend(pd.DataFrame(rows)).set_index("method")
    assert t.loc["b2", "rise"] == pytest.approx(0.2) and t.loc["b2", "seeds"] == 2 and t.loc["b2", "stages"] == 3
    assert t.loc["tree", "seeds"] == 0 and pd.isna(t.loc["tree", "rise"])


def test_health_summary_means_per_method():
    from b2lib.report import health_summary

    m = pd.DataFrame(
        {
            "method": ["b2", "b2", "ddpo"],
            "images": [32, 32, 32],
            "kept": [4, 6, 32],
            "flat_groups": [6, 4, 0],
            "approx_kl": [0.0, 0.0, 0.0],
            "rel_update": [1e-3, 3e-3, 4e-3],
        }
    )
    t = health_summary(m, branches=4)
    assert t.loc["b2", "kept"] == 5 and t.loc["b2", "groups"] == 8 and t.loc["b2", "rel_update"] == pytest.approx(2e-3)
    assert t.loc["ddpo", "kept"] == 32 and pd.isna(t.loc["ddpo", "groups"])


def test_health_table_joins_means_largest_values_and_trend():
    """The largest value of a stage shows next to the means (one bad stage must not hide), and the trend's rise."""
    from b2lib.report import health_table

    rows = [
        {
            "method": "b2",
            "seed": s,
            "stage": k,
            "images": 32,
            "kept": 4,
            "approx_kl": 1e-4 * k,
            "kl": 0.1 * k,
            "clipfrac": 0.0,
            "reward_mean": 0.5 + 0.01 * k,
        }
        for s in (0, 1)
        for k in range(3)
    ]
    rows[4]["clipfrac"] = 0.25  # one stage of one seed clips
    t = health_table(pd.DataFrame(rows))
    assert t.loc["b2", "kl_max"] == pytest.approx(0.2) and t.loc["b2", "clipfrac_max"] == 0.25
    assert t.loc["b2", "approx_kl"] == pytest.approx(1e-4) and t.loc["b2", "kept"] == 4
    assert t.loc["b2", "rise"] == pytest.approx(0.02) and t.loc["b2", "seeds"] == 2


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


def _evaluated(folder, method, seed, base, trained, template="counting", split="train"):
    """A run folder as run_experiment writes it for the readers: eval_images.csv, summary.json, metrics.csv."""
    _run(folder, 1, method, seed, base, trained)
    im = pd.read_csv(folder / "eval_images.csv").assign(split=split)
    im.to_csv(folder / "eval_images.csv", index=False)
    (folder / "summary.json").write_text(json.dumps({"template": template}))
    stages = pd.DataFrame(
        {
            "method": method,
            "seed": seed,
            "stage": [0, 1],
            "images": 32,
            "sample_s": [1.0, 2.0],
            "train_s": 0.5,
            "kept": [10, 14],
            "unet_rows_seen": [100, 250],
            "reward_mean": 0.5,
        }
    )
    stages.to_csv(folder / "metrics.csv", index=False)
    return folder


def test_combine_runs_renames_per_folder_pairs_across_folders_and_refuses_other_evaluations(tmp_path):
    from b2lib.report import combine_metrics, combine_runs, paired_comparisons, run_cost

    base = np.linspace(0.3, 0.7, len(PROMPTS))
    a = _evaluated(tmp_path / "a", "tree", 0, base, base + 0.1)
    b = _evaluated(tmp_path / "b", "b2", 0, base, base + 0.04)
    images = combine_runs([a, b], [{"tree": "tree2"}, {}])
    assert sorted(images["method"].unique()) == ["b2", "base", "tree2"]
    assert (images["method"] == "base").sum() == len(PROMPTS)  # the base rows once
    c = paired_comparisons(images, ["train"], [("tree2", "base"), ("tree2", "b2")], metrics=("reward",))
    assert c["diff"].tolist() == pytest.approx([0.1, 0.06]) and (c["split"] == "train").all()
    other = _evaluated(tmp_path / "other", "b2", 0, base + 0.01, base)
    with pytest.raises(ValueError, match="cannot be paired"):
        combine_runs([a, other])
    metrics = combine_metrics([a, b], [{"tree": "tree2"}, {}])
    cost = run_cost(metrics)
    assert cost.loc[("counting", "tree2"), "images"] == 64 and cost.loc[("counting", "tree2"), "unet_rows"] == 250
    assert cost.loc[("counting", "b2"), "sample_s"] == 3.0 and cost.loc[("counting", "b2"), "kept"] == 12


def test_reference_pairs_compare_namesakes_and_the_references_other_methods():
    from b2lib.report import reference_pairs

    assert reference_pairs(["b2"], ["b2"], "@r") == [("b2", "b2@r")]
    assert reference_pairs(["ddpo"], ["b2"], "@r") == [("b2@r", "ddpo")]
    assert reference_pairs(["ddpo", "b2"], ["b2", "tree"], "@r") == [
        ("b2", "b2@r"),
        ("tree@r", "ddpo"),
        ("tree@r", "b2"),
    ]


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
    from b2lib.report import generalisation_rows

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


def test_collect_labels_each_model_with_the_update_it_was_trained_with(tmp_path):
    """A folder without an ``algorithm`` override can hold models trained with different updates (the coarse recipe:
    B² group-relative, DDPO PPO-clip): the label comes from the recorded trainer settings, not from the overrides."""
    from b2lib.experiment import RunConfig
    from b2lib.report import collect, trained_algorithms
    from b2lib.rundir import check_fingerprint

    folder = tmp_path / "coarse"
    check_fingerprint(folder, RunConfig(methods=("ddpo", "b2"), seeds=(0,), stages=3, recipe="coarse").settings())
    assert trained_algorithms(folder) == {"ddpo_seed0": "ppo", "b2_seed0": "grpo"}
    (folder / "summary.json").write_text(json.dumps({"template": "counting"}))
    models = ["base", "ddpo_seed0", "b2_seed0"]
    pd.DataFrame({"model": models, "method": ["base", "ddpo", "b2"], "seed": [None, 0, 0], "reward_mean": 0.5}).to_csv(
        folder / "eval.csv", index=False
    )
    pd.DataFrame({"method": ["ddpo", "b2"], "seed": [0, 0], "stage": 0, "reward_mean": 0.5}).to_csv(
        folder / "metrics.csv", index=False
    )
    evals, metrics = collect(folder)
    assert dict(zip(evals["model"], evals["algorithm"])) == {"base": "ppo", "ddpo_seed0": "ppo", "b2_seed0": "grpo"}
    assert dict(zip(metrics["method"], metrics["algorithm"])) == {"ddpo": "ppo", "b2": "grpo"}
