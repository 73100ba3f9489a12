"""``b2lib.notebook.setup``: one call gives every notebook its offline hub, style and smoke size."""

import subprocess
import sys

from b2lib.notebook import SMOKE, setup


def test_smoke_run_sets_the_sizes_a_notebook_defines(monkeypatch):
    monkeypatch.setenv("B2_SMOKE", "1")
    params = {
        "stages": 0,
        "images_per_stage": 0,
        "seeds": [0, 1, 2],
        "template": "counting",
        "arms": ["a", "b"],
        "overrides": {},
    }
    assert setup(params, arms=["a"]) is True
    assert params["stages"] == SMOKE["stages"] and params["images_per_stage"] == SMOKE["images_per_stage"]
    assert params["seeds"] == SMOKE["seeds"] and params["arms"] == ["a"] and params["template"] == "counting"
    assert params["overrides"] == SMOKE["overrides"] and params["overrides"] is not SMOKE["overrides"]
    assert "eval_images" not in params  # a size the notebook does not define stays undefined


def test_full_run_leaves_the_parameters_alone(monkeypatch):
    monkeypatch.setenv("B2_SMOKE", "0")
    params = {"stages": 20, "seeds": [0, 1], "overrides": {"lr": 1e-3}}
    assert setup(params, seeds=[0]) is False
    assert params == {"stages": 20, "seeds": [0, 1], "overrides": {"lr": 1e-3}}


def test_setup_comes_before_the_hub_library():
    code = (
        "import os, sys; os.environ.pop('HF_HUB_OFFLINE', None)\n"
        "from b2lib.notebook import setup\n"
        "assert 'huggingface_hub' not in sys.modules\n"
        "setup()\n"
        "import huggingface_hub.constants as c\n"
        "assert c.HF_HUB_OFFLINE, 'offline mode not seen by huggingface_hub'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
