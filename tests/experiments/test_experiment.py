"""RunConfig: the binary judge reward option and the evaluation size (no model is loaded there); a long run's progress
lines (one tiny run of the embedded world)."""

import re

import pandas as pd
import pytest
import torch

from b2lib.experiments.experiment import RunConfig, run_many


def test_eval_images_sets_images_per_prompt():
    cfg = RunConfig()
    assert cfg.n_per_prompt(16) == 32 and cfg.n_per_prompt(30) == 18 and cfg.n_per_prompt(128) == 4
    assert all(cfg.n_per_prompt(n) * n >= 512 for n in (16, 30, 128))
    assert RunConfig(eval_n_per_prompt=3).n_per_prompt(16) == 3


def test_reward_option_is_validated():
    assert RunConfig(reward="judge").reward == "judge"
    with pytest.raises(ValueError, match="'clip'"):
        RunConfig(reward="bert")
    with pytest.raises(ValueError, match="embedded"):
        RunConfig(reward="judge", preset="paper")


def test_judge_reward_is_binary_and_agrees_with_the_judge():
    import numpy as np

    from b2lib.world.evaluation import judge_reward
    from b2lib.world.prompts import sample_scene
    from b2lib.world.scenes import caption, render_batch

    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, "counting") for _ in range(6)]
    images = torch.from_numpy(render_batch(scenes)).permute(0, 3, 1, 2).float() / 255.0
    right = judge_reward(images, [caption(s) for s in scenes])
    wrong = judge_reward(images, [caption(s) for s in scenes[1:] + scenes[:1]])
    assert set(right.tolist()) | set(wrong.tolist()) <= {0.0, 1.0}
    assert right.mean() > wrong.mean() and right.mean() >= 0.8


def test_sparsity_axis_rewards_are_ordered_and_agree_with_the_judge():
    import numpy as np

    from b2lib.experiments.runconfig import REWARDS
    from b2lib.world.evaluation import JUDGE_REWARDS, STRICT_SHAPE_FIT, judge_graded_reward, judge_strict_reward
    from b2lib.world.judge import judge_batch
    from b2lib.world.prompts import sample_scene
    from b2lib.world.scenes import caption, render_batch

    assert list(REWARDS) == ["clip", *JUDGE_REWARDS] and RunConfig(reward="judge_strict", preset="flow")
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, t) for t in ("counting", "binding", "relation") for _ in range(4)]
    images = torch.from_numpy(render_batch(scenes)).permute(0, 3, 1, 2).float() / 255.0
    prompts = [caption(s) for s in scenes[1:] + scenes[:1]]  # shifted: some attributes right, some wrong
    results = judge_batch(images, prompts)
    graded, binary = judge_graded_reward(images, prompts), JUDGE_REWARDS["judge"](images, prompts)
    strict = judge_strict_reward(images, prompts)
    for r, g, b, s in zip(results, graded.tolist(), binary.tolist(), strict.tolist()):
        checks = [v for v in (r.count_ok, r.colour_ok, r.shape_ok, r.binding_ok, r.relation_ok) if v is not None]
        assert g == pytest.approx(sum(checks) / len(checks))  # the fraction right, by hand
        fit_ok = min((d.shape_fit for d in r.objects), default=0.0) >= STRICT_SHAPE_FIT
        assert b == float(r.all_ok) and s == float(r.all_ok and fit_ok)
        assert s <= b <= g  # each reward at most the denser one: the axis only gets sparser
    assert 0 < graded.mean() < 1 and len(set(graded.tolist())) > 2  # graded, not binary


def test_sign_control_and_device_options_are_validated():
    assert RunConfig(reward_sign=-1).reward_sign == -1
    with pytest.raises(ValueError, match="reward_sign"):
        RunConfig(reward_sign=0)
    with pytest.raises(ValueError, match="device"):
        RunConfig(device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no GPU"):
            RunConfig(device="cuda")


def test_negated_reward_flips_the_sign():
    from b2lib.rewards.base import Negated

    images = torch.rand(3, 3, 8, 8)
    reward = lambda ims, prompts: ims.mean((1, 2, 3))  # noqa: E731
    assert torch.equal(Negated(reward)(images, ["a"] * 3), -reward(images, ["a"] * 3))


def test_run_many_rejects_clashing_folders(tmp_path):
    with pytest.raises(ValueError, match="output_dir"):
        run_many([RunConfig()])
    with pytest.raises(ValueError, match="share an output_dir"):
        run_many([RunConfig(output_dir=str(tmp_path)), RunConfig(output_dir=str(tmp_path))])


def test_bad_run_config():
    with pytest.raises(ValueError, match=r"methods: unknown \['ppo'\]"):
        RunConfig(methods=("ppo",))
    with pytest.raises(ValueError, match="template: unknown 'animals'"):
        RunConfig(template="animals")
    with pytest.raises(ValueError, match="preset: unknown 'huge'"):
        RunConfig(preset="huge")


def test_a_run_reports_its_progress_in_a_few_lines_on_stderr(tmp_path, monkeypatch, capsys):
    """What ``papermill --log-output`` streams from the main job's one long cell: plain lines (no tqdm frames, which
    in a notebook are widgets papermill cannot stream), the first and last stage of each model, rate-limited between
    (stage 2 of 3 falls inside PROGRESS_EVERY_S), and each evaluation's start and end."""
    import b2lib.experiments.experiment as experiment
    import b2lib.utils.progress as progress

    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 1e9)
    cfg = RunConfig(
        methods=("b2",),
        stages=3,
        images_per_stage=4,
        branches=2,
        eval_images=2,
        eval_max_prompts=1,
        bertscore=False,
        grid_prompts=0,
        output_dir=str(tmp_path),
        overrides={"num_steps": 2, "split_start": 1},
    )
    experiment.run_experiment(cfg, progress=True)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith(("base:", "b2_seed0:", "run finished"))]
    assert [line.split(" · ")[0].split(" in ")[0] for line in lines] == [
        "base: evaluating on test (2 images)",
        "base: evaluated on test",
        "b2_seed0: training 3 stages",
        "b2_seed0: stage 1/3",
        "b2_seed0: stage 3/3",
        "b2_seed0: evaluating on test (2 images)",
        "b2_seed0: evaluated on test",
        "run finished",
    ]
    assert re.fullmatch(r"b2_seed0: stage 3/3 · reward -?\d\.\d{4} · \d+m\d\ds elapsed · ETA 0m00s", lines[4])
    assert re.fullmatch(r"base: evaluated on test in \d+m\d\ds: reward -?\d\.\d{4}, judge \d\.\d{3}", lines[1])
    assert "\r" not in err and "it/s" not in err  # no tqdm bars (trainer, diffusers, transformers)
    assert lines[-1] == lines[-1].split(": results in ")[0] + f": results in {tmp_path}"
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics["stage"]) == [0, 1, 2]  # the metrics file is as before: one row per stage

    experiment.run_experiment(cfg, progress=True)  # rerun: resumes from the last checkpoint, trains nothing
    assert "b2_seed0: all 3 stages done (checkpoint); exporting and evaluating" in capsys.readouterr().err


def test_progress_lines_are_rate_limited_and_silent_when_off(monkeypatch, capsys):
    """One line per ``every_s`` seconds at most, besides the first and last stage; the ETA is the mean stage time of
    this process times the stages left (a resumed run does not count the stages its checkpoint held)."""
    import b2lib.utils.progress as progress

    clock = iter([0.0, 1.0, 5.0, 11.0, 12.0, 30.0])  # the announcement, then stages 5..9 (5 done in a checkpoint)
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    on_stage = progress.RunProgress(every_s=10).training("b2_seed0", total=9, start=4)
    for stage in range(4, 9):
        on_stage({"stage": stage, "reward_mean": 0.5})
    monkeypatch.undo()
    assert capsys.readouterr().err.splitlines() == [
        "b2_seed0: resuming at stage 5/9 from its checkpoint",
        "b2_seed0: stage 5/9 · reward 0.5000 · 0m01s elapsed · ETA 0m04s",
        "b2_seed0: stage 7/9 · reward 0.5000 · 0m11s elapsed · ETA 0m07s",
        "b2_seed0: stage 9/9 · reward 0.5000 · 0m30s elapsed · ETA 0m00s",
    ]
    off = progress.RunProgress(enabled=False)
    off.training("b2_seed0", total=9)({"stage": 8, "reward_mean": 0.5})
    off.evaluation_started("base", "test", 512)
    assert capsys.readouterr().err == ""


def test_models_trained_side_by_side_in_processes_give_the_numbers_of_one_process(tmp_path):
    """``RunConfig.workers``: the main job's models train and evaluate in separate processes. Each job loads its own
    models, so at the same thread count the tables and LoRAs equal one process's, bit for bit, rows in the same order;
    the fingerprint ignores ``workers`` (a run started one way resumes the other)."""
    import os

    from safetensors.torch import load_file

    from b2lib.experiments.experiment import run_experiment

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))  # what each of two workers gets
    base = dict(
        methods=("ddpo", "b2"),
        stages=2,
        images_per_stage=4,
        branches=2,
        eval_images=2,
        eval_max_prompts=1,
        bertscore=False,
        grid_prompts=1,
        overrides={"num_steps": 2, "split_start": 1},
    )
    one = run_experiment(RunConfig(**base, output_dir=str(tmp_path / "one")), progress=False)
    two = run_experiment(RunConfig(**base, workers=2, output_dir=str(tmp_path / "two")), progress=True)
    timing = [c for c in one.metrics if c.endswith("_s")]
    pd.testing.assert_frame_equal(one.metrics.drop(columns=timing), two.metrics.drop(columns=timing))
    pd.testing.assert_frame_equal(one.evals, two.evals)
    assert list(two.images) == ["base", "ddpo_seed0", "b2_seed0"] and all(
        torch.equal(one.images[k], two.images[k]) for k in one.images
    )
    for label in ("ddpo_seed0", "b2_seed0"):
        a, b = (load_file(str(r.out / label / "lora" / "pytorch_lora_weights.safetensors")) for r in (one, two))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "two" / "logs" / "b2_seed0.log").read_text().count("b2_seed0: training 2 stages") == 1
    summary = pd.read_json(tmp_path / "two" / "summary.json", typ="series")
    assert summary["workers"] == 2 and summary["processes"] == 1
    # the same run asked for in one process finds the folder finished by two: same fingerprint, nothing retrained
    again = run_experiment(RunConfig(**base, output_dir=str(tmp_path / "two")), progress=False)
    pd.testing.assert_frame_equal(again.evals, two.evals)


def test_workers_resolve_to_the_cores_on_a_cpu_and_to_one_elsewhere():
    import os

    from b2lib.experiments.modeljobs import job_order, resolve_workers

    cfg = RunConfig(methods=("ddpo", "b2"), seeds=(0, 1), workers=0)
    assert job_order(cfg) == [("base", None), ("ddpo", 0), ("b2", 0), ("ddpo", 1), ("b2", 1)]
    assert resolve_workers(cfg, 1, "cpu") == min(5, os.cpu_count() or 1)
    assert resolve_workers(cfg, 1, "cuda") == 1 and resolve_workers(cfg, 4, "cpu") == 1  # a GPU; accelerate launch
    assert resolve_workers(RunConfig(workers=8), 1, "cpu") == 3  # never more processes than models
    with pytest.raises(ValueError, match="workers"):
        RunConfig(workers=-1)
    from b2lib.train import config_from_args

    script = config_from_args(["--workers", "2", "--setup", "paper"])[0]  # the accelerate script takes it too
    assert script.workers == 2 and script.settings() == RunConfig().settings()  # not part of the fingerprint


def test_run_many_reports_each_finished_folder_and_skips_it_next_time(tmp_path):
    """``on_done`` sees each run's folder as it finishes (a queue commits it there); a second call finds the folder
    finished and neither runs nor reports it again."""
    cfg = RunConfig(
        methods=("b2",),
        stages=1,
        images_per_stage=4,
        branches=2,
        eval_images=2,
        eval_max_prompts=1,
        bertscore=False,
        grid_prompts=0,
        save_lora=False,
        output_dir=str(tmp_path / "one"),
        overrides={"num_steps": 2, "split_start": 1},
    )
    seen = []
    run_many([cfg], progress=False, on_done=seen.append)
    assert seen == [tmp_path / "one"] and (tmp_path / "one" / "summary.json").is_file()
    run_many([cfg], progress=False, on_done=seen.append)
    assert seen == [tmp_path / "one"]
