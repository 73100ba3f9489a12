"""Command-line entry of the main job, for ``accelerate launch`` (several GPUs) and for scripts:

    python -m b2lib.train                      # the main job, as notebooks/03_train.ipynb runs it
    accelerate launch --multi_gpu --num_processes 8 -m b2lib.train --setup paper --preset paper --template template1

``--setup`` names a setup of :mod:`b2lib.experiments.setups`: ``main`` (the default: the coarse recipe, B² 120 stages,
every other method at its UNet work, each at its searched point, the defaults of notebook 03) or ``paper`` (the
published recipe at the preset's own budget). ``--recipe``, ``--stages``, ``--budget`` and ``--method-overrides`` given
on the command line override the setup's; ``--preset smoke`` keeps its own toy number of stages. The notebook calls the
same :func:`b2lib.experiments.experiment.run_experiment`. Every flag is a
:class:`~b2lib.experiments.experiment.RunConfig` field with its default, and every setting is checked before a model is
loaded: a bad one stops the command with one line per problem, naming the flag as typed here. An OS fault on the output
folder (a read-only file system, a full disk) stops it with one message naming the fix (``--output-dir``), no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from b2lib.experiments.experiment import METHODS, ConfigError, RunConfig, run_experiment
from b2lib.experiments.presets import PRESETS, RECIPES
from b2lib.experiments.setups import SETUPS
from b2lib.utils.rundir import OutputFolderError, RunLockedError, RunSettingsError

_DEFAULTS = {f.name: f.default for f in fields(RunConfig) if f.default is not f.default_factory}
#: the flags whose default is the chosen setup's (b2lib.experiments.setups)
_FROM_SETUP = ("recipe", "stages", "budget", "method_overrides")


def flag(field: str) -> str:
    """The command-line spelling of a RunConfig field (``images_per_stage`` -> ``--images-per-stage``)."""
    return "--" + field.replace("_", "-")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m b2lib.train", description=__doc__.split("\n")[0])
    d = _DEFAULTS
    p.add_argument("--methods", nargs="+", default=list(d["methods"]), choices=METHODS)
    p.add_argument("--template", default=d["template"])
    p.add_argument("--preset", default=d["preset"], choices=list(PRESETS))
    p.add_argument(
        "--setup",
        default="main",
        choices=list(SETUPS),
        help="recipe, B²'s stages, budget and each method's point from b2lib.experiments.setups "
        "(default main: notebook 03's job)",
    )
    helps = {
        "stages": "0: the preset's default; unset: the setup's",
        "images_per_stage": "0: the preset's default",
        "branches": "0: the preset's default",
        "eval_n_per_prompt": "0: enough images per prompt for --eval-images",
        "eval_max_prompts": "a subset of k prompts of the split; 0: the preset's (every prompt; smoke 2)",
        "eval_images": "evaluation images per model and split; 0: the preset's (512; smoke 4)",
        "workers": "processes training the models side by side (cores // workers threads each); 0: one per model up "
        "to the CPU cores, 1 on a GPU or under accelerate launch",
    }
    for name, text in helps.items():
        default = None if name in _FROM_SETUP else d[name]
        p.add_argument(flag(name), type=int, default=default, help=f"{text} (default {default})")
    p.add_argument("--seeds", type=int, nargs="+", default=list(d["seeds"]))
    for name in ("model_dir", "clip_dir", "run_name", "output_dir", "device"):
        p.add_argument(flag(name), default=d[name])
    p.add_argument("--eval-splits", nargs="+", default=list(d["eval_splits"]), choices=["test", "train"])
    p.add_argument("--reward", default=d["reward"], choices=["clip", "judge"])
    p.add_argument(
        "--recipe", default=None, choices=sorted(RECIPES), help="estimator recipe (presets.RECIPES); unset: the setup's"
    )
    p.add_argument("--reward-sign", type=int, default=d["reward_sign"], choices=[1, -1])
    p.add_argument(
        "--dtype",
        default=d["dtype"],
        choices=["fp32", "bf16"],
        help="compute dtype of the model forwards (bf16: autocast, needs AVX512-BF16/AMX or a bf16 GPU)",
    )
    p.add_argument("--overrides", default="{}", help="TrainerConfig fields as JSON, e.g. '{\"lr\": 3e-4}'")
    p.add_argument(
        "--method-overrides",
        default=None,
        help='per method, TrainerConfig fields as JSON, e.g. \'{"ddpo": {"lr": 3e-4}}\'; unset: the setup\'s',
    )
    p.add_argument(
        "--budget",
        default=None,
        choices=["images", "compute"],
        help="equal images per method, or equal UNet work (--stages is B²'s)",
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start over: the output folder's earlier content is moved aside (not deleted)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(argv: list[str] | None = None) -> tuple[RunConfig, argparse.Namespace]:
    """Parse and validate; exits with a usage error (status 2) naming the flags at fault."""
    p = parser()
    a = p.parse_args(argv)
    setup = SETUPS[a.setup]
    for name in _FROM_SETUP:
        if getattr(a, name) is None:
            value = setup.get(name, _DEFAULTS.get(name))
            if name == "stages" and a.preset == "smoke":
                value = 0  # the toy size keeps its own chain and stages (presets.SMOKE)
            setattr(a, name, json.dumps(value) if name == "method_overrides" else value)
    parsed = {}
    for name, example in (
        ("overrides", '{"lr": 3e-4, "grad_accum": 1}'),
        ("method_overrides", '{"ddpo": {"lr": 3e-4}}'),
    ):
        try:
            parsed[name] = json.loads(getattr(a, name))
        except json.JSONDecodeError as err:
            p.error(f"{flag(name)}: not valid JSON ({err.msg} at character {err.pos}); write it like '{example}'")
    names = {
        "methods",
        "template",
        "preset",
        "stages",
        "images_per_stage",
        "branches",
        "seeds",
        "model_dir",
        "clip_dir",
        "run_name",
        "output_dir",
        "eval_n_per_prompt",
        "eval_max_prompts",
        "eval_images",
        "eval_splits",
        "reward",
        "recipe",
        "reward_sign",
        "device",
        "budget",
        "dtype",
        "workers",
    }
    kwargs = {n: getattr(a, n) for n in names}
    kwargs.update(
        methods=tuple(a.methods),
        seeds=tuple(a.seeds),
        eval_splits=tuple(a.eval_splits),
        **parsed,
        resume=not a.no_resume,
    )
    try:
        cfg = RunConfig(**kwargs)
    except ConfigError as err:
        spelled = {f: flag(f) for f in names | {"overrides", "method_overrides"}}
        p.error("\n" + str(ConfigError(err.problems, spelled)))
    return cfg, a


def main(argv: list[str] | None = None) -> None:
    """Run the job; a fault whose message already names the fix (a full disk, a read-only output folder, a folder
    holding another run or locked by one) ends the command with that message and status 1, not a traceback."""
    cfg, a = config_from_args(argv)
    try:
        result = run_experiment(cfg, progress=not a.no_progress)
    except (OutputFolderError, RunSettingsError, RunLockedError) as err:
        sys.exit(f"{parser().prog}: error: {err}")
    if result.evals is not None and len(result.evals):
        print(result.evals.to_string())


if __name__ == "__main__":
    main()
