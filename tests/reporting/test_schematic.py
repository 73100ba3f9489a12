"""The front page's schematic is drawn from the schedule: its geometry equals the schedule's intervals."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from b2lib.algorithm.schedule import ProgressiveSchedule  # noqa: E402
from b2lib.reporting.schematic import b2_schematic, stage_rows  # noqa: E402


def test_rows_follow_the_schedule_backwards():
    sched = ProgressiveSchedule(num_stages=120, start=10, end=20, num_steps=20)
    rows = stage_rows(sched, window=1, shown=6)
    assert rows[0] == (0, 10, 11, 20)  # first stage: branch at T - s = 10, one trained step
    assert rows[-1] == (119, 0, 1, 20)  # last stage: branch at x_T
    splits = [r[1] for r in rows]
    assert splits == sorted(splits, reverse=True)  # the branch point moves towards the noise
    for k, split, end, _ in rows:
        assert (split, 20) == sched.interval(k) and end == split + 1


def test_without_a_window_the_whole_interval_is_trained():
    sched = ProgressiveSchedule.reference()  # 14 -> 20 of 20 over 100 stages
    for k, split, end, T in stage_rows(sched, window=None, shown=4):
        assert end == T and T - split == sched(k)


def test_figure_and_errors():
    fig = b2_schematic(ProgressiveSchedule(8, 2, 4, 4), branches=2, window=None)
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="branches"):
        b2_schematic(ProgressiveSchedule(8, 2, 4, 4), branches=0)
    with pytest.raises(ValueError, match="shown"):
        stage_rows(ProgressiveSchedule(8, 2, 4, 4), None, shown=0)
