"""The policy interface: what the RL loop needs from a sampler whose stochastic steps are Gaussians.

B²'s strategies (a shared prefix, branches where the trained interval starts, trees, the backward-progressive window)
and the updates it wraps (PPO-clip, DPOK-style KL, GRPO-style) never look inside a denoising step: they need a chain
of steps, the ability to run any slice of it stochastically (recording each transition's log-prob) or
deterministically, and the log-prob of a stored transition under the current weights. :class:`Policy` is exactly that,
so the chain functions (:mod:`b2lib.algorithm.sampling`, :mod:`b2lib.algorithm.tree`) and the trainer run unchanged over

* :class:`b2lib.policies.ddim.DDIMPolicy`: Stable Diffusion 1.x, a UNet predicting noise, DDIM steps with ``eta``;
* :class:`b2lib.policies.flow.FlowSDEPolicy`: SD3-family rectified flow, a transformer predicting velocity, the
  flow-GRPO family's ODE→SDE step with noise level ``a``.

The one number that sets how stochastic a step is is called ``noise_level`` here; it is DDIM's ``eta`` for one and the
SDE's ``a`` for the other (``TrainerConfig.eta`` carries it). Every stochastic step of both is
``N(mean(x_t), std_t^2 I)`` with a closed-form log-prob (:func:`b2lib.policies.gaussian.step_log_prob`), and the
deterministic step is the stock scheduler's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch

from b2lib.policies.gaussian import explore_coords, step_log_prob
from b2lib.policies.vae import decode_latents

__all__ = ["Cond", "Policy", "as_policy"]


@dataclass
class Cond:
    """The text conditioning of a batch of rows: per-token embeddings, and for SD3-family models the pooled ones; the
    ``negative_*`` fields are the empty prompt's (classifier-free guidance), ``None`` without guidance."""

    embeds: torch.Tensor
    negative: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Cond":
        """``fn`` applied to every tensor that is there."""
        return Cond(**{f.name: (None if (v := getattr(self, f.name)) is None else fn(v)) for f in fields(self)})

    def repeat_interleave(self, k: int) -> "Cond":
        """Each row ``k`` times (a row per branch), prompt-major."""
        return self.map(lambda x: x.repeat_interleave(k, dim=0))

    def check(self, n: int) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value.shape[0] != n:
                raise ValueError(
                    f"{n} latents but {value.shape[0]} rows of {f.name}: give one embedding row per sample "
                    "(repeat_interleave the prompt embeddings over branches)."
                )


class Policy(ABC):
    """A text-to-image sampler seen as an RL policy. Wraps a diffusers pipeline (``self.pipe``); the trained network is
    :attr:`denoiser` (its LoRA, fusing and reference-model switches act on it).

    Chain positions are indices ``0 .. num_steps - 1`` (0 starts from pure noise). What a stored transition records
    for its step is the policy's *step key* (:meth:`step_keys`): the step's value of whatever the model is conditioned
    on, or its index, as long as :meth:`predict` and :meth:`mean_std` read it back.
    """

    #: the pipeline attribute that holds the trained network
    denoiser_name: str = "unet"

    def __init__(self, pipe) -> None:
        self.pipe = pipe

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser_name)

    @property
    def scheduler(self):
        return self.pipe.scheduler

    @property
    def device(self) -> torch.device:
        return self.pipe.device

    def prepare(self, num_steps: int) -> None:
        """Make the scheduler hold a chain of ``num_steps`` steps (a no-op when it does)."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
        if getattr(self.scheduler, "num_inference_steps", None) != num_steps:  # absent before set_timesteps (flow)
            self.scheduler.set_timesteps(num_steps, device=self.device)

    @abstractmethod
    def step_keys(self) -> torch.Tensor:
        """``(num_steps,)``: the key of each chain position, as stored in ``Trajectories.timesteps``."""

    @abstractmethod
    def encode(self, prompts: list[str], guidance_scale: float) -> Cond:
        """The prompts' conditioning; with ``guidance_scale > 1`` the empty prompt's too."""

    @abstractmethod
    def initial_noise(self, n: int, generator: torch.Generator | None, dtype: torch.dtype) -> torch.Tensor:
        """``x_T`` for ``n`` samples, drawn as the stock pipeline draws it (same generator, same values)."""

    @abstractmethod
    def predict(
        self, model: torch.nn.Module, latents: torch.Tensor, key: torch.Tensor, cond: Cond, guidance_scale: float
    ) -> torch.Tensor:
        """The guided model output at ``latents`` (one forward on the ``[uncond, cond]`` batch), in the latents'
        dtype. ``model`` is :attr:`denoiser` or its training wrapper; ``key`` a scalar or one per row."""

    @abstractmethod
    def mean_std(
        self, pred: torch.Tensor, key: torch.Tensor, latents: torch.Tensor, noise_level: float, explore_grid: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The stochastic step's Gaussian: ``mean`` like ``latents`` (differentiable w.r.t. ``pred``), ``std``
        ``(batch,)``. ``explore_grid``: noise only on a coarse lattice
        (:func:`b2lib.policies.gaussian.explore_project`)."""

    @abstractmethod
    def step(
        self,
        pred: torch.Tensor,
        key: torch.Tensor,
        latents: torch.Tensor,
        noise_level: float,
        generator: torch.Generator | None,
        explore_grid: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One stochastic step: ``(next_latents, log_prob)``."""

    @abstractmethod
    def deterministic_step(self, pred: torch.Tensor, key: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """The noise-free step (DDIM with eta = 0, the flow ODE's Euler step): the stock scheduler's."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in ``[0, 1]``, float32, ``(N, 3, H, W)``: the pipeline's VAE, the same call for both families."""
        return decode_latents(self.pipe, latents)

    def transition(
        self,
        model: torch.nn.Module,
        traj: Any,
        rows: torch.Tensor,
        cols: torch.Tensor,
        guidance_scale: float,
        noise_level: float,
        device: torch.device | str | None = None,
        explore_grid: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The policy Gaussian at stored transitions (sample ``rows[i]``, interval step ``cols[i]``) of ``traj`` (the
        algorithm's :class:`~b2lib.algorithm.sampling.Trajectories`, which the interface does not import) under
        ``model``: ``(log_prob, mean, std)``. ``log_prob`` is what the PPO ratio compares with ``traj.log_probs``;
        ``mean`` (in the explored coordinates under ``explore_grid``) and ``std`` are what a KL to a reference model
        needs. One forward for all three, differentiable w.r.t. the model's parameters."""
        rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
        if rows.shape != cols.shape or rows.ndim != 1:
            raise ValueError(f"rows {tuple(rows.shape)} and cols {tuple(cols.shape)} must be equal 1-D shapes.")
        device = device if device is not None else traj.latents.device
        latents = traj.latents[rows, cols].to(device)
        nexts = traj.next_latents[rows, cols].to(device)
        key = traj.timesteps[rows, cols].to(device)
        cond = traj.cond(rows).map(lambda x: x.to(device))
        pred = self.predict(model, latents, key, cond, guidance_scale)
        mean, std = self.mean_std(pred, key, latents, noise_level, explore_grid)
        return step_log_prob(nexts, mean, std, explore_grid), explore_coords(mean, explore_grid), std


#: the policy classes: ``(matches(pipe), class)``, tried in order; ``matches`` None: the fallback, tried last
_POLICIES: list[tuple[Callable[[object], bool] | None, type]] = []


def register_policy(matches: Callable[[object], bool] | None = None):
    """Class decorator: ``cls`` is the policy of every pipeline ``matches`` accepts (``None``: of any pipeline no
    other policy accepts). Why a registry: the interface knows no implementation, so a new policy is a new file,
    not an edit here."""

    def add(cls: type) -> type:
        _POLICIES.append((matches, cls))
        _POLICIES.sort(key=lambda entry: entry[0] is None)
        return cls

    return add


def as_policy(pipe) -> Policy:
    """The policy view of a pipeline: a :class:`Policy` is returned as it is; otherwise the first registered policy
    that accepts the pipeline wraps it: an SD3-family pipeline (a ``transformer``) becomes a
    :class:`~b2lib.policies.flow.FlowSDEPolicy`, anything else a :class:`~b2lib.policies.ddim.DDIMPolicy` (which checks
    that its scheduler is DDIM)."""
    if isinstance(pipe, Policy):
        return pipe
    for matches, cls in _POLICIES:
        if matches is None or matches(pipe):
            return cls(pipe)
    raise TypeError(f"No policy accepts a {type(pipe).__name__}: import b2lib.policies to register the stock ones.")
