"""Adding an evaluation split to a finished run: the same rows the run would have written had it asked for the split."""

import json
import shutil

import pandas as pd
import pytest
from trainer_helpers import TINY

from b2lib.experiments.experiment import RunConfig, run_experiment
from b2lib.experiments.reevaluate import add_eval_split, ensure_eval_splits, run_config
from b2lib.utils.rundir import RunSettingsError, reusable


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run evaluated on the test split only (copied by each test that changes it)."""
    out = tmp_path_factory.mktemp("finished")
    run_experiment(RunConfig(**TINY, output_dir=str(out)), progress=False)
    return out


def test_a_split_added_later_equals_the_split_asked_for_at_the_start(finished, tmp_path):
    later, both = shutil.copytree(finished, tmp_path / "later"), tmp_path / "both"
    run_experiment(RunConfig(**TINY, eval_splits=("test", "train"), output_dir=str(both)), progress=False)
    before = pd.read_csv(later / "eval_images.csv")

    new = add_eval_split(later, "train", progress=False)

    assert list(new["model"]) == ["base", "b2_seed0"] and set(new["split"]) == {"train"}
    per_image = pd.read_csv(later / "eval_images.csv")
    pd.testing.assert_frame_equal(per_image[per_image.split == "test"].reset_index(drop=True), before)
    ref = pd.read_csv(both / "eval_images.csv")
    key = ["model", "split", "image"]
    got, want = per_image.sort_values(key).reset_index(drop=True), ref.sort_values(key).reset_index(drop=True)
    assert list(got["prompt"]) == list(want["prompt"])  # the same prompts and images, in the same order
    assert (got["reward"] - want["reward"]).abs().max() < 1e-4  # loaded adapter vs in-memory: float rounding only
    evals = pd.read_csv(later / "eval.csv")
    summary = json.loads((later / "summary.json").read_text())
    assert len(evals) == 4 and len(summary["eval"]) == 4
    ((added,),) = [summary["added_splits"]]
    assert added["split"] == "train" and added["check"]["model"] == "b2_seed0" and added["check"]["split"] == "test"
    assert 0 <= added["check"]["max_reward_gap"] < 1e-4
    # the folder now stands for a run that asked for both splits, and a second call adds nothing
    assert run_config(later).eval_splits == ("test", "train")
    asked = RunConfig(**TINY, eval_splits=("test", "train"))
    assert reusable([later], asked.settings()) == [later]
    assert add_eval_split(later, "train", progress=False).empty
    assert ensure_eval_splits([later, tmp_path / "not_run"], ["train"], progress=False) == []


def test_a_saved_model_that_is_not_the_evaluated_one_adds_nothing(finished, tmp_path):
    tmp_path = shutil.copytree(finished, tmp_path / "run")
    per_image = pd.read_csv(tmp_path / "eval_images.csv")
    per_image.loc[per_image.model == "b2_seed0", "reward"] += 0.01  # as if the stored scores came from another model
    per_image.to_csv(tmp_path / "eval_images.csv", index=False)
    with pytest.raises(RunSettingsError, match="differs from the run's own evaluation by up to 0.01"):
        add_eval_split(tmp_path, "train", progress=False)
    assert set(pd.read_csv(tmp_path / "eval.csv")["split"]) == {"test"}
    assert run_config(tmp_path).eval_splits == ("test",)


def test_bad_requests_name_the_fix(finished, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a finished run"):
        add_eval_split(tmp_path, "train")
    with pytest.raises(ValueError, match="'test' or 'train'"):
        add_eval_split(tmp_path, "validation")
    tmp_path = shutil.copytree(finished, tmp_path / "run")
    shutil.rmtree(tmp_path / "b2_seed0" / "lora")  # as a run made with save_lora=False leaves it
    with pytest.raises(FileNotFoundError, match="save_lora=True"):
        add_eval_split(tmp_path, "train", progress=False)
