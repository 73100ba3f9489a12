"""One experiment = train some methods on one template at one scale, evaluate base and fine-tuned models on the same
prompts with the same seeds, and write everything under ``results/<run>/``. The notebooks are thin wrappers of this.

Files written (``<m>`` = method, ``<s>`` = seed):
``config.json`` · ``metrics.csv`` (per stage, method, seed) · ``eval.csv`` (base and every trained model) ·
``summary.json`` · ``<m>_seed<s>/lora`` (diffusers LoRA: ``pipe.load_lora_weights(dir)``) ·
``<m>_seed<s>/checkpoints/stage_XXXX`` (resumable) · figures (``*.png``) from the notebook.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .checkpoint import latest_checkpoint, save_lora
from .evaluate import evaluate_prompts, subset
from .paths import results_dir
from .presets import canonical_template, get_preset, load_models, load_prompts, trainer_config
from .trainer import RLTrainer

__all__ = ["RunConfig", "RunResult", "run_experiment", "METHODS"]

METHODS = ("ddpo", "b2")


@dataclass
class RunConfig:
    """What the main notebook's parameters cell sets."""

    methods: tuple[str, ...] = METHODS
    template: str = "counting"
    preset: str = "embedded"
    stages: int = 0  # 0: the preset's default (embedded 20, paper 100)
    images_per_stage: int = 0  # both methods generate this many per stage (equal budget); 0: embedded 32, paper 1280
    branches: int = 0  # B² branches per prefix (prefixes per stage = images_per_stage // branches); 0: 4 / 5
    seeds: tuple[int, ...] = (0,)
    model_dir: str = ""
    clip_dir: str = ""
    run_name: str = "main"
    output_dir: str = ""  # "": results/<run_name> (a temp folder for smoke runs)
    eval_n_per_prompt: int = 4
    eval_max_prompts: int = 16
    eval_seed: int = 1234
    resume: bool = True  # continue from checkpoints found in the output folder
    overrides: dict = field(default_factory=dict)  # extra TrainerConfig fields, e.g. {"lr": 3e-4}
    train_prompts: tuple[str, ...] = ()  # non-empty: train on these instead of the template's train split
    eval_prompts: tuple[str, ...] = ()  # non-empty: evaluate on these instead of the template's test split

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        self.seeds = tuple(self.seeds)
        self.train_prompts = tuple(self.train_prompts)
        self.eval_prompts = tuple(self.eval_prompts)
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"Unknown method(s) {bad}: use any of {METHODS}.")
        canonical_template(self.template)
        get_preset(self.preset)


@dataclass
class RunResult:
    out: Path
    metrics: pd.DataFrame  # one row per (method, seed, stage)
    evals: pd.DataFrame  # one row per model (base, method x seed)
    images: dict[str, torch.Tensor]  # model label -> eval images (same prompts and seeds for every model)
    prompts: list[str]  # the eval prompts, prompt-major, eval_n_per_prompt each
    wall_s: float


def _judge_fn(preset: str):
    if preset == "embedded":
        from .world import judge_batch

        return judge_batch
    return None  # no programmatic judge for natural images


def _stage_metric_fn(preset: str):
    if preset == "embedded":
        from .world.evaluation import judge_metrics

        return judge_metrics
    return None


def run_experiment(cfg: RunConfig, progress: bool = True, accelerator=None) -> RunResult:
    """Train and evaluate as ``cfg`` says. Under ``accelerate launch`` every process trains (sampling split over
    processes, gradients synchronised); evaluation and files are the main process's job."""
    from accelerate import Accelerator

    t0 = time.perf_counter()
    acc = accelerator or Accelerator(cpu=get_preset(cfg.preset).device == "cpu")
    main = acc.is_main_process
    out = Path(cfg.output_dir) if cfg.output_dir else results_dir(cfg.run_name)
    out.mkdir(parents=True, exist_ok=True)
    if main:
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
    template = canonical_template(cfg.template)
    train_prompts = list(cfg.train_prompts) or load_prompts(cfg.preset, template, "train")
    eval_prompts = list(cfg.eval_prompts) or subset(load_prompts(cfg.preset, template, "test"), cfg.eval_max_prompts)
    judge = _judge_fn(cfg.preset)
    metric_fn = _stage_metric_fn(cfg.preset)
    eval_kwargs = dict(judge_fn=judge, n_per_prompt=cfg.eval_n_per_prompt, seed=cfg.eval_seed)

    device = str(acc.device)
    pipe, reward = load_models(cfg.preset, cfg.model_dir, cfg.clip_dir, device=device)
    rows, images = [], {}
    eval_batch = [p for p in eval_prompts for _ in range(cfg.eval_n_per_prompt)]
    if main:
        _, summary, images["base"] = evaluate_prompts(pipe, eval_prompts, reward, **eval_kwargs)
        rows.append({"model": "base", "method": "base", "seed": None, **summary})

    metrics = []
    for seed in cfg.seeds:
        for method in cfg.methods:
            label = f"{method}_seed{seed}"
            pipe, _ = load_models(cfg.preset, cfg.model_dir, cfg.clip_dir, device=device)  # fresh base weights
            tcfg = trainer_config(cfg.preset, method, stages=cfg.stages or None,
                                  images_per_stage=cfg.images_per_stage or None, branches=cfg.branches or None,
                                  seed=seed, progress=progress, **cfg.overrides)
            trainer = RLTrainer(pipe, reward, train_prompts, tcfg, accelerator=acc, metric_fn=metric_fn)
            ckpt_dir = out / label / "checkpoints"
            resume = latest_checkpoint(out / label) if cfg.resume else None
            trainer.train(checkpoint_dir=ckpt_dir, resume_from=resume)
            acc.wait_for_everyone()
            for m in trainer.log:
                metrics.append({"method": method, "seed": seed, **m})
            if main:
                save_lora(pipe, out / label / "lora")
                _, summary, images[label] = evaluate_prompts(pipe, eval_prompts, reward, **eval_kwargs)
                rows.append({"model": label, "method": method, "seed": seed, **summary})
                pd.DataFrame(metrics).to_csv(out / "metrics.csv", index=False)  # progress survives a crash

    metrics_df, evals = pd.DataFrame(metrics), pd.DataFrame(rows)
    wall = time.perf_counter() - t0
    if main:
        metrics_df.to_csv(out / "metrics.csv", index=False)
        evals.to_csv(out / "eval.csv", index=False)
        (out / "summary.json").write_text(json.dumps({
            "wall_s": wall, "template": template, "preset": cfg.preset, "processes": acc.num_processes,
            "eval_prompts": eval_prompts, "eval": evals.to_dict(orient="records"),
        }, indent=2, default=str))
    return RunResult(out, metrics_df, evals, images, eval_batch, wall)
