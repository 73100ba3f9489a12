"""One look for every figure: the method -> colour mapping, legends outside the data, axis labels with units.

Why a module of its own: every figure of the library (:mod:`b2lib.reporting.plots`, :mod:`b2lib.studies.sparsity`,
:mod:`b2lib.studies.levers`) draws the same methods, and a reader compares them across figures. A method therefore has
one colour everywhere, decided here and nowhere else, and a legend never covers a curve or a point.

The colour rule (:func:`method_key`): a name is looked up as it is (``tree2_flat``); otherwise by its *method part*,
the text before the first ``@`` (an update or dtype variant: ``b2@ppo``, ``b2@bf16``), `` · `` or space (``b2 ·
fp32``), or ``_seed``; a name that is still unknown gets a fixed colour from a spare palette chosen by a hash of the
name, so it too keeps its colour from figure to figure. Variants that share a method's colour in one figure are told
apart by their dash pattern (:func:`method_dashes`).
"""

from __future__ import annotations

import re
import textwrap
import zlib
from typing import Iterable, Sequence

import matplotlib.pyplot as plt
import seaborn as sns
from matplotlib.lines import Line2D

__all__ = [
    "METHOD_COLOURS",
    "METRIC_LABELS",
    "STAGE_LABELS",
    "INTERVAL",
    "SD_BAND",
    "method_key",
    "method_colour",
    "method_palette",
    "method_order",
    "method_dashes",
    "method_handles",
    "legend_outside",
    "metric_label",
    "value_ticks",
    "wrap",
    "set_style",
]

#: Every method's colour, distinct across all figures (Okabe-Ito's colour-blind-safe colours, then Paul Tol's muted
#: ones): the base model grey, DDPO orange, B² blue, its ablation arms pink (progressive) and green (branch), the
#: trees purples, wine, sand, brown and teal, the flow-GRPO family vermillion, olive and indigo, a GRPO-style group
#: rose and B² with a signal-chosen branch point sky blue (B²'s family).
METHOD_COLOURS: dict[str, str] = {
    "base": "#7f7f7f",
    "ddpo": "#e69f00",
    "b2": "#0072b2",
    "progressive": "#cc79a7",
    "branch": "#009e73",
    "tree": "#882255",
    "tree2": "#aa4499",
    "tree2_flat": "#ddcc77",
    "tree3": "#661100",
    "tree3_flat": "#44aa99",
    "flow_grpo": "#d55e00",
    "mixgrpo": "#999933",
    "tempflow": "#332288",
    "grpo": "#cc6677",
    "b2_signal": "#56b4e9",
}

#: Colours for names outside :data:`METHOD_COLOURS`, picked by a hash of the name (stable across runs and figures).
_SPARE = ("#117733", "#88ccee", "#aa7744", "#6699cc", "#117799", "#bb5566", "#555555")

#: How every figure names an interval: the paired two-level bootstrap of :mod:`b2lib.evaluation.comparisons`.
INTERVAL = "95 % interval"

#: How every figure names a band or bar of one standard deviation over seeds.
SD_BAND = "± 1 s.d. over seeds"

#: Dash patterns for the 2nd, 3rd, ... variant of one method in a figure (the first is solid).
_DASHES = ((5, 2), (1.5, 1.5), (6, 2, 1.5, 2), (3, 1))

#: Axis labels of the evaluation columns the figures draw (``eval.csv``: scores of a model's test images).
METRIC_LABELS: dict[str, str] = {
    "reward_mean": "CLIPScore (mean)",
    "judge_all_ok": "judge: all correct (share of images)",
    "judge_count_ok": "judge: count correct (share)",
    "judge_colour_ok": "judge: colours correct (share)",
    "judge_shape_ok": "judge: shapes correct (share)",
    "bertscore_mean": "BERTScore (mean)",
    "clip_diversity": "CLIP diversity (mean pairwise cosine distance)",
    "pixel_diversity": "pixel diversity (mean pairwise RMS distance)",
}

#: Axis labels of the per-stage columns (``metrics.csv``: one row per training stage), where they differ.
STAGE_LABELS: dict[str, str] = {
    "reward_mean": "training reward (stage mean)",
    "judge_all_ok": "judge: all correct (stage share)",
    "split_step": "trained steps s (chain of 20)",
    "approx_kl": "approx. KL",
    "clipfrac": "clip fraction (share)",
    "grad_norm": "gradient norm",
    "rel_update": "relative update size",
    "kept": "samples kept per stage",
}


def method_key(name: object) -> str:
    """The method a name stands for (see the module docstring): ``"b2@ppo"`` -> ``"b2"``, ``"b2 · fp32"`` ->
    ``"b2"``, ``"tree2_flat"`` -> ``"tree2_flat"``; an unknown name is returned as it is."""
    text = str(name).strip()
    if text in METHOD_COLOURS:
        return text
    head = re.split(r"@| · | |_seed", text, maxsplit=1)[0]
    return head if head in METHOD_COLOURS else text


def method_colour(name: object) -> str:
    """The colour of ``name``'s method (:func:`method_key`); a stable spare colour for a name no rule knows."""
    key = method_key(name)
    if key in METHOD_COLOURS:
        return METHOD_COLOURS[key]
    return _SPARE[zlib.crc32(key.encode()) % len(_SPARE)]


def method_order(names: Iterable[object]) -> list:
    """``names`` without repeats, known methods in :data:`METHOD_COLOURS`' order (base first), variants next to their
    method, unknown names last in their order of appearance: every legend lists the methods the same way."""
    unique = list(dict.fromkeys(names))
    rank = {m: i for i, m in enumerate(METHOD_COLOURS)}
    return sorted(unique, key=lambda n: (rank.get(method_key(n), len(rank)), unique.index(n)))


def method_palette(names: Iterable[object]) -> dict:
    """``{name: colour}`` for seaborn's ``palette`` or a loop over methods."""
    return {n: method_colour(n) for n in dict.fromkeys(names)}


def method_dashes(names: Iterable[object]) -> dict:
    """``{name: dashes}``: solid (``""``) for the first name of each colour, a distinct dash pattern for each further
    name of the same colour (``b2@ppo`` solid, ``b2@grpo`` dashed), so variants of one method stay apart."""
    seen: dict[str, int] = {}
    out = {}
    for n in method_order(names):
        k = seen.get(method_colour(n), 0)
        seen[method_colour(n)] = k + 1
        out[n] = "" if k == 0 else _DASHES[(k - 1) % len(_DASHES)]
    return out


def method_handles(names: Iterable[object], marker: str | None = None, labels: Sequence[str] | None = None) -> list:
    """Legend entries (a short line in the method's colour and dash) for ``names`` in :func:`method_order`."""
    order = method_order(names)
    dashes = method_dashes(order)
    labels = list(labels) if labels is not None else [str(n) for n in order]
    handles = []
    for n, label in zip(order, labels):
        line = Line2D([], [], color=method_colour(n), marker=marker, ms=4, lw=2, label=label)
        if dashes[n]:
            line.set_dashes(dashes[n])
        handles.append(line)
    return handles


#: how a legend names a method whose label is the bare run-folder name (variants like ``b2@ppo`` stay as they are)
DISPLAY_NAMES: dict[str, str] = {
    "b2": "B²",
    "ddpo": "DDPO",
    "flow_grpo": "Flow-GRPO",
    "mixgrpo": "MixGRPO-style",
    "tempflow": "TempFlow-style",
    "grpo": "GRPO-style",
    "b2_signal": "B², signal-chosen branch",
    "progressive": "progressive only",
    "branch": "branch only",
    "tree": "tree, depth 2",
    "tree2": "tree, depth 2",
    "tree2_flat": "tree, depth 2, flat",
    "tree3": "tree, depth 3",
    "tree3_flat": "tree, depth 3, flat",
}


def legend_outside(target, where: str = "right", handles=None, labels=None, title: str | None = None, ncol: int = 1):
    """A legend outside every axes of the figure: to the right of it (``where="right"``) or below it (``"below"``).
    ``target`` is a figure or one of its axes; without ``handles`` the axes' own entries are taken (and legends
    drawn inside the axes removed), so a figure function can draw with seaborn and move its legend afterwards.
    Call it after ``tight_layout``: the legend sits beyond the figure's edge and ``savefig(bbox_inches="tight")``
    (:func:`b2lib.reporting.plots.save_figure`, and the notebook's inline display) widens the image to hold it."""
    fig = target if isinstance(target, plt.Figure) else target.figure
    axes = [target] if not isinstance(target, plt.Figure) else fig.axes
    if handles is None:
        handles, labels = [], []
        for ax in axes:
            h, lab = ax.get_legend_handles_labels()
            for hi, li in zip(h, lab):
                if li not in labels and not li.startswith("_"):
                    handles.append(hi)
                    labels.append(li)
    for ax in fig.axes:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if labels is None:
        labels = [h.get_label() for h in handles]
    labels = [DISPLAY_NAMES.get(str(label), label) for label in labels]
    if where == "right":
        anchor, loc = (1.0, 0.5), "center left"
    elif where == "below":
        anchor, loc = (0.5, 0.0), "upper center"
        ncol = max(ncol, min(len(handles), 4))
    else:
        raise ValueError(f"where must be 'right' or 'below'; got {where!r}")
    return fig.legend(
        handles, labels, loc=loc, bbox_to_anchor=anchor, frameon=False, fontsize=8, title=title, title_fontsize=8,
        ncol=ncol,
    )  # fmt: skip


def metric_label(column: str, per_stage: bool = False) -> str:
    """The axis label of a column: of the per-stage log (``per_stage``, :data:`STAGE_LABELS`) or of the evaluation
    (:data:`METRIC_LABELS`), else the column with spaces."""
    if per_stage and column in STAGE_LABELS:
        return STAGE_LABELS[column]
    return METRIC_LABELS.get(column, column.replace("_", " "))


def value_ticks(ax, values: Iterable[float], axis: str = "x") -> None:
    """Tick exactly the measured ``values`` (no 7.5 between 5 and 10), as integers where every value is one."""
    vals = sorted({float(v) for v in values})
    integral = all(v.is_integer() for v in vals)
    labels = [str(int(v)) if integral else f"{v:g}" for v in vals]
    (ax.set_xticks if axis == "x" else ax.set_yticks)(vals, labels)
    (ax.xaxis if axis == "x" else ax.yaxis).set_minor_locator(plt.NullLocator())


def wrap(text: object, width: int) -> str:
    """``text`` broken into lines of at most ``width`` characters (titles that would run into their neighbours)."""
    return textwrap.fill(str(text), width=width, break_long_words=False)


def set_style() -> None:
    """Seaborn's white grid at notebook scale, the one theme of every figure."""
    sns.set_theme(
        style="whitegrid",
        context="notebook",
        rc={"axes.labelsize": 10, "axes.titlesize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9},
    )
