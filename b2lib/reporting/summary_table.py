"""The full table of comparisons, "study and comparison -> notebook -> means -> difference" (:func:`readme_table`),
rebuilt from the tables the notebooks wrote under ``results/`` (:func:`b2lib.utils.tables.read_table`); notebook 08
writes it to ``results/summary.md``, one link from the front page (whose own blocks are
:mod:`b2lib.reporting.frontpage`'s).

Why a module of its own: it is the one reader of every study's output, with wording of its own per row (which way a
difference goes,
recipe and budget notes, devices, the generalisation rows of :func:`generalisation_rows`); kept apart, its phrasing
can change without touching the readers of :mod:`b2lib.reporting.report` or the statistics of
:mod:`b2lib.evaluation.comparisons`, and it needs no training or run folder: a study that has not run is reported as not
run, never filled in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import pandas as pd

from b2lib.evaluation.comparisons import EVAL_IMAGE_METRICS
from b2lib.utils.tables import read_table

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
    (:func:`b2lib.evaluation.comparisons.paired_comparison` per split), keeping ``splits`` (None: all); none if the
    study has not run."""
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


# A row of the table: (study · comparison, notebook, means, difference or verdict).
_Row = tuple[str, str, str, str]

_HEADER = (
    "| study · comparison | notebook | means at the embedded scale (a / b) | a − b (95 % interval) or B² vs DDPO |",
    "|---|---|---|---|",
)


class _ComparisonStudy(NamedTuple):
    """One study whose rows are a paired-comparison table, read by :func:`_comparison_rows`.

    Why data: these studies differ only in their table, title, notebook and splits, so adding one is a line here, not
    another loop in :func:`readme_table`. ``run``, when set, is the run folder under ``results`` whose recipe and
    budget (:func:`_budget_note`) follow the title."""

    table: str
    title: str
    notebook: str
    splits: tuple[str, ...] | None = None
    run: str | None = None


_COMPARISON_STUDIES: tuple[_ComparisonStudy, ...] = (
    _ComparisonStudy("main_comparisons", "Main job", "03_train", run="main"),
    _ComparisonStudy("coarse120_comparisons", "B² at 120 stages", "03_train", run="coarse120"),
    _ComparisonStudy("compute_ddpo_comparisons", "DDPO at B²'s compute", "03_train", run="compute_ddpo"),
    _ComparisonStudy(
        "compute_vs_coarse120",
        "Equal compute: B² (120 stages, `results/coarse120`) vs DDPO (`results/compute_ddpo`)",
        "03_train",
    ),
    _ComparisonStudy("images_ddpo_comparisons", "DDPO at B²'s images", "03_train", run="images_ddpo"),
    _ComparisonStudy(
        "images_vs_coarse120",
        "Equal images: B² (120 stages, `results/coarse120`) vs DDPO (120 stages, `results/images_ddpo`)",
        "03_train",
    ),
    _ComparisonStudy("main_paper_comparisons", "Former main job", "03_train", run="main_paper"),
    _ComparisonStudy(
        "sparse_comparisons", "Sparse reward (trained on the judge's binary reward)", "11_sparse_reward", ("test",)
    ),
    _ComparisonStudy("coarse_comparisons", "Coarse recipe (notebook 03 with `recipe=coarse`)", "03_train"),
    _ComparisonStudy(
        "strategy_comparisons", "Strategy ablation (main setup, equal UNet work)", "06_ablations", ("test",)
    ),
    _ComparisonStudy(
        "sensitivity_comparisons", "Sensitivity of B² (each point − the main setup's)", "06_ablations", ("test",)
    ),
    _ComparisonStudy(
        "compat_comparisons", "Compatibility (main setup, equal UNet work)", "07_compatibility", ("test",)
    ),
    _ComparisonStudy(
        "compat_replicates", "Replicate (the same settings and seeds trained twice)", "07_compatibility", ("test",)
    ),
    _ComparisonStudy("trees_comparisons", "Branch trees (main setup, equal UNet work)", "12_trees", ("test",)),
    _ComparisonStudy("trees_images_comparisons", "Branch trees (main setup, equal images)", "12_trees", ("test",)),
    _ComparisonStudy(
        "sparse_levers_comparisons", "Binary reward, each method at its searched levers", "17_sparse_levers", ("test",)
    ),
    _ComparisonStudy(
        "binary_comparisons",
        "Binary reward at the census's budget (coarse recipe, equal UNet work)",
        "20_binary_study",
        ("test",),
    ),
    _ComparisonStudy("flow_comparisons", "Flow world (coarse recipe, equal transformer work)", "15_flow", ("test",)),
)

_TABLE1_METRICS = (("reward_mean", "CLIPScore"), ("bertscore_mean", "BERTScore"), ("judge_all_ok", "judge aligned"))
_DIVERSITY_METRICS = (("clip_diversity", "diversity, CLIP"), ("pixel_diversity", "diversity, pixel"))
_STRATEGIES = ("ddpo", "progressive", "branch", "b2")


def _seeds(n: int) -> str:
    """ "1 seed" or "n seeds": the plural the rows have always used, in one place."""
    return f"{n} seed{'s' if n > 1 else ''}"


def _means(table: pd.DataFrame, keys: Sequence, col: str) -> str:
    """ "base 0.1 ± 0.0 / ddpo ..." for the rows ``keys`` present in ``table``; the method is a key's last part."""
    return " / ".join(
        f"{key[-1] if isinstance(key, tuple) else key} {_ms(table, key, col)}" for key in keys if key in table.index
    )


def _b2_vs_ddpo(table: pd.DataFrame, b2: object, ddpo: object, col: str) -> str:
    """:func:`_verdict` of the rows ``b2`` and ``ddpo`` of a mean ± std table on ``col``."""
    return _verdict(
        table.loc[b2, f"{col}_mean"],
        table.loc[ddpo, f"{col}_mean"],
        table.loc[b2, f"{col}_std"],
        table.loc[ddpo, f"{col}_std"],
    )


def _tuning_rows(results: Path) -> list[_Row]:
    """Notebook 02's chosen setting per method, with its gain, from ``tuning/choice.json``."""
    tuning = results / "tuning" / "choice.json"
    if not tuning.exists():
        return []
    choice = json.loads(tuning.read_text())
    vals = " / ".join(
        f"{m}: " + ", ".join(f"{k} {v:g}" for k, v in c.items() if k != "mean_gain") + f" (gain {c['mean_gain']:+.3f})"
        for m, c in choice.items()
    )
    what = "Tuning: each method's chosen setting (train-split CLIPScore gain over base, 2 seeds)"
    return [(what, "02_tuning", vals, "")]


def _comparison_study_rows(results: Path) -> list[_Row]:
    """The rows of every study in :data:`_COMPARISON_STUDIES`, in their declared order."""
    rows = []
    for study in _COMPARISON_STUDIES:
        title = study.title + (_budget_note(results / study.run) if study.run else "")
        for what, number, verdict in _comparison_rows(read_table(results, study.table), title, study.splits):
            rows.append((what, study.notebook, number, verdict))
    return rows


def _sign_control_rows(results: Path) -> list[_Row]:
    """Notebook 09's learning-vs-drift split (gain = signal + drift) per method, main recipe then coarse."""
    rows = []
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
            what = (
                f"Learning vs drift · {r['method']}{recipe}, counting, train prompts: {label} "
                f"({r['seeds']} seed pairs, {r['images']} paired images{device})"
            )
            verdict = "signal resolved" if r["signal_low"] > 0 else "signal not resolved"
            rows.append((what, "09_learning_vs_drift", " · ".join(parts), verdict))
    return rows


def _snr_rows(results: Path) -> list[_Row]:
    """Notebook 10's gradient signal-to-noise ratio per estimator, whole intervals only."""
    t = read_table(results, "snr")
    if t is None:
        return []
    rows = []
    for _, r in t[t["steps"] == "interval"].iterrows():
        resolved = r["snr_low"] > 0 or r["snr_high"] < 0
        what = (
            f"Gradient SNR · {r['estimator']} ({r['reward']} reward, {r['n_steps']} trained step"
            f"{'s' if r['n_steps'] > 1 else ''}, {'kept' if r['selection'] else 'all'} samples; {r['images']} "
            f"images per stage, {r['draws']} stages)"
        )
        number = (
            f"stage SNR {r['snr']:+.4f} [{r['snr_low']:+.4f}, {r['snr_high']:+.4f}]; per image ≤ "
            f"{max(r['snr_high'], 0) / r['images']:.1e}"
        )
        rows.append((what, "10_gradient_snr", number, "signal resolved" if resolved else "no signal resolved"))
    return rows


def _table1_comparison_rows(results: Path) -> list[_Row]:
    """Table 1 with paired intervals (test prompts); the title carries notebook 04's recipe and budget."""
    c = read_table(results, "table1_comparisons")
    table1_runs = sorted(f.parent for f in (results / "templates").glob("*/config.json"))  # one folder per template
    title = "Table 1" + (_budget_note(table1_runs[0]) if table1_runs else "")
    return [(what, "04_templates", number, verdict) for what, number, verdict in _comparison_rows(c, title, ("test",))]


def _main_table_rows(results: Path) -> list[_Row]:
    """Per template: Table 1 as mean ± std (only while no paired intervals exist), then its diversity rows."""
    t = read_table(results, "main_table")
    if t is None:
        return [("Table 1, diversity, curves", "04_templates", "not run yet", "")]
    has_intervals = read_table(results, "table1_comparisons") is not None
    rows = []
    for template in dict.fromkeys(t.index.get_level_values(0)):
        keys = [(template, m) for m in ("base", "ddpo", "b2")]
        b2, ddpo = (template, "b2"), (template, "ddpo")
        for col, name in _TABLE1_METRICS:
            if f"{col}_mean" not in t or has_intervals:
                continue
            n = int(t.loc[b2, "n"]) if b2 in t.index else 0
            what = f"Table 1 · {template}: {name} (test prompts, {n} seeds){_recipe_note(results / 'templates')}"
            rows.append((what, "04_templates", _means(t, keys, col), _b2_vs_ddpo(t, b2, ddpo, col)))
        for col, name in _DIVERSITY_METRICS:
            what = f"Diversity · {template}: {name}"
            rows.append((what, "04_templates", _means(t, keys, col), _b2_vs_ddpo(t, b2, ddpo, col)))
    return rows


def _generalisation_section_rows(results: Path) -> list[_Row]:
    """:func:`generalisation_rows` of Table 1's comparisons; without them, the older train − test gap per method."""
    paired = generalisation_rows(read_table(results, "table1_comparisons"))
    rows = [(what, "04_templates", number, verdict) for what, number, verdict in paired]
    g = read_table(results, "generalisation")
    if g is None or paired:
        return rows
    col = ("judge_all_ok_mean", "gap")
    for template in dict.fromkeys(g.index.get_level_values(0)):
        vals = " / ".join(
            f"{m} {g.loc[(template, m), col]:+.3f}" for m in ("base", "ddpo", "b2") if (template, m) in g.index
        )
        rows.append((f"Generalisation · {template}: judge aligned, train − test", "04_templates", vals, ""))
    return rows


def _strategy_rows(results: Path) -> list[_Row]:
    """Notebook 06's strategy ablation as mean ± std: judge aligned, then CLIPScore."""
    t = read_table(results, "strategies")
    if t is None:
        return []
    n = int(t["n"].max())
    what = (
        f"Ablation: judge aligned (neither / progressive only / branch only / both; {_seeds(n)})"
        f"{_recipe_note(results / 'ablations')}"
    )
    return [
        (what, "06_ablations", _means(t, _STRATEGIES, "judge_all_ok"), ""),
        ("Ablation: CLIPScore (same order)", "06_ablations", _means(t, _STRATEGIES, "reward_mean"), ""),
    ]


def _sensitivity_rows(results: Path) -> list[_Row]:
    """Notebook 06's sensitivity grid, judge aligned per value averaged over seeds; the former preset's grid if the
    main setup's has not run."""
    s, note = read_table(results, "sensitivity"), ""
    if s is None:  # not run with the main setup: the one-seed grid at the former preset
        s, note = read_table(results, "sensitivity_paper"), " · former preset, `results/ablations_paper`"
    if s is None:
        return []
    rows = []
    for factor, group in s.groupby("factor", sort=False):
        per_value = group.groupby("value", sort=True)["judge_all_ok"].agg(["mean", "count"])
        vals = ", ".join(f"{v:g}: {r['mean']:.3f}" for v, r in per_value.iterrows())
        n = int(per_value["count"].max())
        rows.append((f"Sensitivity to {factor} (judge aligned, {_seeds(n)}){note}", "06_ablations", vals, ""))
    return rows


def _compat_rows(results: Path) -> list[_Row]:
    """Notebook 07's compatibility study, each algorithm without and with B²; the former preset's if the main
    setup's has not run."""
    c, folder = read_table(results, "compat"), "compat"
    if c is None:  # not run with the main setup: the one-seed study at the former preset
        c, folder = read_table(results, "compat_paper"), "compat_paper"
    if c is None:
        return []
    rows = []
    for algo in dict.fromkeys(c.index.get_level_values(0)):
        b2, ddpo = (algo, "b2"), (algo, "ddpo")
        if ddpo not in c.index or b2 not in c.index:
            continue
        vals = (
            f"without B² {_ms(c, ddpo, 'judge_all_ok')} / with B² {_ms(c, b2, 'judge_all_ok')} (judge); CLIPScore "
            f"{c.loc[ddpo, 'reward_mean_mean']:.3f} / {c.loc[b2, 'reward_mean_mean']:.3f}"
        )
        verdict = _b2_vs_ddpo(c, b2, ddpo, "judge_all_ok")
        n = int(c.loc[b2, "n"])
        what = (
            f"Compatibility · {algo}: judge aligned ({_seeds(n)})"
            + _recipe_note(results / folder)
            + (" · former preset, `results/compat_paper`" if folder == "compat_paper" else "")
        )
        rows.append((what, "07_compatibility", vals, verdict if n > 1 else f"{verdict} (1 seed: no spread)"))
    return rows


def _speed_rows(results: Path) -> list[_Row]:
    """Notebook 05's speed measurements: median [min, max], the goal and whether it was met, the best reachable."""
    sp = read_table(results, "speed")
    if sp is None:
        return []
    rows = []
    for _, r in sp.iterrows():
        goal = (
            ""
            if pd.isna(r["goal"])
            else (f" (goal ≥ {r['goal']:.2f}: {'met' if r['median'] >= r['goal'] else '**missed**'})")
        )
        bound = "" if pd.isna(r.get("bound", float("nan"))) else f"; best reachable {r['bound']:.3f}"
        number = f"{r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}]{goal}{bound}"
        rows.append((f"Speed: {r['measurement']}", "05_performance", number, ""))
    return rows


# The table's sections in their order; each reads its study's files under ``results`` and returns its rows (none if
# the study has not run).
_SECTIONS: tuple[Callable[[Path], list[_Row]], ...] = (
    _tuning_rows,
    _comparison_study_rows,
    _sign_control_rows,
    _snr_rows,
    _table1_comparison_rows,
    _main_table_rows,
    _generalisation_section_rows,
    _strategy_rows,
    _sensitivity_rows,
    _compat_rows,
    _speed_rows,
)


def readme_table(results: str | Path) -> str:
    """The full table of comparisons (study and comparison, notebook, means, difference) as markdown, read from the
    CSVs the notebooks wrote under ``results`` (a missing study is reported as not run, never filled in).

    Why sections: each study's wording lives in its own reader (:data:`_SECTIONS`, :data:`_COMPARISON_STUDIES`), so
    this function only lays their rows out."""
    results = Path(results)
    lines = list(_HEADER)
    for section in _SECTIONS:
        lines.extend(f"| {what} | `{nb}` | {number} | {verdict} |" for what, nb, number, verdict in section(results))
    return "\n".join(lines)
