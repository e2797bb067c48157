"""nvembed: decoder-only LLMs as generalist text embedders, the NV-Embed recipe (arXiv 2405.17428)."""

from __future__ import annotations

from nvembed.config import EmbedderConfig, LoraConfig, ModelConfig, PoolingConfig
from nvembed.embedder import Embedder
from nvembed.modeling.embedder import NVEmbedModel

__all__ = ["Embedder", "EmbedderConfig", "LoraConfig", "ModelConfig", "NVEmbedModel", "PoolingConfig"]
__version__ = "0.1.0"
