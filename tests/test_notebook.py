"""``b2lib.notebook.setup``: one call gives every notebook its offline hub, style and smoke size."""

import json
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


# ---------------------------------------------------------------------------------------------------------------------
# The cleaner of committed outputs (b2lib.notebook.clean_notebook, python -m b2lib.notebook clean)

ROOT = "/work/checkout"
PNG = "iVBORw0KGgo/tmp/AAAA"  # image data is never rewritten, even where its base64 happens to read like a path


def _synthetic_notebook() -> dict:
    """A notebook with every kind of output the cleaner must handle, and the parts it must leave alone."""
    source = ["print('/work/checkout/results/x')  # a source is never touched\n"]
    outputs = [
        {"name": "stdout", "output_type": "stream", "text": ["writing to /work/checkout/results/world\n", "done\n"]},
        {
            "name": "stderr",
            "output_type": "stream",
            "text": [
                "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/diffusers/utils/d.py:23: FutureWarning\n"
            ],
        },
        {
            "data": {
                "application/vnd.jupyter.widget-view+json": {"model_id": "ab12", "version_major": 2},
                "text/plain": ["Loading weights:   0%|          | 0/52 [00:00<?, ?it/s]"],
            },
            "metadata": {},
            "output_type": "display_data",
        },
        {
            "name": "stderr",
            "output_type": "stream",
            "text": [
                "USDT:2026-12-02 12:28:59 31255:31255 SyncActivityProfilerHandler.cpp:46] profiler_stop\n",
                "ERROR:2026-12-02 12:28:59 31255:31255 DeviceProperties.cpp:56] gpuGetDeviceCount failed (35)\n",
            ],
        },
        {  # a bar whose widget view was stripped earlier: its plain-text stand-in, stuck at 0 %
            "data": {"text/plain": ["runs:   0%|          | 0/15 [00:00<?, ?it/s]"]},
            "metadata": {},
            "output_type": "display_data",
        },
        {"name": "stdout", "output_type": "stream", "text": "results in /tmp/clean/results/main\n"},
        {
            "data": {"text/plain": ["PosixPath('/work/checkout/results/main/intervals.png')"], "image/png": PNG},
            "execution_count": 3,
            "metadata": {},
            "output_type": "execute_result",
        },
        {"name": "stdout", "output_type": "stream", "text": ["scratch /tmp/run7/a.csv, home /home/ann/x\n"]},
    ]
    return {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": ["See `/work/checkout/docs`."]},
            {"cell_type": "code", "execution_count": 3, "metadata": {}, "outputs": outputs, "source": source},
        ],
        "metadata": {
            "papermill": {"input_path": "notebooks/x.ipynb", "output_path": "/tmp/x_full.ipynb"},
            "widgets": {"application/vnd.jupyter.widget-state+json": {"state": {}}},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def test_the_cleaner_makes_outputs_portable_and_leaves_sources_alone():
    from b2lib.notebook import MACHINE_PATH, clean_notebook

    nb = _synthetic_notebook()
    cleaned = clean_notebook(nb, root=ROOT)
    assert nb == _synthetic_notebook(), "the input notebook was modified"
    assert [c["source"] for c in cleaned["cells"]] == [c["source"] for c in nb["cells"]]
    outs = cleaned["cells"][1]["outputs"]
    texts = ["".join(o.get("text", [])) or "".join(o.get("data", {}).get("text/plain", [])) for o in outs]
    assert texts == [
        "writing to results/world\ndone\n",
        "<site-packages>/diffusers/utils/d.py:23: FutureWarning\n",
        "results in results/main\n",  # another clone's path, cut back to the repository folder it reaches
        "PosixPath('results/main/intervals.png')",
        "scratch <tmp>/run7/a.csv, home ~/x\n",
    ]
    assert outs[3]["data"]["image/png"] == PNG and outs[3]["execution_count"] == 3
    assert not any(MACHINE_PATH.search(t) for t in texts)
    assert "widgets" not in cleaned["metadata"]
    assert cleaned["metadata"]["papermill"] == {"input_path": "notebooks/x.ipynb", "output_path": "<tmp>/x_full.ipynb"}
    assert clean_notebook(cleaned, root=ROOT) == cleaned  # idempotent


def test_the_cleaner_keeps_real_stderr_and_paths_that_are_not_machine_paths():
    from b2lib.notebook import clean_text

    assert (
        clean_text("see results/tmp/a and https://host/tmp/b", root=ROOT) == "see results/tmp/a and https://host/tmp/b"
    )
    assert (
        clean_text("/work/checkout", root=ROOT) == "."
        and clean_text("/work/checkouts/x", root=ROOT) == "<work>/checkouts/x"
    )
    nb = _synthetic_notebook()
    nb["cells"][1]["outputs"] = [{"name": "stderr", "output_type": "stream", "text": ["ERROR: loss is nan\n"]}]
    from b2lib.notebook import clean_notebook

    assert clean_notebook(nb, root=ROOT)["cells"][1]["outputs"] == nb["cells"][1]["outputs"]


def test_clean_command_rewrites_only_notebooks_that_change(tmp_path):
    path = tmp_path / "99_x.ipynb"
    path.write_text(json.dumps(_synthetic_notebook(), indent=1))
    cmd = [sys.executable, "-m", "b2lib.notebook", "clean", str(path), "--root", ROOT]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0 and "cleaned" in first.stdout, first.stderr
    after = path.read_text()
    second = subprocess.run(cmd, capture_output=True, text=True)
    assert "already clean" in second.stdout and path.read_text() == after
    outputs = json.dumps([c.get("outputs", []) for c in json.loads(after)["cells"]])
    assert "/tmp/clean" not in outputs and "/work/" not in outputs and "widget-view" not in after
