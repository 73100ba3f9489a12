"""A tiny procedural world of flat coloured shapes: vocabulary, scene sampling, rendering, captions.

The world stands in for natural images at an "embedded" scale: 64x64 RGB scenes of a few large flat
shapes on a constant plain background. It is deliberately small (4 colours, 3 shapes, counts 1-4,
4 relations) so that a tiny diffusion model and a tiny CLIP can learn it, while still exposing the
three failure modes the paper studies: counting, attribute binding and spatial relations.

Coordinates of :class:`Obj` are in pixels of the nominal 64x64 canvas (:data:`CANVAS`); rendering at
another resolution scales them, so one scene can be rendered at any size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "CANVAS",
    "COLOURS",
    "SHAPES",
    "COUNTS",
    "COUNT_WORDS",
    "RELATIONS",
    "BACKGROUND",
    "SIZE_RANGE",
    "Obj",
    "Scene",
    "scene_from_spec",
    "render",
    "render_batch",
    "caption",
]

# ----------------------------------------------------------------------------------------------
# Vocabulary. Kept tiny on purpose (a tiny text encoder must learn it from scratch).
# ----------------------------------------------------------------------------------------------

#: Nominal canvas side in pixels; object coordinates are expressed on this canvas.
CANVAS: int = 64

#: Saturated colours, far apart in RGB (pairwise distance >= 160) so that even blurry generated
#: pixels can be assigned to the right colour by nearest-palette classification.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
}

#: Shape names, in a fixed order (indices are used by the deterministic train/test split rules).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

#: Allowed object counts and their words ("one" is used by the counting template; the binding and
#: relation templates use the article "a").
COUNTS: tuple[int, ...] = (1, 2, 3, 4)
COUNT_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}

#: Spatial relations, read as "<object 1> <relation> <object 2>".
RELATIONS: tuple[str, ...] = ("above", "below", "left of", "right of")

#: Constant light neutral background: neutral so it never competes with a palette colour.
BACKGROUND: tuple[int, int, int] = (235, 235, 235)

#: Range of object sizes (side of the bounding box, in canvas pixels): large on a 64 px canvas so a
#: tiny model can render them and the judge can measure their geometry.
SIZE_RANGE: tuple[float, float] = (12.0, 22.0)

# Layout constants (canvas pixels).
_MAX_SIZE_FOR_COUNT = {1: 22.0, 2: 22.0, 3: 20.0, 4: 18.0}  # smaller objects when crowded
_EDGE_MARGIN = 2.0  # keep objects fully inside the canvas
_GAP = 4.0  # min gap between bounding boxes: blurred objects must stay separate components
_RELATION_MARGIN = 6.0  # |offset along the relation axis| >= |offset across it| + margin
_SUPERSAMPLE = 4  # draw at 4x then box-downsample = exact-area antialiasing
_CANDIDATES = 32  # positions proposed at once per object (vectorised rejection sampling)
_MAX_SCENE_TRIES = 200  # restarts of a whole layout before giving up


@dataclass(frozen=True)
class Obj:
    """One flat shape. ``cx, cy`` is the bounding-box centre and ``size`` the bounding-box side,
    both in pixels of the nominal 64 px canvas (``y`` grows downwards, as in images)."""

    shape: str
    colour: str
    cx: float
    cy: float
    size: float

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in canvas pixels."""
        h = self.size / 2.0
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)


@dataclass(frozen=True)
class Scene:
    """A scene and the prompt it was sampled to satisfy (its caption)."""

    objects: tuple[Obj, ...]
    template: str
    prompt: str

    @property
    def caption(self) -> str:
        return self.prompt


def caption(scene: Scene) -> str:
    """The scene's caption: the prompt it satisfies (scenes are sampled from prompts, so the
    prompt is an exact description of the whole scene)."""
    return scene.prompt


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------

# constraint(x, y, placed) -> boolean mask over candidate positions (x, y arrays)
_Constraint = Callable[[np.ndarray, np.ndarray, list[tuple[float, float, float]]], np.ndarray]


def _relation_constraint(relation: str) -> _Constraint:
    """Constraint on object 2's centre (given object 1) so that "obj1 <relation> obj2" holds clearly:
    the offset along the relation's axis exceeds the offset across it by a margin."""

    def ok(x: np.ndarray, y: np.ndarray, placed: list[tuple[float, float, float]]) -> np.ndarray:
        if not placed:  # object 1: anywhere
            return np.ones_like(x, dtype=bool)
        x1, y1, _ = placed[0]
        dx, dy = x - x1, y - y1  # object 2 relative to object 1
        if relation == "above":  # obj1 above obj2 -> obj2 lower (larger y)
            along, across = dy, dx
        elif relation == "below":
            along, across = -dy, dx
        elif relation == "left of":  # obj1 left of obj2 -> obj2 to the right
            along, across = dx, dy
        else:  # "right of"
            along, across = -dx, dy
        return along >= np.abs(across) + _RELATION_MARGIN

    return ok


def _place(
    rng: np.random.Generator, sizes: Sequence[float], constraint: _Constraint | None = None
) -> list[tuple[float, float, float]]:
    """Rejection-sample non-overlapping centres for objects of the given sizes.

    Objects are placed one by one from batches of candidate positions; a layout that cannot be
    completed is restarted. Raises RuntimeError after a bounded number of restarts so that an
    impossible request fails loudly instead of looping forever."""
    for _ in range(_MAX_SCENE_TRIES):
        placed: list[tuple[float, float, float]] = []
        for s in sizes:
            lo = _EDGE_MARGIN + s / 2.0
            hi = CANVAS - _EDGE_MARGIN - s / 2.0
            xy = rng.uniform(lo, hi, size=(_CANDIDATES, 2))
            x, y = xy[:, 0], xy[:, 1]
            ok = np.ones(_CANDIDATES, dtype=bool)
            for px, py, ps in placed:
                need = (s + ps) / 2.0 + _GAP
                ok &= (np.abs(x - px) >= need) | (np.abs(y - py) >= need)
            if constraint is not None:
                ok &= constraint(x, y, placed)
            idx = np.flatnonzero(ok)
            if idx.size == 0:
                break
            placed.append((float(x[idx[0]]), float(y[idx[0]]), float(s)))
        else:
            return placed
    raise RuntimeError(
        f"could not place {len(sizes)} non-overlapping objects of sizes {list(np.round(sizes, 1))} "
        f"on a {CANVAS}px canvas after {_MAX_SCENE_TRIES} tries"
    )


def scene_from_spec(rng: np.random.Generator, spec, prompt: str) -> Scene:
    """Sample object sizes and a layout satisfying a parsed prompt."""
    n = sum(item[0] for item in spec.items)
    lo, hi = SIZE_RANGE
    hi = min(hi, _MAX_SIZE_FOR_COUNT.get(n, 16.0))
    sizes = rng.uniform(lo, hi, size=n)
    kinds: list[tuple[str, str]] = []
    for count, colour, shape in spec.items:
        kinds.extend([(shape, colour)] * count)
    constraint = _relation_constraint(spec.relation) if spec.relation is not None else None
    centres = _place(rng, sizes, constraint)
    objects = tuple(Obj(shape, colour, x, y, s) for (shape, colour), (x, y, s) in zip(kinds, centres))
    if spec.template == "binding" and rng.random() < 0.5:
        objects = objects[::-1]  # object order carries no meaning for binding
    return Scene(objects=objects, template=spec.template, prompt=prompt)


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def render(scene: Scene, size: int = CANVAS) -> np.ndarray:
    """Render a scene to a ``(size, size, 3)`` uint8 RGB array.

    Shapes are drawn at 4x resolution and box-downsampled (exact area averaging), which gives
    smooth antialiased edges like those of real/generated images without ringing."""
    if int(size) < 8:
        raise ValueError(f"render size must be >= 8 pixels, got {size}")
    size = int(size)
    big = size * _SUPERSAMPLE
    f = big / CANVAS
    img = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        h = o.size / 2.0
        x0, y0, x1, y1 = (o.cx - h) * f, (o.cy - h) * f, (o.cx + h) * f - 1, (o.cy + h) * f - 1
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif o.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif o.shape == "triangle":  # apex up, base at the bottom: fills half its bounding box
            draw.polygon([((x0 + x1) / 2.0, y0), (x1, y1), (x0, y1)], fill=fill)
        else:
            raise ValueError(f"unknown shape {o.shape!r}; supported shapes: {', '.join(SHAPES)}")
    img = img.resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8).copy()


def render_batch(scenes: Sequence[Scene], size: int = CANVAS) -> np.ndarray:
    """Render several scenes into one ``(N, size, size, 3)`` uint8 array."""
    out = np.empty((len(scenes), int(size), int(size), 3), dtype=np.uint8)
    for i, scene in enumerate(scenes):
        out[i] = render(scene, size)
    return out
