import pytest
import torch

from b2lib.models import add_lora, clip_bpe_tokenizer, load_sd_pipeline


def test_tokenizer_ids_equal_open_clip(tokenizer_dir):
    import open_clip

    tok = clip_bpe_tokenizer(cache_dir=tokenizer_dir)
    assert len(tok) == 49408
    for text in ["a red circle above a blue square", "three yellow triangles", "a cat washing dishes!"]:
        ours = tok(text).input_ids
        ref = open_clip.tokenize([text])[0]
        assert ours == ref[: len(ours)].tolist()
        assert ref[len(ours) :].eq(0).all()


def test_save_and_load_roundtrip(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    loaded = load_sd_pipeline(tmp_path / "pipe")
    for a, b in zip(tiny_pipe.unet.parameters(), loaded.unet.parameters()):
        assert torch.equal(a, b)
    assert type(loaded.scheduler).__name__ == "DDIMScheduler"


def test_load_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        load_sd_pipeline(tmp_path / "missing")
    with pytest.raises(OSError, match="HF_HUB_OFFLINE"):
        load_sd_pipeline("CompVis/stable-diffusion-v1-4")


def test_lora_starts_at_base_model(tiny_pipe):
    x = torch.randn(1, 4, 8, 8)
    emb = torch.randn(1, 16, 32)
    before = tiny_pipe.unet(x, 10, encoder_hidden_states=emb).sample
    params = add_lora(tiny_pipe.unet, rank=2)
    after = tiny_pipe.unet(x, 10, encoder_hidden_states=emb).sample
    assert params and all(p.requires_grad for p in params)
    assert sum(p.numel() for p in params) < sum(p.numel() for p in tiny_pipe.unet.parameters()) / 5
    torch.testing.assert_close(before, after)


def test_lora_init_seeded_independent_of_global_rng(tiny_pipe):
    """A seeded adapter is the same whatever consumed the global generator before, and leaves it untouched."""
    import copy

    def lora_a(seed, burn):
        unet = copy.deepcopy(tiny_pipe.unet)
        torch.manual_seed(123)
        torch.randn(burn)  # what ran before in the same process
        state = torch.random.get_rng_state()
        add_lora(unet, rank=2, seed=seed)
        assert torch.equal(torch.random.get_rng_state(), state)
        return [p.detach().clone() for n, p in unet.named_parameters() if "lora_A" in n]

    a, b, c = lora_a(0, 1), lora_a(0, 1000), lora_a(1, 1)
    assert a and all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, z) for x, z in zip(a, c))
