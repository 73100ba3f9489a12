"""README's front page, generated from ``results/``: the scorecard of the paper's claims and of this project's
extensions, Table 1 and one compact table per study.

Why a module of its own: the front page is the one place a reader looks, so none of its numbers may be typed. Each
block is rendered from the comparison files the notebooks wrote (paired two-level bootstrap intervals, see
:mod:`b2lib.evaluation.stats`) and placed between ``<!-- frontpage:NAME -->`` and ``<!-- /frontpage:NAME -->`` markers
in README.md by :func:`update_readme` (notebook 08 calls it). :func:`check_readme` re-renders every block and lists the
ones whose text differs from README's, which the test suite asserts is none: a result file that changes without the
page following fails the tests.

The claims and the rule that gives each its verdict are data in :mod:`b2lib.reporting.claims`. A verdict is stated once,
in the scorecard; any other page that names one writes it inside a ``<!-- verdict:KEY -->…<!-- /verdict -->`` marker,
which
:func:`fill_verdicts` writes and :func:`verdict_problems` checks against :func:`verdicts`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from b2lib.reporting.claims import (
    EXTENSIONS,
    KL_FLOOR,
    NAMES,
    PAPER_CLAIMS,
    RULE,
    STATUS_WORDS,
    Check,
    Claim,
    Health,
    claim_status,
    learned,
    pair_label,
)
from b2lib.utils.tables import read_results_file

__all__ = [
    "METRICS",
    "NAMES",
    "Check",
    "Claim",
    "CLAIMS",
    "format_diff",
    "claim_status",
    "claim_verdict",
    "verdicts",
    "fill_verdicts",
    "verdict_problems",
    "diversity_line",
    "scorecard",
    "table1",
    "diff_table",
    "axis_table",
    "REWARD_NAMES",
    "recipe_table",
    "study_tables",
    "render_blocks",
    "update_readme",
    "check_readme",
]

#: evaluation metrics of the comparison files, with the names the front page uses
METRICS: dict[str, str] = {"reward": "CLIPScore", "bertscore": "BERTScore", "judge_all_ok": "judge aligned"}
#: main_table.csv's column of each metric's mean over seeds
_MEAN_COLUMNS = {"reward": "reward_mean_mean", "bertscore": "bertscore_mean_mean", "judge_all_ok": "judge_all_ok_mean"}
_BLOCK = "<!-- frontpage:{name} -->", "<!-- /frontpage:{name} -->"
#: a verdict named in prose: ``<!-- verdict:KEY -->word<!-- /verdict -->``, filled and checked from the scorecard
VERDICT_MARK = re.compile(r"<!-- verdict:(?P<key>[a-z_]+) -->(?P<word>[^<]*)<!-- /verdict -->")
#: every claim the scorecard scores (the paper's, then the extensions)
CLAIMS: tuple[Claim, ...] = PAPER_CLAIMS + EXTENSIONS
_pair = pair_label


def format_diff(row: pd.Series | Mapping, bold: bool = True) -> str:
    """``+0.059 [+0.015, +0.108]``; bold where the interval excludes 0 (``resolved``)."""
    text = f"{row['diff']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]"
    return f"**{text}**" if bold and bool(row["resolved"]) else text


def _row(df: pd.DataFrame, check: Check, results: Path) -> pd.Series:
    m = df[
        (df["template"] == check.template)
        & (df["a"] == check.a)
        & (df["b"] == check.b)
        & (df["metric"] == check.metric)
        & (df["split"] == check.split)
        & ((df["reward"] == check.reward) if check.reward else True)
    ]
    if len(m) != 1:
        raise KeyError(
            f"results/{check.file}: expected one row {check.template}, {check.a} − {check.b}, {check.metric}, "
            f"{check.split}{', trained on ' + check.reward if check.reward else ''}; found {len(m)}."
        )
    return m.iloc[0]


class _Files:
    """The result files a render reads, each read once."""

    def __init__(self, results: Path):
        self.results, self.cache = results, {}

    def table(self, file: str) -> pd.DataFrame:
        if file not in self.cache:
            self.cache[file] = read_results_file(self.results, file)
        return self.cache[file]

    def rows(self, checks: Sequence[Check]) -> list[pd.Series]:
        return [_row(self.table(c.file), c, self.results) for c in checks]

    def learned(self, health: Sequence[Health]) -> bool | None:
        """Whether any of the runs behind a claim learned (None: the claim names no health table)."""
        if not health:
            return None
        found = []
        for h in health:
            df = self.table(h.file)
            m = df[(df["method"] == h.method) & ((df["reward"] == h.reward) if h.reward else True)]
            if len(m) != 1:
                raise KeyError(f"results/{h.file}: expected one health row for {h.method} {h.reward}; found {len(m)}.")
            found.append(learned(m.iloc[0]) or self.sign_learned(h))
        return any(found)

    def sign_learned(self, h: Health) -> bool:
        """The sign control named by ``h`` resolves the trained reward's signal above 0 (False without one)."""
        if not h.sign_control:
            return False
        df = self.table(h.sign_control)
        row = df[(df["method"] == h.method) & (df["metric"] == h.sign_metric)]
        if len(row) != 1:
            raise KeyError(f"results/{h.sign_control}: expected one sign-control row for {h.method}, {h.sign_metric}.")
        return bool(row.iloc[0]["signal_low"] > 0)


#: how the scorecard names each recipe (``RunConfig.recipe``; a run folder without the field ran the published one)
RECIPE_NAMES = {"paper": "published", "coarse": "coarse"}


def claim_recipes(claim: Claim, results: Path) -> str:
    """The recipes of the runs behind a claim's checks (:func:`study_recipes`)."""
    return study_recipes(results, [c.file for c in claim.checks])


def study_recipes(results: Path, files: Sequence[str]) -> str:
    """The recipes of the runs behind result files, read from the ``config.json`` of every run folder under each
    file's study folder (its own searches aside): what the scorecard's recipe column says, never typed."""
    found = set()
    for file in files:
        for cfg in sorted((results / file).parent.rglob("config.json")):
            if "search" in cfg.relative_to(results).parts:
                continue
            found.add(json.loads(cfg.read_text()).get("recipe", "paper"))
    return ", ".join(RECIPE_NAMES.get(r, r) for r in sorted(found, key=list(RECIPE_NAMES).index)) or "?"


def claim_verdict(claim: Claim, files: _Files) -> str:
    """A claim's status by :func:`b2lib.reporting.claims.claim_status`, from its checks and its runs' health."""
    return claim_status(files.rows(claim.checks), [c.sign for c in claim.checks], files.learned(claim.health))


def verdicts(results: str | Path) -> dict[str, str]:
    """Every scored claim's verdict, by key, in the words of its part of the scorecard (``reproduced`` for the
    paper's claims, ``shown`` for the extensions)."""
    files = _Files(Path(results))
    out = {c.key: STATUS_WORDS["paper"][claim_verdict(c, files)] for c in PAPER_CLAIMS}
    out.update({c.key: STATUS_WORDS["extension"][claim_verdict(c, files)] for c in EXTENSIONS})
    return out


def _claim_line(claim: Claim, files: _Files, words: Mapping[str, str]) -> str:
    got = files.rows(claim.checks)
    status = words[claim_verdict(claim, files)]
    numbers = "; ".join(f"{c.label} {format_diff(r)}" for c, r in zip(claim.checks, got))
    if claim.instead:
        try:
            extra = files.rows(claim.instead)
            numbers += f"; {claim.instead_text}: " + "; ".join(
                f"{c.label} {_means(r)} {format_diff(r)}" for c, r in zip(claim.instead, extra)
            )
        except (FileNotFoundError, KeyError) as err:
            numbers += f"; {claim.instead_text}: not measured ({err})"
    recipes = claim_recipes(claim, files.results)
    return f"| {claim.claim} | **{status}** | {numbers} | {recipes} | `{claim.notebook}` |"


def scorecard(
    results: str | Path, claims: Sequence[Claim] = PAPER_CLAIMS, diversity: bool = True, part: str = "paper"
) -> str:
    """The scorecard of one part (``"paper"`` or ``"extension"``): one line per claim, its status, every check's
    number with its interval, the notebook; then, for the paper's part, the diversity line (:func:`diversity_line`)
    unless ``diversity`` is False."""
    files = _Files(Path(results))
    head = "the paper's claim" if part == "paper" else "beyond the paper (this project's extension)"
    lines = [
        f"| {head} | here | the numbers (a − b, 95 % interval; bold: resolved) | recipe | notebook |",
        "|---|---|---|---|---|",
    ]
    lines += [_claim_line(claim, files, STATUS_WORDS[part]) for claim in claims]
    if diversity and part == "paper":
        lines.append(diversity_line(results))
    return "\n".join(lines)


def fill_verdicts(text: str, found: Mapping[str, str]) -> str:
    """``text`` with every verdict marker's word set to the scorecard's verdict of its key."""
    return VERDICT_MARK.sub(lambda m: f"<!-- verdict:{m['key']} -->{found[m['key']]}<!-- /verdict -->", text)


def verdict_problems(text: str, found: Mapping[str, str], where: str = "") -> list[str]:
    """Verdict markers in ``text`` whose key is unknown or whose word differs from the scorecard's."""
    problems = []
    for m in VERDICT_MARK.finditer(text):
        key, word = m["key"], m["word"]
        if key not in found:
            problems.append(f"{where}: verdict marker names unknown claim {key!r} (b2lib.reporting.claims)")
        elif word != found[key]:
            problems.append(f"{where}: verdict of {key!r} says {word!r}, the scorecard says {found[key]!r}")
    return problems


def diversity_line(results: str | Path) -> str:
    """The paper's diversity claim. Diversity is one number per model (mean pairwise CLIP-embedding distance within a
    prompt), so there is no per-image pairing and no interval: the line gives B²'s mean ± std over seeds against the
    base model's and says it is untested rather than give it a status it has not earned."""
    means = read_results_file(Path(results), "templates/main_table.csv").set_index(["template", "method"])
    parts, below = [], []
    for t in ("counting", "binding", "relation"):
        b2, base = means.loc[(t, "b2")], means.loc[(t, "base")]
        mean, std, ref = b2["clip_diversity_mean"], b2["clip_diversity_std"], base["clip_diversity_mean"]
        parts.append(f"{t} {ref:.3f} → {mean:.3f} ± {std:.3f}")
        if mean + std < ref:
            below.append(t)
    where = ", ".join(below) if below else "none"
    return (
        "| B² keeps image diversity | **no interval** (one number per model) | CLIP diversity, base → B² (± std over "
        f"seeds): {'; '.join(parts)}; B² below base by more than 1 std on: {where} | "
        f"{study_recipes(Path(results), ['templates/main_table.csv'])} | `04_templates` |"
    )


def _means(row: pd.Series) -> str:
    return f"{row['mean_b']:.3f} → {row['mean_a']:.3f},"


def table1(results: str | Path, split: str = "test") -> str:
    """Table 1 as the paper lays it out: template × model, each metric's mean and, for the fine-tuned models, the
    paired difference to the base model with its interval (5 seeds, 512–540 paired test images per model)."""
    results = Path(results)
    means = read_results_file(results, "templates/main_table.csv")
    comps = read_results_file(results, "templates/comparisons.csv")
    comps = comps[comps["split"] == split]
    names = {"base": "base", "ddpo": "DDPO", "b2": "B²"}
    lines = ["| template | model | " + " | ".join(METRICS.values()) + " |", "|---|---|" + "---|" * len(METRICS)]
    for template in ("counting", "binding", "relation"):
        for method in ("base", "ddpo", "b2"):
            m = means[(means["template"] == template) & (means["method"] == method)]
            if len(m) != 1:
                raise KeyError(f"{results}/templates/main_table.csv: no single row for {template}, {method}.")
            cells = []
            for metric in METRICS:
                cell = f"{m.iloc[0][_MEAN_COLUMNS[metric]]:.3f}"
                if method != "base":
                    r = _row(comps, Check("templates/comparisons.csv", template, method, "base", metric, ""), results)
                    cell += f" ({format_diff(r)})"
                cells.append(cell)
            lines.append(f"| {template} | {names[method]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def diff_table(results: str | Path, file: str, rows: Sequence[tuple[str, str, str, str]], split: str = "test") -> str:
    """A compact study table: one row per ``(label, template, a, b)``, one column per metric, each cell ``a − b``
    with its interval (bold: resolved)."""
    results = Path(results)
    df = read_results_file(results, file)
    lines = ["| comparison | " + " | ".join(METRICS.values()) + " |", "|---|" + "---|" * len(METRICS)]
    for label, template, a, b in rows:
        cells = [
            format_diff(_row(df, Check(file, template, a, b, metric, label, split), results)) for metric in METRICS
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: how the front page names the training rewards of the sparsity axis (b2lib.studies.sparsity.AXIS), densest first
REWARD_NAMES: dict[str, str] = {
    "clip": "CLIPScore",
    "judge_graded": "judge, graded",
    "judge": "judge, binary",
    "judge_strict": "judge, strict binary",
}


def axis_table(results: str | Path, file: str = "sparse_axis/comparisons.csv", metric: str = "judge_all_ok") -> str:
    """Notebook 18's axis as a table: one row per training reward present, densest first, with the base model's
    positive rate of that reward; one column per comparison on ``metric`` (test split), each ``a − b`` with its
    interval (bold: resolved)."""
    results = Path(results)
    df = read_results_file(results, file)
    rates = (
        read_results_file(results, "sparse_axis/gain.csv")
        .drop_duplicates("reward")
        .set_index("reward")["positive_rate"]
    )
    pairs = [("ddpo", "base"), ("b2", "base"), ("tree", "base"), ("b2", "ddpo"), ("tree", "b2")]
    head = "| trained on (positive rate on the base model) | " + " | ".join(_pair(a, b) for a, b in pairs) + " |"
    lines = [head, "|---|" + "---|" * len(pairs)]
    for reward, name in REWARD_NAMES.items():
        if reward not in set(df["reward"]):
            continue
        cells = [
            format_diff(_row(df, Check(file, "counting", a, b, metric, "", reward=reward), results)) for a, b in pairs
        ]
        lines.append(f"| {name} ({rates[reward]:.2f}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def study_tables(results: str | Path) -> dict[str, str]:
    """The study tables of the front page (≤ 12 rows each), counting's test prompts, 5 seeds, 512 paired
    images per model."""
    r = results
    ablation = [
        (_pair(a, b), "counting", a, b)
        for a, b in (
            ("ddpo", "base"),
            ("progressive", "base"),
            ("branch", "base"),
            ("b2", "base"),
            ("branch", "ddpo"),
            ("progressive", "ddpo"),
            ("b2", "branch"),
            ("b2", "progressive"),
        )
    ]
    compat = [
        (_pair(a, b, f" ({u.upper()})"), "counting", f"{a}@{u}" if a != "base" else a, f"{b}@{u}" if b != "base" else b)
        for u in ("ppo", "dpok", "grpo")
        for a, b in (("b2", "ddpo"), ("b2", "base"), ("ddpo", "base"))
    ]
    trees = [(_pair("b2", "base"), "counting", "b2", "base")] + [
        (_pair(t, b), "counting", t, b) for t in ("tree2", "tree2_flat", "tree3", "tree3_flat") for b in ("base", "b2")
    ]
    sparse = [(_pair(a, b), "counting", a, b) for a, b in (("ddpo", "base"), ("b2", "base"), ("b2", "ddpo"))]
    levers = [(_pair(a, "base"), "counting", a, "base") for a in ("ddpo", "b2", "tree")]
    levers += [(_pair(a, b), "counting", a, b) for a, b in (("b2", "ddpo"), ("tree", "ddpo"), ("tree", "b2"))]
    binary = [(_pair(a, "base"), "counting", a, "base") for a in ("ddpo", "grpo", "b2", "b2_signal", "tree")]
    binary += [(_pair(a, b), "counting", a, b) for a in ("b2_signal", "b2", "tree") for b in ("grpo", "ddpo")]
    binary += [(_pair("b2_signal", "b2"), "counting", "b2_signal", "b2")]
    flow_methods = ("flow_grpo", "mixgrpo", "tempflow")
    flow = [(_pair(a, "base"), "counting", a, "base") for a in (*flow_methods, "b2", "tree")]
    flow += [(_pair("b2", b), "counting", "b2", b) for b in flow_methods] + [
        (_pair("tree", "b2"), "counting", "tree", "b2")
    ]
    return {
        "ablation": diff_table(r, "ablations/strategy_comparisons.csv", ablation),
        "compat": diff_table(r, "compat/comparisons.csv", compat),
        "trees": diff_table(r, "trees/comparisons.csv", trees),
        "sparse": diff_table(r, "sparse/comparisons.csv", sparse),
        "sparse_levers": diff_table(r, "sparse_levers/comparisons.csv", levers),
        "sparse_axis": axis_table(r),
        "binary_study": diff_table(r, "binary_study/comparisons.csv", binary),
        "flow": diff_table(r, "flow_study/comparisons.csv", flow),
    }


#: the recipes as the front page describes them, with the estimator of notebook 10 that measures each one's B² stage
RECIPE_ROWS: tuple[tuple[str, str, str, str, str], ...] = (
    (
        'published (`recipe="paper"`)',
        "every step after the branch point (10 steps)",
        "all 1,024 latent dimensions",
        "PPO-clip on the best and worst branch of each group, rewards normalised per prompt",
        "b2_first",
    ),
    (
        'coarse (`recipe="coarse"`)',
        "the branch step only; the rest of the chain deterministic",
        "16 dimensions (a 2 × 2 lattice per latent channel); DDPO the same",
        "group-relative (z within the branch group), PPO-clip, KL to the base model",
        "b2_first_window1_grid2_grpo",
    ),
)


def recipe_table(results: str | Path) -> str:
    """The two estimator recipes side by side: what each changes for B², and B²'s stage gradient SNR at the base model
    (notebook 10, ``snr/snr.csv``: the estimator's signal over its noise across 40 independent stages, 95 %
    interval), the number the coarse recipe was chosen on."""
    snr = read_results_file(Path(results), "snr/snr.csv")
    snr = snr[(snr["steps"] == "interval") & snr["selection"]].set_index("estimator")
    lines = [
        "| recipe | B² trains | exploration noise on | B²'s update | B²'s stage gradient SNR at the base model |",
        "|---|---|---|---|---|",
    ]
    for name, trains, noise, update, estimator in RECIPE_ROWS:
        r = snr.loc[estimator]
        lines.append(
            f"| {name} | {trains} | {noise} | {update} | {r['snr']:+.3f} [{r['snr_low']:+.3f}, {r['snr_high']:+.3f}] |"
        )
    return "\n".join(lines)


def render_blocks(results: str | Path) -> dict[str, str]:
    """Every generated block of the front page, by marker name."""
    return {
        "scorecard": scorecard(results),
        "extensions": scorecard(results, EXTENSIONS, part="extension"),
        "recipe": recipe_table(results),
        "rule": RULE.format(kl=KL_FLOOR),
        "table1": table1(results),
        **study_tables(results),
    }


def _split(text: str, name: str) -> tuple[str, str, str] | None:
    start, end = (m.format(name=name) for m in _BLOCK)
    if start not in text or end not in text:
        return None
    head, rest = text.split(start, 1)
    body, tail = rest.split(end, 1)
    return head + start, body, end + tail


def update_readme(readme: str | Path, results: str | Path) -> list[str]:
    """Write every block between its markers in ``readme``; returns the names of blocks whose markers are missing."""
    readme = Path(readme)
    text = readme.read_text()
    missing = []
    for name, block in render_blocks(results).items():
        parts = _split(text, name)
        if parts is None:
            missing.append(name)
            continue
        text = f"{parts[0]}\n{block}\n{parts[2]}"
    readme.write_text(fill_verdicts(text, verdicts(results)))
    return missing


def check_readme(readme: str | Path, results: str | Path) -> list[str]:
    """The blocks whose text in ``readme`` differs from a fresh render from ``results`` (or whose markers are
    missing), each with the fix; empty when the page is true to the files."""
    text = Path(readme).read_text()
    problems = []
    for name, block in render_blocks(results).items():
        parts = _split(text, name)
        if parts is None:
            problems.append(f"{name}: markers {_BLOCK[0].format(name=name)} … missing in {readme}")
        elif parts[1].strip() != block.strip():
            problems.append(f"{name}: README differs from {results}; rerun notebooks/08_figures.ipynb to rewrite it")
    return problems + verdict_problems(text, verdicts(results), str(readme))
