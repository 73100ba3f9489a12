"""The flow world (a tiny SD3): stock ``StableDiffusion3Pipeline`` sampling with and without CFG, the embedding shapes
the library relies on, smoke pretraining with a save/reload round trip, and a transformer LoRA round trip."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline

import b2lib.world.pretrain as pretrain
from b2lib.world.flow_models import (
    FLOW_LORA_TARGET_MODULES,
    MAX_SEQUENCE_LENGTH,
    build_flow_world_pipeline,
    encode_prompt_ids,
    load_flow_world_pipeline,
)
from b2lib.world.flow_pretrain import FlowPretrainConfig, pretrain_flow_world, sample_sigmas, train_flow_text_to_image
from b2lib.world.models import MAX_TOKENS
from b2lib.world.pretrain import make_dataset

PROMPTS = ["two red circles", "a blue square to the left of a green triangle"]


def _generate(
    pipe: StableDiffusion3Pipeline, guidance: float = 5.0, seed: int = 0, prompts: list[str] = PROMPTS
) -> np.ndarray:
    return pipe(
        prompts,
        num_inference_steps=2,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread here: these batches are tiny, and on cores shared with other jobs a 2-thread OpenMP barrier
    stalls (measured: a batch-4 training step 0.2 s on 1 thread, 0.5-8 s on 2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe() -> StableDiffusion3Pipeline:
    return build_flow_world_pipeline(seed=0)


def test_build_generates_with_and_without_cfg(pipe):
    n_params = sum(p.numel() for p in pipe.transformer.parameters())
    assert 1_000_000 <= n_params <= 3_000_000
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None
    assert pipe.vae.config.shift_factor == 0.0 and not any(p.requires_grad for p in pipe.vae.parameters())
    with_cfg = _generate(pipe, guidance=5.0)
    without_cfg = _generate(pipe, guidance=1.0)  # guidance_scale <= 1 switches CFG off in the SD3 pipeline
    for images in (with_cfg, without_cfg):
        assert images.shape == (len(PROMPTS), 64, 64, 3)
        assert np.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0
    assert np.abs(with_cfg - without_cfg).max() > 1e-4
    np.testing.assert_array_equal(with_cfg, _generate(pipe, guidance=5.0))  # same generator, same images


def test_encode_prompt_shapes_and_token_id_path(pipe):
    embeds, neg_embeds, pooled, neg_pooled = pipe.encode_prompt(
        PROMPTS, None, None, do_classifier_free_guidance=True, max_sequence_length=1
    )
    assert embeds.shape == neg_embeds.shape == (len(PROMPTS), MAX_TOKENS + 1, 128)
    assert pooled.shape == neg_pooled.shape == (len(PROMPTS), 128)
    ids = pipe.tokenizer(
        PROMPTS, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        ids_embeds, ids_pooled = encode_prompt_ids(pipe, ids)
    torch.testing.assert_close(ids_embeds, embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(ids_pooled, pooled, rtol=0, atol=1e-6)
    # the stock default appends 256 all-zero "T5" tokens: the world is trained with them (computed as one)
    default_embeds = pipe.encode_prompt(PROMPTS[:1], None, None, do_classifier_free_guidance=False)[0]
    assert default_embeds.shape == (1, MAX_TOKENS + MAX_SEQUENCE_LENGTH, 128) and MAX_SEQUENCE_LENGTH == 256
    assert not default_embeds[:, MAX_TOKENS:].any()


def test_sigma_sampling_in_unit_interval():
    gen = torch.Generator().manual_seed(0)
    for kind in ("logit_normal", "uniform"):
        sigma = sample_sigmas(4096, FlowPretrainConfig(sigma_sampling=kind), 1.0, gen)
        assert 0.0 < sigma.min() and sigma.max() < 1.0 and abs(sigma.mean().item() - 0.5) < 0.03
    shifted = sample_sigmas(4096, FlowPretrainConfig(), 3.0, torch.Generator().manual_seed(0))
    assert shifted.mean() > 0.6  # shift > 1 moves training towards high noise, as the scheduler's grid
    with pytest.raises(ValueError):
        sample_sigmas(2, FlowPretrainConfig(sigma_sampling="cosine"), 1.0, gen)


def test_smoke_pretraining_writes_a_reloadable_pipeline(tmp_path):
    cfg = FlowPretrainConfig.smoke()
    report = pretrain_flow_world(tmp_path, cfg, progress=False)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["params"] == report["params"] and set(report["params"]) == {
        "transformer",
        "text_encoder",
        "text_encoder_2",
        "vae",
    }
    t2i = on_disk["text_to_image"]
    assert len(t2i["losses"]) == cfg.steps and np.isfinite(t2i["losses"]).all() and t2i["wall_s"] > 0
    assert on_disk["size_mb"]["pipeline"] > 0 and on_disk["max_sequence_length"] == MAX_SEQUENCE_LENGTH

    folder = tmp_path / "pipeline"
    stock = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)
    stock.set_progress_bar_config(disable=True)
    assert stock.tokenizer.model_max_length == MAX_TOKENS and stock.vae.config.shift_factor == 0.0
    loaded = load_flow_world_pipeline(folder, device="cpu")
    # the same training in memory (pretraining is seeded end to end) gives what the folder holds
    in_memory = build_flow_world_pipeline(cfg.seed)
    images, captions = make_dataset(cfg.n_images, cfg.seed)
    train_flow_text_to_image(in_memory, images, captions, cfg, progress=False)
    expected = _generate(in_memory, prompts=PROMPTS[:1])
    np.testing.assert_allclose(_generate(stock, prompts=PROMPTS[:1]), expected, atol=1e-5)
    np.testing.assert_allclose(_generate(loaded, prompts=PROMPTS[:1]), expected, atol=1e-5)


def test_missing_weights_say_how_to_regenerate(tmp_path):
    with pytest.raises(FileNotFoundError, match="regenerate_flow_world"):
        load_flow_world_pipeline(tmp_path / "nowhere")


def test_transformer_lora_round_trips_through_stock_save_and_load(tmp_path):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    adapted = build_flow_world_pipeline(seed=0)
    base_images = _generate(adapted, prompts=PROMPTS[:1])
    rank = 4  # lora_alpha = rank: the loader infers alpha = rank when the file carries no adapter metadata
    config = LoraConfig(
        r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(FLOW_LORA_TARGET_MODULES)
    )
    adapted.transformer.add_adapter(config)
    lora_b = [p for n, p in adapted.transformer.named_parameters() if "lora_B" in n]
    # 4 blocks x 8 projections, minus the last block's to_add_out (its text stream ends there)
    assert len(lora_b) == 4 * len(FLOW_LORA_TARGET_MODULES) - 1
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B starts at zero (identity adapter); make it a real, moderate change
        for p in lora_b:
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    adapted_images = _generate(adapted, prompts=PROMPTS[:1])
    assert np.abs(adapted_images - base_images).max() > 1e-3

    StableDiffusion3Pipeline.save_lora_weights(
        tmp_path / "lora", transformer_lora_layers=get_peft_model_state_dict(adapted.transformer)
    )
    fresh = build_flow_world_pipeline(seed=0)
    np.testing.assert_array_equal(_generate(fresh, prompts=PROMPTS[:1]), base_images)
    fresh.load_lora_weights(tmp_path / "lora")
    np.testing.assert_allclose(_generate(fresh, prompts=PROMPTS[:1]), adapted_images, atol=1e-5)


def test_an_interrupted_pretraining_resumes_where_it_stopped(tmp_path):
    """A run killed after its first checkpoint and started again ends with the weights and losses of a run never
    stopped: the checkpoint carries the optimizer, the schedule, the EMA and the random generator."""
    cfg = FlowPretrainConfig.smoke(steps=4, checkpoint_every=2)
    images, captions = make_dataset(cfg.n_images, cfg.seed)
    whole = build_flow_world_pipeline(cfg.seed)
    full = train_flow_text_to_image(whole, images, captions, cfg, progress=False)

    partial = build_flow_world_pipeline(cfg.seed)
    mid = str(tmp_path / "mid.pt")
    _stop_after(partial, images, captions, cfg, mid, stop_at=2)
    resumed = build_flow_world_pipeline(cfg.seed)
    out = train_flow_text_to_image(resumed, images, captions, cfg, False, mid)
    assert out["resumed_at_step"] == 2 and out["losses"] == full["losses"]
    for a, b in zip(resumed.transformer.parameters(), whole.transformer.parameters()):
        torch.testing.assert_close(a, b)


class _Killed(Exception):
    pass


def _stop_after(pipe, images, captions, cfg, checkpoint, stop_at):
    """Run ``cfg`` with checkpoints every ``stop_at`` steps and stop, as a kill would, right after the first."""
    save = pretrain._LoopState.save

    def save_then_kill(self, path, step):
        save(self, path, step)
        raise _Killed

    pretrain._LoopState.save = save_then_kill
    try:
        train_flow_text_to_image(pipe, images, captions, replace(cfg, checkpoint_every=stop_at), False, checkpoint)
    except _Killed:
        pass
    finally:
        pretrain._LoopState.save = save


def test_a_further_phase_starts_from_the_earlier_weights_and_keeps_their_report(tmp_path):
    first = FlowPretrainConfig.smoke()
    pretrain_flow_world(tmp_path / "one", first, progress=False)
    second = FlowPretrainConfig.smoke(steps=2, init_from=str(tmp_path / "one" / "pipeline"))
    report = pretrain_flow_world(tmp_path / "two", second, progress=False)
    assert [p["config"]["steps"] for p in report["earlier_phases"]] == [first.steps]
    assert report["total_steps"] == first.steps + 2
    # the phase really started from the earlier weights: its first loss is the earlier run's level, not a fresh
    # model's
    fresh = pretrain_flow_world(tmp_path / "fresh", FlowPretrainConfig.smoke(steps=2), progress=False)
    assert report["text_to_image"]["losses"] != fresh["text_to_image"]["losses"]
    assert (tmp_path / "two" / "checkpoint.pt").is_file()


def test_guidance_scan_scores_every_scale_on_the_train_prompts(pipe):
    from b2lib.world.evaluation import guidance_scan
    from b2lib.world.prompts import split_prompts

    seen = []

    def reward(images, prompts):
        seen.extend(prompts)
        return images.mean(dim=(1, 2, 3))

    table = guidance_scan(pipe, reward, (1.0, 4.0), ("counting",), n_per_prompt=1, max_prompts=2, num_steps=2)
    assert list(table["guidance_scale"]) == [1.0, 4.0] and list(table["template"]) == ["counting"] * 2
    assert set(seen) <= set(split_prompts("counting")[0])  # the train split only
    assert table["reward_mean"].iloc[0] != table["reward_mean"].iloc[1]  # the scale reaches the sampler


def test_regenerating_runs_the_phases_in_turn_and_keeps_the_last(tmp_path):
    from b2lib.world.flow_pretrain import regenerate_flow_world

    smoke = FlowPretrainConfig.smoke()
    common = dict(n_images=smoke.n_images, batch=smoke.batch, warmup=1)
    report = regenerate_flow_world(tmp_path, ({"steps": 2}, {"steps": 3, "lr": 1e-4}), progress=False, **common)
    assert report["total_steps"] == 5 and report["config"]["init_from"] == str(tmp_path / "phase1" / "pipeline")
    assert (tmp_path / "pipeline" / "transformer").is_dir() and (tmp_path / "report.json").is_file()
    assert load_flow_world_pipeline(tmp_path / "pipeline") is not None
    # finished phases are read, not run again
    again = regenerate_flow_world(tmp_path, ({"steps": 2}, {"steps": 3, "lr": 1e-4}), progress=False, **common)
    assert again["text_to_image"]["wall_s"] == report["text_to_image"]["wall_s"]


def test_best_guidance_takes_the_highest_judge_and_breaks_ties_on_clipscore():
    import pandas as pd

    from b2lib.world.evaluation import best_guidance

    scan = pd.DataFrame(
        {
            "guidance_scale": [2.0, 2.0, 3.0, 3.0, 5.0, 5.0],
            "template": ["counting", "binding"] * 3,
            "judge_all_ok": [0.3, 0.1, 0.2, 0.2, 0.1, 0.1],
            "reward_mean": [0.6, 0.6, 0.7, 0.7, 0.9, 0.9],
        }
    )
    assert best_guidance(scan) == 3.0
    assert best_guidance(scan.assign(judge_all_ok=[0.3, 0.2, 0.2, 0.2, 0.1, 0.1])) == 2.0
