"""The levers that decide whether a method learns from a binary reward, searched with one recorded budget per method.

Why: under a binary reward a group of samples carries a comparison only if its members disagree
(:mod:`b2lib.studies.sparsity`). For B² three things set that: where the chain branches (``split_start``: the late
branch point makes siblings agree, rho ~0.9, branching at x_T gives rho ~0.25), how many branches a group has
(``num_branches``, at a fixed number of images per stage: more branches, fewer groups) and a tree whose first split is
early. For DDPO the matching lever is how many images of one prompt a stage draws (``samples_per_prompt``: its
per-prompt normaliser then compares them). Each method gets the same number of grid points (a tree is B²'s family and
shares its budget), the same seeds and the same short training run, and is chosen on the **train-split** binary reward
alone, the gain over the base model on the same noise, as in :mod:`b2lib.studies.tuning`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from b2lib.experiments.experiment import RunConfig, run_many
from b2lib.experiments.runconfig import job_label
from b2lib.reporting.plot_style import DISPLAY_NAMES, legend_outside, method_colour, method_order
from b2lib.studies.tuning import halving_survivors, search_config, sweep_table

__all__ = [
    "LEVERS",
    "point_tag",
    "lever_runs",
    "lever_table",
    "choose_levers",
    "chosen_overrides",
    "final_runs",
    "PRUNE_MARGIN",
    "survivors",
    "run_levers",
    "stage_census",
    "census_by_branch_point",
    "census_plot",
    "stages_for_signal",
    "signal_budget",
    "goal_table",
]

#: The evaluation column that scores each training reward on the train split (``eval.csv``): the search's gain is the
#: trained reward's, on the same images for the base and the fine-tuned model.
EVAL_COLUMN = {"clip": "reward_mean", "judge": "judge_all_ok"}

_B2 = [{"split_start": s, "lr": lr} for s in (10, 20) for lr in (3e-4, 1e-3, 3e-3)]
_DDPO = [{"samples_per_prompt": k, "lr": lr} for k in (1, 4) for lr in (3e-4, 1e-3, 3e-3)]

#: Per method, the grid points searched (each a dict of ``TrainerConfig`` fields over the method's tuned point):
#: B² over the branch point x lr at 4 branches, then 8 and 16 branches branched at x_T; a depth-2 tree whose first
#: split is at x_T (B²'s family: B² and the tree share 9 points); DDPO over images per prompt x lr, then 8 per prompt
#: (9 points). ``split_start`` 20 of 20 steps branches at x_T from the first stage (the interval cannot grow further).
LEVERS: dict[str, list[dict]] = {
    "b2": _B2 + [{"split_start": 20, "lr": 3e-4, "num_branches": b} for b in (8, 16)],
    "tree": [{"tree": ((0, 2), (10, 2)), "window": 1, "lr": 3e-4}],
    "ddpo": _DDPO + [{"samples_per_prompt": 8, "lr": lr} for lr in (3e-4, 1e-3, 3e-3)],
}


def point_tag(point: dict) -> str:
    """A folder-safe name for a grid point, e.g. ``split_start20_lr0.0003`` or ``tree0x2-10x2_window1_lr0.0003``."""
    parts = []
    for k, v in point.items():
        if k == "tree":
            parts.append("tree" + "-".join(f"{a}x{b}" for a, b in v))
        else:
            parts.append(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}")
    return "_".join(parts)


def lever_runs(
    base: RunConfig, out: str | Path, seeds=(0, 1), levers: dict | None = None
) -> list[tuple[dict, RunConfig]]:
    """``(grid point, RunConfig)`` for every method x point x seed of ``levers`` (default :data:`LEVERS`), one folder
    each under ``out``; ``seeds`` the same for every method, or a dict method -> seeds. Like
    :func:`b2lib.studies.tuning.sweep_runs`: train-split evaluation only, no BERTScore, no LoRA."""
    out, runs = Path(out), []
    for method, points in (levers or LEVERS).items():
        for point in points:
            for s in seeds[method] if isinstance(seeds, dict) else seeds:
                cfg = search_config(base, method, s, point, out / f"{method}_{point_tag(point)}_seed{s}")
                runs.append((point, cfg))
    return runs


#: Successive halving, as the CLIPScore search of :mod:`b2lib.studies.tuning` does: after the first seed, a point whose
# binary  gain is more than this below its method's best first-seed gain is not run again (judge units: the paired gain
# of one  seed on 256 train images has a standard error of ~0.03, so such a point cannot win on the mean unless its
# second seed  gains far more than its first).
PRUNE_MARGIN = 0.1


def survivors(
    runs: list[tuple[dict, RunConfig]], table: pd.DataFrame, margin: float = PRUNE_MARGIN
) -> list[tuple[dict, RunConfig]]:
    """:func:`~b2lib.studies.tuning.halving_survivors` of the lever search: points matched by their tag
    (:func:`lever_table`'s ``point`` column)."""
    return halving_survivors(runs, table, margin, lambda p: (point_tag(p),), lambda r: (r["point"],))


def run_levers(
    base: RunConfig,
    out: str | Path,
    seeds=(0, 1),
    levers: dict | None = None,
    workers: int = 1,
    margin: float = PRUNE_MARGIN,
    methods: tuple[str, ...] | None = None,
) -> pd.DataFrame:
    """The search with successive halving: every point of every method (``methods``: a subset of ``levers``' keys)
    with the method's first seed, its later seeds only for the :func:`survivors`; ``seeds`` as in
    :func:`lever_runs`. Finished runs are read, unfinished ones resume. Returns :func:`lever_table` of the runs made."""

    levers = {m: p for m, p in (levers or LEVERS).items() if methods is None or m in methods}
    runs = lever_runs(base, out, seeds=seeds, levers=levers)

    def is_first(cfg: RunConfig) -> bool:
        own = seeds[cfg.methods[0]] if isinstance(seeds, dict) else seeds
        return cfg.seeds[0] == own[0]

    first = [r for r in runs if is_first(r[1])]
    run_many([cfg for _, cfg in first], workers=workers)
    later = survivors([r for r in runs if not is_first(r[1])], lever_table(first), margin)
    run_many([cfg for _, cfg in later], workers=workers)
    return lever_table(first + later)


def lever_table(runs: list[tuple[dict, RunConfig]]) -> pd.DataFrame:
    """:func:`b2lib.studies.tuning.sweep_table` with a ``point`` column (:func:`point_tag`), so points with different
    fields (B²'s branches, DDPO's images per prompt) sit in one table, ``gain`` the gain on the *trained* reward
    (:data:`EVAL_COLUMN`: the binary judge for ``reward="judge"``; ``clip_gain`` keeps CLIPScore's), and the mean stage
    census (informative groups per stage) where the run has groups."""
    table = sweep_table(runs)
    table.insert(1, "point", [point_tag(p) for p, _ in runs])
    table["clip_gain"] = table["gain"]
    census, gains = [], []
    for _, cfg in runs:
        if cfg.reward not in EVAL_COLUMN:
            raise ValueError(f"no evaluation column scores reward {cfg.reward!r}; searchable: {sorted(EVAL_COLUMN)}")
        ev = pd.read_csv(Path(cfg.output_dir) / "eval.csv")
        col = ev[EVAL_COLUMN[cfg.reward]]
        gains.append(float(col[ev["method"] != "base"].iloc[0] - col[ev["method"] == "base"].iloc[0]))
        m = pd.read_csv(Path(cfg.output_dir) / "metrics.csv")
        has = "groups" in m and bool(_grouped(m).any())
        census.append(
            {
                "informative_per_stage": float((m["groups"] - m["flat_groups"]).mean()) if has else float("nan"),
                "groups_per_stage": float(m["groups"].mean()) if has else float("nan"),
            }
        )
    table["gain"] = gains
    return pd.concat([table, pd.DataFrame(census)], axis=1)


def choose_levers(table: pd.DataFrame) -> pd.DataFrame:
    """Per method, each point's mean train-split gain over its seeds (only points run with every seed of the method),
    best first, with ``chosen`` marking the top one: the recorded choice (ties: the point listed first in the grid)."""
    n_seeds = table.groupby("method")["seed"].nunique()
    done = table.groupby(["method", "point"])["seed"].transform("nunique") == table["method"].map(n_seeds)
    agg = dict(gain=("gain", "mean"), gain_min=("gain", "min"), gain_max=("gain", "max"), seeds=("seed", "nunique"))
    if "informative_per_stage" in table:
        agg["informative_per_stage"] = ("informative_per_stage", "mean")
    mean = table[done].groupby(["method", "point"], sort=False).agg(**agg).reset_index()
    mean = mean.sort_values(["method", "gain"], ascending=[True, False], kind="mergesort").reset_index(drop=True)
    mean["chosen"] = ~mean.duplicated("method")
    return mean


def chosen_overrides(choice: pd.DataFrame, levers: dict | None = None) -> dict[str, dict]:
    """``RunConfig.method_overrides`` for the chosen point of each method in ``choice`` (:func:`choose_levers`)."""
    levers = levers or LEVERS
    out = {}
    for _, r in choice[choice["chosen"]].iterrows():
        (point,) = [p for p in levers[r["method"]] if point_tag(p) == r["point"]]
        out[r["method"]] = dict(point)
    return out


def final_runs(base: RunConfig, overrides: dict[str, dict], out: str | Path, seeds=(0, 1, 2, 3, 4)) -> list[RunConfig]:
    """The confirmation runs at each method's chosen point (``overrides``: :func:`chosen_overrides`), one folder per
    method and seed under ``out`` (``<method>_seed<k>``: two workers stay busy to the end). Every folder evaluates on
    the same test prompts and noise, so :func:`b2lib.reporting.report.load_eval_images` over ``out`` pairs them image by
    image; the LoRAs are kept (``save_lora``)."""
    return [
        replace(
            base,
            methods=(m,),
            seeds=(s,),
            method_overrides={m: dict(overrides[m])},
            output_dir=str(Path(out) / job_label(m, s)),
        )
        for s in seeds
        for m in overrides
    ]


def _grouped(metrics: pd.DataFrame) -> pd.Series:
    """Stages whose groups have at least two members: B²'s branch groups, a tree's sibling sets and a prompt's samples
    under plain sampling with several samples per prompt (GRPO-style groups). The stage log counts every sample of a
    plain sampler with one sample per prompt as a group of its own, which carries no within-group comparison."""
    return (metrics["groups"] > 0) & (metrics["images"] >= 2 * metrics["groups"])


def stage_census(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per method, the stage log's census averaged over stages and seeds: groups per stage, informative ones (branches
    disagree), flat-low and flat-high ones, the informative share, and the samples kept for the update. The stage log
    counts groups of the grouped methods only (B², trees, several samples per prompt; samples drawn once per prompt
    are independent, each its own group)."""
    m = metrics.assign(
        informative=metrics["groups"] - metrics["flat_groups"],
        flat_high=metrics["flat_groups"] - metrics["flat_low_groups"],
    )
    m = m[_grouped(m)]
    out = m.groupby("method").agg(
        stages=("stage", "size"),
        groups=("groups", "mean"),
        informative=("informative", "mean"),
        flat_low=("flat_low_groups", "mean"),
        flat_high=("flat_high", "mean"),
        kept=("kept", "mean"),
    )
    out["informative_share"] = out["informative"] / out["groups"]
    return out.reset_index()


def census_by_branch_point(
    metrics: pd.DataFrame, prediction: pd.DataFrame | None = None, reward: str = "judge"
) -> pd.DataFrame:
    """Per method and trained steps (``split_step``: the branch point moves back as B²'s interval grows), the stage
    log's measured informative share of the groups (stages pooled over seeds), the stages' success rate ``p``, and the
    share predicted from the *base model's* ``p`` and ``rho`` at the same branches and trained steps
    (``prediction``: notebook 16's ``census_prediction.csv``, rows of ``reward``) where that census measured one.
    Why: if training's own groups match the base model's census, the census taken before training is enough to size
    a sparse-reward run."""
    m = metrics[_grouped(metrics)].assign(share=lambda d: (d["groups"] - d["flat_groups"]) / d["groups"])
    m = m.assign(branches=m["images"] // m["groups"])
    out = (
        m.groupby(["method", "branches", "split_step"])
        .agg(stages=("share", "size"), measured=("share", "mean"), p=("reward_mean", "mean"))
        .reset_index()
    )
    out["predicted"] = float("nan")
    if prediction is not None:
        pred = prediction[prediction["reward"] == reward].set_index(["B", "trained_steps"])["predicted"]
        out["predicted"] = [float(pred.get((b, s), float("nan"))) for b, s in zip(out["branches"], out["split_step"])]
    return out


def census_plot(table: pd.DataFrame):
    """The measured informative share against trained steps, one line per method in its colour, with the base model's
    predicted share as open markers: :func:`census_by_branch_point` drawn, the legend to the right."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for method in method_order(table["method"]):
        part = table[table["method"] == method].sort_values("split_step")
        colour, name = method_colour(method), DISPLAY_NAMES.get(method, method)
        ax.plot(part["split_step"], part["measured"], marker="o", color=colour, label=f"{name}: measured in training")
        pred = part.dropna(subset=["predicted"])
        if len(pred):
            ax.scatter(pred["split_step"], pred["predicted"], s=90, facecolors="none", edgecolors=colour, lw=1.5,
                       label=f"{name}: predicted from the base model")  # fmt: skip
    ax.set(xlabel="trained steps s (branch point: chain step 20 − s)", ylabel="informative groups (share)", ylim=(0, 1))
    fig.tight_layout()
    legend_outside(fig, "right")
    return fig


def stages_for_signal(informative_per_stage: float, reference_groups: float, reference_stages: int) -> float:
    """Stages a sparse-reward run needs to see as many informative groups as a reference run saw: ``reference_groups``
    informative groups per stage over ``reference_stages`` (a dense reward: every group informative) divided by the
    sparse run's ``informative_per_stage``. Why: a flat group adds nothing to B²'s update, so the informative groups
    seen are the update's real sample size; matching them is the least budget at which the dense run's gain could be
    expected. ``inf`` when no group is informative."""
    if informative_per_stage <= 0:
        return float("inf")
    return reference_stages * reference_groups / informative_per_stage


def signal_budget(
    census: pd.DataFrame, choice: pd.DataFrame, reference: str | Path, method: str = "b2"
) -> pd.DataFrame:
    """The stages :func:`stages_for_signal` asks for ``method``: at its trained point (``census``, from
    :func:`stage_census`) and at its searched point with the most informative groups per stage (``choice``), against
    the dense-reward run in folder ``reference`` (its ``run.json``: prompts per stage, i.e. groups, and stages). Empty
    when the reference run or the method is missing."""
    import json

    run = Path(reference) / "run.json"
    if not run.exists() or method not in set(census["method"]):
        return pd.DataFrame(columns=["point", "informative_per_stage", "stages_needed"])
    t = json.loads(run.read_text())["settings"]["trainer"][f"{method}_seed0"]
    rows = [("trained (5 seeds)", float(census.set_index("method").loc[method, "informative"]))]
    points = choice[choice["method"] == method].dropna(subset=["informative_per_stage"])
    if len(points):
        top = points.loc[points["informative_per_stage"].idxmax()]
        rows.append((f"search: {top['point']}", float(top["informative_per_stage"])))
    return pd.DataFrame(
        [
            {"point": p, "informative_per_stage": i,
             "stages_needed": stages_for_signal(i, t["prompts_per_stage"], t["num_stages"]),
             "reference_groups": t["prompts_per_stage"], "reference_stages": t["num_stages"]}
            for p, i in rows
        ]
    )  # fmt: skip


def goal_table(comparisons: pd.DataFrame, methods=("b2", "tree"), metric: str = "judge_all_ok") -> pd.DataFrame:
    """The sparse-reward goals read off paired comparisons (test split): for each grouped method, is it above the base
    model with an interval excluding 0, and above DDPO? One row per method and goal, with the difference, interval and
    whether the goal is met."""
    sel = comparisons[comparisons["metric"] == metric]
    if "split" in sel:
        sel = sel[sel["split"] == "test"]
    rows = []
    for m in methods:
        for other in ("base", "ddpo"):
            hit = sel[(sel["a"] == m) & (sel["b"] == other)]
            if hit.empty:
                continue
            r = hit.iloc[0]
            rows.append(
                {
                    "method": m,
                    "goal": f"{m} above {other}",
                    "diff": float(r["diff"]),
                    "low": float(r["low"]),
                    "high": float(r["high"]),
                    "met": bool(r["low"] > 0),
                }  # fmt: skip
            )
    return pd.DataFrame(rows)
