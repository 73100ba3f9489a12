"""``report``: run folders read back into tables (evaluations, stage metrics, per-image scores across folders, costs)
and the names it re-exports from the modules split off it."""

import json

import numpy as np
import pandas as pd
import pytest
from fake_runs import PROMPTS, fake_run

from b2lib.reporting.report import format_mean_std, mean_std


def test_report_still_exports_the_names_of_the_modules_split_off_it():
    """Notebooks import these from ``b2lib.reporting.report``: each must be the very object of its new module."""
    import b2lib.evaluation.comparisons
    import b2lib.evaluation.health
    import b2lib.reporting.report
    import b2lib.reporting.summary_table

    for module in (b2lib.evaluation.comparisons, b2lib.evaluation.health, b2lib.reporting.summary_table):
        for name in module.__all__:
            assert getattr(b2lib.reporting.report, name) is getattr(module, name)
            assert name in b2lib.reporting.report.__all__
    assert all(hasattr(b2lib.reporting.report, name) for name in b2lib.reporting.report.__all__)


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


def _evaluated(folder, method, seed, base, trained, template="counting", split="train"):
    """A run folder as run_experiment writes it for the readers: eval_images.csv, summary.json, metrics.csv."""
    fake_run(folder, 1, method, seed, base, trained)
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
    from b2lib.evaluation.comparisons import paired_comparisons
    from b2lib.reporting.report import combine_metrics, combine_runs, run_cost

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


def test_collect_labels_each_model_with_the_update_it_was_trained_with(tmp_path):
    """A folder without an ``algorithm`` override can hold models trained with different updates (the coarse recipe:
    B² group-relative, DDPO PPO-clip): the label comes from the recorded trainer settings, not from the overrides."""
    from b2lib.experiments.experiment import RunConfig
    from b2lib.reporting.report import collect, trained_algorithms
    from b2lib.utils.rundir import check_fingerprint

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
