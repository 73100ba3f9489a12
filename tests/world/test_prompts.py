"""Prompt templates of the shape world: vocabulary, parsing, splits with held-out combinations, perturbations."""

import numpy as np
import pytest

from b2lib.world import (
    COLOURS,
    COUNT_WORDS,
    RELATIONS,
    SHAPES,
    TEMPLATES,
    PromptSpec,
    all_prompts,
    format_prompt,
    parse_prompt,
    perturb_prompt,
    prompt_split,
    sample_scene,
    split_prompts,
    template_of,
)

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
