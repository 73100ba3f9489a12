"""The flow study as data: the search and the study are the runs the notebook and the queue both build."""

from b2lib.studies.flow import FLOW_METHODS, FLOW_SNR_ARMS, FlowStudy
from b2lib.training.recipes import recipe_switches


def test_search_covers_every_method_and_grid_point_in_its_own_folder(tmp_path):
    study = FlowStudy(out=tmp_path)
    runs = study.search_runs()
    points = len(study.grid["lr"]) * len(study.grid["grad_accum"])
    assert len(runs) == len(FLOW_METHODS) * points * len(study.search_seeds)
    folders = {cfg.output_dir for _, cfg in runs}
    assert len(folders) == len(runs) and all(f.startswith(str(tmp_path / "search")) for f in folders)
    for point, cfg in runs:
        assert cfg.preset == "flow" and cfg.recipe == "coarse" and cfg.stages == study.search_stages
        assert cfg.overrides == point and cfg.eval_splits == ("train",) and not cfg.save_lora
        assert cfg.method_overrides == {"tree": {"tree": study.tree, "window": 1}}
    # every search run is a valid run whose methods get the coarse recipe's switches
    point, cfg = next(r for r in runs if r[1].methods == ("b2",))
    tcfg = cfg.trainer_config("b2", 0)
    assert all(getattr(tcfg, k) == v for k, v in recipe_switches("coarse", "b2").items())
    assert tcfg.lr == point["lr"] and tcfg.grad_accum == point["grad_accum"]


def test_the_study_runs_each_method_and_seed_at_its_chosen_point(tmp_path):
    study = FlowStudy(out=tmp_path, seeds=(0, 1))
    choice = {m: {"lr": 1e-3, "grad_accum": 1, "mean_gain": 0.01} for m in FLOW_METHODS}
    configs = study.study_configs(choice)
    assert [c.output_dir for c in configs[:2]] == [str(tmp_path / f"{m}_seed0") for m in FLOW_METHODS[:2]]
    assert len(configs) == 2 * len(FLOW_METHODS)
    for cfg in configs:
        (m,), (s,) = cfg.methods, cfg.seeds
        assert cfg.stages == study.stages and cfg.budget == "compute" and cfg.save_lora and cfg.bertscore
        assert "mean_gain" not in cfg.method_overrides[m]
        tcfg = cfg.trainer_config(m, s)
        assert (tcfg.lr, tcfg.grad_accum) == (1e-3, 1)
    tree = next(c for c in configs if c.methods == ("tree",))
    assert tree.method_overrides["tree"]["tree"] == study.tree


def test_snr_arms_compare_the_recipes_on_b2_and_flow_grpo():
    for name, arm in FLOW_SNR_ARMS.items():
        coarse = "_coarse" in name
        assert arm.get("overrides", {}) == (recipe_switches("coarse", arm["method"]) if coarse else {})
    assert {a["method"] for a in FLOW_SNR_ARMS.values()} == {"b2", "flow_grpo"}


def test_the_lever_trains_on_half_the_chain_and_evaluates_on_the_whole(tmp_path):
    from b2lib.experiments.resolve import resolve

    study = FlowStudy(out=tmp_path)
    choice = {m: {"lr": 1e-3, "grad_accum": 1} for m in FLOW_METHODS}
    runs = study.lever_runs(choice)
    assert [r.methods for r in runs] == [("b2",), ("flow_grpo",)]
    for cfg in runs:
        run = resolve(cfg)
        tcfg = run.trainers[f"{cfg.methods[0]}_seed0"]
        assert tcfg.num_steps == 10 and run.chain["num_steps"] == 20 and tcfg.lr == 1e-3
        assert cfg.stages == study.search_stages and cfg.eval_splits == ("train",)
    assert resolve(runs[0]).trainers["b2_seed0"].split_start == 5


def test_speed_is_measured_once_and_then_read(tmp_path, monkeypatch):
    import json

    import b2lib.bench.flow as bench

    calls = []

    def fake(pipe, prompts, num_steps, guidance_scale, eta, repeats):
        calls.append((len(prompts), num_steps, guidance_scale, eta, repeats))
        return {"ratio_ode": {"median": 2.0}}

    monkeypatch.setattr(bench, "bench_flow_sampler_vs_pipeline", fake)
    study = FlowStudy(out=tmp_path)
    first = study.speed(repeats=1, batch=2)
    assert calls == [(2, 20, 3.0, 0.7, 1)] and first["ratio_ode"]["median"] == 2.0 and "machine" in first
    assert json.loads((tmp_path / "speed.json").read_text()) == first
    assert study.speed() == first and len(calls) == 1


def test_a_method_moved_only_with_kl_above_the_bar_and_a_reward_rising_beyond_its_noise():
    import pandas as pd

    from b2lib.studies.flow import MOVED_KL, moved

    table = pd.DataFrame(
        [
            dict(
                method="b2",
                lr=1e-3,
                grad_accum=1,
                gain=0.02,
                mean_approx_kl=1e-5,
                rise_over_noise=2.0,
                optimizer_steps=80,
            ),
            dict(
                method="b2",
                lr=3e-4,
                grad_accum=1,
                gain=0.0,
                mean_approx_kl=1e-14,
                rise_over_noise=3.0,
                optimizer_steps=80,
            ),
            dict(
                method="tree",
                lr=1e-3,
                grad_accum=4,
                gain=0.01,
                mean_approx_kl=1e-6,
                rise_over_noise=0.5,
                optimizer_steps=40,
            ),
            dict(
                method="ddpo",
                lr=3e-4,
                grad_accum=1,
                gain=0.0,
                mean_approx_kl=MOVED_KL / 10,
                rise_over_noise=5.0,
                optimizer_steps=9,
            ),
        ]
    )
    choice = {
        "b2": {"lr": 1e-3, "grad_accum": 1, "mean_gain": 0.02},
        "tree": {"lr": 1e-3, "grad_accum": 4},
        "ddpo": {"lr": 3e-4, "grad_accum": 1},
    }
    out = moved(table, choice)
    assert out["moved"].to_dict() == {"b2": True, "tree": False, "ddpo": False}
    assert out.loc["b2", "mean_approx_kl"] == 1e-5 and "mean_gain" not in out


def test_the_sign_control_trains_b2_on_the_negated_reward_beside_the_study(tmp_path):
    study = FlowStudy(out=tmp_path, sign_seeds=(0, 2))
    choice = {m: {"lr": 1e-4, "grad_accum": 1, "mean_gain": 0.01} for m in FLOW_METHODS}
    configs = study.sign_configs(choice)
    assert [c.output_dir for c in configs] == [str(tmp_path / "negated" / f"b2_seed{s}") for s in (0, 2)]
    same = {c.output_dir: c for c in study.study_configs(choice)}
    for cfg in configs:
        twin = same[str(tmp_path / f"b2_seed{cfg.seeds[0]}")]
        assert cfg.reward_sign == -1 and twin.reward_sign == 1
        # everything but the sign and the folder equals the study's run of the same seed
        assert cfg.trainer_config("b2", cfg.seeds[0]) == twin.trainer_config("b2", cfg.seeds[0])
        assert (cfg.stages, cfg.eval_images, cfg.save_lora) == (twin.stages, twin.eval_images, twin.save_lora)
    # only seeds whose two runs are both finished are paired
    assert study.sign_pairs() == []
    for folder in (tmp_path / "b2_seed0", tmp_path / "negated" / "b2_seed0", tmp_path / "negated" / "b2_seed2"):
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text("{}")
    assert study.sign_pairs() == [tmp_path / "b2_seed0", tmp_path / "negated" / "b2_seed0"]


def test_notebook_15_parameters_are_the_study_defaults_the_queue_runs():
    """The queue (scripts/flow_queue.py) builds FlowStudy with its defaults; the notebook with its parameters cell.
    Where the two differ, the notebook would run its own runs instead of reading the queue's."""
    import dataclasses

    from tests.notebook_params import notebook_parameters

    params = notebook_parameters("15_flow")
    defaults = FlowStudy(out="unused")
    shared = [f.name for f in dataclasses.fields(FlowStudy) if f.name in params]
    assert set(shared) >= {"methods", "seeds", "stages", "grid", "tree", "recipe", "sign_seeds", "snr_arms", "run_name"}
    for name in shared:
        value, default = params[name], getattr(defaults, name)
        assert (tuple(value) if isinstance(default, tuple) else value) == default, name


def test_unknown_snr_arms_are_refused_with_the_known_ones():
    import pytest

    with pytest.raises(ValueError, match="b2_first"):
        FlowStudy(out="unused", snr_arms=("nope",))


def test_the_images_pilot_is_the_study_run_with_more_images_per_stage(tmp_path):
    study = FlowStudy(out=tmp_path)
    choice = {m: {"lr": 1e-4, "grad_accum": 1} for m in FLOW_METHODS}
    pilot = study.images_pilot(choice, images_per_stage=128)
    twin = next(c for c in study.study_configs(choice) if c.output_dir == str(tmp_path / "b2_seed0"))
    assert pilot.output_dir == str(tmp_path / "n128" / "b2_seed0") and pilot.images_per_stage == 128
    assert (pilot.stages, pilot.method_overrides, pilot.recipe) == (twin.stages, twin.method_overrides, twin.recipe)
    assert pilot.trainer_config("b2", 0).prompts_per_stage == 4 * twin.trainer_config("b2", 0).prompts_per_stage
