"""Drain the flow study's queue outside the notebook, keeping each finished piece at once.

    python scripts/flow_queue.py snr       # the stage gradient SNR of each estimator (one worker per arm)
    python scripts/flow_queue.py search    # every method x grid point of the search
    python scripts/flow_queue.py study     # every method x seed at the chosen points (needs search/choice.json)
    python scripts/flow_queue.py study --commit   # ... and commit each finished run folder as it lands
    python scripts/flow_queue.py study --seeds 0  # one seed of every method first: do the policies move?
    python scripts/flow_queue.py lever            # B² and Flow-GRPO trained on a 10-step chain (needs the choice)
    python scripts/flow_queue.py sign             # the sign control: B² trained on the negated reward
    python scripts/flow_queue.py pilot            # one seed of B² at 128 images per stage (4x the study's)

Why a script beside notebook 15: the study takes hours of CPU, more than one sitting, and a notebook cell loses
everything in flight when it is stopped. The runs are the notebook's own (built by
:class:`b2lib.studies.flow.FlowStudy`, whose defaults the notebook's parameters cell sets), so once every folder is
in, executing the notebook skips them and only reads.
A finished folder is skipped here too; an unfinished one starts again from its checkpoints, if they are still there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def commit(folder: Path, what: str) -> None:
    """``git commit`` of ``folder`` alone, as the flow study's ``what``."""
    from queue_git import commit as git_commit

    git_commit(folder, f"Flow study: {what} {Path(folder).name} finished")


def default_study():
    """The study with :class:`~b2lib.studies.flow.FlowStudy`'s defaults, the ones notebook 15's parameters cell sets
    (a test keeps the two equal), in ``results/<FlowStudy.run_name>``."""
    from b2lib.studies.flow import FlowStudy
    from b2lib.utils.paths import results_dir

    return FlowStudy(out=results_dir(FlowStudy.run_name))


def _snr_arm(out: str, template: str, name: str, draws: int) -> str:
    from b2lib.studies.flow import FLOW_SNR_ARMS
    from b2lib.studies.gradient_snr import snr_study

    snr_study(out, template, {name: FLOW_SNR_ARMS[name]}, draws=draws, preset="flow", progress=False, write=False)
    return name


def run_snr(study, workers: int, keep: bool) -> None:
    from b2lib.experiments.pool import default_threads, run_in_processes

    out = study.out / "snr"
    todo = [a for a in study.snr_arms if not (out / f"draws_{a}.npz").exists()]
    tasks = [(str(out), study.template, a, study.snr_draws) for a in todo]

    def done(i: int, name: str) -> None:
        print(f"arm {name} measured", flush=True)
        if keep:
            commit(out, f"SNR arm {name} of")

    run_in_processes(_snr_arm, tasks, workers, default_threads(workers), done, stop_on_error=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=("snr", "search", "study", "lever", "sign", "pilot"))
    ap.add_argument("--seeds", type=int, nargs="+", help="the study's seeds to run (default: all of them)")
    ap.add_argument("--methods", nargs="+", help="the study's methods to run (default: all of them)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--commit", action="store_true", help="git-commit each finished folder as it lands")
    args = ap.parse_args(argv)
    study = default_study()
    if args.part == "snr":
        run_snr(study, args.workers, args.commit)
        return 0
    from b2lib.experiments.experiment import run_many

    if args.part == "search":
        configs = [cfg for _, cfg in study.search_runs()]
    else:
        choice = study.out / "search" / "choice.json"
        if not choice.is_file():
            print(f"{choice} is missing: run the search first (`python {sys.argv[0]} search`) and write its choice.")
            return 2
        chosen = json.loads(choice.read_text())
        if args.part == "lever":
            configs = study.lever_runs(chosen)
        elif args.part == "pilot":
            configs = [study.images_pilot(chosen, seed=s) for s in (args.seeds or [0])]
        elif args.part == "sign":
            configs = [c for c in study.sign_configs(chosen) if not args.seeds or c.seeds[0] in args.seeds]
        else:
            configs = [
                c
                for c in study.study_configs(chosen)
                if (not args.seeds or c.seeds[0] in args.seeds) and (not args.methods or c.methods[0] in args.methods)
            ]
    keep = (lambda folder: commit(folder, args.part)) if args.commit else None
    run_many(configs, workers=args.workers, on_done=keep)
    if args.part == "search":  # every point in: each method's choice, on the train-split reward
        from b2lib.studies.tuning import write_choice

        choice = write_choice(study.search_results(), study.out / "search", study.grid)
        print(json.dumps(choice, indent=1))
        if args.commit:
            commit(study.out / "search", "the choice of")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
