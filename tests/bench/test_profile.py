"""The per-op profile of batched branches and trees: call logging, pricing on a batch curve against closed forms, and
each measurement running on a tiny pipeline."""

import math

import pandas as pd
import pytest

from b2lib.bench import profile


def test_price_interpolates_and_extrapolates_closed_form():
    curve = pd.DataFrame({"rows": [2, 4, 8], "s_per_call": [1.0, 1.5, 3.5]})
    assert profile.price([(2, 9.0)], curve) == 1.0
    assert profile.price([(3, 0.0)], curve) == pytest.approx(1.25)  # halfway between 2 and 4
    assert profile.price([(16, 0.0)], curve) == pytest.approx(3.5 + 0.5 * 8)  # last slope 2/4 per row
    assert profile.price([(1, 0.0)], curve) == pytest.approx(0.5)  # below the first batch: proportional
    assert profile.price([(2, 0.0), (8, 0.0)], curve) == pytest.approx(4.5)


def test_compare_samplers_closed_form():
    # a: 10 rows of UNet in 1 s (+1 s other) for 4 images; b: 20 rows in 2 s (+1 s other) for 4 images
    a = {"wall_s": 2.0, "unet_s": 1.0, "other_s": 1.0, "unet_rows": 10, "unet_predicted_s": 1.0}
    b = {"wall_s": 3.0, "unet_s": 2.0, "other_s": 1.0, "unet_rows": 20, "unet_predicted_s": 2.0}
    c = profile.compare_samplers(a, b, 4, 4)
    assert c["ratio"] == pytest.approx(1.5) and c["bound"] == pytest.approx(2.0)
    assert c["of_bound"] == pytest.approx(0.75) and c["unet_ratio"] == pytest.approx(2.0)
    assert c["predicted"] == pytest.approx(1.5) and c["gap_from_batch"] == pytest.approx(0.0)
    # a curve that prices a's rows at 1.5 s: the UNet's batch effect explains the whole gap in UNet time
    c = profile.compare_samplers({**a, "unet_predicted_s": 1.5, "wall_s": 2.5}, b, 4, 4)
    assert c["curve_unet_ratio"] == pytest.approx(2.0 / 1.5)
    assert c["gap_from_batch"] == pytest.approx((2.0 - 2.0 / 1.5) / (2.0 - 3.0 / 2.5))
    assert math.isnan(profile.compare_samplers(a, a, 4, 4)["gap_from_batch"])


def test_call_log_batch_curve_and_explain_on_tiny_pipeline(tiny_pipe):
    from b2lib.algorithm.sampling import sample_branches

    curve = profile.batch_curve(tiny_pipe, [2, 4], repeats=1)
    assert list(curve["rows"]) == [2, 4] and (curve["s_per_call"] > 0).all()
    assert curve["ms_per_row"].iloc[0] == pytest.approx(1e3 * curve["s_per_call"].iloc[0] / 2)

    def branched(loop):
        return lambda r: sample_branches(tiny_pipe, ["a", "b"], 2, 2, num_steps=4, branch_loop=loop)

    batched = profile.explain_sampler(tiny_pipe, branched(False), curve, repeats=1)
    looped = profile.explain_sampler(tiny_pipe, branched(True), curve, repeats=1)
    # 2 prefix steps on 2 prompts (x2 guidance = 4 rows), then 2 steps of 4 branches (8 rows): 24 rows either way
    assert batched["unet_rows"] == looped["unet_rows"] == 2 * 4 + 2 * 8
    assert batched["batches"] == {4: 2, 8: 2} and looped["batches"] == {4: 6}
    assert batched["unet_calls"] == 4 and looped["unet_calls"] == 6
    assert batched["other_s"] == pytest.approx(batched["wall_s"] - batched["unet_s"])
    table = profile.op_profile(lambda: branched(False)(0), top=3)
    assert list(table["op"])[-1] == "other" and len(table) == 4 and (table["self_s"] >= 0).all()


def test_profile_study_smoke_on_tiny_pipeline(tiny_pipe):
    result = profile.profile_study(tiny_pipe, ["a", "b"], size="smoke", progress=False)
    runs = profile.runs_table(result)
    assert set(runs.index) == {"batched", "loop", "batched_wide", "loop_wide", "tree", "independent"}
    assert runs.loc["batched_wide", "batches"] == {4: 2, 12: 2}  # 2 prefixes x 3 branches, guided
    assert runs.loc["batched", "unet_rows"] == runs.loc["loop", "unet_rows"]
    assert runs.loc["tree", "unet_rows"] < runs.loc["independent", "unet_rows"]  # shared nodes run once
    bound = result["tree_vs_independent"]["bound"]
    assert bound == pytest.approx(runs.loc["independent", "unet_rows"] / runs.loc["tree", "unet_rows"])
    ops = profile.ops_table(result, top=3)
    assert list(ops.index)[-1] == "other" and len(ops) == 4
    assert ops["batched_s"].sum() > 0 and ops["loop_s"].sum() > 0
