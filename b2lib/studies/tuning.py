"""The recorded, equal-budget hyper-parameter search: every method gets the same grid, the same seeds and the same
short training budget, and its setting is chosen on the **train-split reward** alone (never the test split or the
judge).

The score of a grid point is the paired gain of the fine-tuned model over the base model on the training prompts:
both generate from the same noise (:func:`b2lib.evaluation.generate.generate`), so the gain is the update's doing, not
the prompts' or the noise's. The grid point with the highest mean gain over the seeds wins.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pandas as pd

from b2lib.experiments.experiment import RunConfig, run_many
from b2lib.utils.tables import write_table

__all__ = [
    "with_reward_trend",
    "finished_sign_pairs",
    "GRID",
    "search_config",
    "PRUNE_MARGIN",
    "sweep_runs",
    "run_sweep",
    "sweep_table",
    "survivors",
    "choose",
    "write_choice",
]

#: The search space, the same for every method. ``grad_accum`` sets the optimizer steps per stage: 4 micro-batches of
#: 8 per step is one step per 32 trained samples, 1 is a step per micro-batch (4x the steps).
GRID: dict[str, tuple] = {"lr": (3e-4, 1e-3, 3e-3), "grad_accum": (4, 1)}


#: Successive halving: after the first seed, a grid point whose gain is more than this below its method's best
#: first-seed gain is not run again (CLIPScore units; the largest seed-to-seed difference of a grid point's gain seen in
#: the search was 0.04). Such a point cannot win on the mean unless its second seed gains far more than any seed did.
PRUNE_MARGIN = 0.1


def _tag(point: dict) -> str:
    return "_".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in point.items())


def search_config(base: RunConfig, method: str, seed: int, point: dict, folder: str | Path) -> RunConfig:
    """One search run: ``method`` at ``seed`` with ``point``'s fields over ``base.overrides``, in ``folder``,
    evaluated on the training prompts only, without BERTScore, LoRA export or sample grid: what a choice needs."""
    return replace(
        base,
        methods=(method,),
        seeds=(seed,),
        overrides={**base.overrides, **point},
        output_dir=str(folder),
        eval_splits=("train",),
        bertscore=False,
        save_lora=False,
        grid_prompts=0,
    )


def sweep_runs(
    base: RunConfig, out: str | Path, methods=("ddpo", "b2"), seeds=(0, 1), grid: dict | None = None
) -> list[tuple[dict, RunConfig]]:
    """``(grid point, RunConfig)`` for every method x grid point x seed, one run folder each. The runs evaluate on the
    training prompts only (``eval_splits=("train",)``), without BERTScore or LoRA export: what the choice needs."""
    out, grid = Path(out), grid or GRID
    runs = []
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values))
        for m in methods:
            for s in seeds:
                cfg = search_config(base, m, s, point, out / f"{m}_{_tag(point)}_seed{s}")
                runs.append((point, cfg))
    return runs


def sweep_table(runs: list[tuple[dict, RunConfig]]) -> pd.DataFrame:
    """One row per run: method, grid point, seed, the train-split reward of the fine-tuned and of the base model (same
    prompts, same noise), their difference ``gain``, the judge rate (reported, not used for the choice) and the
    training-health means over stages."""
    rows = []
    for point, cfg in runs:
        out = Path(cfg.output_dir)
        ev = pd.read_csv(out / "eval.csv")
        base, tuned = ev[ev["method"] == "base"].iloc[0], ev[ev["method"] != "base"].iloc[0]
        metrics = pd.read_csv(out / "metrics.csv")
        health = {
            f"mean_{k}": float(metrics[k].mean())
            for k in ("approx_kl", "clipfrac", "grad_norm", "rel_update", "kept")
            if k in metrics
        }
        rows.append(
            {
                "method": tuned["method"],
                **point,
                "seed": int(tuned["seed"]),
                "train_reward": float(tuned["reward_mean"]),
                "base_train_reward": float(base["reward_mean"]),
                "gain": float(tuned["reward_mean"] - base["reward_mean"]),
                "train_judge": float(tuned.get("judge_all_ok", float("nan"))),
                "stages": int(metrics["stage"].max() + 1),
                "optimizer_steps": int(metrics["optimizer_steps"].sum()),
                "train_s": float(metrics["train_s"].sum() + metrics["sample_s"].sum()),
                **health,
            }
        )
    return pd.DataFrame(rows)


def halving_survivors(
    runs: list[tuple[dict, RunConfig]],
    table: pd.DataFrame,
    margin: float,
    point_key: Callable[[dict], tuple],
    row_key: Callable[[pd.Series], tuple],
) -> list[tuple[dict, RunConfig]]:
    """Successive halving's cut, once for every search: the runs of later seeds worth running are those whose point's
    first-seed ``gain`` (in ``table``, one row per method and point, matched by ``row_key`` to the runs'
    ``point_key``) is within ``margin`` of its method's best. Points not in ``table`` are kept."""
    best = table.groupby("method")["gain"].max()
    first = {(r["method"], *row_key(r)): r["gain"] for _, r in table.iterrows()}
    keep = []
    for point, cfg in runs:
        m = cfg.methods[0]
        gain = first.get((m, *point_key(point)))
        if gain is None or gain >= best[m] - margin:
            keep.append((point, cfg))
    return keep


def survivors(
    runs: list[tuple[dict, RunConfig]], table: pd.DataFrame, margin: float = PRUNE_MARGIN, grid: dict | None = None
) -> list[tuple[dict, RunConfig]]:
    """:func:`halving_survivors` of the hyper-parameter grid: points matched by their grid values."""
    keys = list(grid or GRID)
    return halving_survivors(
        runs, table, margin, lambda p: tuple(p[k] for k in keys), lambda r: tuple(r[k] for k in keys)
    )


def run_sweep(
    base: RunConfig,
    out: str | Path,
    methods=("ddpo", "b2"),
    seeds=(0, 1),
    grid: dict | None = None,
    workers: int = 1,
    margin: float = PRUNE_MARGIN,
) -> pd.DataFrame:
    """Run the search with successive halving and return its table: every grid point with the first seed, the later
    seeds only for the :func:`survivors` of the first. Finished runs are skipped, unfinished ones resume."""

    grid = grid or GRID
    runs = sweep_runs(base, out, methods=methods, seeds=seeds, grid=grid)
    first = [r for r in runs if r[1].seeds[0] == seeds[0]]
    run_many([cfg for _, cfg in first], workers=workers)
    later = survivors([r for r in runs if r[1].seeds[0] != seeds[0]], sweep_table(first), margin, grid)
    run_many([cfg for _, cfg in later], workers=workers)
    return sweep_table(first + later)


def choose(table: pd.DataFrame, grid: dict | None = None) -> dict[str, dict]:
    """Per method, the grid point with the highest mean ``gain`` over seeds (ties: the first in grid order), among the
    points run with every seed (pruned points have fewer rows)."""
    keys = list(grid or GRID)
    n_seeds = table.groupby("method")["seed"].nunique()
    full = table.groupby(["method", *keys], sort=False)["seed"].transform("nunique") == table["method"].map(n_seeds)
    mean = table[full].groupby(["method", *keys], sort=False)["gain"].mean().reset_index()
    best = {}
    for method, rows in mean.groupby("method", sort=False):
        top = rows.loc[rows["gain"].idxmax()]
        best[method] = {k: (float(top[k]) if isinstance(top[k], float) else int(top[k])) for k in keys}
        best[method]["mean_gain"] = float(top["gain"])
    return best


def write_choice(table: pd.DataFrame, out: str | Path, grid: dict | None = None) -> dict[str, dict]:
    """Write ``sweep.csv`` (every run) and ``choice.json`` (per method: the chosen point) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(table, out, "tuning_sweep")
    best = choose(table, grid)
    (out / "choice.json").write_text(json.dumps(best, indent=2))
    return best


def with_reward_trend(table: pd.DataFrame, runs) -> pd.DataFrame:
    """``table`` (one row per run of ``runs``, in order) with each run's train-reward rise over its stages against its
    stage-to-stage noise (:func:`b2lib.evaluation.health.reward_trend`): what the check that a chosen point moves the
    policy reads (:func:`b2lib.studies.flow.moved`)."""
    from b2lib.evaluation.health import reward_trend

    trends = [reward_trend(pd.read_csv(Path(c.output_dir) / "metrics.csv")).iloc[0] for _, c in runs]
    for col in ("rise", "noise", "rise_over_noise"):
        table[col] = [float(t.get(col, float("nan"))) for t in trends]
    return table


def finished_sign_pairs(out: str | Path, method: str, seeds) -> list[Path]:
    """The folders :func:`~b2lib.evaluation.comparisons.sign_control` reads: for each seed whose two runs are both
    finished, ``out/<method>_seed<k>`` and ``out/negated/<method>_seed<k>``."""
    folders = []
    for s in seeds:
        pos, neg = Path(out) / f"{method}_seed{s}", Path(out) / "negated" / f"{method}_seed{s}"
        if (pos / "summary.json").is_file() and (neg / "summary.json").is_file():
            folders += [pos, neg]
    return folders
