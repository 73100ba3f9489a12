"""CLIPScore on a tiny open_clip CLIP built from config; offline errors for hub weights."""

import time

import pytest
import torch
import torch.nn.functional as F

from b2lib.rewards.base import ClipScore


@pytest.fixture(scope="module")
def tiny_clip():
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=16),
        text_cfg=CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=2, layers=2),
    )
    return model, open_clip.tokenizer.SimpleTokenizer(context_length=16)


def test_clipscore_is_cosine_of_embeddings(tiny_clip):
    model, tok = tiny_clip
    score = ClipScore(model, tok)
    images = torch.rand(5, 3, 16, 16)
    prompts = ["a red circle", "a blue square", "a red circle", "two dogs", "a blue square"]
    s = score(images, prompts)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        img = F.normalize(model.encode_image((images - mean) / std), dim=-1)
        txt = F.normalize(model.encode_text(tok(prompts)), dim=-1)
    torch.testing.assert_close(s, (img * txt).sum(-1), rtol=1e-5, atol=1e-5)
    assert s.shape == (5,) and (s.abs() <= 1).all()


def test_clipscore_resizes_other_sizes(tiny_clip):
    model, tok = tiny_clip
    s = ClipScore(model, tok, batch_size=2)(torch.rand(3, 3, 32, 32), ["a", "b", "c"])
    assert s.shape == (3,) and torch.isfinite(s).all()


def test_clipscore_bad_input(tiny_clip):
    score = ClipScore(*tiny_clip)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        score(torch.rand(3, 16, 16), ["a"])
    with pytest.raises(ValueError, match="one prompt per image"):
        score(torch.rand(2, 3, 16, 16), ["a"])


def test_hub_weights_offline_fail_fast_with_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: nothing to fall back on
    t = time.perf_counter()
    with pytest.raises(OSError, match="offline or unreachable"):
        ClipScore.from_pretrained("ViT-H-14", "laion2b_s32b_b79k")
    assert time.perf_counter() - t < 20


def test_unknown_tag_and_missing_checkpoint():
    with pytest.raises(ValueError, match="list_pretrained_tags_by_model"):
        ClipScore.from_pretrained("ViT-H-14", "no_such_tag")
    with pytest.raises(FileNotFoundError):
        ClipScore.from_pretrained("ViT-B-32", "/nonexistent/clip.safetensors")


def test_score_and_embed_equals_separate_passes(tiny_clip):
    score = ClipScore(*tiny_clip, batch_size=2)
    images, prompts = torch.rand(5, 3, 16, 16), ["a", "b", "a", "c", "b"]
    s, f = score.score_and_embed(images, prompts)
    torch.testing.assert_close(s, score(images, prompts))
    torch.testing.assert_close(f, score.embed_images(images))


def test_redness_closed_form():
    from b2lib.rewards.base import Redness

    images = torch.zeros(3, 3, 4, 4)
    images[0, 0] = 1.0  # pure red
    images[1] = 0.5  # grey
    images[2, 1:] = 1.0  # cyan
    torch.testing.assert_close(Redness()(images, ["", "", ""]), torch.tensor([1.0, 0.0, -1.0]))
    with pytest.raises(ValueError, match="one prompt per image"):
        Redness()(images, [""])
