"""The DPOK/GRPO pieces against closed forms: Gaussian KL, group-relative advantages, the KL-regularised loss."""

import pytest
import torch

from b2lib.algorithm.losses import gaussian_kl, kl_regularised_loss, needs_reference, policy_loss, ppo_clip_loss
from b2lib.policies.ddim import ddim_log_prob


def _normals(batch=3, shape=(4, 5, 5), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(batch, *shape, generator=g, dtype=dtype)
    ref = mean + 0.3 * torch.randn(batch, *shape, generator=g, dtype=dtype)
    std = torch.rand(batch, generator=g, dtype=dtype) * 0.5 + 0.05  # one sigma_t per sample (per timestep)
    return mean, ref, std


# ----------------------------------------------------------------------------------------------------- Gaussian KL
def test_gaussian_kl_matches_torch_distributions():
    mean, ref, std = _normals()
    kl = gaussian_kl(mean, ref, std)
    s = std.reshape(-1, 1, 1, 1).expand_as(mean)
    expected = (
        torch.distributions.kl_divergence(torch.distributions.Normal(mean, s), torch.distributions.Normal(ref, s))
        .flatten(1)
        .mean(1)
    )  # mean over latent dims, the log-prob convention
    assert kl.shape == (3,)
    torch.testing.assert_close(kl, expected, rtol=1e-10, atol=1e-12)
    # std already broadcastable gives the same
    torch.testing.assert_close(gaussian_kl(mean, ref, std.reshape(-1, 1, 1, 1)), kl)


def test_gaussian_kl_is_zero_at_the_reference_with_zero_gradient():
    mean, _, std = _normals()
    mean.requires_grad_(True)
    kl = gaussian_kl(mean, mean.detach().clone(), std)
    assert torch.equal(kl, torch.zeros(3, dtype=kl.dtype))
    kl.sum().backward()
    assert torch.equal(mean.grad, torch.zeros_like(mean))


def test_gaussian_kl_half_precision_is_computed_in_float32():
    mean, ref, std = _normals(dtype=torch.float32)
    kl16 = gaussian_kl(mean.half(), ref.half(), std)
    assert kl16.dtype == torch.float32
    torch.testing.assert_close(kl16, gaussian_kl(mean, ref, std), rtol=2e-2, atol=1e-3)
    with pytest.raises(ValueError, match="equal"):
        gaussian_kl(mean, ref[:2], std)


# ------------------------------------------------------------------------------------------ KL-regularised loss
def test_dpok_loss_gradient_wrt_mean_is_analytic():
    """d/d mu of  mean_b max(-A r, -A clip(r)) + beta * mean_b KL_b,  log r = log N(x; mu, s^2) - old (mean over D)."""
    mean, ref, std = _normals(batch=3)
    g = torch.Generator().manual_seed(2)
    x = mean + std.reshape(-1, 1, 1, 1) * torch.randn(mean.shape, generator=g, dtype=mean.dtype)
    adv = torch.tensor([1.5, -0.8, 2.0], dtype=mean.dtype)
    beta, eps = 0.3, 0.1
    mu = mean.clone().requires_grad_(True)
    log_prob = ddim_log_prob(x, mu, std)
    # rows 0 and 1 inside the trust region (r = exp(+-0.05)); row 2 beyond it with A > 0: clipped, no PG gradient
    old = log_prob.detach() - torch.tensor([0.05, -0.05, 0.5], dtype=mean.dtype)
    kl = gaussian_kl(mu, ref, std)
    loss, stats = policy_loss("dpok", log_prob, old, adv, eps, kl, beta)
    loss.backward()

    n, d = mean.shape[0], mean[0].numel()
    s2 = std.reshape(-1, 1, 1, 1) ** 2
    ratio = torch.exp(log_prob.detach() - old).reshape(-1, 1, 1, 1)
    active = torch.tensor([1.0, 1.0, 0.0], dtype=mean.dtype).reshape(-1, 1, 1, 1)
    pg = -adv.reshape(-1, 1, 1, 1) * ratio * active * (x - mean) / (s2 * d)
    kl_grad = beta * (mean - ref) / (s2 * d)
    torch.testing.assert_close(mu.grad, (pg + kl_grad) / n, rtol=1e-9, atol=1e-12)
    assert stats["kl"].item() == pytest.approx(kl.mean().item())
    assert stats["clipfrac"].item() == pytest.approx(1 / 3)


def test_kl_regularised_loss_is_ppo_plus_kl_and_ppo_is_unchanged():
    g = torch.Generator().manual_seed(3)
    lp, old, adv, kl = (torch.randn(8, generator=g) * 0.1 for _ in range(4))
    kl = kl.abs()
    ppo, ppo_stats = ppo_clip_loss(lp, old, adv, 0.1)
    for algorithm in ("dpok", "grpo"):
        loss, stats = policy_loss(algorithm, lp, old, adv, 0.1, kl, 0.5)
        torch.testing.assert_close(loss, ppo + 0.5 * kl.mean())
        torch.testing.assert_close(stats["policy_loss"], ppo)
        torch.testing.assert_close(stats["approx_kl"], ppo_stats["approx_kl"])
    # kl_coef = 0 and KL = 0 (model == reference) both give PPO's loss
    torch.testing.assert_close(kl_regularised_loss(lp, old, adv, 0.1, kl, 0.0)[0], ppo)
    torch.testing.assert_close(kl_regularised_loss(lp, old, adv, 0.1, torch.zeros(8), 5.0)[0], ppo)
    loss, stats = policy_loss("ppo", lp, old, adv, 0.1)
    torch.testing.assert_close(loss, ppo)
    assert "kl" not in stats


def test_policy_loss_errors_name_the_fix():
    x = torch.zeros(4)
    with pytest.raises(ValueError, match="pass kl"):
        policy_loss("grpo", x, x, x, 0.1)
    with pytest.raises(ValueError, match="Unknown algorithm"):
        policy_loss("trpo", x, x, x, 0.1)
    with pytest.raises(ValueError, match="kl_coef"):
        kl_regularised_loss(x, x, x, 0.1, x, -1.0)
    with pytest.raises(ValueError, match="shape"):
        kl_regularised_loss(x, x, x, 0.1, torch.zeros(3), 0.1)
    assert [needs_reference(a) for a in ("ppo", "dpok", "grpo")] == [False, True, True]


def test_ppo_clip_loss_closed_form():
    old = torch.zeros(4)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    new = torch.log(torch.tensor([1.05, 1.5, 0.5, 1.05])).requires_grad_(True)
    loss, stats = ppo_clip_loss(new, old, adv, clip_range=0.1)
    # per element: max(-A r, -A clip(r)) = [-1.05, -1.1, 0.9, 1.05]
    torch.testing.assert_close(loss, torch.tensor([-1.05, -1.1, 0.9, 1.05]).mean())
    assert stats["clipfrac"].item() == 0.5
    loss.backward()
    # clipped terms carry no gradient; unclipped ones d(-A r)/dlogp = -A r / 4
    torch.testing.assert_close(new.grad, torch.tensor([-1.05 / 4, 0.0, 0.0, 1.05 / 4]))
    with pytest.raises(ValueError):
        ppo_clip_loss(new, old[:2], adv, 0.1)
