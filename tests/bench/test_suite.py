"""The benchmark helpers: timing arithmetic against closed forms, and each measurement running on a tiny pipeline."""

import pytest
import torch

from b2lib import bench


def test_timing_rates_and_ratio_closed_form():
    a = bench.Timing([1.0, 2.0, 4.0], work=8)  # rates 8, 4, 2
    assert a.rate() == {"min": 2.0, "median": 4.0, "max": 8.0}
    b = bench.Timing([2.0, 2.0, 2.0], work=8)  # rate 4
    r = bench.ratio_of_medians(a, b)
    assert r == {"median": 1.0, "min": 0.5, "max": 2.0}
    with pytest.raises(ValueError, match="repeats"):
        bench.time_it(lambda r: None, repeats=0)


def test_time_it_calls_warmup_then_repeats():
    seen = []
    t = bench.time_it(seen.append, repeats=3, warmup=2, work=5)
    assert seen == [-1, -2, 0, 1, 2] and len(t.seconds) == 3 and t.work == 5


def test_time_pair_interleaves_and_paired_ratio_closed_form():
    order = []
    a, b = bench.time_pair(lambda r: order.append(("a", r)), lambda r: order.append(("b", r)), repeats=3, work=2)
    assert order == [("a", -1), ("b", -1), ("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2), ("b", 2)]
    assert len(a.seconds) == len(b.seconds) == 3 and a.work == b.work == 2
    x = bench.Timing([1.0, 2.0, 1.0], work=4)  # rates 4, 2, 4
    y = bench.Timing([2.0, 2.0, 4.0], work=4)  # rates 2, 2, 1
    assert bench.paired_ratio(x, y) == {"min": 1.0, "median": 2.0, "max": 4.0}  # per repeat: 2, 1, 4
    with pytest.raises(ValueError, match="equal repeats"):
        bench.paired_ratio(x, bench.Timing([1.0]))


def test_unet_timer_counts_one_call_per_step(tiny_pipe):
    from b2lib.algorithm.sampling import sample_branches

    with bench.UnetTimer(tiny_pipe.unet) as timer:
        sample_branches(tiny_pipe, ["a red circle"] * 2, 3, 2, num_steps=5, generator=torch.Generator().manual_seed(0))
    assert timer.calls == 5 and timer.seconds > 0  # 3 prefix steps + 2 branch steps, branches batched
    n_hooks = len(tiny_pipe.unet._forward_hooks) + len(tiny_pipe.unet._forward_pre_hooks)
    assert n_hooks == 0  # removed on exit


def test_measurements_run_on_a_tiny_pipeline(tiny_pipe):
    prompts = ["a red circle", "two blue squares"]
    r = bench.bench_branching(tiny_pipe, prompts, num_branches=3, num_steps=4, repeats=1)
    assert r["ratio"]["median"] > 0 and r["ideal"] == pytest.approx(1.5)
    assert r["chain_ratio"]["median"] > 0 and 1.0 < r["bound"]["median"] < r["ideal"]
    for row in r["branched_parts"] + r["independent_parts"]:
        assert 0 < row["unet_s"] + row["decode_s"] + row["text_encoder_s"] <= row["total_s"]
    r = bench.bench_branch_loop(tiny_pipe, prompts, num_branches=3, num_steps=4, repeats=1)
    assert r["ratio"]["median"] > 0
    r = bench.bench_unet_share_sampling(tiny_pipe, prompts, num_branches=3, num_steps=4, repeats=1)
    assert 0 < r["share"]["median"] <= r["denoise_share"]["median"] <= 1.0
    assert r["share"]["median"] <= r["bound"]["median"] <= 1.0 and r["unet_calls_per_run"] == 4
    assert "decode" not in vars(tiny_pipe.vae)  # the timing wrapper is removed
    r = bench.bench_sampler_vs_pipeline(tiny_pipe, prompts, num_steps=3, repeats=1)
    assert r["ratio"]["median"] > 0


def test_summary_table_reads_ratios_and_goals():
    result = {
        "branching": {"ratio": {"min": 1.5, "median": 1.7, "max": 1.8}},
        "sampler_vs_pipeline": {"ratio": {"min": 0.9, "median": 0.93, "max": 0.99}},
        "training_share": {
            "stages": [{"unet_forward_s": 5.0, "sample_unet_s": 1.0, "backward_s": 4.0, "train_s": 10.0}]
        },
    }
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
    assert bench.peak_for("NVIDIA H100 80GB HBM3") == 989.0 and bench.peak_for("cpu") is None


def test_branching_bound_closed_form():
    # only UNet time: T u / ((T - s) u / B + s u) = 2B / (B + 1) for s = T / 2
    assert bench.branching_bound(20.0, 1.0, 20, 10, 5) == pytest.approx(2 * 5 / 6)
    # a fixed cost d (decode) in both columns: (T u + d) / ((T - s) u / B + s u + d)
    assert bench.branching_bound(20.0 + 3.0, 1.0, 20, 10, 5) == pytest.approx(23.0 / (2.0 + 10.0 + 3.0))
    assert bench.branching_bound(8.0, 1.0, 20, 10, 1) == 1.0  # one branch saves nothing
    with pytest.raises(ValueError, match="prefix saving"):
        bench.branching_bound(5.0, 1.0, 20, 10, 5)  # a saving larger than the whole run is inconsistent


def test_flops_per_image_counts_unet_and_decoder(tiny_pipe):
    f = bench.flops_per_image(tiny_pipe)
    assert f["unet_step_gflop"] > 0 and f["decode_gflop"] > 0
    assert f["decode_per_unet_step"] == pytest.approx(f["decode_gflop"] / f["unet_step_gflop"])


def test_paper_flops_on_meta_device():
    f = bench.paper_flops(num_steps=20, num_branches=5)
    # SD-1.4 at 512 px: a guided UNet step is ~1.6 TFLOP per image (two ~0.8 TFLOP rows), the decoder ~2.5 TFLOP
    assert 1000 < f["unet_step_gflop"] < 2500 and 1500 < f["decode_gflop"] < 4000
    r = f["decode_per_unet_step"]
    assert f["branching_bound_equal_flop_rate"] == pytest.approx((20 + r) / (2 + 10 + r))


def test_summary_table_bounds_and_chain_rows():
    result = {
        "branching": {
            "ratio": {"min": 1.5, "median": 1.55, "max": 1.6},
            "chain_ratio": {"min": 1.6, "median": 1.65, "max": 1.7},
            "bound": {"min": 1.58, "median": 1.59, "max": 1.6},
            "ideal": 5 / 3,
        },
        "unet_share_sampling": {
            "share": {"min": 0.8, "median": 0.85, "max": 0.9},
            "denoise_share": {"min": 0.95, "median": 0.97, "max": 0.98},
            "bound": {"min": 0.88, "median": 0.89, "max": 0.9},
        },
    }
    t = bench.summary_table(result).set_index("key")
    assert not t.loc["branching", "met"] and t.loc["branching", "bound"] == 1.59
    assert t.loc["branching_chain", "met"] and t.loc["branching_chain", "bound"] == pytest.approx(5 / 3)
    assert t.loc["unet_share_sampling", "bound"] == 0.89 and t["bound"].isna().sum() == 1  # denoise share: none


def test_sampling_parts_table_medians_and_rest():
    def run(t):
        return {"total_s": t, "unet_s": t - 0.3, "decode_s": 0.2, "text_encoder_s": 0.05}

    result = {
        "branching": {
            "prefixes": 16,
            "branched_parts": [run(3.0), run(3.2), run(3.1)],
            "independent_parts": [run(5.0), run(5.0), run(5.0)],
        }
    }
    t = bench.sampling_parts_table(result)
    assert list(t.index) == ["16 prefixes · branched", "16 prefixes · independent"]
    assert t.loc["16 prefixes · branched", "total_s"] == pytest.approx(3.1)
    assert t["other_s"].tolist() == pytest.approx([0.05, 0.05])


def test_labels_name_the_sizes_that_ran():
    result = {
        "branching": {"branches": 3, "split_step": 2, "prefixes": 7, "ratio": {"min": 1, "median": 1, "max": 1}},
        "branching_reference_batch": {"prefixes": 1, "ratio": {"min": 1, "median": 1, "max": 1}},
    }
    words = bench.labels(result)
    assert "B=3, split at step 2, 7 prefixes" in words["branching"]
    assert "reference's 1 prefixes" in words["branching_reference_batch"]
    t = bench.summary_table(result).set_index("key")
    assert t.loc["branching", "measurement"] == words["branching"]


def test_training_measurements_leave_the_trainer_alone(make_pipe):
    from b2lib import TrainerConfig
    from b2lib.training.trainer import RLTrainer

    def redness(images, prompts):
        return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))

    def make(**kw):
        cfg = TrainerConfig.b2(
            num_steps=4,
            num_stages=3,
            split_start=2,
            prompts_per_stage=2,
            sample_batch_size=2,
            num_branches=2,
            train_batch_size=2,
            grad_accum=1,
            progress=False,
            **kw,
        )
        return RLTrainer(make_pipe(), redness, ["a red circle"], cfg)

    trainer = make()
    attrs = set(vars(trainer)) | set(vars(trainer.accelerator))
    rows = bench.bench_training_share(trainer, stages=1)["stages"]
    assert set(vars(trainer)) | set(vars(trainer.accelerator)) == attrs  # nothing replaced or added
    r = rows[0]
    assert 0 < r["sample_unet_s"] < r["unet_forward_s"] and r["backward_s"] > 0 and r["train_s"] > 0
    packed = bench.bench_update_packing(make(timestep_chunk=0), make(timestep_chunk=1), repeats=1)
    assert packed["ratio"]["median"] > 0 and packed["steps"] == 2
    with pytest.raises(ValueError, match="differ only in timestep_chunk"):
        bench.bench_update_packing(make(timestep_chunk=0, lr=1e-3), make(timestep_chunk=1), repeats=1)


def test_tree_measurement_and_its_rows(tiny_pipe):
    r = bench.bench_tree(tiny_pipe, ["a red circle"], [[1, 2], [3, 2]], num_steps=4, repeats=1)
    assert r["ratio"]["median"] > 0 and r["ratio_depth_one"]["median"] > 0
    # UNet rows: tree 1 + 2 x 2 + 4 x 1 = 9 steps of rows against 4 x 4 independent and 1 + 4 x 3 for depth 1
    assert r["bound"] == pytest.approx(16 / 9) and r["bound_depth_one"] == pytest.approx(13 / 9)
    t = bench.summary_table({"tree": r}).set_index("key")
    assert "2 at step 1 × 2 at step 3, 1 prefixes" in t.loc["tree", "measurement"]
    assert t.loc["tree_depth_one", "bound"] == pytest.approx(13 / 9)
