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


# ---------------------------------------------------------------------------- the branch point chosen by the signal
def _run(chooser, share):
    """The trained steps a whole run takes when stage k's groups have informative share ``share(k, depth)``."""
    history = []
    for stage in range(chooser.planned.num_stages):
        steps = chooser(stage, history)
        history.append((steps, share(stage, steps)))
    return [s for s, _ in history]


def test_a_share_that_never_falls_below_the_target_keeps_the_backward_schedule():
    from b2lib.algorithm.schedule import SignalChosenBranchPoint

    planned = ProgressiveSchedule(num_stages=30, start=10, end=20, num_steps=20)
    chooser = SignalChosenBranchPoint(planned, target=0.5, window=2)
    assert _run(chooser, lambda k, s: 1.0) == planned.trained_steps
    assert _run(chooser, lambda k, s: 0.5) == planned.trained_steps  # at the target is enough


def test_a_flat_share_moves_the_branch_point_to_x_t_one_step_per_window():
    from b2lib.algorithm.schedule import SignalChosenBranchPoint

    planned = ProgressiveSchedule(num_stages=40, start=10, end=20, num_steps=20)
    for window in (1, 2, 3):
        chooser = SignalChosenBranchPoint(planned, target=0.3, window=window)
        steps = _run(chooser, lambda k, s: 0.0)
        # closed form: 10 + floor(k / window) until the chain's length, never below the plan
        assert steps == [max(p, min(20, 10 + k // window)) for k, p in enumerate(planned.trained_steps)]
        assert steps[-1] == 20 and chooser.deepest() == steps
        assert all(b >= a for a, b in zip(steps, steps[1:]))


def test_the_branch_point_deepens_only_where_the_share_falls_and_never_comes_back():
    from b2lib.algorithm.schedule import SignalChosenBranchPoint

    planned = ProgressiveSchedule(num_stages=12, start=10, end=10, num_steps=20)  # a fixed plan: 10 trained steps
    chooser = SignalChosenBranchPoint(planned, target=0.5, window=2)
    # flat at 10 and 11 trained steps, informative from 12 on: it stops at 12 and stays there
    steps = _run(chooser, lambda k, s: 0.0 if s < 12 else 0.9)
    assert steps == [10, 10, 11, 11, 12] + [12] * 7
    # a share below the target in one stage of the window is averaged with the other
    assert chooser(2, [(10, 0.2), (10, 0.9)]) == 10 and chooser(2, [(10, 0.2), (10, 0.7)]) == 11
    # a stage at an earlier depth does not count towards the current depth's window
    assert chooser(3, [(10, 0.0), (11, 0.0)]) == 11
    # the depth never shrinks, even when the plan is shallower than the last stage's
    assert chooser(5, [(14, 1.0)]) == 14


def test_informative_history_reads_a_trainers_stage_log_and_bad_settings_name_the_fix():
    import pytest

    from b2lib.algorithm.schedule import SignalChosenBranchPoint, informative_history

    log = [{"split_step": 10, "groups": 8, "flat_groups": 6}, {"split_step": 11, "groups": 0, "flat_groups": 0}]
    assert informative_history(log) == [(10, 0.25)]
    planned = ProgressiveSchedule(num_stages=4, start=10, end=20, num_steps=20)
    with pytest.raises(ValueError, match="target"):
        SignalChosenBranchPoint(planned, target=0.0)
    with pytest.raises(ValueError, match="window"):
        SignalChosenBranchPoint(planned, target=0.5, window=0)
    with pytest.raises(ValueError, match="start <= end"):
        SignalChosenBranchPoint(ProgressiveSchedule(4, 20, 10, 20), target=0.5)
