"""Checkpoints: a run killed after stage k and resumed ends exactly as the uninterrupted run; LoRA export loads in
stock diffusers."""

import json

import pytest
import torch

from b2lib import B2Trainer, DDPOTrainer, TrainerConfig
from b2lib.checkpoint import latest_checkpoint, save_lora

PROMPTS = ["a red circle", "two blue squares", "a green triangle"]


def redness(images, prompts):
    return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


def _cfg(**kw):
    base = dict(num_steps=5, num_stages=3, split_start=2, prompts_per_stage=4, sample_batch_size=4, num_branches=3,
                grad_accum=2, pos_threshold=0.3, neg_threshold=-0.3, progress=False)
    base.update(kw)
    return TrainerConfig.b2(**base)


def test_killed_and_resumed_run_matches_uninterrupted(make_pipe, tmp_path):
    full = B2Trainer(make_pipe(), redness, PROMPTS, _cfg())
    full.train()

    first = B2Trainer(make_pipe(), redness, PROMPTS, _cfg())
    first.train(num_stages=1, checkpoint_dir=tmp_path / "checkpoints")  # "killed" after stage 1
    assert latest_checkpoint(tmp_path).name == "stage_0001"
    ckpt = tmp_path / "checkpoints" / "stage_0001"
    assert {p.name for p in ckpt.iterdir()} == {"trainable.safetensors", "optimizer.safetensors", "trainer.json"}

    resumed = B2Trainer(make_pipe(), redness, PROMPTS, _cfg())
    resumed.train(checkpoint_dir=tmp_path / "checkpoints", resume_from=tmp_path / "checkpoints")
    assert resumed.stage == 3
    assert [m["reward_mean"] for m in resumed.log] == [m["reward_mean"] for m in full.log]
    assert [m["loss"] for m in resumed.log] == [m["loss"] for m in full.log]
    for (n, a), b in zip(full.named_trainable().items(), resumed.named_trainable().values()):
        assert torch.equal(a, b), n
    assert latest_checkpoint(tmp_path).name == "stage_0003"  # older ones removed
    assert len(list((tmp_path / "checkpoints").iterdir())) == 1


def test_resume_rejects_a_mismatched_checkpoint(make_pipe, tmp_path):
    B2Trainer(make_pipe(), redness, PROMPTS, _cfg(num_stages=1)).train(checkpoint_dir=tmp_path)
    other = B2Trainer(make_pipe(), redness, PROMPTS, _cfg(lora_rank=2))
    with pytest.raises(ValueError, match="LoRA rank"):
        other.train(resume_from=tmp_path)
    with pytest.raises(FileNotFoundError, match="complete checkpoint"):
        other.train(resume_from=tmp_path / "nothing")


@pytest.mark.parametrize("targets", ["attention", "all"])
def test_lora_export_loads_in_stock_diffusers(make_pipe, tmp_path, targets):
    """What the independent evaluation does: a stock pipeline + ``load_lora_weights`` gives the trained UNet, also
    when the adapter wraps convolutions (``lora_targets="all"``, the embedded preset's setting)."""
    pipe = make_pipe()
    trainer = DDPOTrainer(pipe, redness, PROMPTS, TrainerConfig.ddpo(**{**_cfg(num_stages=1).to_dict(),
                          "progressive": False, "num_branches": 1, "selection": False, "normalization": "per_prompt",
                          "lora_targets": targets}))
    trainer.train()
    save_lora(pipe, tmp_path / "lora")
    fresh = make_pipe()
    fresh.load_lora_weights(tmp_path / "lora")
    x, emb = torch.randn(2, 4, 8, 8), torch.randn(2, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.unet(x, 500, encoder_hidden_states=emb).sample,
                                   pipe.unet(x, 500, encoder_hidden_states=emb).sample)
        base = make_pipe().unet(x, 500, encoder_hidden_states=emb).sample
    assert not torch.allclose(base, pipe.unet(x, 500, encoder_hidden_states=emb).sample)


def test_nan_stops_and_keeps_the_last_good_checkpoint(make_pipe, tmp_path):
    calls = {"n": 0}

    def flaky(images, prompts):  # a reward that breaks during the second stage
        calls["n"] += 1
        r = redness(images, prompts)
        return r if calls["n"] == 1 else torch.full_like(r, float("nan"))

    trainer = B2Trainer(make_pipe(), flaky, PROMPTS, _cfg())
    with pytest.raises(FloatingPointError, match="last good state"):
        trainer.train(checkpoint_dir=tmp_path / "checkpoints")
    assert latest_checkpoint(tmp_path).name == "stage_0001"
    resumed = B2Trainer(make_pipe(), redness, PROMPTS, _cfg())
    resumed.train(num_stages=1, resume_from=tmp_path / "checkpoints")
    assert resumed.stage == 2
