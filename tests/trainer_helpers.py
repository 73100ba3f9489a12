"""Helpers of the trainer's tests: a cheap reward and a tiny configuration."""


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
