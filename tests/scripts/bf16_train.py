"""A 1-stage B² run with a bf16 base model and accelerate bf16 mixed precision on CPU (run in its own process:
accelerate's state is a per-process singleton). Prints the trainable dtype and whether the weights changed."""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from accelerate import Accelerator

from b2lib import B2Trainer, TrainerConfig

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # tests/tiny.py
from tiny import build_tiny_pipeline  # noqa: E402

pipe = build_tiny_pipeline(seed=0).to(dtype=torch.bfloat16)
cfg = TrainerConfig.b2(
    num_steps=4,
    num_stages=1,
    split_start=2,
    prompts_per_stage=4,
    sample_batch_size=4,
    num_branches=3,
    grad_accum=2,
    pos_threshold=0.3,
    neg_threshold=-0.3,
    progress=False,
    mixed_precision="bf16",
)


def reward(im, p):
    return im[:, 0].float().mean((1, 2))


trainer = B2Trainer(
    pipe, reward, ["a red circle", "a blue square"], cfg, accelerator=Accelerator(cpu=True, mixed_precision="bf16")
)
before = {n: p.detach().clone() for n, p in trainer.named_trainable().items()}
trainer.train()
after = trainer.named_trainable()
dtypes = {str(p.dtype) for p in after.values()}
changed = max(float((after[n] - before[n]).detach().abs().max()) for n in before)
print(
    f"RESULT dtypes={sorted(dtypes)} changed={changed > 0} "
    f"finite={all(torch.isfinite(p).all() for p in after.values())}"
)
