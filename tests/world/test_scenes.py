"""Shape world: vocabulary, prompts and splits, scene sampling and rendering (no torch needed)."""

import time

import numpy as np
import pytest

from b2lib.world import (
    CANVAS,
    COLOURS,
    COUNT_WORDS,
    RELATIONS,
    SHAPES,
    SIZE_RANGE,
    TEMPLATES,
    Obj,
    PromptSpec,
    Scene,
    all_prompts,
    caption,
    format_prompt,
    parse_prompt,
    perturb_prompt,
    prompt_split,
    random_caption_scene,
    render,
    render_batch,
    sample_scene,
    split_prompts,
    template_of,
)
from b2lib.world.scenes import _GAP, _RELATION_MARGIN

# ----------------------------------------------------------------------------------------------
# prompts
# ----------------------------------------------------------------------------------------------


def test_vocabulary_is_small_and_fixed():
    assert tuple(COLOURS) == ("red", "green", "blue", "yellow")
    assert SHAPES == ("circle", "square", "triangle")
    assert RELATIONS == ("above", "below", "left of", "right of")
    assert TEMPLATES == ("counting", "binding", "relation")
    assert [len(all_prompts(t)) for t in TEMPLATES] == [48, 96, 384]


@pytest.mark.parametrize("template", TEMPLATES)
def test_all_prompts_sorted_unique_and_round_trip(template):
    prompts = all_prompts(template)
    assert prompts == sorted(set(prompts))
    for p in prompts:
        spec = parse_prompt(p)
        assert spec.template == template == template_of(p)
        assert format_prompt(spec) == p
        assert (spec.relation is not None) == (template == "relation")


def test_parse_examples_and_aliases():
    assert parse_prompt("three red circles") == PromptSpec("counting", ((3, "red", "circle"),))
    assert parse_prompt("one blue square") == parse_prompt("A blue square.")
    spec = parse_prompt("a red circle and a blue triangle")
    assert spec == PromptSpec("binding", ((1, "red", "circle"), (1, "blue", "triangle")))
    spec = parse_prompt("  A red circle   to the left of a red square ")
    assert spec.template == "relation" and spec.relation == "left of"
    assert spec.items == ((1, "red", "circle"), (1, "red", "square"))
    assert format_prompt(parse_prompt("a green square on the right of a yellow circle")) == (
        "a green square right of a yellow circle"
    )


@pytest.mark.parametrize(
    "bad, needle",
    [
        ("three purple circles", "purple"),
        ("a red hexagon above a blue square", "hexagon"),
        ("five red circles", "five"),
        ("red circle blue", "expected"),
        ("three red circle", "plural"),
        ("a red circle and a blue circle", "differ"),
        ("", "expected"),
    ],
)
def test_parse_errors_name_the_vocabulary(bad, needle):
    with pytest.raises(ValueError) as err:
        parse_prompt(bad)
    msg = str(err.value)
    assert needle in msg.lower()
    assert "red, green, blue, yellow" in msg and "circle, square, triangle" in msg
    assert "counting, binding, relation" in msg


def test_unknown_template_errors_name_templates():
    for fn in (all_prompts, split_prompts):
        with pytest.raises(ValueError, match="counting, binding, relation"):
            fn("colours")
    with pytest.raises(ValueError, match="counting, binding, relation"):
        sample_scene(np.random.default_rng(0), "animals")
    with pytest.raises(ValueError, match="not 'binding'"):
        sample_scene(np.random.default_rng(0), "binding", "two red circles")


@pytest.mark.parametrize("template", TEMPLATES)
def test_split_disjoint_complete_deterministic(template):
    train, test = split_prompts(template)
    assert not set(train) & set(test)
    assert sorted(train + test) == all_prompts(template)
    assert 0.6 <= len(train) / len(all_prompts(template)) <= 0.75
    assert (train, test) == split_prompts(template)
    assert all(prompt_split(p) == "train" for p in train) and all(prompt_split(p) == "test" for p in test)
    words = set(" ".join(train).split())
    assert set(COLOURS) <= words
    assert all(s in words or s + "s" in words for s in SHAPES)
    if template == "counting":
        assert set(COUNT_WORDS.values()) <= words
    if template == "relation":
        assert {"above", "below", "left", "right"} <= words


def test_split_holds_out_combinations_not_words():
    specs = [parse_prompt(p) for p in split_prompts("counting")[0]]
    pairs = {(n, c) for ((n, c, _),) in (s.items for s in specs)} | {
        (c, s) for ((_, c, s),) in (x.items for x in specs)
    }
    assert len(pairs) == 16 + 12  # every count-colour and colour-shape pair is trained
    train_b, test_b = split_prompts("binding")
    assert not any("red triangle" in p or "blue circle" in p for p in train_b)
    assert all("red triangle" in p or "blue circle" in p for p in test_b)
    # relation: a held-out configuration is held out in both phrasings
    converse = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}
    for p in split_prompts("relation")[1]:
        s = parse_prompt(p)
        flipped = PromptSpec("relation", s.items[::-1], converse[s.relation])
        assert prompt_split(format_prompt(flipped)) == "test"


@pytest.mark.parametrize("template", TEMPLATES)
def test_perturb_prompt_changes_prompt_within_template(template):
    rng = np.random.default_rng(0)
    for p in all_prompts(template)[::7]:
        q = perturb_prompt(p, rng)
        assert q != p and template_of(q) == template and q in all_prompts(template)


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
