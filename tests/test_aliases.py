"""The flat module paths of earlier versions still import, as the very modules of the subpackages."""

import subprocess
import sys

import pytest

from b2lib._aliases import MOVED


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_old_path_is_the_new_module(old, new):
    import importlib

    assert importlib.import_module(f"b2lib.{old}") is importlib.import_module(f"b2lib.{new}")


def test_old_names_import_from_old_paths():
    from b2lib.ddim import ddim_step_with_logprob, explore_project  # noqa: F401
    from b2lib.trainer import RLTrainer
    from b2lib.training.trainer import RLTrainer as new

    assert RLTrainer is new


def test_the_command_line_still_runs_as_a_module():
    r = subprocess.run([sys.executable, "-m", "b2lib.train", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--setup" in r.stdout
