"""What every notebook does first, in one call: offline hub, plot style."""

from __future__ import annotations

import os

__all__ = ["setup"]


def setup() -> None:
    """Offline hub (a hub name fails at once instead of retrying for ~48 s; the embedded scale needs no hub) and
    the figures' style. The paper preset still loads from a local hub cache; set ``HF_HUB_OFFLINE=0`` to download."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from .plots import set_style

    set_style()
