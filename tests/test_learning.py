"""RL must *learn*: a few stages of DDPO and of B² raise a dense reward far beyond its seed-to-seed spread.

Weight-change tests (``test_trainer``) pass even when updates are too small to change a single sample; this test fails
then. The model is the embedded world's (shipped weights, 1.7 M UNet parameters), not a random tiny pipeline: a
randomly initialised VAE decodes every latent to nearly the same image (measured: redness std 0.003 over samples),
so no reward on images can teach it anything. The reward is defined here: how red the image is.
"""

import numpy as np
import pytest
import torch

from b2lib import TrainerConfig
from b2lib.evaluate import generate
from b2lib.trainer import RLTrainer
from b2lib.world.models import load_pipeline

PROMPTS = ["one red circle", "two blue squares", "three green triangles"]
STEPS = 6


def redness(images, prompts):
    return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


def _config(method: str, seed: int) -> TrainerConfig:
    common = dict(num_steps=STEPS, num_stages=5, split_start=3, train_batch_size=4, grad_accum=1, epochs_per_stage=1,
                  timestep_chunk=0, lr=1e-2, lora_rank=8, lora_targets="all", seed=seed, progress=False)
    if method == "b2":
        return TrainerConfig.b2(num_branches=4, prompts_per_stage=8, sample_batch_size=8, **common)
    return TrainerConfig.ddpo(prompts_per_stage=16, sample_batch_size=16, **common)


def _eval_reward(pipe, seed: int = 7) -> np.ndarray:
    """Redness of 48 images from fixed noise (the same for every model under one ``seed``: a paired comparison)."""
    images = generate(pipe, PROMPTS * 16, num_steps=STEPS, seed=seed, batch_size=48)
    return redness(images, None).numpy()


@pytest.mark.parametrize("method", ["ddpo", "b2"])
def test_rl_raises_a_dense_reward(method):
    base_pipe = load_pipeline()
    base = _eval_reward(base_pipe)
    # the spread of the measured mean reward from one sampling seed to the next (the measurement's own noise)
    spread = float(np.std([_eval_reward(base_pipe, seed).mean() for seed in (7, 8, 9, 10)], ddof=1))
    gains, logs = [], []
    for seed in (0, 1):
        pipe = load_pipeline()
        trainer = RLTrainer(pipe, redness, PROMPTS, _config(method, seed))
        logs.append(trainer.train())
        gains.append(float((_eval_reward(pipe) - base).mean()))
    assert min(gains) > 3 * spread, (gains, spread)  # every training seed learns
    assert np.mean(gains) > 6 * spread, (gains, spread)
    # the policy moved, visibly in the health metrics (approx KL needs a second optimizer step within the stage:
    # the first step's log-probs are computed before any update)
    for log in logs:
        trained = [m for m in log if m["optimizer_steps"] > 1]
        assert trained and max(m["approx_kl"] for m in trained) > 1e-5, [m["approx_kl"] for m in log]
        assert all(m["rel_update"] > 0 for m in log if m["optimizer_steps"] > 0)
