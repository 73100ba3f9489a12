"""The study tables: one declared format per file, shared by the notebook that writes it and the report that reads it.

Why: the README's table (:func:`b2lib.reporting.summary_table.readme_table`) is rebuilt from these files alone, so a
column renamed in a notebook must fail where it is written, not silently drop a README row. :func:`write_table` checks a
table against its format before writing; :func:`read_table` checks it again after reading (files from older runs
included).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

__all__ = [
    "TableFormat",
    "TABLES",
    "TableFormatError",
    "write_table",
    "read_table",
    "read_results_file",
    "table_path",
]

_MEAN_STD = ("reward_mean_mean", "reward_mean_std", "judge_all_ok_mean", "judge_all_ok_std", "n")
#: paired comparisons (b2lib.evaluation.comparisons.paired_comparison, one row per template, metric, pair and split)
_COMPARISONS = (
    "template",
    "metric",
    "a",
    "b",
    "mean_a",
    "mean_b",
    "diff",
    "low",
    "high",
    "seeds_a",
    "images",
    "verdict",
    "split",
)
#: the sign control (b2lib.evaluation.comparisons.sign_control)
_SIGN_CONTROL = ("method", "metric", "seeds", "images") + tuple(
    f"{k}{s}" for k in ("gain", "signal", "drift") for s in ("", "_low", "_high")
)


class TableFormatError(ValueError):
    """A study table that does not have its declared columns."""


@dataclass(frozen=True)
class TableFormat:
    """Where a table lives (``results/<study>/<file>``), the index it is written with, and the columns readers need."""

    study: str
    file: str
    columns: tuple[str, ...]
    index: tuple[str, ...] = ()  # written as the first CSV columns (a pandas index), read back as the index
    header_rows: int = 1  # 2: a two-level column header
    writer: str = ""  # the notebook (or function) that writes it


TABLES: dict[str, TableFormat] = {
    "tuning_sweep": TableFormat(
        "tuning", "sweep.csv", ("method", "seed", "train_reward", "base_train_reward", "gain"), writer="02_tuning"
    ),
    "main_comparisons": TableFormat(
        "main",
        "comparisons.csv",
        _COMPARISONS,
        writer="03_train",
    ),
    "main_paper_comparisons": TableFormat("main_paper", "comparisons.csv", _COMPARISONS, writer="03_train"),
    "coarse120_comparisons": TableFormat("coarse120", "comparisons.csv", _COMPARISONS, writer="03_train"),
    "compute_ddpo_comparisons": TableFormat("compute_ddpo", "comparisons.csv", _COMPARISONS, writer="03_train"),
    # notebook 03's reference cell: this run's DDPO against B²'s seeds in results/coarse120 (reference_run)
    "compute_vs_coarse120": TableFormat("compute_ddpo", "vs_coarse120.csv", _COMPARISONS, writer="03_train"),
    # DDPO at B²'s images (120 stages, the paper's equal-sample view), and against B²'s seeds in results/coarse120
    "images_ddpo_comparisons": TableFormat("images_ddpo", "comparisons.csv", _COMPARISONS, writer="03_train"),
    "images_vs_coarse120": TableFormat("images_ddpo", "vs_coarse120.csv", _COMPARISONS, writer="03_train"),
    "sparse_comparisons": TableFormat(
        "sparse",
        "comparisons.csv",
        _COMPARISONS,
        writer="11_sparse_reward",
    ),
    "coarse_comparisons": TableFormat(
        "coarse",
        "comparisons.csv",
        _COMPARISONS,
        writer="03_train",
    ),
    "table1_comparisons": TableFormat(
        "templates",
        "comparisons.csv",
        _COMPARISONS,
        writer="04_templates",
    ),
    "strategy_comparisons": TableFormat(
        "ablations",
        "strategy_comparisons.csv",
        _COMPARISONS,
        writer="06_ablations",
    ),
    "trees_comparisons": TableFormat(
        "trees",
        "comparisons.csv",
        _COMPARISONS,
        writer="12_trees",
    ),
    "trees_images_comparisons": TableFormat(  # notebook 12 with budget="images", run_name="trees_images"
        "trees_images",
        "comparisons.csv",
        _COMPARISONS,
        writer="12_trees",
    ),
    # notebook 13: B² and DDPO in bf16 against the committed fp32 runs, and the base model in both dtypes
    "bf16_comparisons": TableFormat("bf16", "comparisons.csv", _COMPARISONS, writer="13_bf16"),
    # notebook 15: the flow world, B² against the flow-GRPO family
    "flow_comparisons": TableFormat("flow_study", "comparisons.csv", _COMPARISONS, writer="15_flow"),
    # notebook 20: the binary-reward study, B²'s arms against the searched group-relative baselines
    "binary_comparisons": TableFormat("binary_study", "comparisons.csv", _COMPARISONS, writer="20_binary_study"),
    # notebook 17: each method at its chosen binary-reward levers (search: results/sparse_levers/search.csv)
    "sparse_levers_comparisons": TableFormat(
        "sparse_levers", "comparisons.csv", _COMPARISONS, writer="17_sparse_levers"
    ),
    "lever_search": TableFormat(
        "sparse_levers", "search.csv", ("method", "point", "seed", "gain", "clip_gain"), writer="17_sparse_levers"
    ),
    # notebook 18: DDPO, B² and a tree trained on each reward of the sparsity axis (results/sparse_axis/<reward>/)
    "sparse_axis_comparisons": TableFormat(
        "sparse_axis", "comparisons.csv", _COMPARISONS + ("reward",), writer="18_sparse_axis"
    ),
    "sparse_axis_gain": TableFormat(
        "sparse_axis",
        "gain.csv",
        ("reward", "positive_rate", "method", "metric", "diff", "low", "high"),
        writer="18_sparse_axis",
    ),
    "main_table": TableFormat("templates", "main_table.csv", _MEAN_STD, ("template", "method"), writer="04_templates"),
    "generalisation": TableFormat(
        "templates", "generalisation.csv", (), ("template", "method"), header_rows=2, writer="04_templates"
    ),
    "speed": TableFormat(
        "performance",
        "speed.csv",
        ("measurement", "key", "min", "median", "max", "goal", "met", "bound"),
        writer="05_performance",
    ),
    "strategies": TableFormat("ablations", "strategies.csv", _MEAN_STD, ("method",), writer="06_ablations"),
    "sensitivity": TableFormat(
        "ablations", "sensitivity.csv", ("factor", "value", "judge_all_ok"), writer="06_ablations"
    ),
    "sensitivity_comparisons": TableFormat(
        "ablations", "sensitivity_comparisons.csv", ("factor", "value", *_COMPARISONS), writer="06_ablations"
    ),
    # notebook 06 at the former preset (one seed per arm and point), kept for its sensitivity grid
    "sensitivity_paper": TableFormat(
        "ablations_paper", "sensitivity.csv", ("factor", "value", "judge_all_ok"), writer="06_ablations"
    ),
    "compat": TableFormat("compat", "compat.csv", _MEAN_STD, ("algorithm", "method"), writer="07_compatibility"),
    "compat_comparisons": TableFormat("compat", "comparisons.csv", _COMPARISONS, writer="07_compatibility"),
    # a cell of notebook 07 trained there and in another study with the same settings and seeds: run-to-run noise
    "compat_replicates": TableFormat("compat", "replicates.csv", _COMPARISONS, writer="07_compatibility"),
    # notebook 07 at the former preset (one seed)
    "compat_paper": TableFormat(
        "compat_paper", "compat.csv", _MEAN_STD, ("algorithm", "method"), writer="07_compatibility"
    ),
    "sign_control": TableFormat(
        "signal",
        "sign_control.csv",
        _SIGN_CONTROL,
        writer="09_learning_vs_drift",
    ),
    # notebook 09 run with the coarse recipe (run_name signal_coarse): the same table in a folder of its own
    "coarse_sign_control": TableFormat(
        "signal_coarse",
        "sign_control.csv",
        _SIGN_CONTROL,
        writer="09_learning_vs_drift",
    ),
    "signal_runs": TableFormat(
        "signal", "runs.csv", ("study", "run", "method", "seed", "device", "gain"), writer="09_learning_vs_drift"
    ),
    "snr": TableFormat(
        "snr",
        "snr.csv",
        ("estimator", "steps", "n_steps", "selection", "draws", "images", "snr", "snr_low", "snr_high", "reward"),
        writer="10_gradient_snr",
    ),
}


def _format(name: str) -> TableFormat:
    if name not in TABLES:
        raise KeyError(f"Unknown table {name!r}: declared tables are {sorted(TABLES)} (b2lib.utils.tables.TABLES).")
    return TABLES[name]


def _check(df: pd.DataFrame, fmt: TableFormat, name: str, where: str) -> None:
    have = set(df.columns.get_level_values(0)) | set(n for n in df.index.names if n)
    missing = [c for c in fmt.columns + fmt.index if c not in have]
    if missing:
        raise TableFormatError(
            f"Table {name!r} ({where}) lacks its declared column(s) {missing}; see "
            f"b2lib.utils.tables.TABLES[{name!r}] (written by {fmt.writer or 'its notebook'})."
        )


def table_path(folder: str | Path, name: str) -> Path:
    """The file of table ``name`` inside a study folder (``results/<study>`` or a smoke run's temporary folder)."""
    return Path(folder) / _format(name).file


def write_table(df: pd.DataFrame, folder: str | Path, name: str) -> Path:
    """Check ``df`` against its declared format and write it to ``folder``; returns the path."""
    fmt = _format(name)
    _check(df, fmt, name, "being written")
    if fmt.index and list(df.index.names) != list(fmt.index):
        raise TableFormatError(f"Table {name!r} must be indexed by {list(fmt.index)}, got {list(df.index.names)}.")
    path = table_path(folder, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=bool(fmt.index))
    return path


def read_table(results: str | Path, name: str) -> pd.DataFrame | None:
    """Table ``name`` from ``results/<study>/<file>``, indexed as declared; None if that study has not run."""
    fmt = _format(name)
    path = Path(results) / fmt.study / fmt.file
    if not path.exists():
        return None
    return _read_declared(path, fmt, name)


def _read_declared(path: Path, fmt: TableFormat, name: str) -> pd.DataFrame:
    header = list(range(fmt.header_rows)) if fmt.header_rows > 1 else 0
    index_col = list(range(len(fmt.index))) if fmt.index else None
    df = pd.read_csv(path, header=header, index_col=index_col)
    _check(df, fmt, name, str(path))
    return df


def read_results_file(results: str | Path, file: str) -> pd.DataFrame:
    """``results/<file>`` as a flat table (no index), for readers that take any result file by its path, the front
    page's among them (:func:`read_table` reads a declared table by its name); a missing file names the fix."""
    path = Path(results) / file
    if not path.exists():
        raise FileNotFoundError(f"results/{file} is missing: run the notebook that writes it (docs/notebooks.md)")
    return pd.read_csv(path)
