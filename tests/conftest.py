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


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session: logical CPUs above the 2 cores so Ray Data and actors never starve."""
    import ray

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "env_vars": {
                "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "PYTHONWARNINGS": "ignore",
                "DS_ACCELERATOR": "cpu",
            }
        },
    )
    yield ray
    ray.shutdown()
