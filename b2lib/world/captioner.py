"""A programmatic captioner for the shape world: the judge's detections, written in the templates' words.

Why it exists: the paper's BERTScore captions each generated image (BLIP) and compares the caption with
the prompt using BERT embeddings. The shape world has no learnt captioner, but its judge already reads
every image (:func:`~b2lib.world.judge.detect_objects`: colour, shape and position of each object), so
that reading *is* the world's captioner. BERTScore at this scale is therefore a text-similarity view of
the judge's reading, not an independent model: a wrong count, colour, shape or relation seen by the
judge becomes a wrong word in the caption, which the text model scores softly.

Caption forms, in the vocabulary of :mod:`b2lib.world.prompts`:

* one kind of object (same colour and shape): the counting form, ``"three red circles"``,
  ``"one blue square"``;
* two objects, as a binding sentence ``"a red circle and a blue square"`` or a relation sentence
  ``"a red circle above a blue square"`` (relation picked from the bounding-box centres as the judge
  does: the axis of the larger offset, so ``"above"`` means the subject's centre is higher);
* anything else, the groups of identical objects joined by "and": ``"two red circles and one blue
  square"``; no object at all is ``"nothing"``; a blob of no recognisable shape is a ``"shape"``.

Which form, and the order of the objects, follow the image's prompt when one is given
(``caption_images(images, prompts)``): the prompt's template picks the sentence form and its objects
are named first, so a correct image gets exactly its prompt back (canonical text, as
:func:`~b2lib.world.prompts.format_prompt` writes it). The prompt never changes *what* is said:
counts, colours, shapes and the relation all come from the detections. Without prompts, one kind is a
counting caption, two different objects a relation sentence (it says the most), else the groups.
"""

from __future__ import annotations

from typing import Any, Sequence

from b2lib.world.judge import Detection, _to_numpy, detect_objects
from b2lib.world.prompts import TEMPLATES, PromptSpec, _parse_cached

__all__ = ["caption_images", "caption_detections"]

# Counts beyond the world's vocabulary (a generated image may show anything) still get words.
_NUMBER_WORDS = ("nothing", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_UNKNOWN_SHAPE = "shape"  # the judge's "unknown" shape, in words

Kind = tuple[str, str]  # (colour, shape word)


def _kind(d: Detection) -> Kind:
    return d.colour, (_UNKNOWN_SHAPE if d.shape == "unknown" else d.shape)


def _number(n: int) -> str:
    return _NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else str(n)


def _noun(kind: Kind, n: int) -> str:
    colour, shape = kind
    return f"{colour} {shape}{'s' if n > 1 else ''}"


def _relation(a: Detection, b: Detection) -> str:
    """``"a <relation> b"`` from bounding-box centres (y grows downwards): the axis of the larger
    offset decides, as in the judge (:func:`~b2lib.world.judge._relation_holds`)."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if abs(dy) >= abs(dx):
        return "above" if dy > 0 else "below"
    return "left of" if dx > 0 else "right of"


def _order(dets: list[Detection], spec: PromptSpec | None) -> list[Detection]:
    """Detections with the prompt's objects first, in prompt order (exact colour+shape match, else
    shape, else colour, as the judge matches them); the rest keep the detector's order."""
    if spec is None:
        return list(dets)
    pool, first = list(dets), []
    for _, colour, shape in spec.items:
        for test in (
            lambda d: d.colour == colour and d.shape == shape,
            lambda d: d.shape == shape,
            lambda d: d.colour == colour,
        ):
            hit = next((d for d in pool if test(d)), None)
            if hit is not None:
                pool.remove(hit)
                first.append(hit)
                break
    return first + pool


def _groups(dets: list[Detection], one: str) -> str:
    """Groups of identical objects in first-seen order: "two red circles and one blue square"."""
    counts: dict[Kind, int] = {}
    for d in dets:
        counts[_kind(d)] = counts.get(_kind(d), 0) + 1
    if not counts:
        return _NUMBER_WORDS[0]
    parts = [f"{one if n == 1 else _number(n)} {_noun(k, n)}" for k, n in counts.items()]
    return " and ".join(parts)


def caption_detections(dets: Sequence[Detection], prompt: str | None = None, template: str | None = None) -> str:
    """Caption one image's detections (module docs). ``prompt`` (its template and object order) or
    ``template`` alone picks the sentence form; neither: the form that says the most."""
    spec = _parse_cached(prompt) if prompt is not None else None
    if spec is not None:
        template = spec.template
    if template is not None and template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; supported templates: {', '.join(TEMPLATES)}")
    dets = _order(list(dets), spec)
    kinds = {_kind(d) for d in dets}
    if len(kinds) == 1 and (template in (None, "counting") or len(dets) != 2):
        return f"{_number(len(dets))} {_noun(_kind(dets[0]), len(dets))}"  # counting form
    if len(dets) == 2 and template != "counting":
        (a, b), ((c1, s1), (c2, s2)) = dets, (_kind(dets[0]), _kind(dets[1]))
        if template == "binding":
            return f"a {c1} {s1} and a {c2} {s2}"
        return f"a {c1} {s1} {_relation(a, b)} a {c2} {s2}"
    return _groups(dets, "one" if template in (None, "counting") else "a")


def caption_images(images: Any, prompts: Sequence[str] | str | None = None, template: str | None = None) -> list[str]:
    """Caption a batch of shape-world images with the judge's detector (module docs).

    ``images``: (N, 3, H, W) or (N, H, W, 3), float in [0, 1] or uint8, numpy or torch, or a sequence
    of single images. ``prompts`` (one per image, or one string for all) pick each caption's form and
    object order; ``template`` picks one form for all images when no prompts are given."""
    if hasattr(images, "detach") or hasattr(images, "ndim"):
        arr = _to_numpy(images)
        if arr.ndim != 4:
            raise ValueError(
                f"a batch of images must be 4-D (N, 3, H, W) or (N, H, W, 3); got shape {arr.shape}. "
                "Add a batch dimension (image[None]) for one image."
            )
        images = list(arr)
    else:
        images = list(images)
    if prompts is None:
        prompts_: list[str | None] = [None] * len(images)
    elif isinstance(prompts, str):
        prompts_ = [prompts] * len(images)
    else:
        prompts_ = list(prompts)
        if len(prompts_) != len(images):
            raise ValueError(f"need one prompt per image: {len(images)} images, {len(prompts_)} prompts.")
    return [caption_detections(detect_objects(img), p, template) for img, p in zip(images, prompts_)]
