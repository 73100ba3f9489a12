"""Programmatic ground-truth judge: does an image (rendered or generated) show what its prompt says?

No learned model: the judge segments the image by colour and measures the geometry of each blob,
so it is an exact, cheap and unbiased reference against which learned rewards (a tiny CLIP) and
generated images can be evaluated.

Method:

1. Each pixel is assigned to the nearest palette entry (background included) in RGB; pixels farther
   than :data:`UNKNOWN_DISTANCE` from every entry (e.g. purple mixtures) count as background.
2. Per colour, 8-connected components (``scipy.ndimage.label``); components smaller than
   :data:`MIN_AREA_FRACTION` of the image (24 px at 64x64, a third of the smallest possible
   triangle) are dropped as noise of generated images.
3. Shape: a soft coverage map of each component (chroma projected on its colour, rescaled so its
   core reads 1, so pale or dark generated colours still work) is fitted by blurred ideal shapes:
   square, circle and triangle (apex up/down/left/right). Each hypothesis gets its size and centre
   from the blob's area and centroid, which blur leaves unchanged, and the blur is searched on a
   grid, so a soft triangle is not mistaken for a circle. The best fit wins; a fit quality below
   :data:`MIN_SHAPE_FIT` gives "unknown". Positions are the fitted bounding-box centres, like
   :class:`~b2lib.world.scenes.Obj`.
4. The detections are compared with the parsed prompt (see :class:`JudgeResult`).

Measured with :func:`judge_accuracy` (pos + neg accuracy, 150 scenes per template): 1.00 on clean
renders and with noise 8/255 + blur 0.7 px, and still 1.00 up to noise 24/255 + blur 1.2 px.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from b2lib.world.prompts import TEMPLATES, PromptSpec, _parse_cached, perturb_prompt, sample_scene
from b2lib.world.scenes import BACKGROUND, COLOURS, render

__all__ = [
    "Detection",
    "JudgeResult",
    "detect_objects",
    "judge",
    "judge_batch",
    "alignment_rate",
    "degrade",
    "judge_accuracy",
]

_COLOUR_NAMES = tuple(COLOURS)
_PALETTE = np.array([BACKGROUND] + [COLOURS[c] for c in _COLOUR_NAMES], dtype=np.float32) / 255.0

#: RGB distance (in [0,1] units, ~107/255) beyond which a pixel matches no palette entry. Half the
#: smallest distance between two palette colours, so a pixel is never claimed by a far colour.
UNKNOWN_DISTANCE: float = 0.42
#: Components smaller than this fraction of the image are noise (24 px at 64x64).
MIN_AREA_FRACTION: float = 24.0 / 4096.0
#: Fit quality (1 - relative squared error) below which a blob's shape is "unknown": a garbage blob
#: of a generated image is no shape.
MIN_SHAPE_FIT: float = 0.6

_STRUCT8 = np.ones((3, 3), dtype=bool)
_CHROMA = _PALETTE[1:] - _PALETTE[1:].mean(axis=-1, keepdims=True)  # (n_colours, 3)
_CHROMA_NORM2 = (_CHROMA**2).sum(-1)
_PRESMOOTH = 0.6  # px (at 64 px): smoothing of the soft mask before fitting; absorbed by the blur grid
_BLUR_GRID = (0.6, 0.8, 1.0, 1.3, 1.6, 2.0, 2.5, 3.0)  # total blur (px) tried for every shape


@dataclass(frozen=True)
class Detection:
    """One detected object. ``cx, cy`` (bounding-box centre) and ``size`` (mean bbox side) are in
    pixels of the nominal 64 px canvas whatever the image size, so they compare with scene objects."""

    colour: str
    shape: str  # one of SHAPES or "unknown"
    cx: float
    cy: float
    size: float
    area: int  # pixels, at the image's own resolution
    fill: float  # area / bounding-box area of the hard mask (square ~1, circle ~0.79, triangle ~0.5)
    shape_fit: float  # 1 - relative squared error of the best blurred shape fit (1 = perfect)


@dataclass
class JudgeResult:
    """Per-attribute verdicts for one image and prompt.

    Attribute checks are set-based so that they isolate one skill each:

    * ``count_ok``: the number of detected objects equals the number the prompt asks for (the count
      for counting, 2 for binding and relation). Any extra object, of whatever kind, breaks it.
    * ``colour_ok`` / ``shape_ok``: the set of detected colours / shapes equals the set named in the
      prompt (so "three red squares" for "three red circles" is colour_ok and count_ok but not
      shape_ok).
    * ``binding_ok`` (binding, relation; None for counting): every named (colour, shape) object is
      found as a distinct detection (catches swapped attributes that colour_ok and shape_ok miss).
    * ``relation_ok`` (relation only, else None): a detection matching object 1 and a different one
      matching object 2 satisfy the relation (bbox centres; the offset along the relation's axis
      must be positive and larger than the offset across it). Objects are matched on colour and
      shape, or on shape alone if no exact match exists, so spatial skill is judged separately.
    * ``all_ok``: everything asked holds: exactly the prompted objects, nothing else, and the
      relation. For counting: exactly ``count`` objects, all of the asked colour and shape.
    """

    prompt: str
    template: str
    count_ok: bool
    colour_ok: bool
    shape_ok: bool
    binding_ok: bool | None
    relation_ok: bool | None
    all_ok: bool
    objects: list[Detection] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------

_SHAPE_HELP = "expected an RGB image of shape (H, W, 3) or (3, H, W) (uint8 in [0, 255] or float in [0, 1])"


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        t = x.detach().cpu()
        if hasattr(t, "dtype") and "uint8" not in str(t.dtype) and hasattr(t, "float"):
            t = t.float()  # bfloat16/half have no numpy equivalent
        return np.asarray(t)
    return np.asarray(x)


def _as_image(image: Any) -> np.ndarray:
    """Float32 (H, W, 3) in [0, 1] from any accepted image layout/dtype; ValueError otherwise."""
    arr = _to_numpy(image)
    if arr.ndim != 3:
        raise ValueError(f"{_SHAPE_HELP}; got shape {arr.shape}")
    if arr.shape[-1] == 3:
        pass
    elif arr.shape[0] == 3:
        arr = np.moveaxis(arr, 0, -1)
    else:
        raise ValueError(f"{_SHAPE_HELP}; got shape {arr.shape}")
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        raise ValueError(f"{_SHAPE_HELP} with H, W >= 8; got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{_SHAPE_HELP}; got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if lo < -0.5 or hi > 1.5:
        raise ValueError(
            f"{_SHAPE_HELP}; float values must lie in [0, 1] (got range [{lo:.3g}, {hi:.3g}]): "
            "map [-1, 1] model outputs with (x + 1) / 2, or pass uint8"
        )
    return np.clip(np.nan_to_num(arr, nan=1.0), 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Detection
# ----------------------------------------------------------------------------------------------


_SUB = 4  # supersampling of the shape hypotheses (matches the renderer's antialiasing)


def _hypotheses(mass: float, mx: float, my: float) -> list[tuple[str, float, float, float]]:
    """Candidate shapes (kind, side s, bbox centre cx, cy) with the given area and centroid."""
    s_sq, s_ci, s_tr = np.sqrt(mass), np.sqrt(4.0 * mass / np.pi), np.sqrt(2.0 * mass)
    off = s_tr / 6.0  # a triangle's centroid lies 1/6 of its height from the bbox centre
    return [
        ("square", s_sq, mx, my),
        ("circle", s_ci, mx, my),
        ("triangle^", s_tr, mx, my - off),  # apex up, as rendered
        ("trianglev", s_tr, mx, my + off),
        ("triangle<", s_tr, mx - off, my),
        ("triangle>", s_tr, mx + off, my),
    ]


def _coverage(kind: str, s: float, cx: float, cy: float, h: int, w: int) -> np.ndarray:
    """Fraction of each pixel of an h x w grid covered by the shape (pixel (i, j) spans [j, j+1])."""
    ys = ((np.arange(h * _SUB) + 0.5) / _SUB)[:, None]
    xs = ((np.arange(w * _SUB) + 0.5) / _SUB)[None, :]
    u = (xs - cx) / s + 0.5  # position within the bounding box, [0, 1] inside
    v = (ys - cy) / s + 0.5
    inside_box = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if kind == "square":
        m = inside_box
    elif kind == "circle":
        m = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    elif kind == "triangle^":
        m = inside_box & (np.abs(u - 0.5) <= v / 2.0)
    elif kind == "trianglev":
        m = inside_box & (np.abs(u - 0.5) <= (1.0 - v) / 2.0)
    elif kind == "triangle<":
        m = inside_box & (np.abs(v - 0.5) <= u / 2.0)
    else:
        m = inside_box & (np.abs(v - 0.5) <= (1.0 - u) / 2.0)
    return m.reshape(h, _SUB, w, _SUB).sum(axis=(1, 3), dtype=np.float64) * (1.0 / _SUB**2)


@lru_cache(maxsize=256)
def _blur_matrices(n: int, res: float) -> np.ndarray:
    """(len(_BLUR_GRID), n, n) matrices applying a 1-D Gaussian blur (zero outside) of each grid
    sigma (scaled by the image's resolution ``res`` relative to 64 px): blurring a stack of
    hypotheses becomes two batched matrix products."""
    d = np.arange(n)[:, None] - np.arange(n)[None, :]
    out = np.empty((len(_BLUR_GRID), n, n))
    for i, sigma in enumerate(_BLUR_GRID):
        sigma = sigma * res
        radius = int(np.ceil(3.0 * sigma))
        norm = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2)).sum()
        out[i] = np.where(np.abs(d) <= radius, np.exp(-(d**2) / (2 * sigma**2)) / norm, 0.0)
    out.flags.writeable = False  # cached and shared
    return out


def _fit_shape(alpha: np.ndarray, res: float = 1.0) -> tuple[str, float, float, float, float]:
    """Fit blurred ideal shapes to a soft mask; returns (shape, s, cx, cy, fit quality in [0, 1]).

    Each hypothesis takes its size and position from the mask's area and centroid (both unchanged
    by blur); the blur is then searched on a grid, so soft generated edges are explained as blur
    rather than as a different shape (a blurred triangle is otherwise mistaken for a circle)."""
    h, w = alpha.shape
    mass = float(alpha.sum())
    mx = float((alpha.sum(0) * (np.arange(w) + 0.5)).sum() / mass)
    my = float((alpha.sum(1) * (np.arange(h) + 0.5)).sum() / mass)
    hyps = _hypotheses(mass, mx, my)
    covers = np.stack([_coverage(kind, s, cx, cy, h, w) for kind, s, cx, cy in hyps])  # (K, h, w)
    gy, gx = _blur_matrices(h, res), _blur_matrices(w, res)  # (B, h, h), (B, w, w)
    models = gy[:, None] @ covers[None] @ gx[:, None].transpose(0, 1, 3, 2)  # (B, K, h, w)
    sse = ((models - alpha) ** 2).sum(axis=(2, 3))  # (B, K)
    quality = 1.0 - sse.min(axis=0) / float((alpha**2).sum())  # best blur per hypothesis
    best = int(quality.argmax())
    kind, s, cx, cy = hyps[best]
    shape = "triangle" if kind.startswith("triangle") else kind
    if quality[best] < MIN_SHAPE_FIT:
        shape = "unknown"
    return shape, float(s), cx, cy, float(quality[best])


def _pixel_labels(img: np.ndarray) -> np.ndarray:
    """Palette index per pixel (0 = background or unknown, 1.. = COLOURS order)."""
    d2 = ((img[:, :, None, :] - _PALETTE[None, None, :, :]) ** 2).sum(-1)
    lab = d2.argmin(-1)
    lab[d2.min(-1) > UNKNOWN_DISTANCE**2] = 0
    return lab


def _soft_masks(img: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """Per-colour soft coverage maps (H, W, n_colours), unclipped below so noise stays unbiased.

    The background is neutral, so a pixel blending colour c with it has chroma (RGB minus its grey
    level) t * chroma(c): projecting the chroma on chroma(c) recovers the coverage t. Clearly
    chromatic pixels only count for the colour of their hue (and never for a colour when the hard
    labels give them to another one), so a neighbour's halo is not mistaken for coverage."""
    chroma = img - img.mean(axis=-1, keepdims=True)
    if np.count_nonzero(lab == 0) > 16:  # a tinted background (generated images) is not coverage
        chroma = chroma - np.median(chroma[lab == 0], axis=0)
    proj = chroma @ _CHROMA.T / _CHROMA_NORM2  # (H, W, n): coverage if the pixel were colour k
    cos = (chroma @ _CHROMA.T) / (np.linalg.norm(chroma, axis=-1, keepdims=True) * np.sqrt(_CHROMA_NORM2) + 1e-8)
    hue = cos.argmax(-1)
    strong = proj.max(-1) > 0.25
    n = len(_COLOUR_NAMES)
    alpha = np.clip(proj, -1.0, 1.5)
    for k in range(n):
        other = (strong & (hue != k)) | ((lab > 0) & (lab != k + 1))
        alpha[..., k][other] = 0.0
    return alpha


def detect_objects(image: Any) -> list[Detection]:
    """Objects in an image: colour segmentation, connected components, shape fit (module docs)."""
    img = _as_image(image)
    h, w = img.shape[:2]
    scale_x, scale_y = 64.0 / w, 64.0 / h
    res = (h + w) / 128.0  # resolution relative to the nominal 64 px canvas
    min_area = max(4, int(round(MIN_AREA_FRACTION * h * w)))
    pad = max(2, int(round(4 * res)))  # context around a blob for its blurred edges
    lab = _pixel_labels(img)
    owner_ids = np.zeros((h, w), dtype=np.int32)
    blobs: list[tuple[int, tuple[slice, slice], int]] = []  # (colour index, bbox, area)
    for ci in range(1, len(_COLOUR_NAMES) + 1):
        mask = lab == ci
        if np.count_nonzero(mask) < min_area:
            continue
        comp, n = ndimage.label(mask, structure=_STRUCT8)
        areas = np.bincount(comp.ravel(), minlength=n + 1)
        for k, sl in enumerate(ndimage.find_objects(comp), start=1):
            if sl is None or areas[k] < min_area:
                continue
            blobs.append((ci, sl, int(areas[k])))
            owner_ids[comp == k] = len(blobs)
    if not blobs:
        return []
    # Every pixel belongs to its nearest blob, so a neighbour's blurred halo never counts as ours.
    _, nearest = ndimage.distance_transform_edt(owner_ids == 0, return_indices=True)
    owner = owner_ids[nearest[0], nearest[1]]
    alpha = _soft_masks(img, lab)
    found: list[Detection] = []
    for gid, (ci, sl, area) in enumerate(blobs, start=1):
        y0, y1 = max(0, sl[0].start - pad), min(h, sl[0].stop + pad)
        x0, x1 = max(0, sl[1].start - pad), min(w, sl[1].stop + pad)
        a = np.where(owner[y0:y1, x0:x1] == gid, alpha[y0:y1, x0:x1, ci - 1], 0.0)
        # Generated colours are often paler/darker than the palette: rescale so the blob's core
        # reads as full coverage, else its area (hence its fitted size) would be underestimated.
        core = a[lab[y0:y1, x0:x1] == ci]
        a = a / float(np.clip(np.percentile(core, 90), 0.3, 1.0)) if core.size else a
        a = ndimage.gaussian_filter(a, _PRESMOOTH * res, mode="nearest")  # tame pixel noise
        if a.sum() <= 1.0:
            continue
        shape, s, cx, cy, quality = _fit_shape(a, round(res, 3))
        bh, bw = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        found.append(
            Detection(
                colour=_COLOUR_NAMES[ci - 1],
                shape=shape,
                cx=(x0 + cx) * scale_x,
                cy=(y0 + cy) * scale_y,
                size=s * (scale_x + scale_y) / 2.0,
                area=area,
                fill=float(area / (bh * bw)),
                shape_fit=quality,
            )
        )
    return found


# ----------------------------------------------------------------------------------------------
# Verdicts
# ----------------------------------------------------------------------------------------------


def _relation_holds(a: Detection, b: Detection, relation: str) -> bool:
    dx, dy = b.cx - a.cx, b.cy - a.cy  # b relative to a; "a <relation> b"
    if relation == "above":
        along, across = dy, dx
    elif relation == "below":
        along, across = -dy, dx
    elif relation == "left of":
        along, across = dx, dy
    else:
        along, across = -dx, dy
    return along > 0 and along > abs(across)


def _evaluate(spec: PromptSpec, prompt: str, dets: list[Detection]) -> JudgeResult:
    n_asked = sum(it[0] for it in spec.items)
    count_ok = len(dets) == n_asked
    colour_ok = {d.colour for d in dets} == {it[1] for it in spec.items}
    shape_ok = {d.shape for d in dets} == {it[2] for it in spec.items}
    binding_ok: bool | None = None
    relation_ok: bool | None = None
    if spec.template == "counting":
        all_ok = count_ok and colour_ok and shape_ok
    else:
        pool = list(range(len(dets)))
        binding_ok = True
        for _, c, s in spec.items:  # distinct detections for the two named objects
            hit = next((i for i in pool if dets[i].colour == c and dets[i].shape == s), None)
            if hit is None:
                binding_ok = False
                break
            pool.remove(hit)
        all_ok = count_ok and binding_ok
        if spec.template == "relation":
            (_, c1, s1), (_, c2, s2) = spec.items

            def candidates(c: str, s: str) -> list[int]:
                exact = [i for i, d in enumerate(dets) if d.colour == c and d.shape == s]
                return exact or [i for i, d in enumerate(dets) if d.shape == s]

            relation_ok = any(
                _relation_holds(dets[i], dets[j], spec.relation)
                for i in candidates(c1, s1)
                for j in candidates(c2, s2)
                if i != j
            )
            all_ok = all_ok and relation_ok
    return JudgeResult(
        prompt=prompt,
        template=spec.template,
        count_ok=bool(count_ok),
        colour_ok=bool(colour_ok),
        shape_ok=bool(shape_ok),
        binding_ok=binding_ok,
        relation_ok=relation_ok,
        all_ok=bool(all_ok),
        objects=dets,
    )


def judge(image: Any, prompt: str) -> JudgeResult:
    """Judge one image against its prompt.

    ``image``: uint8 (H, W, 3), or float in [0, 1] of shape (H, W, 3) or (3, H, W); numpy,
    array-like or torch tensor. Any resolution >= 8 px (thresholds scale with the image)."""
    spec = _parse_cached(prompt)
    return _evaluate(spec, prompt, detect_objects(image))


def judge_batch(images: Any, prompts: Sequence[str] | str) -> list[JudgeResult]:
    """Judge a batch: ``images`` is (N, H, W, 3) / (N, 3, H, W) or a sequence of images; ``prompts``
    one prompt per image, or a single prompt for all of them."""
    if hasattr(images, "detach") or isinstance(images, np.ndarray):
        arr = _to_numpy(images)
        if arr.ndim != 4:
            raise ValueError(f"a batch of images must be 4-D (N, H, W, 3) or (N, 3, H, W); got shape {arr.shape}")
        images = list(arr)
    else:
        images = list(images)
    if isinstance(prompts, str):
        prompts = [prompts] * len(images)
    if len(prompts) != len(images):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    return [judge(img, p) for img, p in zip(images, prompts)]


def alignment_rate(results: Sequence[JudgeResult]) -> float:
    """Fraction of results whose image matches its prompt entirely (``all_ok``)."""
    if len(results) == 0:
        raise ValueError("alignment_rate needs at least one JudgeResult")
    return float(np.mean([r.all_ok for r in results]))


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def degrade(image: np.ndarray, rng: np.random.Generator, noise: float = 8 / 255, blur: float = 0.7) -> np.ndarray:
    """Blur (Gaussian, ``blur`` px) then add Gaussian noise (std ``noise`` in [0,1] units) to a uint8
    image, mimicking the soft, noisy outputs of a tiny diffusion model. Returns uint8."""
    img = image.astype(np.float32) / 255.0
    if blur > 0:
        img = ndimage.gaussian_filter(img, sigma=(blur, blur, 0))
    if noise > 0:
        img = img + rng.normal(0.0, noise, size=img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def judge_accuracy(
    n_per_template: int = 200, seed: int = 0, noise: float = 0.0, blur: float | None = None
) -> dict[str, float]:
    """Accuracy of the judge on rendered scenes, per template.

    For each template, ``n_per_template`` random scenes are rendered (optionally degraded: Gaussian
    noise of std ``noise`` and blur ``blur`` px, default 0.7 px when ``noise > 0``) and judged
    against (a) their own prompt, which must be ``all_ok``, and (b) a wrong prompt of the same
    template (:func:`~b2lib.world.prompts.perturb_prompt`), which must not be. Returns
    ``{template: accuracy over both}`` plus ``"{template}/pos"`` and ``"{template}/neg"``."""
    if blur is None:
        blur = 0.7 if noise > 0 else 0.0
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    for template in TEMPLATES:
        pos, neg = [], []
        for _ in range(n_per_template):
            scene = sample_scene(rng, template)
            img = render(scene)
            if noise > 0 or blur > 0:
                img = degrade(img, rng, noise=noise, blur=blur)
            dets = detect_objects(img)
            pos.append(_evaluate(_parse_cached(scene.prompt), scene.prompt, dets).all_ok)
            wrong = perturb_prompt(scene.prompt, rng)
            neg.append(not _evaluate(_parse_cached(wrong), wrong, dets).all_ok)
        out[template] = float(np.mean(pos + neg))
        out[f"{template}/pos"] = float(np.mean(pos))
        out[f"{template}/neg"] = float(np.mean(neg))
    return out
