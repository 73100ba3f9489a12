"""Programmatic judge of the shape world: correctness, robustness, input handling."""

import numpy as np
import pytest

from b2lib.world import (
    TEMPLATES,
    Obj,
    Scene,
    alignment_rate,
    all_prompts,
    degrade,
    detect_objects,
    judge,
    judge_accuracy,
    judge_batch,
    render,
    sample_scene,
)


def _scene(prompt, *objs):
    return Scene(tuple(Obj(*o) for o in objs), "", prompt)


@pytest.mark.parametrize("template", TEMPLATES)
def test_sampled_scenes_are_judged_aligned(template):
    rng = np.random.default_rng(10)
    prompts = all_prompts(template)[::3] if template == "relation" else all_prompts(template)
    for p in prompts:
        res = judge(render(sample_scene(rng, template, p)), p)
        assert res.all_ok, (p, res)
        assert res.count_ok and res.colour_ok and res.shape_ok
        assert (res.relation_ok is None) == (template != "relation")
        assert (res.binding_ok is None) == (template == "counting")


def test_judge_accuracy_clean_and_noisy():
    clean = judge_accuracy(60, seed=0)
    noisy = judge_accuracy(60, seed=1, noise=8 / 255)  # + 0.7 px blur by default
    for t in TEMPLATES:
        assert clean[t] >= 0.97, clean
        assert noisy[t] >= 0.95, noisy
        assert {f"{t}/pos", f"{t}/neg"} <= set(clean)


def test_detections_recover_geometry():
    rng = np.random.default_rng(11)
    for _ in range(30):
        scene = sample_scene(rng, "counting")
        dets = detect_objects(degrade(render(scene), rng))
        assert len(dets) == len(scene.objects)
        for o in scene.objects:
            d = min(dets, key=lambda d: (d.cx - o.cx) ** 2 + (d.cy - o.cy) ** 2)
            assert (d.shape, d.colour) == (o.shape, o.colour)
            assert np.hypot(d.cx - o.cx, d.cy - o.cy) < 1.5 and abs(d.size - o.size) < 2.0


def test_per_attribute_verdicts():
    # counting: right count and colour, wrong shape
    squares = [("square", "red", 12, 12, 14), ("square", "red", 40, 14, 14), ("square", "red", 30, 45, 14)]
    img = render(_scene("", *squares))
    r = judge(img, "three red circles")
    assert (r.count_ok, r.colour_ok, r.shape_ok, r.all_ok) == (True, True, False, False)
    assert judge(img, "three red squares").all_ok
    r = judge(img, "two red squares")  # one object too many
    assert (r.count_ok, r.colour_ok, r.shape_ok, r.all_ok) == (False, True, True, False)
    # binding: colours and shapes present but swapped
    img = render(_scene("", ("circle", "red", 16, 16, 18), ("square", "blue", 46, 44, 18)))
    assert judge(img, "a red circle and a blue square").all_ok
    assert judge(img, "a blue square and a red circle").all_ok  # order is free for binding
    r = judge(img, "a blue circle and a red square")
    assert (r.count_ok, r.colour_ok, r.shape_ok, r.binding_ok, r.all_ok) == (True, True, True, False, False)
    assert r.relation_ok is None
    # relation: objects right, relation wrong
    img = render(_scene("", ("circle", "red", 30, 14, 18), ("square", "blue", 34, 46, 18)))
    assert judge(img, "a red circle above a blue square").all_ok
    assert judge(img, "a blue square below a red circle").all_ok
    for wrong in ("a red circle below a blue square", "a red circle left of a blue square"):
        r = judge(img, wrong)
        assert (r.binding_ok, r.relation_ok, r.all_ok) == (True, False, False)
    # relation is still judged on shapes when a colour is wrong
    r = judge(img, "a green circle above a blue square")
    assert (r.colour_ok, r.binding_ok, r.relation_ok, r.all_ok) == (False, False, True, False)


def test_blank_and_noise_images_are_not_aligned():
    blank = np.full((64, 64, 3), 235, np.uint8)
    r = judge(blank, "one red circle")
    assert r.objects == [] and not r.all_ok and not r.count_ok
    noise = degrade(blank, np.random.default_rng(0), noise=12 / 255, blur=0.0)
    assert judge(noise, "one red circle").objects == []


def test_input_formats_agree():
    rng = np.random.default_rng(12)
    scene = sample_scene(rng, "relation")
    img = render(scene)
    f_hwc = img.astype(np.float32) / 255
    variants = [img, f_hwc, f_hwc.transpose(2, 0, 1), f_hwc.astype(np.float64).tolist()]

    class FakeTensor:  # duck-typed like torch: .detach().cpu() then np.asarray
        def __init__(self, a):
            self.a = a

        def detach(self):
            return self

        def cpu(self):
            return self

        def __array__(self, dtype=None, copy=None):
            return self.a

    variants.append(FakeTensor(f_hwc.transpose(2, 0, 1)))
    results = [judge(v, scene.prompt) for v in variants]
    assert all(r.all_ok for r in results)
    assert len({tuple((d.shape, d.colour, round(d.cx, 3)) for d in r.objects) for r in results}) == 1


def test_torch_tensor_input():
    torch = pytest.importorskip("torch")
    scene = sample_scene(np.random.default_rng(13), "binding")
    x = torch.from_numpy(render(scene)).permute(2, 0, 1).float().div(255).requires_grad_()
    assert judge(x, scene.prompt).all_ok
    assert judge(x.to(torch.bfloat16), scene.prompt).all_ok
    assert all(r.all_ok for r in judge_batch(x.detach()[None].repeat(2, 1, 1, 1), scene.prompt))


@pytest.mark.parametrize("shape", [(64, 64), (64, 64, 4), (4, 64, 64), (1, 64, 64, 3), (64, 3, 5)])
def test_wrong_shapes_raise(shape):
    with pytest.raises(ValueError) as err:
        judge(np.zeros(shape, np.uint8), "one red circle")
    assert "(H, W, 3)" in str(err.value) and "(3, H, W)" in str(err.value)


def test_bad_values_and_prompts_raise():
    img = render(sample_scene(np.random.default_rng(14), "counting"))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        judge(img.astype(np.float32), "one red circle")  # 0..255 floats
    with pytest.raises(ValueError, match="red, green, blue, yellow"):
        judge(img, "two pink circles")
    with pytest.raises(ValueError, match="counting, binding, relation"):
        judge(img, "a cat riding a bike")


def test_batch_api():
    rng = np.random.default_rng(15)
    scenes = [sample_scene(rng, t) for t in TEMPLATES for _ in range(3)]
    imgs = np.stack([render(s) for s in scenes])
    prompts = [s.prompt for s in scenes]
    res = judge_batch(imgs, prompts)
    assert len(res) == 9 and alignment_rate(res) == 1.0
    assert [r.prompt for r in judge_batch(list(imgs), prompts)] == prompts
    chw = imgs.transpose(0, 3, 1, 2).astype(np.float32) / 255
    assert alignment_rate(judge_batch(chw, prompts)) == 1.0
    res = judge_batch(imgs[:2], "one red circle")
    assert len(res) == 2
    with pytest.raises(ValueError, match="prompts"):
        judge_batch(imgs, prompts[:3])
    with pytest.raises(ValueError, match="4-D"):
        judge_batch(imgs[0], prompts[0])
    with pytest.raises(ValueError):
        alignment_rate([])


def test_other_resolutions_and_generated_like_colours():
    rng = np.random.default_rng(16)
    for i in range(24):
        scene = sample_scene(rng, TEMPLATES[i % 3])
        for size in (32, 128):
            assert judge(render(scene, size), scene.prompt).all_ok
        # paler, darker, tinted colours with blur and noise, as a tiny diffusion model may produce
        x = render(scene).astype(np.float32)
        grey = x.mean(-1, keepdims=True)
        x = grey + 0.65 * (x - grey) - 15 + np.array([-6, 0, 8], np.float32)
        img = degrade(np.clip(x, 0, 255).astype(np.uint8), rng, noise=8 / 255, blur=1.0)
        assert judge(img, scene.prompt).all_ok
