"""``tiny:mistral`` (also ``tiny:llama``, ``tiny:qwen2``): a 2-layer, 64-wide random decoder for smoke runs.

Machines without hub access (CI, this project's CPU boxes) still need a *decoder* to exercise the whole NV-Embed
path (bidirectional patch, LoRA, latent pooling, ZeRO-3) from a plain YAML config. The model is built once from a
fixed seed, with a BPE tokenizer (SentencePiece-style ``▁`` pre-tokenisation, BOS/EOS, as Mistral's) trained on the
texts the package ships in ``nvembed/resources/train``, and saved as an ordinary Hugging Face folder under
``$NVEMBED_CACHE`` (default ``~/.cache/nvembed``): after that it loads through the same ``from_pretrained`` code as
a real checkpoint. Its embeddings are meaningless before training; it is a plumbing model, not a baseline.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

KINDS = ("mistral", "llama", "qwen2")
VERSION = 1  # bump when the recipe below changes, so old cached folders are not reused
VOCAB_SIZE = 2000


def cache_root() -> Path:
    return Path(os.environ.get("NVEMBED_CACHE") or Path.home() / ".cache" / "nvembed")


def _training_texts() -> list[str]:
    texts = []
    for item in sorted(resources.files("nvembed.resources").joinpath("train").iterdir(), key=lambda p: p.name):
        if not item.name.endswith(".jsonl"):
            continue
        for line in item.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            for value in row.values():
                if isinstance(value, str):
                    texts.append(value)
                elif isinstance(value, list):
                    texts.extend(v for v in value if isinstance(v, str))
    return texts


def build_tokenizer():
    """BPE over Metaspace, BOS prepended, ``</s>`` as EOS and no pad token (like Mistral's)."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=list(string.printable.strip()),
        show_progress=False,
    )
    tok.train_from_iterator(_training_texts(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def tiny_config(kind: str, vocab_size: int, sliding_window: int | None = None, max_positions: int = 512):
    """2 layers, hidden 64, 4 query / 2 key-value heads: GQA and (optionally) a sliding window, like the real ones."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=1,
        eos_token_id=2,
    )
    if kind == "mistral":
        return MistralConfig(sliding_window=sliding_window, **common)
    if kind == "llama":
        return LlamaConfig(**common)
    if kind == "qwen2":
        window = dict(use_sliding_window=sliding_window is not None, sliding_window=sliding_window, max_window_layers=0)
        return Qwen2Config(**window, **common)
    raise ValueError(f"unknown tiny model kind {kind!r}; choose one of {', '.join(KINDS)}")


def build_model(kind: str, vocab_size: int, seed: int = 0):
    import torch
    from transformers import AutoModel

    torch.manual_seed(seed)
    return AutoModel.from_config(tiny_config(kind, vocab_size))


def tiny_model_path(name: str) -> str:
    """Folder of ``tiny:<kind>``, built on first use. Concurrent callers (two Ray workers of one job) wait on a
    file lock, so exactly one builds; a folder left incomplete by a killed build is replaced (docs/bugs.md)."""
    import fcntl

    kind = name.split(":", 1)[1]
    if kind not in KINDS:
        raise ValueError(f"{name!r}: unknown tiny model; choose one of {', '.join('tiny:' + k for k in KINDS)}")
    target = cache_root() / f"tiny-{kind}-v{VERSION}"
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
            return str(target)  # another process built it while we waited
        shutil.rmtree(target, ignore_errors=True)  # incomplete leftovers
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            tok = build_tokenizer()
            build_model(kind, len(tok)).save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
