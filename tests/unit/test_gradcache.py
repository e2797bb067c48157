"""GradCache == plain loss (gradients), with less activation memory; RNG replay keeps dropout identical."""

from __future__ import annotations

import pytest
import torch

from nvembed import Embedder, LoraConfig, PoolingConfig
from nvembed.data.collate import ContrastiveCollator
from nvembed.data.schema import TrainingExample
from nvembed.training.step import contrastive_backward
from tests.helpers import sentencepiece_style_tokenizer, tiny_decoder

WORDS = "the cat dog bird fish tree house car road river city music film book paper protein cell gene".split()


def _rows(n, k):
    g = torch.Generator().manual_seed(0)
    pick = lambda m: " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (m,), generator=g))  # noqa: E731
    return [
        TrainingExample(
            pick(4),
            pick(12),
            [pick(10) for _ in range(k)],
            "Classify the topic",
            None,
            "t",
            "Retrieval",
            in_batch_negatives=i % 2 == 0,
        )
        for i in range(n)
    ]


def _embedder(dropout=0.0, checkpointing=False):
    tok = sentencepiece_style_tokenizer()
    return Embedder.from_model(
        tiny_decoder("mistral", len(tok)),
        tok,
        pooling=PoolingConfig("latent", num_latents=8, num_heads=2),
        lora=LoraConfig(enabled=True, rank=4, alpha=8, dropout=dropout),
        gradient_checkpointing=checkpointing,
    )


def _grads(emb, batch, chunk_size):
    emb.model.zero_grad(set_to_none=True)
    loss = contrastive_backward(emb.model, batch, temperature=0.05, chunk_size=chunk_size)
    return loss, {n: p.grad.clone() for n, p in emb.model.named_parameters() if p.requires_grad}


class PeakSavedTensors:
    """Peak bytes of tensors saved for backward that are alive at once (activation memory), via autograd hooks."""

    def __init__(self):
        self.live = self.peak = 0

    def __enter__(self):
        tracker = self

        class Held:
            def __init__(self, t):
                self.t, self.n = t, t.numel() * t.element_size()
                tracker.live += self.n
                tracker.peak = max(tracker.peak, tracker.live)

            def __del__(self):
                tracker.live -= self.n

        self._ctx = torch.autograd.graph.saved_tensors_hooks(Held, lambda h: h.t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain-backbone", "grad-checkpointing"])
def test_gradcache_gradients_equal_plain_and_use_less_memory(checkpointing):
    emb = _embedder(checkpointing=checkpointing)
    emb.model.train()
    batch = ContrastiveCollator(emb.inputs, num_negatives=3, query_max_length=32, doc_max_length=32)(_rows(8, 3))
    with PeakSavedTensors() as plain_mem:
        plain_loss, plain = _grads(emb, batch, chunk_size=None)
    with PeakSavedTensors() as cached_mem:
        cached_loss, cached = _grads(emb, batch, chunk_size=4)
    assert abs(plain_loss.item() - cached_loss.item()) <= 1e-5
    assert plain.keys() == cached.keys() and any("lora_" in n for n in plain) and any("pooler" in n for n in plain)
    for name in plain:
        assert (plain[name] - cached[name]).abs().max() <= 1e-5, name
    assert cached_mem.peak < plain_mem.peak / 2, (cached_mem.peak, plain_mem.peak)


def test_replayed_rng_keeps_dropout_masks_identical():
    """One chunk per group: GradCache's no-grad pass and its replay must draw the dropout masks the plain pass draws."""
    emb = _embedder(dropout=0.3)
    emb.model.train()
    batch = ContrastiveCollator(emb.inputs, num_negatives=2, query_max_length=32, doc_max_length=32)(_rows(4, 2))
    torch.manual_seed(7)
    plain_loss, plain = _grads(emb, batch, chunk_size=None)
    torch.manual_seed(7)
    cached_loss, cached = _grads(emb, batch, chunk_size=64)
    assert abs(plain_loss.item() - cached_loss.item()) <= 1e-6
    for name in plain:
        assert (plain[name] - cached[name]).abs().max() <= 1e-5, name
    torch.manual_seed(8)  # a different dropout draw gives different gradients: the check above can fail
    _, other = _grads(emb, batch, chunk_size=None)
    assert any((plain[n] - other[n]).abs().max() > 1e-4 for n in plain)
