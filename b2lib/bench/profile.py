"""Where the time of batched branches and of tree sampling goes: every UNet call's batch and seconds, the UNet's cost
per row against its batch, and a profile by operator.

Why this exists: the sampling benchmarks measure batched branches at about 0.93x a loop over the branches, and a
depth-3 tree at about 0.8 of its node-count bound. Both bounds assume that a UNet row costs the same whatever the
batch it runs in. This module measures that assumption directly: :func:`batch_curve` times the UNet alone at each
batch, :func:`explain_sampler` records each call a sampler makes and prices the same calls on the curve (the
*predicted* time) and on a constant cost per row (the *bound*'s premise), and :func:`op_profile` says which
operators take the time. When the curve's prediction matches the measured ratio and the bound does not, the gap is the
UNet's per-row cost changing with the batch, not the sampler's Python.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch

from b2lib.algorithm.sampling import sample_branches, sample_trajectories
from b2lib.algorithm.tree import Level, sample_tree
from b2lib.bench.timing import sync

__all__ = [
    "CallLog",
    "batch_curve",
    "price",
    "op_profile",
    "explain_sampler",
    "compare_samplers",
    "PROFILE_SIZES",
    "profile_study",
    "runs_table",
    "ops_table",
]


@dataclass
class CallLog:
    """Batch rows and wall seconds of every ``forward`` of ``module`` while the context is open (hooks, removed on
    exit). Rows are the first positional tensor's (or ``sample=``'s) leading dimension: for the UNet that is
    2 x images under classifier-free guidance."""

    module: torch.nn.Module
    calls: list[tuple[int, float]] = field(default_factory=list)

    def __enter__(self) -> "CallLog":
        def pre(mod, args, kwargs):
            x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
            self._rows = int(x.shape[0])
            sync()
            self._t0 = time.perf_counter()

        def post(mod, args, kwargs, out):
            sync()
            self.calls.append((self._rows, time.perf_counter() - self._t0))

        self._handles = [
            self.module.register_forward_pre_hook(pre, with_kwargs=True),
            self.module.register_forward_hook(post, with_kwargs=True),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()

    @property
    def seconds(self) -> float:
        return float(sum(s for _, s in self.calls))

    @property
    def rows(self) -> int:
        return int(sum(r for r, _ in self.calls))


def _unet_inputs(pipe, rows: int, generator: torch.Generator) -> dict:
    unet = pipe.unet
    size = unet.config.sample_size
    ctx = pipe.text_encoder.config.hidden_size
    length = pipe.tokenizer.model_max_length
    return dict(
        sample=torch.randn(rows, unet.config.in_channels, size, size, generator=generator),
        timestep=torch.tensor(500),
        encoder_hidden_states=torch.randn(rows, length, ctx, generator=generator),
    )


@torch.no_grad()
def batch_curve(pipe, rows: list[int], repeats: int = 5) -> pd.DataFrame:
    """Seconds of one UNet forward at each batch of ``rows`` (median of ``repeats``, batches interleaved so drifts in
    the machine's speed fall on every batch alike), and seconds per row. The sampler's calls are priced on it."""
    gen = torch.Generator().manual_seed(0)
    inputs = {r: _unet_inputs(pipe, r, gen) for r in rows}
    for r in rows:  # warm-up: first calls at a new shape allocate and pick kernels
        pipe.unet(**inputs[r])
    times: dict[int, list[float]] = {r: [] for r in rows}
    for _ in range(repeats):
        for r in rows:
            sync()
            t = time.perf_counter()
            pipe.unet(**inputs[r])
            sync()
            times[r].append(time.perf_counter() - t)
    out = pd.DataFrame({"rows": rows, "s_per_call": [float(np.median(times[r])) for r in rows]})
    out["ms_per_row"] = 1e3 * out["s_per_call"] / out["rows"]
    return out


def price(calls: list[tuple[int, float]], curve: pd.DataFrame) -> float:
    """Seconds the UNet calls ``calls`` would take on ``curve`` (linear interpolation in rows between measured
    batches, linear extrapolation beyond them)."""
    x, y = curve["rows"].to_numpy(float), curve["s_per_call"].to_numpy(float)

    def at(r: float) -> float:
        if r <= x[0]:
            return float(y[0] * r / x[0]) if r < x[0] else float(y[0])
        if r >= x[-1]:
            slope = (y[-1] - y[-2]) / (x[-1] - x[-2]) if len(x) > 1 else y[-1] / x[-1]
            return float(y[-1] + slope * (r - x[-1]))
        return float(np.interp(r, x, y))

    return float(sum(at(r) for r, _ in calls))


def op_profile(fn: Callable[[], object], top: int = 10) -> pd.DataFrame:
    """Self CPU seconds by operator over one call of ``fn`` (``torch.profiler``), the ``top`` largest and the rest
    summed as ``other``: which kernels the time is in (convolutions, matrix products, attention, norms, glue)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    rows = [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()]
    table = pd.DataFrame(rows, columns=["op", "self_s", "calls"]).sort_values("self_s", ascending=False)
    head, rest = table.head(top), table.iloc[top:]
    other = pd.DataFrame([{"op": "other", "self_s": rest["self_s"].sum(), "calls": rest["calls"].sum()}])
    return pd.concat([head, other], ignore_index=True)


def explain_sampler(pipe, fn: Callable[[int], object], curve: pd.DataFrame, repeats: int = 3) -> dict:
    """Run ``fn(r)`` ``repeats`` times (after one warm-up) with every UNet call logged. Returns the median wall
    seconds, the UNet's measured seconds, its calls (batch rows -> count), its rows, the same calls priced on
    ``curve`` (``unet_predicted_s``) and the rest of the wall time (``other_s``: decode, text encoder, scheduler steps,
    noise draws, Python)."""
    fn(-1)
    walls, unet, logs = [], [], []
    for r in range(repeats):
        with CallLog(pipe.unet) as log:
            sync()
            t = time.perf_counter()
            fn(r)
            sync()
            walls.append(time.perf_counter() - t)
        unet.append(log.seconds)
        logs.append(log)
    i = int(np.argsort(walls)[len(walls) // 2])  # the median run, whole
    calls = logs[i].calls
    batches: dict[int, int] = {}
    for rows, _ in calls:
        batches[rows] = batches.get(rows, 0) + 1
    return {
        "wall_s": walls[i],
        "wall_s_all": walls,
        "unet_s": unet[i],
        "other_s": walls[i] - unet[i],
        "unet_rows": logs[i].rows,
        "unet_calls": len(calls),
        "batches": dict(sorted(batches.items())),
        "unet_predicted_s": price(calls, curve),
        "ms_per_row": 1e3 * unet[i] / max(logs[i].rows, 1),
    }


def compare_samplers(a: dict, b: dict, work_a: float, work_b: float) -> dict:
    """``a``'s trajectories/s over ``b``'s, four ways: measured (``ratio``), if the UNet ran at a constant cost per row
    and nothing else cost anything (``bound``: the rows ratio, the sampling benchmarks' premise), if the UNet ran
    at the curve's cost for each call's batch and the rest stayed as measured (``predicted``), and the measured UNet
    time alone (``unet_ratio``). ``gap_from_batch``: the part of bound - ratio the curve accounts for."""
    rate = lambda x, w: w / x  # noqa: E731
    ratio = rate(a["wall_s"], work_a) / rate(b["wall_s"], work_b)
    bound = (work_a / a["unet_rows"]) / (work_b / b["unet_rows"])
    predicted = rate(a["unet_predicted_s"] + a["other_s"], work_a) / rate(b["unet_predicted_s"] + b["other_s"], work_b)
    unet_ratio = rate(a["unet_s"], work_a) / rate(b["unet_s"], work_b)
    curve_unet = rate(a["unet_predicted_s"], work_a) / rate(b["unet_predicted_s"], work_b)
    return {
        "ratio": ratio,
        "bound": bound,
        "of_bound": ratio / bound,
        "unet_ratio": unet_ratio,
        "curve_unet_ratio": curve_unet,
        "predicted": predicted,
        "gap_from_batch": (bound - curve_unet) / (bound - ratio) if not math.isclose(bound, ratio) else float("nan"),
    }


#: sizes of the profile: B²'s stage (8 prefixes x 4 branches, split at half the chain), the wider call notebook 05
#: times (``wide``: 16 prefixes x 5 branches, 160-row UNet calls) and notebook 12's depth-3 tree (4 prefixes x 8
#: leaves), 20 steps, as :data:`b2lib.bench.dtype.DTYPE_SIZES` times them; smoke checks the code.
PROFILE_SIZES: dict[str, dict] = {
    "full": dict(prefixes=8, branches=4, wide=(16, 5), tree=[[5, 2], [10, 2], [15, 2]], tree_prefixes=4, steps=20,
                 repeats=5, curve=[8, 16, 32, 64, 128, 160], top=10),
    "smoke": dict(prefixes=2, branches=2, wide=(2, 3), tree=[[1, 2], [2, 2], [3, 2]], tree_prefixes=1, steps=4,
                  repeats=1, curve=[2, 4, 8, 12], top=5),
}  # fmt: skip


def profile_study(pipe, prompts: list[str], size: str = "full", progress: bool = True) -> dict:
    """The whole profile on ``pipe``: the UNet's batch curve; batched branches against the loop; the tree against
    independent sampling of as many trajectories; each with its calls priced on the curve
    (:func:`compare_samplers`); and the operators of one batched and one looped branch sampling (:func:`op_profile`).
    ``prompts``: at least ``prefixes`` of them (B²'s stage samples this many prefixes)."""

    s = PROFILE_SIZES[size]
    steps, split, reps = s["steps"], s["steps"] // 2, s["repeats"]
    levels = [Level(*lv) for lv in s["tree"]]
    leaves = math.prod(lv.branches for lv in levels)
    gen = lambda r: torch.Generator().manual_seed(1000 + r)  # noqa: E731
    pre, tree_pre = list(prompts[: s["prefixes"]]), list(prompts[: s["tree_prefixes"]])

    wide_pre, wide_b = list(prompts[: s["wide"][0]]), s["wide"][1]

    def branches(loop: bool, wide: bool = False) -> Callable[[int], object]:
        p, b = (wide_pre, wide_b) if wide else (pre, s["branches"])
        return lambda r: sample_branches(pipe, p, b, split, num_steps=steps, generator=gen(r), branch_loop=loop)

    def tree(r):
        return sample_tree(pipe, tree_pre, levels, num_steps=steps, generator=gen(r))

    def independent(r):
        flat = [p for p in tree_pre for _ in range(leaves)]
        return sample_trajectories(pipe, flat, num_steps=steps, trained_steps=steps - levels[-1].branch_at,
                                   generator=gen(r))  # fmt: skip

    say = print if progress else (lambda *a, **k: None)
    say("UNet batch curve ...", flush=True)
    curve = batch_curve(pipe, s["curve"], repeats=reps)
    runs = {}
    for name, fn in (("batched", branches(False)), ("loop", branches(True)), ("batched_wide", branches(False, True)),
                     ("loop_wide", branches(True, True)), ("tree", tree), ("independent", independent)):  # fmt: skip
        say(f"{name} ...", flush=True)
        runs[name] = explain_sampler(pipe, fn, curve, repeats=reps)
    n_branch, n_tree, n_wide = len(pre) * s["branches"], len(tree_pre) * leaves, len(wide_pre) * wide_b
    say("operator profiles ...", flush=True)
    ops = {name: op_profile(lambda fn=fn: fn(0), top=10_000) for name, fn in
           (("batched", branches(False)), ("loop", branches(True)))}  # fmt: skip
    return {
        "size": size,
        "threads": torch.get_num_threads(),
        "curve": curve,
        "runs": runs,
        "branch_vs_loop": compare_samplers(runs["batched"], runs["loop"], n_branch, n_branch),
        "branch_vs_loop_wide": compare_samplers(runs["batched_wide"], runs["loop_wide"], n_wide, n_wide),
        "tree_vs_independent": compare_samplers(runs["tree"], runs["independent"], n_tree, n_tree),
        "ops": ops,
        "sizes": s,
    }


def runs_table(result: dict) -> pd.DataFrame:
    """One row per sampler of :func:`profile_study`: wall, UNet and other seconds, rows, calls, ms per UNet row."""
    cols = ["wall_s", "unet_s", "unet_predicted_s", "other_s", "unet_rows", "unet_calls", "ms_per_row", "batches"]
    return pd.DataFrame(result["runs"]).T[cols]


def ops_table(result: dict, top: int | None = None) -> pd.DataFrame:
    """Self seconds by operator, batched against loop side by side, with their difference (batched - loop): the
    ``top`` operators by the loop's time (default: the size's) and the rest summed as ``other``."""
    top = top or result["sizes"]["top"]
    a = result["ops"]["batched"].set_index("op")["self_s"].rename("batched_s")
    b = result["ops"]["loop"].set_index("op")["self_s"].rename("loop_s")
    table = pd.concat([a, b], axis=1).fillna(0.0).sort_values("loop_s", ascending=False)
    table = pd.concat([table.head(top), table.iloc[top:].sum().to_frame("other").T])
    table["batched_minus_loop_s"] = table["batched_s"] - table["loop_s"]
    return table
