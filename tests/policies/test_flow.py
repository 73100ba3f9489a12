"""The flow-SDE policy on a tiny SD3 pipeline built from config: the chain functions, the trees and the trainer run
over it unchanged, what it samples deterministically is what the stock pipeline samples, and its stored log-probs
recompute under the same weights."""

import pytest
import torch
from diffusers import StableDiffusion3Pipeline

from b2lib.algorithm.sampling import denoise, sample_branches, sample_trajectories
from b2lib.algorithm.tree import Level, sample_tree
from b2lib.policies.base import as_policy
from b2lib.policies.flow import STOCK_T5_TOKENS, FlowSDEPolicy
from b2lib.training.config import TrainerConfig
from b2lib.training.trainer import RLTrainer

PROMPTS = ["two red circles", "a blue square", "three green triangles"]


@pytest.fixture(scope="module")
def base_pipe() -> StableDiffusion3Pipeline:
    from b2lib.world.flow_models import build_flow_world_pipeline

    pipe = build_flow_world_pipeline(seed=0)
    with torch.no_grad():  # a random transformer's last layer is zero-initialised: give it some output
        for p in pipe.transformer.proj_out.parameters():
            p.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    return pipe


@pytest.fixture
def flow_pipe(base_pipe):
    import copy

    return copy.deepcopy(base_pipe)


def test_as_policy_picks_the_flow_policy(flow_pipe):
    policy = as_policy(flow_pipe)
    assert isinstance(policy, FlowSDEPolicy) and policy.denoiser is flow_pipe.transformer
    assert torch.equal(policy.step_keys().cpu(), torch.arange(len(flow_pipe.scheduler.timesteps)))


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_deterministic_chain_is_the_stock_pipeline(flow_pipe, guidance):
    """With every step deterministic (noise level 0) the policy's chain is StableDiffusion3Pipeline.__call__ with its
    defaults (256 zero "T5" tokens), although the policy runs them as one token standing for 256."""
    steps = 4
    stock = flow_pipe(
        PROMPTS,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(3),
        output_type="pt",
    ).images
    policy = as_policy(flow_pipe)
    policy.prepare(steps)
    cond = policy.encode(PROMPTS, guidance)
    assert cond.embeds.shape[1] == flow_pipe.tokenizer.model_max_length + 1  # the CLIP tokens + one zero token
    with torch.no_grad():
        x = policy.initial_noise(len(PROMPTS), torch.Generator().manual_seed(3), torch.float32)
        x, _ = denoise(policy, x, cond, None, 0, steps, guidance, 0.0, record=False)
        images = policy.decode(x)
    torch.testing.assert_close(images, stock, atol=2e-5, rtol=1e-4)
    # the same stock call after the policy installed its processor on this pipeline's transformer is still stock
    again = flow_pipe(
        PROMPTS,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(3),
        output_type="pt",
    ).images
    torch.testing.assert_close(again, stock, atol=1e-6, rtol=1e-5)
    assert STOCK_T5_TOKENS == 256


def test_stored_log_probs_recompute(flow_pipe):
    """Branches share their prefix; each stored transition's log-prob recomputes under the same weights."""
    traj = sample_branches(
        flow_pipe, PROMPTS[:2], 3, 2, num_steps=5, eta=0.7, generator=torch.Generator().manual_seed(0)
    )
    assert len(traj) == 6 and traj.num_steps == 2 and traj.pooled_prompt_embeds is not None
    assert torch.equal(traj.latents[0, 0], traj.latents[2, 0]) and not torch.equal(
        traj.latents[0, 1], traj.latents[1, 1]
    )
    assert torch.equal(traj.timesteps[0], torch.tensor([3, 4]))  # chain indices
    policy = as_policy(flow_pipe)
    rows = torch.arange(6).repeat_interleave(2)
    cols = torch.arange(2).repeat(6)
    with torch.no_grad():
        log_prob, _, std = policy.transition(policy.denoiser, traj, rows, cols, 5.0, 0.7)
    torch.testing.assert_close(log_prob, traj.log_probs[rows, cols], atol=1e-4, rtol=1e-4)
    assert (std > 0).all()


def test_plain_and_tree_sampling(flow_pipe):
    plain = sample_trajectories(flow_pipe, PROMPTS, num_steps=4, eta=0.7, generator=torch.Generator().manual_seed(1))
    assert plain.images.shape == (3, 3, 64, 64) and plain.num_steps == 4
    tree = sample_tree(
        flow_pipe,
        PROMPTS[:1],
        [Level(1, 2), Level(3, 2)],
        num_steps=4,
        eta=0.7,
        window=1,
        generator=torch.Generator().manual_seed(1),
    )
    assert len(tree.leaves) == 4 and [s["latents"].shape[0] for s in tree.segments] == [2, 4]


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_trainer_runs_on_the_flow_policy(flow_pipe, algorithm):
    """B² (branches, the progressive window) trains a LoRA on the transformer with the unchanged loop; GRPO's KL to the
    base model turns the transformer's adapter off for its reference."""
    cfg = TrainerConfig.b2(
        num_steps=4,
        eta=0.7,
        num_stages=2,
        prompts_per_stage=2,
        sample_batch_size=2,
        num_branches=3,
        split_start=2,
        train_batch_size=2,
        grad_accum=1,
        epochs_per_stage=1,
        lr=1e-2,
        progress=False,
        algorithm=algorithm,
        lora_targets="all",
    )

    def reward(images, prompts):
        return images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2))

    trainer = RLTrainer(flow_pipe, reward, PROMPTS, cfg)
    before = {n: p.detach().clone() for n, p in trainer.named_trainable().items()}
    assert before and all("lora" in n for n in before)
    log = trainer.train()
    assert len(log) == 2 and all(m["optimizer_steps"] > 0 for m in log)
    assert any(not torch.equal(p, before[n]) for n, p in trainer.named_trainable().items())
    if algorithm == "grpo":
        assert all(m["kl"] >= 0 for m in log)


def test_experiment_on_the_flow_preset_writes_a_stock_loadable_lora(base_pipe, tmp_path):
    """The one experiment path on the flow preset (a random flow world saved as its folder): B² trains, the base and
    the trained model are evaluated with the ODE chain, and the LoRA it writes loads in a stock
    StableDiffusion3Pipeline with load_lora_weights and reproduces the trained model's images."""
    from b2lib.experiments.experiment import RunConfig, run_experiment
    from b2lib.training.models import load_sd3_pipeline

    base_pipe.save_pretrained(tmp_path / "world", safe_serialization=True)
    cfg = RunConfig(
        methods=("b2",),
        preset="flow",
        model_dir=str(tmp_path / "world"),
        stages=2,
        images_per_stage=4,
        branches=2,
        eval_images=2,
        eval_max_prompts=2,
        bertscore=False,
        output_dir=str(tmp_path / "run"),
        overrides={"num_steps": 4, "split_start": 2, "lr": 3e-2},
    )
    result = run_experiment(cfg, progress=False)
    assert set(result.evals["model"]) == {"base", "b2_seed0"}
    lora = tmp_path / "run" / "b2_seed0" / "lora"
    assert (lora / "pytorch_lora_weights.safetensors").is_file()
    stock = load_sd3_pipeline(tmp_path / "world")
    kwargs = dict(num_inference_steps=4, guidance_scale=5.0, output_type="pt")
    before = stock(PROMPTS[:1], generator=torch.Generator().manual_seed(0), **kwargs).images
    stock.load_lora_weights(lora)
    after = stock(PROMPTS[:1], generator=torch.Generator().manual_seed(0), **kwargs).images
    assert (after - before).abs().max() > 1e-4


def test_paper_flow_preset_fails_offline_at_once(monkeypatch):
    import time

    from b2lib.experiments.presets import PAPER_FLOW_MODEL, load_models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(OSError, match="HF_HUB_OFFLINE") as err:
        load_models("paper_flow")
    assert PAPER_FLOW_MODEL in str(err.value) and time.perf_counter() - start < 30


def test_deterministic_prefix_is_the_ode_chain(flow_pipe):
    """prefix_eta=0: the shared prefix is the ODE, so the branch point's state is the deterministic chain's."""
    steps, split = 5, 2
    traj = sample_branches(
        flow_pipe,
        PROMPTS[:2],
        2,
        split,
        num_steps=steps,
        eta=0.7,
        prefix_eta=0.0,
        generator=torch.Generator().manual_seed(5),
    )
    policy = as_policy(flow_pipe)
    cond = policy.encode(PROMPTS[:2], 5.0)
    with torch.no_grad():
        x = policy.initial_noise(2, torch.Generator().manual_seed(5), torch.float32)
        x, _ = denoise(policy, x, cond, None, 0, steps - split, 5.0, 0.0, record=False)
    torch.testing.assert_close(traj.latents[::2, 0], x, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ["flow_grpo", "mixgrpo", "tempflow"])
def test_flow_grpo_family_trains_on_the_flow_policy(flow_pipe, method):
    from b2lib.experiments.presets import method_config

    fields = dict(
        num_steps=6,
        eta=0.7,
        num_stages=2,
        sample_batch_size=4,
        train_batch_size=4,
        grad_accum=1,
        epochs_per_stage=1,
        lr=1e-2,
        progress=False,
        lora_targets="mmdit",
        split_start=3,
        window=2 if method == "mixgrpo" else None,
    )
    cfg = method_config(method, fields, images_per_stage=4, branches=2)

    def reward(images, prompts):
        return images[:, 0].mean(dim=(1, 2))

    trainer = RLTrainer(flow_pipe, reward, PROMPTS, cfg)
    log = trainer.train()
    assert len(log) == 2 and all(m["optimizer_steps"] > 0 for m in log)
    assert log[0]["unet_rows_train"] > 0
