"""The benchmark helpers: timing arithmetic against closed forms, and each measurement running on a tiny pipeline."""

import pytest
import torch

from b2lib import bench


def test_timing_rates_and_ratio_closed_form():
    a = bench.Timing([1.0, 2.0, 4.0], work=8)  # rates 8, 4, 2
    assert a.rate() == {"min": 2.0, "median": 4.0, "max": 8.0}
    b = bench.Timing([2.0, 2.0, 2.0], work=8)  # rate 4
    r = bench._ratio(a, b)
    assert r == {"median": 1.0, "min": 0.5, "max": 2.0}
    with pytest.raises(ValueError, match="repeats"):
        bench.time_it(lambda r: None, repeats=0)


def test_time_it_calls_warmup_then_repeats():
    seen = []
    t = bench.time_it(seen.append, repeats=3, warmup=2, work=5)
    assert seen == [-1, -2, 0, 1, 2] and len(t.seconds) == 3 and t.work == 5


def test_unet_timer_counts_one_call_per_step(tiny_pipe):
    from b2lib.sampling import sample_branches

    with bench.UnetTimer(tiny_pipe.unet) as timer:
        sample_branches(tiny_pipe, ["a red circle"] * 2, 3, 2, num_steps=5, generator=torch.Generator().manual_seed(0))
    assert timer.calls == 5 and timer.seconds > 0  # 3 prefix steps + 2 branch steps, branches batched
    n_hooks = len(tiny_pipe.unet._forward_hooks) + len(tiny_pipe.unet._forward_pre_hooks)
    assert n_hooks == 0  # removed on exit


def test_measurements_run_on_a_tiny_pipeline(tiny_pipe):
    prompts = ["a red circle", "two blue squares"]
    r = bench.bench_branching(tiny_pipe, prompts, num_branches=3, num_steps=4, repeats=1)
    assert r["ratio"]["median"] > 0 and r["ideal"] == pytest.approx(1.5)
    r = bench.bench_branch_loop(tiny_pipe, prompts, num_branches=3, num_steps=4, repeats=1)
    assert r["ratio"]["median"] > 0
    r = bench.bench_unet_share_sampling(tiny_pipe, prompts, num_branches=3, num_steps=4, repeats=1)
    assert 0 < r["share"]["median"] <= r["denoise_share"]["median"] <= 1.0
    assert "decode" not in vars(tiny_pipe.vae)  # the timing wrapper is removed
    r = bench.bench_sampler_vs_pipeline(tiny_pipe, prompts, num_steps=3, repeats=1)
    assert r["ratio"]["median"] > 0


def test_summary_table_reads_ratios_and_goals():
    result = {"branching": {"ratio": {"min": 1.5, "median": 1.7, "max": 1.8}},
              "sampler_vs_pipeline": {"ratio": {"min": 0.9, "median": 0.93, "max": 0.99}},
              "training_share": {"stages": [{"unet_forward_s": 5.0, "sample_unet_s": 1.0, "backward_s": 4.0,
                                             "train_s": 10.0}]}}
    t = bench.summary_table(result).set_index("key")
    assert t.loc["branching", "met"] and not t.loc["sampler_vs_pipeline", "met"]
    assert t.loc["train_unet_share", "median"] == pytest.approx(0.8)  # (5 - 1 + 4) / 10
    assert "stage_reload" not in t.index


def test_paper_architecture_reduced_builds_and_counts_flops():
    pipe = bench.paper_arch_pipeline(reduced=True)
    unet = pipe.unet
    assert unet.config.down_block_types == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert len(unet.config.block_out_channels) == 4 and unet.config.layers_per_block == 2
    assert bench.unet_flops(pipe, batch=1) > 0
    assert bench._peak_for("NVIDIA H100 80GB HBM3") == 989.0 and bench._peak_for("cpu") is None
