"""b2lib.policies.flow against closed forms, diffusers' FlowMatchEulerDiscreteScheduler.step and a Monte-Carlo check of
the SDE's marginals on a Gaussian data distribution whose exact velocity is known."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from b2lib.policies.flow import flow_ode_step, flow_sde_mean_std, flow_sde_step_with_logprob
from b2lib.policies.gaussian import explore_coords, explore_project

SHIFTS = [1.0, 3.0]  # diffusers' default and SD3's


def _scheduler(steps=10, shift=1.0):
    s = FlowMatchEulerDiscreteScheduler(shift=shift)
    s.set_timesteps(steps)
    return s


def _closed_form(s, v, i, x, prev, a):
    """Independent closed form in float64 with plain Python scalars for the schedule (Flow-GRPO's SDE step)."""
    sig, sig_next, sig1 = float(s.sigmas[i]), float(s.sigmas[i + 1]), float(s.sigmas[1])
    e = a * math.sqrt(sig / (1 - (sig1 if sig == 1 else sig)))
    dt = sig_next - sig
    mean = x + (v + e**2 / (2 * sig) * (x + (1 - sig) * v)) * dt
    std = e * math.sqrt(-dt)
    return torch.distributions.Normal(mean, std).log_prob(prev).flatten(1).mean(1), mean, std


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("a", [0.3, 0.7])
def test_log_prob_matches_closed_form(shift, a):
    s = _scheduler(shift=shift)
    x, v, prev = torch.randn(3, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64).unbind(0)
    for i in (0, 4, 9):
        mean, std = flow_sde_mean_std(s, v, i, x, a)
        _, lp = flow_sde_step_with_logprob(s, v, i, x, a, prev_sample=prev)
        ref_lp, ref_mean, ref_std = _closed_form(s, v, i, x, prev, a)
        assert lp.shape == (3,) and std.shape == (3,) and std.dtype == torch.float64
        torch.testing.assert_close(mean, ref_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(std, torch.full((3,), ref_std, dtype=torch.float64), rtol=1e-12, atol=0)
        torch.testing.assert_close(lp, ref_lp, rtol=1e-10, atol=1e-10)


def test_scalar_case_by_hand():
    """sigmas [1, 0.5, 0], a = 0.5, x = 2, v = -1. Step 0 (sigma = 1, so 1 - sigma -> 1 - sigmas[1] = 0.5):
    e^2 = 0.25 * 1 / 0.5 = 0.5, mean = 2 + (-1 + 0.5 / 2 * 2) * (-0.5) = 2.25, std = sqrt(0.5 * 0.5) = 0.5.
    Step 1 (sigma = 0.5): e^2 = 0.25, mean = 2 + (-1 + 0.25 * (2 - 0.5)) * (-0.5) = 2.3125, std = 0.5 * sqrt(0.5)."""
    s = FlowMatchEulerDiscreteScheduler()
    s.set_timesteps(sigmas=[1.0, 0.5])
    x, v = torch.tensor([[2.0]]), torch.tensor([[-1.0]])
    for i, (want_mean, want_std) in enumerate([(2.25, 0.5), (2.3125, 0.5 * math.sqrt(0.5))]):
        mean, std = flow_sde_mean_std(s, v, i, x, 0.5)
        assert mean.item() == pytest.approx(want_mean, abs=1e-6)
        assert std.item() == pytest.approx(want_std, rel=1e-12)


def _toy_velocity(x, sigma):
    return torch.sin(3 * x) * (1 + sigma) - 0.5 * x


@pytest.mark.parametrize("shift", SHIFTS)
def test_ode_step_equals_stock_step_and_is_the_sde_limit(shift):
    s = _scheduler(steps=8, shift=shift)  # a fresh chain: the stock step's internal step counter starts at None
    ours = stock = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    for i, t in enumerate(s.timesteps):
        v = _toy_velocity(ours, float(s.sigmas[i]))
        stock = s.step(v, t, ours).prev_sample
        nxt = flow_ode_step(s, v, i, ours)
        assert torch.equal(nxt, stock), f"step {i}"
        gaps = [(flow_sde_mean_std(s, v, i, ours, a)[0] - stock).abs().max().item() for a in (1e-1, 1e-2, 1e-3)]
        assert gaps[2] < 1e-5 and gaps[2] <= gaps[1] <= gaps[0], gaps  # the correction is O(a^2)
        ours = nxt


@pytest.mark.parametrize("shift", SHIFTS)
def test_sde_preserves_marginals_of_a_gaussian(shift):
    """x0 ~ N(m, s^2): the exact velocity E[noise - x0 | x_sigma] is linear in x. From pure noise, the SDE (a = 0.7)
    ends at N(m, s^2) up to Euler error, like the ODE; with the drift correction's sign flipped it does not."""
    m, sd, n = 1.5, 0.5, 20000

    def velocity(x, sig):
        mu, var = (1 - sig) * m, (1 - sig) ** 2 * sd**2 + sig**2
        return -m + (sig - (1 - sig) * sd**2) * (x - mu) / var  # E[noise|x] - E[x0|x] from the joint Gaussian

    sch = _scheduler(steps=30, shift=shift)
    g = torch.Generator().manual_seed(0)
    sde = ode = flipped = torch.randn(n, 1, generator=g, dtype=torch.float64)
    for i in range(30):
        sig = float(sch.sigmas[i])
        sde, _ = flow_sde_step_with_logprob(sch, velocity(sde, sig), i, sde, 0.7, generator=g)
        ode = flow_ode_step(sch, velocity(ode, sig), i, ode)
        mean, std = flow_sde_mean_std(sch, velocity(flipped, sig), i, flipped, 0.7)
        mean = 2 * flow_ode_step(sch, velocity(flipped, sig), i, flipped) - mean  # ode - correction
        flipped = mean + std[:, None] * torch.randn(n, 1, generator=g, dtype=torch.float64)
    assert abs(sde.mean() - m) < 0.03 and abs(sde.std() - sd) < 0.05, (sde.mean(), sde.std())
    assert abs(sde.mean() - ode.mean()) < 0.03 and abs(sde.std() - ode.std()) < 0.03, (ode.mean(), ode.std())
    assert flipped.std() > 2 * sd  # the check has teeth: a flipped sign adds variance instead of removing it


def _explore_case():
    s = _scheduler()
    x, v, prev = torch.randn(3, 2, 4, 8, 8, generator=torch.Generator().manual_seed(2)).unbind(0)
    return s, x, v, prev


def test_explore_grid_log_prob_uses_explored_coordinates_only():
    s, x, v, prev = _explore_case()
    g, a, i = 2, 0.7, 3
    mean, std = flow_sde_mean_std(s, v, i, x, a, explore_grid=g)
    _, lp = flow_sde_step_with_logprob(s, v, i, x, a, prev_sample=prev, explore_grid=g)
    ref = torch.distributions.Normal(explore_coords(mean.double(), g), std[:, None, None, None])
    torch.testing.assert_close(lp, ref.log_prob(explore_coords(prev.double(), g)).flatten(1).mean(1).float())
    w = torch.randn(prev.shape, generator=torch.Generator().manual_seed(3))
    _, lp_orth = flow_sde_step_with_logprob(s, v, i, x, a, prev_sample=prev + w - explore_project(w, g), explore_grid=g)
    torch.testing.assert_close(lp_orth, lp)  # moving outside the explored subspace changes nothing
    _, lp_in = flow_sde_step_with_logprob(s, v, i, x, a, prev_sample=prev + explore_project(w, g), explore_grid=g)
    assert (lp_in - lp).abs().min() > 1e-3


def test_explore_grid_mean_is_ode_outside_and_sde_inside_the_subspace():
    s, x, v, _ = _explore_case()
    g, a, i = 2, 0.7, 5
    mean, _ = flow_sde_mean_std(s, v, i, x, a, explore_grid=g)
    full, _ = flow_sde_mean_std(s, v, i, x, a)
    ode = flow_ode_step(s, v, i, x)
    outside = lambda z: z - explore_project(z, g)  # noqa: E731
    torch.testing.assert_close(outside(mean), outside(ode))
    torch.testing.assert_close(explore_project(mean, g), explore_project(full, g))
    # a sampled step moves away from the mean only inside the explored subspace, with the same white noise drawn
    nxt, _ = flow_sde_step_with_logprob(s, v, i, x, a, generator=torch.Generator().manual_seed(4), explore_grid=g)
    nxt_full, _ = flow_sde_step_with_logprob(s, v, i, x, a, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(outside(nxt - mean), torch.zeros_like(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(nxt - mean, explore_project(nxt_full - full, g), atol=1e-5, rtol=1e-5)


def test_explore_grid_equal_to_latent_size_is_full_exploration():
    s, x, v, prev = _explore_case()
    for got, want in zip(
        flow_sde_step_with_logprob(s, v, 2, x, 0.7, generator=torch.Generator().manual_seed(5), explore_grid=8),
        flow_sde_step_with_logprob(s, v, 2, x, 0.7, generator=torch.Generator().manual_seed(5)),
    ):
        torch.testing.assert_close(got, want)
    _, lp_g = flow_sde_step_with_logprob(s, v, 2, x, 0.7, prev_sample=prev, explore_grid=8)
    _, lp = flow_sde_step_with_logprob(s, v, 2, x, 0.7, prev_sample=prev)
    torch.testing.assert_close(lp_g, lp)


@pytest.mark.parametrize("shift", SHIFTS)
def test_per_sample_step_index_equals_scalar_calls(shift):
    s = _scheduler(shift=shift)
    x, v, prev = torch.randn(3, 3, 4, 8, 8, generator=torch.Generator().manual_seed(6)).unbind(0)
    idx = torch.tensor([0, 5, 9])
    mean, std = flow_sde_mean_std(s, v, idx, x, 0.7)
    _, lp = flow_sde_step_with_logprob(s, v, idx, x, 0.7, prev_sample=prev, explore_grid=4)
    ode = flow_ode_step(s, v, idx, x)
    for b, i in enumerate(idx.tolist()):
        sl = slice(b, b + 1)
        mean_i, std_i = flow_sde_mean_std(s, v[sl], i, x[sl], 0.7)
        _, lp_i = flow_sde_step_with_logprob(s, v[sl], i, x[sl], 0.7, prev_sample=prev[sl], explore_grid=4)
        torch.testing.assert_close(mean[sl], mean_i)
        torch.testing.assert_close(std[sl], std_i)
        torch.testing.assert_close(lp[sl], lp_i)
        torch.testing.assert_close(ode[sl], flow_ode_step(s, v[sl], i, x[sl]))


def test_sampled_step_is_a_constant_action_and_log_prob_is_differentiable():
    s = _scheduler()
    x = torch.randn(2, 4, 8, 8)
    v = torch.randn(2, 4, 8, 8, requires_grad=True)
    nxt, lp = flow_sde_step_with_logprob(s, v, 3, x, 0.7, generator=torch.Generator().manual_seed(7))
    assert not nxt.requires_grad and nxt.dtype == x.dtype
    _, lp2 = flow_sde_step_with_logprob(s, v, 3, x, 0.7, prev_sample=nxt)
    torch.testing.assert_close(lp, lp2)
    lp.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0


def test_half_precision_keeps_dtype_and_matches_float32():
    s = _scheduler()
    x, v = torch.randn(2, 2, 4, 8, 8).unbind(0)
    for i in (0, 9):
        got = flow_ode_step(s, v.bfloat16(), i, x.bfloat16())
        mean, _ = flow_sde_mean_std(s, v.bfloat16(), i, x.bfloat16(), 0.7)
        assert got.dtype == mean.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), flow_ode_step(s, v, i, x), atol=0.05, rtol=0.02)
        torch.testing.assert_close(mean.float(), flow_sde_mean_std(s, v, i, x, 0.7)[0], atol=0.05, rtol=0.02)


def test_error_messages():
    s = _scheduler(steps=4)
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match="needs a diffusers FlowMatchEulerDiscreteScheduler.*b2lib.policies.ddim"):
        flow_sde_mean_std(DDIMScheduler(), x, 0, x, 0.7)
    with pytest.raises(ValueError, match=r"call `scheduler.set_timesteps\(num_steps\)` first"):
        flow_ode_step(FlowMatchEulerDiscreteScheduler(), x, 0, x)
    for a in (0.0, -0.1):
        with pytest.raises(ValueError, match="needs a stochastic step.*use flow_ode_step"):
            flow_sde_step_with_logprob(s, x, 0, x, a)
    with pytest.raises(ValueError, match=r"velocity shape \(2, 4, 8, 4\) != sample shape"):
        flow_sde_mean_std(s, x[..., :4], 0, x, 0.7)
    with pytest.raises(ValueError, match=r"prev_sample shape \(1, 4, 8, 8\)"):
        flow_sde_step_with_logprob(s, x, 0, x, 0.7, prev_sample=x[:1])
    with pytest.raises(ValueError, match=r"must be batched"):
        flow_ode_step(s, x[0, 0, 0], 0, x[0, 0, 0])
    for bad in (4, -1, torch.tensor([0, 7])):
        with pytest.raises(ValueError, match=r"out of range: this chain has 4 steps, indices 0\.\.3"):
            flow_sde_mean_std(s, x, bad, x, 0.7)
    with pytest.raises(ValueError, match=r"scalar or one per sample, shape \(2,\)"):
        flow_ode_step(s, x, torch.tensor([0, 1, 2]), x)
    with pytest.raises(ValueError, match="not timesteps"):
        flow_sde_mean_std(s, x, s.timesteps[0], x, 0.7)
    with pytest.raises(ValueError, match="must divide the latent size"):
        flow_sde_mean_std(s, x, 0, x, 0.7, explore_grid=3)
    z = FlowMatchEulerDiscreteScheduler()
    z.set_timesteps(sigmas=[1.0, 0.5, 0.0])  # a custom chain whose last step starts at sigma = 0: std 0
    with pytest.raises(ValueError, match=r"step_index \[2\] has std \[0\.0\].*with a density: 0\.\.1.*flow_ode_step"):
        flow_sde_step_with_logprob(z, x, torch.tensor([1, 2]), x, 0.7)
    flow_sde_step_with_logprob(z, x, 1, x, 0.7)  # the steps with a density still work
