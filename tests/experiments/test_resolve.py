"""A run's configuration is resolved once (``b2lib.experiments.resolve``): the resolved run holds exactly what the
configuration's own lookups give, and what finished run folders recorded."""

from dataclasses import replace

import pytest

from b2lib.experiments.presets import get_preset, load_prompts
from b2lib.experiments.resolve import eval_split_prompts, job_order, resolve
from b2lib.experiments.runconfig import RunConfig
from b2lib.experiments.setups import MAIN
from b2lib.utils.paths import REPO_ROOT
from b2lib.utils.rundir import check_fingerprint


def test_the_resolved_run_equals_the_configurations_own_lookups():
    cfg = RunConfig(seeds=(0, 1), **MAIN)
    run = resolve(cfg)
    assert run.scale == get_preset(cfg.preset) and run.template == "counting"
    assert run.train_prompts == load_prompts("embedded", "counting", "train")
    assert run.split_prompts == eval_split_prompts(cfg) and run.jobs == job_order(cfg)
    assert list(run.trainers) == ["ddpo_seed0", "b2_seed0", "ddpo_seed1", "b2_seed1"]
    assert all(run.trainers[f"{m}_seed{s}"] == cfg.trainer_config(m, s) for m in cfg.methods for s in cfg.seeds)
    assert run.settings == cfg.settings()
    assert replace(run.trainers["b2_seed0"], progress=True).num_stages == MAIN["stages"]


def test_the_main_jobs_folder_holds_the_resolved_run():
    run = resolve(RunConfig(output_dir=str(REPO_ROOT / "results" / "main"), **MAIN))
    check_fingerprint(REPO_ROOT / "results" / "main", run.settings)  # raises if the settings differ


def test_evaluation_chain_is_the_trained_chain_and_the_ode_for_flows():
    assert resolve(RunConfig(preset="smoke", overrides={"num_steps": 4})).chain["num_steps"] == 4
    assert resolve(RunConfig(preset="flow")).chain["eta"] == 0.0


def test_a_shorter_training_chain_is_evaluated_on_the_chain_asked_for():
    """Flow-GRPO's cheapest lever: train on 10 steps, evaluate on 20. The evaluation chain is ``eval_steps`` where
    set, the trainers keep their own chain, and a run that does not set it keeps its fingerprint."""
    short = RunConfig(preset="flow", methods=("b2",), overrides={"num_steps": 10, "split_start": 5}, eval_steps=20)
    run = resolve(short)
    assert run.chain["num_steps"] == 20 and run.trainers["b2_seed0"].num_steps == 10
    assert "eval_steps" in run.settings["run"] and "eval_steps" not in resolve(RunConfig()).settings["run"]
    with pytest.raises(ValueError, match="eval_steps"):
        RunConfig(eval_steps=-1)
