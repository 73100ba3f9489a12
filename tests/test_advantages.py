import numpy as np
import pytest
import torch

from b2lib.advantages import HistoryNormalizer, PerPromptStatTracker, select_in_groups, weighted_advantages
from b2lib.losses import ppo_clip_loss


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
