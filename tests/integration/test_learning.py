"""RL must *learn*: a few stages of DDPO and of B² move a dense reward in the direction of its sign, far beyond the
measurement's seed-to-seed spread.

Weight-change tests (``test_trainer``) pass even when updates are too small to change a single sample; this test fails
then. It also fails when the reward moves for a reason other than the reward: every seed is trained on the reward and
on its negation (:class:`b2lib.rewards.base.Negated`, the sign control), and the *signal*, half the paired difference of
the two models' rewards, must be positive. A gain alone is not enough: with 4-image optimizer steps at lr 1e-2 (this
test's first version), DDPO trained on the negated reward raised the redness more (+0.24) than DDPO trained on the
reward (+0.16): the weights drifted towards red whatever the reward said (measured 2026-11-27). The model is the
embedded world's (shipped weights, 1.7 M UNet parameters), not a random tiny pipeline: a
randomly initialised VAE decodes every latent to nearly the same image (measured: redness std 0.003 over samples),
so no reward on images can teach it anything. The reward is defined here: how red the image is.
"""

import numpy as np
import pytest

from b2lib import TrainerConfig
from b2lib.evaluation.generate import generate
from b2lib.rewards.base import Negated, Redness
from b2lib.training.trainer import RLTrainer
from b2lib.world.models import load_world_pipeline

PROMPTS = ["one red circle", "two blue squares", "three green triangles"]
STEPS = 6


redness = Redness()  # the library's positive-control reward


def _config(method: str, seed: int) -> TrainerConfig:
    # one optimizer step per stage (grad_accum covers the whole stage): with several small steps the drift of the
    # weights outgrew the signal (see the module docstring)
    common = dict(
        num_steps=STEPS,
        num_stages=5,
        split_start=3,
        grad_accum=64,
        epochs_per_stage=1,
        timestep_chunk=0,
        lr=1e-2,
        lora_rank=8,
        lora_targets="all",
        seed=seed,
        progress=False,
    )
    if method == "b2":
        return TrainerConfig.b2(num_branches=4, prompts_per_stage=8, sample_batch_size=8, train_batch_size=4, **common)
    return TrainerConfig.ddpo(prompts_per_stage=48, sample_batch_size=16, train_batch_size=8, **common)


def _eval_reward(pipe, seed: int = 7) -> np.ndarray:
    """Redness of 48 images from fixed noise (the same for every model under one ``seed``: a paired comparison)."""
    images = generate(pipe, PROMPTS * 16, num_steps=STEPS, seed=seed, batch_size=48)
    return redness(images, [""] * len(images)).numpy()


@pytest.mark.parametrize("method", ["ddpo", "b2"])
def test_rl_follows_the_sign_of_a_dense_reward(method):
    base_pipe = load_world_pipeline()
    # the spread of the measured mean reward from one sampling seed to the next (the measurement's own noise)
    spread = float(np.std([_eval_reward(base_pipe, seed).mean() for seed in (7, 8, 9, 10)], ddof=1))
    signals, logs = [], []
    for seed in (0, 1):
        scores = {}
        for sign in (1, -1):
            pipe = load_world_pipeline()
            trainer = RLTrainer(pipe, redness if sign > 0 else Negated(redness), PROMPTS, _config(method, seed))
            logs.append(trainer.train())
            scores[sign] = _eval_reward(pipe)  # the real redness, same noise for both models
        signals.append(float((scores[1] - scores[-1]).mean() / 2))
    assert min(signals) > 3 * spread, (signals, spread)  # every training seed follows the reward's sign
    assert np.mean(signals) > 4 * spread, (signals, spread)
    # the weights moved at every stage (approx KL stays 0 here: with one step per stage the ratio is computed before
    # the stage's only update)
    for log in logs:
        assert all(m["optimizer_steps"] == 1 and m["rel_update"] > 0 for m in log)
