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
import json
import time
from dataclasses import asdict, dataclass
from os import cpu_count
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from b2lib.experiments.evalsettings import eval_settings, eval_split_prompts
from b2lib.experiments.modeljobs import ModelResult, RunContext, resolve_workers, run_jobs_parallel
from b2lib.experiments.pool import default_threads, run_in_processes
from b2lib.experiments.resolve import ResolvedRun, resolve
from b2lib.experiments.runconfig import METHODS, ConfigError, RunConfig, job_label
from b2lib.utils.paths import code_version, results_dir
from b2lib.utils.progress import RunProgress, clock, terminal
from b2lib.utils.rundir import (
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


#: what rerunning a run does after its result files failed to write (the trained models are safe in checkpoints)
RESULTS_RERUN = (
    "the models trained so far are checkpointed, so a rerun resumes them at their last stage and evaluates again"
)


def _write_result(path: Path, text: str) -> None:
    """Write a result file atomically (a full disk leaves the old file or none, never a truncated table), turning a
    full disk into a :class:`~b2lib.utils.rundir.DiskFullError` that names the file and the fix."""
    with disk_full_guard(path, "run results", RESULTS_RERUN, len(text.encode())):
        write_text_atomic(path, text)


def run_experiment(cfg: RunConfig, progress: bool = True, accelerator=None) -> RunResult:
    """Train and evaluate as ``cfg`` says. Under ``accelerate launch`` every process trains (sampling split over
    processes, gradients synchronised); evaluation and files are the main process's job."""
    from accelerate import Accelerator

    t0 = time.perf_counter()
    out = Path(cfg.output_dir) if cfg.output_dir else results_dir(cfg.run_name)
    prepare_output_dir(out)  # a read-only or full output folder stops here, before any model loads
    run = resolve(cfg)  # every lookup of the run, once: handed down from here
    acc = accelerator or Accelerator(cpu=(cfg.device or run.scale.device) == "cpu")
    main = acc.is_main_process
    with RunLock(out) if main else contextlib.nullcontext():
        if main:
            with not_writable_guard(out, "nothing was trained yet"):
                if not cfg.resume:
                    moved = move_aside(out)
                    if moved is not None:
                        print(f"resume=False: the folder's earlier content was moved to {moved}")
                check_fingerprint(out, run.settings)
                write_text_atomic(out / "config.json", json.dumps(asdict(cfg), indent=2, default=str))
        acc.wait_for_everyone()
        return _run(run, acc, out, t0, progress)


def _run(run: ResolvedRun, acc, out: Path, t0: float, progress: bool) -> RunResult:
    cfg, main = run.cfg, acc.is_main_process
    template = run.template
    eval_prompts = run.split_prompts[cfg.eval_splits[0]]
    report = RunProgress(progress and acc.is_local_main_process, bars=terminal())
    n_first = cfg.n_per_prompt(len(eval_prompts))
    eval_batch = [p for p in eval_prompts for _ in range(n_first)]
    results: dict[str, ModelResult] = {}

    def done(result: ModelResult) -> None:
        results[result.label] = result
        if main and result.metrics:  # the stage logs so far, in job order: survives a crash
            _write_result(out / "metrics.csv", _metrics_table(run, results).to_csv(index=False))

    workers = resolve_workers(cfg, acc.num_processes, acc.device.type)
    if workers > 1:
        run_jobs_parallel(run, out, workers, report, done)
    else:
        ctx = RunContext.build(run, acc, out, report)
        for method, seed in run.jobs:
            done(ctx.model(method, seed))
    ordered = [results[job_label(m, s)] for m, s in run.jobs]
    rows = [r for res in ordered for r in res.rows]
    per_image = [t for res in ordered for t in res.per_image]
    images = {res.label: res.images for res in ordered if res.images is not None}

    if main and cfg.grid_prompts:
        _save_samples(images, n_first, cfg.grid_prompts, out / "samples.safetensors")
    metrics_df, evals = _metrics_table(run, results), pd.DataFrame(rows)
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


def _metrics_table(run: ResolvedRun, results: dict[str, ModelResult]) -> pd.DataFrame:
    """The per-stage logs of the jobs finished so far, in job order (what one process would have written)."""
    labels = [job_label(m, s) for m, s in run.jobs]
    return pd.DataFrame([row for label in labels if label in results for row in results[label].metrics])


#: Columns of ``eval_images.csv``: one row per (model, split, image). ``image`` is the index in the split's
#: prompt-major batch; every model sees the same prompt and noise at the same index, so rows pair across models.
EVAL_IMAGE_COLUMNS = ("model", "method", "seed", "split", "image", "prompt", "reward", "bertscore", "judge_all_ok")


def write_eval_images(table: pd.DataFrame, out: Path) -> Path:
    """Write the per-image evaluation scores (what the bootstrap intervals of :mod:`b2lib.evaluation.stats`
    resample)."""
    cols = [c for c in EVAL_IMAGE_COLUMNS if c in table.columns]
    path = Path(out) / "eval_images.csv"
    _write_result(path, table[cols].to_csv(index=False))
    return path


def _run_worker(cfg: RunConfig) -> tuple[str, float]:
    """One run of :func:`run_many`, quiet (its progress lines would interleave with the other workers')."""
    result = run_experiment(cfg, progress=False)
    return str(result.out), result.wall_s


def run_many(
    configs: list[RunConfig],
    workers: int = 1,
    threads: int | None = None,
    skip_done: bool = True,
    progress: bool = True,
    on_done: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Run independent experiments (e.g. one per template x seed), ``workers`` at a time in separate processes.

    Why processes: the embedded world's models are small, so on a few CPU cores several single-threaded runs use the
    cores better than one run with several threads. Each run writes its own ``output_dir`` (required); a run whose
    ``summary.json`` exists is skipped when ``skip_done`` (so re-running a notebook after a crash only does what is
    missing, and an unfinished run resumes from its checkpoints). ``threads``: torch threads per worker (default:
    cores // workers). ``on_done(folder)`` is called in this process as each run finishes (a queue keeps each finished
    folder at once, e.g. commits it). Returns the output folders, in the order of ``configs``.
    """
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
            check_fingerprint(o, cfg.settings())
    todo = [c for c, o in zip(configs, outs) if not (skip_done and (o / "summary.json").exists())]
    threads = threads or default_threads(workers)
    bar = tqdm(total=len(todo), desc="runs", disable=not progress)

    def finished(i: int, _result=None) -> None:
        bar.update(1)
        if on_done is not None:
            on_done(Path(todo[i].output_dir))

    if workers <= 1:
        for i, cfg in enumerate(todo):
            torch.set_num_threads(threads)
            _run_worker(cfg)
            finished(i)
    else:  # a failed run's error is raised once every other run has finished (each run has its own folder)
        tasks = [(cfg,) for cfg in todo]
        run_in_processes(_run_worker, tasks, workers, threads, finished, stop_on_error=False)
    bar.close()
    return outs
