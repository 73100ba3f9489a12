"""Evaluate a finished run's saved models on a split it was not evaluated on, without training again.

Why: a run folder keeps every trained model (``<method>_seed<s>/lora``, or ``/unet`` for a full fine-tune), and its
``run.json`` says how it was evaluated. A study that later asks for another split (the generalisation table wants the
training prompts next to the held-out ones) would otherwise have to retrain hours of runs only to score them on more
prompts. Here the models are loaded the way the independent evaluation loads them (a stock pipeline plus
``load_lora_weights``), scored by the run's own evaluation code (:func:`b2lib.experiments.evalsettings.eval_settings`,
same prompts, same noise, same judge), and the rows are added to the folder's tables, whose fingerprint then records the
new split, so the folder stands for a run that had asked for it (:func:`b2lib.utils.rundir.reusable`).

The saved adapter is not bit-for-bit the in-memory one the run evaluated (it is re-loaded and re-fused), so before
adding anything :func:`add_eval_split` re-scores one trained model on a split the run already has and checks that it
reproduces the stored per-image rewards (``check_tol``).
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import pandas as pd

from b2lib.evaluation.generate import evaluate_prompts
from b2lib.experiments.evalsettings import eval_settings, eval_split_prompts
from b2lib.experiments.experiment import RunConfig, write_eval_images
from b2lib.experiments.presets import load_models
from b2lib.training.checkpoint import check_lora
from b2lib.utils.paths import code_version
from b2lib.utils.rundir import RunLock, RunSettingsError, check_fingerprint, record_settings

__all__ = ["add_eval_split", "ensure_eval_splits", "load_trained", "run_config"]


def run_config(folder: str | Path) -> RunConfig:
    """The :class:`~b2lib.experiments.experiment.RunConfig` a run folder was made with (its ``config.json``), checked
    against the folder's fingerprint: the settings rebuilt by this code must be the ones the run recorded."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no config.json: not a run folder (run_experiment writes one).")
    known = {f.name for f in fields(RunConfig)}
    saved = {k: v for k, v in json.loads(path.read_text()).items() if k in known}
    cfg = RunConfig(**{**saved, "output_dir": str(folder)})
    check_fingerprint(folder, cfg.settings())
    return cfg


def load_trained(cfg: RunConfig, folder: Path, label: str, device: str = "cpu"):
    """``(pipeline, reward)`` with model ``label`` (``"base"`` or ``<method>_seed<s>``) of the run in ``folder``: the
    base pipeline, plus the saved LoRA through stock diffusers ``load_lora_weights`` (or the saved full UNet)."""
    pipe, reward = load_models(cfg.preset, cfg.model_dir, cfg.clip_dir, device=device)
    if label == "base":
        return pipe, reward
    lora, unet = folder / label / "lora", folder / label / "unet"
    if lora.is_dir():
        from diffusers.utils import logging as diffusers_logging

        check_lora(lora, run_dir=folder)  # a truncated file: named, with the rerun that writes it again
        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # not the notice, per model, that the adapter has no text-encoder part
        try:
            pipe.load_lora_weights(str(lora))
        finally:
            diffusers_logging.set_verbosity(level)
    elif unet.is_dir():
        from diffusers import UNet2DConditionModel

        pipe.unet = UNet2DConditionModel.from_pretrained(str(unet)).to(device)
    else:
        raise FileNotFoundError(
            f"{folder / label} holds no saved model (lora/ or unet/): the run was made with save_lora=False, so "
            "it cannot be evaluated again; rerun it with save_lora=True."
        )
    return pipe, reward


def _score(cfg: RunConfig, folder: Path, label: str, prompts: list[str], kwargs: dict, device: str):
    pipe, reward = load_trained(cfg, folder, label, device)
    table, summary, _ = evaluate_prompts(pipe, prompts, reward, n_per_prompt=cfg.n_per_prompt(len(prompts)), **kwargs)
    return table, summary


def add_eval_split(
    folder: str | Path, split: str = "train", device: str = "cpu", check_tol: float = 1e-3, progress: bool = True
) -> pd.DataFrame:
    """Score every model of the finished run in ``folder`` (the base model and each ``<method>_seed<s>``) on
    ``split`` (``"train"`` or ``"test"``) and add the rows to ``eval.csv``, ``eval_images.csv`` and ``summary.json``;
    ``config.json`` and ``run.json`` then list the split, and ``summary.json``'s ``added_splits`` records the call
    (code version, the check below). Returns the new rows of ``eval.csv`` (empty if the run already had the split).

    First one trained model is re-scored on the run's first split: if its per-image rewards differ from the stored
    ones by more than ``check_tol`` (the loaded model is not the one the run evaluated), nothing is written and a
    :class:`~b2lib.utils.rundir.RunSettingsError` says so."""
    from tqdm.auto import tqdm

    folder = Path(folder)
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train'; got {split!r}")
    if not (folder / "summary.json").exists():
        raise FileNotFoundError(f"{folder} is not a finished run (no summary.json): let the run finish first.")
    with RunLock(folder):
        cfg = run_config(folder)
        if split in cfg.eval_splits:
            return pd.DataFrame()
        evals = pd.read_csv(folder / "eval.csv")
        per_image = pd.read_csv(folder / "eval_images.csv")
        first = cfg.eval_splits[0]
        models = evals[evals["split"] == first][["model", "method", "seed"]].drop_duplicates("model")
        prompts = eval_split_prompts(cfg)
        kwargs = eval_settings(cfg, device, bertscore=cfg.bertscore)

        trained = models[models["model"] != "base"]
        check = {}
        if len(trained):  # the saved model must be the evaluated one
            label = trained["model"].iloc[0]
            table, _ = _score(cfg, folder, label, prompts[first], kwargs, device)
            stored = per_image[(per_image["model"] == label) & (per_image["split"] == first)]["reward"].to_numpy()
            gap = float(abs(table["reward"].to_numpy() - stored).max()) if len(stored) == len(table) else float("inf")
            if gap > check_tol:
                raise RunSettingsError(
                    f"{folder / label}: the saved model re-scored on the {first!r} split differs from the run's own "
                    f"evaluation by up to {gap:.3g} in reward (tolerance {check_tol}); the saved model or the "
                    "evaluation code is not what the run used, so no rows were added."
                )
            check = {"model": label, "split": first, "max_reward_gap": gap}

        rows, tables = [], []
        for model, method, seed in tqdm(
            models.itertuples(index=False), total=len(models), desc=f"{folder.name}: {split}", disable=not progress
        ):
            seed = None if pd.isna(seed) else int(seed)
            table, summary = _score(cfg, folder, model, prompts[split], kwargs, device)
            rows.append({"model": model, "method": method, "seed": seed, "split": split, **summary})
            tables.append(table.assign(model=model, method=method, seed=seed, split=split, image=range(len(table))))

        new = pd.DataFrame(rows)
        pd.concat([evals, new], ignore_index=True).to_csv(folder / "eval.csv", index=False)
        write_eval_images(pd.concat([per_image, *tables], ignore_index=True), folder)
        summary_path = folder / "summary.json"
        summary = json.loads(summary_path.read_text())
        summary["eval"] = summary.get("eval", []) + json.loads(new.to_json(orient="records"))
        summary.setdefault("added_splits", []).append({"split": split, "code": code_version(), "check": check})
        summary_path.write_text(json.dumps(summary, indent=2, default=str))
        grown = replace(cfg, eval_splits=(*cfg.eval_splits, split))
        config = json.loads((folder / "config.json").read_text())
        config["eval_splits"] = list(grown.eval_splits)
        (folder / "config.json").write_text(json.dumps(config, indent=2, default=str))
        record_settings(folder, grown.settings())
    return new


def ensure_eval_splits(folders: list[str | Path], splits: list[str] | tuple[str, ...], **kwargs) -> list[Path]:
    """Add each of ``splits`` to every *finished* run folder in ``folders`` that lacks it (:func:`add_eval_split`);
    folders not there or not finished are left to be trained. Returns the folders that gained a split."""
    grown = []
    for folder in map(Path, folders):
        if not (folder / "summary.json").exists():
            continue
        for split in splits:
            if len(add_eval_split(folder, split, **kwargs)):
                grown.append(folder)
    return grown
