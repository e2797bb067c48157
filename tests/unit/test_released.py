"""Loading released NV-Embed-v2 weights: a synthetic checkpoint with the release's names at tiny sizes.

``ReleasedPooling`` re-states the released ``LatentAttentionModel`` forward from its description (spec §1.2,
``modeling_nvembed.py``: PreNorm + Attention over ``(b h) n d`` + GEGLU FeedForward in an ``nn.Sequential``),
independently of our module, so the test checks the mapping *and* the computation.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from nvembed import Embedder
from nvembed.modeling.released import POOLER_RENAMES, split_released_state_dict
from tests.helpers import sentencepiece_style_tokenizer, tiny_decoder


class _Attn(nn.Module):
    def __init__(self, dim, heads, dim_head):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x, context):
        b, h = x.shape[0], self.heads
        q = self.to_q(x)
        k, v = self.to_kv(context).chunk(2, dim=-1)

        def split(t):  # 'b n (h d) -> (b h) n d'
            bb, n, hd = t.shape
            return t.view(bb, n, h, hd // h).permute(0, 2, 1, 3).reshape(bb * h, n, hd // h)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        bh, n, d = out.shape
        out = out.view(b, h, n, d).permute(0, 2, 1, 3).reshape(b, n, h * d)
        return self.to_out(out)


class _PreNorm(nn.Module):
    def __init__(self, dim, fn, context=False):
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim) if context else None

    def forward(self, x, context=None):
        if self.norm_context is not None:
            return self.fn(self.norm(x), context=self.norm_context(context))
        return self.fn(self.norm(x))


class _GEGLU(nn.Module):
    def forward(self, x):
        x, gates = x.chunk(2, dim=-1)
        return x * F.gelu(gates)


class _FF(nn.Module):
    def __init__(self, dim, mult=4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim * mult * 2), _GEGLU(), nn.Linear(dim * mult, dim))

    def forward(self, x):
        return self.net(x)


class ReleasedPooling(nn.Module):
    def __init__(self, dim, latents, heads, dim_head):
        super().__init__()
        self.cross_attend_blocks = nn.ModuleList(
            [_PreNorm(dim, _Attn(dim, heads, dim_head), context=True), _PreNorm(dim, _FF(dim))]
        )
        self.latents = nn.Parameter(torch.randn(latents, dim))

    def forward(self, hiddens, mask):
        attn, ff = self.cross_attend_blocks
        x = self.latents.unsqueeze(0).expand(hiddens.shape[0], -1, -1)
        hiddens = attn(hiddens, context=x) + hiddens
        hiddens = ff(hiddens) + hiddens
        s = (hiddens * mask.unsqueeze(-1).float()).sum(1)
        return F.normalize(s / mask.sum(1, keepdim=True).float(), dim=-1)


def _randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)


def _write_release(folder, sharded=True):
    """A folder laid out like nvidia/NV-Embed-v2 at tiny sizes; returns (backbone, reference pooler, tokenizer)."""
    tok = sentencepiece_style_tokenizer()
    backbone = tiny_decoder("mistral", len(tok), sliding_window=None, seed=3)
    ref = ReleasedPooling(64, latents=8, heads=2, dim_head=32)
    _randomise(ref)
    state = {f"embedding_model.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    state.update({f"latent_attention_model.{k}": v.contiguous() for k, v in ref.state_dict().items()})
    names = sorted(state)
    if sharded:
        half = len(names) // 2
        shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
        weight_map = {}
        for fname, keys in shards.items():
            save_file({k: state[k] for k in keys}, str(folder / fname))
            weight_map.update({k: fname for k in keys})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    else:
        save_file(state, str(folder / "model.safetensors"))
    text_config = backbone.config.to_dict()
    text_config["model_type"] = "bidir_mistral"
    config = {
        "model_type": "nvembed",
        "text_config": text_config,
        "latent_attention_config": {
            "model_type": "latent_attention",
            "num_latents_value": 8,
            "num_cross_heads": 2,
            "cross_dim_head": 32,
            "latent_dim": 64,
            "hidden_dim": 64,
        },
        "padding_side": "right",
        "is_mask_instruction": True,
        "add_eos": True,
    }
    (folder / "config.json").write_text(json.dumps(config))
    tok.save_pretrained(str(folder))
    return backbone, ref, tok


def test_mapping_covers_every_released_pooler_tensor():
    ref = ReleasedPooling(16, latents=4, heads=2, dim_head=8)
    assert {f"{k}" for k in ref.state_dict()} == set(POOLER_RENAMES)


def test_pooler_from_released_names_computes_the_released_forward():
    from nvembed.modeling.latent_attention import LatentAttentionPooling

    ref = ReleasedPooling(64, latents=8, heads=2, dim_head=32)
    _randomise(ref)
    state = {f"latent_attention_model.{k}": v for k, v in ref.state_dict().items()}
    _, pooler_sd = split_released_state_dict(state)
    ours = LatentAttentionPooling(64, num_latents=8, num_heads=2, head_dim=32)
    ours.load_state_dict(pooler_sd, strict=True)
    hidden, mask = torch.randn(3, 9, 64), torch.tensor([[1] * 9, [1] * 5 + [0] * 4, [0, 0] + [1] * 7])
    assert torch.allclose(ours(hidden, mask), ref(hidden, mask), atol=1e-6)


def test_unknown_released_tensor_is_an_error():
    with pytest.raises(KeyError, match="unexpected latent-attention tensor"):
        split_released_state_dict({"latent_attention_model.extra.weight": torch.zeros(1)})


@pytest.mark.parametrize("sharded", [True, False])
def test_embedder_loads_a_released_folder(tmp_path, sharded):
    backbone, ref, tok = _write_release(tmp_path, sharded)
    emb = Embedder.from_pretrained(tmp_path, dtype="float32")
    assert emb.config.pooling.num_latents == 8 and emb.config.pooling.head_dim == 32
    texts = ["the cat sat on the house", "a dog"]
    instruction = "Given a claim, retrieve documents"
    got = emb.encode(texts, instruction=instruction, show_progress=False)

    # reference: the release's input recipe (instruction + text + "</s>", BOS from the tokenizer, pool mask zeroing
    # the first len(tokenize(instruction_prefix)) positions) on a bidirectional copy of the same backbone
    from nvembed.modeling.bidirectional import make_bidirectional

    make_bidirectional(backbone)
    prefix = f"Instruct: {instruction}\nQuery: "
    n_instr = len(tok.tokenize(prefix))
    for i, text in enumerate(texts):
        ids = tok(prefix + text + tok.eos_token, return_tensors="pt")["input_ids"]
        mask = torch.ones_like(ids)
        pool = mask.clone()
        pool[:, :n_instr] = 0
        with torch.no_grad():
            expected = ref(backbone(input_ids=ids, attention_mask=mask).last_hidden_state, pool)
        assert torch.allclose(torch.from_numpy(got[i]), expected[0], atol=1e-5)
