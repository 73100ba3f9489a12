"""The flow path's speed bench on a flow world built from config: it times the three samplers on the same noise, and
our deterministic chain gives the stock pipeline's images."""

import torch

from b2lib.bench.flow import bench_flow_sampler_vs_pipeline
from b2lib.world.flow_models import build_flow_world_pipeline


def test_flow_bench_times_three_samplers_on_the_same_noise():
    pipe = build_flow_world_pipeline(seed=0)
    with torch.no_grad():  # a random transformer's last layer is zero-initialised: give it some output
        for p in pipe.transformer.proj_out.parameters():
            p.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    r = bench_flow_sampler_vs_pipeline(pipe, ["two red circles", "a blue square"], num_steps=3, repeats=2)
    for key in ("ode", "sde", "stock", "stock_beside_sde"):
        assert len(r[key]["seconds"]) == 2 and r[key]["work"] == 2
    for key in ("ratio_ode", "ratio_sde"):
        assert 0 < r[key]["min"] <= r[key]["median"] <= r[key]["max"]
    # same noise, same chain: the images agree to float rounding (a different seed would differ at ~0.1)
    assert r["max_abs_image_difference"] < 1e-3
    assert (r["batch"], r["steps"], r["eta"]) == (2, 3, 0.7)
