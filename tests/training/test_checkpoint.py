"""Checkpoints: a run killed after stage k and resumed ends exactly as the uninterrupted run; LoRA export loads in
stock diffusers."""

import errno
import re

import pytest
import torch
from trainer_helpers import redness

from b2lib import B2Trainer, DDPOTrainer, TrainerConfig
from b2lib.training.checkpoint import latest_checkpoint, save_lora

PROMPTS = ["a red circle", "two blue squares", "a green triangle"]


def _cfg(**kw):
    base = dict(
        num_steps=5,
        num_stages=3,
        split_start=2,
        prompts_per_stage=4,
        sample_batch_size=4,
        num_branches=3,
        grad_accum=2,
        pos_threshold=0.3,
        neg_threshold=-0.3,
        progress=False,
    )
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
    assert latest_checkpoint(tmp_path).name == "stage_0003"  # older ones removed, the last two kept
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["stage_0002", "stage_0003"]


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
    trainer = DDPOTrainer(
        pipe,
        redness,
        PROMPTS,
        TrainerConfig.ddpo(
            **{
                **_cfg(num_stages=1).to_dict(),
                "progressive": False,
                "num_branches": 1,
                "selection": False,
                "normalization": "per_prompt",
                "lora_targets": targets,
            }
        ),
    )
    trainer.train()
    save_lora(pipe, tmp_path / "lora")
    fresh = make_pipe()
    fresh.load_lora_weights(tmp_path / "lora")
    x, emb = torch.randn(2, 4, 8, 8), torch.randn(2, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            fresh.unet(x, 500, encoder_hidden_states=emb).sample, pipe.unet(x, 500, encoder_hidden_states=emb).sample
        )
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


def _two_checkpoints(make_pipe, tmp_path):
    trainer = B2Trainer(make_pipe(), redness, PROMPTS, _cfg(num_stages=2))
    trainer.train(checkpoint_dir=tmp_path / "checkpoints")
    return tmp_path / "checkpoints" / "stage_0001", tmp_path / "checkpoints" / "stage_0002"


@pytest.mark.parametrize("damage", ["truncate_weights", "bad_json", "nan_weights", "missing_file"])
def test_a_broken_newest_checkpoint_falls_back_to_the_one_before(make_pipe, tmp_path, damage):
    from safetensors.torch import load_file, save_file

    older, newest = _two_checkpoints(make_pipe, tmp_path)
    weights = newest / "trainable.safetensors"
    if damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "bad_json":
        (newest / "trainer.json").write_text('{"stage": 2, "optim')
    elif damage == "nan_weights":
        tensors = load_file(str(weights))
        first = next(iter(tensors))
        tensors[first] = torch.full_like(tensors[first], float("nan"))
        save_file(tensors, str(weights))
    else:
        (newest / "optimizer.safetensors").unlink()
    with pytest.warns(UserWarning, match="Falling back") as caught:
        assert latest_checkpoint(tmp_path) == older
    named = {
        "truncate_weights": "trainable.safetensors",
        "bad_json": "trainer.json",
        "nan_weights": "non-finite",
        "missing_file": "optimizer.safetensors",
    }[damage]
    assert named in str(caught[0].message)
    resumed = B2Trainer(make_pipe(), redness, PROMPTS, _cfg(num_stages=2))
    with pytest.warns(UserWarning, match="Falling back"):
        resumed.train(resume_from=tmp_path / "checkpoints")
    assert resumed.stage == 2 and len(resumed.log) == 2


def test_every_checkpoint_broken_is_an_error_not_a_fresh_start(make_pipe, tmp_path):
    older, newest = _two_checkpoints(make_pipe, tmp_path)
    for c in (older, newest):
        (c / "trainer.json").write_text("")
    with pytest.raises(ValueError, match="No usable checkpoint.*trainer.json"):
        latest_checkpoint(tmp_path)


def test_resume_trains_at_the_configured_lr_not_the_checkpoints(make_pipe, tmp_path):
    """After a divergence one resumes with a lower lr: the restored optimizer must use it (it used to keep the old)."""
    B2Trainer(make_pipe(), redness, PROMPTS, _cfg(num_stages=2, lr=1e-3)).train(num_stages=1, checkpoint_dir=tmp_path)
    resumed = B2Trainer(make_pipe(), redness, PROMPTS, _cfg(num_stages=2, lr=1e-5))
    resumed.train(num_stages=0, resume_from=tmp_path)
    assert resumed.stage == 1
    assert all(g["lr"] == 1e-5 for g in resumed.optimizer.param_groups)


def test_non_finite_loss_names_the_last_finite_checkpoint(make_pipe, tmp_path):
    trainer = B2Trainer(make_pipe(), redness, PROMPTS, _cfg(num_stages=3))
    trainer.train(num_stages=1, checkpoint_dir=tmp_path)

    def poisoned(traj, rows, cols):
        log_prob, kl = type(trainer).policy_terms(trainer, traj, rows, cols)
        return log_prob * float("nan"), kl

    trainer.policy_terms = poisoned
    with pytest.raises(FloatingPointError, match=r"last finite state is .*stage_0001.*'lr': 1e-05"):
        trainer.train(checkpoint_dir=tmp_path)


def test_the_committed_main_job_loras_load_in_the_shipped_pipeline_with_stock_diffusers():
    """What the independent evaluation does with ``results/main``: the shipped pipeline from its folder, stock
    ``load_lora_weights`` on each committed LoRA, and the adapted UNet is not the base UNet (a trained adapter)."""
    from diffusers import StableDiffusionPipeline

    from b2lib.utils.paths import REPO_ROOT

    loras = sorted((REPO_ROOT / "results" / "main").glob("*_seed*/lora"))
    assert {p.parent.name.split("_seed")[0] for p in loras} == {"ddpo", "b2"}
    pipe = StableDiffusionPipeline.from_pretrained(REPO_ROOT / "b2lib" / "world" / "weights" / "pipeline")
    unet = pipe.unet
    x = torch.randn(2, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    emb = torch.randn(2, 8, unet.config.cross_attention_dim)
    with torch.no_grad():
        base = unet(x, 500, encoder_hidden_states=emb).sample
    for lora in loras:
        pipe.load_lora_weights(lora, adapter_name=lora.parent.name)
        with torch.no_grad():
            adapted = unet(x, 500, encoder_hidden_states=emb).sample
        assert (adapted - base).abs().max() > 1e-4 * base.abs().max(), lora
        pipe.unload_lora_weights()


#: what safetensors 0.8 raises when the disk fills mid-write (its own type, not an OSError; seen on a full tmpfs)
SAFETENSORS_DISK_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


def _disk_full(fault: str, filename: str) -> Exception:
    """The exception a full disk raises in the write ``fault`` names: safetensors' own, or the OS's ENOSPC."""
    from safetensors import SafetensorError

    if fault == "safetensors":
        return SafetensorError(SAFETENSORS_DISK_FULL)
    return OSError(errno.ENOSPC, "No space left on device", filename)


@pytest.mark.parametrize("fault", ["safetensors", "oserror"])
def test_a_full_disk_mid_checkpoint_removes_the_temp_folder_keeps_the_last_checkpoint_and_names_the_fix(
    make_pipe, tmp_path, monkeypatch, fault
):
    import b2lib.training.checkpoint as ckpt
    from b2lib.utils.rundir import DiskFullError

    trainer = B2Trainer(make_pipe(), redness, PROMPTS, _cfg())
    trainer.train(num_stages=1, checkpoint_dir=tmp_path / "checkpoints")
    real, calls = ckpt.save_file, []

    def fills_up(tensors, filename, *args, **kwargs):  # the first file is written, the disk fills on the second
        calls.append(filename)
        if len(calls) == 1:
            return real(tensors, filename, *args, **kwargs)
        raise _disk_full(fault, filename)

    monkeypatch.setattr(ckpt, "save_file", fills_up)
    with pytest.raises(DiskFullError) as caught:
        trainer.train(num_stages=1, checkpoint_dir=tmp_path / "checkpoints")
    assert calls[0].endswith("stage_0002.tmp/trainable.safetensors")  # a half-written temp folder existed
    err, ckpts = caught.value, tmp_path / "checkpoints"
    msg = str(err)
    assert msg.startswith(f"no space left on device while writing checkpoint {ckpts / 'stage_0002'} (needs ~")
    assert re.search(r"\(needs ~[\d.]+ MB; [\d.]+ MB free\): free space or point output_dir at another disk", msg)
    assert "-p output_dir" in msg and "--output-dir" in msg
    assert msg.endswith(f"rerun it and it resumes from stage 1 (checkpoint {ckpts / 'stage_0001'} is intact)")
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC and err.__suppress_context__
    assert sorted(p.name for p in ckpts.iterdir()) == ["stage_0001"]  # no stage_0002.tmp left behind
    monkeypatch.setattr(ckpt, "save_file", real)
    resumed = B2Trainer(make_pipe(), redness, PROMPTS, _cfg())
    resumed.train(num_stages=1, checkpoint_dir=ckpts, resume_from=ckpts)  # the previous checkpoint still loads
    assert resumed.stage == 2 and latest_checkpoint(tmp_path).name == "stage_0002"


def test_a_full_disk_before_the_first_checkpoint_says_the_run_starts_over(make_pipe, tmp_path, monkeypatch):
    import b2lib.training.checkpoint as ckpt
    from b2lib.utils.rundir import DiskFullError

    def full(tensors, filename, **kwargs):
        raise _disk_full("oserror", filename)

    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(DiskFullError, match="no earlier checkpoint is complete, so a rerun starts from stage 0"):
        B2Trainer(make_pipe(), redness, PROMPTS, _cfg()).train(checkpoint_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_still_clean_up_and_pass_through_unchanged(make_pipe, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    import b2lib.training.checkpoint as ckpt

    def broken(tensors, filename, **kwargs):
        raise SafetensorError("Error while serializing: something else")

    monkeypatch.setattr(ckpt, "save_file", broken)
    with pytest.raises(SafetensorError, match="something else"):
        B2Trainer(make_pipe(), redness, PROMPTS, _cfg()).train(checkpoint_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fault", ["safetensors", "oserror"])
def test_a_full_disk_during_the_lora_export_keeps_the_previous_export(make_pipe, tmp_path, monkeypatch, fault):
    from diffusers import StableDiffusionPipeline

    from b2lib.utils.rundir import DiskFullError

    pipe = make_pipe()
    B2Trainer(pipe, redness, PROMPTS, _cfg())  # attaches the LoRA adapter
    folder = save_lora(pipe, tmp_path / "lora")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def fills_up(cls, save_directory, **kwargs):  # half a file, then the disk is full
        (save_directory / "pytorch_lora_weights.safetensors").write_bytes(b"partial")
        raise _disk_full(fault, str(save_directory / "pytorch_lora_weights.safetensors"))

    monkeypatch.setattr(StableDiffusionPipeline, "save_lora_weights", classmethod(fills_up))
    with pytest.raises(DiskFullError) as caught:
        save_lora(pipe, folder)
    msg = str(caught.value)
    assert msg.startswith(f"no space left on device while writing the LoRA adapter {folder} (needs ~")
    assert "point output_dir at another disk" in msg and "a rerun resumes it at its last stage and exports again" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora"]  # no lora.tmp
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    monkeypatch.undo()
    make_pipe().load_lora_weights(folder)  # the previous export still loads
