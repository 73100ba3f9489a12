"""The flow-SDE policy: SD3-family rectified-flow models (a transformer predicting velocity) sampled with the
flow-GRPO family's ODE→SDE step, each stochastic step a Gaussian with a closed-form log-prob (:mod:`b2lib.flow_sde`).

The chain is the stock ``FlowMatchEulerDiscreteScheduler``'s after ``set_timesteps``; a stored transition's step key
is its index into ``scheduler.sigmas`` (the model is conditioned on ``scheduler.timesteps[index]``, i.e.
``sigma * num_train_timesteps``, as ``StableDiffusion3Pipeline`` does). The conditioning is the stock pipeline's
``encode_prompt`` output, per-token and pooled embeddings, so what is trained is what a stock pipeline samples: with
``noise_level = 0`` (or only deterministic steps) the chain is ``StableDiffusion3Pipeline.__call__``'s, same generator,
same images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from .ddim_policy import decode_latents
from .flow_sde import flow_ode_step, flow_sde_mean_std, flow_sde_step_with_logprob
from .policy import Cond, Policy
from .precision import model_autocast

__all__ = [
    "FlowSDEPolicy",
    "predict_velocity",
    "RepeatedTokenAttnProcessor",
    "compact_zero_tokens",
    "STOCK_T5_TOKENS",
]

#: Zero "T5" tokens a T5-less ``StableDiffusion3Pipeline`` appends to the CLIP tokens at its default
#: ``max_sequence_length``.
STOCK_T5_TOKENS = 256


class RepeatedTokenAttnProcessor:
    """SD3's joint attention, able to run its last context token as ``last_token_repeats`` identical copies of it.

    Why: without T5, ``StableDiffusion3Pipeline`` appends ``max_sequence_length`` (256 by default) all-zero "T5"
    tokens to the prompt's CLIP tokens. They are identical, so they stay identical through every block, and in the
    softmax ``r`` copies of one key weigh exactly as one copy whose logit is raised by ``log r``. Running one such
    token with that bias computes what the stock pipeline computes with 256 (to float rounding) at a fraction of the
    cost: on the flow world the 256 tokens would be 3/4 of every forward's tokens. The world is pretrained, sampled and
    trained this way, so a stock ``StableDiffusion3Pipeline`` with its defaults generates the images it learned
    (tests/test_flow_policy.py).

    ``last_token_repeats`` arrives through the transformer's ``joint_attention_kwargs``; without it (a stock pipeline
    call on the same object) this is the stock processor's computation. Runtime state only: nothing is saved.
    """

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, last_token_repeats: int = 1
    ):
        batch, n_image = hidden_states.shape[0], hidden_states.shape[1]
        heads = attn.heads

        def split(x: torch.Tensor, norm) -> torch.Tensor:
            x = x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)
            return norm(x) if norm is not None else x

        query = split(attn.to_q(hidden_states), attn.norm_q)
        key = split(attn.to_k(hidden_states), attn.norm_k)
        value = split(attn.to_v(hidden_states), None)
        bias = None
        if encoder_hidden_states is not None:
            query = torch.cat([query, split(attn.add_q_proj(encoder_hidden_states), attn.norm_added_q)], dim=2)
            key = torch.cat([key, split(attn.add_k_proj(encoder_hidden_states), attn.norm_added_k)], dim=2)
            value = torch.cat([value, split(attn.add_v_proj(encoder_hidden_states), None)], dim=2)
            if last_token_repeats != 1:
                bias = torch.zeros(1, key.shape[2], dtype=query.dtype, device=query.device)
                bias[:, -1] = math.log(last_token_repeats)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        out = out.transpose(1, 2).reshape(batch, -1, query.shape[1] * query.shape[-1]).to(query.dtype)
        image, context = out[:, :n_image], out[:, n_image:]
        image = attn.to_out[1](attn.to_out[0](image))
        if encoder_hidden_states is None:
            return image
        if not attn.context_pre_only:
            context = attn.to_add_out(context)
        return image, context


def compact_zero_tokens(transformer: torch.nn.Module) -> None:
    """Give ``transformer`` the :class:`RepeatedTokenAttnProcessor` (idempotent). It computes as the stock processor
    unless a call passes ``joint_attention_kwargs={"last_token_repeats": r}``."""
    if not all(isinstance(p, RepeatedTokenAttnProcessor) for p in transformer.attn_processors.values()):
        transformer.set_attn_processor(RepeatedTokenAttnProcessor())


def predict_velocity(
    transformer: torch.nn.Module,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Cond,
    guidance_scale: float,
    last_token_repeats: int = 1,
) -> torch.Tensor:
    """Guided velocity with ONE transformer call on the ``[uncond, cond]`` batch, as ``StableDiffusion3Pipeline`` does
    it; shared by sampling and the update's log-prob recomputation. In the latents' dtype (bf16 autocast inside)."""
    if cond.pooled is None:
        raise ValueError(
            "An SD3-family transformer needs pooled text embeddings (Cond.pooled): encode with the policy."
        )
    cond.check(latents.shape[0])
    timesteps = torch.as_tensor(timesteps, device=latents.device)
    if timesteps.ndim == 0:
        timesteps = timesteps.expand(latents.shape[0])
    guided = cond.negative is not None and guidance_scale > 1.0
    if guided:
        latents_in, timesteps = torch.cat([latents, latents]), timesteps.repeat(2)
        embeds, pooled = torch.cat([cond.negative, cond.embeds]), torch.cat([cond.negative_pooled, cond.pooled])
    else:
        latents_in, embeds, pooled = latents, cond.embeds, cond.pooled
    with model_autocast(latents.device):
        out = transformer(
            hidden_states=latents_in,
            timestep=timesteps,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            joint_attention_kwargs={"last_token_repeats": last_token_repeats} if last_token_repeats != 1 else None,
            return_dict=False,
        )[0]
    out = out.to(latents.dtype)
    if not guided:
        return out
    uncond, cond_out = out.chunk(2)
    return uncond + guidance_scale * (cond_out - uncond)


class FlowSDEPolicy(Policy):
    """``pipe.transformer`` under the flow SDE: step keys are chain indices; ``noise_level`` is the SDE's ``a``."""

    denoiser_name = "transformer"

    def __init__(self, pipe) -> None:
        if not isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler):
            raise ValueError(
                f"The pipeline's scheduler is {type(pipe.scheduler).__name__}; the flow-SDE policy needs a "
                "FlowMatchEulerDiscreteScheduler: `pipe.scheduler = "
                "FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)`."
            )
        if pipe.scheduler.config.get("use_dynamic_shifting", False):
            raise ValueError(
                "The scheduler uses dynamic shifting (its shift depends on the image size, set per call by the "
                "pipeline); the policy runs set_timesteps itself: use a static `shift` in the scheduler config."
            )
        super().__init__(pipe)
        # Without T5 the stock pipeline's 256 zero tokens are run as one token standing for all of them
        self.compact_t5 = getattr(pipe, "text_encoder_3", None) is None
        if self.compact_t5:
            compact_zero_tokens(pipe.transformer)

    def step_keys(self) -> torch.Tensor:
        return torch.arange(len(self.scheduler.timesteps), device=self.scheduler.timesteps.device)

    def encode(self, prompts: list[str], guidance_scale: float) -> Cond:
        embeds, negative, pooled, negative_pooled = self.pipe.encode_prompt(
            prompt=list(prompts),
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=guidance_scale > 1.0,
            **({"max_sequence_length": 1} if self.compact_t5 else {}),
        )
        return Cond(embeds, negative, pooled, negative_pooled)

    def initial_noise(self, n: int, generator: torch.Generator | None, dtype: torch.dtype) -> torch.Tensor:
        config = self.pipe.transformer.config
        shape = (n, config.in_channels, config.sample_size, config.sample_size)
        return randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)

    def _timesteps(self, key: torch.Tensor) -> torch.Tensor:
        timesteps = self.scheduler.timesteps
        return timesteps[torch.as_tensor(key, device=timesteps.device).long()]

    def predict(
        self, model: torch.nn.Module, latents: torch.Tensor, key: torch.Tensor, cond: Cond, guidance_scale: float
    ) -> torch.Tensor:
        timesteps = self._timesteps(key).to(latents.device)
        repeats = STOCK_T5_TOKENS if self.compact_t5 else 1
        return predict_velocity(model, latents, timesteps, cond, guidance_scale, repeats)

    def mean_std(
        self, pred: torch.Tensor, key: torch.Tensor, latents: torch.Tensor, noise_level: float, explore_grid: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return flow_sde_mean_std(self.scheduler, pred, _index(key), latents, noise_level, explore_grid)

    def step(
        self,
        pred: torch.Tensor,
        key: torch.Tensor,
        latents: torch.Tensor,
        noise_level: float,
        generator: torch.Generator | None,
        explore_grid: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return flow_sde_step_with_logprob(
            self.scheduler, pred, _index(key), latents, noise_level, generator=generator, explore_grid=explore_grid
        )

    def deterministic_step(self, pred: torch.Tensor, key: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return flow_ode_step(self.scheduler, pred, _index(key), latents)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return decode_latents(self.pipe, latents)


def _index(key: torch.Tensor) -> torch.Tensor | int:
    key = torch.as_tensor(key)
    return int(key) if key.ndim == 0 else key.long()
