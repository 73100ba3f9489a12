"""The colour-mixing study over finished runs: every model's test images regenerated with the run's own prompts,
seeds and sampler (no image is stored), measured with :func:`b2lib.world.colour_mixing.colour_mixing`, and each
method's rate compared with the base model's, paired (:func:`colour_mixing_table`, notebook 04).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from b2lib.evaluation.generate import generate
from b2lib.experiments.evalsettings import eval_settings, eval_split_prompts
from b2lib.experiments.reevaluate import load_trained, run_config
from b2lib.reporting.report import paired_comparison
from b2lib.world.colour_mixing import MIN_SHARE, MIXING_METRICS, SENSITIVITY_SHARES, colour_mixing_batch
from b2lib.world.judge import judge_batch

__all__ = ["regenerate", "mixing_study", "mixing_rates", "mixing_comparisons", "colour_mixing_table"]

#: the generation batch of the runs' own evaluation (:func:`b2lib.evaluation.generate.evaluate_prompts`' default): a
# batch's  noise is seeded by its index, so the same images need the same batching
EVAL_BATCH = 64


def _run_models(folder: Path, split: str) -> list[tuple[str, str, int | None]]:
    """``(model, method, seed)`` of every model a run folder evaluated on ``split`` (its ``eval_images.csv``)."""
    import pandas as pd

    stored = pd.read_csv(folder / "eval_images.csv")
    rows = stored[stored["split"] == split][["model", "method", "seed"]].drop_duplicates("model")
    return [(m, me, None if pd.isna(s) else int(s)) for m, me, s in rows.itertuples(index=False)]


def _template(folder: Path) -> str:
    return json.loads((folder / "summary.json").read_text())["template"]


def regenerate(folder: str | Path, model: str, split: str = "test", cache: str | Path | None = None) -> dict:
    """The evaluation images of ``model`` (``"base"`` or ``<method>_seed<s>``) of the finished run in ``folder`` on
    ``split``, generated again as the run's evaluation made them: the model loaded through stock
    ``load_lora_weights`` (:func:`b2lib.experiments.reevaluate.load_trained`), the run's prompts, images per prompt,
    sampler and noise seed (:func:`b2lib.experiments.evalsettings.eval_settings`), the same batching. Returns
    ``{"images": (N, H, W, 3) uint8, "prompts": (N,), "reward": (N,), "judge_all_ok": (N,), "seconds": ()}`` (reward and
    judge re-scored on these images, to check them against the run's stored ones; ``seconds``: the wall time of loading,
    generating and scoring). With ``cache`` (a folder), the arrays are kept in ``cache/<run folder
    name>/<split>/<model>.npz`` and read back on the next call (``seconds`` stays the original generation's)."""
    folder = Path(folder)
    path = Path(cache) / folder.name / split / f"{model}.npz" if cache is not None else None
    if path is not None and path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    import inspect

    import torch

    t0 = time.perf_counter()
    cfg = run_config(folder)
    prompts = eval_split_prompts(cfg)[split]
    batch = [p for p in prompts for _ in range(cfg.n_per_prompt(len(prompts)))]
    kw = eval_settings(cfg, "cpu", bertscore=False)
    pipe, reward = load_trained(cfg, folder, model)
    pipe.set_progress_bar_config(disable=True)
    accepted = inspect.signature(generate).parameters  # the sampler settings of the run's evaluation (steps, ...)
    images = generate(pipe, batch, batch_size=EVAL_BATCH, **{k: v for k, v in kw.items() if k in accepted})
    with torch.no_grad():
        scores = reward(images, batch).cpu().numpy() if reward is not None else np.full(len(batch), np.nan)
    out = {
        "images": (images.permute(0, 2, 3, 1).clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8),
        "prompts": np.asarray(batch),
        "reward": np.asarray(scores, dtype=np.float64),
        "judge_all_ok": np.array([r.all_ok for r in judge_batch(images, batch)]),
    }
    out["seconds"] = np.float64(time.perf_counter() - t0)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez_compressed(tmp, **out)
        tmp.replace(path)
    return out


def mixing_study(
    folders: Sequence[str | Path],
    split: str = "test",
    methods: Sequence[str] | None = None,
    cache: str | Path | None = None,
    min_share: float = MIN_SHARE,
    progress: bool = True,
):
    """Per-image mixing flags of every model of the finished run folders of *one* template (e.g. ``[binding]``, or
    counting's ``[coarse120, compute_ddpo]``: the base model is taken once, from the first folder that has it), on
    the images of the runs' own evaluation of ``split`` (:func:`regenerate`: same prompts, same noise).

    Returns a table with one row per model and image: ``template, run, model, method, seed, split, image, prompt``,
    the :class:`ColourMixing` numbers (``asked_*`` NaN where the prompt does not name two different colours),
    ``two_colours``, and the check against the run's stored evaluation: ``judge_all_ok`` / ``reward`` (re-scored
    here) next to ``stored_judge_all_ok`` / ``stored_reward``, and ``generate_s`` (the model's generation seconds,
    :func:`regenerate`). ``methods``: only these (e.g. ``("base", "b2")``)."""
    import pandas as pd

    folders = [Path(f) for f in folders]
    templates = {_template(f) for f in folders}
    if len(templates) != 1:
        raise ValueError(f"mixing_study takes the run folders of one template; got {sorted(templates)}")
    (template,) = templates
    frames, seen = [], set()
    for folder in folders:
        stored = pd.read_csv(folder / "eval_images.csv")
        stored = stored[stored["split"] == split]
        for model, method, seed in _run_models(folder, split):
            if model in seen or (methods is not None and method not in methods):
                continue
            seen.add(model)
            t0 = time.perf_counter()
            gen = regenerate(folder, model, split, cache)
            ref = stored[stored["model"] == model].sort_values("image")
            if list(ref["prompt"]) != [str(p) for p in gen["prompts"]]:
                raise ValueError(f"{folder / model}: the regenerated prompts are not the run's stored ones")
            rows = [
                r.row()
                for r in colour_mixing_batch(gen["images"], [str(p) for p in gen["prompts"]], min_share=min_share)
            ]
            table = pd.DataFrame(rows)
            table.insert(0, "prompt", [str(p) for p in gen["prompts"]])
            table.insert(0, "image", ref["image"].to_numpy())
            for col, value in reversed(
                [("template", template), ("run", folder.name), ("model", model), ("method", method), ("seed", seed)]
            ):
                table.insert(0, col, value)
            table.insert(6, "split", split)
            table["two_colours"] = table["asked_colours_mixed"].notna()
            table["judge_all_ok"] = gen["judge_all_ok"].astype(bool)
            table["stored_judge_all_ok"] = ref["judge_all_ok"].astype(bool).to_numpy()
            table["reward"] = gen["reward"]
            table["stored_reward"] = ref["reward"].to_numpy() if "reward" in ref else np.nan
            table["generate_s"] = float(gen.get("seconds", np.nan))
            frames.append(table)
            if progress:
                print(
                    f"{template}/{model}: {len(table)} images, mixed {table['mixed_any'].mean():.3f}, judge agrees "
                    f"{(table['judge_all_ok'] == table['stored_judge_all_ok']).mean():.3f} "
                    f"({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
    df = pd.concat(frames, ignore_index=True)
    for col in ("asked_colours_mixed", "asked_colours_mixed_hard", "asked_share"):
        df[col] = df[col].astype(float)  # None -> NaN
    return df


def mixing_rates(per_image) -> Any:
    """Per template, split and model: mean rates of the mixing flags (``asked_*`` over the prompts naming two
    different colours), mean objects and mixed objects per image, the re-scored judge alignment, and the agreement
    with the run's stored evaluation (``judge_agreement``: share of images whose judge verdict matches the stored
    one; ``max_reward_gap``), and the model's generation seconds."""
    import pandas as pd

    rows = []
    for (template, split, model), t in per_image.groupby(["template", "split", "model"], sort=False):
        rows.append(
            {
                "template": template,
                "split": split,
                "model": model,
                "method": t["method"].iloc[0],
                "seed": t["seed"].iloc[0],
                "images": len(t),
                "two_colour_images": int(t["two_colours"].sum()),
                **{m: float(t[m].mean()) if t[m].notna().any() else np.nan for m in MIXING_METRICS},
                "n_objects": float(t["n_objects"].mean()),
                "n_mixed": float(t["n_mixed"].mean()),
                "judge_all_ok": float(t["judge_all_ok"].mean()),
                "stored_judge_all_ok": float(t["stored_judge_all_ok"].mean()),
                "judge_agreement": float((t["judge_all_ok"] == t["stored_judge_all_ok"]).mean()),
                "max_reward_gap": float((t["reward"] - t["stored_reward"]).abs().max()),
                "generate_s": float(t["generate_s"].iloc[0]) if "generate_s" in t else np.nan,
            }
        )
    return pd.DataFrame(rows)


def mixing_comparisons(
    per_image,
    pairs: Sequence[tuple[str, str]] = (("b2", "base"), ("ddpo", "base"), ("b2", "ddpo")),
    metrics: Sequence[str] = MIXING_METRICS,
    sensitivity: Sequence[float] = SENSITIVITY_SHARES,
    draws: int = 4000,
):
    """Paired differences of the mixing rates with 95 % two-level bootstrap intervals (seeds of each side resampled
    independently, prompts jointly): :func:`b2lib.reporting.report.paired_comparison` on the per-image table, per split;
    the ``asked_*`` metrics over the prompts that name two different colours. Columns as ``comparisons.csv``.

    ``sensitivity``: the same comparison of ``mixed_any`` and ``asked_colours_mixed`` at other share thresholds
    (metrics ``mixed_any@0.20`` ...), read from the continuous ``mixed_share`` / ``asked_share`` (``mixed_any`` at
    threshold ``s`` is exactly ``mixed_share >= s``), so the verdict can be seen not to hang on the threshold."""
    import pandas as pd

    per_image = per_image.copy()
    derived = []
    for share in sensitivity:
        for flag, score in (("mixed_any", "mixed_share"), ("asked_colours_mixed", "asked_share")):
            if score in per_image:
                name = f"{flag}@{share:.2f}"
                per_image[name] = (per_image[score] >= share).astype(float).where(per_image[score].notna())
                derived.append(name)
    out = []
    for split in per_image["split"].unique():
        for metric in [*metrics, *derived]:
            df = per_image[per_image[metric].notna()] if metric.startswith("asked") else per_image
            if df.empty:
                continue
            c = paired_comparison(df, split, metrics=[metric], pairs=pairs, draws=draws)
            out.append(c.assign(split=split))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _expected(folders: Sequence[Path], split: str) -> set[tuple[str, str]]:
    """``(run folder name, model)`` that :func:`mixing_study` scores for these folders (the base model once)."""
    want: dict[str, str] = {}
    for folder in folders:
        for model, _, _ in _run_models(folder, split):
            want.setdefault(model, folder.name)
    return {(run, model) for model, run in want.items()}


def colour_mixing_table(
    folders: Sequence[str | Path],
    out: str | Path,
    split: str = "test",
    cache: str | Path | None = None,
    progress: bool = True,
):
    """The mixing study of every template among ``folders`` (run folders, e.g. notebook 04's ``folders``, grouped by
    template), written to ``out``: ``colour_mixing_images.csv`` (per image, :func:`mixing_study`),
    ``colour_mixing.csv`` (per model rates, :func:`mixing_rates`) and
    ``colour_mixing_comparisons.csv`` (:func:`mixing_comparisons`). A template whose rows in
    ``colour_mixing_images.csv`` already cover the same run folders and models is read back, not generated again,
    so calling this again is cheap. Returns ``(rates, comparisons)``."""
    import pandas as pd

    out = Path(out)
    groups: dict[str, list[Path]] = {}
    for folder in map(Path, folders):
        groups.setdefault(_template(folder), []).append(folder)
    path = out / "colour_mixing_images.csv"
    old = pd.read_csv(path) if path.exists() else None
    frames = []
    for template, group in groups.items():
        have = old[(old["template"] == template) & (old["split"] == split)] if old is not None else None
        if have is not None and len(have) and set(zip(have["run"], have["model"])) == _expected(group, split):
            frames.append(have)
        else:
            frames.append(mixing_study(group, split, cache=cache, progress=progress))
    if old is not None:  # rows of other templates or splits stay
        others = old[~(old["template"].isin(list(groups)) & (old["split"] == split))]
        if len(others):
            frames.append(others)
    per_image = pd.concat(frames, ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    per_image.to_csv(path, index=False)
    rates = mixing_rates(per_image)
    rates.to_csv(out / "colour_mixing.csv", index=False)
    comparisons = mixing_comparisons(per_image)
    comparisons.to_csv(out / "colour_mixing_comparisons.csv", index=False)
    return rates, comparisons
