"""Run folders: settings fingerprint, OS lock, moving an old run aside; RunConfig validation before any model loads;
the command line's messages name the flags."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from b2lib.experiments.experiment import ConfigError, RunConfig
from b2lib.utils.rundir import RunLock, RunLockedError, RunSettingsError, check_fingerprint, fingerprint, move_aside


def test_fingerprint_ignores_key_order_and_tuple_vs_list():
    assert fingerprint({"a": 1, "b": (1, 2)}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_changed_settings_on_an_existing_folder_name_every_differing_field(tmp_path):
    first = RunConfig(template="counting", stages=4, overrides={"lr": 1e-3}).settings()
    check_fingerprint(tmp_path, first)
    check_fingerprint(tmp_path, first)  # the same settings resume
    other = RunConfig(template="binding", stages=4, overrides={"lr": 5e-4}).settings()
    with pytest.raises(RunSettingsError) as err:
        check_fingerprint(tmp_path, other)
    msg = str(err.value)
    assert "run.template: folder has 'counting', asked for 'binding'" in msg
    assert "trainer.b2_seed0.lr: folder has 0.001, asked for 0.0005" in msg
    assert "run.overrides.lr" in msg and "resume=False" in msg and "another output folder" in msg
    assert "run.stages" not in msg  # unchanged fields are not listed


def test_settings_hold_the_resolved_schedule_of_every_method_and_seed():
    s = RunConfig(seeds=(0, 1), stages=4, images_per_stage=32).settings()
    assert set(s["trainer"]) == {"ddpo_seed0", "b2_seed0", "ddpo_seed1", "b2_seed1"}
    assert s["trainer"]["b2_seed1"]["num_stages"] == 4 and s["trainer"]["b2_seed1"]["seed"] == 1
    assert "output_dir" not in s["run"] and "resume" not in s["run"]


def test_move_aside_keeps_everything(tmp_path):
    run = tmp_path / "run"
    (run / "b2_seed0").mkdir(parents=True)
    (run / "metrics.csv").write_text("x")
    moved = move_aside(run)
    assert moved.name.startswith("run.replaced-") and (moved / "metrics.csv").read_text() == "x"
    assert list(run.iterdir()) == [] and move_aside(run) is None


def _holder(folder):
    code = (
        "import sys, time\nfrom b2lib.utils.rundir import RunLock\nwith RunLock(sys.argv[1]):\n"
        "    print('locked', flush=True)\n    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_on_a_locked_folder_stops_at_once_naming_the_holder(tmp_path):
    proc = _holder(tmp_path)
    try:
        start = time.perf_counter()
        with pytest.raises(RunLockedError, match=f"pid {proc.pid} on "):
            with RunLock(tmp_path):
                pass
        assert time.perf_counter() - start < 2
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: the OS releases the lock
        proc.wait()
    with RunLock(tmp_path):  # free again
        assert f"pid {os.getpid()}" in (tmp_path / ".lock").read_text()
    assert (tmp_path / ".lock").read_text() == ""


def test_every_bad_setting_is_reported_at_once_before_any_model_loads(tmp_path):
    with pytest.raises(ConfigError) as err:
        RunConfig(
            stages=1.5,
            seeds=0,
            images_per_stage=-16,
            branches=1,
            model_dir=str(tmp_path / "missing"),
            train_prompts=[],
            methods=("b2", "dppo"),
            eval_n_per_prompt=-1,
        )
    fields = [f for f, _ in err.value.problems]
    assert fields == [
        "stages",
        "images_per_stage",
        "eval_n_per_prompt",
        "branches",
        "methods",
        "seeds",
        "model_dir",
        "train_prompts",
    ]
    msg = str(err.value)
    assert "stages: must be an integer >= 0 (0 = the preset's default); got 1.5" in msg
    assert "seeds: must be a non-empty list of integers >= 0, e.g. [0, 1]; got 0" in msg
    assert "does not exist" in msg and "regenerate" not in msg


def test_overrides_are_checked_against_the_trainer_config():
    with pytest.raises(ConfigError, match=r"lr must be a float like .*got 'fast'"):
        RunConfig(overrides={"lr": "fast"})
    with pytest.raises(ConfigError, match=r"unknown TrainerConfig field\(s\) \['lr_rate'\]"):
        RunConfig(overrides={"lr_rate": 1e-3})
    with pytest.raises(ConfigError, match="multiple of branches"):
        RunConfig(images_per_stage=30)
    assert RunConfig(overrides={"lr": 1}).overrides == {"lr": 1}  # an int where a float is expected is fine


def _cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "b2lib.train", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_the_command_line_names_the_flags_as_typed():
    r = _cli("--stages", "-1", "--images-per-stage", "-16", "--model-dir", "/no/such/folder")
    assert r.returncode == 2
    assert "--stages: must be an integer >= 0" in r.stderr and "--images-per-stage: must be" in r.stderr
    assert "--model-dir: '/no/such/folder' does not exist" in r.stderr
    r = _cli("--overrides", "{lr: 1}")
    assert r.returncode == 2 and "--overrides: not valid JSON" in r.stderr


def test_a_finished_folder_refuses_other_settings_and_a_full_fine_tune_exports_its_unet(tmp_path):
    from diffusers import UNet2DConditionModel

    from b2lib.experiments.experiment import run_experiment

    tiny = dict(
        methods=("b2",),
        stages=1,
        images_per_stage=4,
        branches=2,
        eval_images=2,
        eval_max_prompts=1,
        bertscore=False,
        grid_prompts=0,
        output_dir=str(tmp_path),
        overrides={"num_steps": 2, "split_start": 1, "use_lora": False, "lr": 1e-5},
    )
    run_experiment(RunConfig(**tiny), progress=False)
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "b2_seed0" / "unet")
    assert sum(p.numel() for p in unet.parameters()) > 0
    assert json.loads((tmp_path / "run.json").read_text())["settings"]["run"]["template"] == "counting"
    with pytest.raises(RunSettingsError, match="run.template: folder has 'counting', asked for 'binding'"):
        run_experiment(RunConfig(**{**tiny, "template": "binding"}), progress=False)
    run_experiment(RunConfig(**{**tiny, "template": "binding", "resume": False}), progress=False)
    assert json.loads((tmp_path / "run.json").read_text())["settings"]["run"]["template"] == "binding"
    assert len(list(tmp_path.parent.glob(f"{tmp_path.name}.replaced-*"))) == 1


def test_compute_budget_gives_each_method_the_stages_of_b2s_work():
    from b2lib.training.trainer import nominal_work

    kw = dict(recipe="coarse", stages=12, method_overrides={"ddpo": {"timestep_fraction": 0.25}, "b2": {"lr": 1e-4}})
    cfg = RunConfig(budget="compute", **kw)
    b2, ddpo = cfg.trainer_config("b2", 0), cfg.trainer_config("ddpo", 0)
    assert b2.num_stages == 12 and b2.lr == 1e-4 and b2.timestep_fraction == 1.0  # overrides stay per method
    assert ddpo.timestep_fraction == 0.25 and ddpo.lr != 1e-4
    more = RunConfig(
        budget="compute",
        **{**kw, "method_overrides": {"ddpo": {"timestep_fraction": 0.25, "num_stages": ddpo.num_stages + 1}}},
    )
    assert nominal_work(ddpo) <= nominal_work(b2) < nominal_work(more.trainer_config("ddpo", 0))
    # B² samples a shared prefix and trains one step of 2 samples per group, DDPO the whole chain of every image
    assert 1 <= ddpo.num_stages < 12
    # the equal-image budget: every method runs `stages`
    assert RunConfig(**kw).trainer_config("ddpo", 0).num_stages == 12
    # both fields stay out of the fingerprint at their defaults, and are recorded when set
    assert "budget" not in RunConfig().settings()["run"] and "method_overrides" not in RunConfig().settings()["run"]
    assert cfg.settings()["run"]["budget"] == "compute"


def test_method_overrides_are_checked():
    with pytest.raises(ConfigError, match=r"method_overrides: unknown method\(s\) \['ppo'\]"):
        RunConfig(method_overrides={"ppo": {"lr": 1e-3}})
    with pytest.raises(ConfigError, match=r"method_overrides: ddpo: lr must be a float"):
        RunConfig(method_overrides={"ddpo": {"lr": "fast"}})
    with pytest.raises(ConfigError, match="method_overrides: must map methods to dicts"):
        RunConfig(method_overrides={"ddpo": 1e-3})
    with pytest.raises(ConfigError, match="budget: use 'images'"):
        RunConfig(budget="wall")
    r = _cli("--budget", "compute", "--method-overrides", "{ddpo: 1}")
    assert r.returncode == 2 and "--method-overrides: not valid JSON" in r.stderr
    r = _cli("--method-overrides", '{"ddpo": {"lr_rate": 1}}')
    assert r.returncode == 2 and "--method-overrides: ddpo: unknown TrainerConfig field(s) ['lr_rate']" in r.stderr


def test_reuse_problems_names_every_reason_a_folder_cannot_stand_in(tmp_path):
    from b2lib.utils.rundir import reusable, reuse_problems

    def folder(name, cfg, finished=True):
        d = tmp_path / name
        check_fingerprint(d, cfg.settings())
        if finished:
            (d / "summary.json").write_text("{}")
        return d

    asked = RunConfig(methods=("ddpo", "b2"), seeds=(0, 1), stages=3, eval_splits=("test",))
    b2 = folder("b2", RunConfig(methods=("b2",), seeds=(0, 1), stages=3, eval_splits=("test", "train")))
    ddpo = folder("ddpo", RunConfig(methods=("ddpo",), seeds=(0, 1), stages=3))
    assert reuse_problems([b2, ddpo], asked.settings()) == []
    assert reuse_problems([b2], asked.settings()) == ["no folder holds ddpo_seed0", "no folder holds ddpo_seed1"]
    lr = folder("lr", RunConfig(methods=("ddpo",), seeds=(0, 1), stages=3, overrides={"lr": 0.5}))
    assert f"{lr}: trainer.ddpo_seed0.lr is 0.5, asked for" in reuse_problems([b2, lr], asked.settings())[0]
    noise = folder("noise", RunConfig(methods=("ddpo",), seeds=(0, 1), stages=3, eval_seed=7))
    assert reuse_problems([b2, noise], asked.settings()) == [f"{noise}: run.eval_seed is 7, asked for 1234"]
    test_only = folder("test_only", RunConfig(methods=("b2",), seeds=(0, 1), stages=3))
    both = RunConfig(methods=("ddpo", "b2"), seeds=(0, 1), stages=3, eval_splits=("test", "train"))
    assert f"{test_only}: not evaluated on the split(s) ['train']" in reuse_problems([test_only, ddpo], both.settings())
    unfinished = folder("unfinished", RunConfig(methods=("ddpo",), seeds=(0, 1), stages=3), finished=False)
    assert reuse_problems([b2, unfinished], asked.settings())[0].startswith(f"{unfinished}: not a finished run")
    assert reusable([b2, ddpo], asked.settings()) == [b2, ddpo]
    with pytest.raises(RunSettingsError, match="no folder holds ddpo_seed0"):
        reusable([b2], asked.settings())


# ---------------------------------------------------------------------------------------------- OS faults
# Root ignores permission bits (the suite runs as root in CI), so a read-only folder is simulated where the OS would
# refuse: the very call (os.open, Path.mkdir, open) raises the OSError a read-only file system or a denied permission
# raises. A real chmod 0o555 test runs where it means something (not as root).

FIX = "choose another output_dir (papermill: -p output_dir <folder>; command line: --output-dir <folder>)"


def _refuse(monkeypatch, folder, code=None):
    """Make every file creation inside ``folder`` (os.open: the write probe) fail as a read-only file system does."""
    import errno

    real = os.open

    def refusing(path, flags, *args, **kwargs):
        if Path(path).parent == folder and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(code or errno.EROFS, os.strerror(code or errno.EROFS), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)


def test_a_read_only_output_folder_stops_before_any_model_loads_and_names_the_fix(tmp_path, monkeypatch):
    import errno

    import b2lib.experiments.experiment as experiment
    from b2lib.utils.rundir import OutputNotWritableError

    out = tmp_path / "ro"
    out.mkdir()
    _refuse(monkeypatch, out)

    def no_models(*args, **kwargs):
        raise AssertionError("a model was loaded before the output folder was checked")

    import b2lib.experiments.modeljobs as modeljobs

    monkeypatch.setattr(modeljobs, "load_models", no_models)
    with pytest.raises(OutputNotWritableError) as caught:
        experiment.run_experiment(RunConfig(output_dir=str(out)), progress=False)
    assert str(caught.value) == f"output folder {out} is not writable (read-only file system): {FIX}"
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.EROFS
    assert list(out.iterdir()) == []


def test_a_folder_that_cannot_be_created_is_permission_denied(tmp_path, monkeypatch):
    import errno

    from b2lib.utils.rundir import OutputNotWritableError, prepare_output_dir

    out = tmp_path / "parent" / "run"
    real = Path.mkdir

    def denied(self, *args, **kwargs):
        if self == out:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(OutputNotWritableError, match=r"is not writable \(permission denied\): choose another"):
        prepare_output_dir(out)


@pytest.mark.parametrize("file", [".lock", "run.json.tmp"])
def test_the_lock_and_run_json_writes_name_the_file_the_os_refused(tmp_path, monkeypatch, file):
    import builtins
    import errno

    import b2lib.utils.rundir as rundir
    from b2lib.utils.rundir import OutputNotWritableError, RunLock, record_settings

    target = tmp_path / file
    if file == ".lock":
        real = builtins.open

        def refusing(path, *args, **kwargs):
            if Path(path) == target:
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(rundir, "open", refusing, raising=False)  # the module's name, not the builtin
        write = lambda: RunLock(tmp_path).__enter__()  # noqa: E731
    else:
        real = Path.write_text

        def refusing(self, *args, **kwargs):
            if self == target:
                raise PermissionError(errno.EPERM, "Operation not permitted", str(self))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", refusing)
        write = lambda: record_settings(tmp_path, {"a": 1})  # noqa: E731
    reason = "read-only file system" if file == ".lock" else "permission denied"
    with pytest.raises(OutputNotWritableError) as caught:
        write()
    assert str(caught.value) == f"output folder {tmp_path} is not writable ({reason}: cannot write {target}): {FIX}"
    assert not (tmp_path / "run.json").exists()


def test_the_command_line_reports_a_read_only_output_folder_without_a_traceback(tmp_path, monkeypatch, capsys):
    from b2lib.train import main

    out = tmp_path / "ro"
    out.mkdir()
    _refuse(monkeypatch, out)
    with pytest.raises(SystemExit) as caught:
        main(["--output-dir", str(out), "--preset", "smoke"])
    assert caught.value.code == f"python -m b2lib.train: error: output folder {out} is not writable " + (
        f"(read-only file system): {FIX}"
    )


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permission bits")
def test_a_real_read_only_folder_is_reported(tmp_path):
    from b2lib.utils.rundir import OutputNotWritableError, prepare_output_dir

    tmp_path.chmod(0o555)
    try:
        with pytest.raises(OutputNotWritableError, match=r"is not writable \(permission denied\)"):
            prepare_output_dir(tmp_path / "run")
    finally:
        tmp_path.chmod(0o755)


def test_a_full_disk_while_writing_a_result_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import errno

    from b2lib.utils.rundir import DiskFullError, disk_full_guard, write_text_atomic

    path = tmp_path / "summary.json"
    path.write_text('{"old": 1}')
    real = Path.write_text

    def fills_up(self, text, *args, **kwargs):  # half the text lands, then the disk is full
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", fills_up)
    with pytest.raises(DiskFullError) as caught:
        with disk_full_guard(path, "run results", "a rerun evaluates again", 2_500_000):
            write_text_atomic(path, '{"new": 2, "padding": "' + "x" * 100 + '"}')
    monkeypatch.undo()
    assert str(caught.value).startswith(f"no space left on device while writing run results {path} (needs ~2.5 MB; ")
    assert str(caught.value).endswith(
        "at another disk (papermill: -p output_dir <folder>; command line: "
        "--output-dir <folder>); a rerun evaluates again"
    )
    assert path.read_text() == '{"old": 1}' and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_disk_full_is_recognised_by_its_os_codes_and_safetensors_words_only():
    import errno

    from safetensors import SafetensorError

    from b2lib.utils.rundir import disk_full_error, is_disk_full

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert is_disk_full(SafetensorError('IoError(Os { code: 28, kind: StorageFull, message: "No space left" })'))
    assert not is_disk_full(OSError(errno.EIO, "Input/output error"))
    assert not is_disk_full(SafetensorError("Error while deserializing header: HeaderTooLarge"))
    assert not is_disk_full(ValueError("No space left on device"))  # only the OS and safetensors report it
    quota = disk_full_error("/x/y", "checkpoint", None, "then", errno.EDQUOT)
    assert str(quota).startswith("disk quota exceeded while writing checkpoint /x/y (") and "needs" not in str(quota)
