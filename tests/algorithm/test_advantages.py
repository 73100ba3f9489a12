import numpy as np
import pytest
import torch

from b2lib.algorithm.advantages import (
    HistoryNormalizer,
    PerPromptStatTracker,
    group_ids_of,
    group_relative_advantages,
    select_in_groups,
    weighted_advantages,
)


def test_history_normalizer_closed_form():
    rng = np.random.default_rng(0)
    norm = HistoryNormalizer(history=2)
    prompts = ["a", "b", "a", "b", "a"]
    stages = [rng.normal(size=5) for _ in range(4)]
    past = []
    for r in stages:
        z = norm(prompts, r).numpy()
        for p in "ab":
            idx = [i for i, q in enumerate(prompts) if q == p]
            pool = np.concatenate([s[idx] for s in past[-2:]] + [r[idx]])
            expected = (r[idx] - pool.mean()) / (pool.std(ddof=1) + 1e-8)
            np.testing.assert_allclose(z[idx], expected, rtol=1e-5, atol=1e-6)
        past.append(r)


def test_history_normalizer_single_sample_is_zero_and_state_roundtrip():
    norm = HistoryNormalizer(history=8)
    assert norm(["x"], [3.0]).tolist() == [0.0]
    state = norm.state_dict()
    other = HistoryNormalizer()
    other.load_state_dict(state)
    torch.testing.assert_close(other(["x", "x"], [1.0, 2.0]), norm(["x", "x"], [1.0, 2.0]))


def test_per_prompt_tracker_matches_ddpo():
    tr = PerPromptStatTracker(buffer_size=4, min_count=3)
    r1 = np.array([1.0, 2.0, 3.0, 10.0])
    a1 = tr(["p", "p", "q", "q"], r1).numpy()  # fewer than min_count: batch statistics
    np.testing.assert_allclose(a1, (r1 - r1.mean()) / (r1.std() + 1e-6), rtol=1e-5)
    r2 = np.array([4.0, 5.0, 6.0])
    a2 = tr(["p", "p", "p"], r2).numpy()  # p now has [1, 2, 4, 5, 6][-4:] = [2, 4, 5, 6]
    buf = np.array([2.0, 4.0, 5.0, 6.0])
    np.testing.assert_allclose(a2, (r2 - buf.mean()) / (buf.std() + 1e-6), rtol=1e-5)


def _brute_force_select(z, groups, pos, neg):
    mask = np.zeros(len(z), dtype=bool)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        best, worst = idx[np.argmax(z[idx])], idx[np.argmin(z[idx])]
        if z[best] >= pos:
            mask[best] = True
        if z[worst] < neg:
            mask[worst] = True
    return mask


@pytest.mark.parametrize("seed", range(5))
def test_select_in_groups_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    z = np.round(rng.normal(size=40), 1)  # rounding creates ties
    groups = rng.permutation(np.repeat(np.arange(8), 5))
    mask = select_in_groups(torch.tensor(z), torch.tensor(groups), 0.5, -0.5).numpy()
    np.testing.assert_array_equal(mask, _brute_force_select(z, groups, 0.5, -0.5))


def test_select_keeps_at_most_two_per_group_and_respects_thresholds():
    z = torch.tensor([0.9, 0.1, -0.8, 0.2, 0.3, 0.4, -2.0, -1.0, -0.9])
    g = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert select_in_groups(z, g, 0.5, -0.5).tolist() == [True, False, True, False, False, False, True, False, False]
    with pytest.raises(ValueError):
        select_in_groups(z, g[:3])


def test_weighted_advantages():
    z = torch.tensor([-7.0, -1.0, 0.0, 2.0, 9.0])
    a = weighted_advantages(z, adv_clip=5.0, pos_weight=2.0, neg_weight=0.5)
    assert a.tolist() == [-2.5, -0.5, 0.0, 4.0, 10.0]


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
