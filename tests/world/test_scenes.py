"""Shape world: vocabulary, prompts and splits, scene sampling and rendering (no torch needed)."""

import time

import numpy as np
import pytest

from b2lib.world import (
    CANVAS,
    COLOURS,
    SIZE_RANGE,
    TEMPLATES,
    Obj,
    Scene,
    all_prompts,
    caption,
    parse_prompt,
    prompt_split,
    random_caption_scene,
    render,
    render_batch,
    sample_scene,
)
from b2lib.world.scenes import _GAP, _RELATION_MARGIN

# ----------------------------------------------------------------------------------------------
# scenes
# ----------------------------------------------------------------------------------------------


def _check_layout(scene: Scene) -> None:
    objs = scene.objects
    for o in objs:
        assert SIZE_RANGE[0] <= o.size <= SIZE_RANGE[1]
        x0, y0, x1, y1 = o.bbox
        assert x0 >= 0 and y0 >= 0 and x1 <= CANVAS and y1 <= CANVAS
    for i in range(len(objs)):
        for j in range(i + 1, len(objs)):
            a, b = objs[i], objs[j]
            need = (a.size + b.size) / 2 + _GAP - 1e-9
            assert abs(a.cx - b.cx) >= need or abs(a.cy - b.cy) >= need


@pytest.mark.parametrize("template", TEMPLATES)
def test_sampled_scenes_match_their_prompt(template):
    rng = np.random.default_rng(1)
    for _ in range(150):
        scene = sample_scene(rng, template)
        spec = parse_prompt(scene.prompt)
        assert scene.template == template and caption(scene) == scene.prompt == scene.caption
        _check_layout(scene)
        kinds = sorted((o.colour, o.shape) for o in scene.objects)
        assert kinds == sorted((c, s) for n, c, s in spec.items for _ in range(n))
        if template == "relation":
            a, b = scene.objects  # subject first
            dx, dy = b.cx - a.cx, b.cy - a.cy
            along, across = {"above": (dy, dx), "below": (-dy, dx), "left of": (dx, dy), "right of": (-dx, dy)}[
                spec.relation
            ]
            assert along >= abs(across) + _RELATION_MARGIN - 1e-9


def test_every_counting_prompt_can_be_sampled():
    rng = np.random.default_rng(2)
    for p in all_prompts("counting"):
        for _ in range(5):
            _check_layout(sample_scene(rng, "counting", p))


def test_determinism_under_seed():
    a = [random_caption_scene(np.random.default_rng(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    s1 = [sample_scene(np.random.default_rng(s), "relation") for s in range(5)]
    s2 = [sample_scene(np.random.default_rng(s), "relation") for s in range(5)]
    assert s1 == s2 and len({s.objects for s in s1}) == 5
    assert np.array_equal(render_batch(s1), render_batch(s2))


def test_render_shapes_dtype_and_content():
    scene = Scene(
        (Obj("square", "red", 20.5, 20.0, 16.0), Obj("circle", "blue", 44.0, 44.0, 16.0)),
        "binding",
        "a red square and a blue circle",
    )
    img = render(scene)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert tuple(img[20, 20]) == COLOURS["red"] and tuple(img[44, 44]) == COLOURS["blue"]
    assert tuple(img[2, 60]) == (235, 235, 235)
    edge = img[20, 12]  # the square's left edge is at x = 12.5: pixel 12 is an antialiased blend
    assert not any(np.array_equal(edge, c) for c in [np.array(COLOURS["red"]), np.array((235, 235, 235))])
    assert render(scene, size=32).shape == (32, 32, 3)
    batch = render_batch([scene, scene])
    assert batch.shape == (2, 64, 64, 3) and batch.dtype == np.uint8
    assert render_batch([]).shape == (0, 64, 64, 3)


def test_split_restricts_random_prompts():
    rng = np.random.default_rng(3)
    seen = {t: set() for t in TEMPLATES}
    for _ in range(300):
        s = random_caption_scene(rng, split="train")
        assert prompt_split(s.prompt) == "train"
        seen[s.template].add(s.prompt)
    assert all(seen.values())  # every template drawn
    assert all(prompt_split(sample_scene(rng, "binding", split="test").prompt) == "test" for _ in range(20))
    with pytest.raises(ValueError, match="split"):
        sample_scene(rng, "binding", split="val")


def test_generation_is_fast():
    rng = np.random.default_rng(4)
    t0 = time.perf_counter()
    imgs = render_batch([random_caption_scene(rng) for _ in range(400)])
    elapsed = time.perf_counter() - t0
    assert imgs.shape == (400, 64, 64, 3)
    assert elapsed < 2.0  # ~0.1 s on a laptop core; lenient for a shared machine
