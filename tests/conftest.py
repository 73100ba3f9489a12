"""Shared fixtures: tiny models built from config (no downloads), offline hub."""

import os
import sys
from pathlib import Path

# the helpers beside this file (tiny.py, fake_runs.py), importable from the test files of every subfolder (the suite
# imports test files by path: pytest's importlib mode, so two subfolders may each hold a test_models.py)
sys.path.insert(0, str(Path(__file__).parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("clip_bpe")


@pytest.fixture
def make_pipe(tokenizer_dir):
    """Factory of fresh tiny StableDiffusionPipelines (fresh because trainers attach LoRA adapters in place)."""
    from tiny import build_tiny_pipeline

    def make(seed: int = 0):
        pipe = build_tiny_pipeline(seed=seed, tokenizer_dir=tokenizer_dir)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return make


@pytest.fixture
def tiny_pipe(make_pipe):
    return make_pipe()
