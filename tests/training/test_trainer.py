"""End-to-end: 2-stage B² and DDPO runs on the tiny pipeline change the trained weights, within a minute on CPU."""

import math
import time

import pytest
import torch
from trainer_helpers import _small, redness

from b2lib import B2Trainer, DDPOTrainer, TrainerConfig

PROMPTS = ["a red circle", "two blue squares", "a green triangle"]


def _trainable(pipe):
    return {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "cls,config",
    [
        (B2Trainer, TrainerConfig.b2(**_small())),
        (DDPOTrainer, TrainerConfig.ddpo(**_small(num_branches=1, prompts_per_stage=12, sample_batch_size=6))),
    ],
)
def test_two_stage_run_changes_lora_weights(make_pipe, cls, config):
    t = time.perf_counter()
    pipe = make_pipe()
    frozen = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    trainer = cls(pipe, redness, PROMPTS, config)
    before = _trainable(pipe)
    assert before and all("lora" in n for n in before)
    log = trainer.train()
    after = _trainable(pipe)
    assert len(log) == 2 and trainer.stage == 2
    assert max((after[n] - before[n]).abs().max().item() for n in before) > 0
    for n, p in pipe.unet.named_parameters():  # the base weights stay frozen
        if "lora" not in n:
            assert torch.equal(p, frozen[n.replace(".base_layer", "")])
    assert log[-1]["images_seen"] == 2 * config.images_per_stage
    assert all(m["optimizer_steps"] > 0 for m in log)
    assert time.perf_counter() - t < 60


def test_b2_uses_schedule_branches_and_selection(make_pipe):
    cfg = TrainerConfig.b2(**_small(num_stages=3, split_start=2, split_end=4))
    trainer = B2Trainer(make_pipe(), redness, PROMPTS, cfg)
    log = trainer.train()
    assert [m["split_step"] for m in log] == [2, 3, 4]
    assert all(m["images"] == 4 * 3 for m in log)
    # selection keeps at most one best and one worst per branch group
    assert all(m["kept"] <= 2 * 4 for m in log)


def test_same_seed_same_run(make_pipe):
    logs = []
    for _ in range(2):
        tr = B2Trainer(make_pipe(), redness, PROMPTS, TrainerConfig.b2(**_small(num_stages=1)))
        logs.append(tr.train())
    for a, b in zip(*logs):
        assert a["reward_mean"] == b["reward_mean"] and a["loss"] == b["loss"]


def test_nan_reward_stops_with_clear_error(make_pipe):
    tr = B2Trainer(
        make_pipe(),
        lambda im, p: torch.full((im.shape[0],), float("nan")),
        PROMPTS,
        TrainerConfig.b2(**_small(num_stages=1)),
    )
    with pytest.raises(FloatingPointError, match="NaN"):
        tr.train_stage()


@pytest.mark.parametrize("algorithm", ["ppo", "dpok"])
def test_timestep_packing_changes_speed_not_the_update(make_pipe, algorithm):
    """One step per forward (the reference) and all interval steps in one forward give the same weights (with a KL
    term too: the reference forward is packed like the training one)."""
    weights = []
    for chunk in (1, 0, 2):
        cfg = TrainerConfig.b2(**_small(num_stages=1, timestep_chunk=chunk, algorithm=algorithm))
        tr = B2Trainer(make_pipe(), redness, PROMPTS, cfg)
        log = tr.train()
        assert log[0]["optimizer_steps"] > 0
        weights.append(_trainable(tr.pipe))
    for other in weights[1:]:
        for n in weights[0]:
            # Adam divides by sqrt(v): a weight whose gradient is ~0 can move by float noise of order 1e-6, so the
            # absolute tolerance sits above that and far below an update of lr (what a wrong gradient would leave).
            torch.testing.assert_close(other[n], weights[0][n], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="timestep_chunk"):
        TrainerConfig.b2(timestep_chunk=-1)


# ------------------------------------------------------------------------------------ B² around DPOK and GRPO
def _frozen_base_ok(pipe, frozen):
    for n, p in pipe.unet.named_parameters():
        if "lora" not in n:
            assert torch.equal(p, frozen[n.replace(".base_layer", "")])
            assert not p.requires_grad


@pytest.mark.parametrize("algorithm", ["dpok", "grpo"])
@pytest.mark.parametrize("method", ["b2", "ddpo"])
def test_kl_algorithms_train_lora_and_log_kl(make_pipe, algorithm, method):
    """One stage of B² (or DDPO sampling) around DPOK / GRPO: LoRA moves, the base stays, ``kl`` is logged.

    (No wall-clock bound here: the CPUs are shared; each takes ~2 s on an idle 2-core machine.)
    """
    if method == "b2":
        cls, config = B2Trainer, TrainerConfig.b2(**_small(algorithm=algorithm, num_stages=1))
    else:
        cls, config = (
            DDPOTrainer,
            TrainerConfig.ddpo(
                **_small(num_branches=1, prompts_per_stage=8, sample_batch_size=8, num_stages=1, algorithm=algorithm)
            ),
        )
    pipe = make_pipe()
    frozen = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    trainer = cls(pipe, redness, PROMPTS, config)
    before = _trainable(pipe)
    log = trainer.train()
    after = _trainable(pipe)
    assert set(after) == set(before)  # toggling the adapter for the reference left the trained set as it was
    assert max((after[n] - before[n]).abs().max().item() for n in before) > 0
    _frozen_base_ok(pipe, frozen)
    m = log[-1]
    assert m["optimizer_steps"] > 1
    # finite, and > 0: after the first optimizer step the policy has left the reference
    assert "kl" in m and math.isfinite(m["kl"]) and m["kl"] > 0


def test_kl_is_zero_at_stage_zero_and_reference_is_the_base_model(make_pipe):
    trainer = B2Trainer(make_pipe(), redness, PROMPTS, TrainerConfig.b2(**_small(algorithm="dpok", num_stages=1)))
    traj, _ = trainer.sample_stage(0)
    rows = torch.arange(len(traj)).repeat_interleave(traj.num_steps)
    cols = torch.arange(traj.num_steps).repeat(len(traj))
    with torch.no_grad():
        log_prob, kl = trainer.policy_terms(traj, rows, cols)
    # LoRA starts at zero: the policy is the reference (KL 0) and the sampler (ratio 1)
    assert kl.shape == (len(rows),) and kl.abs().max().item() < 1e-10
    torch.testing.assert_close(log_prob, traj.log_probs[rows, cols], rtol=1e-5, atol=1e-5)

    # move the adapter: the reference (adapter off) is still exactly the untouched base UNet, the policy is not
    with torch.no_grad():
        for n, p in trainer.pipe.unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    flags = {n: p.requires_grad for n, p in trainer.pipe.unet.named_parameters()}
    with torch.no_grad():
        _, kl = trainer.policy_terms(traj, rows, cols)
    assert kl.min().item() > 0
    assert flags == {n: p.requires_grad for n, p in trainer.pipe.unet.named_parameters()}
    from b2lib.algorithm.sampling import transition_policy
    from b2lib.training.models import adapters_disabled

    base = make_pipe().unet  # same seed, no adapter
    args = (trainer.pipe.scheduler, traj, rows[:4], cols[:4], trainer.config.guidance_scale, trainer.config.eta)
    with torch.no_grad():
        with adapters_disabled(trainer.pipe.unet):
            ref = transition_policy(trainer.pipe.unet, *args)[1]
        adapted = transition_policy(trainer.pipe.unet, *args)[1]
        torch.testing.assert_close(ref, transition_policy(base, *args)[1])
        assert (adapted - ref).abs().max().item() > 1e-4
    with pytest.raises(ValueError, match="use_lora=True"):
        with adapters_disabled(base):
            pass


def test_grpo_advantages_are_group_relative(make_pipe):
    from b2lib.algorithm.advantages import group_ids_of, group_relative_advantages, weighted_advantages

    cfg = TrainerConfig.ddpo(**_small(num_branches=1, prompts_per_stage=12, sample_batch_size=12, algorithm="grpo"))
    trainer = DDPOTrainer(make_pipe(), redness, PROMPTS, cfg)
    traj, rewards = trainer.sample_stage(0)
    adv, keep = trainer.advantages(traj, rewards)
    assert len(set(traj.group_ids.tolist())) == len(traj)  # plain sampling: one group id per sample...
    z = group_relative_advantages(rewards, group_ids_of(traj.prompts))  # ...so GRPO groups by prompt
    torch.testing.assert_close(adv, weighted_advantages(z, cfg.adv_clip))
    assert keep.all()
    for p in set(traj.prompts):
        idx = [i for i, q in enumerate(traj.prompts) if q == p]
        if len(idx) > 1:
            assert abs(adv[idx].mean().item()) < 1e-5
    # under B², the branch groups, then selection on the group-relative z
    cfg = TrainerConfig.b2(**_small(algorithm="grpo", num_stages=1))
    trainer = B2Trainer(make_pipe(), redness, PROMPTS, cfg)
    traj, rewards = trainer.sample_stage(0)
    adv, keep = trainer.advantages(traj, rewards)
    z = group_relative_advantages(rewards, traj.group_ids)
    torch.testing.assert_close(adv, weighted_advantages(z, cfg.adv_clip))
    assert 0 < keep.sum() <= 2 * len(set(traj.group_ids.tolist()))


def test_samples_per_prompt_groups_plain_samples(make_pipe):
    cfg = TrainerConfig.ddpo(
        **_small(
            num_branches=1,
            prompts_per_stage=6,
            sample_batch_size=6,
            num_stages=1,
            samples_per_prompt=3,
            algorithm="grpo",
        )
    )
    tr = DDPOTrainer(make_pipe(), redness, PROMPTS, cfg)
    traj, rewards = tr.sample_stage(0)
    assert len(traj) == 6 and traj.prompts[0] == traj.prompts[1] == traj.prompts[2]
    assert traj.prompts[3] == traj.prompts[4] == traj.prompts[5]
    adv, keep = tr.advantages(traj, rewards)
    assert abs(float(adv[:3].sum())) < 1e-4  # group-relative: zero mean within the prompt's group
    with pytest.raises(ValueError, match="samples_per_prompt"):
        TrainerConfig.b2(samples_per_prompt=2)


def test_flat_groups_counts_groups_without_signal():
    from b2lib.training.trainer import flat_groups

    rewards = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.5])
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert flat_groups(rewards, groups) == 1  # group 0 all fail; group 1 mixed; group 2 not flat (0.5)
    assert flat_groups(torch.ones(4), torch.tensor([0, 0, 1, 1])) == 2
    # below the stage's mean (0.39): the all-fail group 0; group 2 (1, 1, 0.5) is not flat
    assert flat_groups(rewards, groups, below=float(rewards.mean())) == 1
    both = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    assert flat_groups(both, torch.tensor([0, 0, 1, 1, 2, 2]), below=0.5) == 1


def test_stage_logs_health_and_cost(make_pipe):
    cfg = TrainerConfig.b2(**_small(num_stages=1))
    m = B2Trainer(make_pipe(), redness, PROMPTS, cfg).train()[0]
    for key in (
        "approx_kl",
        "clipfrac",
        "grad_norm",
        "update_norm",
        "rel_update",
        "kept",
        "flat_groups",
        "flat_low_groups",
        "groups",
        "unet_rows_sample",
        "unet_rows_train",
        "unet_rows_seen",
    ):
        assert key in m, key
    assert m["unet_rows_seen"] == m["unet_rows_sample"] + m["unet_rows_train"] > 0
    assert m["rel_update"] > 0
    assert m["groups"] == cfg.prompts_per_stage and 0 <= m["flat_low_groups"] <= m["flat_groups"] <= m["groups"]


def test_lora_targets_all_wraps_convolutions(make_pipe):
    pipe = make_pipe()
    from b2lib.training.trainer import RLTrainer

    RLTrainer(pipe, redness, PROMPTS, TrainerConfig.b2(**_small(lora_targets="all")))
    names = [n for n, p in pipe.unet.named_parameters() if p.requires_grad]
    assert any("conv1.lora_A" in n for n in names) and any("to_q.lora_A" in n for n in names)
    with pytest.raises(ValueError, match="lora_targets"):
        TrainerConfig.b2(lora_targets="everything")


def test_state_dict_round_trip_gives_the_same_next_stage(make_pipe):
    cfg = TrainerConfig.b2(**_small(num_stages=2))
    first = B2Trainer(make_pipe(), redness, PROMPTS, cfg)
    first.train_stage()
    state = first.state_dict()
    assert state["stage"] == 1 and set(state["trainable"]) == set(first.named_trainable())
    copy = B2Trainer(make_pipe(), redness, PROMPTS, cfg)
    copy.load_state_dict(state)
    a, b = first.train_stage(), copy.train_stage()
    for key in ("reward_mean", "loss", "grad_norm", "update_norm"):
        assert a[key] == b[key]
    other = B2Trainer(make_pipe(), redness, PROMPTS, TrainerConfig.b2(**_small(lora_rank=2)))
    with pytest.raises(ValueError, match="different trainable parameters"):
        other.load_state_dict(state)


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_coarse_exploration_trains_on_its_own_policy(make_pipe, algorithm):
    """explore_grid reaches sampling and the update: before the first step the recomputed log-probs equal the stored
    ones (ratio 1, KL 0 to the base model), the stored noise lives on the lattice, and a stage moves the adapter."""
    from b2lib.policies.gaussian import explore_project

    cfg = TrainerConfig.b2(**_small(num_stages=1, window=1, explore_grid=2, algorithm=algorithm))
    trainer = B2Trainer(make_pipe(), redness, PROMPTS, cfg)
    traj, rewards = trainer.sample_stage(0)
    rows = torch.arange(len(traj)).repeat_interleave(traj.num_steps)
    cols = torch.arange(traj.num_steps).repeat(len(traj))
    with torch.no_grad():
        log_prob, kl = trainer.policy_terms(traj, rows, cols)
    torch.testing.assert_close(log_prob, traj.log_probs[rows, cols], rtol=1e-5, atol=1e-5)
    if kl is not None:
        assert kl.abs().max().item() < 1e-10
    diff = traj.next_latents[1, 0] - traj.next_latents[0, 0]  # two branches of one prefix, first trained step
    torch.testing.assert_close(diff, explore_project(diff[None], 2)[0], atol=1e-5, rtol=0)
    before = _trainable(trainer.pipe)
    trainer.train()
    after = _trainable(trainer.pipe)
    assert max((after[n] - before[n]).abs().max().item() for n in before) > 0


def test_depth_one_tree_trains_like_b2_with_group_relative_advantages(make_pipe):
    """B² is the depth-1 tree: with one level at B²'s branch point, the trainer samples the same images, keeps the same
    transitions and moves the adapter the same way as B² with group-relative advantages (z within the branch group;
    the tree divides by the group's std, grpo by std + 1e-4, hence the tolerance)."""
    common = _small(window=1, algorithm="grpo", num_stages=1, progressive=False, split_start=3, split_end=3)
    runs = {}
    for name, cfg in {
        "b2": TrainerConfig.b2(**common),
        "tree": TrainerConfig.b2(**common, tree=((3, 3),)),
    }.items():
        trainer = B2Trainer(make_pipe(), redness, PROMPTS, cfg)
        before = _trainable(trainer.pipe)
        log = trainer.train()
        runs[name] = (log[0], {n: p - before[n] for n, p in _trainable(trainer.pipe).items()})
    (b2, db2), (tree, dtree) = runs["b2"], runs["tree"]
    assert tree["reward_mean"] == b2["reward_mean"] and tree["images"] == b2["images"] == 12
    assert (tree["kept"], tree["kept_pos"], tree["kept_neg"]) == (b2["kept"], b2["kept_pos"], b2["kept_neg"])
    assert tree["split_step"] == b2["split_step"] == 3 and tree["tree_levels"] == 1
    assert tree["unet_rows_sample"] == b2["unet_rows_sample"] and tree["unet_rows_train"] == b2["unet_rows_train"]
    assert max(d.abs().max().item() for d in db2.values()) > 0
    for n in db2:
        torch.testing.assert_close(dtree[n], db2[n], rtol=1e-2, atol=1e-6)


def test_tree_trainer_opens_levels_deepest_first_and_counts_its_work(make_pipe):
    """A depth-2 tree with progressive depth trains its deepest level at the first stage and both at the last; the
    sampling cost is the tree's node count (b2lib.algorithm.tree.tree_unet_rows), the training cost the kept nodes."""
    from b2lib.algorithm.tree import tree_unet_rows

    cfg = TrainerConfig.b2(
        **_small(window=1, algorithm="grpo", prompts_per_stage=2, selection=False, tree=((2, 2), (4, 2)))
    )
    assert cfg.images_per_stage == 8 and cfg.tree_leaves == 4
    trainer = B2Trainer(make_pipe(), redness, PROMPTS, cfg)
    before = _trainable(trainer.pipe)
    first, last = trainer.train()
    assert (first["tree_levels"], first["split_step"]) == (1, 2) and (last["tree_levels"], last["split_step"]) == (2, 4)
    assert first["images"] == 8 and first["kept"] == 8 and last["kept"] == 8 + 4  # no selection: every node trained
    assert first["unet_rows_sample"] == tree_unet_rows([(2, 2), (4, 2)], 6, prompts=2)["tree"]
    assert last["unet_rows_train"] == 2 * 12 * 1 * 2  # epochs x kept nodes x stored steps x 2 rows (guided)
    assert max((p - before[n]).abs().max().item() for n, p in _trainable(trainer.pipe).items()) > 0
    flat = B2Trainer(make_pipe(), redness, PROMPTS, TrainerConfig(**{**cfg.to_dict(), "tree_progressive": False}))
    assert flat.train(num_stages=1)[0]["tree_levels"] == 2


def test_tree_depth_pruning_trains_only_the_kept_levels(make_pipe):
    """Depth pruning: a depth-2 tree that keeps only its first level trains that level's nodes at every stage (the
    deeper level is sampled, never trained), and its nominal work counts only them."""
    from b2lib.algorithm.tree import tree_unet_rows
    from b2lib.training.trainer import TRAIN_ROW_WORK, nominal_work

    cfg = TrainerConfig.b2(
        **_small(
            window=1,
            algorithm="grpo",
            prompts_per_stage=2,
            selection=False,
            tree=((2, 2), (4, 2)),
            tree_train_levels=[0],
        )
    )
    assert cfg.tree_levels_kept == (0,) and cfg.tree_levels_at(0) == [0] and cfg.tree_levels_at(1) == [0]
    first, last = B2Trainer(make_pipe(), redness, PROMPTS, cfg).train()
    for m in (first, last):  # 2 prompts x 2 level-0 nodes, split at chain index 2 of 6
        assert (m["tree_levels"], m["split_step"], m["kept"], m["images"]) == (1, 4, 4, 8)
        assert m["unet_rows_train"] == 2 * 4 * 1 * 2  # epochs x kept nodes x stored steps x 2 rows (guided)
    sample = tree_unet_rows([(2, 2), (4, 2)], 6, prompts=2)["tree"]
    assert nominal_work(cfg) == cfg.num_stages * (sample + (TRAIN_ROW_WORK + 1) * 2 * 4 * 1 * 2)
    # only the kept levels need equal stored steps: segments of 2 and 3 steps (window None), one level kept
    TrainerConfig.b2(**_small(tree=((1, 2), (3, 2)), tree_train_levels=(1,)))
    assert "tree_train_levels" not in TrainerConfig.b2(**_small(window=1, tree=((2, 2), (4, 2)))).to_dict()
    assert TrainerConfig(**cfg.to_dict()).tree_train_levels == (0,)
    with pytest.raises(ValueError, match="level indices 0..1"):
        TrainerConfig.b2(**_small(window=1, tree=((2, 2), (4, 2)), tree_train_levels=(2,)))
    with pytest.raises(ValueError, match="set tree="):
        TrainerConfig.b2(**_small(tree_train_levels=(0,)))


def test_the_branch_point_moves_earlier_only_while_the_groups_are_flat(make_pipe):
    """A reward that never differs within a group (every group flat) moves the branch point one step per stage
    (window 1); a continuous reward (groups never flat) keeps the planned schedule. The choice reads the trainer's own
    stage log, so a resumed trainer chooses the same."""

    def flat(images, prompts):
        return torch.zeros(len(images))

    cfg = dict(num_stages=4, split_start=2, split_end=2, branch_target=0.5, branch_window=1)
    trainer = B2Trainer(make_pipe(), flat, PROMPTS, TrainerConfig.b2(**_small(**cfg)))
    assert [m["split_step"] for m in trainer.train()] == [2, 3, 4, 5]
    assert all(m["flat_groups"] == m["groups"] for m in trainer.log)
    trainer = B2Trainer(make_pipe(), redness, PROMPTS, TrainerConfig.b2(**_small(**cfg)))
    assert [m["split_step"] for m in trainer.train()] == [2, 2, 2, 2]
    resumed = B2Trainer(make_pipe(), flat, PROMPTS, TrainerConfig.b2(**_small(**cfg)))
    resumed.train(num_stages=2)
    state = resumed.state_dict()
    again = B2Trainer(make_pipe(), flat, PROMPTS, TrainerConfig.b2(**_small(**cfg)))
    again.load_state_dict(state)
    assert [m["split_step"] for m in again.train()] == [2, 3, 4, 5]  # the whole log: two stages restored, two run


def test_a_branch_target_needs_branches_and_is_counted_at_its_deepest_path():
    from b2lib.training.cost import nominal_work

    with pytest.raises(ValueError, match="branch_target=None"):
        TrainerConfig.ddpo(**_small(num_branches=1, branch_target=0.5))
    plain = TrainerConfig.b2(**_small(num_stages=4, split_start=2, split_end=2))
    chosen = TrainerConfig.b2(**_small(num_stages=4, split_start=2, split_end=2, branch_target=0.5, branch_window=1))
    deepest = TrainerConfig.b2(**_small(num_stages=4, split_start=2, split_end=5))  # 2, 3, 4, 5: the flat share's path
    assert chosen.signal_branching.deepest() == deepest.schedule.trained_steps
    assert nominal_work(chosen) == nominal_work(deepest) > nominal_work(plain)
    # the new fields stay out of a run's fingerprint while they hold their defaults
    assert "branch_target" not in plain.to_dict() and chosen.to_dict()["branch_target"] == 0.5


def test_the_census_of_plain_sampling_counts_a_prompts_samples_as_its_group(make_pipe):
    """With several samples per prompt (a GRPO-style group, DDPO's per-prompt draws) the stage log's census groups a
    prompt's samples of the stage: a constant reward makes every such group flat; with one sample per prompt every
    sample stays a group of its own and none is counted flat."""

    def flat(images, prompts):
        return torch.zeros(len(images))

    one = dict(num_stages=1, prompts_per_stage=8, num_branches=1)
    grouped = TrainerConfig.ddpo(**_small(**one, samples_per_prompt=4, algorithm="grpo"))
    (m,) = DDPOTrainer(make_pipe(), flat, PROMPTS, grouped).train()
    assert m["images"] == 8 and 1 <= m["groups"] <= 2 and m["flat_groups"] == m["groups"]
    plain = TrainerConfig.ddpo(**_small(**one))
    (m,) = DDPOTrainer(make_pipe(), flat, PROMPTS, plain).train()
    assert m["groups"] == 8 and m["flat_groups"] == 0
