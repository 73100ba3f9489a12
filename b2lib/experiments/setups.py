"""Named experiment setups: what the studies that compare methods run with, set in one place.

A setup is a recipe, a budget and each method's tuned point, chosen together: the tuned points come from a recorded
search on the train-split reward at that recipe and budget (notebook 02: ``results/longrun_coarse`` for B²,
``results/longrun_coarse_ddpo`` for DDPO; a test checks that they equal the searches' choices). Notebooks 03 (the
main job) and 04 (Table 1) take their defaults from :data:`MAIN` in their parameters cell, so changing the setup here
changes both (papermill's ``-p`` still overrides any of them for one run).

This module imports nothing heavy: a notebook reads it in its parameters cell, before
:func:`b2lib.notebook.setup` sets the offline hub.
"""

from __future__ import annotations

__all__ = ["MAIN", "PAPER", "SETUPS", "MAIN_SENSITIVITY"]

#: The main job's setup (fields of :class:`b2lib.experiments.experiment.RunConfig`): the coarse recipe, B² for 120
# stages of the  embedded preset's 32 images, every other method for the stages of the same UNet work
# (``budget="compute"``), each  method at its own searched point (``method_overrides``).
MAIN: dict = dict(
    recipe="coarse",
    stages=120,
    budget="compute",
    method_overrides={
        "b2": {"lr": 0.0001, "grad_accum": 1},
        "ddpo": {"lr": 0.0001, "grad_accum": 1, "timestep_fraction": 0.25},
    },
)

#: The paper's published recipe at the preset's own budget (embedded 20 stages, paper scale 100), equal images, every
#: method at the preset's learning rate: the setup for the paper scale (SD 1.4 on GPUs). On the embedded world it moved
#: neither method (``results/main_paper``).
PAPER: dict = dict(recipe="paper", stages=0, budget="images", method_overrides={})

#: the setups by name (``python -m b2lib.train --setup NAME``)
SETUPS: dict[str, dict] = {"main": MAIN, "paper": PAPER}

#: B²'s one-factor sensitivity grid around :data:`MAIN` (notebook 06): each factor's values include MAIN's own
#: (4 branches, split_start 10, 120 stages, threshold 0.5); "stages" keeps MAIN's total images fixed
#: (:func:`b2lib.studies.grids.sensitivity_runs`).
MAIN_SENSITIVITY: dict = {
    "branches": [2, 4, 8],
    "split_start": [5, 10, 15],
    "stages": [60, 120, 240],
    "threshold": [0.5, 0.7],
}
