"""The two scales: the paper preset constructs with the reference values and fails only where the hub is needed."""

import time

import pytest
from notebook_params import notebook_parameters as _notebook_parameters

from b2lib.experiments.experiment import RunConfig, run_experiment
from b2lib.experiments.presets import load_models, load_prompts, trainer_config


def test_paper_preset_is_the_reference():
    b2, ddpo = trainer_config("paper", "b2"), trainer_config("paper", "ddpo")
    assert (b2.num_steps, b2.eta, b2.guidance_scale) == (20, 1.0, 5.0)
    assert (b2.num_branches, b2.num_stages, b2.split_start, b2.schedule.end) == (5, 100, 14, 20)
    assert b2.schedule.trained_steps == [14 + i * 7 // 100 for i in range(100)]
    assert (b2.pos_threshold, b2.neg_threshold, b2.history) == (0.5, -0.5, 8)
    assert (b2.lr, b2.train_batch_size, b2.grad_accum, b2.clip_range, b2.adv_clip) == (1e-4, 2, 64, 0.1, 5.0)
    assert b2.use_lora and b2.images_per_stage == ddpo.images_per_stage == 1280
    assert not ddpo.progressive and ddpo.num_branches == 1 and not ddpo.selection


def test_paper_prompts_are_the_papers_lists():
    assert len(load_prompts("paper", "template1", "train")) == 45
    assert len(load_prompts("paper", "counting", "test")) == 90
    assert load_prompts("paper", "template2", "train")[0] == "red apple"
    with pytest.raises(ValueError, match="Unknown template"):
        load_prompts("paper", "template9")


def test_embedded_budgets_are_equal():
    b2, ddpo = trainer_config("embedded", "b2"), trainer_config("embedded", "ddpo")
    assert b2.images_per_stage == ddpo.images_per_stage
    with pytest.raises(ValueError, match="multiple of branches"):
        trainer_config("embedded", "b2", images_per_stage=30, branches=4)


def test_paper_preset_fails_only_at_the_hub_with_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the network is off
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    RunConfig(preset="paper", template="template3")  # constructing is fine
    t = time.perf_counter()
    with pytest.raises(OSError, match="hub"):
        load_models("paper")
    with pytest.raises(OSError, match="hub"):
        run_experiment(RunConfig(preset="paper", output_dir=str(tmp_path / "run")), progress=False)
    assert time.perf_counter() - t < 30


def test_presets_take_the_algorithm():
    b2 = trainer_config("embedded", "b2", algorithm="grpo")
    ddpo = trainer_config("embedded", "ddpo", algorithm="dpok", kl_coef=0.05)
    assert (b2.algorithm, b2.num_branches, b2.selection) == ("grpo", 4, True)
    assert (ddpo.algorithm, ddpo.kl_coef, ddpo.num_branches) == ("dpok", 0.05, 1)
    assert trainer_config("paper", "b2").algorithm == "ppo"


def test_embedded_preset_uses_the_recorded_tuning_choice():
    """The tuned settings are not typed in by hand: they equal the equal-budget search's choice
    (``results/tuning/choice.json``, written by notebook 02), and each method's trainer config carries them."""
    import json

    from b2lib.experiments.presets import EMBEDDED_TUNED
    from b2lib.studies.tuning import GRID
    from b2lib.utils.paths import REPO_ROOT

    choice = json.loads((REPO_ROOT / "results" / "tuning" / "choice.json").read_text())
    assert set(choice) == set(EMBEDDED_TUNED)
    for method, point in choice.items():
        assert {k: EMBEDDED_TUNED[method][k] for k in GRID} == {k: point[k] for k in GRID}
        cfg = trainer_config("embedded", method)
        assert {k: getattr(cfg, k) for k in GRID} == {k: point[k] for k in GRID}
    assert trainer_config("embedded", "b2", lr=5e-3).lr == 5e-3  # explicit overrides still win


def test_a_default_changed_in_one_place_reaches_every_entry_point(monkeypatch):
    from b2lib.experiments import presets
    from b2lib.studies.grids import sensitivity_defaults
    from b2lib.train import config_from_args

    monkeypatch.setitem(presets.EMBEDDED, "num_branches", 8)  # the one line a maintainer would change
    run = RunConfig()  # the notebooks' and the library's entry (0 = the preset's)
    assert run.settings()["trainer"]["b2_seed0"]["num_branches"] == 8
    assert run.settings()["trainer"]["b2_seed0"]["prompts_per_stage"] == presets.EMBEDDED["images_per_stage"] // 8
    cli, _ = config_from_args(["--setup", "paper"])  # the command line at RunConfig's own defaults
    assert cli.settings() == run.settings()
    assert sensitivity_defaults(run)["branches"] == 8  # the studies' default point
    assert trainer_config("embedded", "b2").num_branches == 8


def test_recipes_add_estimator_switches_per_method_and_nothing_else():
    from dataclasses import asdict

    from b2lib.experiments.presets import RECIPES

    for method in ("ddpo", "b2", "progressive", "branch"):
        paper = asdict(trainer_config("embedded", method))
        coarse = asdict(trainer_config("embedded", method, recipe="coarse"))
        changed = {k: coarse[k] for k in coarse if coarse[k] != paper[k]}
        assert changed == RECIPES["coarse"][method], method
    assert trainer_config("embedded", "b2", recipe="coarse").explore_grid == 2
    # overrides still win over the recipe
    assert trainer_config("embedded", "b2", recipe="coarse", window=2).window == 2
    with pytest.raises(ValueError, match="recipe"):
        trainer_config("embedded", "b2", recipe="fine")


def test_recipe_reaches_the_run_and_the_cli_and_old_fingerprints_stay():
    from b2lib.train import parser

    assert "recipe" not in RunConfig().settings()["run"]  # at its default: folders from before keep their fingerprint
    cfg = RunConfig(recipe="coarse")
    assert cfg.settings()["run"]["recipe"] == "coarse"
    assert cfg.settings()["trainer"]["b2_seed0"]["explore_grid"] == 2
    assert "explore_grid" not in RunConfig().settings()["trainer"]["b2_seed0"]
    assert parser().parse_args(["--recipe", "coarse"]).recipe == "coarse"
    with pytest.raises(ValueError, match="recipe"):
        RunConfig(recipe="fine")


def test_tree_method_takes_its_levels_from_the_overrides_at_an_equal_image_budget():
    cfg = trainer_config("embedded", "tree", recipe="coarse", tree=[[5, 2], [10, 2]])
    assert cfg.tree == ((5, 2), (10, 2)) and cfg.window == 1 and cfg.explore_grid == 2 and cfg.algorithm == "grpo"
    assert cfg.images_per_stage == trainer_config("embedded", "b2").images_per_stage and cfg.prompts_per_stage == 8
    b2 = trainer_config("embedded", "b2")
    assert (cfg.lr, cfg.grad_accum) == (b2.lr, b2.grad_accum)  # B²'s tuned point (presets.TUNED_AS)
    with pytest.raises(ValueError, match="needs its levels"):
        trainer_config("embedded", "tree")
    with pytest.raises(ValueError, match="multiple of the tree"):
        trainer_config("embedded", "tree", window=1, tree=[[5, 3], [10, 2]])


def test_smoke_is_a_preset_whose_sizes_reach_every_entry_point(monkeypatch):
    """The smoke size is set once (``presets.SMOKE``): the smoke preset's trainer and evaluation sizes, the
    notebooks' smoke parameters and ``--preset smoke`` all read it, and the other presets keep their sizes (512
    evaluation images, every prompt: what existing run folders recorded, so their fingerprints stay)."""
    from b2lib.experiments import presets
    from b2lib.notebook import smoke_params
    from b2lib.train import config_from_args

    tcfg = trainer_config("smoke", "b2")
    toy = presets.SMOKE
    assert (tcfg.num_stages, tcfg.num_steps, tcfg.split_start, tcfg.num_branches) == (2, 4, 2, 2)
    assert tcfg.prompts_per_stage * tcfg.num_branches == toy["images_per_stage"]
    assert trainer_config("smoke", "b2", lr=0.5).lr == 0.5  # overrides still win
    assert {k: getattr(tcfg, k) for k in ("lr", "lora_rank")} == {
        k: getattr(trainer_config("embedded", "b2"), k) for k in ("lr", "lora_rank")
    }  # everything but the sizes is the embedded world's
    run = RunConfig(preset="smoke")
    assert (run.eval_images, run.eval_max_prompts, run.eval_n_per_prompt) == (4, 2, 2)
    assert RunConfig(preset="smoke", eval_images=8).eval_images == 8
    assert (RunConfig().eval_images, RunConfig().eval_max_prompts) == (512, 0)
    assert RunConfig().settings()["run"]["eval_images"] == 512
    nb = smoke_params()
    assert (nb["stages"], nb["images_per_stage"], nb["branches"], nb["eval_images"]) == (2, 8, 2, 4)

    monkeypatch.setitem(presets.SMOKE, "num_stages", 3)  # the one line a maintainer would change
    monkeypatch.setitem(presets.SMOKE, "eval_images", 6)
    cli, _ = config_from_args(["--preset", "smoke", "--setup", "paper"])
    assert cli.settings() == RunConfig(preset="smoke").settings()
    assert cli.trainer_config("ddpo", 0).num_stages == 3 and cli.eval_images == 6
    assert smoke_params()["stages"] == 3 and smoke_params()["eval_images"] == 6
    assert trainer_config("smoke", "b2").num_stages == 3


def test_committed_run_folders_keep_their_fingerprints():
    """The settings of notebook 03's committed main job, rebuilt from its parameters, still match the fingerprint its
    folder recorded: a change of defaults that would make the main job start over fails here."""
    from b2lib.utils.paths import REPO_ROOT
    from b2lib.utils.rundir import check_fingerprint

    p = _notebook_parameters("03_train")
    cfg = RunConfig(
        methods=("ddpo", "b2"),
        template=p["template"],
        preset=p["preset"],
        stages=p["stages"],
        seeds=tuple(p["seeds"]),
        recipe=p["recipe"],
        budget=p["budget"],
        method_overrides=p["method_overrides"],
        eval_images=p["eval_images"],
        eval_splits=tuple(p["eval_splits"]),
    )
    check_fingerprint(REPO_ROOT / "results" / "main", cfg.settings())


def test_flow_grpo_family_are_configurations_of_the_one_trainer():
    """Flow-GRPO, MixGRPO and TempFlow-GRPO are switches of TrainerConfig, at the same images per stage as B²."""
    from b2lib.experiments.presets import MIXGRPO_WINDOW

    grpo = trainer_config("flow", "flow_grpo", recipe="paper")
    assert (grpo.samples_per_prompt, grpo.num_branches, grpo.algorithm, grpo.progressive) == (4, 1, "grpo", False)
    assert grpo.images_per_stage == 32 and grpo.eta == 0.7 and grpo.prefix_eta is None
    mix = trainer_config("flow", "mixgrpo", recipe="paper")
    steps = mix.schedule.trained_steps
    assert steps[0] == mix.num_steps and steps[-1] == MIXGRPO_WINDOW == mix.window and mix.prefix_eta == 0.0
    assert all(a >= b for a, b in zip(steps, steps[1:]))  # the SDE window slides forward
    temp = trainer_config("flow", "tempflow", recipe="paper")
    assert set(temp.schedule.trained_steps) == {temp.split_start} and temp.window == 1 and temp.prefix_eta == 0.0
    assert temp.num_branches == 4 and temp.images_per_stage == 32 and temp.algorithm == "grpo"
    b2 = trainer_config("flow", "b2", recipe="paper")
    assert b2.lora_targets == "mmdit" and b2.progressive and b2.prefix_eta is None


def test_grpo_is_flow_grpos_grouping_on_any_policy():
    """ "grpo" on the DDIM world: groups of independent samples per prompt, group-relative, every step trained; the
    same switches as "flow_grpo" at the same images per stage."""
    grpo = trainer_config("embedded", "grpo", recipe="coarse", branches=8)
    assert (grpo.samples_per_prompt, grpo.num_branches, grpo.algorithm) == (8, 1, "grpo")
    assert grpo.images_per_stage == 32 and grpo.explore_grid == 2 and grpo.window is None
    same = trainer_config("embedded", "flow_grpo", recipe="coarse", branches=8).to_dict()
    assert {k: v for k, v in grpo.to_dict().items() if k != "lr"} == {k: v for k, v in same.items() if k != "lr"}


def test_b2_signal_is_b2_with_a_signal_chosen_branch_point():
    """ "b2_signal" is B² (its tuned point and recipe) with ``branch_target`` set: the default share, or one given."""
    from b2lib.experiments.presets import SIGNAL_TARGET

    b2 = trainer_config("embedded", "b2", recipe="coarse").to_dict()
    sig = trainer_config("embedded", "b2_signal", recipe="coarse")
    assert sig.branch_target == SIGNAL_TARGET and sig.signal_branching is not None
    assert {k: v for k, v in sig.to_dict().items() if k != "branch_target"} == {
        k: v for k, v in b2.items() if k != "branch_target"
    }
    assert trainer_config("embedded", "b2_signal", branch_target=0.25).branch_target == 0.25
