"""Test-suite-wide settings. Notebooks run in their own kernels, which inherit these environment variables."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub name must fail at once, not retry for ~48 s
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("B2_SMOKE", "1")  # every notebook runs at smoke size under pytest --nbval-lax
