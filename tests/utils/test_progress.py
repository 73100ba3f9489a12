"""A long run's progress lines: the clock's format, the first and last stage always said, throttling between them."""

from b2lib.utils.progress import RunProgress, clock


def test_clock_is_short():
    assert clock(754.2) == "12m34s" and clock(3725) == "1h02m" and clock(-3) == "0m00s"


def test_training_lines_say_first_and_last_stage_and_throttle_between(capsys):
    report = RunProgress(every_s=3600)
    on_stage = report.training("b2_seed0", total=5)
    for stage in range(5):
        on_stage({"stage": stage, "reward_mean": 0.5})
    lines = capsys.readouterr().err.strip().split("\n")
    assert lines[0] == "b2_seed0: training 5 stages"
    assert [line.split(" · ")[0] for line in lines[1:]] == ["b2_seed0: stage 1/5", "b2_seed0: stage 5/5"]


def test_resume_and_evaluation_lines_and_silence(capsys):
    report = RunProgress()
    report.training("ddpo_seed1", total=4, start=4)
    report.training("ddpo_seed1", total=4, start=2)
    report.evaluation_done("base", "test", {"reward_mean": 0.78, "judge_all_ok": 0.277}, 65)
    err = capsys.readouterr().err
    assert "all 4 stages done (checkpoint)" in err and "resuming at stage 3/4" in err
    assert "base: evaluated on test in 1m05s: reward 0.7800, judge 0.277" in err
    RunProgress(enabled=False).say("nothing")
    assert capsys.readouterr().err == ""
