"""Old flat module paths (``b2lib.trainer``, ``b2lib.ddim``, ...) kept importable after the library moved into
subpackages: one import hook, not one stub file per old module.

Why: notebooks, scripts and users' own code written against the flat layout keep running unchanged; an old name
resolves to the *same* module object as its new one (``b2lib.trainer is b2lib.training.trainer``), so
monkeypatching, ``isinstance`` and pickling see one module. New code imports the new paths.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

#: old module (under ``b2lib.``) -> where it lives now (``b2lib.rewards`` and ``b2lib.studies`` are packages now, which
#: re-export the names of the modules they were: :mod:`b2lib.rewards.base`, :mod:`b2lib.studies.grids`)
MOVED: dict[str, str] = {
    "paths": "utils.paths",
    "precision": "utils.precision",
    "tables": "utils.tables",
    "progress": "utils.progress",
    "rundir": "utils.rundir",
    "policy": "policies.base",
    "ddim": "policies.ddim",
    "ddim_policy": "policies.ddim",
    "flow_sde": "policies.flow",
    "flow_policy": "policies.flow",
    "sampling": "algorithm.sampling",
    "tree": "algorithm.tree",
    "schedule": "algorithm.schedule",
    "advantages": "algorithm.advantages",
    "losses": "algorithm.losses",
    "config": "training.config",
    "trainer": "training.trainer",
    "update": "training.update",
    "cost": "training.cost",
    "checkpoint": "training.checkpoint",
    "models": "training.models",
    "bertscore": "rewards.bertscore",
    "evaluate": "evaluation.generate",
    "metrics": "evaluation.metrics",
    "comparisons": "evaluation.comparisons",
    "stats": "evaluation.stats",
    "health": "evaluation.health",
    "runconfig": "experiments.runconfig",
    "presets": "experiments.presets",
    "setups": "experiments.setups",
    "experiment": "experiments.experiment",
    "modeljobs": "experiments.modeljobs",
    "reevaluate": "experiments.reevaluate",
    "tuning": "studies.tuning",
    "levers": "studies.levers",
    "sparsity": "studies.sparsity",
    "gradient_snr": "studies.gradient_snr",
    "world.colour_mixing_study": "studies.colour_mixing",
    "frontpage": "reporting.frontpage",
    "claims": "reporting.claims",
    "summary_table": "reporting.summary_table",
    "report": "reporting.report",
    "plots": "reporting.plots",
    "plot_style": "reporting.plot_style",
    "plots_bars": "reporting.plots_bars",
    "schematic": "reporting.schematic",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``b2lib.<old>`` and loads it as the module at its new path."""

    def find_spec(self, fullname, path=None, target=None):
        old = fullname.removeprefix("b2lib.")
        if fullname.startswith("b2lib.") and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"b2lib.{MOVED[spec.name.removeprefix('b2lib.')]}")

    def exec_module(self, module):  # the new module is already executed
        return None


def install() -> None:
    """Put the hook on ``sys.meta_path`` once."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
