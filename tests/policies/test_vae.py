"""VAE decoding shared by both policies: images in [0, 1], the same pixels whatever the chunk size."""

import pytest
import torch

from b2lib.policies.vae import decode_latents


def test_decoding_in_chunks_gives_the_same_images(tiny_pipe):
    c = tiny_pipe.vae.config.latent_channels
    latents = torch.randn(5, c, 8, 8, generator=torch.Generator().manual_seed(0))
    whole = decode_latents(tiny_pipe, latents, batch_size=None)
    assert whole.dtype == torch.float32 and whole.shape[:2] == (5, 3)
    assert float(whole.min()) >= 0 and float(whole.max()) <= 1
    torch.testing.assert_close(decode_latents(tiny_pipe, latents, batch_size=2), whole)
    with pytest.raises(ValueError, match="batch_size"):
        decode_latents(tiny_pipe, latents, batch_size=0)
