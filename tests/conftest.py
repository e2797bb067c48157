from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# moto's request recorder (tests/integration/test_prepare_ray.py) fixes its file when moto is first imported;
# its default is ./moto_recording, inside the checkout
os.environ.setdefault(
    "MOTO_RECORDER_FILEPATH", os.path.join(os.environ.get("TMPDIR", "/tmp"), f"moto-rec-{os.getpid()}")
)

import pytest
import torch

from tests.helpers import minilm_path, sentencepiece_style_tokenizer, tiny_decoder

#: Real public data for slow tests and benchmarks (README "Data"): $NVEMBED_DATA, else the copy beside the checkout
#: on the project's dev machines. Never needed by the default run (tests/unit/test_self_contained.py).
DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


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


def shared_data_path(nodeid: str, slow: bool) -> str:
    """The real-data folder (``$NVEMBED_DATA``) for a slow test; a slow test without it is skipped.

    A default-run test asking for it fails instead of skipping: the default suite must pass from a clone alone, and a
    skip there would hide a feature that silently depends on data outside the repository."""
    if not slow:
        pytest.fail(
            f"{nodeid}: the shared_data fixture is for slow tests only; default-run tests use the data shipped in "
            "nvembed/resources (nvembed/resources/PROVENANCE.md)",
            pytrace=False,
        )
    path = os.path.abspath(os.environ.get("NVEMBED_DATA") or DEFAULT_DATA)
    if not os.path.isdir(path):
        pytest.skip(f"real data folder not found at {path} (set NVEMBED_DATA; README 'Data')")
    return path


@pytest.fixture
def shared_data(request):
    return shared_data_path(request.node.nodeid, request.node.get_closest_marker("slow") is not None)


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
