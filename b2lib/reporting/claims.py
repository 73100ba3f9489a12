"""The claims the front page scores, as data, and the one rule that gives each its verdict.

Why a module of its own: a verdict ("reproduced", "partly", ...) is stated in one place only, the scorecard that
:mod:`b2lib.reporting.frontpage` renders from this module; every other page that names a verdict carries a marker that a
test compares with :func:`verdicts`. The claims come in two parts: *the paper's claims*, in the paper's own words, and
*beyond the paper*, this project's own extensions (a binary reward, flow models, trees, binding), which get the same
rule under other words ("shown" instead of "reproduced").

The rule (:func:`claim_status`), for a claim of ``k`` paired checks at 95 %:

- **reproduced** when every check's interval excludes 0 in the claimed direction;
- **partly** when some do and at least one of those still does after a Bonferroni correction for the ``k`` checks
  (its ``z`` from the interval's normal approximation, ``diff / ((high − low) / 3.92)``, beyond
  ``Φ⁻¹(1 − 0.025 / k)``): one edge hit among seven checks is what chance gives about one time in six, and does not
  count;
- **inconclusive** when the checks fall short of *partly* and the runs' health shows they did not learn: the method's
  mean approx KL per stage below :data:`KL_FLOOR`, or its train-reward rise over training not resolved above 0
  (:mod:`b2lib.evaluation.health`), unless a sign control of the same runs resolves the trained reward's signal above
  0 (:class:`Health`). A budget that moved nothing neither supports nor refutes a claim;
- **not reproduced** otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Sequence

import pandas as pd

__all__ = [
    "KL_FLOOR",
    "STATUS_WORDS",
    "Check",
    "Health",
    "Claim",
    "PAPER_CLAIMS",
    "EXTENSIONS",
    "NAMES",
    "pair_label",
    "supports",
    "strong_support",
    "claim_status",
    "RULE",
]

#: mean approx KL per stage below which a run did not move its policy (a moving B² run of the main job logs ~1e-6)
KL_FLOOR = 1e-8
#: the words of the four statuses, per part of the scorecard
STATUS_WORDS: dict[str, dict[str, str]] = {
    "paper": {
        "reproduced": "reproduced",
        "partly": "partly",
        "not reproduced": "not reproduced",
        "inconclusive": "inconclusive",
    },
    "extension": {
        "reproduced": "shown",
        "partly": "partly",
        "not reproduced": "not shown",
        "inconclusive": "inconclusive",
    },
}

#: the rule in the front page's words (README's ``rule`` block): stated here, next to :func:`claim_status`, once
RULE = (
    "**The rule** (`b2lib.reporting.claims`): *reproduced* when every check is resolved in the claimed direction; "
    "*partly* when some are and at least one of them survives a Bonferroni correction for the claim's number of "
    "checks (one edge hit among seven is what chance gives about one time in six); *inconclusive* when short of that "
    "and the runs' health shows they did not learn (approx KL below {kl:.0e} per stage, or no resolved rise of the "
    "train reward); *not reproduced* otherwise. Beyond the paper the same rule says *shown* for *reproduced*."
)

#: how the front page names the run folders' methods
NAMES: dict[str, str] = {
    "b2": "B²",
    "ddpo": "DDPO",
    "base": "base",
    "progressive": "progressive only",
    "branch": "branch only",
    "tree2": "tree, depth 2",
    "tree2_flat": "tree, depth 2, flat",
    "tree3": "tree, depth 3",
    "tree3_flat": "tree, depth 3, flat",
    "flow_grpo": "Flow-GRPO",
    "mixgrpo": "MixGRPO-style",
    "tempflow": "TempFlow-style",
    "tree": "tree, depth 2",
    "grpo": "GRPO-style",
    "b2_signal": "B², signal-chosen branch",
}


def pair_label(a: str, b: str, suffix: str = "") -> str:
    """``B² − DDPO``: a comparison in the front page's names."""
    return f"{NAMES.get(a, a)} − {NAMES.get(b, b)}{suffix}"


@dataclass(frozen=True)
class Check:
    """One paired comparison ``a − b`` on ``metric`` in a comparisons file under ``results/``; ``sign`` +1 when the
    claim is that ``a`` is higher, −1 when it is lower."""

    file: str
    template: str
    a: str
    b: str
    metric: str
    label: str
    split: str = "test"
    sign: int = 1
    reward: str = ""  # files with one row per training reward (notebook 18's axis): which one


@dataclass(frozen=True)
class Health:
    """The training health of the runs behind a claim: one row of a health table
    (:func:`b2lib.evaluation.health.health_table`) under ``results/``, found by ``method`` and, in tables with one row
    per training reward, ``reward``. ``sign_control``: the sign-control table of the same runs
    (:func:`b2lib.evaluation.comparisons.sign_control`, one row per method and metric), whose signal on the trained
    reward, resolved above 0, shows learning on its own: it tests directly that the update follows the reward's sign,
    where a train-reward trend can be confounded (B²'s branch point moving towards x_T changes its samples' reward for
    reasons other than learning). ``sign_metric``: that table's row of the trained reward (``reward``, CLIPScore, by
    default; ``judge_all_ok`` for runs trained on the judge's binary verdict)."""

    file: str
    method: str
    reward: str = ""
    sign_control: str = ""
    sign_metric: str = "reward"


@dataclass(frozen=True)
class Claim:
    """One line of the scorecard: its key (what other pages' verdict markers name), the claim in words, its checks,
    the notebooks that measured them, the runs' health (empty: no health table, never inconclusive) and, optionally,
    checks whose numbers are shown but not scored (``instead``, under ``instead_text``)."""

    key: str
    claim: str
    checks: tuple[Check, ...]
    notebook: str
    health: tuple[Health, ...] = field(default_factory=tuple)
    instead: tuple[Check, ...] = field(default_factory=tuple)
    instead_text: str = ""


def _t(template: str, a: str, b: str, metric: str, label: str, file: str = "templates/comparisons.csv") -> Check:
    return Check(file, template, a, b, metric, label)


_TEMPLATES = ("counting", "binding", "relation")
_ABLATION = "ablations/strategy_comparisons.csv"


def _ablation(pairs: Sequence[tuple[str, str]]) -> tuple[Check, ...]:
    return tuple(Check(_ABLATION, "counting", a, b, "judge_all_ok", pair_label(a, b)) for a, b in pairs)


#: the paper's claims, in the paper's words and the order of its abstract
PAPER_CLAIMS: tuple[Claim, ...] = (
    Claim(
        "end_reward",
        "B² learns against a reward given only at the end of the denoising chain, beyond DDPO (trained reward, "
        "CLIPScore)",
        tuple(_t(t, "b2", "ddpo", "reward", f"{t}, B² − DDPO") for t in _TEMPLATES),
        "04_templates",
    ),
    Claim(
        "alignment",
        "B² improves prompt-image alignment over the base model (Table 1)",
        tuple(_t(t, "b2", "base", "judge_all_ok", f"{t}, judge") for t in _TEMPLATES),
        "04_templates",
    ),
    Claim(
        "beats_ddpo",
        "B² beats DDPO (equal UNet work; equal images)",
        (
            _t("counting", "b2", "ddpo", "judge_all_ok", "equal work, judge"),
            _t("counting", "b2", "ddpo", "judge_all_ok", "equal images, judge", "trees_images/comparisons.csv"),
        ),
        "03_train, 12_trees",
    ),
    Claim(
        "branch",
        "Branch-based sampling contributes (ablation)",
        _ablation((("branch", "ddpo"), ("b2", "progressive"))),
        "06_ablations",
    ),
    Claim(
        "progressive",
        "Backward progressive training contributes (ablation)",
        _ablation((("progressive", "ddpo"), ("b2", "branch"))),
        "06_ablations",
    ),
    Claim(
        "updates",
        "B² works with existing RL updates (PPO, DPOK, GRPO)",
        tuple(
            Check(
                "compat/comparisons.csv",
                "counting",
                f"b2@{u}",
                f"ddpo@{u}",
                "judge_all_ok",
                pair_label("b2", "ddpo", f" ({u.upper()})"),
            )
            for u in ("ppo", "dpok", "grpo")
        ),
        "07_compatibility",
    ),
    Claim(
        "generalises",
        "B² generalises to prompts unseen in training (trained reward on held-out test prompts)",
        tuple(_t(t, "b2", "base", "reward", f"{t}, CLIPScore") for t in _TEMPLATES),
        "04_templates",
    ),
)

_BINARY = "binary_study/comparisons.csv"
_FLOW = "flow_study/comparisons.csv"

#: this project's own extensions beyond the paper
EXTENSIONS: tuple[Claim, ...] = (
    Claim(
        "binary",
        "B² learns from a binary reward (sparse in value: the judge's pass/fail), beyond group-relative baselines at "
        "equal UNet work (its branch point chosen by the signal; each baseline at its searched group size and lr; runs "
        "as long as the base model's census asks)",
        tuple(
            Check(_BINARY, "counting", "b2_signal", b, "judge_all_ok", pair_label("b2_signal", b))
            for b in ("base", "grpo", "ddpo")
        ),
        "20_binary_study",
        health=(
            Health(
                "binary_study/health.csv",
                "b2_signal",
                sign_control="binary_study/sign_control.csv",
                sign_metric="judge_all_ok",
            ),
        ),
        instead=tuple(
            Check(_BINARY, "counting", a, "base", "judge_all_ok", pair_label(a, "base")) for a in ("b2", "tree")
        ),
        instead_text="the other B² arms",
    ),
    Claim(
        "flow",
        "B² beats the Flow-GRPO group baseline on a flow-matching model (the flow world, a tiny SD3)",
        (
            Check(_FLOW, "counting", "b2", "flow_grpo", "judge_all_ok", "B² − Flow-GRPO, judge"),
            Check(_FLOW, "counting", "b2", "flow_grpo", "reward", "B² − Flow-GRPO, CLIPScore"),
            Check(_FLOW, "counting", "b2", "base", "judge_all_ok", "B² − base, judge"),
        ),
        "15_flow",
        health=(Health("flow_study/health.csv", "b2", sign_control="flow_study/sign_control.csv"),),
    ),
    Claim(
        "trees",
        "Branch trees (depth 2 and 3) improve alignment over the base model at B²'s UNet work",
        tuple(
            Check("trees/comparisons.csv", "counting", t, "base", "judge_all_ok", pair_label(t, "base"))
            for t in (
                "tree2",
                "tree3",
            )
        ),
        "12_trees",
        instead=tuple(
            Check("trees/comparisons.csv", "counting", t, "b2", "judge_all_ok", pair_label(t, "b2"))
            for t in ("tree2", "tree3")
        ),
        instead_text="against B²",
    ),
    Claim(
        "binding",
        "A reward gain is an alignment gain (binding: two colours bound to two objects)",
        (_t("binding", "b2", "base", "judge_all_ok", "judge"),),
        "04_templates",
        instead=(
            _t("binding", "b2", "base", "reward", "CLIPScore"),
            *(
                Check(
                    "templates/colour_mixing_comparisons.csv",
                    t,
                    "b2",
                    "base",
                    "asked_colours_mixed",
                    f"{t}: images with the two asked colours blended in one object",
                )
                for t in ("binding", "relation")
            ),
        ),
        instead_text="what the images show instead",
    ),
)


def supports(row: pd.Series, sign: int) -> bool:
    """The check's 95 % interval excludes 0 in the claimed direction."""
    return bool(row["resolved"]) and (row["diff"] * sign > 0)


def strong_support(row: pd.Series, sign: int, k: int) -> bool:
    """The check still supports the claim after a Bonferroni correction for ``k`` checks: its ``z`` (from the 95 %
    interval's normal approximation) beyond ``Φ⁻¹(1 − 0.025 / k)`` in the claimed direction."""
    se = (row["high"] - row["low"]) / (2 * NormalDist().inv_cdf(0.975))
    if not se > 0:
        return supports(row, sign)
    return supports(row, sign) and sign * row["diff"] / se > NormalDist().inv_cdf(1 - 0.025 / k)


def claim_status(rows: Sequence[pd.Series], signs: Sequence[int], learned: bool | None = None) -> str:
    """The rule of this module's docstring. ``learned``: whether the runs' health shows learning (None: no health
    table, so never inconclusive)."""
    k = len(rows)
    hits = [supports(r, s) for r, s in zip(rows, signs)]
    if k and all(hits):
        return "reproduced"
    if any(strong_support(r, s, k) for r, s in zip(rows, signs)):
        return "partly"
    if learned is False:
        return "inconclusive"
    return "not reproduced"


def learned(health: pd.Series) -> bool:
    """One health row shows learning: approx KL per stage at or above :data:`KL_FLOOR` and the train reward's rise
    over training resolved above 0."""
    return bool(health["approx_kl"] >= KL_FLOOR and health["rise_low"] > 0)
