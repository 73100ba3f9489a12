import pytest
import torch

from b2lib.training.models import add_lora, clip_bpe_tokenizer, load_sd_pipeline


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


def test_lora_fused_same_outputs_and_restores_weights_exactly(tiny_pipe):
    from b2lib.training.models import LORA_TARGETS, adapters_disabled, lora_fused

    unet = tiny_pipe.unet
    add_lora(unet, rank=2, target_modules=LORA_TARGETS["all"], seed=0)
    torch.manual_seed(0)
    for n, p in unet.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.05)  # a trained adapter: B != 0, so fusing changes the weights
    base = {n: p.detach().clone() for n, p in unet.named_parameters() if not p.requires_grad}
    x, emb = torch.randn(2, 4, 8, 8), torch.randn(2, 16, 32)
    with torch.no_grad():
        unfused = unet(x, 10, encoder_hidden_states=emb).sample
        with adapters_disabled(unet):
            plain = unet(x, 10, encoder_hidden_states=emb).sample
        for _ in range(3):  # repeated fuse/restore, as every stage does
            with lora_fused(unet):
                fused = unet(x, 10, encoder_hidden_states=emb).sample
        after = unet(x, 10, encoder_hidden_states=emb).sample
    assert (unfused - plain).abs().max() > 1e-2 * unfused.abs().max()  # the adapter matters
    assert (fused - unfused).abs().max() <= 1e-5 * unfused.abs().max()  # float rounding only
    assert torch.equal(after, unfused)  # unfused again, bit for bit
    for n, p in unet.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, base[n]), n
    with pytest.raises(RuntimeError, match="no_grad"):
        with lora_fused(unet):
            pass


def test_lora_fused_is_a_no_op_without_adapter(tiny_pipe):
    from b2lib.training.models import lora_fused

    before = [p.detach().clone() for p in tiny_pipe.unet.parameters()]
    with lora_fused(tiny_pipe.unet):  # no adapter: nothing to fuse, and no grad-mode requirement
        pass
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_pipe.unet.parameters()))
