"""What every notebook does first, in one call: offline hub, plot style, and the smoke size under the test suite.

Import this module (not ``b2lib.experiment``) before anything that loads huggingface_hub, so the offline setting is in
place when the hub library reads it at import.
"""

from __future__ import annotations

import copy
import os

__all__ = ["SMOKE", "setup"]

#: The toy size every study notebook runs at under the test suite and CI (``B2_SMOKE=1``): the same code path, in
#: seconds. A notebook takes the entries whose names it defines as parameters (``setup(globals())``).
SMOKE: dict = dict(
    stages=2,
    images_per_stage=8,
    branches=2,
    eval_images=4,
    eval_n_per_prompt=2,
    eval_max_prompts=2,
    seeds=[0],
    workers=1,
    overrides={"num_steps": 4, "split_start": 2},  # a 4-step chain, trained from step 2
)


def setup(params: dict | None = None, **smoke) -> bool:
    """Offline hub (a hub name fails at once instead of retrying for ~48 s; the embedded scale needs no hub), the
    figures' style, and the run size. Returns whether this is a smoke run (:func:`b2lib.paths.is_smoke`).

    ``params`` is the notebook's namespace (``globals()``): under a smoke run every :data:`SMOKE` entry it defines is
    replaced by the smoke value (``overrides`` included: the smoke chain), and every keyword in ``smoke`` (a notebook's
    own toy sizes) is set. The paper preset still loads from a local hub cache; set ``HF_HUB_OFFLINE=0`` to download.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from .paths import is_smoke
    from .plots import set_style

    set_style()
    smoke_run = is_smoke()
    if params is not None and smoke_run:
        for name, value in {**SMOKE, **smoke}.items():
            if name in params or name in smoke:
                params[name] = copy.deepcopy(value)
    return smoke_run
