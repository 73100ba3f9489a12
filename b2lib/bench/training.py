"""Training measurements: where a stage's update time goes, packed against one-step-per-forward updates, and a
stage in one process against one that reloads its models. Measured through public trainer methods, hooks and the
trainer's own timing metrics; nothing here replaces a trainer attribute."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

from b2lib.bench.timing import Timing, UnetTimer, paired_ratio, ratio_of_medians, time_pair
from b2lib.training.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["bench_training_share", "bench_update_packing", "bench_stage_reload"]


def bench_training_share(trainer, stages: int = 5) -> dict:
    """Share of a stage's *update* time (PPO epochs) spent in UNet forward + backward, and of its whole time.

    UNet forward time comes from hooks, split by the UNet's mode (sampling runs it in eval mode, the update in train
    mode); backward time is the trainer's own ``backward_s`` (wall time inside ``accelerator.backward``: the graph is
    the UNet plus a few element-wise ops of the DDIM step, so this is UNet backward to within those ops).
    """
    rows = []
    with UnetTimer(trainer.pipe.unet) as timer:
        for _ in range(stages):
            timer.reset()
            t = time.perf_counter()
            m = trainer.train_stage()
            total = time.perf_counter() - t
            rows.append(
                {
                    "stage": m["stage"],
                    "total_s": total,
                    "sample_s": m["sample_s"],
                    "train_s": m["train_s"],
                    "unet_forward_s": timer.seconds,
                    "sample_unet_s": timer.eval_seconds,
                    "backward_s": m["backward_s"],
                }
            )
    return {"stages": rows}


def bench_update_packing(packed, single, repeats: int = 5) -> dict:
    """The PPO update of one stage's kept samples with all of a micro-batch's interval steps in one forward
    (``packed``: a trainer with ``timestep_chunk=0``) vs one step per forward (``single``: ``timestep_chunk=1``, the
    reference), on the same samples: same gradient, different speed. The two trainers must differ in nothing else."""
    a, b = packed.config.to_dict(), single.config.to_dict()
    if (a.pop("timestep_chunk"), b.pop("timestep_chunk")) != (0, 1) or a != b:
        raise ValueError("bench_update_packing needs two trainers that differ only in timestep_chunk (0 and 1).")
    traj, rewards = packed.sample_stage(packed.stage)
    adv, keep = packed.advantages(traj, rewards)
    kept, kept_adv = traj.select(keep), adv[keep]
    fast, slow = time_pair(
        lambda r: packed.update(kept, kept_adv, packed.stage),
        lambda r: single.update(kept, kept_adv, single.stage),
        repeats,
        work=len(kept) * kept.num_steps * packed.config.epochs_per_stage,
        desc="packed | one step per forward",
    )
    return {
        "one_step_per_forward": slow.summary(),
        "packed": fast.summary(),
        "ratio": paired_ratio(fast, slow),
        "kept": len(kept),
        "steps": kept.num_steps,
    }


def bench_stage_reload(make_trainer: Callable[[], object], stages: int = 5, workdir: str | Path | None = None) -> dict:
    """A whole B² stage (sample, reward, select, train) in one process vs the same stage paying what a three-script
    pipeline pays each stage: building the models from disk, attaching LoRA, restoring the checkpoint before, and
    writing it after. ``make_trainer()`` loads the models and returns a fresh trainer."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="b2_bench_"))
    trainer = make_trainer()
    trainer.train_stage()  # warm-up
    inproc = []
    for _ in range(stages):
        t = time.perf_counter()
        trainer.train_stage()
        inproc.append(time.perf_counter() - t)
    ckpt = save_checkpoint(trainer, workdir / "stage")
    reload = []
    for _ in range(stages):
        t = time.perf_counter()
        fresh = make_trainer()
        load_checkpoint(fresh, ckpt)  # the same stage every time, so both columns time the same work
        fresh.train_stage()
        save_checkpoint(fresh, workdir / "stage_next")
        reload.append(time.perf_counter() - t)
        del fresh
    return {"in_process_s": inproc, "reloaded_s": reload, "ratio": ratio_of_medians(Timing(inproc), Timing(reload))}
