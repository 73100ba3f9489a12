"""The speed suite: every measurement on the embedded world (CPU), optionally the SD-1.4 architecture, and the
tables notebook 05 shows. Labels are written from the sizes each measurement reports, so they cannot disagree."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from b2lib.bench.paper import bench_paper_arch, flops_per_image, paper_flops
from b2lib.bench.sampling import (
    bench_branch_loop,
    bench_branching,
    bench_sampler_vs_pipeline,
    bench_tree,
    bench_unet_share_sampling,
)
from b2lib.bench.timing import machine_info
from b2lib.bench.training import bench_stage_reload, bench_training_share, bench_update_packing
from b2lib.experiments.presets import load_models, trainer_config
from b2lib.training.trainer import RLTrainer
from b2lib.world.prompts import split_prompts

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SIZES", "GOALS", "run_suite", "labels", "summary_table", "sampling_parts_table"]

#: sizes of the suite: sampling batch; prefixes per branch-sampling call (``prefixes``: the embedded preset's
#: ``sample_batch_size``, 16; ``reference_prefixes``: the reference implementation's 8 prompts per batch); branches per
#: prefix (the paper's B); steps; repeats; training stages; ``tree``: the branch tree timed against independent and
#: depth-1 sampling, ``(branch_at, branches)`` per level (8 leaves per prefix, a split every quarter of the chain)
SIZES = {
    "full": dict(
        batch=32,
        prefixes=16,
        reference_prefixes=8,
        branches=5,
        steps=20,
        repeats=5,
        stages=5,
        tree=[[5, 2], [10, 2], [15, 2]],
    ),
    "smoke": dict(
        batch=4,
        prefixes=2,
        reference_prefixes=1,
        branches=5,
        steps=4,
        repeats=2,
        stages=1,
        tree=[[1, 2], [2, 2], [3, 2]],
    ),
}


def run_suite(
    size: str = "full",
    repeats: int | None = None,
    paper_arch: bool = False,
    embedded: bool = True,
    dtype: str = "bf16",
    compile: bool = False,
    progress: bool = True,
) -> dict:
    """Every measurement of the performance issue on the embedded world (CPU), plus optionally the SD-1.4
    architecture. Returns one JSON-able dict (machine, settings, each measurement with min/median/max)."""
    if size not in SIZES:
        raise ValueError(f"Unknown size {size!r}: use one of {sorted(SIZES)}.")
    s = dict(SIZES[size])
    if repeats:
        s["repeats"] = repeats
    out: dict = {"machine": machine_info(), "size": size, "settings": s}
    steps, reps, b = s["steps"], s["repeats"], s["branches"]
    if embedded:
        prompts = split_prompts("counting")[0]
        batch = [prompts[i % len(prompts)] for i in range(s["batch"])]
        prefixes = batch[: s["prefixes"]]
        pipe, reward = load_models("embedded")
        pipe.set_progress_bar_config(disable=True)
        steps_bar = tqdm(total=10, desc="benchmarks", disable=not progress)

        def step(name, value):
            out[name] = value
            steps_bar.update(1)

        step("flops", {"embedded": flops_per_image(pipe), "sd14_512px": paper_flops(steps, b)})
        step("sampler_vs_pipeline", bench_sampler_vs_pipeline(pipe, batch, steps, repeats=reps))
        step("branching", bench_branching(pipe, prefixes, b, steps, repeats=reps))
        step(
            "branching_reference_batch", bench_branching(pipe, batch[: s["reference_prefixes"]], b, steps, repeats=reps)
        )
        step("branch_loop", bench_branch_loop(pipe, prefixes, b, steps, repeats=reps))
        step("unet_share_sampling", bench_unet_share_sampling(pipe, prefixes, b, steps, repeats=reps))
        step("tree", bench_tree(pipe, batch[: s["prefixes"] // 4 or 1], s["tree"], steps, repeats=reps))

        overrides = dict(num_steps=steps, split_start=max(1, steps // 2), progress=False)
        ips = None
        if size == "smoke":
            overrides.update(sample_batch_size=2, train_batch_size=2)
            ips = 4

        def make_trainer(**extra):
            p, r = load_models("embedded")
            return RLTrainer(
                p, r, prompts, trainer_config("embedded", "b2", images_per_stage=ips, **{**overrides, **extra})
            )

        step(
            "update_packing",
            bench_update_packing(make_trainer(timestep_chunk=0), make_trainer(timestep_chunk=1), repeats=reps),
        )
        step("training_share", bench_training_share(make_trainer(), stages=s["stages"]))
        step("stage_reload", bench_stage_reload(make_trainer, stages=reps))
        steps_bar.close()
    if paper_arch:
        out["paper_arch"] = bench_paper_arch(
            reduced=not torch.cuda.is_available(),
            batch=8 if size == "full" else 2,
            num_steps=steps,
            repeats=reps,
            dtype=dtype,
            compile=compile,
        )
    return out


#: what the performance issue asks of each ratio (None: reported, no goal)
GOALS = {
    "sampler_vs_pipeline": 0.95,
    "branching": 1.6,
    "branching_chain": 1.6,
    "branching_reference_batch": 1.6,
    "branch_loop": None,
    "unet_share_sampling": 0.90,
    "unet_share_denoise": 0.90,
    "update_packing": None,
    "train_unet_share": None,
    "stage_reload": None,
    "tree": None,
    "tree_depth_one": None,
}


def labels(result: dict) -> dict[str, str]:
    """What each row of :func:`summary_table` measured, in words, with the sizes that ``result``'s measurements report
    (prefixes, branches, split step), so a label cannot disagree with the run."""
    br, ref = result.get("branching", {}), result.get("branching_reference_batch", {})
    b, split, n = br.get("branches", "B"), br.get("split_step", "half"), br.get("prefixes", "?")
    tr = result.get("tree", {})
    tree = " × ".join(f"{k} at step {at}" for at, k in tr.get("levels", [])) + f", {tr.get('prefixes', '?')} prefixes"
    return {
        "sampler_vs_pipeline": "our log-prob sampler / diffusers pipeline (images/s)",
        "branching": f"branch sampling (B={b}, split at step {split}, {n} prefixes) / independent (trajectories/s, "
        "decode included)",
        "branching_chain": "the same, denoising chain only (decode excluded: same work in both)",
        "branching_reference_batch": f"branch sampling with the reference's {ref.get('prefixes', '?')} prefixes per "
        "call (decode included)",
        "branch_loop": "batched branches / loop over branches (trajectories/s)",
        "unet_share_sampling": "share of branch-sampling wall time in UNet forward (decode included)",
        "unet_share_denoise": "share of the denoising loop's wall time in UNet forward (decode excluded)",
        "update_packing": "PPO update: all interval steps per forward / one step per forward",
        "train_unet_share": "share of a stage's update time in UNet forward + backward",
        "stage_reload": "a B² stage in one process / with models reloaded each stage",
        "tree": f"tree sampling ({tree}) / independent (trajectories/s, decode included)",
        "tree_depth_one": f"tree sampling ({tree}) / one split at its first branch point, as many leaves",
    }


def sampling_parts_table(result: dict) -> "pd.DataFrame":
    """Median seconds of each part of the branched and independent sampling calls of the branching measurements
    (UNet, VAE decode, text encoder, and the rest: DDIM step, noise draws, glue), one row per call kind."""
    import pandas as pd

    rows = []
    for key in ("branching", "branching_reference_batch"):
        if key not in result or "branched_parts" not in result[key]:
            continue
        for column in ("branched", "independent"):
            runs = pd.DataFrame(result[key][f"{column}_parts"])
            runs["other_s"] = runs["total_s"] - runs[["unet_s", "decode_s", "text_encoder_s"]].sum(axis=1)
            rows.append(runs.median().rename(f"{result[key]['prefixes']} prefixes · {column}"))
    return pd.DataFrame(rows)


def summary_table(result: dict) -> "pd.DataFrame":
    """One row per measured ratio or share: min/median/max, the goal, whether the median meets it, and the
    ``bound``: the best value any sampling loop could reach given the measured decode time (NaN where none)."""
    import pandas as pd

    rows = []
    for key, label in labels(result).items():
        bound = None
        if key.startswith("unet_share") or key == "train_unet_share":
            block = result.get("unet_share_sampling" if key != "train_unet_share" else "training_share")
            if block is None:
                continue
            if key == "train_unet_share":
                vals = [
                    (r["unet_forward_s"] - r.get("sample_unet_s", 0.0) + r["backward_s"]) / r["train_s"]
                    for r in block["stages"]
                ]
                stats = {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}
            else:
                stats = block["share" if key == "unet_share_sampling" else "denoise_share"]
                if key == "unet_share_sampling" and "bound" in block:
                    bound = block["bound"]["median"]
        elif key == "tree_depth_one":
            if "tree" not in result:
                continue
            stats, bound = result["tree"]["ratio_depth_one"], result["tree"]["bound_depth_one"]
        elif key == "tree" and key in result:
            stats, bound = result["tree"]["ratio"], result["tree"]["bound"]
        elif key == "branching_chain":
            if "chain_ratio" not in result.get("branching", {}):
                continue
            stats = result["branching"]["chain_ratio"]
            bound = result["branching"].get("ideal")
        elif key in result:
            stats = result[key]["ratio"]
            if "bound" in result[key]:
                bound = result[key]["bound"]["median"]
        else:
            continue
        goal = GOALS[key]
        rows.append(
            {
                "measurement": label,
                "key": key,
                "min": stats["min"],
                "median": stats["median"],
                "max": stats["max"],
                "goal": goal,
                "met": None if goal is None else bool(stats["median"] >= goal),
                "bound": float("nan") if bound is None else bound,
            }
        )
    return pd.DataFrame(rows)
