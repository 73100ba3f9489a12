import pytest
import torch

from b2lib.models import add_lora, clip_bpe_tokenizer, load_pipeline


def test_tokenizer_ids_equal_open_clip(tokenizer_dir):
    import open_clip

    tok = clip_bpe_tokenizer(cache_dir=tokenizer_dir)
    assert len(tok) == 49408
    for text in ["a red circle above a blue square", "three yellow triangles", "a cat washing dishes!"]:
        ours = tok(text).input_ids
        ref = open_clip.tokenize([text])[0]
        assert ours == ref[: len(ours)].tolist()
        assert ref[len(ours):].eq(0).all()


def test_save_and_load_roundtrip(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    loaded = load_pipeline(tmp_path / "pipe")
    for a, b in zip(tiny_pipe.unet.parameters(), loaded.unet.parameters()):
        assert torch.equal(a, b)
    assert type(loaded.scheduler).__name__ == "DDIMScheduler"


def test_load_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        load_pipeline(tmp_path / "missing")
    with pytest.raises(OSError, match="HF_HUB_OFFLINE"):
        load_pipeline("CompVis/stable-diffusion-v1-4")


def test_lora_starts_at_base_model(tiny_pipe):
    x = torch.randn(1, 4, 8, 8)
    emb = torch.randn(1, 16, 32)
    before = tiny_pipe.unet(x, 10, encoder_hidden_states=emb).sample
    params = add_lora(tiny_pipe.unet, rank=2)
    after = tiny_pipe.unet(x, 10, encoder_hidden_states=emb).sample
    assert params and all(p.requires_grad for p in params)
    assert sum(p.numel() for p in params) < sum(p.numel() for p in tiny_pipe.unet.parameters()) / 5
    torch.testing.assert_close(before, after)
