"""fp32 against bf16 compute (:mod:`b2lib.utils.precision`) on the embedded world: the speed of each phase of a run at
both dtypes, as a ratio bf16 / fp32 timed in interleaved repeats (:func:`~b2lib.bench.timing.time_pair`), next to the
CPU's bf16 flags (the ratio is a property of the CPU: AMX tiles, AVX512-BF16 dot products, or neither).

Phases: plain sampling (DDPO's sampler), branch sampling (B²), tree sampling, one whole B² stage and one whole DDPO
stage at the main job's setup (:data:`b2lib.experiments.setups.MAIN`: its recipe and each method's tuned point), and the
evaluation (generation, CLIPScore, BERTScore and the judge for ``eval_images`` images). Each is also checked for
what bf16 changes: the sampled images' difference from fp32 under the same noise.
"""

from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from b2lib.algorithm.sampling import sample_branches, sample_trajectories
from b2lib.algorithm.tree import sample_tree
from b2lib.bench.timing import machine_info, paired_ratio, time_pair
from b2lib.evaluation.generate import evaluate_prompts
from b2lib.experiments.evalsettings import text_metric
from b2lib.experiments.presets import load_models, trainer_config
from b2lib.experiments.setups import MAIN
from b2lib.training.trainer import RLTrainer
from b2lib.utils.precision import bf16_problem, compute_dtype, cpu_info, current_dtype
from b2lib.world import judge_batch
from b2lib.world.prompts import split_prompts

__all__ = ["DTYPE_SIZES", "DTYPE_COLUMNS", "bench_dtype", "dtype_table"]

#: sizes of the comparison: the sampling batch, prefixes x branches for branch sampling, the tree (``(branch_at,
#: branches)`` per level) and its prefixes, the chain, timed repeats per phase, evaluation images, and the preset
#: whose trainer settings the stages use. ``full``: 32 images per sampling call, as a stage of the embedded preset
#: samples them (B²: 8 prefixes x 4 branches; the tree: 4 prefixes x 8 leaves), 20 steps, 64 evaluation images;
#: ``smoke`` checks the code path in minutes (4-step chains, the smoke preset's stages).
DTYPE_SIZES = {
    "full": dict(batch=32, prefixes=8, branches=4, tree=[[5, 2], [10, 2], [15, 2]], tree_prefixes=4, steps=20,
                 repeats=5, eval_images=64, preset="embedded"),
    "smoke": dict(batch=4, prefixes=2, branches=2, tree=[[1, 2], [2, 2], [3, 2]], tree_prefixes=1, steps=4,
                  repeats=2, eval_images=4, preset="smoke"),
}  # fmt: skip

#: columns of ``dtype.csv``: one row per phase
DTYPE_COLUMNS = (
    "phase",
    "unit",
    "work",
    "fp32_per_s",
    "bf16_per_s",
    "ratio_median",
    "ratio_min",
    "ratio_max",
    "repeats",
    "size",
    "threads",
    "cpu_model",
    "avx512_bf16",
    "amx_bf16",
)


def _pair(fn: Callable[[int], object], repeats: int, work: float, desc: str) -> dict:
    """``fn(r)`` under bf16 and under fp32 compute, repeats interleaved; rates in work/s and their ratio bf16/fp32."""

    def under(dtype):
        def run(r):
            with compute_dtype(dtype):
                fn(r)

        return run

    bf16, fp32 = time_pair(under("bf16"), under("fp32"), repeats, work=work, desc=desc)
    return {"bf16": bf16.summary(), "fp32": fp32.summary(), "ratio": paired_ratio(bf16, fp32), "work": work}


#: what each stage's metrics say about it, kept per dtype (warm-up stage first): where the time went (sampling with
#: its rewards, the update, its backward passes), and what bf16 changed (the mean reward, the samples kept)
STAGE_PARTS = ("sample_s", "train_s", "backward_s", "reward_mean", "kept")


def _stage_pair(make_trainer: Callable[[str], object], repeats: int, desc: str) -> dict:
    """One whole stage (sample, reward, advantages, update) of two trainers that differ only in ``dtype``, stepped
    in lockstep, so each timed pair is the same stage (the same interval, prompts and noise) at both dtypes."""
    trainers = {dtype: make_trainer(dtype) for dtype in ("bf16", "fp32")}
    images = trainers["fp32"].config.images_per_stage
    bf16, fp32 = time_pair(
        lambda r: trainers["bf16"].train_stage(),
        lambda r: trainers["fp32"].train_stage(),
        repeats,
        work=images,
        desc=desc,
    )
    logs = {dtype: t.log for dtype, t in trainers.items()}
    parts = {key: {dtype: [m[key] for m in log] for dtype, log in logs.items()} for key in STAGE_PARTS}
    return {
        "bf16": bf16.summary(),
        "fp32": fp32.summary(),
        "ratio": paired_ratio(bf16, fp32),
        "work": images,
        "stages": len(logs["fp32"]),
        "reward_mean": {dtype: [m["reward_mean"] for m in log] for dtype, log in logs.items()},
        **parts,
    }


def _settings(size: str, repeats: int | None) -> dict:
    """The sizes of ``size`` with ``repeats`` laid over them; raises before any model loads on an unknown size or a
    CPU without native bf16 (emulated bf16 is slower than fp32: there would be nothing to compare)."""
    if size not in DTYPE_SIZES:
        raise ValueError(f"Unknown size {size!r}: use one of {sorted(DTYPE_SIZES)}.")
    why = bf16_problem("cpu")
    if why is not None:
        raise ValueError(f"bf16 is not native on this CPU ({why}): there is nothing to compare.")
    s = dict(DTYPE_SIZES[size])
    if repeats:
        s["repeats"] = repeats
    return s


def _gen(r: int) -> torch.Generator:
    """The noise of repeat ``r`` (the warm-up's ``r < 0`` shares repeat 0's), so both dtypes sample the same noise."""
    return torch.Generator().manual_seed(max(r, 0))


def _sampling_phases(pipe, batch: list[str], s: dict, bar) -> dict:
    """Plain sampling (with the images' bf16 - fp32 difference under the same noise), branch sampling and tree
    sampling, each timed under both dtypes; ``bar`` advances once per phase."""

    reps, steps = s["repeats"], s["steps"]
    out: dict = {}

    def plain(r):
        return sample_trajectories(pipe, batch, num_steps=steps, generator=_gen(r))

    out["sampling"] = {**_pair(plain, reps, len(batch), "sampling"), "unit": "images"}
    with compute_dtype("bf16"):
        images_bf16 = plain(0).images
    diff = (images_bf16 - plain(0).images).abs()
    out["sampling"]["image_abs_diff"] = {"mean": float(diff.mean()), "max": float(diff.max())}
    bar.update(1)

    prefixes, b = batch[: s["prefixes"]], s["branches"]
    out["branches"] = {
        **_pair(
            lambda r: sample_branches(pipe, prefixes, b, steps // 2, num_steps=steps, generator=_gen(r)),
            reps,
            len(prefixes) * b,
            "branches",
        ),
        "unit": "images",
    }
    bar.update(1)
    levels = s["tree"]
    leaves = len(batch[: s["tree_prefixes"]]) * int(torch.tensor([k for _, k in levels]).prod())
    out["tree"] = {
        **_pair(
            lambda r: sample_tree(pipe, batch[: s["tree_prefixes"]], levels, num_steps=steps, generator=_gen(r)),
            reps,
            leaves,
            "tree",
        ),
        "unit": "images",
    }
    bar.update(1)
    return out


def _stage_phases(train: list[str], s: dict, bar) -> dict:
    """One whole B² stage and one whole DDPO stage at the main job's setup, each method's two trainers (fresh models)
    differing only in ``dtype``; ``bar`` advances once per method."""

    reps, out = s["repeats"], {}
    for method in ("b2", "ddpo"):

        def make_trainer(dtype: str, method: str = method):
            p, r = load_models("embedded")
            cfg = trainer_config(
                s["preset"],
                method,
                stages=max(MAIN["stages"], reps + 1),  # B²'s interval schedule as in the main job
                recipe=MAIN["recipe"],
                **{**MAIN["method_overrides"].get(method, {}), "dtype": dtype, "progress": False},
            )
            return RLTrainer(p, r, train, cfg)

        out[f"{method}_stage"] = {**_stage_pair(make_trainer, reps, f"{method} stage"), "unit": "images"}
        bar.update(1)
    return out


def _evaluation_phase(pipe, reward, test: list[str], s: dict) -> dict:
    """The evaluation (generation, CLIPScore, BERTScore, judge) of about ``eval_images`` images under both dtypes,
    with the mean scores each dtype reported."""

    bert = text_metric(True, "cpu")
    n_per_prompt = max(1, s["eval_images"] // 8)
    eval_prompts = test[: max(1, s["eval_images"] // n_per_prompt)]
    scores: dict = {}

    def evaluation(r):
        table, _, _ = evaluate_prompts(
            pipe,
            eval_prompts,
            reward,
            judge_fn=judge_batch,
            n_per_prompt=n_per_prompt,
            num_steps=s["steps"],
            text_metric=bert,
        )
        scores[current_dtype()] = table

    return {
        **_pair(evaluation, s["repeats"], len(eval_prompts) * n_per_prompt, "evaluation"),
        "unit": "images (generation + CLIPScore + BERTScore + judge)",
        # the same prompts and noise: the bf16 and fp32 images differ (a few pixels a lot, see sampling), so these are
        # what an evaluation in bf16 reports against one in fp32, not the score models' own rounding
        **{
            f"{col}_mean": {dtype: float(table[col].mean()) for dtype, table in scores.items()}
            for col in ("reward", "bertscore", "judge_all_ok")
        },
    }


def bench_dtype(size: str = "full", repeats: int | None = None, progress: bool = True) -> dict:
    """Every phase at fp32 and at bf16 compute (see the module docstring). Returns one JSON-able dict: the machine, the
    CPU's bf16 flags, the sizes, and per phase the rates (work/s, min/median/max), the work unit and the per-repeat
    ratio bf16/fp32 (> 1: bf16 is faster). Raises where this machine has no native bf16 (emulated bf16 is slower
    than fp32, and a run would refuse it: :func:`b2lib.utils.precision.check_dtype`)."""

    s = _settings(size, repeats)
    out: dict = {"machine": machine_info(), "cpu": cpu_info(), "size": size, "settings": s}
    train, test = split_prompts("counting")
    batch = [train[i % len(train)] for i in range(s["batch"])]
    pipe, reward = load_models("embedded")
    pipe.set_progress_bar_config(disable=True)
    bar = tqdm(total=6, desc="fp32 | bf16", disable=not progress)
    out.update(_sampling_phases(pipe, batch, s, bar))
    out.update(_stage_phases(train, s, bar))
    out["evaluation"] = _evaluation_phase(pipe, reward, test, s)
    bar.update(1)
    bar.close()
    return out


PHASES = ("sampling", "branches", "tree", "b2_stage", "ddpo_stage", "evaluation")


def dtype_table(result: dict):
    """One row per phase (:data:`DTYPE_COLUMNS`): median rates at both dtypes, the per-repeat ratio bf16/fp32 and the
    machine it was measured on."""
    import pandas as pd

    cpu, rows = result["cpu"], []
    for phase in PHASES:
        if phase not in result:
            continue
        r = result[phase]
        rows.append(
            {
                "phase": phase,
                "unit": r["unit"],
                "work": r["work"],
                "fp32_per_s": r["fp32"]["rate"]["median"],
                "bf16_per_s": r["bf16"]["rate"]["median"],
                "ratio_median": r["ratio"]["median"],
                "ratio_min": r["ratio"]["min"],
                "ratio_max": r["ratio"]["max"],
                "repeats": len(r["fp32"]["seconds"]),
                "size": result["size"],
                "threads": result["machine"].get("cpu_threads"),
                "cpu_model": cpu.get("model"),
                "avx512_bf16": cpu.get("avx512_bf16"),
                "amx_bf16": cpu.get("amx_bf16"),
            }
        )
    return pd.DataFrame(rows, columns=list(DTYPE_COLUMNS))
