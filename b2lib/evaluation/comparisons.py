"""Paired comparisons of trained models, from their per-image evaluations (``eval_images.csv``): method against
method with two-level bootstrap intervals (:func:`paired_comparison`, :func:`paired_comparisons`, and
:func:`reference_pairs` for a run against a reference run's methods), and learning against drift from runs trained on
a reward and on its negation (:func:`sign_control`).

Why a module of its own: these are the statistics behind every verdict the README states (the same images scored
for both sides, seeds and prompts resampled by :mod:`b2lib.evaluation.stats`), shared by the notebooks, the studies
(:mod:`b2lib.studies.grids`) and the README table (:mod:`b2lib.reporting.summary_table`); reading run folders back into
tables is
:mod:`b2lib.reporting.report`'s job, which hands these functions their input
(:func:`b2lib.reporting.report.load_eval_images`,
:func:`b2lib.reporting.report.combine_runs`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from b2lib.evaluation.stats import bootstrap_difference, bootstrap_mean, verdict

__all__ = ["EVAL_IMAGE_METRICS", "paired_comparison", "paired_comparisons", "reference_pairs", "sign_control"]

#: per-image columns of ``eval_images.csv`` that the paired comparison reports (the judge column is 0/1)
EVAL_IMAGE_METRICS = {"reward": "CLIPScore", "bertscore": "BERTScore", "judge_all_ok": "judge: aligned"}


def _score_matrix(df: pd.DataFrame, metric: str) -> tuple:
    """``(seeds, images)`` scores of one method and the prompt of each image (images in index order)."""
    wide = df.pivot_table(index="seed", columns="image", values=metric, aggfunc="first", dropna=False)
    prompts = df.drop_duplicates("image").set_index("image").loc[wide.columns, "prompt"].to_numpy()
    return wide.to_numpy(dtype=float), prompts


def paired_comparison(
    images: pd.DataFrame,
    split: str = "test",
    metrics: Sequence[str] = tuple(EVAL_IMAGE_METRICS),
    pairs: Sequence[tuple[str, str]] = (("ddpo", "base"), ("b2", "base"), ("b2", "ddpo")),
    draws: int = 4000,
) -> pd.DataFrame:
    """Per template, metric and pair ``(a, b)``: the means of ``a`` and ``b`` (over seeds and images), ``a - b`` with
    its 95 % two-level bootstrap interval (:func:`b2lib.evaluation.stats.bootstrap_difference`: seeds of each side
    resampled independently, prompts jointly), the number of seeds and images per side, and the README verdict."""

    df = images[images["split"] == split]
    df = df.assign(seed=df["seed"].fillna(-1))
    rows = []
    for template, t in df.groupby("template", sort=False):
        for metric in metrics:
            if metric not in t or t[metric].isna().all():
                continue
            for a, b in pairs:
                ta, tb = t[t["method"] == a], t[t["method"] == b]
                if ta.empty or tb.empty:
                    continue
                sa, prompts = _score_matrix(ta, metric)
                sb, _ = _score_matrix(tb, metric)
                if sa.shape[1] != sb.shape[1]:
                    raise ValueError(f"{template}/{metric}: {a} and {b} were evaluated on different image sets.")
                diff = bootstrap_difference(sa.astype(float), sb.astype(float), prompts, draws=draws)
                rows.append(
                    {
                        "template": template,
                        "metric": metric,
                        "a": a,
                        "b": b,
                        "mean_a": sa.mean(),
                        "mean_b": sb.mean(),
                        "diff": diff.estimate,
                        "low": diff.low,
                        "high": diff.high,
                        "resolved": diff.resolved,
                        "seeds_a": sa.shape[0],
                        "seeds_b": sb.shape[0],
                        "images": sa.shape[1],
                        "verdict": verdict(diff, a, b),
                    }
                )
    return pd.DataFrame(rows)


def paired_comparisons(
    images: pd.DataFrame, splits: Sequence[str], pairs: Sequence[tuple[str, str]], **kwargs
) -> pd.DataFrame:
    """:func:`paired_comparison` on each split, one table with a ``split`` column."""
    return pd.concat(
        [paired_comparison(images, split, pairs=pairs, **kwargs).assign(split=split) for split in splits],
        ignore_index=True,
    )


def reference_pairs(methods: Sequence[str], reference_methods: Sequence[str], tag: str) -> list[tuple[str, str]]:
    """The comparisons of a run with a reference run whose methods carry ``tag``: each method against its namesake
    there, ``(m, m + tag)``, and each of the reference's other methods against each of this run's, ``(r + tag, m)``;
    e.g. a DDPO-only run against the B² seeds of another folder gives ``("b2@ref", "ddpo")``, B² − DDPO."""
    pairs = [(m, m + tag) for m in methods if m in reference_methods]
    return pairs + [(r + tag, m) for r in reference_methods if r not in methods for m in methods]


def sign_control(
    run_dirs: Iterable[str | Path],
    split: str = "train",
    metrics: Sequence[str] = ("reward", "judge_all_ok"),
    draws: int = 4000,
) -> pd.DataFrame:
    """Learning vs drift, from runs trained on the reward (``reward_sign=1``) and on its negation (``-1``) with the same
    seeds and recipe, all evaluated on the same images (same prompts, same noise, the real reward).

    Per method and metric, over the seeds that have both runs, per image:
    ``gain`` = r(+) - r(base), ``signal`` = (r(+) - r(-)) / 2 (what the update does *because of* the reward: it flips
    with the reward's sign) and ``drift`` = (r(+) + r(-)) / 2 - r(base) (what it does whatever the reward says, e.g. the
    weights wandering under noisy gradients). ``gain = signal + drift``. Each comes with the two-level bootstrap
    interval of :func:`b2lib.evaluation.stats.bootstrap_mean` (seed pairs and prompts resampled).
    """

    models, base = {}, None
    for d in map(Path, run_dirs):
        sign = int(json.loads((d / "config.json").read_text()).get("reward_sign", 1))
        im = pd.read_csv(d / "eval_images.csv")
        im = im[im["split"] == split].sort_values("image")
        b = im[im["method"] == "base"]
        if base is None:
            base = b
        elif list(b["prompt"]) != list(base["prompt"]):
            raise ValueError(f"{d}: evaluated on other prompts than the first run; sign control needs paired images.")
        for (method, seed), t in im[im["method"] != "base"].groupby(["method", "seed"]):
            models[(method, sign, int(seed))] = t
    if base is None:
        raise ValueError("sign_control needs at least one run folder.")
    prompt_ids = pd.factorize(base["prompt"])[0]
    rows = []
    for method in sorted({m for m, _, _ in models}):
        seeds = sorted(s for m, sign, s in models if m == method and sign == 1 and (m, -1, s) in models)
        if not seeds:
            continue
        for metric in metrics:
            pos = np.stack([models[(method, 1, s)][metric].to_numpy(float) for s in seeds])
            neg = np.stack([models[(method, -1, s)][metric].to_numpy(float) for s in seeds])
            ref = base[metric].to_numpy(float)[None]
            row = {
                "method": method,
                "metric": metric,
                "seeds": len(seeds),
                "images": pos.shape[1],
                "base": float(ref.mean()),
                "trained_on_reward": float(pos.mean()),
                "trained_on_negated": float(neg.mean()),
            }
            for name, values in (("gain", pos - ref), ("signal", (pos - neg) / 2), ("drift", (pos + neg) / 2 - ref)):
                iv = bootstrap_mean(values, prompt_ids, draws=draws)
                row.update({name: iv.estimate, f"{name}_low": iv.low, f"{name}_high": iv.high})
            rows.append(row)
    return pd.DataFrame(rows)
