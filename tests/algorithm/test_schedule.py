import pytest

from b2lib.algorithm.schedule import ProgressiveSchedule


def test_reference_preset_values():
    s = ProgressiveSchedule.reference()
    assert (s.num_stages, s.start, s.end, s.num_steps) == (100, 14, 20, 20)
    assert s.trained_steps == [14 + (i * 7) // 100 for i in range(100)]
    assert s(0) == 14 and s(99) == 20
    assert s.interval(0) == (6, 20) and s.interval(99) == (0, 20)
    # equal plateaus: each size 14..20 holds for 14 or 15 stages
    counts = [s.trained_steps.count(v) for v in range(14, 21)]
    assert sum(counts) == 100 and min(counts) >= 14 and max(counts) <= 15


@pytest.mark.parametrize(
    "n,start,end,steps", [(100, 14, 20, 20), (2, 14, 20, 20), (3, 1, 10, 10), (7, 2, 8, 10), (1, 3, 5, 5)]
)
def test_monotone_and_covers_to_end(n, start, end, steps):
    s = ProgressiveSchedule(n, start, end, steps)
    sp = s.trained_steps
    assert len(sp) == n
    assert all(a <= b for a, b in zip(sp, sp[1:]))
    assert sp[-1] == end and (n == 1 or sp[0] == start)
    assert all(start <= v <= end for v in sp)


def test_full_schedule_trains_whole_chain():
    assert ProgressiveSchedule.full(5, 20).trained_steps == [20] * 5


def test_bad_input():
    with pytest.raises(ValueError, match="longer than the chain"):
        ProgressiveSchedule(10, 14, 21, 20)
    with pytest.raises(ValueError, match="start >= 1 and end >= 1"):
        ProgressiveSchedule(10, 0, 14, 20)
    with pytest.raises(ValueError, match="outside"):
        ProgressiveSchedule.reference()(100)


@pytest.mark.parametrize("stages", [1, 3, 7, 20, 100])
def test_forward_window_mirrors_the_backward_schedule(stages):
    """start > end: the interval's first step moves forward (MixGRPO's sliding window), the mirror image of B²'s
    growth: same plateaus, from start down to end, monotone."""
    forward = ProgressiveSchedule(stages, 20, 14, 20).trained_steps
    backward = ProgressiveSchedule(stages, 14, 20, 20).trained_steps
    assert forward == [34 - s for s in backward]
    assert forward[-1] == 14 and all(a >= b for a, b in zip(forward, forward[1:]))
