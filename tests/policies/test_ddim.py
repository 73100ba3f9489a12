"""ddim_step_with_logprob against closed forms and against diffusers' own DDIMScheduler.step."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from b2lib.policies.ddim import ddim_step_with_logprob
from b2lib.training.models import _sd_scheduler


def _scheduler(steps=20, **kw):
    s = _sd_scheduler(**kw)
    s.set_timesteps(steps)
    return s


def _closed_form(s: DDIMScheduler, eps, t: int, x, prev, eta):
    """Independent closed form: DDIM eq. 12/16 written from the paper with plain Python scalars."""
    a = s.alphas_cumprod
    step = s.config.num_train_timesteps // s.num_inference_steps
    a_t = float(a[t])
    a_p = float(a[t - step]) if t - step >= 0 else float(s.final_alpha_cumprod)
    sigma = eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    mean = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p - sigma**2) * eps
    logpdf = -((prev - mean) ** 2) / (2 * sigma**2) - math.log(sigma) - 0.5 * math.log(2 * math.pi)
    return logpdf.flatten(1).mean(1), mean, sigma


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_log_prob_matches_closed_form(eta):
    g = torch.Generator().manual_seed(0)
    s = _scheduler()
    x = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    prev = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    for t in (int(s.timesteps[0]), int(s.timesteps[7]), int(s.timesteps[-1])):
        _, lp = ddim_step_with_logprob(s, eps, t, x, eta, prev_sample=prev)
        expected, _, _ = _closed_form(s, eps, t, x, prev, eta)
        assert lp.shape == (3,)
        torch.testing.assert_close(lp, expected, rtol=1e-6, atol=1e-6)
        # and against torch.distributions (a third, library implementation of the density)
        _, mean, sigma = _closed_form(s, eps, t, x, prev, eta)
        ref = torch.distributions.Normal(mean, sigma).log_prob(prev).flatten(1).mean(1)
        torch.testing.assert_close(lp, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_sampled_step_equals_diffusers_step(eta):
    s = _scheduler()
    x = torch.randn(2, 4, 8, 8)
    eps = torch.randn(2, 4, 8, 8)
    t = s.timesteps[5]
    ours, lp = ddim_step_with_logprob(s, eps, t, x, eta, generator=torch.Generator().manual_seed(3))
    ref = s.step(eps, t, x, eta=eta, generator=torch.Generator().manual_seed(3)).prev_sample
    torch.testing.assert_close(ours, ref)
    # the sampled point's log-prob equals the log-prob of the same point passed explicitly
    _, lp2 = ddim_step_with_logprob(s, eps, t, x, eta, prev_sample=ref)
    torch.testing.assert_close(lp, lp2)


def test_per_sample_timesteps_equal_scalar_calls():
    s = _scheduler()
    x, eps, prev = torch.randn(3, 3, 4, 8, 8).unbind(0)
    ts = torch.stack([s.timesteps[0], s.timesteps[10], s.timesteps[-1]])
    out, lp = ddim_step_with_logprob(s, eps, ts, x, 1.0, prev_sample=prev)
    for i in range(3):
        _, lpi = ddim_step_with_logprob(s, eps[i : i + 1], ts[i], x[i : i + 1], 1.0, prev_sample=prev[i : i + 1])
        torch.testing.assert_close(lp[i : i + 1], lpi)
    assert torch.equal(out, prev)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_other_parameterisations_match_diffusers(prediction_type):
    s = _scheduler(prediction_type=prediction_type, clip_sample=True)
    x, out = torch.randn(2, 2, 4, 8, 8).unbind(0)
    t = s.timesteps[3]
    ours, _ = ddim_step_with_logprob(s, out, t, x, 1.0, generator=torch.Generator().manual_seed(1))
    ref = s.step(out, t, x, eta=1.0, generator=torch.Generator().manual_seed(1)).prev_sample
    torch.testing.assert_close(ours, ref)


def test_gradient_flows_to_noise_pred():
    s = _scheduler()
    x, prev = torch.randn(2, 2, 4, 8, 8).unbind(0)
    eps = torch.randn(2, 4, 8, 8, requires_grad=True)
    _, lp = ddim_step_with_logprob(s, eps, s.timesteps[4], x, 1.0, prev_sample=prev)
    lp.sum().backward()
    assert eps.grad is not None and eps.grad.abs().sum() > 0


def test_bad_inputs_name_the_fix():
    s = _scheduler()
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match="DDIMScheduler"):
        ddpm = DDPMScheduler()
        ddpm.set_timesteps(20)
        ddim_step_with_logprob(ddpm, x, 10, x, 1.0)
    with pytest.raises(ValueError, match="eta > 0"):
        ddim_step_with_logprob(s, x, s.timesteps[0], x, 0.0)
    with pytest.raises(ValueError, match="shape"):
        ddim_step_with_logprob(s, x[:1], s.timesteps[0], x, 1.0)
    with pytest.raises(ValueError, match="one per sample"):
        ddim_step_with_logprob(s, x, s.timesteps[:3], x, 1.0)
    with pytest.raises(ValueError, match="set_timesteps"):
        ddim_step_with_logprob(_sd_scheduler(), x, 10, x, 1.0)
    with pytest.raises(ValueError, match="set_alpha_to_one=False"):
        s1 = _scheduler(set_alpha_to_one=True)
        ddim_step_with_logprob(s1, x, s1.timesteps[-1], x, 1.0)


def test_posterior_mean_std_is_the_step_gaussian():
    """The mean/std the KL uses are the ones the step samples from and scores with."""
    from b2lib.policies.ddim import ddim_log_prob, ddim_posterior_mean_std

    s = _scheduler()
    x, eps = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(2, 4, 8, 8, dtype=torch.float64)
    t = torch.tensor([int(s.timesteps[3]), int(s.timesteps[11])])
    mean, std = ddim_posterior_mean_std(s, eps, t, x, 0.7)
    assert mean.shape == x.shape and std.shape == (2,)
    for i in range(2):
        _, ref_mean, ref_sigma = _closed_form(s, eps[i : i + 1], int(t[i]), x[i : i + 1], x[i : i + 1], 0.7)
        torch.testing.assert_close(mean[i : i + 1], ref_mean)
        assert float(std[i]) == pytest.approx(ref_sigma, rel=1e-10)
    prev, lp = ddim_step_with_logprob(s, eps, t, x, 0.7, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(prev, mean + std.reshape(-1, 1, 1, 1) * noise)
    torch.testing.assert_close(lp, ddim_log_prob(prev, mean, std))


# ------------------------------------------------------------------------------------------ coarse exploration
@pytest.mark.parametrize("grid", [1, 2, 4])
def test_coarse_step_is_ddim_eta_in_the_explored_directions_and_deterministic_elsewhere(grid):
    from b2lib.policies.ddim import ddim_posterior_mean_std
    from b2lib.policies.gaussian import explore_coords, explore_project

    g = torch.Generator().manual_seed(1)
    s = _scheduler()
    x = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    t = s.timesteps[6]
    prev, lp = ddim_step_with_logprob(s, eps, t, x, 1.0, generator=torch.Generator().manual_seed(2), explore_grid=grid)
    full_mean, sigma = ddim_posterior_mean_std(s, eps, t, x, 1.0)
    det = s.step(eps, t, x, eta=0.0).prev_sample
    # unexplored directions: exactly deterministic DDIM's step
    # (the stock step forms its coefficients in float32: agreement to ~1e-6)
    torch.testing.assert_close(
        prev - explore_project(prev, grid), det - explore_project(det, grid), atol=2e-6, rtol=1e-5
    )
    # explored directions: DDIM's eta posterior there, mean + sigma * (projected white noise of the same generator)
    white = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(
        explore_project(prev, grid), explore_project(full_mean, grid) + sigma[0] * explore_project(white, grid)
    )
    # log-prob: the Gaussian density of the 4 * grid^2 explored coordinates, averaged over them (closed form)
    z = explore_coords(prev - full_mean, grid) / sigma[0]
    expected = (-0.5 * z**2 - math.log(float(sigma[0])) - 0.5 * math.log(2 * math.pi)).flatten(1).mean(1)
    torch.testing.assert_close(lp, expected)


def test_coarse_exploration_at_full_resolution_is_ddim():
    """Cells of one latent: every direction is explored, so the policy is DDIM's (same sample, same log-prob)."""
    s = _scheduler()
    x, eps = torch.randn(2, 2, 4, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = s.timesteps[3]
    a = ddim_step_with_logprob(s, eps, t, x, 1.0, generator=torch.Generator().manual_seed(4))
    b = ddim_step_with_logprob(s, eps, t, x, 1.0, generator=torch.Generator().manual_seed(4), explore_grid=8)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
