"""The trajectory and branch samplers on a tiny StableDiffusionPipeline built from config."""

import pytest
import torch
from diffusers import DDPMScheduler

from b2lib.algorithm.sampling import (
    Trajectories,
    decode_latents,
    encode_prompts,
    sample_branches,
    sample_trajectories,
    transition_policy,
)

PROMPTS = ["a red circle", "two blue squares", "a green triangle"]


def test_trajectories_match_stock_pipeline(tiny_pipe):
    ref = tiny_pipe(
        PROMPTS,
        num_inference_steps=5,
        eta=1.0,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    traj = sample_trajectories(tiny_pipe, PROMPTS, num_steps=5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(traj.images, ref, atol=1e-5, rtol=1e-5)
    n, k = len(PROMPTS), 5
    assert traj.latents.shape == traj.next_latents.shape == (n, k, 4, 8, 8)
    assert traj.timesteps.shape == traj.log_probs.shape == (n, k)
    assert torch.equal(traj.timesteps[0], tiny_pipe.scheduler.timesteps)
    # consecutive transitions chain: x_{t-1} of step j is x_t of step j + 1
    assert torch.equal(traj.next_latents[:, :-1], traj.latents[:, 1:])
    assert traj.group_ids.tolist() == [0, 1, 2]


def test_recomputed_log_prob_gives_ratio_one(tiny_pipe):
    traj = sample_trajectories(tiny_pipe, PROMPTS, num_steps=6, generator=torch.Generator().manual_seed(1))
    n, k = traj.timesteps.shape
    rows = torch.arange(n).repeat_interleave(k)
    cols = torch.arange(k).repeat(n)
    with torch.no_grad():
        lp = transition_policy(tiny_pipe.unet, tiny_pipe.scheduler, traj, rows, cols, 5.0, 1.0)[0]
    log_ratio = lp - traj.log_probs[rows, cols]
    assert log_ratio.abs().max() < 1e-4


def test_trained_steps_keeps_only_the_interval(tiny_pipe):
    full = sample_trajectories(tiny_pipe, PROMPTS, num_steps=6, generator=torch.Generator().manual_seed(2))
    part = sample_trajectories(
        tiny_pipe, PROMPTS, num_steps=6, generator=torch.Generator().manual_seed(2), trained_steps=2
    )
    assert part.latents.shape[1] == 2
    torch.testing.assert_close(part.latents, full.latents[:, -2:])
    torch.testing.assert_close(part.log_probs, full.log_probs[:, -2:])
    torch.testing.assert_close(part.images, full.images)


def test_branches_share_prefix_and_differ_after(tiny_pipe):
    b, split = 4, 3
    traj = sample_branches(tiny_pipe, PROMPTS[:2], b, split, num_steps=6, generator=torch.Generator().manual_seed(0))
    assert len(traj) == 2 * b
    assert traj.group_ids.tolist() == [0] * b + [1] * b
    assert traj.prompts == [PROMPTS[0]] * b + [PROMPTS[1]] * b
    assert traj.latents.shape == (2 * b, split, 4, 8, 8)
    assert torch.equal(traj.timesteps[0], tiny_pipe.scheduler.timesteps[-split:])
    for g in range(2):
        rows = traj.latents[g * b : (g + 1) * b]
        # identical up to the branch point: the first stored state x_{T-s} is the shared prefix's end
        assert all(torch.equal(rows[0, 0], rows[i, 0]) for i in range(b))
        # different after it: every pair of branches takes a different first action
        nxt = traj.next_latents[g * b : (g + 1) * b, 0].flatten(1)
        assert torch.cdist(nxt, nxt)[~torch.eye(b, dtype=torch.bool)].min() > 1e-3
        imgs = traj.images[g * b : (g + 1) * b].flatten(1)
        assert torch.cdist(imgs, imgs)[~torch.eye(b, dtype=torch.bool)].min() > 0
    # different prompts have different prefixes
    assert not torch.equal(traj.latents[0, 0], traj.latents[b, 0])


def test_branch_prefix_equals_plain_prefix(tiny_pipe):
    """The prefix is an ordinary trajectory: under the same noise stream, branch 0 of a B-branch sample starts the
    interval from the same x_{T-s} as a plain trajectory."""
    plain = sample_trajectories(tiny_pipe, PROMPTS[:1], num_steps=6, generator=torch.Generator().manual_seed(5))
    br = sample_branches(tiny_pipe, PROMPTS[:1], 3, 2, num_steps=6, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(br.latents[0, 0], plain.latents[0, 4])


def test_select_and_cat(tiny_pipe):
    traj = sample_branches(tiny_pipe, PROMPTS[:2], 2, 2, num_steps=4, generator=torch.Generator().manual_seed(0))
    both = Trajectories.cat([traj, traj])
    assert len(both) == 8 and both.group_ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    sub = both.select(torch.tensor([True, False] * 4))
    assert len(sub) == 4 and sub.prompts == [PROMPTS[0], PROMPTS[1]] * 2
    assert torch.equal(sub.latents[0], traj.latents[0])


def test_bad_inputs(tiny_pipe):
    with pytest.raises(ValueError, match="at least 2 branches"):
        sample_branches(tiny_pipe, PROMPTS, 1, 3, num_steps=6)
    with pytest.raises(ValueError, match="within the chain"):
        sample_branches(tiny_pipe, PROMPTS, 3, 7, num_steps=6)
    with pytest.raises(ValueError, match="within the chain"):
        sample_trajectories(tiny_pipe, PROMPTS, num_steps=6, trained_steps=0)
    cond, uncond = encode_prompts(tiny_pipe, PROMPTS, 5.0)
    with pytest.raises(ValueError, match="one embedding row per prompt"):
        sample_trajectories(tiny_pipe, PROMPTS[:2], num_steps=4, prompt_embeds=(cond, uncond))
    with pytest.raises(ValueError, match="list"):
        sample_trajectories(tiny_pipe, "a red circle", num_steps=4)
    with pytest.raises(ValueError, match="eta > 0"):
        sample_trajectories(tiny_pipe, PROMPTS, num_steps=4, eta=0.0)
    tiny_pipe.scheduler = DDPMScheduler.from_config(tiny_pipe.scheduler.config)
    with pytest.raises(ValueError, match="ensure_ddim"):
        sample_trajectories(tiny_pipe, PROMPTS, num_steps=4)


@pytest.mark.parametrize("loop", [False, True])
def test_branch_loop_and_batched_share_the_prefix(tiny_pipe, loop):
    """Both ways of running the branches: prompt-major rows, one shared x at the branch point per group, different
    continuations, log-probs that recompute to the stored ones."""
    b, split = 3, 3
    traj = sample_branches(
        tiny_pipe, PROMPTS, b, split, num_steps=6, generator=torch.Generator().manual_seed(4), branch_loop=loop
    )
    assert len(traj) == len(PROMPTS) * b and traj.prompts == [p for p in PROMPTS for _ in range(b)]
    assert traj.group_ids.tolist() == [i for i in range(len(PROMPTS)) for _ in range(b)]
    start = traj.latents[:, 0].reshape(len(PROMPTS), b, -1)
    assert torch.equal(start, start[:, :1].expand_as(start))  # the prefix is shared within a group
    ends = traj.next_latents[:, -1].reshape(len(PROMPTS), b, -1)
    assert (ends[:, 0] - ends[:, 1]).abs().max() > 0  # branches diverge
    n, k = traj.timesteps.shape
    rows, cols = torch.arange(n).repeat_interleave(k), torch.arange(k).repeat(n)
    with torch.no_grad():
        lp = transition_policy(tiny_pipe.unet, tiny_pipe.scheduler, traj, rows, cols, 5.0, 1.0)[0]
    assert (lp - traj.log_probs[rows, cols]).abs().max() < 1e-4


def test_chunked_decode_matches_one_batch(tiny_pipe):
    """Decoding in chunks (the default, for cache locality) gives each image the pixels of a single-batch decode."""
    latents = torch.randn(
        5,
        4,
        tiny_pipe.unet.config.sample_size,
        tiny_pipe.unet.config.sample_size,
        generator=torch.Generator().manual_seed(0),
    )
    with torch.inference_mode():
        whole = decode_latents(tiny_pipe, latents, batch_size=None)
        chunked = decode_latents(tiny_pipe, latents, batch_size=2)
    assert chunked.shape == whole.shape == (5, 3, *whole.shape[-2:])
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        decode_latents(tiny_pipe, latents, batch_size=0)


@pytest.mark.parametrize("window", [1, 2])
def test_window_keeps_noise_on_the_trained_steps_only(tiny_pipe, window):
    """With a window, only ``window`` steps after the split are stochastic and stored; the images are the stored last
    state continued by the stock deterministic DDIM step (eta = 0), so branches differ only by the window's noise."""
    from b2lib.algorithm.sampling import denoise

    b, split, steps = 3, 4, 6
    traj = sample_branches(
        tiny_pipe, PROMPTS[:2], b, split, num_steps=steps, window=window, generator=torch.Generator().manual_seed(0)
    )
    assert traj.num_steps == window and traj.latents.shape[1] == window
    assert torch.equal(traj.timesteps[0], tiny_pipe.scheduler.timesteps[steps - split : steps - split + window])
    cond, uncond = encode_prompts(tiny_pipe, traj.prompts, 5.0)
    last = traj.next_latents[:, -1]
    manual = last.clone()
    for t in tiny_pipe.scheduler.timesteps[steps - split + window :]:
        from b2lib.algorithm.sampling import predict_noise

        with torch.no_grad():
            eps = predict_noise(tiny_pipe.unet, tiny_pipe.scheduler.scale_model_input(manual, t), t, cond, uncond, 5.0)
        manual = tiny_pipe.scheduler.step(eps, t, manual, eta=0.0).prev_sample
    torch.testing.assert_close(traj.images, decode_latents(tiny_pipe, manual), atol=1e-5, rtol=1e-5)
    # the deterministic tail adds no noise: rerunning it from the same state gives the same image
    again, _ = denoise(tiny_pipe, last, cond, uncond, steps - split + window, steps, 5.0, 0.0, record=False)
    torch.testing.assert_close(decode_latents(tiny_pipe, again), traj.images, atol=1e-5, rtol=1e-5)
    # the prefix is unchanged by the window: the same shared state as without one
    full = sample_branches(
        tiny_pipe, PROMPTS[:2], b, split, num_steps=steps, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(full.latents[:, 0], traj.latents[:, 0])
    with pytest.raises(ValueError, match="window"):
        sample_branches(tiny_pipe, PROMPTS[:1], b, split, num_steps=steps, window=0)
    with pytest.raises(ValueError, match="record=False"):
        denoise(tiny_pipe, last, cond, uncond, 0, 1, 5.0, 0.0)


def test_coarse_exploration_samples_and_recomputes_its_own_log_prob(tiny_pipe):
    """With explore_grid the stored transitions' log-probs are recomputed exactly (ratio 1 before an update), the
    shared prefix is the same as without it, and the branches differ only on the coarse lattice at the first
    trained step."""
    from b2lib.policies.gaussian import explore_project

    b, split, steps = 3, 4, 6
    kw = dict(num_steps=steps, window=1)
    coarse = sample_branches(
        tiny_pipe, PROMPTS[:2], b, split, generator=torch.Generator().manual_seed(0), explore_grid=2, **kw
    )
    full = sample_branches(tiny_pipe, PROMPTS[:2], b, split, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(coarse.latents[:, 0], full.latents[:, 0])  # the prefix
    step = coarse.next_latents[:, 0]
    diff = step[:b] - step[0]  # branches of prompt 0 share x_t: they differ by the projected noise only
    torch.testing.assert_close(diff, explore_project(diff, 2), atol=1e-5, rtol=0)
    assert diff.abs().max() > 0
    n, k = coarse.timesteps.shape
    rows, cols = torch.arange(n).repeat_interleave(k), torch.arange(k).repeat(n)
    with torch.no_grad():
        lp, mean, _ = transition_policy(
            tiny_pipe.unet, tiny_pipe.scheduler, coarse, rows, cols, 5.0, 1.0, explore_grid=2
        )
    assert (lp - coarse.log_probs[rows, cols]).abs().max() < 1e-4
    assert mean.shape[-2:] == (2, 2)  # the KL's coordinates: the explored ones
