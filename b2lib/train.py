"""Command-line entry of the main job, for ``accelerate launch`` (several GPUs) and for scripts:

    accelerate launch --multi_gpu --num_processes 8 -m b2lib.train --preset paper --template template1
    python -m b2lib.train --template counting --stages 12

The notebook ``notebooks/03_train.ipynb`` calls the same :func:`b2lib.experiment.run_experiment`.
"""

from __future__ import annotations

import argparse
import json

from .experiment import DEFAULT_METHODS, METHODS, RunConfig, run_experiment


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m b2lib.train", description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    p.add_argument("--template", default="counting")
    p.add_argument("--preset", default="embedded", choices=["embedded", "paper"])
    p.add_argument("--stages", type=int, default=0)
    p.add_argument("--images-per-stage", type=int, default=0)
    p.add_argument("--branches", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--model-dir", default="")
    p.add_argument("--clip-dir", default="")
    p.add_argument("--run-name", default="main")
    p.add_argument("--output-dir", default="")
    p.add_argument("--eval-n-per-prompt", type=int, default=4)
    p.add_argument("--eval-max-prompts", type=int, default=16)
    p.add_argument("--overrides", default="{}", help='TrainerConfig fields as JSON, e.g. \'{"lr": 3e-4}\'')
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = RunConfig(methods=tuple(a.methods), template=a.template, preset=a.preset, stages=a.stages,
                    images_per_stage=a.images_per_stage, branches=a.branches, seeds=tuple(a.seeds),
                    model_dir=a.model_dir, clip_dir=a.clip_dir, run_name=a.run_name, output_dir=a.output_dir,
                    eval_n_per_prompt=a.eval_n_per_prompt, eval_max_prompts=a.eval_max_prompts,
                    overrides=json.loads(a.overrides))
    result = run_experiment(cfg, progress=not a.no_progress)
    if result.evals is not None and len(result.evals):
        print(result.evals.to_string())


if __name__ == "__main__":
    main()
