"""The one worker pool under run_jobs_parallel and run_many: spawned workers with their torch threads set, results
handed back by task index, a failed task's error raised in the parent. The tasks are builtins (a spawned worker
imports its function by name, and the suite's test files are not importable by name)."""

import operator

import pytest

from b2lib.experiments.pool import default_threads, run_in_processes


def test_results_come_back_by_task_index_from_workers_with_their_threads():
    import torch

    got, waits = {}, []
    tasks = [(i, 3) for i in range(5)]
    run_in_processes(operator.pow, tasks, 2, 1, got.__setitem__, every_s=0.05, on_wait=waits.append)
    assert got == {i: i**3 for i in range(5)}
    assert waits and waits[-1] == [] and all(w == sorted(w) for w in waits)  # pending tasks, in task order
    threads = {}
    run_in_processes(torch.get_num_threads, [()] * 2, 2, 3, threads.__setitem__)
    assert threads == {0: 3, 1: 3}


@pytest.mark.parametrize("stop_on_error", [True, False])
def test_a_failed_task_raises_its_error_in_the_parent(stop_on_error):
    done = {}
    with pytest.raises(ValueError, match="invalid literal"):
        run_in_processes(int, [("1",), ("x",)], 2, 1, done.__setitem__, stop_on_error=stop_on_error)
    assert set(done) <= {0}


def test_default_threads_share_the_cores():
    import os

    assert default_threads(1) == (os.cpu_count() or 1) and default_threads(0) == default_threads(1)
    assert default_threads(10_000) == 1
