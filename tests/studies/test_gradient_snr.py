"""b2lib.studies.gradient_snr: the SNR estimators against closed forms, and the measured gradient against the trainer's
own."""

import numpy as np
import pytest
import torch

from b2lib.algorithm.losses import policy_loss
from b2lib.studies.gradient_snr import (
    GradientDraws,
    jackknife_snr,
    measure_gradients,
    snr_difference,
    snr_from_gram,
    snr_rows,
)
from b2lib.training.trainer import RLTrainer, TrainerConfig


def _draws(rng, r, d, mean_norm, noise_sd):
    g = rng.standard_normal(d)
    g *= mean_norm / np.linalg.norm(g)
    return g, g + noise_sd * rng.standard_normal((r, d))


def test_two_draws_closed_form():
    a, b = np.array([1.0, 2.0, 0.0]), np.array([3.0, -1.0, 2.0])
    v = np.stack([a, b])
    s = snr_from_gram(v @ v.T)
    assert s["signal"] == pytest.approx(a @ b)
    assert s["noise"] == pytest.approx(((a - b) ** 2).sum() / 2)
    assert s["cosine"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert s["snr"] == pytest.approx(s["signal"] / s["noise"])


def test_unbiased_for_known_mean_and_noise():
    """G_r = g + sd * eps: E[signal] = ||g||^2, E[noise] = d * sd^2, so snr -> ||g||^2 / (d sd^2)."""
    rng = np.random.default_rng(0)
    d, sd = 20_000, 0.05
    g, v = _draws(rng, 60, d, mean_norm=3.0, noise_sd=sd)
    s = jackknife_snr(v @ v.T)
    true_snr = 9.0 / (d * sd**2)
    assert s["signal"] == pytest.approx(9.0, rel=0.05)
    assert s["noise"] == pytest.approx(d * sd**2, rel=0.02)
    assert s["snr_low"] <= true_snr <= s["snr_high"]
    assert s["snr"] == pytest.approx(true_snr, rel=0.1)


def test_jackknife_interval_covers_and_resolves_zero_signal():
    rng = np.random.default_rng(1)
    hits, zero_hits = 0, 0
    for _ in range(200):
        _, v = _draws(rng, 12, 300, mean_norm=2.0, noise_sd=0.3)  # true snr = 4 / 27
        s = jackknife_snr(v @ v.T)
        hits += s["snr_low"] <= 4.0 / 27.0 <= s["snr_high"]
        w = 0.3 * rng.standard_normal((12, 300))  # no signal at all
        z = jackknife_snr(w @ w.T)
        zero_hits += z["snr_low"] <= 0.0 <= z["snr_high"]
    assert 0.85 <= hits / 200 <= 0.995
    assert 0.85 <= zero_hits / 200 <= 1.0


def test_bad_gram_and_too_few_draws():
    with pytest.raises(ValueError, match="square"):
        snr_from_gram(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="3 draws"):
        jackknife_snr(np.eye(2))


def test_stage_gram_is_gram_of_the_trainer_means():
    """Selection on: the mean over kept samples and the chosen steps; off: over all samples."""
    rng = np.random.default_rng(2)
    r, t, d = 4, 3, 7
    sums = rng.standard_normal((r, t, 2, d))
    counts = np.array([[2, 1], [3, 0], [1, 2], [2, 2]])
    flat = sums.reshape(r * t * 2, d)
    draws = GradientDraws(
        (flat @ flat.T).reshape(r, t, 2, r, t, 2),
        counts,
        images=5,
        first_step=2,
        num_steps=5,
        reward_mean=0.0,
        seconds=0.0,
    )
    for steps, sel in [(None, True), ([3, 4], True), ([2], False), (None, False)]:
        cols = [0, 1, 2] if steps is None else [s - 2 for s in steps]
        parts = [0] if sel else [0, 1]
        means = np.stack(
            [sums[i][cols][:, parts].sum(axis=(0, 1)) / (counts[i, parts].sum() * len(cols)) for i in range(r)]
        )
        np.testing.assert_allclose(draws.stage_gram(steps, selection=sel), means @ means.T, rtol=1e-12)
    with pytest.raises(ValueError, match="measured interval"):
        draws.stage_gram([1])
    rows = snr_rows(draws, "toy", {"interval": None, "late": [4]})
    assert len(rows) == 4 and {r_["steps"] for r_ in rows} == {"interval", "late"}
    assert all(abs(r_["snr_per_image"] - r_["snr"] / 5) < 1e-15 for r_ in rows)


def test_snr_difference_interval():
    a = {"snr_per_image": 0.002, "snr_se": 0.01, "images": 10}
    b = {"snr_per_image": 0.001, "snr_se": 0.02, "images": 20}
    d = snr_difference(a, b)
    assert d["difference"] == pytest.approx(0.001)
    assert d["high"] - d["difference"] == pytest.approx(1.959964 * np.hypot(0.001, 0.001), rel=1e-5)


def _redness(images, prompts):
    return images[:, 0].mean(dim=(1, 2)) - images[:, 1:].mean(dim=(1, 2, 3))


@pytest.mark.parametrize("branches,window", [(1, None), (2, None), (2, 1)])
def test_measured_gradient_is_the_trainers_loss_gradient(make_pipe, branches, window):
    """The per-step, per-part sums add up to the gradient of the trainer's PPO loss at ratio 1 on the same draw,
    and measuring leaves weights and the advantage normaliser as they were."""
    torch.manual_seed(0)
    kw = dict(
        num_steps=4,
        split_start=2,
        num_stages=2,
        prompts_per_stage=2,
        sample_batch_size=2,
        train_batch_size=2,
        guidance_scale=3.0,
        progress=False,
        lora_rank=2,
        seed=0,
    )
    cfg = TrainerConfig.b2(num_branches=2, window=window, **kw) if branches == 2 else TrainerConfig.ddpo(**kw)
    trainer = RLTrainer(make_pipe(), _redness, ["a red square", "a blue circle"], cfg)
    before = [p.detach().clone() for p in trainer.trainable]
    normaliser_before = repr(vars(trainer.normalizer))
    draws = measure_gradients(trainer, 3, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.trainable))
    assert repr(vars(trainer.normalizer)) == normaliser_before
    assert draws.draws == 3 and draws.images == cfg.images_per_stage
    assert draws.trained_steps == (window or trainer.schedule(0))
    assert draws.first_step == cfg.num_steps - trainer.schedule(0)

    # draw 0 of the measurement is draw=1 of sample_stage: recompute its loss gradient the trainer's way
    traj, rewards = trainer.sample_stage(0, draw=1)
    adv, keep = trainer.advantages(traj, rewards)
    rows = keep.nonzero().flatten()
    k = traj.num_steps
    flat_rows, flat_cols = rows.repeat_interleave(k), torch.arange(k).repeat(len(rows))
    log_prob = trainer.policy_terms(traj, flat_rows, flat_cols)[0]
    loss, _ = policy_loss("ppo", log_prob, log_prob.detach(), adv[flat_rows], cfg.clip_range)
    grads = torch.autograd.grad(loss, trainer.trainable, allow_unused=True)
    g = torch.cat([(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(grads, trainer.trainable)])
    assert float(g.norm()) > 0
    assert draws.stage_gram()[0, 0] == pytest.approx(float(g.double() @ g.double()), rel=1e-4)
    # the draws are independent stages, not copies of one
    gram = draws.stage_gram()
    assert not np.allclose(gram[0, 0], gram[1, 1])


def test_draw_zero_is_the_training_sample(make_pipe):
    cfg = TrainerConfig.ddpo(num_steps=3, num_stages=1, prompts_per_stage=2, sample_batch_size=2, progress=False)
    trainer = RLTrainer(make_pipe(), _redness, ["a red square"], cfg)
    a, ra = trainer.sample_stage(0)
    b, rb = trainer.sample_stage(0, draw=0)
    c, rc = trainer.sample_stage(0, draw=1)
    assert torch.equal(a.images, b.images) and torch.equal(ra, rb)
    assert not torch.equal(a.images, c.images)


def test_score_function_ceiling_in_d_dimensions():
    """The scale the module docstring quotes: for a Gaussian policy N(mu, I_d) and a linear reward w.x, the
    score-function estimate (w.eps) eps of the gradient w has per-sample SNR exactly 1 / (d + 1), so a stage of n
    samples has n / (d + 1)."""
    rng = np.random.default_rng(3)
    d, n, r = 63, 16, 400
    w = rng.standard_normal(d)
    eps = rng.standard_normal((r, n, d))
    draws = ((eps @ w)[..., None] * eps).mean(axis=1)  # (r, d): one stage's estimate per draw
    s = jackknife_snr(draws @ draws.T)
    assert s["snr_low"] <= n / (d + 1) <= s["snr_high"]
    assert s["snr"] == pytest.approx(n / (d + 1), rel=0.15)


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    v = rng.standard_normal((3 * 2 * 2, 50))
    draws = GradientDraws(
        (v @ v.T).reshape(3, 2, 2, 3, 2, 2),
        np.array([[2, 1], [1, 2], [3, 0]]),
        images=3,
        first_step=4,
        num_steps=6,
        reward_mean=0.5,
        seconds=1.0,
    )
    back = GradientDraws.load(draws.save(tmp_path / "d.npz"))
    np.testing.assert_allclose(back.gram, draws.gram, rtol=1e-6, atol=1e-5)
    assert back.gram.shape == draws.gram.shape and np.array_equal(back.counts, draws.counts)
    assert (back.images, back.first_step, back.num_steps, back.reward_mean) == (3, 4, 6, 0.5)


def test_snr_comparisons_pairs_and_skips():
    import pandas as pd

    from b2lib.studies.gradient_snr import snr_comparisons

    base = dict(steps="interval", images=10, snr_se=0.001)
    table = pd.DataFrame(
        [
            {**base, "estimator": "a", "selection": True, "snr_per_image": 0.01},
            {**base, "estimator": "a", "selection": False, "snr_per_image": 0.0},
            {**base, "estimator": "b", "selection": True, "snr_per_image": 0.0},
        ]
    )
    c = snr_comparisons(table, [("a", "b"), ("a", "missing")])
    assert len(c) == 2 and c["a_selection"].tolist() == [True, False]
    assert c["difference"].tolist() == pytest.approx([0.01, 0.0]) and c["resolved"].tolist() == [True, False]
