"""Latent-attention pooling: size at Mistral-7B dimensions, masking, identity start, shapes."""

from __future__ import annotations

import torch

from nvembed.modeling.latent_attention import LatentAttentionPooling, MeanPooling, masked_mean


def test_parameter_count_at_mistral_7b_dimensions_on_meta():
    with torch.device("meta"):
        pooler = LatentAttentionPooling(4096, num_latents=512, num_heads=8, head_dim=4096)
    n = sum(p.numel() for p in pooler.parameters())
    # to_q 134.2M + to_kv 268.4M + to_out 134.2M + GEGLU FF 201.4M + latents 2.1M + LayerNorms (spec §1.2)
    assert abs(n - 0.74e9) / 0.74e9 < 0.01, n
    assert pooler.cross_attn.to_q.weight.shape == (32768, 4096)
    assert pooler.cross_attn.to_kv.weight.shape == (65536, 4096)
    assert pooler.ff.proj_in.weight.shape == (32768, 4096)
    assert pooler.ff.proj_out.weight.shape == (4096, 16384)


def test_widths_follow_the_backbone_by_default():
    pooler = LatentAttentionPooling(48, num_latents=16, num_heads=2)
    assert pooler.latents.shape == (16, 48)
    assert pooler.cross_attn.to_q.weight.shape == (2 * 48, 48)
    out = pooler(torch.randn(3, 5, 48), torch.ones(3, 5))
    assert out.shape == (3, 48)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-6)


def test_masked_positions_never_reach_the_output():
    pooler = LatentAttentionPooling(32, num_latents=8, num_heads=2).eval()
    hidden = torch.randn(2, 7, 32)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1]])
    noisy = hidden.clone()
    noisy[mask == 0] = torch.randn(int((mask == 0).sum()), 32) * 100
    assert torch.allclose(pooler(hidden, mask), pooler(noisy, mask), atol=1e-6)


def test_zero_init_residual_starts_as_mean_pooling():
    hidden, mask = torch.randn(2, 6, 32), torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6])
    latent = LatentAttentionPooling(32, num_latents=8, num_heads=2, zero_init_residual=True)
    assert torch.allclose(latent(hidden, mask), MeanPooling(32)(hidden, mask), atol=1e-6)
    default = LatentAttentionPooling(32, num_latents=8, num_heads=2)
    assert not torch.allclose(default(hidden, mask), MeanPooling(32)(hidden, mask), atol=1e-3)


def test_masked_mean_by_hand():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.allclose(masked_mean(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


def test_gradients_reach_every_pooler_parameter():
    pooler = LatentAttentionPooling(16, num_latents=4, num_heads=2)
    pooler(torch.randn(2, 5, 16), torch.ones(2, 5)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pooler.parameters())
