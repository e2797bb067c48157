"""The public Embedder API: encode, padding invariance, LoRA, save/load, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nvembed import Embedder, LoraConfig, PoolingConfig
from tests.helpers import sentencepiece_style_tokenizer, tiny_decoder

TEXTS = [
    "the cat",
    "the big red dog sat on the road in the rain",
    "bank card payment",
    "a question about the protein and the cell gene disease",
    "sun",
]


@pytest.mark.parametrize("pooling", ["latent", "mean", "last"])
def test_padding_invariance_tiny_mistral(pooling):
    tok = sentencepiece_style_tokenizer()
    emb = Embedder.from_model(tiny_decoder("mistral", len(tok)), tok, pooling=PoolingConfig(pooling, num_latents=8))
    alone = emb.encode(["the cat"], show_progress=False)
    batched = emb.encode(TEXTS, batch_size=8, show_progress=False)  # padded next to much longer texts
    assert np.abs(alone[0] - batched[0]).max() <= 1e-5
    with_instr_alone = emb.encode(["sun"], instruction="Classify the topic", show_progress=False)
    with_instr = emb.encode(TEXTS, instruction="Classify the topic", show_progress=False)
    assert np.abs(with_instr_alone[0] - with_instr[4]).max() <= 1e-5


def test_padding_invariance_minilm(minilm):
    emb = Embedder.from_pretrained(minilm, pooling="mean")
    alone = emb.encode(["the cat"], show_progress=False)
    batched = emb.encode(TEXTS, batch_size=8, show_progress=False)
    assert np.abs(alone[0] - batched[0]).max() <= 1e-5


def test_instruction_and_padding_states_never_enter_the_pool(tiny_mistral_embedder):
    """Perturb the token states at every position the pool mask drops: the embedding does not move."""
    emb = tiny_mistral_embedder
    batch = emb.tokenize(TEXTS[:3], instruction="Given a claim, retrieve documents")
    hidden = torch.randn(*batch["input_ids"].shape, 64)
    dropped = batch["pool_mask"] == 0
    assert dropped[:, 0].all() and (batch["attention_mask"] == 0).sum() > 0
    noisy = hidden.clone()
    noisy[dropped] += 50 * torch.randn(int(dropped.sum()), 64)
    pooler = emb.model.pooler.eval()
    with torch.no_grad():
        assert torch.allclose(pooler(hidden, batch["pool_mask"]), pooler(noisy, batch["pool_mask"]), atol=1e-6)


def test_rows_come_back_in_input_order(tiny_mistral_embedder):
    emb = tiny_mistral_embedder
    together = emb.encode(TEXTS, batch_size=2, show_progress=False)
    one_by_one = np.stack([emb.encode([t], show_progress=False)[0] for t in TEXTS])
    assert np.abs(together - one_by_one).max() <= 1e-5
    assert together.dtype == np.float32 and together.shape == (5, 64)


def test_encode_runs_without_autograd_with_a_progress_bar(tiny_mistral_embedder, capsys):
    """no_grad rather than inference_mode: ZeRO-3's parameter hooks reject inference tensors (dev metrics)."""
    seen = []
    handle = tiny_mistral_embedder.model.pooler.register_forward_hook(
        lambda *_: seen.append(not torch.is_grad_enabled() and not torch.is_inference_mode_enabled())
    )
    tiny_mistral_embedder.encode(TEXTS, show_progress=True)
    handle.remove()
    assert seen and all(seen)
    assert "encode" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad, error, message",
    [
        ([], ValueError, "empty"),
        (["ok", 3], TypeError, r"texts\[1\] is int"),
        (["ok", "  "], ValueError, r"texts\[1\] is an empty"),
        (None, TypeError, "list of strings"),
    ],
)
def test_bad_input_is_rejected_clearly(tiny_mistral_embedder, bad, error, message):
    with pytest.raises(error, match=message):
        tiny_mistral_embedder.encode(bad, show_progress=False)


def test_unknown_option_is_rejected(minilm):
    with pytest.raises(TypeError, match="unknown option 'poolin'"):
        Embedder.from_pretrained(minilm, poolin="mean")


def _lora_embedder():
    tok = sentencepiece_style_tokenizer()
    emb = Embedder.from_model(
        tiny_decoder("mistral", len(tok)),
        tok,
        pooling=PoolingConfig("latent", num_latents=8),
        lora=LoraConfig(enabled=True, rank=4, alpha=8, dropout=0.1),
    )
    with torch.no_grad():  # peft starts B at zero (a no-op adapter); make the adapter matter
        for name, p in emb.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return emb


def test_lora_trains_only_adapters_and_the_pooler():
    emb = _lora_embedder()
    trainable = {n for n, p in emb.model.named_parameters() if p.requires_grad}
    assert trainable
    assert all("lora_" in n or n.startswith("pooler.") for n in trainable)
    pooler_params = {f"pooler.{n}" for n, _ in emb.model.pooler.named_parameters()}
    assert {n for n in trainable if n.startswith("pooler.")} == pooler_params
    targeted = {n.split(".lora_")[0] for n in trainable if "lora_" in n}
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(t.endswith(proj) for t in targeted), proj  # "all-linear" reaches every LLM projection


def test_lora_merged_equals_unmerged_and_save_load_is_exact(tmp_path):
    emb = _lora_embedder()
    unmerged = emb.encode(TEXTS, instruction="Classify the topic", show_progress=False)
    # unmerged save: base weights + adapter/ ; reload reproduces exactly
    out = emb.save_pretrained(tmp_path / "unmerged")
    assert (out / "adapter" / "adapter_config.json").is_file()
    reloaded = Embedder.from_pretrained(out)
    assert np.array_equal(reloaded.encode(TEXTS, instruction="Classify the topic", show_progress=False), unmerged)
    # merged export (weights folded in, no adapter folder), and in-place merge
    merged_dir = emb.save_pretrained(tmp_path / "merged", merge_lora=True)
    assert not (merged_dir / "adapter").exists()
    merged = Embedder.from_pretrained(merged_dir).encode(TEXTS, instruction="Classify the topic", show_progress=False)
    assert np.abs(merged - unmerged).max() <= 1e-5
    emb.merge_lora()
    assert not any("lora_" in n for n, _ in emb.model.named_parameters())
    assert np.abs(emb.encode(TEXTS, instruction="Classify the topic", show_progress=False) - unmerged).max() <= 1e-5


def test_save_load_reproduces_latent_embedder_exactly(tiny_mistral_embedder, tmp_path):
    before = tiny_mistral_embedder.encode(TEXTS, show_progress=False)
    out = tiny_mistral_embedder.save_pretrained(tmp_path / "m")
    assert (out / "pooler.safetensors").is_file() and (out / "model.safetensors").is_file()
    again = Embedder.from_pretrained(out)
    assert again.config.pooling.num_latents == 8
    assert np.array_equal(again.encode(TEXTS, show_progress=False), before)
    # saving over an existing folder replaces it whole
    tiny_mistral_embedder.save_pretrained(out)
    assert np.array_equal(Embedder.from_pretrained(out).encode(TEXTS, show_progress=False), before)


def test_minilm_mean_pooling_reproduces_sentence_transformers(minilm, tmp_path):
    import json
    from importlib import resources

    from sentence_transformers import SentenceTransformer

    with resources.files("nvembed.resources").joinpath("eval/stsbenchmark/test.jsonl").open() as fh:  # bundled
        texts = [json.loads(line)["sentence1"] for _, line in zip(range(300), fh, strict=False)]
    st = SentenceTransformer(minilm, device="cpu")
    expected = st.encode(texts, batch_size=32, normalize_embeddings=True)
    emb = Embedder.from_pretrained(minilm, pooling="mean", query_instruction="Retrieve semantically similar text.")
    got = emb.encode(texts, max_length=st.max_seq_length, show_progress=False)
    assert np.abs(got - expected).max() <= 1e-5

    out = emb.save_pretrained(tmp_path / "minilm-export")
    exported = SentenceTransformer(str(out), device="cpu", trust_remote_code=True)
    assert exported.prompts["query"] == "Instruct: Retrieve semantically similar text.\nQuery: "
    assert np.abs(exported.encode(texts[:50]) - got[:50]).max() <= 1e-5
    queries = emb.encode(texts[:20], instruction="Retrieve semantically similar text.", show_progress=False)
    assert np.abs(exported.encode_query(texts[:20]) - queries).max() <= 1e-5
    assert np.abs(exported.encode_document(texts[:20]) - got[:20]).max() <= 1e-5


def test_saved_pooling_head_cannot_be_swapped(tiny_mistral_embedder, tmp_path):
    out = tiny_mistral_embedder.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="pooling head was trained as"):
        Embedder.from_pretrained(out, pooling="mean")
