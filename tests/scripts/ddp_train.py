"""Run under `accelerate launch --num_processes 2 --cpu`: a 2-stage B² run on the tiny pipeline; every process writes
a digest of its LoRA weights, so the test can check that the gradients were synchronised."""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from accelerate import Accelerator

from b2lib import B2Trainer, TrainerConfig

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # tests/tiny.py
from tiny import build_tiny_pipeline  # noqa: E402


def redness(images, prompts):
    return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


def main(out_dir: str) -> None:
    acc = Accelerator(cpu=True)
    pipe = build_tiny_pipeline(seed=0)
    cfg = TrainerConfig.b2(
        num_steps=5,
        num_stages=2,
        split_start=2,
        prompts_per_stage=4,
        sample_batch_size=2,
        num_branches=3,
        grad_accum=2,
        pos_threshold=0.3,
        neg_threshold=-0.3,
        progress=False,
    )
    trainer = B2Trainer(pipe, redness, ["a red circle", "two blue squares", "a green triangle"], cfg, accelerator=acc)
    before = {n: p.detach().clone() for n, p in trainer.named_trainable().items()}
    trainer.train()
    after = trainer.named_trainable()
    digest = {
        "process": acc.process_index,
        "num_processes": acc.num_processes,
        "weights_sum": float(sum(p.detach().double().sum() for p in after.values())),
        "changed": max(float((after[n] - before[n]).abs().max()) for n in before),
        "kept": [m["kept"] for m in trainer.log],
        "images_seen": trainer.images_seen,
    }
    with open(os.path.join(out_dir, f"rank{acc.process_index}.json"), "w") as f:
        json.dump(digest, f)


if __name__ == "__main__":
    main(sys.argv[1])
