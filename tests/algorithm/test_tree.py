"""Branch trees (``b2lib.algorithm.tree``): B² is the depth-1 case; node values and step-specific advantages in closed
form."""

import pytest
import torch

from b2lib.algorithm.sampling import sample_branches
from b2lib.algorithm.tree import Level, node_values, sample_tree, select_nodes, tree_advantages, tree_unet_rows

PROMPTS = ["a red circle", "two blue squares"]


@pytest.mark.parametrize("window", [None, 1])
def test_depth_one_tree_is_branch_sampling(tiny_pipe, window):
    kw = dict(num_steps=5, generator=None, window=window)
    a = sample_branches(tiny_pipe, PROMPTS, 3, 2, **{**kw, "generator": torch.Generator().manual_seed(7)})
    t = sample_tree(tiny_pipe, PROMPTS, [Level(3, 3)], **{**kw, "generator": torch.Generator().manual_seed(7)})
    b = t.leaves
    for name in ("images", "latents", "next_latents", "timesteps", "log_probs", "prompt_embeds", "group_ids"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)
    assert a.prompts == b.prompts and t.ancestors[:, 0].tolist() == list(range(6))


def test_depth_two_tree_shares_prefixes_and_counts_its_work(tiny_pipe):
    calls = []
    handle = tiny_pipe.unet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        t = sample_tree(
            tiny_pipe, PROMPTS, [Level(1, 2), Level(3, 3)], num_steps=5, generator=torch.Generator().manual_seed(0)
        )
    finally:
        handle.remove()
    assert len(calls) == 5  # one batched UNet call per step for every live node of every prompt
    assert calls == [2 * 2, 2 * 4, 2 * 4, 2 * 12, 2 * 12]  # CFG rows: prompts, then 2 nodes each, then 6 leaves each
    assert t.unet_rows == sum(calls) == tree_unet_rows(t.levels, 5, prompts=2)["tree"]
    assert len(t.leaves) == 12 and t.segments[0]["latents"].shape[:2] == (4, 2)  # level 0: 4 nodes, steps 1-2
    assert t.leaves.num_steps == 2 and t.ancestors.tolist()[:7] == [
        [0, 0],
        [0, 1],
        [0, 2],
        [1, 3],
        [1, 4],
        [1, 5],
        [2, 6],
    ]
    # siblings start their segment from their parent's state: the first stored latent is shared within a group
    first = t.leaves.latents[:, 0]
    for g in t.leaves.group_ids.unique():
        rows = first[t.leaves.group_ids == g]
        assert torch.equal(rows, rows[:1].expand_as(rows))
    assert not torch.equal(first[0], first[3])  # cousins differ: level 0's segment was stochastic
    # a level-1 node's segment starts where its level-0 parent's ended
    torch.testing.assert_close(t.segments[1]["latents"][::3, 0], t.segments[0]["next_latents"][:, -1])
    assert t.parents(1).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_tree_unet_rows_bound_closed_form():
    r = tree_unet_rows([Level(10, 4)], 20, guidance=False)  # B²: 10 prefix + 4 x 10 against 4 x 20
    assert (r["tree"], r["independent"], r["leaves"]) == (50, 80, 4) and r["ratio"] == pytest.approx(1.6)
    r = tree_unet_rows([Level(5, 2), Level(10, 2), Level(15, 2)], 20, prompts=3)
    assert r["tree"] == 2 * 3 * (5 + 2 * 5 + 4 * 5 + 8 * 5) and r["leaves"] == 24
    with pytest.raises(ValueError, match="increasing"):
        tree_unet_rows([Level(10, 2), Level(5, 2)], 20)


def test_node_values_and_advantages_on_a_toy_tree():
    # one prompt, two levels of 2: leaves (rewards) 1, 0 | 0, 0
    ancestors = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]])
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    v0, v1 = node_values(rewards, ancestors)
    assert v0.tolist() == [0.5, 0.0] and v1.tolist() == [1.0, 0.0, 0.0, 0.0]
    z0, z1 = tree_advantages(rewards, ancestors, branches=[2, 2])
    # level 0: values 0.5, 0 against their mean 0.25 -> +-0.25, std 0.25 -> +-0.25 / (0.25 + eps), eps = 1e-4
    assert z0.tolist() == pytest.approx([0.25 / (0.25 + 1e-4), -0.25 / (0.25 + 1e-4)])
    # level 1: siblings (1, 0) -> +-0.5, (0, 0) -> 0, 0; std over the prompt's 4 nodes sqrt(0.125)
    s1 = 0.125**0.5 + 1e-4
    assert z1.tolist() == pytest.approx([0.5 / s1, -0.5 / s1, 0.0, 0.0])
    # a level whose siblings all agree carries no credit (all zero, not NaN)
    z0, _ = tree_advantages(torch.tensor([1.0, 1.0, 1.0, 1.0]), ancestors, branches=[2, 2])
    assert z0.tolist() == [0.0, 0.0]


def test_advantages_are_normalised_per_prompt_and_selection_prunes_width():
    ancestors = torch.tensor([[0], [1], [2], [3]])  # two prompts, one level of 2 (B²)
    z = tree_advantages(torch.tensor([1.0, 0.0, 10.0, 0.0]), ancestors, branches=[2])[0]
    # the reward's scale per prompt does not matter (beyond eps, in reward units): z = d / (std + eps)
    assert z.tolist() == pytest.approx([0.5 / 0.5001, -0.5 / 0.5001, 5 / 5.0001, -5 / 5.0001])
    from b2lib.algorithm.advantages import group_relative_advantages  # depth 1: GRPO within the branch group

    rewards, groups = torch.tensor([0.3, 0.1, 0.2, 0.9, 0.9, 0.7]), torch.tensor([0, 0, 0, 1, 1, 1])
    ancestors1 = torch.arange(6)[:, None]
    torch.testing.assert_close(
        tree_advantages(rewards, ancestors1, branches=[3])[0], group_relative_advantages(rewards, groups)
    )
    keep = select_nodes(torch.tensor([1.0, -1.0, 0.2, -0.2]), branches=2)
    assert keep.tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="branches"):
        tree_advantages(torch.zeros(4), ancestors)


def test_depth_schedule_opens_the_deepest_level_first():
    from b2lib.algorithm.tree import depth_schedule, trained_levels

    s = depth_schedule(num_stages=6, depth=3)
    assert [trained_levels(s, i) for i in range(6)] == [[2], [2], [1, 2], [1, 2], [0, 1, 2], [0, 1, 2]]
    s = depth_schedule(num_stages=2, depth=3)  # fewer stages than levels: still ends with every level
    assert [trained_levels(s, i) for i in range(2)] == [[2], [0, 1, 2]]
    assert trained_levels(depth_schedule(4, 1), 0) == [0]  # depth 1 (B²): the one level every stage
    with pytest.raises(ValueError):
        depth_schedule(4, depth=2, start=3)
