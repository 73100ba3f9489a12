"""What a run evaluates with comes from its RunConfig alone."""

from b2lib.experiments.evalsettings import eval_settings, eval_split_prompts, judge_fn, stage_metric_fn
from b2lib.experiments.presets import load_prompts
from b2lib.experiments.runconfig import RunConfig


def test_split_prompts_are_the_templates_cut_evenly_or_the_runs_own():
    full = eval_split_prompts(RunConfig())
    assert full["test"] == load_prompts("embedded", "counting", "test")
    cut = eval_split_prompts(RunConfig(eval_max_prompts=3))
    assert len(cut["test"]) == 3 and set(cut["test"]) <= set(full["test"]) and len(cut["train"]) == 3
    own = eval_split_prompts(RunConfig(eval_prompts=["one red circle"]))
    assert own["test"] == ["one red circle"]


def test_settings_follow_the_chain_and_the_world():
    s = eval_settings(RunConfig(preset="smoke", overrides={"num_steps": 4}), "cpu", bertscore=False)
    assert s["num_steps"] == 4 and s["text_metric"] is None and s["judge_fn"] is judge_fn(True)
    assert s["seed"] == RunConfig().eval_seed and s["dtype"] == "fp32"
    assert judge_fn(False) is None and stage_metric_fn(False) is None and stage_metric_fn(True) is not None
