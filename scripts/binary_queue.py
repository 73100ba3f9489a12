"""Drain the binary-reward study's queue outside the notebook, keeping each finished piece at once.

    python scripts/binary_queue.py census          # the base model's branch groups under the study's recipe
    python scripts/binary_queue.py budget          # the study's stages, from that census (kept in budget.json)
    python scripts/binary_queue.py search          # each baseline's group size x lr on the train-split binary reward
    python scripts/binary_queue.py study           # every method x seed at its point (needs search/choice.json)
    python scripts/binary_queue.py study --commit  # ... and commit each finished run folder as it lands
    python scripts/binary_queue.py study --seeds 0 # one seed of every method first: do the policies move?
    python scripts/binary_queue.py sign            # the sign control: the B² arm on the negated binary reward

Why a script beside notebook 20: the study takes many hours of CPU, more than one sitting, and a notebook cell loses
everything in flight when it is stopped. The runs are the notebook's own (built by
:class:`b2lib.studies.binary.BinaryStudy`, whose defaults the notebook's parameters cell sets), so once every folder
is in, executing the notebook skips them and only reads. A finished folder is skipped here too; an unfinished one
starts again from its checkpoints, if they are still there.
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


def default_study():
    """The study with :class:`~b2lib.studies.binary.BinaryStudy`'s defaults, the ones notebook 20's parameters cell
    sets (a test keeps the two equal), in ``results/<BinaryStudy.run_name>``."""
    from b2lib.studies.binary import BinaryStudy
    from b2lib.utils.paths import results_dir

    return BinaryStudy(out=results_dir(BinaryStudy.run_name))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=("census", "budget", "search", "study", "sign"))
    ap.add_argument("--seeds", type=int, nargs="+", help="the seeds to run (default: all of them)")
    ap.add_argument("--methods", nargs="+", help="the study's methods to run (default: all of them)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, help="torch threads per run (default: cores // workers)")
    ap.add_argument("--commit", action="store_true", help="git-commit each finished folder as it lands")
    args = ap.parse_args(argv)
    os.chdir(ROOT)  # the census and the reference run are read relative to the repository
    study = default_study()
    from queue_git import commit

    def keep(folder: Path, what: str) -> None:
        if args.commit:
            commit(folder, f"Binary-reward study: {what} {Path(folder).name} finished")

    if args.part == "census":
        print(study.measure_census().round(3).to_string(), flush=True)
        keep(study.out / "census", "the census of")
        return 0
    budget = study.budget()
    print(json.dumps({k: v for k, v in budget.items() if k != "path_start"}), flush=True)
    if args.part == "budget":
        keep(study.out / "budget.json", "the budget of")
        return 0
    from b2lib.experiments.experiment import run_many

    if args.part == "search":
        configs = [cfg for _, cfg in study.search_runs() if not args.methods or cfg.methods[0] in args.methods]
    else:
        try:
            chosen = study.read_choice()
        except FileNotFoundError as e:
            print(e)
            return 2
        configs = study.sign_configs(chosen) if args.part == "sign" else study.study_configs(chosen)
        configs = [
            c
            for c in configs
            if (not args.seeds or c.seeds[0] in args.seeds) and (not args.methods or c.methods[0] in args.methods)
        ]
    run_many(configs, workers=args.workers, threads=args.threads, on_done=lambda folder: keep(folder, args.part))
    if args.part == "search":  # every point in: each baseline's choice, on the train-split binary reward
        print(json.dumps(study.write_choice(), indent=1))
        keep(study.out / "search", "the choice of")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
