import pytest
import torch

from b2lib.evaluation.generate import evaluate_images
from b2lib.evaluation.metrics import pairwise_diversity, pixel_diversity


def test_diversity_closed_forms():
    # two prompts: identical images (diversity 0) and orthogonal features (cos distance 1)
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    prompts = ["a", "a", "b", "b"]
    assert pairwise_diversity(feats, prompts) == pytest.approx(0.5)
    imgs = torch.zeros(4, 3, 2, 2)
    imgs[3] = 1.0
    assert pixel_diversity(imgs, prompts) == pytest.approx(0.5)  # (0 + RMS distance 1) / 2


def test_diversity_bad_input():
    with pytest.raises(ValueError, match="two images"):
        pairwise_diversity(torch.randn(2, 3), ["a", "b"])
    with pytest.raises(ValueError):
        pairwise_diversity(torch.randn(3, 3), ["a", "b"])


def test_evaluate_images_summary():
    images = torch.rand(4, 3, 8, 8)
    prompts = ["x", "x", "y", "y"]

    def reward(im, p):
        return torch.arange(4, dtype=torch.float32)

    def judge(im, p):
        return [{"all_ok": i % 2 == 0, "relation_ok": None} for i in range(4)]

    table, summary = evaluate_images(images, prompts, reward, judge, embed_fn=lambda im: im.flatten(1))
    assert summary["reward_mean"] == 1.5 and summary["judge_all_ok"] == 0.5
    assert "judge_relation_ok" not in summary
    assert list(table.columns[:2]) == ["prompt", "reward"]
    assert 0 < summary["clip_diversity"] < 1 and summary["pixel_diversity"] > 0
