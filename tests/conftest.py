from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest
import torch

from tests.helpers import minilm_path, sentencepiece_style_tokenizer, tiny_decoder

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def sp_tokenizer():
    return sentencepiece_style_tokenizer()


@pytest.fixture(scope="session")
def _tiny_mistral_embedder():
    from nvembed import Embedder, PoolingConfig

    tok = sentencepiece_style_tokenizer()
    model = tiny_decoder("mistral", len(tok))
    return Embedder.from_model(model, tok, pooling=PoolingConfig(kind="latent", num_latents=8, num_heads=2))


@pytest.fixture
def tiny_mistral_embedder(_tiny_mistral_embedder):
    """Function-scoped deep copy of a session-built tiny Mistral embedder (sentence-transformers pattern)."""
    return copy.deepcopy(_tiny_mistral_embedder)


@pytest.fixture(scope="session")
def minilm():
    return minilm_path()


@pytest.fixture(scope="session")
def shared_data():
    path = os.path.abspath(os.path.join(SHARED, "data"))
    if not os.path.isdir(path):
        pytest.skip(f"shared data folder not found at {path}")
    return path
