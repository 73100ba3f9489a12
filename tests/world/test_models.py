"""Loading the world's models: clear errors for missing/corrupt weights; the shipped weights load and sample."""

import pytest
import torch

from b2lib.world import models as wm


def test_missing_weights_say_how_to_regenerate(tmp_path):
    with pytest.raises(FileNotFoundError, match="00_embedded_world"):
        wm.load_world_pipeline(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="00_embedded_world"):
        wm.load_clip_score(tmp_path / "nope")


def test_corrupt_weights_say_how_to_regenerate(tmp_path):
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(RuntimeError, match="00_embedded_world"):
        wm.load_world_pipeline(tmp_path)
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / f"{wm.CLIP_NAME}.json").write_text("{}")
    (clip / "open_clip_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="00_embedded_world"):
        wm.load_clip_score(clip)


def test_shipped_weights_load_and_sample():
    from b2lib.evaluation.generate import generate

    pipe = wm.load_world_pipeline()
    reward = wm.load_clip_score()
    images = generate(pipe, ["one red circle", "two blue squares"], num_steps=4)
    assert images.shape == (2, 3, 64, 64)
    scores = reward(images, ["one red circle", "two blue squares"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
