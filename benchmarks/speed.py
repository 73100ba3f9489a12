"""Sampler and trainer speed, side by side in one process: ``python benchmarks/speed.py [--size smoke|full]``.

Writes ``results/performance/speed.json`` (or ``--out``); ``notebooks/05_performance.ipynb`` runs the same function
and plots it. ``--paper-arch`` adds the Stable Diffusion 1.4 architecture (random weights) at 512 px on a GPU, or at
a reduced size on CPU (a check that the code path runs, not a number about SD). ``--dtype-compare`` instead times
every phase of a run (plain, branch and tree sampling, a B² and a DDPO stage, the evaluation) at fp32 and at bf16
compute (``b2lib.utils.precision``), interleaved, and writes ``results/performance/dtype.csv`` and ``dtype.json`` with
the CPU's bf16 flags.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("smoke", "full"), default="full")
    parser.add_argument("--repeats", type=int, default=0, help="timed repeats per measurement (0: 5 full, 2 smoke)")
    parser.add_argument("--paper-arch", action="store_true", help="also time the SD-1.4 architecture")
    parser.add_argument("--paper-only", action="store_true", help="only the SD-1.4 architecture (GPU runs)")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (GPU)")
    parser.add_argument(
        "--dtype-compare", action="store_true", help="fp32 against bf16 compute, phase by phase (dtype.csv/json)"
    )
    parser.add_argument("--out", default="", help="output JSON (default results/performance/speed.json)")
    args = parser.parse_args(argv)

    from b2lib.bench import run_suite, save_json
    from b2lib.utils.paths import REPO_ROOT

    if args.dtype_compare:
        from b2lib.bench.dtype import bench_dtype, dtype_table

        result = bench_dtype(size=args.size, repeats=args.repeats or None)
        out = args.out or REPO_ROOT / "results" / "performance" / "dtype.json"
        path = save_json(result, out)
        table = dtype_table(result)
        table.to_csv(path.with_suffix(".csv"), index=False)
        print(table.to_string(index=False))
        print(path, path.with_suffix(".csv"))
        return 0

    result = run_suite(
        size=args.size,
        repeats=args.repeats or None,
        paper_arch=args.paper_arch or args.paper_only,
        embedded=not args.paper_only,
        dtype=args.dtype,
        compile=args.compile,
    )
    out = args.out or REPO_ROOT / "results" / "performance" / (
        "speed.json" if not args.paper_only else "paper_arch.json"
    )
    print(save_json(result, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
