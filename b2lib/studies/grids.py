"""The run grids of the paper's ablation, sensitivity and compatibility studies, as lists of
:class:`~b2lib.experiments.experiment.RunConfig` (run them with :func:`~b2lib.experiments.experiment.run_many`), and the
tables read back.

Every variant changes one thing against the B²-DiffuRL default of its preset, and every run of a study generates the
same number of images, so differences are the variant's doing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import pandas as pd

from b2lib.evaluation.comparisons import paired_comparisons
from b2lib.experiments.experiment import RunConfig
from b2lib.experiments.presets import trainer_config
from b2lib.experiments.runconfig import job_label
from b2lib.reporting.report import combine_runs
from b2lib.studies.sparsity import group_kind
from b2lib.utils.paths import REPO_ROOT, is_smoke
from b2lib.utils.rundir import reuse_problems

__all__ = [
    "SENSITIVITY",
    "sensitivity_defaults",
    "group_census",
    "census_summary",
    "BUDGET_SCALES",
    "sign_control_runs",
    "budget_runs",
    "reusable_runs",
    "strategy_runs",
    "sensitivity_runs",
    "compat_runs",
    "CompatPlan",
    "compat_plan",
    "replicate_comparisons",
    "sensitivity_table",
    "SensitivityPlan",
    "sensitivity_plan",
    "sensitivity_comparisons",
    "dtype_comparisons",
]

#: factor -> values tried (the preset default is included as a point of every factor). Branch counts divide the
#: embedded budget of 32 images per stage; "stages" keeps the total budget (stages x images per stage = 640) fixed.
#: A small grid, sized for CPU time: pass ``grid=`` for more points.
SENSITIVITY: dict[str, list] = {
    "branches": [2, 4, 8],
    "split_start": [5, 10, 15],
    "stages": [10, 20],
    "threshold": [0.5, 0.7],
}


def sensitivity_defaults(base: RunConfig) -> dict:
    """The value each sensitivity factor has in ``base``'s B² run (read from its trainer settings, so a changed preset
    default moves the default point with it) and the image budget that the "stages" factor keeps fixed."""
    cfg = base.trainer_config("b2", base.seeds[0])
    return {
        "branches": cfg.num_branches,
        "split_start": cfg.split_start,
        "stages": cfg.num_stages,
        "threshold": cfg.pos_threshold,
        "budget": cfg.num_stages * cfg.images_per_stage,
    }


def reusable_runs(study: str, template: str, seeds, results: str | Path | None = None) -> list[Path]:
    """Finished run folders of another study (e.g. notebook 04's ``templates``: one ``<template>_seed<s>`` folder per
    seed, holding DDPO and B² with PPO) that a study can read instead of training the same runs again.

    All or nothing: the folders only if every seed's run finished (its ``summary.json`` exists), else ``[]``, so a
    table never mixes reused seeds with missing ones. Smoke runs (tests, CI) never reuse full-size runs.
    """

    if is_smoke():
        return []
    root = Path(results) if results is not None else REPO_ROOT / "results" / study
    runs = [root / f"{template}_seed{s}" for s in seeds]
    return runs if runs and all((run / "summary.json").exists() for run in runs) else []


def strategy_runs(base: RunConfig, out: str | Path, seeds, methods=("ddpo", "progressive", "branch", "b2")):
    """Neither strategy (DDPO), each strategy alone, both: one run folder per method (``out/<method>``) holding every
    seed, so the base model is evaluated once per folder and folders run in parallel."""
    out = Path(out)
    return [replace(base, methods=(m,), seeds=tuple(seeds), output_dir=str(out / m)) for m in methods]


def _variant(base: RunConfig, factor: str, value) -> RunConfig:
    overrides = dict(base.overrides)
    budget = sensitivity_defaults(base)["budget"]
    kw: dict = {}
    if factor == "branches":
        kw["branches"] = int(value)
    elif factor == "split_start":
        overrides["split_start"] = int(value)
    elif factor == "stages":
        kw["stages"] = int(value)
        kw["images_per_stage"] = budget // int(value)
    elif factor == "threshold":
        overrides.update(pos_threshold=float(value), neg_threshold=-float(value))
    else:
        raise ValueError(f"Unknown sensitivity factor {factor!r}: use one of {sorted(SENSITIVITY)}.")
    return replace(base, overrides=overrides, **kw)


def sensitivity_runs(
    base: RunConfig, out: str | Path, seed: int = 0, grid: dict | None = None, skip_defaults: bool = False
) -> list[tuple[str, object, RunConfig]]:
    """``(factor, value, RunConfig)`` for every point of ``grid`` (default :data:`SENSITIVITY`), B² only. The default
    point is the same run for every factor, so it is run once (folder ``default``)."""
    out = Path(out)
    grid = grid or SENSITIVITY
    runs, default = [], replace(base, methods=("b2",), seeds=(seed,), output_dir=str(out / "default"), save_lora=False)
    defaults = sensitivity_defaults(default)
    for factor, values in grid.items():
        for value in values:
            if value == defaults.get(factor):
                if not skip_defaults:
                    runs.append((factor, value, default))
                continue
            cfg = _variant(default, factor, value)
            runs.append((factor, value, replace(cfg, output_dir=str(out / f"{factor}_{value}"))))
    return runs


def compat_runs(
    base: RunConfig, out: str | Path, seeds, algorithms=("ppo", "dpok", "grpo"), methods=("ddpo", "b2")
) -> list[RunConfig]:
    """Each RL update with and without B²: one run folder per (algorithm, method), ``out/<algorithm>_<method>``,
    holding every seed. GRPO without B² samples each drawn prompt B times independently (its groups), at the same
    image budget (a field of DDPO's own settings, since under an equal-compute budget B²'s settings are read too)."""
    out = Path(out)
    runs = []
    for a in algorithms:
        for m in methods:
            per_method = {k: dict(v) for k, v in base.method_overrides.items()}
            if a == "grpo" and m == "ddpo":  # groups without branching: each drawn prompt sampled B times
                groups = base.trainer_config("b2", base.seeds[0]).num_branches
                per_method["ddpo"] = {**per_method.get("ddpo", {}), "samples_per_prompt": groups}
            runs.append(
                replace(
                    base,
                    methods=(m,),
                    seeds=tuple(seeds),
                    overrides={**base.overrides, "algorithm": a},
                    method_overrides=per_method,
                    output_dir=str(out / f"{a}_{m}"),
                    save_lora=False,
                )
            )
    return runs


@dataclass
class CompatPlan:
    """Where each (update, method) of the compatibility study comes from.

    ``train``: the run folders to hand to :func:`~b2lib.experiments.experiment.run_many` (it reads finished ones back);
    ``models``: ``(folder, method, label)`` for every (update, method), ``label`` being ``"<method>@<update>"``;
    ``replicates``: ``(folder, other_folder, method, update)`` where a folder trained here and a reused folder hold
    the same models with the same settings (a replicate: their difference is run-to-run noise, not a setting)."""

    train: list[RunConfig] = field(default_factory=list)
    models: list[tuple[Path, str, str]] = field(default_factory=list)
    replicates: list[tuple[Path, Path, str, str]] = field(default_factory=list)

    @property
    def folders(self) -> list[Path]:
        return [folder for folder, _, _ in self.models]

    @property
    def renames(self) -> list[dict[str, str]]:
        """One mapping per entry of :attr:`folders`, for :func:`b2lib.reporting.report.combine_runs`."""
        return [{method: label} for _, method, label in self.models]


def compat_plan(
    base: RunConfig,
    out: str | Path,
    seeds,
    algorithms=("ppo", "dpok", "grpo"),
    methods=("ddpo", "b2"),
    reuse=(),
) -> CompatPlan:
    """Every (update, method) of :func:`compat_runs`, taken from its own folder under ``out`` when that run has
    finished, else from the first folder of ``reuse`` that holds the same models with exactly the trainer settings
    and evaluation asked for (:func:`b2lib.utils.rundir.reuse_problems`), else trained.

    Why by settings and not by name: a recipe can set the update per method (the coarse recipe trains B² with the
    group-relative update and DDPO with PPO-clip), so "the main job's runs" are not "PPO's runs"; only a folder whose
    recorded trainer settings match a cell may stand in for it."""
    plan = CompatPlan()
    for cfg in compat_runs(base, out, seeds, algorithms, methods):
        algorithm, method = cfg.overrides["algorithm"], cfg.methods[0]
        label, here = f"{method}@{algorithm}", Path(cfg.output_dir)
        same = [Path(f) for f in reuse if not reuse_problems([f], cfg.settings())]
        if (here / "summary.json").exists() or not same:
            plan.train.append(cfg)
            plan.models.append((here, method, label))
            plan.replicates += [(here, other, method, algorithm) for other in same[:1]]
        else:
            plan.models.append((same[0], method, label))
    return plan


def sensitivity_table(runs: list[tuple[str, object, RunConfig]]) -> pd.DataFrame:
    """One row per (factor, value): the fine-tuned model's test metrics (read from its run folder)."""
    rows = []
    for factor, value, cfg in runs:
        ev = pd.read_csv(Path(cfg.output_dir) / "eval.csv")
        ev = ev[(ev["method"] != "base") & (ev.get("split", "test") == "test")]
        ev = ev[ev["seed"].astype(float).isin([float(s) for s in cfg.seeds])]  # a reused folder may hold more seeds
        summary = json.loads((Path(cfg.output_dir) / "summary.json").read_text())
        for _, r in ev.iterrows():
            rows.append(
                {
                    "factor": factor,
                    "value": value,
                    "run": Path(cfg.output_dir).name,
                    "wall_s": summary.get("wall_s"),
                    **{k: r[k] for k in r.index if k not in ("model",)},
                }
            )
    return pd.DataFrame(rows)


def replicate_comparisons(plan: CompatPlan, pairs: list[tuple[str, str]], splits=("test",)) -> pd.DataFrame | None:
    """For each replicate of ``plan`` (a cell trained here whose settings a reused folder matches): the two replicates
    against each other, and every pair of ``pairs`` that involves that cell again with the other replicate in its
    place (labelled ``"<method>@<update> (<folder>)"``). None when there is no replicate.

    Why: the two hold the same settings and seeds, so their difference is run-to-run noise (thread count, float
    rounding); a verdict that flips between them is not robust."""

    tables = []
    for _, other, method, algorithm in plan.replicates:
        label, alt = f"{method}@{algorithm}", f"{method}@{algorithm} ({other.name})"
        both = combine_runs(plan.folders + [other], plan.renames + [{method: alt}])
        again = [(alt, b) for a, b in pairs if a == label] + [(a, alt) for a, b in pairs if b == label]
        tables.append(paired_comparisons(both, list(splits), [(label, alt)] + again))
    return pd.concat(tables, ignore_index=True) if tables else None


@dataclass
class SensitivityPlan:
    """B²'s one-factor grid over several seeds. ``runs``: ``(factor, value, RunConfig)`` per point and seed (the
    default point's config names a reused folder where one matched); ``train``: the folders to hand to
    :func:`~b2lib.experiments.experiment.run_many`; ``defaults``: each factor's default value; ``seeds``: the study's
    seeds."""

    runs: list[tuple[str, object, RunConfig]] = field(default_factory=list)
    train: list[RunConfig] = field(default_factory=list)
    defaults: dict = field(default_factory=dict)
    seeds: tuple = ()

    def label(self, factor: str, value) -> str:
        """The method name a point's models get in the paired table: ``"default"`` or ``"<factor>=<value>"``."""
        return "default" if self.defaults.get(factor) == value else f"{factor}={value}"


def sensitivity_plan(base: RunConfig, out: str | Path, seeds, grid: dict | None = None, reuse=()) -> SensitivityPlan:
    """:func:`sensitivity_runs` for each seed (``out/seed<s>/<factor>_<value>``), seed-major so that an interrupted
    study leaves whole seeds. A seed's default point is read from the first folder of ``reuse`` that holds that seed's
    B² with exactly the default's trainer settings and evaluation (:func:`b2lib.utils.rundir.reuse_problems`; the main
    job's runs, when the grid is centred on the main setup), else trained once in ``out/seed<s>/default``.

    Why reuse: the default point is the main job's B² itself; training it again costs a run per seed and gives a
    replicate, not a new point."""
    plan = SensitivityPlan(seeds=tuple(seeds))
    for s in seeds:
        points = sensitivity_runs(replace(base, seeds=(s,)), Path(out) / f"seed{s}", seed=s, grid=grid)
        default = replace(
            base, methods=("b2",), seeds=(s,), output_dir=str(Path(out) / f"seed{s}" / "default"), save_lora=False
        )
        plan.defaults = {k: v for k, v in sensitivity_defaults(default).items() if k != "budget"}
        same = [Path(f) for f in reuse if not reuse_problems([f], default.settings())]
        for factor, value, cfg in points:
            if cfg.output_dir == default.output_dir and same:
                cfg = replace(cfg, output_dir=str(same[0]))
            plan.runs.append((factor, value, cfg))
    reused = {str(f) for f in reuse}
    plan.train = [c for c in {c.output_dir: c for _, _, c in plan.runs}.values() if c.output_dir not in reused]
    return plan


def sensitivity_comparisons(plan: SensitivityPlan, splits=("test",)) -> pd.DataFrame:
    """Each point of the grid against the default point, paired (the same evaluation prompts and noise for every
    run): the :func:`b2lib.evaluation.comparisons.paired_comparison` table with ``factor`` and ``value`` columns added.
    Seeds are resampled per side, so a point may have fewer finished seeds than the default."""

    entries: dict[str, str] = {}
    for factor, value, cfg in plan.runs:
        entries[cfg.output_dir] = plan.label(factor, value)
    per_image = combine_runs(list(entries), [{"b2": label} for label in entries.values()])
    per_image = per_image[(per_image["method"] != "default") | per_image["seed"].isin(list(plan.seeds))]
    points = {plan.label(f, v): (f, v) for f, v, _ in plan.runs if plan.label(f, v) != "default"}
    table = paired_comparisons(per_image, splits, [(label, "default") for label in points])
    table.insert(0, "value", table["a"].map(lambda a: points[a][1]))
    table.insert(0, "factor", table["a"].map(lambda a: points[a][0]))
    return table


#: notebook 09's budget study: images per stage as multiples of the preset's (4x, 16x of the embedded 32)
BUDGET_SCALES = (4, 16)


def sign_control_runs(out: str | Path, methods, seeds, **common) -> list:
    """Notebook 09's sign control: per seed and method, one run on the reward and one on its negation
    (``reward_sign=-1``), in ``out/signs/<method>_<pos|neg>_seed<s>``; ``common``: shared RunConfig fields."""

    return [
        RunConfig(
            **{
                **common,
                "methods": (m,),
                "seeds": (s,),
                "reward_sign": sign,
                "output_dir": str(Path(out) / "signs" / f"{m}_{'pos' if sign > 0 else 'neg'}_seed{s}"),
            }
        )
        for s in seeds
        for m in methods
        for sign in (1, -1)
    ]


def budget_runs(out: str | Path, methods, seeds, scales=BUDGET_SCALES, **common) -> list:
    """Notebook 09's budget study: each method's tuned recipe with ``scales`` x the preset's images per stage and its
    optimizer settings unchanged (so more steps: ``out/scale/<m>_n<images>_seed<s>``), and with the first scale's
    images *and* ``grad_accum`` (so the same number of steps, each on more samples:
    ``out/batch<images>/<m>_seed<s>``)."""

    runs = []
    for s in seeds:
        for m in methods:
            tuned = trainer_config(common.get("preset", "embedded"), m, **common.get("overrides", {}))
            base_images = (
                tuned.prompts_per_stage * tuned.num_branches
                if common.get("images_per_stage", 0) == 0
                else common["images_per_stage"]
            )
            for k in scales:
                runs.append(
                    RunConfig(
                        **{
                            **common,
                            "methods": (m,),
                            "seeds": (s,),
                            "images_per_stage": base_images * k,
                            "eval_splits": ("train", "test"),
                            "output_dir": str(Path(out) / "scale" / f"{m}_n{base_images * k}_seed{s}"),
                        }
                    )
                )
            k = scales[0]
            runs.append(
                RunConfig(
                    **{
                        **common,
                        "methods": (m,),
                        "seeds": (s,),
                        "images_per_stage": base_images * k,
                        "overrides": {**common.get("overrides", {}), "grad_accum": tuned.grad_accum * k},
                        "output_dir": str(Path(out) / f"batch{base_images * k}" / job_label(m, s)),
                    }
                )
            )
    return runs


def group_census(trainer, draws: int = 10, stage: int = 0, trained_steps: int | None = None) -> pd.DataFrame:
    """What branch groups look like under a trainer's reward, and what B²'s selection keeps from each kind.

    For ``draws`` independent samples of ``stage`` (``trainer.sample_stage(..., draw=d)``, not training's own), one
    row per branch group: ``kind`` is "mixed" (its branches' rewards differ), "flat_low" (all equal, below the stage's
    mean reward: under a binary reward, every branch failed) or "flat_high" (all equal, at or above it); ``kept_pos`` /
    ``kept_neg`` count the samples selection keeps with a positive / non-positive advantage. Why: a flat group has no
    within-branch comparison, yet the per-prompt normaliser can still give its samples a large z (against the
    prompt's other prefixes), so selection may keep one; such a sample's advantage measures the prefix as well as the
    trained interval. The trainer's normaliser is restored after every draw, so measuring trains nothing.
    """
    rows = []
    for d in range(draws):
        traj, rewards = trainer.sample_stage(stage, trained_steps=trained_steps, draw=d + 1)
        state = trainer.normalizer.state_dict()
        adv, keep = trainer.advantages(traj, rewards)
        trainer.normalizer.load_state_dict(state)
        mean = float(rewards.mean())
        for g in traj.group_ids.unique().tolist():
            idx = traj.group_ids == g
            r = rewards[idx]
            kind = group_kind(r.tolist(), mean)
            rows.append(
                {
                    "draw": d,
                    "group": g,
                    "kind": kind,
                    "branches": int(idx.sum()),
                    "reward_mean": float(r.mean()),
                    "kept_pos": int((keep[idx] & (adv[idx] > 0)).sum()),
                    "kept_neg": int((keep[idx] & (adv[idx] <= 0)).sum()),
                }
            )
    return pd.DataFrame(rows)


def census_summary(census: pd.DataFrame) -> pd.DataFrame:
    """:func:`group_census` rows per (trained steps, kind): groups, kept samples by sign, the kind's share of the
    groups and the samples kept per group."""
    by = [c for c in ("trained_steps", "kind") if c in census]
    out = census.groupby(by).agg(groups=("group", "size"), kept_pos=("kept_pos", "sum"), kept_neg=("kept_neg", "sum"))
    total = out.groupby(level=0)["groups"].transform("sum") if len(by) > 1 else out["groups"].sum()
    out["share"] = out["groups"] / total
    out["kept_per_group"] = (out["kept_pos"] + out["kept_neg"]) / out["groups"]
    return out


def dtype_comparisons(
    reference: dict[str, str | Path], other: dict[str, str | Path], tag: str, splits: Sequence[str] = ("test",)
) -> pd.DataFrame:
    """Each method run in another compute dtype against its reference run, paired on the same prompts and noise
    (notebook 13): per method ``m{tag} − m``, the base model's ``base{tag} − base`` (what the evaluation's precision
    alone does) and each ``m{tag} − base``; with two or more methods also the first two against each other under
    ``tag``. ``reference`` and ``other`` map a method to its run folder.

    Why renamed bases: the two dtypes' base models score the same images slightly differently, so
    :func:`~b2lib.reporting.report.combine_runs` would refuse to pool them as one base; ``base{tag}`` keeps them apart,
    while the reference folders' bases are still checked equal to each other."""

    methods = list(reference)
    if set(other) != set(methods):
        raise ValueError(f"reference has methods {methods}, other {list(other)}: give both the same methods.")
    folders = [reference[m] for m in methods] + [other[m] for m in methods]
    renames = [{} for _ in methods] + [{"base": "base" + tag, m: m + tag} for m in methods]
    images = combine_runs(folders, renames).drop_duplicates(["method", "seed", "split", "image"])
    pairs = [(m + tag, m) for m in ("base", *methods)] + [(m + tag, "base") for m in methods]
    pairs += [(methods[0] + tag, methods[1] + tag)] if len(methods) > 1 else []
    return paired_comparisons(images, splits, pairs)
