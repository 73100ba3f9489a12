"""End-to-end: 2-stage B² and DDPO runs on the tiny pipeline change the trained weights, within a minute on CPU."""

import time

import pytest
import torch

from b2lib import B2Trainer, DDPOTrainer, TrainerConfig

PROMPTS = ["a red circle", "two blue squares", "a green triangle"]


def redness(images, prompts):
    """A cheap differentiable-free reward: how red the image is."""
    return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


def _small(**kw):
    base = dict(num_steps=6, num_stages=2, split_start=3, prompts_per_stage=4, sample_batch_size=4, num_branches=3,
                train_batch_size=2, grad_accum=2, pos_threshold=0.3, neg_threshold=-0.3, progress=False)
    base.update(kw)
    return base


def _trainable(pipe):
    return {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("cls,config", [
    (B2Trainer, TrainerConfig.b2(**_small())),
    (DDPOTrainer, TrainerConfig.ddpo(**_small(num_branches=1, prompts_per_stage=12, sample_batch_size=6))),
])
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


def test_ddpo_config_is_b2_with_the_strategies_off():
    b2, ddpo = TrainerConfig.b2(), TrainerConfig.ddpo()
    changed = {k for k in vars(b2) if getattr(b2, k) != getattr(ddpo, k)}
    assert changed == {"progressive", "num_branches", "selection", "normalization"}
    assert ddpo.schedule.splits == [20] * 100
    assert b2.schedule.splits[0] == 14 and b2.schedule.splits[-1] == 20


def test_same_seed_same_run(make_pipe):
    logs = []
    for _ in range(2):
        tr = B2Trainer(make_pipe(), redness, PROMPTS, TrainerConfig.b2(**_small(num_stages=1)))
        logs.append(tr.train())
    for a, b in zip(*logs):
        assert a["reward_mean"] == b["reward_mean"] and a["loss"] == b["loss"]


def test_nan_reward_stops_with_clear_error(make_pipe):
    tr = B2Trainer(make_pipe(), lambda im, p: torch.full((im.shape[0],), float("nan")), PROMPTS,
                   TrainerConfig.b2(**_small(num_stages=1)))
    with pytest.raises(FloatingPointError, match="NaN"):
        tr.train_stage()


def test_bad_config():
    with pytest.raises(ValueError, match="num_branches >= 2"):
        TrainerConfig.b2(num_branches=1)
    with pytest.raises(ValueError, match="longer than the chain"):
        TrainerConfig.b2(split_end=25)
    with pytest.raises(ValueError, match="prompts"):
        B2Trainer(None, redness, [], TrainerConfig.b2())


def test_timestep_packing_changes_speed_not_the_update(make_pipe):
    """One step per forward (the reference) and all interval steps in one forward give the same weights."""
    weights = []
    for chunk in (1, 0, 2):
        tr = B2Trainer(make_pipe(), redness, PROMPTS, TrainerConfig.b2(**_small(num_stages=1, timestep_chunk=chunk)))
        log = tr.train()
        assert log[0]["optimizer_steps"] > 0
        weights.append(_trainable(tr.pipe))
    for other in weights[1:]:
        for n in weights[0]:
            torch.testing.assert_close(other[n], weights[0][n], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="timestep_chunk"):
        TrainerConfig.b2(timestep_chunk=-1)
