"""The two-level bootstrap against closed forms and limiting cases."""

import numpy as np
import pytest

from b2lib.evaluation.stats import Interval, bootstrap_difference, bootstrap_mean, per_prompt_means, verdict


def test_per_prompt_means():
    scores = np.array([[1.0, 3.0, 10.0, 20.0], [0.0, 0.0, 1.0, 1.0]])
    np.testing.assert_allclose(per_prompt_means(scores, np.array(["a", "a", "b", "b"])), [[2.0, 15.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="prompt_ids"):
        per_prompt_means(scores, np.array(["a", "b"]))


def test_a_constant_shift_has_a_zero_width_interval():
    rng = np.random.default_rng(0)
    b = rng.normal(size=(1, 200))
    prompts = np.repeat(np.arange(50), 4)
    d = bootstrap_difference(b + 0.25, b, prompts)  # paired: prompt resampling moves both sides alike
    assert d.estimate == pytest.approx(0.25)
    assert d.low == pytest.approx(0.25) and d.high == pytest.approx(0.25)
    assert d.resolved


def test_interval_width_matches_the_normal_theory():
    """One seed, iid prompt means with std 1: the 95 % interval of the mean is about +-1.96 / sqrt(P)."""
    rng = np.random.default_rng(1)
    prompts = np.arange(400)
    a = rng.normal(size=(1, 400))
    m = bootstrap_mean(a, prompts, draws=8000)
    half = (m.high - m.low) / 2
    assert half == pytest.approx(1.96 * a.std() / np.sqrt(400), rel=0.1)
    assert m.low < a.mean() < m.high


def test_seed_spread_widens_the_interval():
    rng = np.random.default_rng(2)
    prompts = np.arange(100)
    base = rng.normal(size=(1, 100))
    one = np.vstack([base[0] + 0.1] * 4)  # four identical seeds
    spread = one + np.array([[-0.3], [0.3], [-0.2], [0.2]])  # seeds that disagree, same mean
    narrow, wide = bootstrap_difference(one, base, prompts), bootstrap_difference(spread, base, prompts)
    assert narrow.estimate == pytest.approx(wide.estimate)
    assert (wide.high - wide.low) > 3 * (narrow.high - narrow.low)


def test_verdict_words():
    assert verdict(Interval(0.08, 0.03, 0.13), "b2", "ddpo") == "b2 higher, +0.080 [+0.030, +0.130]"
    assert verdict(Interval(-0.08, -0.13, -0.03), "b2", "ddpo").startswith("ddpo higher")
    assert verdict(Interval(0.01, -0.04, 0.06), "b2", "ddpo").startswith("no difference resolved")
