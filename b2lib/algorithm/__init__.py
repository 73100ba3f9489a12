"""B²-DiffuRL's algorithm over any policy (:mod:`b2lib.policies`):

- ``sampling``: trajectories with per-step log-probabilities, plain (DDPO) or branched where the trained interval
  begins (branch-based sampling);
- ``tree``: trees that split at several chain indices, B² as the depth-1 case;
- ``schedule``: backward progressive training, the trained interval per stage;
- ``advantages``: normalisation and in-group selection;
- ``losses``: PPO-clip, the KL-regularised and group-relative losses on per-step log-probabilities.
"""
