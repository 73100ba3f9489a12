"""Reading finished runs back from ``results/``: run folders into tables (evaluations, stage metrics, per-image
scores, costs, one row per run) and their saved samples into figures, for the notebooks' tables and figures.

A *run folder* is what :func:`b2lib.experiments.experiment.run_experiment` writes: ``summary.json``, ``eval.csv`` (one
row per model and evaluation split), ``metrics.csv`` (one row per method, seed and stage), ``samples.safetensors``.

What these tables feed lives beside it: the paired comparisons and the sign control in
:mod:`b2lib.evaluation.comparisons`, training health in :mod:`b2lib.evaluation.health`, the README's table in
:mod:`b2lib.reporting.summary_table`. Their names are re-exported here so that ``from b2lib.reporting.report import
...`` in notebooks written before the split keeps working; new code imports them from their own modules.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

# re-exported for ``from b2lib.reporting.report import ...`` in existing notebooks; new code imports from these modules
from b2lib.evaluation.comparisons import (
    EVAL_IMAGE_METRICS,
    paired_comparison,
    paired_comparisons,
    reference_pairs,
    sign_control,
)
from b2lib.evaluation.health import health_summary, health_table, reward_trend
from b2lib.evaluation.stats import bootstrap_difference
from b2lib.reporting.plots import comparison_grid
from b2lib.reporting.summary_table import generalisation_rows, readme_table

__all__ = [
    "completed_runs",
    "collect",
    "trained_algorithms",
    "load_eval_images",
    "combine_runs",
    "combine_metrics",
    "run_cost",
    "run_table",
    "mean_std",
    "format_mean_std",
    "load_samples",
    "METRIC_LABELS",
    "sample_grid_from_runs",
    # re-exported from b2lib.evaluation.comparisons, b2lib.evaluation.health and b2lib.reporting.summary_table
    "EVAL_IMAGE_METRICS",
    "paired_comparison",
    "paired_comparisons",
    "reference_pairs",
    "sign_control",
    "reward_trend",
    "health_summary",
    "health_table",
    "generalisation_rows",
    "readme_table",
]

#: evaluation columns shown in tables, with readable names
METRIC_LABELS = {
    "reward_mean": "CLIPScore",
    "bertscore_mean": "BERTScore",
    "judge_all_ok": "judge: aligned",
    "clip_diversity": "diversity (CLIP)",
    "pixel_diversity": "diversity (pixel)",
}


def _run_dirs(roots: Iterable[str | Path]) -> list[Path]:
    dirs = []
    for root in roots:
        root = Path(root)
        if (root / "summary.json").exists():
            dirs.append(root)
        else:
            dirs.extend(sorted(p.parent for p in root.glob("*/summary.json")))
    return dirs


def completed_runs(root: str | Path, pattern: str = "*") -> list[Path]:
    """Finished run folders (those with a ``summary.json``) directly under ``root`` whose names match ``pattern``."""
    return sorted(p.parent for p in Path(root).glob(f"{pattern}/summary.json"))


def trained_algorithms(folder: str | Path) -> dict[str, str]:
    """``{model: algorithm}`` (e.g. ``{"b2_seed0": "grpo"}``): the RL update each model of a run folder was trained
    with, read from the trainer settings the run recorded (``run.json``).

    Why not the run's ``overrides``: a recipe may set the update per method (the coarse recipe gives B² the
    group-relative update and leaves DDPO on PPO-clip), so a folder without an ``algorithm`` override can hold
    models trained with different updates; labelling them all "ppo" once mislabelled B² in the compatibility study.
    Empty for folders written before run.json recorded trainer settings."""
    path = Path(folder) / "run.json"
    if not path.exists():
        return {}
    trainer = json.loads(path.read_text()).get("settings", {}).get("trainer", {})
    return {model: cfg.get("algorithm", "ppo") for model, cfg in trainer.items() if isinstance(cfg, dict)}


def _algorithm_column(df: pd.DataFrame, algorithms: Mapping[str, str], fallback: str) -> pd.Series:
    """Each row's update: its model's recorded one (``model`` column, else ``<method>_seed<seed>``), else
    ``fallback`` (the run's override, or "ppo"); the base model's rows get ``fallback`` too (it was not trained)."""
    if "model" in df:
        models = df["model"].astype(str)
    elif {"method", "seed"} <= set(df.columns):
        models = df["method"].astype(str) + "_seed" + df["seed"].astype("Int64").astype(str)
    else:
        return pd.Series(fallback, index=df.index)
    return models.map(algorithms).fillna(fallback)


def collect(*roots: str | Path, tag: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every run folder under ``roots`` (a run folder itself, or a folder of run folders) -> ``(evals, metrics)``,
    with ``run`` (folder name), ``template`` and ``algorithm`` (the RL update each row's model was trained with:
    :func:`trained_algorithms`, else the run's override, else "ppo") added. ``tag`` is stored as a ``tag`` column."""
    evals, metrics = [], []
    for d in _run_dirs(roots):
        summary = json.loads((d / "summary.json").read_text())
        config = json.loads((d / "config.json").read_text()) if (d / "config.json").exists() else {}
        overrides = config.get("overrides", {})
        algorithms, fallback = trained_algorithms(d), overrides.get("algorithm", "ppo")
        extra = {
            "run": d.name,
            "template": summary.get("template"),
            "tag": tag,
            "overrides": json.dumps(overrides, sort_keys=True),
        }
        e = pd.read_csv(d / "eval.csv")
        if "split" not in e:
            e["split"] = "test"
        evals.append(e.assign(**extra, algorithm=_algorithm_column(e, algorithms, fallback)))
        if (d / "metrics.csv").exists() and (d / "metrics.csv").stat().st_size > 1:
            m = pd.read_csv(d / "metrics.csv")
            metrics.append(m.assign(**extra, algorithm=_algorithm_column(m, algorithms, fallback)))
    if not evals:
        raise FileNotFoundError(
            f"No run folders (with summary.json) under {[str(r) for r in roots]}: run the "
            "notebook that produces them first."
        )
    ev = pd.concat(evals, ignore_index=True)
    me = pd.concat(metrics, ignore_index=True) if metrics else pd.DataFrame()
    return ev, me


def load_eval_images(*roots: str | Path) -> pd.DataFrame:
    """Every run's ``eval_images.csv`` under ``roots`` (see :data:`b2lib.experiments.experiment.EVAL_IMAGE_COLUMNS`),
    with ``run`` and ``template`` columns. The base model's rows of each template are kept once (they are identical per
    run)."""
    frames = []
    for d in _run_dirs(roots):
        if not (d / "eval_images.csv").exists():
            continue
        template = json.loads((d / "summary.json").read_text()).get("template")
        frames.append(pd.read_csv(d / "eval_images.csv").assign(run=d.name, template=template))
    if not frames:
        raise FileNotFoundError(
            f"No eval_images.csv under {[str(r) for r in roots]}: rerun the notebook that writes "
            "these runs (per-image scores are written since the paired-evaluation change)."
        )
    df = pd.concat(frames, ignore_index=True)
    base = df[df["method"] == "base"].drop_duplicates(subset=["template", "split", "image"])
    return pd.concat([base, df[df["method"] != "base"]], ignore_index=True)


def combine_runs(
    folders: Sequence[str | Path], renames: Sequence[Mapping[str, str]] | None = None, tol: float = 1e-5
) -> pd.DataFrame:
    """The per-image evaluations of several run folders evaluated alike (same prompts, same noise), as one table:
    each folder's methods renamed by its mapping in ``renames`` (e.g. ``{"tree": "tree2"}``, or ``{"b2": "b2@coarse"}``
    for a reference run), the base model's rows kept once.

    Why the check: pairing across folders holds only if every folder's base model saw the same images; a base reward
    that differs by more than ``tol`` on any image means the evaluations differ, and a ValueError says so."""
    renames = list(renames) if renames is not None else [{}] * len(folders)
    if len(renames) != len(folders):
        raise ValueError(f"{len(folders)} folders but {len(renames)} renames: give one mapping per folder.")
    frames = []
    for folder, rename in zip(folders, renames):
        df = load_eval_images(folder)
        frames.append(df.assign(method=df["method"].replace(dict(rename))))
    df = pd.concat(frames, ignore_index=True)
    base = df[df["method"] == "base"]
    spread = base.groupby(["template", "split", "image"])["reward"].agg(lambda r: r.max() - r.min())
    if len(spread) and spread.max() > tol:
        raise ValueError(
            f"The base model's rewards differ between {[str(f) for f in folders]} by up to {spread.max():.3g}: "
            "these runs were not evaluated on the same prompts and noise, so they cannot be paired."
        )
    base = base.drop_duplicates(["template", "split", "image"])
    return pd.concat([base, df[df["method"] != "base"]], ignore_index=True)


def combine_metrics(folders: Sequence[str | Path], renames: Sequence[Mapping[str, str]] | None = None) -> pd.DataFrame:
    """The stage metrics (``metrics.csv``) of several run folders, methods renamed as in :func:`combine_runs`, with
    each folder's template."""
    renames = list(renames) if renames is not None else [{}] * len(folders)
    frames = []
    for folder, rename in zip(folders, renames):
        m = pd.read_csv(Path(folder) / "metrics.csv")
        template = json.loads((Path(folder) / "summary.json").read_text()).get("template")
        frames.append(m.assign(method=m["method"].replace(dict(rename)), template=template))
    return pd.concat(frames, ignore_index=True)


def run_cost(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per template and method, the mean over seeds of a run's cost: images generated, sampling and training seconds,
    samples kept per stage, and UNet rows (sampling + update forwards, ``unet_rows_seen`` at the last stage)."""
    keys = ["template", "method", "seed"]
    last = metrics.sort_values("stage").groupby(keys).tail(1).set_index(keys)["unet_rows_seen"].rename("unet_rows")
    per_run = metrics.groupby(keys).agg(
        images=("images", "sum"), sample_s=("sample_s", "sum"), train_s=("train_s", "sum"), kept=("kept", "mean")
    )
    return per_run.join(last).groupby(["template", "method"]).mean()


def _paired_gain(run_dir: Path, split: str):
    """The run's CLIPScore gain over the base model with its prompt-bootstrap interval (one seed: no seed level)."""

    path = run_dir / "eval_images.csv"
    if not path.exists():
        return None
    im = pd.read_csv(path)
    im = im[im["split"] == split].sort_values("image")
    a, b = im[im["method"] != "base"], im[im["method"] == "base"]
    return bootstrap_difference(
        a["reward"].to_numpy(float)[None], b["reward"].to_numpy(float)[None], pd.factorize(b["prompt"])[0]
    )


def run_table(run_dirs: Iterable[str | Path], split: str = "train") -> pd.DataFrame:
    """One row per single-method run folder: what it was (method, seed, images per stage, overrides, reward sign, the
    device it ran on), its paired gain over the base model on ``split`` (CLIPScore and judge) and its training health
    (means over stages; total optimizer steps; the first and last five stages' train reward).
    ``gain_low``/``gain_high``:
    the gain's 95 % interval, prompts resampled (per-image scores of the same noise for both models)."""
    rows = []
    for d in map(Path, run_dirs):
        cfg = json.loads((d / "config.json").read_text())
        ev = pd.read_csv(d / "eval.csv")
        ev = ev[ev["split"] == split]
        base, tuned = ev[ev["method"] == "base"].iloc[0], ev[ev["method"] != "base"].iloc[0]
        m = pd.read_csv(d / "metrics.csv")
        gain_iv = _paired_gain(d, split)
        rows.append(
            {
                "study": d.parent.name,
                "run": d.name,
                "method": tuned["method"],
                "seed": int(tuned["seed"]),
                "images_per_stage": int(m["images"].iloc[0]),
                "stages": int(m["stage"].max() + 1),
                "reward_sign": int(cfg.get("reward_sign", 1)),
                "device": cfg.get("device") or "cpu",
                "overrides": json.dumps(cfg.get("overrides", {}), sort_keys=True),
                "gain": float(tuned["reward_mean"] - base["reward_mean"]),
                "gain_low": gain_iv.low if gain_iv else np.nan,
                "gain_high": gain_iv.high if gain_iv else np.nan,
                "judge_gain": float(tuned.get("judge_all_ok", np.nan) - base.get("judge_all_ok", np.nan)),
                "optimizer_steps": int(m["optimizer_steps"].sum()),
                **{
                    f"mean_{k}": float(m[k].mean())
                    for k in ("approx_kl", "clipfrac", "grad_norm", "rel_update")
                    if k in m
                },
                "reward_first5": float(m["reward_mean"].head(5).mean()),
                "reward_last5": float(m["reward_mean"].tail(5).mean()),
            }
        )
    return pd.DataFrame(rows)


def mean_std(
    evals: pd.DataFrame, by: Sequence[str], columns: Sequence[str] = tuple(METRIC_LABELS), dedupe_base: bool = True
) -> pd.DataFrame:
    """Mean and std over seeds (and runs) of each column, grouped by ``by``; ``n`` = number of models averaged.

    The base model is evaluated once per run folder with the same prompts and seeds, so its rows are identical copies:
    with ``dedupe_base`` they count once (its std is then 0 by construction, not by luck)."""
    df = evals.copy()
    if dedupe_base and "method" in df:
        base = df[df["method"] == "base"].drop_duplicates(subset=[c for c in ("template", "split", "model") if c in df])
        df = pd.concat([base, df[df["method"] != "base"]], ignore_index=True)
    cols = [c for c in columns if c in df]
    g = df.groupby(list(by), sort=False)[cols]
    out = g.mean().add_suffix("_mean").join(g.std(ddof=1).fillna(0.0).add_suffix("_std"))
    out["n"] = g.size()
    rank = {m: i for i, m in enumerate(("base", "ddpo", "progressive", "branch", "b2"))}
    return out.sort_index(key=lambda idx: idx.map(lambda v: rank.get(v, len(rank))) if idx.name == "method" else idx)


def format_mean_std(
    table: pd.DataFrame, columns: Sequence[str] = tuple(METRIC_LABELS), digits: int = 3
) -> pd.DataFrame:
    """``mean ± std`` strings for display, with readable column names."""
    out = pd.DataFrame(index=table.index)
    for c in columns:
        if f"{c}_mean" in table:
            out[METRIC_LABELS.get(c, c)] = [
                f"{m:.{digits}f} ± {s:.{digits}f}" for m, s in zip(table[f"{c}_mean"], table[f"{c}_std"])
            ]
    if "n" in table:
        out["n"] = table["n"]
    return out


def load_samples(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The saved same-seed samples of a run: ``{model label: uint8 (k, 3, H, W)}`` and the k prompts."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    images = load_file(str(run_dir / "samples.safetensors"))
    prompts = json.loads((run_dir / "summary.json").read_text())["grid_prompts"]
    return images, prompts


def sample_grid_from_runs(run_dirs: Sequence[str | Path], models: Sequence[str] = ("base",), per_run: int = 8):
    """Rows = models, columns = prompts, from the runs' saved samples (same prompts and seeds for every model)."""

    images: dict[str, list] = {}
    prompts: list[str] = []
    for d in run_dirs:
        imgs, ps = load_samples(d)
        k = min(per_run, len(ps))
        prompts += ps[:k]
        for label in models:
            key = label if label in imgs else next((x for x in imgs if x.startswith(label)), None)
            if key is None:
                raise KeyError(f"No samples for {label!r} in {d}; have {sorted(imgs)}.")
            images.setdefault(label, []).extend((imgs[key][:k].float() / 255).unbind(0))
    return comparison_grid(images, prompts, columns=len(prompts))
