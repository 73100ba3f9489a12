"""Mixed-colour objects (b2lib.world.colour_mixing): closed-form cases, clean scenes, synthetic blends, the study."""

import numpy as np
import pandas as pd
import pytest

from b2lib.studies.colour_mixing import mixing_comparisons, mixing_rates
from b2lib.world import COLOURS, TEMPLATES, Obj, Scene, degrade, detect_objects, render, sample_scene
from b2lib.world.colour_mixing import (
    MIN_SHARE,
    blend_scene_image,
    colour_mixing,
    colour_mixing_batch,
    colour_weights,
    mixing_validation,
)

BG = np.array([235, 235, 235], float)
NAMES = list(COLOURS)


def _square(rgb, x0=20, y0=20, side=20):
    """A flat square of colour ``rgb`` on the background."""
    img = np.tile(BG, (64, 64, 1))
    img[y0 : y0 + side, x0 : x0 + side] = rgb
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _mix(a, b, t):
    return (1 - t) * np.array(COLOURS[a], float) + t * np.array(COLOURS[b], float)


@pytest.mark.parametrize(
    "a,b", [("red", "yellow"), ("yellow", "green"), ("green", "blue"), ("blue", "red")]
)  # hue neighbours
@pytest.mark.parametrize("t", [0.0, 0.2, 0.35, 0.5])
def test_weights_of_a_linear_mixture_are_its_proportions(a, b, t):
    img = _square(_mix(a, b, t))
    weights, strength, fg = colour_weights(img)
    w = weights[30, 30]
    assert w[NAMES.index(b)] == pytest.approx(t, abs=0.01) and w[NAMES.index(a)] == pytest.approx(1 - t, abs=0.01)
    assert w.sum() == pytest.approx(1.0) and fg[30, 30] and not fg[2, 2]
    # lightness does not move the split: the same mixture half-transparent on the background, or darkened
    pale = _square(0.5 * _mix(a, b, t) + 0.5 * BG)
    dark = _square(0.7 * _mix(a, b, t))
    for other in (pale, dark):
        assert colour_weights(other)[0][30, 30, NAMES.index(b)] == pytest.approx(t, abs=0.02)
    assert colour_weights(pale)[1][30, 30] == pytest.approx(0.5 * strength[30, 30], abs=0.03)


def test_an_object_is_mixed_exactly_when_two_colours_reach_the_share():
    prompt = "a blue circle and a green square"
    for t, mixed in [(0.0, False), (0.15, False), (MIN_SHARE - 0.03, False), (MIN_SHARE + 0.03, True), (0.5, True)]:
        r = colour_mixing(_square(_mix("blue", "green", t)), prompt)
        assert r.n_objects == 1 and r.n_mixed == int(mixed) and r.mixed_any == mixed, t
        assert r.asked_colours_mixed == mixed and r.mixed_share == pytest.approx(t, abs=0.01)
        assert r.asked_share == pytest.approx(t, abs=0.01)
        (region,) = r.regions
        assert region.area == 400 and region.shares["blue"] == pytest.approx(1 - t, abs=0.01)
    # the threshold is a parameter
    assert colour_mixing(_square(_mix("blue", "green", 0.15)), prompt, min_share=0.1).mixed_any
    # a blend of colours the prompt does not ask for is mixed, but not asked_colours_mixed
    r = colour_mixing(_square(_mix("red", "yellow", 0.4)), prompt)
    assert r.mixed_any and r.asked_colours_mixed is False


def test_uniform_tint_is_mixed_for_the_hue_split_but_not_for_the_hard_labels():
    # 0.65 blue + 0.35 green: the judge's nearest-colour labels call every pixel blue
    img = _square(_mix("blue", "green", 0.35))
    assert [d.colour for d in detect_objects(img)] == ["blue"]
    r = colour_mixing(img, "a blue circle and a green square")
    assert r.asked_colours_mixed and not r.asked_colours_mixed_hard and r.n_objects_hard == 1


def test_two_part_object_is_mixed_in_both_variants():
    img = _square(COLOURS["blue"])
    img[20:40, 30:40] = COLOURS["green"]  # right half green
    r = colour_mixing(img, "a blue circle and a green square")
    assert (r.n_objects, r.n_mixed, r.mixed_any, r.asked_colours_mixed) == (1, 1, True, True)
    assert (r.n_objects_hard, r.n_mixed_hard, r.asked_colours_mixed_hard) == (1, 1, True)
    assert r.regions[0].colours == ("blue", "green") or r.regions[0].colours == ("green", "blue")
    # a quarter strip is below a 0.3 share: not mixed at 0.3, mixed at 0.2
    img = _square(COLOURS["blue"])
    img[20:40, 35:40] = COLOURS["green"]
    assert not colour_mixing(img, min_share=0.3).mixed_any and colour_mixing(img, min_share=0.2).mixed_any
    assert not colour_mixing(img, min_share=0.3).mixed_any_hard and colour_mixing(img, min_share=0.2).mixed_any_hard


def test_purple_blend_is_one_mixed_object_although_the_judge_sees_nothing():
    img = _square(_mix("red", "blue", 0.5))  # purple: farther than UNKNOWN_DISTANCE from every palette entry
    assert detect_objects(img) == []
    r = colour_mixing(img, "a red circle above a blue square")
    assert r.n_objects == 1 and r.asked_colours_mixed and r.n_objects_hard == 0 and not r.mixed_any_hard


def test_separate_objects_are_not_mixed_and_touching_ones_are():
    apart = render(Scene((Obj("square", "blue", 16, 16, 16), Obj("circle", "green", 44, 44, 16)), "binding", ""))
    r = colour_mixing(apart, "a blue square and a green circle")
    assert (r.n_objects, r.n_mixed, r.asked_colours_mixed) == (2, 0, False)
    # documented limit: two distinct objects of different colours that touch form one mixed region
    touching = render(Scene((Obj("square", "blue", 24, 32, 16), Obj("square", "green", 40, 32, 16)), "binding", ""))
    r = colour_mixing(touching, "a blue square and a green circle")
    assert (r.n_objects, r.n_mixed, r.asked_colours_mixed) == (1, 1, True)


def test_asked_colours_only_for_prompts_naming_two_colours():
    img = _square(COLOURS["red"])
    assert colour_mixing(img).asked_colours_mixed is None
    assert colour_mixing(img, "three red squares").asked_colours_mixed is None
    r = colour_mixing(img, "a red circle and a red square")
    assert r.asked_colours_mixed is None and r.asked_share is None and r.asked_colours_mixed_hard is None
    assert colour_mixing(img, "a red circle and a blue square").asked_colours_mixed is False
    blank = np.full((64, 64, 3), 235, np.uint8)
    r = colour_mixing(blank, "a red circle and a blue square")
    assert (r.n_objects, r.mixed_any, r.asked_colours_mixed, r.mixed_share) == (0, False, False, 0.0)


@pytest.mark.parametrize("template", TEMPLATES)
def test_rendered_scenes_have_no_mixed_object(template):
    rng = np.random.default_rng(3)
    for _ in range(40):
        scene = sample_scene(rng, template)
        for img in (render(scene), degrade(render(scene), rng, noise=16 / 255, blur=1.0)):
            r = colour_mixing(img, scene.prompt)
            assert r.n_objects == len(scene.objects) and r.n_mixed == 0 and not r.mixed_any_hard, scene
            assert r.asked_colours_mixed in (None, False)


def test_blend_images_and_batch_api():
    scene = Scene((Obj("circle", "blue", 30, 30, 20),), "binding", "a blue circle and a green square")
    plain = render(scene)
    for kind in ("halves", "mid", "tint", "gradient"):
        img = blend_scene_image(scene, kind, "green")
        assert img.shape == plain.shape and img.dtype == np.uint8
        assert (img[0] == plain[0]).all()  # background untouched
        assert colour_mixing(img, scene.prompt).asked_colours_mixed, kind
    assert (blend_scene_image(scene, "halves", "green")[30, 22] == plain[30, 22]).all()  # left half stays A
    with pytest.raises(ValueError, match="blend kind"):
        blend_scene_image(scene, "stripes", "green")
    imgs = np.stack([plain, blend_scene_image(scene, "mid", "green")])
    res = colour_mixing_batch(imgs, scene.prompt)
    assert [r.mixed_any for r in res] == [False, True]
    assert [r.mixed_any for r in colour_mixing_batch(imgs.transpose(0, 3, 1, 2) / 255.0)] == [False, True]
    with pytest.raises(ValueError, match="prompts"):
        colour_mixing_batch(imgs, ["a", "b", "c"])


def test_validation_rates():
    v = mixing_validation(12, seed=1)
    for t in TEMPLATES:
        assert v[f"clean/{t}"] == 0 and v[f"degraded/{t}"] == 0
    for kind in ("halves", "mid", "tint", "gradient"):  # hue neighbours are always read
        for pair in ("red+yellow", "green+yellow", "green+blue", "red+blue"):
            assert v[f"{kind}/{pair}"] == 1.0, (kind, pair)
    assert v["tint/green+blue/hard"] == 0.0  # the hard labels miss a uniform tint
    assert v["mid/blue+yellow"] == 0.0  # documented limit: a blue + yellow mixture is grey


def test_rates_and_comparisons_on_a_synthetic_table():
    # base never mixes; "b2" mixes on every image of its two seeds in prompt p0 and never in p1: +0.5 on mixed_any
    rows = []
    for method, seeds in (("base", [None]), ("b2", [0, 1])):
        for seed in seeds:
            model = "base" if seed is None else f"{method}_seed{seed}"
            for image in range(8):
                two, hit = image < 4, method == "b2" and image < 4
                prompt = "a blue circle and a green square" if two else "a red circle and a red square"
                rows.append(
                    dict(template="binding", run="r", model=model, method=method, seed=seed, split="test", image=image)
                    | dict(prompt=prompt, n_objects=2, n_mixed=int(hit), mixed_any=hit, mixed_any_hard=False)
                    | dict(asked_colours_mixed=float(hit) if two else np.nan, two_colours=two)
                    | dict(asked_colours_mixed_hard=0.0 if two else np.nan, judge_all_ok=False)
                    | dict(stored_judge_all_ok=False, reward=0.5, stored_reward=0.5)
                    | dict(mixed_share=0.3 if hit else 0.18, asked_share=(0.3 if hit else 0.18) if two else np.nan)
                )
    df = pd.DataFrame(rows)
    rates = mixing_rates(df).set_index("model")
    assert rates.loc["base", "mixed_any"] == 0 and rates.loc["b2_seed0", "mixed_any"] == 0.5
    assert rates.loc["b2_seed1", "asked_colours_mixed"] == 1.0 and rates.loc["b2_seed1", "two_colour_images"] == 4
    assert rates.loc["base", "judge_agreement"] == 1.0 and rates.loc["base", "max_reward_gap"] == 0.0
    comp = mixing_comparisons(df, pairs=[("b2", "base")], draws=200)
    cols = "template,metric,a,b,mean_a,mean_b,diff,low,high,resolved,seeds_a,seeds_b,images,verdict,split"
    assert list(comp.columns) == cols.split(",")  # as comparisons.csv
    comp = comp.set_index("metric")
    assert comp.loc["mixed_any", "diff"] == pytest.approx(0.5) and comp.loc["mixed_any", "images"] == 8
    assert comp.loc["asked_colours_mixed", "diff"] == pytest.approx(1.0)
    assert comp.loc["asked_colours_mixed", "images"] == 4  # over the two-colour prompts only
    assert comp.loc["mixed_any_hard", "diff"] == 0 and not comp.loc["mixed_any_hard", "resolved"]
    # other thresholds, from the continuous shares: every image passes 0.15, only the hits 0.20, none 0.35
    assert comp.loc["mixed_any@0.15", "diff"] == 0 and comp.loc["mixed_any@0.15", "mean_b"] == 1.0
    assert comp.loc["mixed_any@0.20", "diff"] == pytest.approx(0.5) and comp.loc["mixed_any@0.35", "mean_a"] == 0
    assert comp.loc["asked_colours_mixed@0.20", "diff"] == pytest.approx(1.0)
    assert comp.loc["asked_colours_mixed@0.20", "images"] == 4


TINY = dict(
    methods=("b2",),
    template="binding",
    seeds=(0,),
    stages=1,
    images_per_stage=4,
    branches=2,
    eval_images=4,
    eval_max_prompts=2,
    bertscore=False,
    grid_prompts=0,
    overrides={"num_steps": 2, "split_start": 1, "lr": 3e-3},
)


def test_study_regenerates_the_runs_evaluation_and_is_read_back(tmp_path, monkeypatch):
    from b2lib.experiments.experiment import RunConfig, run_experiment
    from b2lib.world import colour_mixing_study as cm

    run = tmp_path / "binding"
    run_experiment(RunConfig(**TINY, output_dir=str(run)), progress=False)
    out = tmp_path / "out"
    rates, comparisons = cm.colour_mixing_table([run], out, cache=tmp_path / "cache")
    per_image = pd.read_csv(out / "colour_mixing_images.csv")
    stored = pd.read_csv(run / "eval_images.csv")
    assert len(per_image) == len(stored[stored.split == "test"]) == 2 * 4  # base, b2_seed0
    assert set(per_image["model"]) == {"base", "b2_seed0"} and set(per_image["template"]) == {"binding"}
    # the same images as the run's evaluation: its judge verdicts and rewards come back
    assert (rates["judge_agreement"] == 1.0).all() and (rates["max_reward_gap"] < 1e-4).all()
    assert (rates["generate_s"] > 0).all() and set(rates["model"]) == set(per_image["model"])
    assert set(comparisons["metric"]) >= {"mixed_any", "mixed_any_hard", "mixed_any@0.20"}
    assert set(comparisons["a"]) == {"b2"}
    assert (comparisons["low"] <= comparisons["diff"]).all() and (comparisons["diff"] <= comparisons["high"]).all()
    cached = sorted(p.name for p in (tmp_path / "cache" / "binding" / "test").iterdir())
    assert cached == ["b2_seed0.npz", "base.npz"]

    # a second call reads the tables back instead of generating again
    def fail(*args, **kwargs):
        raise AssertionError("generated again")

    monkeypatch.setattr(cm, "regenerate", fail)
    again, comparisons_again = cm.colour_mixing_table([run], out)
    pd.testing.assert_frame_equal(again, pd.read_csv(out / "colour_mixing.csv"))
    assert again["generate_s"].tolist() == rates["generate_s"].tolist()
    pd.testing.assert_frame_equal(
        comparisons_again.drop(columns="verdict"), comparisons.drop(columns="verdict"), check_dtype=False
    )
    other = tmp_path / "other"
    other.mkdir()
    (other / "summary.json").write_text('{"template": "relation"}')
    with pytest.raises(ValueError, match="one template"):
        cm.mixing_study([run, other])


def test_counting_tables_have_no_asked_colour_rows():
    rows = [
        dict(template="counting", run="r", model=m, method=m.split("_")[0], seed=s, split="test", image=i)
        | dict(prompt="two red circles", n_objects=2, n_mixed=0, mixed_any=bool(i % 2 and s == 0), mixed_share=0.1)
        | dict(asked_colours_mixed=np.nan, asked_share=np.nan, mixed_any_hard=False, asked_colours_mixed_hard=np.nan)
        | dict(two_colours=False, judge_all_ok=True, stored_judge_all_ok=True, reward=0.3, stored_reward=0.3)
        for m, s in (("base", None), ("b2_seed0", 0))
        for i in range(4)
    ]
    df = pd.DataFrame(rows)
    comp = mixing_comparisons(df, pairs=[("b2", "base")], draws=100)
    assert not comp["metric"].str.startswith("asked").any() and "mixed_any" in set(comp["metric"])
    rates = mixing_rates(df)
    assert rates["asked_colours_mixed"].isna().all() and list(rates["mixed_any"]) == [0.0, 0.5]
