"""The public API: :class:`Embedder` (``from_pretrained``, ``encode``, ``save_pretrained``).

Features, and what controls each:

* backbone by hub name or local folder (``Embedder.from_pretrained(name_or_path)``), ``dtype``,
  ``attn_implementation``; decoder-only backbones are made bidirectional (``bidirectional=True``);
* pooling: NV-Embed latent attention (``pooling="latent"``, ``num_latents``, ``num_heads``, ``head_dim``), or
  ``"mean"`` / ``"last"`` for ablations;
* LoRA through peft (``lora=True`` or a dict of :class:`nvembed.config.LoraConfig` fields); ``merge_lora()``;
* instructions: ``encode(texts, instruction="...")`` applies ``Instruct: {instruction}\\nQuery: `` and keeps the
  instruction out of the pool (spec §1.3);
* three folder formats are read: our own (``nvembed_config.json``), a released NV-Embed-v2 checkpoint
  (``config.json`` with ``model_type: nvembed``, see :mod:`nvembed.modeling.released`), or any plain HF model
  (a fresh pooling head is added);
* ``save_pretrained`` writes safetensors + configs + tokenizer (+ ``adapter/`` when LoRA is unmerged) and the
  files that let ``sentence_transformers.SentenceTransformer(dir)`` load the same model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from nvembed.config import EmbedderConfig, LoraConfig, ModelConfig, PoolingConfig, from_dict, to_dict
from nvembed.modeling.bidirectional import is_decoder_only
from nvembed.modeling.builders import (
    assemble,
    build_backbone,
    build_pooler,
    build_tokenizer,
    maybe_apply_lora,
    prepare_backbone,
    resolve_model_path,
)
from nvembed.modeling.embedder import NVEmbedModel
from nvembed.modeling.lora import base_state_dict, is_peft
from nvembed.tokenization import InputBuilder

logger = logging.getLogger(__name__)

NVEMBED_CONFIG = "nvembed_config.json"
POOLER_WEIGHTS = "pooler.safetensors"
ADAPTER_DIR = "adapter"
FORMAT_VERSION = 1

_MODEL_KEYS = {f.name for f in dataclasses.fields(ModelConfig)} - {"name_or_path"}
_POOLING_KEYS = {f.name for f in dataclasses.fields(PoolingConfig)} - {"kind"}


def validate_texts(texts: Any, what: str = "texts") -> list[str]:
    """A list of non-empty strings, or a clear error naming the first bad item."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence) and not isinstance(texts, np.ndarray):
        raise TypeError(f"{what} must be a list of strings, got {type(texts).__name__}")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what} is empty: nothing to encode")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] is {type(t).__name__}, expected str: {t!r:.80}")
        if not t.strip():
            raise ValueError(f"{what}[{i}] is an empty or whitespace-only string")
    return texts


def _config_from_options(name_or_path: str, options: dict[str, Any], base: EmbedderConfig | None) -> EmbedderConfig:
    """Fold ``from_pretrained`` keyword options into a validated :class:`EmbedderConfig`."""
    cfg = base or EmbedderConfig()
    model = to_dict(cfg.model)
    pooling = to_dict(cfg.pooling)
    lora = to_dict(cfg.lora)
    model["name_or_path"] = name_or_path
    for key, value in options.items():
        if key in _MODEL_KEYS:
            model[key] = value
        elif key in _POOLING_KEYS:
            pooling[key] = value
        elif key == "pooling":
            if isinstance(value, str):
                pooling["kind"] = value
            else:
                pooling.update(to_dict(value) if dataclasses.is_dataclass(value) else dict(value))
        elif key == "lora":
            if isinstance(value, bool):
                lora["enabled"] = value
            else:
                given = to_dict(value) if dataclasses.is_dataclass(value) else dict(value)
                lora.update({"enabled": True, **given})
        else:
            valid = sorted(_MODEL_KEYS | _POOLING_KEYS | {"pooling", "lora", "seed", "device", "query_instruction"})
            raise TypeError(f"unknown option {key!r} for Embedder.from_pretrained (valid: {', '.join(valid)})")
    return from_dict(EmbedderConfig, {"model": model, "pooling": pooling, "lora": lora})


class Embedder:
    """An NV-Embed-style text embedder: tokenizer + :class:`NVEmbedModel` + the config that built them.

    Args:
        model: backbone + pooler.
        tokenizer: the backbone's fast tokenizer.
        config: the configuration the model was built from (saved with it).
        query_instruction: default task instruction stored as the ``"query"`` prompt of the exported
            sentence-transformers folder (``encode`` never applies it implicitly).
    """

    def __init__(
        self, model: NVEmbedModel, tokenizer, config: EmbedderConfig, query_instruction: str | None = None
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.query_instruction = query_instruction
        self.is_decoder = is_decoder_only(self._base_backbone().config)
        self.inputs = InputBuilder(tokenizer, self.is_decoder, config.model.instruction_template)

    # ------------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **options: Any) -> Embedder:
        """Load an embedder.

        Args:
            name_or_path: hub name or local folder: an nvembed export, a released NV-Embed-v2 checkpoint, or a plain
                transformers backbone (then a new pooling head is initialised, seeded by ``seed``).
            **options: :class:`ModelConfig` fields (``dtype``, ``attn_implementation``, ``bidirectional``,
                ``max_length``, ``instruction_template``, ``gradient_checkpointing``), ``pooling`` (``"latent"``,
                ``"mean"``, ``"last"`` or a dict), pooling fields (``num_latents``, ``num_heads``, ``head_dim``,
                ``ff_mult``, ``normalize``, ``zero_init_residual``), ``lora`` (bool or dict), ``seed``, ``device``,
                ``query_instruction``, and ``trainable`` (load a saved adapter as trainable).
        """
        path = resolve_model_path(str(name_or_path))
        seed = options.pop("seed", 0)
        device = options.pop("device", None)
        trainable = options.pop("trainable", False)
        query_instruction = options.pop("query_instruction", None)
        local = Path(path)
        if (local / NVEMBED_CONFIG).is_file():
            emb = cls._load_saved(local, options, trainable)
        elif (local / "config.json").is_file() and json.loads((local / "config.json").read_text()).get(
            "model_type"
        ) == "nvembed":
            from nvembed.modeling.released import load_released_nvembed

            cfg = _config_from_options(path, options, None)
            model, tokenizer, cfg = load_released_nvembed(local, cfg)
            emb = cls(model, tokenizer, cfg)
        else:
            emb = cls.from_config(_config_from_options(path, options, None), seed=seed)
        if query_instruction is not None:
            emb.query_instruction = query_instruction
        if device is not None:
            emb.to(device)
        return emb

    @classmethod
    def from_config(cls, cfg: EmbedderConfig, seed: int = 0) -> Embedder:
        """Backbone from ``cfg.model.name_or_path`` + a fresh pooling head (seeded) + LoRA per ``cfg.lora``."""
        backbone = build_backbone(cfg.model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = assemble(backbone, cfg)
        return cls(model, build_tokenizer(cfg.model.name_or_path), cfg)

    @classmethod
    def _load_saved(cls, folder: Path, options: dict[str, Any], trainable: bool) -> Embedder:
        meta = json.loads((folder / NVEMBED_CONFIG).read_text())
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"{folder}: saved with a newer nvembed (format {meta['format_version']})")
        saved = from_dict(EmbedderConfig, meta["config"])
        cfg = _config_from_options(str(folder), options, saved)
        if cfg.pooling != saved.pooling and (folder / POOLER_WEIGHTS).is_file():
            raise ValueError(
                f"{folder}: its pooling head was trained as {saved.pooling}; pooling options cannot change it "
                f"(got {cfg.pooling})"
            )
        has_adapter = (folder / ADAPTER_DIR).is_dir()
        backbone = build_backbone(cfg.model, str(folder))
        pooler = build_pooler(cfg.pooling, backbone.config.hidden_size)
        if (folder / POOLER_WEIGHTS).is_file():
            from safetensors.torch import load_file

            pooler.load_state_dict(load_file(str(folder / POOLER_WEIGHTS)))
        param = next(backbone.parameters())
        pooler.to(device=param.device, dtype=param.dtype)
        if has_adapter:
            from peft import PeftModel

            backbone = PeftModel.from_pretrained(backbone, str(folder / ADAPTER_DIR), is_trainable=trainable)
            cfg.lora.enabled = True
        elif cfg.lora.enabled:
            backbone = maybe_apply_lora(backbone, cfg.lora)
        model = NVEmbedModel(backbone, pooler)
        return cls(model, build_tokenizer(str(folder)), cfg, meta.get("query_instruction"))

    @classmethod
    def from_model(
        cls,
        backbone: torch.nn.Module,
        tokenizer,
        pooling: PoolingConfig | str = "latent",
        lora: LoraConfig | bool = False,
        seed: int = 0,
        **model_options: Any,
    ) -> Embedder:
        """Build from an already constructed backbone (tests and research code; no hub access needed)."""
        if isinstance(pooling, str):
            pooling = PoolingConfig(kind=pooling)
        if isinstance(lora, bool):
            lora = LoraConfig(enabled=lora)
        model_cfg = ModelConfig(name_or_path=getattr(backbone.config, "_name_or_path", "") or "", **model_options)
        cfg = EmbedderConfig(model=model_cfg, pooling=pooling, lora=lora)
        prepare_backbone(backbone, cfg.model)
        tokenizer.padding_side = "right"
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = assemble(backbone, cfg)
        return cls(model, tokenizer, cfg)

    # ------------------------------------------------------------------------------------------------ state

    def _base_backbone(self) -> torch.nn.Module:
        backbone = self.model.backbone
        return backbone.get_base_model() if is_peft(backbone) else backbone

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dim(self) -> int:
        return self.model.output_dim

    def to(self, device: str | torch.device) -> Embedder:
        self.model.to(device)
        return self

    def merge_lora(self) -> Embedder:
        """Fold the LoRA adapters into the backbone weights (peft ``merge_and_unload``); a no-op without LoRA."""
        if is_peft(self.model.backbone):
            self.model.backbone = self.model.backbone.merge_and_unload()
            self.config.lora.enabled = False
        return self

    # ------------------------------------------------------------------------------------------------ encode

    def tokenize(
        self, texts: Sequence[str], instruction: str | Sequence[str | None] | None = None, max_length: int = 512
    ) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask``, ``pool_mask`` ``[B, L]`` for one batch (:mod:`nvembed.tokenization`)."""
        return self.inputs(texts, instruction, max_length)

    def encode(
        self,
        texts: Sequence[str],
        instruction: str | None = None,
        batch_size: int = 32,
        max_length: int = 512,
        show_progress: bool = True,
    ) -> np.ndarray:
        """Embed texts; returns float32 ``[n, d]`` rows in input order.

        Texts are sorted by length (characters globally, then tokens within a chunk) so batches carry little
        padding; the forward pass runs under ``torch.inference_mode``.

        Args:
            texts: non-empty strings (a single string is treated as a list of one).
            instruction: task description for queries (``Instruct: {instruction}\\nQuery: ``); ``None`` for
                documents and symmetric tasks without instruction.
            batch_size: texts per forward pass.
            max_length: tokens per text, specials included.
            show_progress: tqdm bar over texts.

        Raises:
            TypeError / ValueError: empty input, a non-string item, or an empty string (the message gives its index).
        """
        texts = validate_texts(texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        prefix = self.inputs.format_instruction(instruction)
        return self._encode_prefixed(texts, prefix, batch_size, max_length, show_progress)

    def _encode_prefixed(
        self, texts: list[str], prefix: str, batch_size: int, max_length: int, show_progress: bool
    ) -> np.ndarray:
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)  # [n, d]
        order = np.argsort(np.fromiter((-len(t) for t in texts), dtype=np.int64, count=n), kind="stable")
        chunk = batch_size * 64
        device = self.device
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), tqdm(total=n, desc="encode", unit="text", disable=not show_progress) as bar:
                for c0 in range(0, n, chunk):
                    idx = order[c0 : c0 + chunk]
                    ids, starts = self.inputs.tokenize([texts[i] for i in idx], prefix, max_length)
                    by_len = np.argsort([-len(x) for x in ids], kind="stable")
                    for b0 in range(0, len(by_len), batch_size):
                        sel = by_len[b0 : b0 + batch_size]
                        batch = self.inputs.pad([ids[j] for j in sel], [starts[j] for j in sel])
                        batch = {k: v.to(device) for k, v in batch.items()}
                        emb = self.model(**batch)  # [b, d]
                        out[idx[sel]] = emb.float().cpu().numpy()
                        bar.update(len(sel))
        finally:
            self.model.train(was_training)
        return out

    # ------------------------------------------------------------------------------------------------ saving

    def save_pretrained(self, directory: str | os.PathLike, merge_lora: bool = False) -> Path:
        """Write the model so that both ``Embedder.from_pretrained`` and ``SentenceTransformer`` load it.

        Layout: ``config.json`` + ``model.safetensors`` (backbone), tokenizer files, ``pooler.safetensors``,
        ``adapter/`` (peft, only while LoRA is unmerged and ``merge_lora`` is False), ``nvembed_config.json``,
        and ``modules.json`` + ``config_sentence_transformers.json`` (the query instruction as the ``"query"``
        prompt). The folder is written next to its target and moved into place, so a crash never leaves a
        half-written model under ``directory``.
        """
        target = Path(directory).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            self._write(tmp, merge_lora)
            if target.exists():
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    def _write(self, folder: Path, merge_lora: bool) -> None:
        from safetensors.torch import save_file

        backbone = self.model.backbone
        peft = is_peft(backbone)
        cfg = EmbedderConfig(**{k: dataclasses.replace(v) for k, v in vars(self.config).items()})
        if peft and merge_lora:
            backbone.merge_adapter()
            try:
                state = {k: v.detach().clone() for k, v in base_state_dict(backbone).items()}
            finally:
                backbone.unmerge_adapter()
            cfg.lora.enabled = False
        else:
            state = base_state_dict(backbone)
            cfg.lora.enabled = peft
        base = self._base_backbone()
        base.save_pretrained(str(folder), state_dict=state, safe_serialization=True)
        if peft and not merge_lora:
            backbone.save_pretrained(str(folder / ADAPTER_DIR))
        self.tokenizer.save_pretrained(str(folder))
        pooler_state = {k: v.detach().contiguous() for k, v in self.model.pooler.state_dict().items()}
        if pooler_state:
            save_file(pooler_state, str(folder / POOLER_WEIGHTS))
        meta = {
            "format_version": FORMAT_VERSION,
            "config": to_dict(cfg),
            "is_decoder": self.is_decoder,
            "query_instruction": self.query_instruction,
            "embedding_dim": self.dim,
        }
        (folder / NVEMBED_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
        from nvembed.export import write_sentence_transformers_files

        write_sentence_transformers_files(folder, self)
