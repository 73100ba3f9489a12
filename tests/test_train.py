"""``python -m b2lib.train`` runs the main job that notebook 03 runs, and ``--setup paper`` the published recipe."""

from __future__ import annotations

import json
from pathlib import Path

from b2lib.experiments.runconfig import RunConfig
from b2lib.experiments.setups import MAIN, PAPER
from b2lib.train import config_from_args

ROOT = Path(__file__).resolve().parents[1]


def _notebook_defaults() -> dict:
    """The parameters cell of notebook 03, evaluated as the notebook evaluates it."""
    nb = json.loads((ROOT / "notebooks" / "03_train.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    params: dict = {}
    exec("".join(cell["source"]), params)
    return params


def test_the_script_default_is_the_notebook_main_job():
    nb = _notebook_defaults()
    cli, _ = config_from_args([])
    assert (cli.recipe, cli.stages, cli.budget) == (nb["recipe"], nb["stages"], nb["budget"])
    assert cli.method_overrides == nb["method_overrides"] == MAIN["method_overrides"]
    assert (cli.template, cli.preset, cli.reward) == (nb["template"], nb["preset"], nb["reward"])


def test_paper_setup_is_the_published_recipe_and_flags_still_win():
    cli, _ = config_from_args(["--setup", "paper", "--preset", "paper"])
    assert (cli.recipe, cli.stages, cli.budget, cli.method_overrides) == (
        PAPER["recipe"],
        PAPER["stages"],
        PAPER["budget"],
        {},
    )
    assert config_from_args(["--setup", "paper"])[0].settings() == RunConfig().settings()
    assert config_from_args(["--stages", "12"])[0].stages == 12  # a flag wins over the setup
    assert config_from_args(["--recipe", "paper"])[0].recipe == "paper"
    assert config_from_args(["--preset", "smoke"])[0].stages == 0  # the toy size keeps its own stages
