"""Training: one RL fine-tuning loop, the configuration beside it.

- ``config``: :class:`TrainerConfig`, the one configuration (B², DDPO and their ablations are settings; the recipes'
  switches by :func:`recipe_switches`);
- ``trainer``: the loop, sample -> score -> advantages/selection -> update -> log, one stage at a time;
- ``update``: the update over stored transitions (micro-batches, gradient accumulation, update size);
- ``cost``: a stage's and a run's model work, for budgets of equal compute;
- ``checkpoint``: resumable checkpoints without pickle, LoRA export checked on reload;
- ``models``: tokenizer, tiny pipelines from config, hub and local loading, LoRA adapters.
"""
