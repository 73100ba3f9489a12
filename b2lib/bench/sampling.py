"""Sampling measurements: our sampler against the stock pipeline, branch against independent sampling, batched
against looped branches, and where sampling time goes (UNet, VAE decode, text encoder)."""

from __future__ import annotations

import time
from typing import Callable

import torch

from b2lib.algorithm.sampling import sample_branches, sample_trajectories
from b2lib.algorithm.tree import Level, sample_tree, tree_unet_rows
from b2lib.bench.timing import Timing, UnetTimer, paired_ratio, spread, sync, time_pair

__all__ = [
    "bench_sampler_vs_pipeline",
    "SamplingParts",
    "branching_bound",
    "bench_branching",
    "bench_branch_loop",
    "bench_unet_share_sampling",
    "bench_tree",
]


def bench_sampler_vs_pipeline(
    pipe, prompts: list[str], num_steps: int = 20, guidance_scale: float = 5.0, repeats: int = 5
) -> dict:
    """Our log-prob sampler (every transition stored) vs ``StableDiffusionPipeline.__call__`` at equal steps, batch
    and CFG, both decoding to image tensors. Goal: images/s ratio >= 0.95."""
    n = len(prompts)

    def ours(r):
        sample_trajectories(
            pipe,
            prompts,
            num_steps=num_steps,
            guidance_scale=guidance_scale,
            eta=1.0,
            generator=torch.Generator().manual_seed(r),
        )

    def stock(r):
        with torch.inference_mode():
            pipe(
                prompts,
                num_inference_steps=num_steps,
                guidance_scale=guidance_scale,
                eta=1.0,
                output_type="pt",
                generator=torch.Generator().manual_seed(r),
            )

    pipe.set_progress_bar_config(disable=True)
    a, b = time_pair(ours, stock, repeats, work=n, desc="sampler | pipeline")
    return {"ours": a.summary(), "diffusers": b.summary(), "ratio": paired_ratio(a, b), "batch": n, "steps": num_steps}


class SamplingParts:
    """Split the wall time of sampling calls into UNet forward, VAE decode and text-encoder forward (the rest is
    the scheduler step, noise draws and glue). A context manager: hooks on the UNet and the text encoder, and a
    timed wrapper around ``pipe.vae.decode`` (removed on exit)."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.decode_s = 0.0

    def __enter__(self) -> "SamplingParts":
        decode = self.pipe.vae.decode

        def timed_decode(*a, **kw):
            sync()
            t = time.perf_counter()
            out = decode(*a, **kw)
            sync()
            self.decode_s += time.perf_counter() - t
            return out

        self.pipe.vae.decode = timed_decode
        self.unet = UnetTimer(self.pipe.unet).__enter__()
        self.text = UnetTimer(self.pipe.text_encoder).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.unet.__exit__(*exc)
        self.text.__exit__(*exc)
        del self.pipe.vae.decode  # back to the class method

    def _once(self, fn: Callable[[int], object], r: int) -> dict:
        self.decode_s = self.unet.seconds = self.text.seconds = 0.0
        sync()
        t = time.perf_counter()
        fn(r)
        sync()
        return {
            "total_s": time.perf_counter() - t,
            "unet_s": self.unet.seconds,
            "decode_s": self.decode_s,
            "text_encoder_s": self.text.seconds,
        }

    def run_pair(
        self, fa: Callable[[int], object], fb: Callable[[int], object], repeats: int, warmup: int = 1
    ) -> tuple[list[dict], list[dict]]:
        """:meth:`run` for two callables, repeats interleaved as in :func:`time_pair`."""
        for w in range(warmup):
            fa(-1 - w)
            fb(-1 - w)
        rows: dict[str, list[dict]] = {"a": [], "b": []}
        for r in range(repeats):
            for key in "ab" if r % 2 == 0 else "ba":
                rows[key].append(self._once(fa if key == "a" else fb, r))
        return rows["a"], rows["b"]

    def run(self, fn: Callable[[int], object], repeats: int, warmup: int = 1) -> list[dict]:
        """Time ``fn(r)`` ``repeats`` times after ``warmup`` calls: one dict of seconds per timed run."""
        rows = []
        for r in range(-warmup, repeats):
            self.decode_s = self.unet.seconds = self.text.seconds = 0.0
            sync()
            t = time.perf_counter()
            fn(r)
            sync()
            total = time.perf_counter() - t
            if r >= 0:
                rows.append(
                    {
                        "total_s": total,
                        "unet_s": self.unet.seconds,
                        "decode_s": self.decode_s,
                        "text_encoder_s": self.text.seconds,
                    }
                )
        return rows


def branching_bound(
    independent_total_s: float, unet_step_s: float, num_steps: int, split_step: int, num_branches: int
) -> float:
    """The best trajectories/s ratio branch sampling can reach over independent sampling, given what the
    independent run measured: computing the prefix once per prompt removes ``(1 - 1/B)`` of the prefix's UNet time
    and nothing else (the decode, the text encoder and the branches' steps are the same work in both columns).

    ``unet_step_s`` is the UNet time of one step of the independent batch. With nothing but UNet time this is
    ``T / ((T - s) / B + s)``, 2B / (B + 1) for a split at half the chain; fixed costs pull it towards 1.
    """
    saved = split_step * unet_step_s * (1 - 1 / num_branches)
    if not 0 <= saved < independent_total_s:
        raise ValueError(f"the prefix saving ({saved:.3g} s) must lie in [0, {independent_total_s:.3g}) s.")
    return independent_total_s / (independent_total_s - saved)


def bench_branching(
    pipe, prompts: list[str], num_branches: int = 5, num_steps: int = 20, repeats: int = 5, guidance_scale: float = 5.0
) -> dict:
    """Branch sampling (``len(prompts)`` prefixes, ``num_branches`` branches from half the chain) vs the same number
    of independent trajectories. Goal: trajectories/s ratio >= 1.6 (the prefix is computed once per prompt; the
    ideal with half the chain shared is 2B / (B + 1), 1.67 for B = 5).

    Three ratios: of whole calls (``ratio``: text encoding, denoising, VAE decode), of the denoising chain alone
    (``chain_ratio``: the whole minus the decode, which is the same work in both columns), and the ``bound`` that a
    perfect prefix saving would reach given the independent run's measured decode and other fixed costs.
    """
    split = num_steps // 2
    total = len(prompts) * num_branches
    flat = [p for p in prompts for _ in range(num_branches)]

    def branched(r):
        sample_branches(
            pipe,
            prompts,
            num_branches,
            split,
            num_steps=num_steps,
            guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(r),
        )

    def independent(r):
        sample_trajectories(
            pipe,
            flat,
            num_steps=num_steps,
            trained_steps=split,
            guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(r),
        )

    with SamplingParts(pipe) as parts:
        rows_a, rows_b = parts.run_pair(branched, independent, repeats)

    def timing(rows, key=None):
        return Timing([r["total_s"] - (r[key] if key else 0.0) for r in rows], total)

    a, b = timing(rows_a), timing(rows_b)
    chain_a, chain_b = timing(rows_a, "decode_s"), timing(rows_b, "decode_s")
    bounds = [branching_bound(r["total_s"], r["unet_s"] / num_steps, num_steps, split, num_branches) for r in rows_b]
    ideal = 2 * num_branches / (num_branches + 1) if num_steps % 2 == 0 else None
    return {
        "branched": a.summary(),
        "independent": b.summary(),
        "ratio": paired_ratio(a, b),
        "chain_ratio": paired_ratio(chain_a, chain_b),
        "bound": spread(bounds),
        "ideal": ideal,
        "branched_parts": rows_a,
        "independent_parts": rows_b,
        "prefixes": len(prompts),
        "branches": num_branches,
        "split_step": split,
        "steps": num_steps,
    }


def bench_branch_loop(
    pipe, prompts: list[str], num_branches: int = 5, num_steps: int = 20, repeats: int = 5, guidance_scale: float = 5.0
) -> dict:
    """Batched branches (one UNet call per step for all) vs the reference's loop over branches."""
    split = num_steps // 2
    total = len(prompts) * num_branches

    def run(loop):
        def f(r):
            sample_branches(
                pipe,
                prompts,
                num_branches,
                split,
                num_steps=num_steps,
                guidance_scale=guidance_scale,
                generator=torch.Generator().manual_seed(r),
                branch_loop=loop,
            )

        return f

    a, b = time_pair(run(False), run(True), repeats, work=total, desc="batched | loop")
    return {
        "batched": a.summary(),
        "loop": b.summary(),
        "ratio": paired_ratio(a, b),
        "prefixes": len(prompts),
        "branches": num_branches,
    }


def bench_unet_share_sampling(
    pipe, prompts: list[str], num_branches: int = 5, num_steps: int = 20, repeats: int = 5
) -> dict:
    """Share of branch-sampling wall time spent inside UNet forward: of the whole call (prompt encoding, prefix,
    branches, VAE decode) and of the denoising loop alone (the whole minus text encoder and VAE decode). Goal >= 90 %.

    ``bound`` is the share with every cost other than the UNet and the decode removed: UNet / (UNet + decode).
    """
    with SamplingParts(pipe) as parts:
        calls0 = parts.unet.calls
        rows = parts.run(
            lambda r: sample_branches(
                pipe,
                prompts,
                num_branches,
                num_steps // 2,
                num_steps=num_steps,
                generator=torch.Generator().manual_seed(r),
            ),
            repeats,
        )
        calls = (parts.unet.calls - calls0) // (repeats + 1)
    shares = [r["unet_s"] / r["total_s"] for r in rows]
    loop_shares = [r["unet_s"] / (r["total_s"] - r["decode_s"] - r["text_encoder_s"]) for r in rows]
    bounds = [r["unet_s"] / (r["unet_s"] + r["decode_s"]) for r in rows]
    return {
        "share": spread(shares),
        "denoise_share": spread(loop_shares),
        "bound": spread(bounds),
        "runs": rows,
        "unet_calls_per_run": calls,
        "prefixes": len(prompts),
        "branches": num_branches,
    }


def bench_tree(
    pipe, prompts: list[str], levels, num_steps: int = 20, repeats: int = 5, guidance_scale: float = 5.0
) -> dict:
    """Tree sampling (``levels``: ``(branch_at, branches)`` pairs) against as many independent trajectories and
    against a depth-1 tree with as many leaves split at the tree's first branch point (B² with ``B`` = leaves per
    prompt): trajectories/s ratios, each with its ``bound``, the ratio of UNet rows
    (:func:`b2lib.algorithm.tree.tree_unet_rows`), which a sampler whose time is all UNet would reach."""
    import math

    levels = [lv if isinstance(lv, Level) else Level(*lv) for lv in levels]
    per_prompt = math.prod(lv.branches for lv in levels)
    total = len(prompts) * per_prompt
    flat = [p for p in prompts for _ in range(per_prompt)]
    first = levels[0].branch_at

    def tree(r):
        sample_tree(
            pipe,
            prompts,
            levels,
            num_steps=num_steps,
            guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(r),
        )

    def independent(r):
        sample_trajectories(
            pipe,
            flat,
            num_steps=num_steps,
            guidance_scale=guidance_scale,
            trained_steps=num_steps - levels[-1].branch_at,
            generator=torch.Generator().manual_seed(r),
        )

    def depth_one(r):
        sample_branches(
            pipe,
            prompts,
            per_prompt,
            num_steps - first,
            num_steps=num_steps,
            guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(r),
        )

    a, b = time_pair(tree, independent, repeats, work=total, desc="tree | independent")
    c, d = time_pair(tree, depth_one, repeats, work=total, desc="tree | depth 1")
    rows = tree_unet_rows(levels, num_steps, len(prompts))
    rows_depth_one = tree_unet_rows([Level(first, per_prompt)], num_steps, len(prompts))["tree"]
    return {
        "tree": a.summary(),
        "independent": b.summary(),
        "depth_one": d.summary(),
        "ratio": paired_ratio(a, b),
        "ratio_depth_one": paired_ratio(c, d),
        "bound": rows["ratio"],
        "bound_depth_one": rows_depth_one / rows["tree"],
        "unet_rows": rows["tree"],
        "levels": [[lv.branch_at, lv.branches] for lv in levels],
        "prefixes": len(prompts),
        "steps": num_steps,
    }
