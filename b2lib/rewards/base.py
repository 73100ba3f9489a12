"""Rewards are callables ``(images, prompts) -> scores``: images a float tensor ``(N, 3, H, W)`` in ``[0, 1]`` (kept in
memory, never written to disk), prompts a list of ``N`` strings, scores a float tensor ``(N,)``.

:class:`ClipScore` is the paper's reward: the raw cosine similarity of OpenCLIP image and prompt embeddings (no x100,
no logit scale), by default with ViT-H-14 laion2B-s32B-b79K.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from b2lib.utils.precision import model_autocast

__all__ = ["RewardFn", "ClipScore", "Negated", "Redness", "RewardNotFiniteError", "check_reward_output", "check_finite"]

RewardFn = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def check_reward_output(scores, n: int, name: str = "reward") -> torch.Tensor:
    """Validate a reward's output: one finite float per image."""
    scores = torch.as_tensor(scores).float().flatten() if not torch.is_tensor(scores) else scores.float()
    if scores.shape != (n,):
        raise ValueError(f"{name} returned shape {tuple(scores.shape)} for {n} images; it must return ({n},).")
    return scores


class RewardNotFiniteError(FloatingPointError):
    """A reward returned NaN or inf for finite images: the reward function is at fault, not the training.

    Why its own type: a non-finite value met later in training usually means the model diverged (lower the learning
    rate), and the trainer says so; here the images were finite, so that advice would send the user the wrong way."""


def check_finite(scores: torch.Tensor, images: torch.Tensor, prompts: Sequence[str], name: str, stage: int) -> None:
    """Raise when ``scores`` holds NaN/inf: :class:`RewardNotFiniteError` if every image is finite (one line with how
    many, for which prompts, and what to fix), else a ``FloatingPointError`` (the model diverged: its images are not
    finite; the trainer adds where its last finite checkpoint is)."""
    bad = ~torch.isfinite(scores)
    if not bad.any():
        return
    if not torch.isfinite(images).all():
        raise FloatingPointError(
            f"{name} returned NaN/inf at stage {stage}; the last good state is the previous stage's checkpoint."
        )
    rows = bad.nonzero().flatten().tolist()
    shown = list(dict.fromkeys(prompts[i] for i in rows))
    listed = ", ".join(repr(p) for p in shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")
    kinds = "NaN" if scores[bad].isnan().all() else "inf" if scores[bad].isinf().all() else "NaN/inf"
    then = (
        "nothing was trained yet"
        if stage == 0
        else "the last good state is the previous stage's checkpoint (this stage stopped before its update): a run "
        "resumes there once the reward is fixed"
    )
    raise RewardNotFiniteError(
        f"{name} returned non-finite scores ({kinds}) for {len(rows)} of {len(scores)} images at stage {stage}, on "
        f"finite images (prompts {listed}): fix the reward function so that it returns a finite float per image "
        "(e.g. guard a division by zero, a log of 0, a mean over an empty selection); lowering the learning rate "
        f"will not help; {then}."
    )


def _check_images(images: torch.Tensor, prompts: Sequence[str]) -> None:
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a float tensor (N, 3, H, W) in [0, 1]; got {shape}.")
    if isinstance(prompts, str) or len(prompts) != images.shape[0]:
        raise ValueError(f"Need one prompt per image: {images.shape[0]} images, {len(prompts)} prompts (a list).")


class Negated:
    """``-reward_fn``: the reward's *sign control*. Training on it with the same seeds and recipe tells learning from
    drift: an update that follows the reward raises the reward when trained on ``reward_fn`` and lowers it when
    trained on ``Negated(reward_fn)``; a change both runs share (the weights wandering under noisy gradients) is
    drift. Half the difference of their (paired) evaluation rewards is the signal, half the sum the drift."""

    def __init__(self, reward_fn: Callable) -> None:
        self.reward_fn = reward_fn

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return -self.reward_fn(images, prompts)


class Redness:
    """A dense, prompt-free reward: the image's mean red channel minus the mean of its green and blue channels.

    Why it exists: a *positive control*. A global colour shift that any update can make raises every sample's score,
    so RL learns it in a few stages (``tests/integration/test_learning.py``) and its policy gradient has a signal that a
    measurement must find (notebook 10). A method or a measurement that fails on it is broken, not starved of signal.
    """

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        _check_images(images, prompts)
        return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


class ClipScore:
    """CLIPScore with an open_clip model: ``cos(E_img(image), E_txt(prompt))``.

    Build it from a model in memory (``ClipScore(model, tokenizer)``) or with :meth:`from_pretrained` from an
    open_clip model name plus a pretrained tag, a local checkpoint file, or an ``hf-hub:`` name.
    Preprocessing is done on tensors (bicubic resize to the model's input size, its mean/std), matching open_clip's
    transform for square images without a PIL round trip.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Callable,
        batch_size: int = 64,
        device: str | torch.device | None = None,
    ):
        import open_clip

        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.mean = torch.tensor(cfg.get("mean", OPENAI_MEAN), device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", OPENAI_STD), device=self.device).view(1, 3, 1, 1)

    @classmethod
    def from_pretrained(
        cls,
        model_name: str = "ViT-H-14",
        pretrained: str | os.PathLike = "laion2b_s32b_b79k",
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        batch_size: int = 64,
        model_config: str | os.PathLike | None = None,
    ) -> "ClipScore":
        """Load an open_clip model. ``pretrained`` is a tag (``laion2b_s32b_b79k``) or a local checkpoint file;
        ``model_config`` registers a custom model-config JSON (its file stem becomes ``model_name``) first.

        With the hub unreachable, the weights are looked up *before* the (large) model is built and a clear
        ``OSError`` says what to do.
        """
        import open_clip

        if model_config is not None:
            if not Path(model_config).exists():
                raise FileNotFoundError(f"open_clip model config {model_config} does not exist.")
            open_clip.add_model_config(model_config)
        ckpt = Path(pretrained)
        if not ckpt.exists():
            if str(pretrained).endswith((".pt", ".bin", ".safetensors")) or os.sep in str(pretrained):
                raise FileNotFoundError(f"CLIP checkpoint {ckpt} does not exist.")
            cfg = open_clip.get_pretrained_cfg(model_name, str(pretrained))
            if not cfg:
                raise ValueError(
                    f"open_clip knows no pretrained tag {pretrained!r} for {model_name!r}; see "
                    f"`open_clip.list_pretrained_tags_by_model({model_name!r})`, or pass a checkpoint path."
                )
            try:
                open_clip.download_pretrained(cfg)
            except Exception as err:  # the hub client raises several types offline
                raise OSError(
                    f"Could not fetch the {model_name} '{pretrained}' weights from the hub (offline or unreachable). "
                    "Download them where the hub is reachable and pass the checkpoint file as `pretrained=`. "
                    f"Original error: {type(err).__name__}: {err}"
                ) from err
        model, _, _ = open_clip.create_model_and_transforms(
            model_name, pretrained=str(pretrained), device=device, precision=precision
        )
        return cls(model, open_clip.get_tokenizer(model_name), batch_size=batch_size, device=device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, torch.float32)
        if tuple(images.shape[-2:]) != self.size:
            images = F.interpolate(images, size=self.size, mode="bicubic", align_corners=False, antialias=True)
        return (images.clamp(0, 1) - self.mean) / self.std

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised fp32 image embeddings; the image tower runs in the compute dtype (:mod:`b2lib.utils.precision`),
        the preprocessing and the normalisation in fp32."""
        dtype = next(self.model.parameters()).dtype
        pixels = self.preprocess(images).to(dtype)
        with model_autocast(self.device):
            feats = self.model.encode_image(pixels)
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def embed_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Normalised fp32 prompt embeddings; the text tower runs in the compute dtype
        (:mod:`b2lib.utils.precision`)."""
        tokens = self.tokenizer(list(prompts)).to(self.device)
        with model_autocast(self.device):
            feats = self.model.encode_text(tokens)
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def score_and_embed(self, images: torch.Tensor, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIPScores ``(N,)`` and the normalised image embeddings ``(N, D)`` from one pass of the image tower
        (evaluation needs both: the reward and semantic diversity)."""
        _check_images(images, prompts)
        unique = list(dict.fromkeys(prompts))
        text = self.embed_texts(unique)  # each distinct prompt encoded once
        row = {p: i for i, p in enumerate(unique)}
        index = torch.tensor([row[p] for p in prompts], device=self.device)
        feats = torch.cat(
            [self.embed_images(images[i : i + self.batch_size]) for i in range(0, images.shape[0], self.batch_size)]
        )
        return (feats * text[index]).sum(-1).cpu(), feats.cpu()

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.score_and_embed(images, prompts)[0]
