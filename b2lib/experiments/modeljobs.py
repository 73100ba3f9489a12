"""One model of an experiment, start to end: the base model evaluated, or one method x seed trained, exported and
evaluated. :mod:`b2lib.experiments.experiment` runs these jobs one after another in its own process, or
``RunConfig.workers`` at a time in separate processes.

Why processes: the embedded world's models are small, so a second torch thread does not speed a forward (on 2 CPU
cores the main job's DDPO took 6.0 min at one thread beside B², 9.0 min alone at two). Two models side by side, one
thread each, more than halve the main job's wall time. Each job loads its own models, so a job's numbers are the
same in either way of running it (at the same thread count; rounding differs between thread counts, as between
machines).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch

from b2lib.evaluation.generate import evaluate_prompts
from b2lib.experiments.evalsettings import eval_settings, stage_metric_fn
from b2lib.experiments.pool import default_threads, run_in_processes
from b2lib.experiments.presets import load_models
from b2lib.experiments.resolve import ResolvedRun, job_order
from b2lib.experiments.runconfig import BASE, RunConfig, job_label
from b2lib.rewards.base import Negated
from b2lib.training.checkpoint import latest_checkpoint, save_lora, save_unet
from b2lib.training.trainer import RLTrainer
from b2lib.utils.progress import RunProgress, clock
from b2lib.world.evaluation import JUDGE_REWARDS

__all__ = ["ModelResult", "RunContext", "BASE", "job_order", "resolve_workers", "run_jobs_parallel"]

#: the job label and method of the untrained model


@dataclass
class ModelResult:
    """What one job hands back: rows of ``eval.csv`` (one per split), per-image tables, the first split's images (for
    the sample grid) and the trainer's per-stage log (rows of ``metrics.csv``; empty for the base model)."""

    label: str
    rows: list[dict] = field(default_factory=list)
    per_image: list[pd.DataFrame] = field(default_factory=list)
    images: torch.Tensor | None = None
    metrics: list[dict] = field(default_factory=list)
    wall_s: float = 0.0


@dataclass
class RunContext:
    """The models, rewards and prompts every job of one run shares, loaded once per process."""

    run: ResolvedRun
    acc: object  # accelerate.Accelerator
    out: Path
    report: RunProgress
    pipe: object  # the base pipeline (evaluated as "base"; each training loads fresh weights)
    reward: object  # CLIPScore: every evaluation's reward
    train_reward: object  # what the RL optimises (cfg.reward, cfg.reward_sign)
    eval_kwargs: dict
    split_prompts: dict[str, list[str]]
    train_prompts: list[str]
    metric_fn: object

    @property
    def cfg(self) -> RunConfig:
        return self.run.cfg

    @classmethod
    def build(cls, run: ResolvedRun, acc, out: Path, report: RunProgress) -> RunContext:
        cfg, device = run.cfg, str(acc.device)
        with report.quiet_loading():
            pipe, reward = load_models(run.scale, cfg.model_dir, cfg.clip_dir, device=device)
            eval_kwargs = eval_settings(run, device, bertscore=cfg.bertscore and acc.is_main_process)
        train_reward = reward
        if cfg.reward != "clip":  # a judge reward of the sparsity axis (b2lib.world.evaluation.JUDGE_REWARDS)
            train_reward = JUDGE_REWARDS[cfg.reward]
        if cfg.reward_sign == -1:
            train_reward = Negated(train_reward)
        return cls(
            run,
            acc,
            out,
            report,
            pipe,
            reward,
            train_reward,
            eval_kwargs,
            run.split_prompts,
            run.train_prompts,
            stage_metric_fn(run.scale.world),
        )

    def evaluate(self, pipe, result: ModelResult, method: str, seed) -> None:
        """Score ``pipe`` on every evaluation split into ``result`` (same prompts and noise for every model)."""
        cfg = self.cfg
        for split in cfg.eval_splits:
            prompts = self.split_prompts[split]
            n = cfg.n_per_prompt(len(prompts))
            self.report.evaluation_started(result.label, split, n * len(prompts))
            start = time.perf_counter()
            table, summary, imgs = evaluate_prompts(pipe, prompts, self.reward, n_per_prompt=n, **self.eval_kwargs)
            self.report.evaluation_done(result.label, split, summary, time.perf_counter() - start)
            result.rows.append({"model": result.label, "method": method, "seed": seed, "split": split, **summary})
            result.per_image.append(
                table.assign(model=result.label, method=method, seed=seed, split=split, image=range(len(table)))
            )
            if split == cfg.eval_splits[0]:
                result.images = imgs

    def model(self, method: str, seed: int | None = None) -> ModelResult:
        """The job ``method`` x ``seed`` (``method=BASE``: evaluate the untrained model). Training resumes from the
        run folder's checkpoints; only the main process exports and evaluates."""

        t0 = time.perf_counter()
        main = self.acc.is_main_process
        if method == BASE:
            result = ModelResult(BASE)
            if main:
                self.evaluate(self.pipe, result, BASE, None)
            result.wall_s = time.perf_counter() - t0
            return result
        cfg, label = self.cfg, job_label(method, seed)
        result = ModelResult(label)
        with self.report.quiet_loading():
            pipe, _ = load_models(
                self.run.scale, cfg.model_dir, cfg.clip_dir, device=str(self.acc.device)
            )  # fresh base
        # tqdm bars on a terminal; elsewhere (a notebook, papermill, a log file) the report's lines instead
        tcfg = replace(self.run.trainers[label], progress=self.report.enabled and self.report.bars)
        trainer = RLTrainer(
            pipe, self.train_reward, self.train_prompts, tcfg, accelerator=self.acc, metric_fn=self.metric_fn
        )
        resume = latest_checkpoint(self.out / label) if cfg.resume else None
        on_stage = self.report.training(label, tcfg.num_stages, int(resume.name.split("_")[-1]) if resume else 0)
        trainer.train(checkpoint_dir=self.out / label / "checkpoints", resume_from=resume, on_stage=on_stage)
        self.acc.wait_for_everyone()
        result.metrics = [{"method": method, "seed": seed, **m} for m in trainer.log]
        if main:
            if cfg.save_lora and tcfg.use_lora:
                save_lora(pipe, self.out / label / "lora")
            elif cfg.save_lora:
                save_unet(pipe, self.out / label / "unet")  # a full fine-tune: UNet2DConditionModel.from_pretrained
            self.evaluate(pipe, result, method, seed)
        result.wall_s = time.perf_counter() - t0
        return result


def resolve_workers(cfg: RunConfig, processes: int, device: str) -> int:
    """How many job processes ``cfg`` gets: ``cfg.workers``, or with 0 one per job up to the CPU cores on a CPU. One
    under ``accelerate launch`` (the processes already share each model's work) or when there is one job."""
    jobs = len(job_order(cfg))
    if processes > 1 or jobs == 1:
        return 1
    if cfg.workers == 0:
        return 1 if device != "cpu" else max(1, min(jobs, os.cpu_count() or 1))
    return min(cfg.workers, jobs)


def _job_worker(run: ResolvedRun, out: str, method: str, seed, log: str) -> ModelResult:
    """A job in a fresh process (its torch threads set by :func:`b2lib.experiments.pool.run_in_processes`): its own
    models and accelerator; its progress lines go to ``log``."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=(run.cfg.device or run.scale.device) == "cpu")
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1) as stream, contextlib.redirect_stderr(stream):
        report = RunProgress(True, bars=False)
        return RunContext.build(run, acc, Path(out), report).model(method, seed)


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def run_jobs_parallel(run: ResolvedRun, out: Path, workers: int, report: RunProgress, on_done) -> None:
    """Run every job of ``run`` ``workers`` at a time in spawned processes (cores // workers threads each), longest
    first (training jobs in order, the base evaluation last), calling ``on_done(result)`` as each finishes. Each job
    logs to ``<out>/logs/<label>.log``; its latest line is relayed every ``report.every_s`` seconds, so a notebook
    sees the run move. A failed or interrupted job stops the others at once (their checkpoints stay: a rerun
    resumes them)."""
    jobs = list(run.jobs)
    jobs = jobs[1:] + jobs[:1]  # the base evaluation is the shortest job: last, so it fills a gap
    threads = default_threads(workers)
    labels = [job_label(method, seed) for method, seed in jobs]
    logs = [out / "logs" / f"{label}.log" for label in labels]
    report.say(
        f"{len(jobs)} models in {workers} processes, {threads} torch thread(s) each; each one's progress in "
        f"{out / 'logs'}"
    )
    relayed: dict[int, str] = {}  # the last line relayed per job

    def finished(i: int, result: ModelResult) -> None:
        report.say(f"{labels[i]}: done in {clock(result.wall_s)}")
        on_done(result)

    def relay(pending: list[int]) -> None:
        for i in pending:
            line = _last_line(logs[i])
            if line and line != relayed.get(i):
                relayed[i] = line
                report.say(line)

    tasks = [(run, str(out), method, seed, str(log)) for (method, seed), log in zip(jobs, logs)]
    run_in_processes(_job_worker, tasks, workers, threads, finished, every_s=report.every_s, on_wait=relay)
