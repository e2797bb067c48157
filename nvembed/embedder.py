"""The public API: :class:`Embedder` (``from_pretrained``, ``encode``, ``save_pretrained``).

Features, and what controls each:

* backbone by hub name or local folder (``Embedder.from_pretrained(name_or_path)``), ``dtype``,
  ``attn_implementation``; decoder-only backbones are made bidirectional (``bidirectional=True``);
* pooling: NV-Embed latent attention (``pooling="latent"``, ``num_latents``, ``num_heads``, ``head_dim``), or
  ``"mean"`` / ``"last"`` for ablations;
* LoRA through peft (``lora=True`` or a dict of :class:`nvembed.config.LoraConfig` fields); ``merge_lora()``;
* instructions: ``encode(texts, instruction="...")`` applies ``Instruct: {instruction}\\nQuery: `` and keeps the
  instruction out of the pool (spec §1.3);
* four folder formats are read, in this order: our own (``nvembed_config.json``), a released NV-Embed-v2
  checkpoint (``config.json`` with ``model_type: nvembed``, see :mod:`nvembed.modeling.released`), a
  sentence-transformers folder (``modules.json``: loaded with its own pooling, normalisation, max_seq_length and
  prompts, see :mod:`nvembed.st_folder`), or a plain HF backbone (a fresh pooling head is added, with a warning
  when the caller did not ask for one); a new head replaces a folder's own pooling only when ``pooling=`` is given;
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
from collections.abc import Iterator, Sequence
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
from nvembed.st_folder import MODULES_FILE, SentenceTransformersFolder, read_sentence_transformers_folder
from nvembed.tokenization import InputBuilder

logger = logging.getLogger(__name__)

NVEMBED_CONFIG = "nvembed_config.json"
POOLER_WEIGHTS = "pooler.safetensors"
ADAPTER_DIR = "adapter"
FORMAT_VERSION = 1

_MODEL_KEYS = {f.name for f in dataclasses.fields(ModelConfig)} - {"name_or_path"}
_POOLING_KEYS = {f.name for f in dataclasses.fields(PoolingConfig)} - {"kind"}
# Options that only make sense for a new head: giving one means "replace the folder's pooling".
_HEAD_KEYS = _POOLING_KEYS - {"normalize"}
# Weights too large to fetch for an embedding folder probed on the hub (ST repos ship ONNX/OpenVINO copies).
_HUB_IGNORE = ["onnx/*", "openvino/*", "*.onnx", "*.h5", "*.msgpack", "*.ot", "*.tflite", "rust_model.ot"]


def _asks_for_pooling(options: dict[str, Any]) -> bool:
    """The caller chose the pooling (``pooling=`` or a latent-head field such as ``num_latents``)."""
    return "pooling" in options or bool(_HEAD_KEYS & options.keys())


def _folder_of(path: str) -> Path | None:
    """``path`` as a local folder; a hub repo that is an nvembed export or a sentence-transformers model is
    downloaded first, so the folder formats are recognised for hub names too. ``None``: a plain hub backbone
    (or the hub cannot be reached), which transformers loads by name as before."""
    local = Path(path)
    if local.is_dir():
        return local
    if local.exists() or path.count("/") > 1 or path.startswith((".", "~")):
        return None
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    for marker in (NVEMBED_CONFIG, MODULES_FILE):
        try:
            hf_hub_download(path, marker)
        except Exception:  # noqa: BLE001 - a probe: no such repo/file, offline, no network all mean "no"
            continue
        return Path(snapshot_download(path, ignore_patterns=_HUB_IGNORE))
    return None


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
            valid = sorted(
                _MODEL_KEYS | _POOLING_KEYS | {"pooling", "lora", "seed", "device", "query_instruction", "trainable"}
            )
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
        prompts: sentence-transformers prompts by name (raw prefixes such as ``"query: "``), from a
            sentence-transformers folder; ``encode(prompt_name=...)`` applies one. Unlike ``instruction`` (templated,
            never pooled) a prompt is prepended as is and pooled when ``pool_prompts`` (ST's ``include_prompt``).
        default_prompt_name: the prompt ``encode`` applies when given neither instruction nor prompt (as ST does).
        pool_prompts: for a model that came from a sentence-transformers folder, whether prompt tokens enter the
            pool (ST's ``Pooling.include_prompt``, True by default there); ``None`` (nvembed's own models): a prompt
            is a prefix like an instruction and is kept out of the pool.
        base_model: the backbone this embedder started from (hub name or packaged name), kept across saves for the
            model card.
        card: training/evaluation metadata for the model card (:class:`nvembed.model_card.ModelCard`), kept
            across saves.
    """

    def __init__(
        self,
        model: NVEmbedModel,
        tokenizer,
        config: EmbedderConfig,
        query_instruction: str | None = None,
        *,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        pool_prompts: bool | None = None,
        base_model: str | None = None,
        card: Any = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.query_instruction = query_instruction
        self.prompts = dict(prompts or {})
        if default_prompt_name is not None and default_prompt_name not in self.prompts:
            raise ValueError(f"default_prompt_name {default_prompt_name!r} is not one of {sorted(self.prompts)}")
        self.default_prompt_name = default_prompt_name
        self.pool_prompts = pool_prompts
        self.base_model = base_model if base_model is not None else (config.model.name_or_path or None)
        self.card = card
        self.is_decoder = is_decoder_only(self._base_backbone().config)
        self.inputs = InputBuilder(tokenizer, self.is_decoder, config.model.instruction_template)

    # ------------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **options: Any) -> Embedder:
        """Load an embedder as the folder defines it; a new pooling head only when asked for (``pooling=``).

        What is read, in this order:

        1. an nvembed export (``nvembed_config.json``; our exports also carry ``modules.json``): its saved head;
        2. a released NV-Embed-v2 checkpoint (``config.json`` with ``model_type: nvembed``);
        3. a sentence-transformers folder (``modules.json``): its own pooling (mean / cls / lasttoken),
           normalisation (a ``Normalize`` module or not), ``max_seq_length`` (the default ``max_length`` of
           ``encode``), prompts, and the backbone's own causal/bidirectional attention, so ``encode`` reproduces
           ``SentenceTransformer(folder).encode``. A pipeline nvembed cannot reproduce (Dense layers, max
           pooling, ...) raises ``ValueError``. ``pooling=...`` replaces the folder's pooling and normalisation
           with an nvembed head (nvembed's defaults + the given options, decoders made bidirectional);
        4. a plain transformers backbone: a new head (``pooling``, default ``"latent"``, seeded by ``seed``); when
           ``pooling`` was not given, a warning says that a freshly initialised head was added.

        Hub names are probed for formats 1 and 3 (``nvembed_config.json`` / ``modules.json``) and downloaded when
        they have one; otherwise transformers loads them by name.

        Args:
            name_or_path: hub name, local folder, ``packaged:all-MiniLM-L6-v2`` or ``tiny:<kind>``.
            **options: :class:`ModelConfig` fields (``dtype``, ``attn_implementation``, ``bidirectional``,
                ``max_length``, ``instruction_template``, ``gradient_checkpointing``), ``pooling`` (``"latent"``,
                ``"mean"``, ``"last"``, ``"cls"`` or a dict), pooling fields (``num_latents``, ``num_heads``,
                ``head_dim``, ``ff_mult``, ``normalize``, ``zero_init_residual``), ``lora`` (bool or dict),
                ``seed``, ``device``, ``query_instruction``, and ``trainable`` (load a saved adapter as trainable).

        Raises:
            TypeError: an unknown option.
            ValueError: a sentence-transformers pipeline nvembed cannot reproduce (without ``pooling=``), or pooling
                options that contradict a saved head.
        """
        given = str(name_or_path)
        path = resolve_model_path(given)
        seed = options.pop("seed", 0)
        device = options.pop("device", None)
        trainable = options.pop("trainable", False)
        query_instruction = options.pop("query_instruction", None)
        local = _folder_of(path)
        if local is not None and (local / NVEMBED_CONFIG).is_file():
            emb = cls._load_saved(local, options, trainable)
        elif (
            local is not None
            and (local / "config.json").is_file()
            and json.loads((local / "config.json").read_text()).get("model_type") == "nvembed"
        ):
            from nvembed.modeling.released import load_released_nvembed

            cfg = _config_from_options(path, options, None)
            model, tokenizer, cfg = load_released_nvembed(local, cfg)
            emb = cls(model, tokenizer, cfg, base_model=given)
        elif local is not None and (local / MODULES_FILE).is_file():
            st = read_sentence_transformers_folder(local)
            emb = cls._load_sentence_transformers(st, options, seed, given)
        else:
            if not _asks_for_pooling(options):
                logger.warning(
                    "%s has no pooling of its own (no nvembed_config.json or modules.json) and no pooling was "
                    "given: using nvembed's default %r pooling; pass pooling=... to choose",
                    path,
                    PoolingConfig().kind,
                )
            emb = cls.from_config(_config_from_options(path, options, None), seed=seed)
            emb.base_model = given
        if query_instruction is not None:
            emb.query_instruction = query_instruction
        if device is not None:
            emb.to(device)
        return emb

    @classmethod
    def _load_sentence_transformers(
        cls, st: SentenceTransformersFolder, options: dict[str, Any], seed: int, given: str
    ) -> Embedder:
        """Rebuild a sentence-transformers pipeline (or replace its pooling when the caller asks)."""
        explicit = _asks_for_pooling(options)
        model = ModelConfig(name_or_path=str(st.backbone_path))
        if st.max_seq_length is not None:
            model.max_length = max(st.max_seq_length, 4)
        if explicit:
            logger.info(
                "%s: pooling=%r given, so its own sentence-transformers pooling (%s) is not used",
                st.folder,
                options.get("pooling", "latent"),
                st.describe(),
            )
            pooling = PoolingConfig()
        else:
            if st.problems:
                raise ValueError(
                    f"{st.folder}: its sentence-transformers pipeline cannot be reproduced by nvembed: "
                    f"{'; '.join(st.problems)}. Load it with sentence_transformers.SentenceTransformer, or pass "
                    f"pooling=... to replace its pooling with an nvembed head"
                )
            # ST runs the backbone as transformers builds it: a decoder stays causal unless the caller says so.
            model.bidirectional = False
            pooling = PoolingConfig(kind=st.pooling or "mean", normalize=st.normalize)
            logger.info("%s: sentence-transformers model, loaded with its own %s", st.folder, st.describe())
        cfg = _config_from_options(str(st.backbone_path), options, EmbedderConfig(model=model, pooling=pooling))
        emb = cls.from_config(cfg, seed=seed)
        emb.base_model = given
        if emb.is_decoder and not explicit:
            from nvembed.tokenization import _split_specials

            if _split_specials(emb.tokenizer)[1] != emb.inputs.suffix_ids:
                logger.warning(
                    "%s: its tokenizer does not end texts with EOS, but nvembed appends EOS for decoders: "
                    "vectors will differ from SentenceTransformer(folder).encode",
                    st.folder,
                )
        emb.prompts = dict(st.prompts)
        emb.pool_prompts = st.include_prompt
        if not explicit and st.default_prompt_name:
            emb.default_prompt_name = st.default_prompt_name
            logger.info(
                "%s: encode applies its default prompt %r (%r) when given no instruction or prompt",
                st.folder,
                st.default_prompt_name,
                st.prompts[st.default_prompt_name],
            )
        return emb

    @classmethod
    def from_config(cls, cfg: EmbedderConfig, seed: int = 0) -> Embedder:
        """Backbone from ``cfg.model.name_or_path`` + a fresh pooling head (seeded) + LoRA per ``cfg.lora``."""
        if cfg.pooling.kind == "latent":
            logger.info(
                "adding a freshly initialised latent-attention head to %s (seed %d)", cfg.model.name_or_path, seed
            )
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
        weights = str(folder)
        if not (folder / "config.json").is_file():  # an adapter export (save_pretrained(base_weights=False))
            weights = meta.get("base_model")
            if not weights:
                raise ValueError(f"{folder}: no backbone weights and no base_model to load them from")
            logger.info("%s holds adapter + head; loading its base weights from %s", folder, weights)
        backbone = build_backbone(cfg.model, weights)
        pooler = build_pooler(cfg.pooling, backbone.config.hidden_size)
        param = next(backbone.parameters())
        pooler_dtype = param.dtype
        if (folder / POOLER_WEIGHTS).is_file():
            from safetensors.torch import load_file

            pooler_state = load_file(str(folder / POOLER_WEIGHTS))
            pooler.load_state_dict(pooler_state)
            pooler_dtype = next(iter(pooler_state.values())).dtype  # as trained (fp32 over a bf16 base)
        pooler.to(device=param.device, dtype=pooler_dtype)
        if has_adapter:
            from peft import PeftModel

            backbone = PeftModel.from_pretrained(backbone, str(folder / ADAPTER_DIR), is_trainable=trainable)
            cfg.lora.enabled = True
        elif cfg.lora.enabled:
            backbone = maybe_apply_lora(backbone, cfg.lora)
        model = NVEmbedModel(backbone, pooler)
        card = None
        if meta.get("card"):
            from nvembed.model_card import ModelCard

            card = ModelCard.from_dict(meta["card"])
        return cls(
            model,
            build_tokenizer(str(folder)),
            cfg,
            meta.get("query_instruction"),
            prompts=meta.get("prompts"),
            default_prompt_name=meta.get("default_prompt_name"),
            pool_prompts=meta.get("pool_prompts"),
            base_model=meta.get("base_model") or saved.model.name_or_path or None,
            card=card,
        )

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
        self,
        texts: Sequence[str],
        instruction: str | Sequence[str | None] | None = None,
        max_length: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask``, ``pool_mask`` ``[B, L]`` for one batch (:mod:`nvembed.tokenization`).

        ``max_length`` defaults to ``config.model.max_length`` (a sentence-transformers folder's max_seq_length).
        """
        return self.inputs(texts, instruction, max_length or self.config.model.max_length)

    def resolve_prompt(self, prompt_name: str | None = None, prompt: str | None = None) -> str | None:
        """The raw prompt ``encode`` would prepend: ``prompt``, ``prompts[prompt_name]``, or the default prompt."""
        if prompt_name is not None and prompt is not None:
            raise ValueError("give prompt_name or prompt, not both")
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                known = ", ".join(sorted(self.prompts)) or "none"
                raise ValueError(f"unknown prompt_name {prompt_name!r} (this model's prompts: {known})")
            return self.prompts[prompt_name]
        if prompt is not None:
            return prompt
        return self.prompts[self.default_prompt_name] if self.default_prompt_name else None

    def encode(
        self,
        texts: Sequence[str],
        instruction: str | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        show_progress: bool = True,
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_tokens: int | None = None,
        dimensions: int | None = None,
    ) -> np.ndarray:
        """Embed texts; returns float32 ``[n, d]`` rows in input order (``[n, dimensions]`` when truncated).

        Texts are sorted by length (characters globally, then tokens within a chunk) so batches carry little
        padding; the forward pass runs under ``torch.no_grad``.

        Args:
            texts: non-empty strings (a single string is treated as a list of one).
            instruction: task description for queries (``Instruct: {instruction}\\nQuery: ``, kept out of the pool);
                ``None`` for documents and symmetric tasks without instruction.
            batch_size: texts per forward pass.
            max_length: tokens per text, specials included; default ``config.model.max_length`` (512, or the
                ``max_seq_length`` of the sentence-transformers folder the model came from).
            show_progress: tqdm bar over texts.
            prompt_name: a sentence-transformers prompt of this model (``self.prompts``), prepended as is like
                ``SentenceTransformer.encode(prompt_name=...)`` does; pooled when ``pool_prompts``.
            prompt: a raw prompt string, as ST's ``prompt=``. Without instruction, prompt_name and prompt, the
                folder's ``default_prompt_name`` applies (none for most models).
            batch_tokens: padded tokens per forward pass instead of a fixed count: batches of short texts grow
                (up to ``batch_tokens // shortest``), batches of long ones shrink; ``batch_size`` then only sets the
                tokenisation chunk. What a GPU wants: its memory is bounded by tokens, not by texts.
            dimensions: keep the first ``dimensions`` components, renormalised to unit length (Matryoshka-style
                truncation, :func:`nvembed.compression.truncate`); ``None`` keeps the full width.

        Raises:
            TypeError / ValueError: empty input, a non-string item, or an empty string (the message gives its index);
                an instruction together with a prompt; an unknown ``prompt_name``.
        """
        texts = validate_texts(texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        max_length = max_length or self.config.model.max_length
        if batch_tokens is not None and batch_tokens < 1:
            raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
        if instruction is not None and (prompt_name is not None or prompt is not None):
            raise ValueError("give an instruction (nvembed template) or a prompt (raw prefix), not both")
        if dimensions is not None and not 1 <= dimensions <= self.dim:
            raise ValueError(f"dimensions must be in 1..{self.dim} (the embedding width), got {dimensions}")
        prefix = self.inputs.format_instruction(instruction)
        if instruction is None:
            raw = self.resolve_prompt(prompt_name, prompt)
            if raw:
                if self.pool_prompts:  # ST's include_prompt: the prompt is part of the text
                    texts, raw = [raw + t for t in texts], ""
                prefix = raw
        out = self._encode_prefixed(texts, prefix, batch_size, max_length, show_progress, batch_tokens)  # [n, d]
        if dimensions is None:
            return out
        from nvembed.compression import truncate

        return truncate(out, dimensions)  # [n, dimensions]

    @staticmethod
    def _batches(lengths: list[int], batch_size: int, batch_tokens: int | None) -> Iterator[np.ndarray]:
        """Positions into ``lengths`` (tokens per text), longest first, cut by count or by padded tokens."""
        by_len = np.argsort([-n for n in lengths], kind="stable")
        if batch_tokens is None:
            for b0 in range(0, len(by_len), batch_size):
                yield by_len[b0 : b0 + batch_size]
            return
        b0 = 0
        while b0 < len(by_len):
            longest = max(1, lengths[by_len[b0]])  # sorted: the first text of a batch is its longest
            b1 = min(len(by_len), b0 + max(1, batch_tokens // longest))
            yield by_len[b0:b1]
            b0 = b1

    def _encode_prefixed(
        self,
        texts: list[str],
        prefix: str,
        batch_size: int,
        max_length: int,
        show_progress: bool,
        batch_tokens: int | None = None,
    ) -> np.ndarray:
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)  # [n, d]
        order = np.argsort(np.fromiter((-len(t) for t in texts), dtype=np.int64, count=n), kind="stable")
        chunk = max(batch_size, (batch_tokens or 0) // 16) * 64  # texts tokenised at once
        device = self.device
        was_training = self.model.training
        self.model.eval()
        try:
            # no_grad, not inference_mode: ZeRO-3's parameter hooks reject inference tensors (dev metrics in training)
            with torch.no_grad(), tqdm(total=n, desc="encode", unit="text", disable=not show_progress) as bar:
                for c0 in range(0, n, chunk):
                    idx = order[c0 : c0 + chunk]
                    ids, starts = self.inputs.tokenize([texts[i] for i in idx], prefix, max_length)
                    for sel in self._batches([len(x) for x in ids], batch_size, batch_tokens):
                        batch = self.inputs.pad([ids[j] for j in sel], [starts[j] for j in sel])
                        batch = {k: v.to(device) for k, v in batch.items()}
                        emb = self.model(**batch)  # [b, d]
                        out[idx[sel]] = emb.float().cpu().numpy()
                        bar.update(len(sel))
        finally:
            self.model.train(was_training)
        return out

    # ------------------------------------------------------------------------------------------------ saving

    def save_pretrained(
        self, directory: str | os.PathLike, merge_lora: bool = False, card: Any = None, *, base_weights: bool = True
    ) -> Path:
        """Write the model so that both ``Embedder.from_pretrained`` and ``SentenceTransformer`` load it.

        Layout: ``config.json`` + ``model.safetensors`` (backbone), tokenizer files, ``pooler.safetensors``,
        ``adapter/`` (peft, only while LoRA is unmerged and ``merge_lora`` is False), ``nvembed_config.json``,
        ``modules.json`` + ``config_sentence_transformers.json`` (the query instruction as the ``"query"``
        prompt) + ``sentence_bert_config.json``, and ``README.md``, the model card. The folder is written next to
        its target and moved into place, so a crash never leaves a half-written model under ``directory``.

        Args:
            directory: the export folder (replaced whole if it exists).
            merge_lora: fold LoRA into the saved backbone weights (no ``adapter/``).
            card: what the model card says beyond what the model itself knows (training stages, data and
                licences, evaluation scores): a :class:`nvembed.model_card.ModelCard` or a dict of its fields;
                default ``self.card`` (what the loaded folder carried). Stored in ``nvembed_config.json`` too, so
                re-saving keeps it.
            base_weights: False writes an adapter export: adapter + head, no backbone weights; loading it reads
                the base from ``base_model`` (ZeRO-3 exports: the frozen base is never gathered). Needs LoRA.
        """
        target = Path(directory).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            self._write(tmp, merge_lora, card=card, name=target.name, base_weights=base_weights)
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

    def _write(
        self, folder: Path, merge_lora: bool, card: Any = None, name: str | None = None, base_weights: bool = True
    ) -> None:
        from safetensors.torch import save_file

        from nvembed.export import build_model_card, write_model_card, write_sentence_transformers_files
        from nvembed.model_card import as_model_card

        backbone = self.model.backbone
        peft = is_peft(backbone)
        cfg = EmbedderConfig(**{k: dataclasses.replace(v) for k, v in vars(self.config).items()})
        if not base_weights and (not peft or merge_lora):
            raise ValueError("base_weights=False writes adapter + head only: it needs unmerged LoRA")
        if peft and merge_lora:
            backbone.merge_adapter()
            try:
                state = {k: v.detach().clone() for k, v in base_state_dict(backbone).items()}
            finally:
                backbone.unmerge_adapter()
            cfg.lora.enabled = False
        else:
            state = base_state_dict(backbone) if base_weights else None
            cfg.lora.enabled = peft
        if state is not None:
            self._base_backbone().save_pretrained(str(folder), state_dict=state, safe_serialization=True)
        if peft and not merge_lora:
            backbone.save_pretrained(str(folder / ADAPTER_DIR))
        self.tokenizer.save_pretrained(str(folder))
        pooler_state = {k: v.detach().contiguous() for k, v in self.model.pooler.state_dict().items()}
        if pooler_state:
            save_file(pooler_state, str(folder / POOLER_WEIGHTS))
        given_card = as_model_card(card if card is not None else self.card)
        model_card = build_model_card(self, given_card, cfg, name or folder.name)
        meta = {
            "format_version": FORMAT_VERSION,
            "config": to_dict(cfg),
            "is_decoder": self.is_decoder,
            "query_instruction": self.query_instruction,
            "embedding_dim": self.dim,
            # additions of 2026-12-01 (older readers ignore them): ST prompts, where the model started, the card
            "prompts": self.prompts,
            "default_prompt_name": self.default_prompt_name,
            "pool_prompts": self.pool_prompts,
            "base_model": self.base_model,
            "card": given_card.to_dict() if given_card is not None else None,  # what the caller said, not derived
        }
        (folder / NVEMBED_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
        write_sentence_transformers_files(folder, self)
        write_model_card(folder, model_card)
