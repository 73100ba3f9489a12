"""Mixed-colour objects: does a generated object blend two palette colours into one blob?

Why: on binding prompts ("a blue circle and a green square") a fine-tuned model can raise the CLIPScore by drawing
blobs whose colour lies *between* the two asked colours (teal for blue + green, orange for red + yellow): CLIP sees
both colours, while the judge (:mod:`b2lib.world.judge`), which gives every pixel its nearest palette colour, sees a
blob of one colour and the other colour missing. This module measures that failure per image.

Definition (:func:`colour_mixing`). An *object* is a connected region (8-connected) of foreground pixels: pixels
whose nearest palette entry (:func:`b2lib.world.judge.detect_objects`' palette, background included) is a colour,
with the judge's area threshold (:data:`~b2lib.world.judge.MIN_AREA_FRACTION`). Unlike the judge, pixels far from
every palette entry stay foreground here when a colour is nearer than the background: the judge drops them as
"unknown", but these are exactly the pixels a blend makes (a red + blue mixture is purple, far from both), and
dropping them would cut a blended blob into pieces. Each foreground pixel's *chroma* (RGB minus its grey level,
relative to the background's tint as in the judge) is split between the two palette colours adjacent to it in hue
(red 0°, yellow 52°, green 128°, blue 228°; every gap is under 180°, so the split is a unique non-negative
combination): ``chroma = a * chroma(A) + b * chroma(B)``, weights ``a / (a + b)`` and ``b / (a + b)``. A linear RGB
mixture ``(1 - t) A + t B`` of two hue-adjacent colours gets weights ``1 - t`` and ``t`` exactly, and the split
ignores lightness (a pale or dark generated colour, an antialiased edge against the background keep their weights).
An object's *colour shares* are the mean weights over its chromatic pixels (``a + b >=`` :data:`MIN_CHROMA`). The
object is **mixed** when two or more colours each hold at least ``min_share`` (:data:`MIN_SHARE`) of it: they lie in
one connected region, so they touch (two-part blob) or share the same pixels (uniform blend).

Per image: ``n_objects``, ``n_mixed``, ``mixed_any`` (``n_mixed > 0``), and, for prompts that name two different
colours (binding, relation), ``asked_colours_mixed``: some mixed object holds *both* asked colours (None otherwise).
Continuous scores come too (``mixed_share``: the largest second-colour share of any object; ``asked_share``: the
largest ``min(share(A), share(B))`` of the asked colours), so any threshold can be applied afterwards.

The literal hard-label variant (``*_hard``): objects are the connected regions of the judge's own pixel labels
(unknown pixels as background), shares are the fractions of pixels labelled each colour, and two colours must each
hold ``min_share`` and touch (8-adjacent pixels). It misses uniform blends (a teal blob is labelled all blue or all
green, see the validation), which is why the hue-split version is the headline one.

Limits, by construction: a blue + yellow mixture is grey (no hue), and a red + green one olive (read mostly as a dark
yellow); such blends are seen only where the blob still shows both hues, e.g. a two-part blob. Two distinct objects
of different colours that touch form one region and count as mixed (clean renders never touch: the scenes keep a gap
of 4 px between bounding boxes).

Measured with :func:`mixing_validation` (300 scenes per template, seed 0): ``mixed_any`` is 0.000 on clean renders of
every template and on the same scenes degraded (noise 8/255 + blur 0.7 px; also 0.000 at noise 24/255 + blur 1.2 px),
in both variants. On one-object blends (50 per colour pair and kind, degraded), ``asked_colours_mixed`` is 1.00 for
every two-part (``halves``) blob and every ``gradient`` except red + green (0.62); for uniform blends (``mid``: the
RGB midpoint; ``tint``: 0.65 A + 0.35 B) it is 1.00 for the four hue-neighbour pairs and 0.00 for red + green and
blue + yellow (the limits above). The hard-label variant finds 0.00 of the blue + green, green + yellow and red + blue
tints and 0.14 of the red + yellow ones, which is why it is not the headline. The threshold (0.25) sits just above
the tint of the base model's plain objects in a first look at 64 binding images (its blue objects carry a 0.05 to
0.23 green share); since it was chosen by eye, the comparison is repeated at 0.15 to 0.35 (:func:`mixing_comparisons`).

On the template runs (``results/templates/colour_mixing*.csv``: 5 seeds, test prompts, the runs' own images, whose
stored judge verdicts are reproduced on every image): B² − base ``asked_colours_mixed`` +0.12 [0.04, 0.23] on binding
and +0.13 [0.08, 0.19] on relation, DDPO − base ~0 on both; the rise is in the blue + green (teal) and red + yellow
(orange) prompts. On counting B² mixes less than the base model (``mixed_any`` −0.17 [−0.33, −0.03]).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from b2lib.world.judge import _PALETTE, MIN_AREA_FRACTION, _as_image, _pixel_labels, degrade
from b2lib.world.prompts import TEMPLATES, _parse_cached, sample_scene
from b2lib.world.scenes import BACKGROUND, COLOURS, SHAPES, Obj, Scene, render

__all__ = [
    "MIN_SHARE",
    "MIN_CHROMA",
    "MIXING_METRICS",
    "BLEND_KINDS",
    "SENSITIVITY_SHARES",
    "ColourRegion",
    "ColourMixing",
    "colour_weights",
    "colour_mixing",
    "colour_mixing_batch",
    "blend_scene_image",
    "mixing_validation",
]

#: share of an object that each of two colours must hold for the object to be mixed
MIN_SHARE: float = 0.25
#: chroma (in units of a full palette colour's) below which a pixel's hue is not read (background, grey, faint edge)
MIN_CHROMA: float = 0.3
#: per-image 0/1 columns of the study compared between models (``*_hard``: the hard-label variant)
MIXING_METRICS: tuple[str, ...] = ("mixed_any", "asked_colours_mixed", "mixed_any_hard", "asked_colours_mixed_hard")

#: other share thresholds at which :func:`mixing_comparisons` repeats the comparison (sensitivity)
SENSITIVITY_SHARES: tuple[float, ...] = (0.15, 0.2, 0.3, 0.35)
#: synthetic blends of :func:`blend_scene_image`
BLEND_KINDS: tuple[str, ...] = ("halves", "mid", "tint", "gradient")

_COLOUR_NAMES = tuple(COLOURS)
_N = len(_COLOUR_NAMES)
_STRUCT8 = np.ones((3, 3), dtype=bool)


def _plane(c: np.ndarray) -> np.ndarray:
    """Chroma ``(..., 3)`` (RGB minus grey) -> coordinates ``(..., 2)`` in the plane orthogonal to grey."""
    return np.stack([c[..., 0] - 0.5 * (c[..., 1] + c[..., 2]), np.sqrt(3.0) / 2.0 * (c[..., 1] - c[..., 2])], -1)


_COLOURS01 = _PALETTE[1:].astype(np.float64)
_PC = _plane(_COLOURS01 - _COLOURS01.mean(-1, keepdims=True))  # (n, 2) palette chromas
_HUE = np.arctan2(_PC[:, 1], _PC[:, 0]) % (2 * np.pi)
_ORDER = np.argsort(_HUE)  # palette colours in hue order
_SORTED_HUE = _HUE[_ORDER]
_PAIRS = np.stack([_ORDER, np.roll(_ORDER, -1)], -1)  # (n, 2): bracket b spans hues of _PAIRS[b, 0] .. _PAIRS[b, 1]
_INV = np.linalg.inv(np.stack([np.stack([_PC[i], _PC[j]], -1) for i, j in _PAIRS]))  # (n, 2, 2)
assert np.all(np.diff(np.append(_SORTED_HUE, _SORTED_HUE[0] + 2 * np.pi)) < np.pi), "a hue gap >= 180 degrees"


def colour_weights(image: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: ``weights`` ``(H, W, n_colours)`` (the split of its chroma between the two palette colours adjacent
    to it in hue, summing to 1; COLOURS order), ``chroma`` ``(H, W)`` (``a + b``: 1 for a palette colour, 0.5 for a
    half-transparent one, ~0 for grey) and ``foreground`` ``(H, W)`` (the nearest palette entry is a colour, not the
    background; no "unknown" cut-off). See the module docstring."""
    img = _as_image(image).astype(np.float64)
    d2 = ((img[:, :, None, :] - _PALETTE[None, None, :, :]) ** 2).sum(-1)
    foreground = d2.argmin(-1) > 0
    chroma = img - img.mean(-1, keepdims=True)
    if np.count_nonzero(~foreground) > 16:  # a tinted background (generated images) is no colour
        chroma = chroma - np.median(chroma[~foreground], axis=0)
    q = _plane(chroma)
    hue = np.arctan2(q[..., 1], q[..., 0]) % (2 * np.pi)
    bracket = (np.searchsorted(_SORTED_HUE, hue, side="right") - 1) % _N
    ab = np.clip(np.einsum("...ij,...j->...i", _INV[bracket], q), 0.0, None)
    strength = ab.sum(-1)
    split = ab / np.maximum(strength, 1e-12)[..., None]
    weights = np.zeros(img.shape[:2] + (_N,))
    pair = _PAIRS[bracket]  # (H, W, 2)
    np.put_along_axis(weights, pair[..., :1], split[..., :1], -1)
    np.put_along_axis(weights, pair[..., 1:], split[..., 1:], -1)
    return weights, strength, foreground


@dataclass(frozen=True)
class ColourRegion:
    """One object: its area (pixels), colour shares (``{colour: share}``, summing to 1 over its chromatic pixels;
    empty when it has too few of them), the colours holding at least the threshold share (largest first), and
    whether it is mixed."""

    area: int
    shares: dict[str, float]
    colours: tuple[str, ...]
    mixed: bool


@dataclass
class ColourMixing:
    """Mixed-colour objects of one image (module docstring). ``asked_*`` are None unless the prompt names two
    different colours; ``*_hard``: the judge's hard labels instead of the hue split."""

    n_objects: int
    n_mixed: int
    mixed_any: bool
    asked_colours_mixed: bool | None
    mixed_share: float
    asked_share: float | None
    n_objects_hard: int
    n_mixed_hard: int
    mixed_any_hard: bool
    asked_colours_mixed_hard: bool | None
    regions: list[ColourRegion] = field(default_factory=list)

    def row(self) -> dict:
        """The per-image numbers as a flat dict (no regions)."""
        return {k: v for k, v in self.__dict__.items() if k != "regions"}


def _asked_colours(prompt: str | None) -> tuple[str, str] | None:
    if prompt is None:
        return None
    colours = tuple(dict.fromkeys(item[1] for item in _parse_cached(prompt).items))
    return colours if len(colours) == 2 else None


def _regions(mask: np.ndarray, min_area: int):
    """The 8-connected regions of ``mask`` with at least ``min_area`` pixels, as ``(bounding-box slice, the region's
    mask inside it, area)``: the objects both measures look at, found one way."""
    comp, _ = ndimage.label(mask, structure=_STRUCT8)
    for k, sl in enumerate(ndimage.find_objects(comp), start=1):
        if sl is None:
            continue
        region = comp[sl] == k
        area = int(region.sum())
        if area >= min_area:
            yield sl, region, area


def _hard_regions(lab: np.ndarray, min_area: int, min_share: float) -> list[tuple[str, ...]]:
    """Per connected region of judge-labelled colour pixels: the colours holding ``min_share`` of it that touch
    another such colour (empty tuple: not mixed)."""
    out = []
    for sl, region, area in _regions(lab > 0, min_area):
        labels = np.where(region, lab[sl], 0)
        counts = np.bincount(labels[region], minlength=_N + 1)[1:]
        big = [c for c in np.argsort(-counts, kind="stable") if counts[c] >= min_share * area]
        touching = set()
        for i in big:
            near = ndimage.binary_dilation(labels == i + 1, structure=_STRUCT8)
            for j in big:
                if j != i and np.any(near & (labels == j + 1)):
                    touching |= {i, j}
        out.append(tuple(_COLOUR_NAMES[c] for c in big if c in touching))
    return out


def colour_mixing(image: Any, prompt: str | None = None, min_share: float = MIN_SHARE) -> ColourMixing:
    """Mixed-colour objects of one image (definition in the module docstring). ``image`` as for
    :func:`~b2lib.world.judge.judge`; ``prompt`` (optional) gives the asked colours."""
    weights, strength, foreground = colour_weights(image)
    h, w = foreground.shape
    min_area = max(4, int(round(MIN_AREA_FRACTION * h * w)))
    asked = _asked_colours(prompt)
    regions: list[ColourRegion] = []
    mixed_share, asked_share = 0.0, 0.0
    for sl, region, area in _regions(foreground, min_area):
        chromatic = region & (strength[sl] >= MIN_CHROMA)
        shares: dict[str, float] = {}
        if np.count_nonzero(chromatic) >= min_area // 2:
            mean = weights[sl][chromatic].mean(0)
            shares = {_COLOUR_NAMES[c]: float(mean[c]) for c in np.argsort(-mean, kind="stable")}
        ranked = list(shares.values())
        if len(ranked) > 1:
            mixed_share = max(mixed_share, ranked[1])
        if asked is not None and shares:
            asked_share = max(asked_share, min(shares[asked[0]], shares[asked[1]]))
        colours = tuple(c for c, s in shares.items() if s >= min_share)
        regions.append(ColourRegion(area, shares, colours, len(colours) >= 2))
    n_mixed = sum(r.mixed for r in regions)
    asked_mixed = None if asked is None else any(r.mixed and set(asked) <= set(r.colours) for r in regions)
    hard = _hard_regions(_pixel_labels(_as_image(image)), min_area, min_share)
    n_mixed_hard = sum(len(c) >= 2 for c in hard)
    return ColourMixing(
        n_objects=len(regions),
        n_mixed=n_mixed,
        mixed_any=n_mixed > 0,
        asked_colours_mixed=asked_mixed,
        mixed_share=mixed_share,
        asked_share=None if asked is None else asked_share,
        n_objects_hard=len(hard),
        n_mixed_hard=n_mixed_hard,
        mixed_any_hard=n_mixed_hard > 0,
        asked_colours_mixed_hard=None if asked is None else any(set(asked) <= set(c) for c in hard),
        regions=regions,
    )


def colour_mixing_batch(images: Any, prompts: Sequence[str] | str | None = None, **kwargs) -> list[ColourMixing]:
    """:func:`colour_mixing` of each image of a batch (``(N, H, W, 3)``, ``(N, 3, H, W)`` or a sequence);
    ``prompts``: one per image, one for all, or None."""
    if hasattr(images, "detach"):
        images = images.detach().cpu().float().numpy()
    images = list(images)
    if prompts is None or isinstance(prompts, str):
        prompts = [prompts] * len(images)
    if len(prompts) != len(images):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    return [colour_mixing(img, p, **kwargs) for img, p in zip(images, prompts)]


# ----------------------------------------------------------------------------------------------
# Validation: clean scenes must show no mixing, synthetic blends must
# ----------------------------------------------------------------------------------------------


def blend_scene_image(scene: Scene, kind: str, colour_b: str, index: int = 0) -> np.ndarray:
    """A rendered scene whose object ``index`` is made a blend of its own colour A and ``colour_b``, as uint8 RGB:

    * ``"halves"``: its left half A, its right half B (a two-part blob);
    * ``"mid"``: painted the RGB midpoint of A and B (a uniform blend, e.g. teal for blue + green);
    * ``"tint"``: painted ``0.65 A + 0.35 B`` (a uniform blend that the judge's nearest-colour labels call A, as in
      the fine-tuned models' blobs);
    * ``"gradient"``: A on its left edge to B on its right, linearly in RGB.

    The object's antialiased edge is kept (the blend is applied to its coverage against the background)."""
    obj = scene.objects[index]
    alone = render(Scene((obj,), scene.template, scene.prompt)).astype(np.float64) / 255.0
    bg = np.asarray(BACKGROUND, dtype=np.float64) / 255.0
    a, b = np.asarray(COLOURS[obj.colour]) / 255.0, np.asarray(COLOURS[colour_b]) / 255.0
    # coverage of each pixel by the object: the rendered pixel is cov * A + (1 - cov) * bg
    cov = np.clip(((alone - bg) @ (a - bg)) / ((a - bg) @ (a - bg)), 0.0, 1.0)
    x = (np.arange(alone.shape[1]) + 0.5) * (64.0 / alone.shape[1])
    u = np.clip((x - (obj.cx - obj.size / 2.0)) / obj.size, 0.0, 1.0)[None, :, None]  # 0 left edge .. 1 right
    if kind == "halves":
        t = np.broadcast_to((u >= 0.5).astype(np.float64), alone.shape)
    elif kind in ("mid", "tint"):
        t = np.full(alone.shape, 0.5 if kind == "mid" else 0.35)
    elif kind == "gradient":
        t = np.broadcast_to(u, alone.shape)
    else:
        raise ValueError(f"unknown blend kind {kind!r}; use 'halves', 'mid', 'tint' or 'gradient'")
    colour = (1.0 - t) * a + t * b
    blended = cov[..., None] * colour + (1.0 - cov[..., None]) * bg
    others = Scene(tuple(o for i, o in enumerate(scene.objects) if i != index), scene.template, scene.prompt)
    rest = render(others).astype(np.float64) / 255.0
    out = np.where((cov > 0)[..., None], blended, rest)
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def mixing_validation(
    n_per_template: int = 300, seed: int = 0, noise: float = 8 / 255, blur: float = 0.7, min_share: float = MIN_SHARE
) -> dict[str, float]:
    """Measured rates of the measure, on scenes whose truth is known.

    * ``clean/<template>``, ``degraded/<template>``: ``mixed_any`` on ``n_per_template`` rendered scenes (and the
      same scenes degraded: noise ``noise`` + blur ``blur`` px, :func:`~b2lib.world.judge.degrade`), which have no
      mixed object: false-positive rates (should be ~0). ``*_hard``: the hard-label variant.
    * ``<kind>/<A>+<B>``: on scenes of one object of colour A (shape and size random) made a ``kind`` blend with B
      (:func:`blend_scene_image`), degraded as above, ``asked_colours_mixed`` for the prompt naming A and B:
      detection rates (``n_per_template // 6`` scenes per pair and kind, at least 10), and ``<kind>/<A>+<B>/hard``.
    """

    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    for template in TEMPLATES:
        clean, degr, clean_h, degr_h = [], [], [], []
        for _ in range(n_per_template):
            scene = sample_scene(rng, template)
            img = render(scene)
            c = colour_mixing(img, scene.prompt, min_share)
            d = colour_mixing(degrade(img, rng), scene.prompt, min_share)
            clean.append(c.mixed_any)
            degr.append(d.mixed_any)
            clean_h.append(c.mixed_any_hard)
            degr_h.append(d.mixed_any_hard)
        out[f"clean/{template}"] = float(np.mean(clean))
        out[f"degraded/{template}"] = float(np.mean(degr))
        out[f"clean/{template}/hard"] = float(np.mean(clean_h))
        out[f"degraded/{template}/hard"] = float(np.mean(degr_h))
    n = max(10, n_per_template // 6)
    for kind in BLEND_KINDS:
        for i, a in enumerate(_COLOUR_NAMES):
            for b in _COLOUR_NAMES[i + 1 :]:
                hits, hits_h = [], []
                for _ in range(n):
                    shape = SHAPES[int(rng.integers(len(SHAPES)))]
                    size = float(rng.uniform(14.0, 22.0))
                    cx, cy = rng.uniform(2 + size / 2, 62 - size / 2, size=2)
                    prompt = f"a {a} {shape} and a {b} {SHAPES[(SHAPES.index(shape) + 1) % len(SHAPES)]}"
                    scene = Scene((Obj(shape, a, float(cx), float(cy), size),), "binding", prompt)
                    res = colour_mixing(degrade(blend_scene_image(scene, kind, b), rng), prompt, min_share)
                    hits.append(res.asked_colours_mixed)
                    hits_h.append(res.asked_colours_mixed_hard)
                out[f"{kind}/{a}+{b}"] = float(np.mean(hits))
                out[f"{kind}/{a}+{b}/hard"] = float(np.mean(hits_h))
    return out
