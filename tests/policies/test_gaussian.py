"""The Gaussian step both policies share (``b2lib.policies.gaussian``): the log-density against torch's Normal, the
draw against its closed form, the exploration lattice as an orthogonal projection."""

import pytest
import torch

from b2lib.policies.gaussian import explore_coords, explore_project, gaussian_log_prob, gaussian_step, step_log_prob


def test_log_prob_is_the_normal_density_averaged_over_dimensions():
    g = torch.Generator().manual_seed(0)
    x, mean = torch.randn(2, 3, 4, 8, 8, generator=g, dtype=torch.float64)
    std = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    want = torch.distributions.Normal(mean, std.view(3, 1, 1, 1)).log_prob(x).flatten(1).mean(1)
    torch.testing.assert_close(gaussian_log_prob(x, mean, std.view(3, 1, 1, 1)), want)
    torch.testing.assert_close(step_log_prob(x, mean, std), want)


@pytest.mark.parametrize("work_dtype", [None, torch.float32])
def test_step_draws_mean_plus_std_noise_and_scores_its_draw(work_dtype):
    g = torch.Generator().manual_seed(1)
    sample, mean = torch.randn(2, 2, 4, 8, 8, generator=g)
    std = torch.tensor([0.3, 0.7])
    prev, lp = gaussian_step(mean, std, sample, None, torch.Generator().manual_seed(2), 0, torch.float32, work_dtype)
    noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(prev, mean + std.view(2, 1, 1, 1) * noise)
    torch.testing.assert_close(lp, step_log_prob(prev, mean, std))
    again, lp2 = gaussian_step(mean, std, sample, prev, None, 0, torch.float32, work_dtype)  # a given action
    assert torch.equal(again, prev) and torch.equal(lp2, lp)
    with pytest.raises(ValueError, match="shape"):
        gaussian_step(mean, std, sample, prev[:1], None, 0, torch.float32, work_dtype)


def test_coarse_step_draws_on_the_lattice_only():
    g = torch.Generator().manual_seed(3)
    sample, mean = torch.randn(2, 1, 4, 8, 8, generator=g)
    std = torch.tensor([1.0])
    prev, _ = gaussian_step(mean, std, sample, None, torch.Generator().manual_seed(4), 2, torch.float32)
    torch.testing.assert_close(explore_project(prev - mean, 2), prev - mean)  # the noise is cell-constant


def test_explore_project_is_an_orthogonal_projection_and_coords_an_isometry():
    from b2lib.policies.gaussian import explore_project

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 3, 4, 8, 8, generator=g, dtype=torch.float64)
    p = explore_project(x, 2)
    torch.testing.assert_close(explore_project(p, 2), p)  # idempotent
    torch.testing.assert_close((p * y).sum(), (x * explore_project(y, 2)).sum())  # self-adjoint
    # constant on each 4x4 cell, and the cell's mean of x
    torch.testing.assert_close(p[:, :, :4, :4], x[:, :, :4, :4].mean((-2, -1), keepdim=True).expand(3, 4, 4, 4))
    c = explore_coords(x, 2)
    assert c.shape == (3, 4, 2, 2)
    torch.testing.assert_close((c**2).sum((1, 2, 3)), (p**2).sum((1, 2, 3)))  # |P^T x| = |P P^T x|
    assert explore_project(x, 0) is x and explore_coords(x, 0) is x
    torch.testing.assert_close(explore_project(x, 8), x)  # cells of one latent: the identity
    with pytest.raises(ValueError, match="divide"):
        explore_project(x, 3)


def test_coarse_noise_has_unit_variance_in_its_coordinates():
    """Projected white noise, read in the orthonormal cell basis, is white noise of the explored dimension."""
    from b2lib.policies.gaussian import explore_project

    white = torch.randn(20000, 4, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    c = explore_coords(explore_project(white, 2), 2).flatten(1)
    cov = c.T @ c / len(c)
    torch.testing.assert_close(cov, torch.eye(16, dtype=torch.float64), atol=0.05, rtol=0)
