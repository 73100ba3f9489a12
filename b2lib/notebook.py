"""What every notebook does first, in one call: offline hub, plot style, and the smoke size under the test suite.

Import this module (not ``b2lib.experiment``) before anything that loads huggingface_hub, so the offline setting is in
place when the hub library reads it at import.
"""

from __future__ import annotations

import copy
import os

__all__ = ["setup", "smoke_params"]  # and SMOKE (module attribute, computed when read)


def smoke_params() -> dict:
    """The toy size every study notebook runs at under the test suite and CI (``B2_SMOKE=1``), as notebook parameters:
    the smoke preset's sizes (:data:`b2lib.presets.SMOKE`, the one place they are set), one seed, one worker. A
    notebook takes the entries whose names it defines as parameters (``setup(globals())``); the chain's length and
    interval start go through ``overrides``, so they win over a notebook's own trainer settings."""
    from .presets import SMOKE as toy

    return dict(
        stages=toy["num_stages"],
        images_per_stage=toy["images_per_stage"],
        branches=toy["num_branches"],
        eval_images=toy["eval_images"],
        eval_n_per_prompt=toy["eval_n_per_prompt"],
        eval_max_prompts=toy["eval_max_prompts"],
        seeds=[0],
        workers=1,
        overrides={"num_steps": toy["num_steps"], "split_start": toy["split_start"]},
    )


def __getattr__(name: str):
    # ``SMOKE``, read when asked for: importing this module must not import torch or the hub libraries (``setup``
    # sets the offline switches before they load)
    if name == "SMOKE":
        return smoke_params()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def setup(params: dict | None = None, **smoke) -> bool:
    """Offline hub (a hub name fails at once instead of retrying for ~48 s; the embedded scale needs no hub), the
    figures' style, and the run size. Returns whether this is a smoke run (:func:`b2lib.paths.is_smoke`).

    ``params`` is the notebook's namespace (``globals()``): under a smoke run every :func:`smoke_params` entry it
    defines is replaced by the smoke value (``overrides`` included: the smoke chain), and every keyword in ``smoke`` (a
    notebook's own toy sizes) is set. The paper preset still loads from a local hub cache; set ``HF_HUB_OFFLINE=0``
    to download.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from .paths import is_smoke
    from .plots import set_style

    set_style()
    smoke_run = is_smoke()
    if params is not None and smoke_run:
        for name, value in {**smoke_params(), **smoke}.items():
            if name in params or name in smoke:
                params[name] = copy.deepcopy(value)
    return smoke_run
