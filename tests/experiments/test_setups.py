"""The named setups (``b2lib.experiments.setups``): the main setup's points are its searches' choices, and the
notebooks read it."""

from notebook_params import notebook_parameters as _notebook_parameters

from b2lib.experiments.experiment import RunConfig


def test_main_setup_is_each_methods_recorded_search_at_its_budget():
    """The main setup's tuned points are not typed in by hand: each equals its search's choice (notebook 02 at the
    main job's budget, chosen on the train-split reward), with the search's fixed settings; DDPO was searched at no
    more stages than the equal-compute budget gives it."""
    import json

    from b2lib.experiments.setups import MAIN
    from b2lib.utils.paths import REPO_ROOT

    cfg = RunConfig(**MAIN)
    for method, search in (("b2", "longrun_coarse"), ("ddpo", "longrun_coarse_ddpo")):
        folder = REPO_ROOT / "results" / search
        choice = json.loads((folder / "choice.json").read_text())[method]
        run = json.loads(next((folder / "runs").glob(f"{method}_*/config.json")).read_text())
        fixed = {k: v for k, v in run["overrides"].items() if k not in choice}  # what the search held fixed
        point = {k: v for k, v in choice.items() if k != "mean_gain"}
        assert MAIN["method_overrides"][method] == {**fixed, **point}, method
        assert run["recipe"] == MAIN["recipe"]
        tcfg = cfg.trainer_config(method, 0)
        assert all(getattr(tcfg, k) == v for k, v in {**fixed, **point}.items())
        assert run["stages"] <= tcfg.num_stages
    assert cfg.trainer_config("b2", 0).num_stages == MAIN["stages"]


def test_each_strategy_alone_was_searched_and_chose_the_point_the_ablation_trains():
    """The ablation's single-strategy arms (notebook 06) train at B²'s point; each had its own search (notebook 02,
    the same grid as B²'s, at the arm's equal-compute stages, chosen on the train-split reward), and this fails if
    a search chose another point than the one the arm was trained with."""
    import json

    from b2lib.experiments.setups import MAIN
    from b2lib.utils.paths import REPO_ROOT

    params = _notebook_parameters("06_ablations")
    cfg = RunConfig(**{**MAIN, "methods": ("progressive", "branch")})
    for arm in ("progressive", "branch"):
        folder = REPO_ROOT / "results" / f"longrun_coarse_{arm}"
        choice = json.loads((folder / "choice.json").read_text())[arm]
        runs = [json.loads(f.read_text()) for f in (folder / "runs").glob(f"{arm}_*/config.json")]
        assert {r["overrides"]["lr"] for r in runs} == {0.0001, 0.0003, 0.001}  # B²'s grid
        assert all(r["recipe"] == MAIN["recipe"] for r in runs)
        assert {r["stages"] for r in runs} == {cfg.trainer_config(arm, 0).num_stages}, arm
        point = {k: v for k, v in choice.items() if k != "mean_gain"}
        assert params["method_overrides"][arm] == point, arm


def test_main_job_and_table1_take_the_main_setup(monkeypatch):
    """Notebooks 03 (the main job) and 04 (Table 1) read their recipe, stages, budget and tuned points from
    ``b2lib.experiments.setups.MAIN``: one line changed there reaches both."""
    from b2lib.experiments import setups

    for name in ("03_train", "04_templates"):
        params = _notebook_parameters(name)
        assert {k: params[k] for k in setups.MAIN} == setups.MAIN, name
    monkeypatch.setitem(setups.MAIN, "stages", 7)
    assert _notebook_parameters("03_train")["stages"] == _notebook_parameters("04_templates")["stages"] == 7
    main, table1 = _notebook_parameters("03_train"), _notebook_parameters("04_templates")
    for name in ("images_per_stage", "branches", "eval_images"):
        assert table1[name] == main[name], name


def test_the_studies_take_the_main_setup(monkeypatch):
    """The ablation, compatibility and tree studies (notebooks 06, 07, 12) read the main setup too, and a variant
    without a search of its own (each strategy alone, a tree) takes B²'s searched point."""
    from b2lib.experiments import setups

    for name in ("06_ablations", "07_compatibility", "12_trees"):
        params = _notebook_parameters(name)
        assert {k: params[k] for k in ("recipe", "stages", "budget")} == {
            k: setups.MAIN[k] for k in ("recipe", "stages", "budget")
        }, name
        tuned = params["method_overrides"]
        assert {m: tuned[m] for m in setups.MAIN["method_overrides"]} == setups.MAIN["method_overrides"], name
        assert all(tuned[m] == tuned["b2"] for m in set(tuned) - {"ddpo"}), name
    monkeypatch.setitem(setups.MAIN, "method_overrides", {"b2": {"lr": 0.5}, "ddpo": {"lr": 0.25}})
    assert _notebook_parameters("06_ablations")["method_overrides"]["branch"] == {"lr": 0.5}
    assert _notebook_parameters("12_trees")["method_overrides"]["tree"] == {"lr": 0.5}
