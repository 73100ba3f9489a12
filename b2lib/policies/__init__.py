"""Policies: a denoising chain whose stochastic steps are Gaussians with closed-form log-probabilities.

- ``base``: the interface the algorithm and the trainer use (:class:`Policy`, :class:`Cond`, :func:`as_policy`), which
  knows no implementation: each registers itself (:func:`register_policy`);
- ``ddim``: Stable Diffusion 1.x with DDIM's step, its math and its class in one file (the paper's policy);
- ``flow``: SD3-family rectified flow with the flow-GRPO family's ODE→SDE step, likewise in one file;
- ``gaussian``: the Gaussian step both share (noise, coarse exploration, log-probability);
- ``vae``: decoding latents to images.

Importing this package registers both policies.
"""

from b2lib.policies import ddim, flow  # noqa: F401  (registration: each policy class registers itself)
from b2lib.policies.base import Cond, Policy, as_policy, register_policy

__all__ = ["Cond", "Policy", "as_policy", "register_policy"]
