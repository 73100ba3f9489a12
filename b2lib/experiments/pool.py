"""One pool of spawned worker processes, under both ways of running work side by side: the jobs of one run
(:func:`b2lib.experiments.modeljobs.run_jobs_parallel`) and whole runs (:func:`b2lib.experiments.experiment.run_many`).

Why spawned processes: the embedded world's models are small, so on a few CPU cores several single-threaded workers
use the cores better than one process with several threads; ``spawn`` (not ``fork``) gives each worker a clean torch
(no inherited thread pools or locks) and behaves the same on every platform.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Any, Callable, Sequence

import torch

__all__ = ["default_threads", "run_in_processes"]


def default_threads(workers: int) -> int:
    """Torch threads per worker: the CPU cores shared evenly, at least one."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _call(threads: int, fn: Callable[..., Any], args: tuple) -> Any:
    """A task in a worker: torch's threads set first (before any model loads), then ``fn(*args)``."""
    torch.set_num_threads(threads)
    return fn(*args)


def run_in_processes(
    fn: Callable[..., Any],
    tasks: Sequence[tuple],
    workers: int,
    threads: int,
    on_done: Callable[[int, Any], None],
    every_s: float | None = None,
    on_wait: Callable[[list[int]], None] | None = None,
    stop_on_error: bool = True,
) -> None:
    """Run ``fn(*task)`` for every task, ``workers`` at a time in spawned processes of ``threads`` torch threads each,
    calling ``on_done(index, result)`` in the parent as each finishes (in the order they finish).

    ``on_wait(pending indices)``: called after each wait, at the latest every ``every_s`` seconds (``None``: only when
    a task finishes), so a caller can relay its workers' progress. A failed task's error is raised here, with its
    traceback; ``stop_on_error`` then stops the other workers at once (their checkpoints stay), otherwise the tasks
    already submitted run to their end before the error is raised.
    """
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
    try:
        pending = {pool.submit(_call, threads, fn, tuple(task)): i for i, task in enumerate(tasks)}
        while pending:
            done, _ = wait(pending, timeout=every_s, return_when=FIRST_COMPLETED)
            for fut in done:
                on_done(pending.pop(fut), fut.result())
            if on_wait is not None:
                on_wait(list(pending.values()))  # in task order
    except BaseException:
        if stop_on_error:  # without this a failure would surface only after the other tasks ran to their end
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
        else:
            pool.shutdown()
        raise
    pool.shutdown()
