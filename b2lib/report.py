"""Reading finished runs back from ``results/`` and summarising them: the tables and figures of the notebooks, and
the README's "paper result -> notebook -> our number" table, all rebuilt from files alone (no training).

A *run folder* is what :func:`b2lib.experiment.run_experiment` writes: ``summary.json``, ``eval.csv`` (one row per
model and evaluation split), ``metrics.csv`` (one row per method, seed and stage), ``samples.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .tables import read_table

__all__ = [
    "reward_trend",
    "health_summary",
    "completed_runs",
    "collect",
    "trained_algorithms",
    "load_eval_images",
    "paired_comparison",
    "paired_comparisons",
    "reference_pairs",
    "combine_runs",
    "combine_metrics",
    "run_cost",
    "sign_control",
    "run_table",
    "EVAL_IMAGE_METRICS",
    "generalisation_rows",
    "mean_std",
    "format_mean_std",
    "load_samples",
    "METRIC_LABELS",
    "sample_grid_from_runs",
]

#: evaluation columns shown in tables, with readable names
METRIC_LABELS = {
    "reward_mean": "CLIPScore",
    "bertscore_mean": "BERTScore",
    "judge_all_ok": "judge: aligned",
    "clip_diversity": "diversity (CLIP)",
    "pixel_diversity": "diversity (pixel)",
}


#: per-image columns of ``eval_images.csv`` that the paired comparison reports (the judge column is 0/1)
EVAL_IMAGE_METRICS = {"reward": "CLIPScore", "bertscore": "BERTScore", "judge_all_ok": "judge: aligned"}


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
    """Every run's ``eval_images.csv`` under ``roots`` (see :data:`b2lib.experiment.EVAL_IMAGE_COLUMNS`), with ``run``
    and ``template`` columns. The base model's rows of each template are kept once (they are identical per run)."""
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


def _score_matrix(df: pd.DataFrame, metric: str) -> tuple:
    """``(seeds, images)`` scores of one method and the prompt of each image (images in index order)."""
    wide = df.pivot_table(index="seed", columns="image", values=metric, aggfunc="first", dropna=False)
    prompts = df.drop_duplicates("image").set_index("image").loc[wide.columns, "prompt"].to_numpy()
    return wide.to_numpy(dtype=float), prompts


def paired_comparison(
    images: pd.DataFrame,
    split: str = "test",
    metrics: Sequence[str] = tuple(EVAL_IMAGE_METRICS),
    pairs: Sequence[tuple[str, str]] = (("ddpo", "base"), ("b2", "base"), ("b2", "ddpo")),
    draws: int = 4000,
) -> pd.DataFrame:
    """Per template, metric and pair ``(a, b)``: the means of ``a`` and ``b`` (over seeds and images), ``a - b`` with
    its 95 % two-level bootstrap interval (:func:`b2lib.stats.bootstrap_difference`: seeds of each side resampled
    independently, prompts jointly), the number of seeds and images per side, and the README verdict."""
    from .stats import bootstrap_difference, verdict

    df = images[images["split"] == split]
    df = df.assign(seed=df["seed"].fillna(-1))
    rows = []
    for template, t in df.groupby("template", sort=False):
        for metric in metrics:
            if metric not in t or t[metric].isna().all():
                continue
            for a, b in pairs:
                ta, tb = t[t["method"] == a], t[t["method"] == b]
                if ta.empty or tb.empty:
                    continue
                sa, prompts = _score_matrix(ta, metric)
                sb, _ = _score_matrix(tb, metric)
                if sa.shape[1] != sb.shape[1]:
                    raise ValueError(f"{template}/{metric}: {a} and {b} were evaluated on different image sets.")
                diff = bootstrap_difference(sa.astype(float), sb.astype(float), prompts, draws=draws)
                rows.append(
                    {
                        "template": template,
                        "metric": metric,
                        "a": a,
                        "b": b,
                        "mean_a": sa.mean(),
                        "mean_b": sb.mean(),
                        "diff": diff.estimate,
                        "low": diff.low,
                        "high": diff.high,
                        "resolved": diff.resolved,
                        "seeds_a": sa.shape[0],
                        "seeds_b": sb.shape[0],
                        "images": sa.shape[1],
                        "verdict": verdict(diff, a, b),
                    }
                )
    return pd.DataFrame(rows)


def paired_comparisons(
    images: pd.DataFrame, splits: Sequence[str], pairs: Sequence[tuple[str, str]], **kwargs
) -> pd.DataFrame:
    """:func:`paired_comparison` on each split, one table with a ``split`` column."""
    return pd.concat(
        [paired_comparison(images, split, pairs=pairs, **kwargs).assign(split=split) for split in splits],
        ignore_index=True,
    )


def reference_pairs(methods: Sequence[str], reference_methods: Sequence[str], tag: str) -> list[tuple[str, str]]:
    """The comparisons of a run with a reference run whose methods carry ``tag``: each method against its namesake
    there, ``(m, m + tag)``, and each of the reference's other methods against each of this run's, ``(r + tag, m)``;
    e.g. a DDPO-only run against the B² seeds of another folder gives ``("b2@ref", "ddpo")``, B² − DDPO."""
    pairs = [(m, m + tag) for m in methods if m in reference_methods]
    return pairs + [(r + tag, m) for r in reference_methods if r not in methods for m in methods]


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


def sign_control(
    run_dirs: Iterable[str | Path],
    split: str = "train",
    metrics: Sequence[str] = ("reward", "judge_all_ok"),
    draws: int = 4000,
) -> pd.DataFrame:
    """Learning vs drift, from runs trained on the reward (``reward_sign=1``) and on its negation (``-1``) with the same
    seeds and recipe, all evaluated on the same images (same prompts, same noise, the real reward).

    Per method and metric, over the seeds that have both runs, per image:
    ``gain`` = r(+) - r(base), ``signal`` = (r(+) - r(-)) / 2 (what the update does *because of* the reward: it flips
    with the reward's sign) and ``drift`` = (r(+) + r(-)) / 2 - r(base) (what it does whatever the reward says, e.g. the
    weights wandering under noisy gradients). ``gain = signal + drift``. Each comes with the two-level bootstrap
    interval of :func:`b2lib.stats.bootstrap_mean` (seed pairs and prompts resampled).
    """
    from .stats import bootstrap_mean

    models, base = {}, None
    for d in map(Path, run_dirs):
        sign = int(json.loads((d / "config.json").read_text()).get("reward_sign", 1))
        im = pd.read_csv(d / "eval_images.csv")
        im = im[im["split"] == split].sort_values("image")
        b = im[im["method"] == "base"]
        if base is None:
            base = b
        elif list(b["prompt"]) != list(base["prompt"]):
            raise ValueError(f"{d}: evaluated on other prompts than the first run; sign control needs paired images.")
        for (method, seed), t in im[im["method"] != "base"].groupby(["method", "seed"]):
            models[(method, sign, int(seed))] = t
    if base is None:
        raise ValueError("sign_control needs at least one run folder.")
    prompt_ids = pd.factorize(base["prompt"])[0]
    rows = []
    for method in sorted({m for m, _, _ in models}):
        seeds = sorted(s for m, sign, s in models if m == method and sign == 1 and (m, -1, s) in models)
        if not seeds:
            continue
        for metric in metrics:
            pos = np.stack([models[(method, 1, s)][metric].to_numpy(float) for s in seeds])
            neg = np.stack([models[(method, -1, s)][metric].to_numpy(float) for s in seeds])
            ref = base[metric].to_numpy(float)[None]
            row = {
                "method": method,
                "metric": metric,
                "seeds": len(seeds),
                "images": pos.shape[1],
                "base": float(ref.mean()),
                "trained_on_reward": float(pos.mean()),
                "trained_on_negated": float(neg.mean()),
            }
            for name, values in (("gain", pos - ref), ("signal", (pos - neg) / 2), ("drift", (pos + neg) / 2 - ref)):
                iv = bootstrap_mean(values, prompt_ids, draws=draws)
                row.update({name: iv.estimate, f"{name}_low": iv.low, f"{name}_high": iv.high})
            rows.append(row)
    return pd.DataFrame(rows)


def _paired_gain(run_dir: Path, split: str):
    """The run's CLIPScore gain over the base model with its prompt-bootstrap interval (one seed: no seed level)."""
    from .stats import bootstrap_difference

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
    from .plots import comparison_grid

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
    """README rows ``(what, number, verdict)`` of a paired-comparison table (:func:`paired_comparison` per split),
    keeping ``splits`` (None: all); none if the study has not run."""
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
    """The README's "paper result -> notebook -> our number" table as markdown, read from the CSVs the notebooks
    wrote under ``results`` (a missing study is reported as not run, never filled in)."""
    results = Path(results)
    lines = ["| paper result | notebook | our number at embedded scale (CPU) | B² vs DDPO |", "|---|---|---|---|"]

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


def update_readme(
    readme: str | Path, table: str, start: str = "<!-- results-table:start -->", end: str = "<!-- results-table:end -->"
) -> bool:
    """Replace the text between the two markers in the README with ``table``; False if the markers are missing."""
    readme = Path(readme)
    text = readme.read_text()
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{table}\n{end}{tail}")
    return True


def reward_trend(metrics: pd.DataFrame, column: str = "reward_mean") -> pd.DataFrame:
    """Does the train reward rise? Per method, over its seeds: the least-squares slope of ``column`` against the stage
    (per seed), the rise it implies over the run (slope x (stages - 1)) with a 95 % t-interval over seeds, the
    stage-to-stage noise (std of each seed's residuals around its line, averaged), and their ratio: the issue's
    "rises by several times its stage-to-stage noise" is ``rise / noise`` well above 1 with a resolved interval."""
    from scipy import stats as st

    rows = []
    for method, m in metrics.groupby("method", sort=False):
        slopes, noises, n_stages = [], [], 0
        for _, r in m.groupby("seed"):
            x, y = r["stage"].to_numpy(float), r[column].to_numpy(float)
            ok = np.isfinite(x) & np.isfinite(y)  # a stage without a reward (e.g. nothing sampled) has no point
            x, y = x[ok], y[ok]
            if len(np.unique(x)) < 2:  # one stage: no line through it
                continue
            slope, intercept = np.polyfit(x, y, 1)
            slopes.append(slope)
            noises.append(float(np.std(y - (slope * x + intercept), ddof=2)) if len(x) > 2 else float("nan"))
            n_stages = max(n_stages, len(x))
        slopes = np.asarray(slopes)
        if not len(slopes):
            rows.append({"method": method, "seeds": 0, "stages": n_stages})
            continue
        span = n_stages - 1
        rise = float(slopes.mean() * span)
        half = (
            float(st.t.ppf(0.975, len(slopes) - 1) * slopes.std(ddof=1) / np.sqrt(len(slopes)) * span)
            if len(slopes) > 1
            else float("nan")
        )
        noise = float(np.nanmean(noises))
        rows.append(
            {
                "method": method,
                "seeds": len(slopes),
                "stages": n_stages,
                "rise": rise,
                "rise_low": rise - half,
                "rise_high": rise + half,
                "noise": noise,
                "rise_over_noise": rise / noise if noise > 0 else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def health_summary(
    metrics: pd.DataFrame, branches: int | None = None, branched: Sequence[str] = ("b2", "branch")
) -> pd.DataFrame:
    """Per method, the mean over stages and seeds of the training-health columns of ``metrics.csv`` (kept samples and
    their signs, flat branch groups, approx KL, relative update size, optimizer steps, update time); with
    ``branches``, also the branch groups per stage (``images // branches``) of the ``branched`` methods."""
    cols = ["kept", "kept_pos", "kept_neg", "flat_groups", "approx_kl", "rel_update", "optimizer_steps", "train_s"]
    m = metrics.copy()
    if branches:
        m["groups"] = (m["images"] // branches).where(m["method"].isin(branched))
        cols.insert(4, "groups")
    return m.groupby("method", sort=False)[[c for c in cols if c in m]].mean()


def health_table(
    metrics: pd.DataFrame, branches: int | None = None, branched: Sequence[str] = ("b2", "branch")
) -> pd.DataFrame:
    """One row per method with everything a reader checks before believing a final number: the stage means of
    :func:`health_summary`, the largest KL to the base model, ``approx_kl`` and clip fraction of any stage (``*_max``;
    a mean can hide one bad stage), and the train reward's rise against its noise (:func:`reward_trend`)."""
    largest_cols = [c for c in ("kl", "approx_kl", "clipfrac") if c in metrics]
    largest = metrics.groupby("method", sort=False)[largest_cols].max().add_suffix("_max")
    table = health_summary(metrics, branches, branched).join(largest)
    if "reward_mean" in metrics:
        table = table.join(reward_trend(metrics).set_index("method"))
    return table
