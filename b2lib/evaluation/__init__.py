"""Evaluation: how a model is scored and how two models are compared.

- ``generate``: evaluation images with the same noise for every model, scored by the reward and other metrics;
- ``metrics``: metrics beyond the reward (within-prompt diversity);
- ``comparisons``: paired comparisons from per-image scores; ``stats``: their two-level bootstrap intervals;
- ``health``: a run's training health from its stage log (train-reward rise over its noise, KL, update size).
"""
