"""The full table of comparisons, "study and comparison -> notebook -> means -> difference" (:func:`readme_table`),
rebuilt from the tables the notebooks wrote under ``results/`` (:func:`b2lib.tables.read_table`); notebook 08
writes it to ``results/summary.md``, one link from the front page (whose own blocks are :mod:`b2lib.frontpage`'s).

Why a module of its own: it is the one reader of every study's output, with wording of its own per row (which way a
difference goes,
recipe and budget notes, devices, the generalisation rows of :func:`generalisation_rows`); kept apart, its phrasing
can change without touching the readers of :mod:`b2lib.report` or the statistics of :mod:`b2lib.comparisons`, and it
needs no training or run folder: a study that has not run is reported as not run, never filled in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from .comparisons import EVAL_IMAGE_METRICS
from .tables import read_table

__all__ = ["readme_table", "generalisation_rows"]


def _ms(table: pd.DataFrame, row, col: str, digits: int = 3) -> str:
    return f"{table.loc[row, f'{col}_mean']:.{digits}f} ± {table.loc[row, f'{col}_std']:.{digits}f}"


def _verdict(b2: float, ddpo: float, b2_std: float = 0.0, ddpo_std: float = 0.0) -> str:
    """'B² higher', 'DDPO higher', 'equal', or 'within 1 std' (means closer than the larger std over seeds)."""
    if b2 == ddpo:
        return "equal"
    if abs(b2 - ddpo) <= max(b2_std, ddpo_std):
        return "within 1 std"
    return "B² higher" if b2 > ddpo else "DDPO higher"


def _recipe_note(study: Path) -> str:
    """ " · earlier recipe" when a study's runs predate the training-health logging (and with it the tuned recipe of
    notebook 02): their metrics.csv lacks ``rel_update``. Read from the files, so a rerun clears it."""
    for metrics in sorted(study.glob("**/metrics.csv")):
        cols = pd.read_csv(metrics, nrows=0).columns
        return "" if "rel_update" in cols else " · earlier recipe"
    return ""


def _budget_note(run: Path) -> str:
    """ " (coarse recipe, equal UNet work: b2 120 stages, ddpo 62)" for a run folder: its recipe and budget from
    ``config.json`` and each method's stage count from ``metrics.csv``. Read from the files, so a rerun updates it."""
    config, metrics = run / "config.json", run / "metrics.csv"
    if not config.exists() or not metrics.exists():
        return ""
    cfg = json.loads(config.read_text())
    stages = pd.read_csv(metrics).groupby("method")["stage"].nunique()
    budget = "equal UNet work" if cfg.get("budget", "images") == "compute" else "equal images"
    counts = ", ".join(f"{m} {int(stages[m])}" for m in cfg.get("methods", stages.index) if m in stages)
    return f" ({cfg.get('recipe', 'paper')} recipe, {budget}: stages {counts})"


def _devices(runs: pd.DataFrame | None, study: str) -> str:
    """ "; run on cpu and cuda" for a study's runs when they did not all run on the CPU (from notebook 09's
    runs table)."""
    if runs is None:
        return ""
    devices = sorted(set(runs.loc[runs["study"] == study, "device"]))
    return f"; run on {' and '.join(devices)}" if devices != ["cpu"] and devices else ""


def _comparison_rows(c: pd.DataFrame | None, title: str, splits: Sequence[str] | None) -> list[tuple[str, str, str]]:
    """README rows ``(what, number, verdict)`` of a paired-comparison table
    (:func:`b2lib.comparisons.paired_comparison` per split), keeping ``splits`` (None: all); none if the study has not
    run."""
    if c is None:
        return []
    rows = []
    for _, r in (c if splits is None else c[c["split"].isin(splits)]).iterrows():
        label = EVAL_IMAGE_METRICS.get(r["metric"], r["metric"])
        what = (
            f"{title} · {r['template']}, {r['split']} prompts: {label}, {r['a']} − {r['b']} ({r['images']} paired "
            f"images, {r['seeds_a']} seed{'s' if r['seeds_a'] > 1 else ''})"
        )
        rows.append((what, f"{r['a']} {r['mean_a']:.3f} / {r['b']} {r['mean_b']:.3f}", r["verdict"]))
    return rows


def generalisation_rows(c: pd.DataFrame | None) -> list[tuple[str, str, str]]:
    """README rows ``(what, number, verdict)``: each method's paired gain over the base model on the training prompts
    next to its gain on the held-out (test) prompts, per template and metric, from Table 1's comparisons evaluated on
    both splits (notebook 04 with ``eval_splits: [test, train]``). None if the train split was not evaluated.

    Why this form: the two splits are different images, so the gains are not paired with each other; each carries its
    own interval. A gain resolved on both says it carries over to prompts not seen in training; on train only, that it
    may not."""
    if c is None or "train" not in set(c["split"]):
        return []
    rows = []
    vs_base = c[(c["b"] == "base") & c["split"].isin(["train", "test"])]
    for (template, metric), g in vs_base.groupby(["template", "metric"], sort=False):
        parts, verdicts = [], []
        for method in dict.fromkeys(g["a"]):
            by = g[g["a"] == method].set_index("split")
            if not {"train", "test"} <= set(by.index):
                continue
            tr, te = by.loc["train"], by.loc["test"]
            parts.append(
                f"{method} train {tr['diff']:+.3f} [{tr['low']:+.3f}, {tr['high']:+.3f}] · test {te['diff']:+.3f} "
                f"[{te['low']:+.3f}, {te['high']:+.3f}]"
            )
            up_tr, up_te = tr["low"] > 0, te["low"] > 0
            verdicts.append(
                f"{method}: "
                + (
                    "gain on both"
                    if up_tr and up_te
                    else "gain on train prompts only"
                    if up_tr
                    else "gain on held-out prompts only"
                    if up_te
                    else "no gain resolved"
                )
            )
        if parts:
            label = EVAL_IMAGE_METRICS.get(metric, metric)
            what = f"Generalisation · {template}: {label}, gain over base on train vs held-out prompts"
            rows.append((what, " / ".join(parts), "; ".join(verdicts)))
    return rows


def readme_table(results: str | Path) -> str:
    """The full table of comparisons (study and comparison, notebook, means, difference) as markdown, read from the
    CSVs the notebooks wrote under ``results`` (a missing study is reported as not run, never filled in)."""
    results = Path(results)
    lines = [
        "| study · comparison | notebook | means at the embedded scale (a / b) | a − b (95 % interval) or B² vs DDPO |",
        "|---|---|---|---|",
    ]

    def add(what, nb, number, verdict=""):
        lines.append(f"| {what} | `{nb}` | {number} | {verdict} |")

    tuning = results / "tuning" / "choice.json"
    if tuning.exists():
        choice = json.loads(tuning.read_text())
        vals = " / ".join(
            f"{m}: "
            + ", ".join(f"{k} {v:g}" for k, v in c.items() if k != "mean_gain")
            + f" (gain {c['mean_gain']:+.3f})"
            for m, c in choice.items()
        )
        add("Tuning: each method's chosen setting (train-split CLIPScore gain over base, 2 seeds)", "02_tuning", vals)
    for name, title, nb, splits in (
        ("main_comparisons", "Main job" + _budget_note(results / "main"), "03_train", None),
        ("coarse120_comparisons", "B² at 120 stages" + _budget_note(results / "coarse120"), "03_train", None),
        ("compute_ddpo_comparisons", "DDPO at B²'s compute" + _budget_note(results / "compute_ddpo"), "03_train", None),
        (
            "compute_vs_coarse120",
            "Equal compute: B² (120 stages, `results/coarse120`) vs DDPO (`results/compute_ddpo`)",
            "03_train",
            None,
        ),
        ("images_ddpo_comparisons", "DDPO at B²'s images" + _budget_note(results / "images_ddpo"), "03_train", None),
        (
            "images_vs_coarse120",
            "Equal images: B² (120 stages, `results/coarse120`) vs DDPO (120 stages, `results/images_ddpo`)",
            "03_train",
            None,
        ),
        ("main_paper_comparisons", "Former main job" + _budget_note(results / "main_paper"), "03_train", None),
        ("sparse_comparisons", "Sparse reward (trained on the judge's binary reward)", "11_sparse_reward", ("test",)),
        ("coarse_comparisons", "Coarse recipe (notebook 03 with `recipe=coarse`)", "03_train", None),
        ("strategy_comparisons", "Strategy ablation (main setup, equal UNet work)", "06_ablations", ("test",)),
        ("sensitivity_comparisons", "Sensitivity of B² (each point − the main setup's)", "06_ablations", ("test",)),
        ("compat_comparisons", "Compatibility (main setup, equal UNet work)", "07_compatibility", ("test",)),
        ("compat_replicates", "Replicate (the same settings and seeds trained twice)", "07_compatibility", ("test",)),
        ("trees_comparisons", "Branch trees (main setup, equal UNet work)", "12_trees", ("test",)),
        ("trees_images_comparisons", "Branch trees (main setup, equal images)", "12_trees", ("test",)),
    ):
        for row in _comparison_rows(read_table(results, name), title, splits):
            add(row[0], nb, *row[1:])
    for name, recipe in (("sign_control", ""), ("coarse_sign_control", ", coarse recipe")):
        t = read_table(results, name)
        if t is None:
            continue
        device = _devices(read_table(results, "signal_runs"), "signs") if name == "sign_control" else ""
        for _, r in t.iterrows():
            label = EVAL_IMAGE_METRICS.get(r["metric"], r["metric"])
            parts = [
                f"{k} {r[k]:+.3f} [{r[f'{k}_low']:+.3f}, {r[f'{k}_high']:+.3f}]" for k in ("gain", "signal", "drift")
            ]
            add(
                f"Learning vs drift · {r['method']}{recipe}, counting, train prompts: {label} "
                f"({r['seeds']} seed pairs, {r['images']} paired images{device})",
                "09_learning_vs_drift",
                " · ".join(parts),
                "signal resolved" if r["signal_low"] > 0 else "signal not resolved",
            )
    t = read_table(results, "snr")
    if t is not None:
        t = t[t["steps"] == "interval"]
        for _, r in t.iterrows():
            resolved = r["snr_low"] > 0 or r["snr_high"] < 0
            add(
                f"Gradient SNR · {r['estimator']} ({r['reward']} reward, {r['n_steps']} trained step"
                f"{'s' if r['n_steps'] > 1 else ''}, {'kept' if r['selection'] else 'all'} samples; {r['images']} "
                f"images per stage, {r['draws']} stages)",
                "10_gradient_snr",
                f"stage SNR {r['snr']:+.4f} [{r['snr_low']:+.4f}, {r['snr_high']:+.4f}]; per image ≤ "
                f"{max(r['snr_high'], 0) / r['images']:.1e}",
                "signal resolved" if resolved else "no signal resolved",
            )
    c = read_table(results, "table1_comparisons")  # Table 1 with paired intervals; replaces the mean ± std rows
    table1_runs = sorted(f.parent for f in (results / "templates").glob("*/config.json"))  # one folder per template
    for row in _comparison_rows(c, "Table 1" + (_budget_note(table1_runs[0]) if table1_runs else ""), ("test",)):
        add(row[0], "04_templates", *row[1:])
    t = read_table(results, "main_table")
    if t is not None:
        for template in dict.fromkeys(t.index.get_level_values(0)):
            for col, name in (
                ("reward_mean", "CLIPScore"),
                ("bertscore_mean", "BERTScore"),
                ("judge_all_ok", "judge aligned"),
            ):
                if f"{col}_mean" not in t or c is not None:
                    continue
                vals = " / ".join(
                    f"{m} {_ms(t, (template, m), col)}" for m in ("base", "ddpo", "b2") if (template, m) in t.index
                )
                n = int(t.loc[(template, "b2"), "n"]) if (template, "b2") in t.index else 0
                verdict = _verdict(
                    t.loc[(template, "b2"), f"{col}_mean"],
                    t.loc[(template, "ddpo"), f"{col}_mean"],
                    t.loc[(template, "b2"), f"{col}_std"],
                    t.loc[(template, "ddpo"), f"{col}_std"],
                )
                add(
                    f"Table 1 · {template}: {name} (test prompts, {n} seeds){_recipe_note(results / 'templates')}",
                    "04_templates",
                    vals,
                    verdict,
                )
            for col, name in (("clip_diversity", "diversity, CLIP"), ("pixel_diversity", "diversity, pixel")):
                vals = " / ".join(
                    f"{m} {_ms(t, (template, m), col)}" for m in ("base", "ddpo", "b2") if (template, m) in t.index
                )
                verdict = _verdict(
                    t.loc[(template, "b2"), f"{col}_mean"],
                    t.loc[(template, "ddpo"), f"{col}_mean"],
                    t.loc[(template, "b2"), f"{col}_std"],
                    t.loc[(template, "ddpo"), f"{col}_std"],
                )
                add(f"Diversity · {template}: {name}", "04_templates", vals, verdict)
    else:
        add("Table 1, diversity, curves", "04_templates", "not run yet")
    for row in generalisation_rows(c):
        add(row[0], "04_templates", *row[1:])
    g = read_table(results, "generalisation")
    if g is not None and not generalisation_rows(c):
        col = ("judge_all_ok_mean", "gap")
        for template in dict.fromkeys(g.index.get_level_values(0)):
            vals = " / ".join(
                f"{m} {g.loc[(template, m), col]:+.3f}" for m in ("base", "ddpo", "b2") if (template, m) in g.index
            )
            add(f"Generalisation · {template}: judge aligned, train − test", "04_templates", vals)
    t = read_table(results, "strategies")
    if t is not None:
        vals = " / ".join(
            f"{m} {_ms(t, m, 'judge_all_ok')}" for m in ("ddpo", "progressive", "branch", "b2") if m in t.index
        )
        n = int(t["n"].max())
        add(
            f"Ablation: judge aligned (neither / progressive only / branch only / both; {n} seed{'s' if n > 1 else ''})"
            f"{_recipe_note(results / 'ablations')}",
            "06_ablations",
            vals,
        )
        vals = " / ".join(
            f"{m} {_ms(t, m, 'reward_mean')}" for m in ("ddpo", "progressive", "branch", "b2") if m in t.index
        )
        add("Ablation: CLIPScore (same order)", "06_ablations", vals)
    s, note = read_table(results, "sensitivity"), ""
    if s is None:  # not run with the main setup: the one-seed grid at the former preset
        s, note = read_table(results, "sensitivity_paper"), " · former preset, `results/ablations_paper`"
    if s is not None:
        for factor, rows in s.groupby("factor", sort=False):
            per_value = rows.groupby("value", sort=True)["judge_all_ok"].agg(["mean", "count"])
            vals = ", ".join(f"{v:g}: {r['mean']:.3f}" for v, r in per_value.iterrows())
            n = int(per_value["count"].max())
            add(f"Sensitivity to {factor} (judge aligned, {n} seed{'s' if n > 1 else ''}){note}", "06_ablations", vals)
    c, folder = read_table(results, "compat"), "compat"
    if c is None:  # not run with the main setup: the one-seed study at the former preset
        c, folder = read_table(results, "compat_paper"), "compat_paper"
    if c is not None:
        for algo in dict.fromkeys(c.index.get_level_values(0)):
            if (algo, "ddpo") in c.index and (algo, "b2") in c.index:
                vals = (
                    f"without B² {_ms(c, (algo, 'ddpo'), 'judge_all_ok')} / with B² "
                    f"{_ms(c, (algo, 'b2'), 'judge_all_ok')} (judge); CLIPScore "
                    f"{c.loc[(algo, 'ddpo'), 'reward_mean_mean']:.3f} / {c.loc[(algo, 'b2'), 'reward_mean_mean']:.3f}"
                )
                verdict = _verdict(
                    c.loc[(algo, "b2"), "judge_all_ok_mean"],
                    c.loc[(algo, "ddpo"), "judge_all_ok_mean"],
                    c.loc[(algo, "b2"), "judge_all_ok_std"],
                    c.loc[(algo, "ddpo"), "judge_all_ok_std"],
                )
                n = int(c.loc[(algo, "b2"), "n"])
                add(
                    f"Compatibility · {algo}: judge aligned ({n} seed{'s' if n > 1 else ''})"
                    + _recipe_note(results / folder)
                    + (" · former preset, `results/compat_paper`" if folder == "compat_paper" else ""),
                    "07_compatibility",
                    vals,
                    verdict if n > 1 else f"{verdict} (1 seed: no spread)",
                )
    sp = read_table(results, "speed")
    if sp is not None:
        for _, r in sp.iterrows():
            goal = (
                ""
                if pd.isna(r["goal"])
                else (f" (goal ≥ {r['goal']:.2f}: {'met' if r['median'] >= r['goal'] else '**missed**'})")
            )
            bound = "" if pd.isna(r.get("bound", float("nan"))) else f"; best reachable {r['bound']:.3f}"
            add(
                f"Speed: {r['measurement']}",
                "05_performance",
                f"{r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}]{goal}{bound}",
            )
    return "\n".join(lines)
