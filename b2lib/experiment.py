"""One experiment = train some methods on one template at one scale, evaluate base and fine-tuned models on the same
prompts with the same seeds, and write everything under ``results/<run>/``. The notebooks are thin wrappers of this.

Files written (``<m>`` = method, ``<s>`` = seed):
``config.json`` · ``metrics.csv`` (per stage, method, seed) · ``eval.csv`` (base and every trained model) ·
``eval_images.csv`` (per image, for paired bootstrap intervals) · ``summary.json`` · ``<m>_seed<s>/lora`` (diffusers
LoRA: ``pipe.load_lora_weights(dir)``) ·
``<m>_seed<s>/checkpoints/stage_XXXX`` (resumable) · figures (``*.png``) from the notebook.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from dataclasses import asdict, dataclass
from os import cpu_count
from pathlib import Path

import pandas as pd
import torch

from .evaluate import subset
from .modeljobs import BASE, ModelResult, RunContext, job_order, resolve_workers, run_jobs_parallel
from .paths import code_version, results_dir
from .presets import (
    canonical_template,
    get_preset,
    load_prompts,
    trainer_config,
)
from .progress import RunProgress, clock, terminal
from .runconfig import METHODS, ConfigError, RunConfig
from .rundir import (
    RunLock,
    check_fingerprint,
    disk_full_guard,
    move_aside,
    not_writable_guard,
    prepare_output_dir,
    write_text_atomic,
)

__all__ = [
    "ConfigError",
    "RunConfig",
    "RunResult",
    "run_experiment",
    "run_many",
    "write_eval_images",
    "eval_split_prompts",
    "eval_settings",
    "EVAL_IMAGE_COLUMNS",
    "METHODS",
]


@dataclass
class RunResult:
    out: Path
    metrics: pd.DataFrame  # one row per (method, seed, stage)
    evals: pd.DataFrame  # one row per model (base, method x seed)
    images: dict[str, torch.Tensor]  # model label -> eval images (same prompts and seeds for every model)
    prompts: list[str]  # the eval prompts, prompt-major, eval_n_per_prompt each
    wall_s: float


def _judge_fn(preset: str):
    if get_preset(preset).world:
        from .world import judge_batch

        return judge_batch
    return None  # no programmatic judge for natural images


def _stage_metric_fn(preset: str):
    if get_preset(preset).world:
        from .world.evaluation import judge_metrics

        return judge_metrics
    return None


@functools.lru_cache(maxsize=2)
def _text_metric(preset: str, device: str):
    """BERTScore for evaluation: the world's captioner + packaged MiniLM (embedded), BLIP + roberta-large (paper)."""
    from .bertscore import BertScore

    if get_preset(preset).world:
        return BertScore.for_world(device=device)
    return BertScore.from_pretrained(device=device)


def _save_samples(images: dict, n_per_prompt: int, k: int, path: Path) -> None:
    """The first image of each of the first ``k`` eval prompts, per model, as uint8 (figures are rebuilt from it)."""
    from safetensors.torch import save_file

    tensors = {}
    for label, imgs in images.items():
        idx = torch.arange(0, imgs.shape[0], n_per_prompt)[:k]
        tensors[label] = (imgs[idx].clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
    tmp = path.with_name(path.name + ".tmp")
    with disk_full_guard(path, "the sample grid", RESULTS_RERUN, sum(t.numel() for t in tensors.values())):
        try:
            save_file(tensors, str(tmp))
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def eval_split_prompts(cfg: RunConfig) -> dict[str, list[str]]:
    """The prompts each evaluation split scores (``"test"``, ``"train"``): the run's own lists if it set them, else the
    template's, cut to ``eval_max_prompts`` evenly spaced ones. One place, so an evaluation added to a finished run
    (:func:`b2lib.reevaluate.add_eval_split`) scores exactly what the run itself would have."""
    template = canonical_template(cfg.template)
    train = list(cfg.train_prompts) if cfg.train_prompts else load_prompts(cfg.preset, template, "train")
    test = list(cfg.eval_prompts) if cfg.eval_prompts else load_prompts(cfg.preset, template, "test")
    return {
        "test": test if cfg.eval_prompts else subset(test, cfg.eval_max_prompts),
        "train": subset(train, cfg.eval_max_prompts),
    }


def eval_settings(cfg: RunConfig, device: str, bertscore: bool = True) -> dict:
    """Keyword arguments of :func:`b2lib.evaluate.evaluate_prompts` for ``cfg``'s evaluation: its judge, noise seed,
    text metric, the chain the models were trained on (steps, eta, guidance; a tree's levels are not the chain's; a
    flow model is evaluated with its deterministic ODE chain, the stock pipeline's) and the run's compute dtype."""
    chain_fields = {k: v for k, v in cfg.overrides.items() if not k.startswith("tree")}
    chain = trainer_config(cfg.preset, "ddpo", **chain_fields)
    return dict(
        judge_fn=_judge_fn(cfg.preset),
        seed=cfg.eval_seed,
        text_metric=_text_metric(cfg.preset, device) if (cfg.bertscore and bertscore) else None,
        num_steps=chain.num_steps,
        guidance_scale=chain.guidance_scale,
        eta=0.0 if get_preset(cfg.preset).family == "sd3" else chain.eta,  # flow: the ODE, as stock samples
        dtype=cfg.dtype,
    )


#: what rerunning a run does after its result files failed to write (the trained models are safe in checkpoints)
RESULTS_RERUN = (
    "the models trained so far are checkpointed, so a rerun resumes them at their last stage and evaluates again"
)


def _write_result(path: Path, text: str) -> None:
    """Write a result file atomically (a full disk leaves the old file or none, never a truncated table), turning a
    full disk into a :class:`~b2lib.rundir.DiskFullError` that names the file and the fix."""
    with disk_full_guard(path, "run results", RESULTS_RERUN, len(text.encode())):
        write_text_atomic(path, text)


def run_experiment(cfg: RunConfig, progress: bool = True, accelerator=None) -> RunResult:
    """Train and evaluate as ``cfg`` says. Under ``accelerate launch`` every process trains (sampling split over
    processes, gradients synchronised); evaluation and files are the main process's job."""
    from accelerate import Accelerator

    t0 = time.perf_counter()
    out = Path(cfg.output_dir) if cfg.output_dir else results_dir(cfg.run_name)
    prepare_output_dir(out)  # a read-only or full output folder stops here, before any model loads
    acc = accelerator or Accelerator(cpu=(cfg.device or get_preset(cfg.preset).device) == "cpu")
    main = acc.is_main_process
    with RunLock(out) if main else contextlib.nullcontext():
        if main:
            with not_writable_guard(out, "nothing was trained yet"):
                if not cfg.resume:
                    moved = move_aside(out)
                    if moved is not None:
                        print(f"resume=False: the folder's earlier content was moved to {moved}")
                check_fingerprint(out, cfg.settings())
                write_text_atomic(out / "config.json", json.dumps(asdict(cfg), indent=2, default=str))
        acc.wait_for_everyone()
        return _run(cfg, acc, out, t0, progress)


def _run(cfg: RunConfig, acc, out: Path, t0: float, progress: bool) -> RunResult:
    main = acc.is_main_process
    template = canonical_template(cfg.template)
    eval_prompts = eval_split_prompts(cfg)[cfg.eval_splits[0]]
    report = RunProgress(progress and acc.is_local_main_process, bars=terminal())
    n_first = cfg.n_per_prompt(len(eval_prompts))
    eval_batch = [p for p in eval_prompts for _ in range(n_first)]
    results: dict[str, ModelResult] = {}

    def done(result: ModelResult) -> None:
        results[result.label] = result
        if main and result.metrics:  # the stage logs so far, in job order: survives a crash
            _write_result(out / "metrics.csv", _metrics_table(cfg, results).to_csv(index=False))

    workers = resolve_workers(cfg, acc.num_processes, acc.device.type)
    if workers > 1:
        run_jobs_parallel(cfg, out, workers, report, done)
    else:
        ctx = RunContext.build(cfg, acc, out, report)
        for method, seed in job_order(cfg):
            done(ctx.model(method, seed))
    ordered = [results[_label(m, s)] for m, s in job_order(cfg)]
    rows = [r for res in ordered for r in res.rows]
    per_image = [t for res in ordered for t in res.per_image]
    images = {res.label: res.images for res in ordered if res.images is not None}

    if main and cfg.grid_prompts:
        _save_samples(images, n_first, cfg.grid_prompts, out / "samples.safetensors")
    metrics_df, evals = _metrics_table(cfg, results), pd.DataFrame(rows)
    wall = time.perf_counter() - t0
    if main:
        _write_result(out / "metrics.csv", metrics_df.to_csv(index=False))
        _write_result(out / "eval.csv", evals.to_csv(index=False))
        write_eval_images(pd.concat(per_image, ignore_index=True), out)
        _write_result(  # last: its presence marks the run as finished (run_many skips such folders)
            out / "summary.json",
            json.dumps(
                {
                    "wall_s": wall,
                    "template": template,
                    "preset": cfg.preset,
                    "processes": acc.num_processes,
                    "torch_threads": torch.get_num_threads() if workers == 1 else max(1, cpu_count() // workers),
                    "workers": workers,
                    "eval_prompts": eval_prompts,
                    "device": str(acc.device),
                    "device_name": torch.cuda.get_device_name(acc.device) if acc.device.type == "cuda" else "cpu",
                    "grid_prompts": eval_prompts[: cfg.grid_prompts],
                    "code": code_version(),
                    "eval": evals.to_dict(orient="records"),
                },
                indent=2,
                default=str,
            ),
        )
        report.say(f"run finished in {clock(wall)}: results in {out}")
    return RunResult(out, metrics_df, evals, images, eval_batch, wall)


def _label(method: str, seed) -> str:
    return BASE if method == BASE else f"{method}_seed{seed}"


def _metrics_table(cfg: RunConfig, results: dict[str, ModelResult]) -> pd.DataFrame:
    """The per-stage logs of the jobs finished so far, in job order (what one process would have written)."""
    labels = [_label(m, s) for m, s in job_order(cfg)]
    return pd.DataFrame([row for label in labels if label in results for row in results[label].metrics])


#: Columns of ``eval_images.csv``: one row per (model, split, image). ``image`` is the index in the split's
#: prompt-major batch; every model sees the same prompt and noise at the same index, so rows pair across models.
EVAL_IMAGE_COLUMNS = ("model", "method", "seed", "split", "image", "prompt", "reward", "bertscore", "judge_all_ok")


def write_eval_images(table: pd.DataFrame, out: Path) -> Path:
    """Write the per-image evaluation scores (what the bootstrap intervals of :mod:`b2lib.stats` resample)."""
    cols = [c for c in EVAL_IMAGE_COLUMNS if c in table.columns]
    path = Path(out) / "eval_images.csv"
    _write_result(path, table[cols].to_csv(index=False))
    return path


def _run_worker(cfg: RunConfig, threads: int) -> tuple[str, float]:
    torch.set_num_threads(threads)
    result = run_experiment(cfg, progress=False)
    return str(result.out), result.wall_s


def run_many(
    configs: list[RunConfig],
    workers: int = 1,
    threads: int | None = None,
    skip_done: bool = True,
    progress: bool = True,
) -> list[Path]:
    """Run independent experiments (e.g. one per template x seed), ``workers`` at a time in separate processes.

    Why processes: the embedded world's models are small, so on a few CPU cores several single-threaded runs use the
    cores better than one run with several threads. Each run writes its own ``output_dir`` (required); a run whose
    ``summary.json`` exists is skipped when ``skip_done`` (so re-running a notebook after a crash only does what is
    missing, and an unfinished run resumes from its checkpoints). ``threads``: torch threads per worker (default:
    cores // workers). Returns the output folders, in the order of ``configs``.
    """
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from tqdm.auto import tqdm

    outs = []
    for cfg in configs:
        if not cfg.output_dir:
            raise ValueError("run_many needs an output_dir per RunConfig, so runs do not overwrite each other.")
        outs.append(Path(cfg.output_dir))
    if len(set(outs)) != len(outs):
        raise ValueError("Two RunConfigs share an output_dir; give each run its own folder.")
    for cfg, o in zip(configs, outs):  # a finished folder is only skipped if it holds the run asked for
        if skip_done and (o / "summary.json").exists() and (o / "run.json").exists():
            from .rundir import check_fingerprint

            check_fingerprint(o, cfg.settings())
    todo = [c for c, o in zip(configs, outs) if not (skip_done and (o / "summary.json").exists())]
    threads = threads or max(1, (os.cpu_count() or 1) // max(1, workers))
    bar = tqdm(total=len(todo), desc="runs", disable=not progress)
    if workers <= 1:
        for cfg in todo:
            _run_worker(cfg, threads)
            bar.update(1)
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_run_worker, cfg, threads): cfg for cfg in todo}
            for fut in as_completed(futures):
                fut.result()  # re-raise a failed run's error here
                bar.update(1)
    bar.close()
    return outs
