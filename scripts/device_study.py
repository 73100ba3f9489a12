"""Driver for one stretch of time on a GPU machine (one GPU + 16 CPU cores), sized to a fixed wall-clock deadline.

Why a script and not a notebook: the machine is held for a short time that cannot be extended, so the runs are a queue
drained by worker processes until ``DEADLINE_S``; whatever finished (a run folder with ``summary.json``) is packed into
``$OUT/runs.tar.gz`` and copied into ``results/`` by hand afterwards (every number in it names the machine).

Two queues, at the former main job's budget (the paper recipe, set in ``_base``; the preset's 20 stages of 32 images):
- ``gpu``: the budget-scaling study (counting, CLIPScore reward, the tuned recipe of every method, more images per
  stage than a 2-core CPU can afford), several processes sharing the one GPU;
- ``cpu``: more seeds of that budget (``run_experiment`` on the CPU, 2 threads each), the same code path as on a
  laptop.
A CUDA smoke run decides first whether the GPU queue runs on the GPU at all; if it fails, its workers drain the CPU
queue instead and the error is kept in ``status.json``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import sys
import tarfile
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEADLINE_S = float(os.environ.get("DEADLINE_S", 480))
OUT = Path(os.environ.get("OUT", "/tmp/device_out"))
RUNS = Path(os.environ.get("RUNS", "/tmp/device_runs"))
GPU_WORKERS = int(os.environ.get("GPU_WORKERS", 4))
CPU_WORKERS = int(os.environ.get("CPU_WORKERS", 6))
SMOKE = os.environ.get("STUDY_SMOKE") == "1"  # tiny sizes, to test this script on a laptop


def _base(**kw):
    from b2lib.experiments.experiment import RunConfig

    kw = {
        "template": "counting",
        "recipe": "paper",  # what these runs used (then RunConfig's default), whatever the default is now
        "eval_images": 512,
        "eval_splits": ("train", "test"),
        "bertscore": False,
        "save_lora": False,
        "grid_prompts": 0,
        **kw,
    }
    cfg = RunConfig(**kw)
    if SMOKE:
        cfg = replace(
            cfg,
            stages=2,
            images_per_stage=8,
            branches=2,
            eval_images=4,
            eval_max_prompts=2,
            overrides={"num_steps": 4, "split_start": 2},
        )
    return cfg


JOBS = os.environ.get("JOBS", "scale")  # "scale": the budget-scaling study (run 2026-11-27); "signs": the sign control


def sign_jobs() -> list:
    """The sign control at the former main job's budget: each method's tuned recipe trained on CLIPScore and on its
    negation (same seeds), evaluated on every train prompt x 16 (512 images, paired)."""
    jobs = [
        _base(
            methods=(m,),
            seeds=(s,),
            reward_sign=sign,
            eval_splits=("train",),
            output_dir=str(RUNS / "signs" / f"{m}_{'pos' if sign > 0 else 'neg'}_seed{s}"),
        )
        for s in (0, 1)
        for m in ("b2", "ddpo")
        for sign in (1, -1)
    ]
    return jobs[:2] if SMOKE else jobs


def gpu_jobs() -> list:
    if JOBS == "signs":
        return sign_jobs()
    return scale_jobs()


def scale_jobs() -> list:
    """Budget scaling: the tuned recipe with 4x and 16x the former main job's images per stage (20 stages each)."""
    jobs = []
    for n in (128, 512):
        for seed in (0, 1):
            for m in ("b2", "ddpo"):
                jobs.append(
                    _base(
                        methods=(m,),
                        seeds=(seed,),
                        stages=20,
                        images_per_stage=n,
                        output_dir=str(RUNS / "scale" / f"{m}_n{n}_seed{seed}"),
                    )
                )
    if SMOKE:
        jobs = [replace(j, stages=2, images_per_stage=8) for j in jobs[:2]]
    return jobs


def cpu_jobs() -> list:
    """The former main job's budget (counting, paper recipe, 20 stages x 32 images), seeds 1-4, one method per run."""
    if JOBS == "signs":
        return []
    jobs = [
        _base(methods=(m,), seeds=(s,), output_dir=str(RUNS / "seeds" / f"{m}_seed{s}"))
        for s in (1, 2, 3, 4)
        for m in ("b2", "ddpo")
    ]
    return jobs[:2] if SMOKE else jobs


def _worker(name: str, device: str, threads: int, jobs, t0: float, log) -> None:
    import torch

    torch.set_num_threads(threads)
    from b2lib.experiments.experiment import run_experiment

    while time.time() - t0 < DEADLINE_S - 45:
        try:
            cfg = jobs.get_nowait()
        except queue.Empty:
            return
        cfg = replace(cfg, device="cuda" if device == "cuda" else "cpu")
        start = time.time()
        try:
            run_experiment(cfg, progress=False)
            log.put({"worker": name, "run": cfg.output_dir, "device": device, "s": time.time() - start, "ok": True})
        except Exception:  # keep draining: one failed run must not stop the machine's other work
            log.put(
                {
                    "worker": name,
                    "run": cfg.output_dir,
                    "device": device,
                    "s": time.time() - start,
                    "ok": False,
                    "error": traceback.format_exc()[-3000:],
                }
            )


def _cuda_smoke() -> dict:
    """One tiny run on the GPU: does the CUDA path work here, and how long does it take?"""
    from b2lib.experiments.experiment import RunConfig, run_experiment

    start = time.time()
    try:
        import torch

        name = torch.cuda.get_device_name(0)
        run_experiment(
            RunConfig(
                methods=("b2", "ddpo"),
                stages=2,
                images_per_stage=16,
                branches=4,
                eval_images=32,
                eval_max_prompts=4,
                eval_splits=("train",),
                bertscore=False,
                save_lora=False,
                grid_prompts=0,
                device="cuda",
                output_dir=str(RUNS / "cuda_smoke"),
            ),
            progress=False,
        )
        return {"ok": True, "gpu": name, "s": time.time() - start}
    except Exception:
        return {"ok": False, "s": time.time() - start, "error": traceback.format_exc()[-3000:]}


def main() -> None:
    t0 = time.time()
    OUT.mkdir(parents=True, exist_ok=True)
    RUNS.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    gq, cq, log = ctx.Queue(), ctx.Queue(), ctx.Queue()
    for j in gpu_jobs():
        gq.put(j)
    for j in cpu_jobs():
        cq.put(j)
    procs = [ctx.Process(target=_worker, args=(f"cpu{i}", "cpu", 2, cq, t0, log)) for i in range(CPU_WORKERS)]
    for p in procs:
        p.start()
    if SMOKE:
        smoke = {"ok": False, "error": "smoke mode: no GPU"}
    elif os.environ.get("SKIP_CUDA_SMOKE") == "1":
        smoke = {"ok": True, "skipped": True}
    else:
        smoke = _cuda_smoke()
    print("cuda smoke:", json.dumps(smoke)[:2000], flush=True)
    for i in range(GPU_WORKERS):
        if smoke["ok"]:
            p = ctx.Process(target=_worker, args=(f"gpu{i}", "cuda", 1, gq, t0, log))
        else:  # no GPU path: help with the CPU queue, or drain the GPU queue on the CPU
            p = ctx.Process(target=_worker, args=(f"cpu-extra{i}", "cpu", 1, gq if JOBS == "signs" else cq, t0, log))
        p.start()
        procs.append(p)
    events = []
    while time.time() - t0 < DEADLINE_S and any(p.is_alive() for p in procs):
        try:
            e = log.get(timeout=5)
            events.append(e)
            print(
                f"[{time.time() - t0:6.0f}s] {e['worker']} {'ok ' if e['ok'] else 'ERR'} {e['run']} {e['s']:.0f}s",
                flush=True,
            )
            if not e["ok"]:
                print(e["error"], flush=True)
        except queue.Empty:
            pass
    for p in procs:
        if p.is_alive():
            p.terminate()
    while True:
        try:
            events.append(log.get_nowait())
        except queue.Empty:
            break
    done = sorted(str(p.parent.relative_to(RUNS)) for p in RUNS.rglob("summary.json"))
    status = {
        "smoke": smoke,
        "events": events,
        "done": done,
        "wall_s": time.time() - t0,
        "gpu_jobs": [asdict(j) for j in gpu_jobs()],
        "cpu_jobs": [asdict(j) for j in cpu_jobs()],
        "cores": os.cpu_count(),
    }
    (OUT / "status.json").write_text(json.dumps(status, indent=2, default=str))
    with tarfile.open(OUT / "runs.tar.gz", "w:gz") as tar:
        for d in done:
            for f in (RUNS / d).iterdir():
                if f.is_file():
                    tar.add(f, arcname=f"{d}/{f.name}")
    print(f"packed {len(done)} finished runs in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
