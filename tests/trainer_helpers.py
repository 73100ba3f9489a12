"""Helpers of the training tests: a cheap reward, a tiny trainer configuration and a tiny run."""


def redness(images, prompts):
    """A cheap differentiable-free reward: how red the image is."""
    return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


def _small(**kw):
    base = dict(
        num_steps=6,
        num_stages=2,
        split_start=3,
        prompts_per_stage=4,
        sample_batch_size=4,
        num_branches=3,
        train_batch_size=2,
        grad_accum=2,
        pos_threshold=0.3,
        neg_threshold=-0.3,
        progress=False,
    )
    base.update(kw)
    return base


#: a one-stage B² run at toy size, for the tests that need a finished run folder
TINY = dict(
    methods=("b2",),
    seeds=(0,),
    stages=1,
    images_per_stage=4,
    branches=2,
    eval_images=2,
    eval_max_prompts=2,
    bertscore=False,
    grid_prompts=0,
    overrides={"num_steps": 2, "split_start": 1, "lr": 3e-3},
)
