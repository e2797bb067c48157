"""``nvembed compress MODEL --out DIR``: composable weight-compression steps on a trained embedder (issue 16).

Steps, in this order when several are given: merge LoRA (always, when the model has adapters), prune
(:mod:`nvembed.pruning`), quantize weights (:mod:`nvembed.weight_quant`). Everything that can be checked is
checked before the first step changes a weight: the method and pattern, the model family, that N:M and int4 groups
divide every layer's width, and the number of calibration texts. Each step is recorded, with what it measured, in
the export's model card and ``nvembed_config.json`` (``card.compression``).

Embedding-level compression (truncation, int8/binary vectors) is :mod:`nvembed.compression`: it changes how an
export is served, not its weights. Recovery is a training stage: ``run.init_from=<compressed export>`` with
``loss.distill_from=<uncompressed export>`` (docs/compression.md); a pruned export's zeros stay zero there.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from nvembed.pruning import METHODS, MIN_CALIBRATION_TEXTS, Sparsity, check_prunable, prune
from nvembed.weight_quant import SCHEMES, check_quantizable, quantize_backbone

logger = logging.getLogger(__name__)
TEXT_FIELDS = ("text", "query", "positive", "sentence1", "sentence2", "title")


def read_calibration_texts(path: str | Path, limit: int, seed: int = 0) -> list[str]:
    """Up to ``limit`` distinct texts, sampled with ``seed``, from a JSONL file (any string field of
    :data:`TEXT_FIELDS`), a plain text file (one per line) or a BEIR folder (its ``corpus.jsonl`` and
    ``queries.jsonl``)."""
    path = Path(path)
    files = [path / "corpus.jsonl", path / "queries.jsonl"] if path.is_dir() else [path]
    texts: list[str] = []
    for file in files:
        if not file.is_file():
            if path.is_dir() and file.name == "queries.jsonl":
                continue
            raise FileNotFoundError(f"calibration data: {file} does not exist")
        with open(file, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                if file.suffix != ".jsonl":
                    texts.append(line)
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{file}:{lineno}: invalid JSON ({exc.msg})") from None
                texts += [row[k] for k in TEXT_FIELDS if isinstance(row.get(k), str) and row[k].strip()]
    texts = list(dict.fromkeys(texts))
    random.Random(seed).shuffle(texts)
    return texts[:limit]


def check_plan(
    embedder,
    *,
    prune_method: str | None,
    sparsity: str | None,
    quantize: str | None,
    group_size: int | None,
    calibration: list[str],
) -> Sparsity | None:
    """Every check that can fail, before any weight changes; returns the parsed sparsity (``None``: no pruning)."""
    if not prune_method and not quantize:
        raise ValueError("nothing to do: give a pruning method (--prune) and/or a weight quantization (--quantize)")
    backbone = embedder._base_backbone()
    parsed = None
    if prune_method:
        if prune_method not in METHODS:
            raise ValueError(f"unknown pruning method {prune_method!r}; one of {', '.join(METHODS)}")
        if sparsity is None:
            raise ValueError("--prune needs --sparsity (a fraction such as 0.5, or N:M such as 2:4)")
        parsed = Sparsity.parse(sparsity)
        check_prunable_merged(backbone, parsed, prune_method)
        if prune_method != "magnitude" and len(calibration) < MIN_CALIBRATION_TEXTS:
            raise ValueError(
                f"{prune_method} needs at least {MIN_CALIBRATION_TEXTS} calibration texts (--calibration), got "
                f"{len(calibration)}"
            )
    if quantize:
        if quantize not in SCHEMES:
            raise ValueError(f"unknown weight quantization {quantize!r}; one of {', '.join(SCHEMES)}")
        check_quantizable(backbone, quantize, group_size)
    return parsed


def check_prunable_merged(backbone, sparsity: Sparsity, method: str) -> None:
    """:func:`check_prunable` on the model as it will be pruned: a peft model's base, its adapters merged later."""
    from nvembed.modeling.lora import is_peft

    check_prunable(backbone.get_base_model() if is_peft(backbone) else backbone, sparsity, method)


def merge_checked(embedder, probe: list[str]) -> dict[str, Any] | None:
    """Merge LoRA into the weights and prove the merge took: the merged model must encode like the adapter model,
    and unlike the base without adapters (when the adapters change anything). The trap this guards: an export
    that writes the base weights and calls them merged."""
    from nvembed.modeling.lora import is_peft

    backbone = embedder.model.backbone
    if not is_peft(backbone):
        return None
    with_adapter = embedder.encode(probe, show_progress=False)
    with backbone.disable_adapter():
        without = embedder.encode(probe, show_progress=False)
    embedder.merge_lora()
    merged = embedder.encode(probe, show_progress=False)
    to_adapter = float(np.abs(merged - with_adapter).max())
    adapter_effect = float(np.abs(with_adapter - without).max())
    if to_adapter > 1e-3 + 0.1 * adapter_effect:
        raise RuntimeError(
            f"merging LoRA changed the embeddings by {to_adapter:.2e} (adapter effect {adapter_effect:.2e})"
        )
    return {"step": "merge_lora", "adapter_effect": round(adapter_effect, 6), "merged_vs_adapter": round(to_adapter, 8)}


def compress_embedder(
    embedder,
    *,
    prune_method: str | None = None,
    sparsity: str | None = None,
    quantize: str | None = None,
    group_size: int | None = None,
    calibration: list[str] = (),
    calibration_max_length: int = 128,
) -> list[dict[str, Any]]:
    """Apply the steps in place; returns their records (what the model card lists)."""
    calibration = list(calibration)
    parsed = check_plan(
        embedder,
        prune_method=prune_method,
        sparsity=sparsity,
        quantize=quantize,
        group_size=group_size,
        calibration=calibration,
    )
    steps: list[dict[str, Any]] = []
    probe = calibration[:4] or ["a probe sentence", "another one"]
    merged = merge_checked(embedder, probe)
    if merged:
        steps.append(merged)
    backbone = embedder._base_backbone()
    if prune_method:

        def run_calibration() -> int:
            # one text per forward: no padding token enters a statistic
            embedder.encode(calibration, batch_size=1, max_length=calibration_max_length, show_progress=False)
            return len(calibration)

        report = prune(
            backbone,
            method=prune_method,
            sparsity=parsed,
            run_calibration=run_calibration,
            calibration_texts=calibration if prune_method != "magnitude" else (),
        )
        record = {"step": "prune", **asdict(report), "achieved": round(report.achieved, 4)}
        if prune_method == "magnitude":  # no calibration
            del record["calibration_texts"], record["calibration_tokens"]
        steps.append(record)
        logger.info(
            "pruned %s %s: %.1f%% of %d weights",
            prune_method,
            parsed.label,
            100 * report.achieved,
            report.total_weights,
        )
    if quantize:
        report = quantize_backbone(backbone, quantize, group_size)
        steps.append({"step": "quantize", **asdict(report), "packed_ratio": round(report.ratio, 4)})
        logger.info("quantized %d layers to %s (packed %.1f%% of float)", report.layers, quantize, 100 * report.ratio)
    return steps


def compress_model(
    model: str,
    out: str | Path,
    *,
    calibration_path: str | Path | None = None,
    calibration_texts: int = 128,
    seed: int = 0,
    **steps: Any,
) -> Path:
    """Load ``model`` (as it was saved), compress it, save to ``out`` with the steps in its card."""
    from nvembed import Embedder
    from nvembed.model_card import ModelCard, as_model_card

    texts = read_calibration_texts(calibration_path, calibration_texts, seed) if calibration_path else []
    embedder = Embedder.from_pretrained(model)
    records = compress_embedder(embedder, calibration=texts, **steps)
    card = as_model_card(embedder.card) or ModelCard()
    card.compression = [*card.compression, *records]
    return embedder.save_pretrained(out, card=card)
