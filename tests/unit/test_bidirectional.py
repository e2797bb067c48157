"""Bidirectional conversion: numerically, per architecture and attention kernel (spec pitfall 7)."""

from __future__ import annotations

import pytest
import torch

from nvembed.modeling.bidirectional import (
    SUPPORTED_DECODERS,
    UnsupportedBackboneError,
    is_bidirectional,
    make_bidirectional,
)
from tests.helpers import tiny_decoder


def _first_token_shift(model, length: int = 10) -> float:
    """How much token 0's final state moves when only the last token changes."""
    torch.manual_seed(1)
    ids = torch.randint(3, 200, (1, length))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 7) % 200 + 3
    mask = torch.ones_like(ids)
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).last_hidden_state[0, 0]
        b = model(input_ids=changed, attention_mask=mask).last_hidden_state[0, 0]
    return float((a - b).abs().max())


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", ["mistral", "llama", "qwen2"])
def test_last_token_reaches_first_only_after_conversion(kind, attn):
    model = tiny_decoder(kind, vocab_size=300, attn=attn, sliding_window=3)
    assert _first_token_shift(model) == 0.0  # causal: token 0 cannot see the future
    assert not is_bidirectional(model)
    make_bidirectional(model)
    assert is_bidirectional(model)
    # with a sliding window of 3 left in place, token 0 could not see token 9 even bidirectionally
    assert _first_token_shift(model) > 1e-4


@pytest.mark.parametrize("kind", ["mistral", "qwen2"])
def test_padding_keys_stay_masked_after_conversion(kind):
    model = make_bidirectional(tiny_decoder(kind, vocab_size=300))
    ids = torch.randint(3, 200, (1, 6))
    padded = torch.cat([ids, torch.full((1, 4), 5)], dim=1)  # [1, 10]
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 4)], dim=1).long()
    with torch.no_grad():
        alone = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
        with_pad = model(input_ids=padded, attention_mask=mask).last_hidden_state[0, :6]
    assert torch.allclose(alone, with_pad, atol=1e-5)


def test_conversion_is_idempotent():
    model = tiny_decoder("mistral", vocab_size=300)
    ids = torch.randint(3, 200, (2, 8))
    make_bidirectional(model)
    with torch.no_grad():
        once = model(input_ids=ids).last_hidden_state
    make_bidirectional(model)
    with torch.no_grad():
        twice = model(input_ids=ids).last_hidden_state
    assert torch.equal(once, twice)
    assert model.config.sliding_window is None


def test_unsupported_decoder_fails_loudly():
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    with pytest.raises(UnsupportedBackboneError) as err:
        make_bidirectional(model)
    assert "gpt2" in str(err.value)
    for name in SUPPORTED_DECODERS:
        assert name in str(err.value)


def test_encoder_passes_through_unchanged():
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert make_bidirectional(model) is model
    assert is_bidirectional(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not hasattr(model.config, "nvembed_bidirectional")
