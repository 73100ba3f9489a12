"""The DPOK/GRPO pieces against closed forms: Gaussian KL, group-relative advantages, the KL-regularised loss."""

import pytest
import torch

from b2lib.advantages import group_ids_of, group_relative_advantages
from b2lib.ddim import ddim_log_prob
from b2lib.losses import gaussian_kl, kl_regularised_loss, needs_reference, policy_loss, ppo_clip_loss


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
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, s), torch.distributions.Normal(ref, s)
    ).flatten(1).mean(1)  # mean over latent dims, the log-prob convention
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


# ------------------------------------------------------------------------------------ group-relative advantages
def test_group_relative_advantages_standardise_each_group():
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(12, generator=g) * 3 + 2
    ids = torch.tensor([7, 7, 7, 2, 2, 2, 2, 9, 9, 9, 9, 9])  # arbitrary, unsorted ids
    z = group_relative_advantages(rewards, ids)
    assert z.shape == (12,) and z.dtype == torch.float32
    for gid in ids.unique():
        zg = z[ids == gid].double()
        assert abs(zg.mean().item()) < 1e-6
        assert zg.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-3)  # population std; eps=1e-4 << std
        rg = rewards[ids == gid].double()
        torch.testing.assert_close(zg, (rg - rg.mean()) / (rg.std(unbiased=False) + 1e-4), rtol=1e-5, atol=1e-6)


def test_group_relative_advantages_groups_are_independent():
    rewards = torch.tensor([0.1, 0.5, 0.9, 3.0, 1.0, 2.0])
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    z = group_relative_advantages(rewards, ids)
    moved = rewards.clone()
    moved[3:] = moved[3:] * 100 - 50  # an affine change of group 1 only
    z2 = group_relative_advantages(moved, ids)
    torch.testing.assert_close(z2[:3], z[:3])  # group 0 untouched
    torch.testing.assert_close(z2[3:], z[3:], rtol=1e-3, atol=1e-4)  # group 1 invariant to shift and scale (up to eps)
    # and the order of samples does not matter
    perm = torch.tensor([5, 0, 3, 1, 4, 2])
    torch.testing.assert_close(group_relative_advantages(rewards[perm], ids[perm]), z[perm])


def test_group_relative_advantages_constant_and_singleton_groups_give_zero():
    rewards = torch.tensor([0.7, 0.7, 0.7, 1.0, 2.0, 5.0])
    ids = torch.tensor([0, 0, 0, 1, 1, 2])  # group 0 constant, group 2 a single sample
    z = group_relative_advantages(rewards, ids)
    assert torch.isfinite(z).all()
    assert torch.equal(z[[0, 1, 2, 5]], torch.zeros(4))
    assert z[3] < 0 < z[4]
    assert group_relative_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.long)).shape == (0,)
    with pytest.raises(ValueError, match="equal 1-D"):
        group_relative_advantages(rewards, ids[:3])


def test_group_ids_of_prompts():
    assert group_ids_of(["b", "a", "b", "c", "a"]).tolist() == [0, 1, 0, 2, 1]


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
