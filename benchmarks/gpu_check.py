"""GPU check of the shipped 7B recipe, in its own shape, on one GPU in under 5 minutes (never needed by tests).

A ~1B Mistral-shaped random model (hidden 2048, 16 layers, GQA 16/8 heads, vocabulary 32k; no download) goes through
``nvembed train jobs/configs/nvembed_v2_mistral7b.yaml`` with that config's own settings: bf16 base, LoRA r16 on all
linear layers, the full-size latent head (512 latents, 8 heads of head_dim 4096), bidirectional SDPA, gradient
checkpointing; GradCache on (``chunk_size``), dev evaluation, both stages, once with ``scaling.engine=ddp`` and once
with ``deepspeed`` (ZeRO-3), then the final models are reloaded and compared with their training-time embeddings.

    python benchmarks/gpu_check.py [--steps 6] [--batch 32] [--seq 256] [--chunk 16] [--out runs/gpu_check]

Printed per engine and stage: median tokens/s, MFU and peak GPU memory (``max_memory_gb`` of metrics.jsonl).
MFU counts, per token, 2 N_base FLOPs for each pass over the frozen base (GradCache's no-grad pass, the forward with
grad, the recompute of gradient checkpointing and the backward to the inputs: 8 N_base) plus the head's per-token
matmuls (to_q, the cross-attention over the latents, to_out, the GEGLU feed-forward) x 6 (forward + backward of a
trained layer) x 4/3 for GradCache's extra forward; the head's ``to_kv`` acts on the latents only, once per
micro-batch, so it is not a per-token cost and is left out. Attention over the sequence is added per token.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "jobs/configs/nvembed_v2_mistral7b.yaml"
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB = 2048, 16, 16, 8, 8192, 32000


def build_model(folder: Path) -> int:
    """A random Mistral-shaped backbone in bf16 + the tiny tokenizer (its ids fit the vocabulary); returns N_base."""
    import torch
    from transformers import AutoModel, MistralConfig

    from nvembed.modeling.tiny import build_tokenizer

    if not (folder / "config.json").is_file():
        cfg = MistralConfig(
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=KV_HEADS,
            intermediate_size=FFN,
            vocab_size=VOCAB,
            max_position_embeddings=4096,
            sliding_window=None,
        )
        torch.manual_seed(0)
        AutoModel.from_config(cfg, dtype=torch.bfloat16).save_pretrained(str(folder))
        build_tokenizer().save_pretrained(str(folder))
    attn = HIDDEN * HIDDEN * 2 + HIDDEN * (HIDDEN // HEADS * KV_HEADS) * 2
    return LAYERS * (attn + 3 * HIDDEN * FFN)  # matmul parameters (embeddings are a lookup)


def flops_per_token(n_base: int, seq: int, latents: int = 512, heads: int = 8, head_dim: int = 4096) -> float:
    inner = heads * head_dim
    head = 2 * (HIDDEN * inner + 2 * latents * inner + inner * HIDDEN + HIDDEN * 4 * HIDDEN * 2 + 4 * HIDDEN * HIDDEN)
    attention = 2 * 2 * LAYERS * seq * HIDDEN  # QK^T and AV, bidirectional: every position attends to all
    return 8 * n_base + 4 * attention + head * 6 * 4 / 3


def train(engine: str, model: Path, out: Path, args) -> float:
    data = "nvembed/resources/train"
    small = f"{{name: snli, format: triplets, path: {data}/snli_triplets.jsonl, max_rows: 2000}}"
    sts = f"{{name: stsbenchmark, format: sts, path: {data}/stsb_train.jsonl, max_rows: 2000, mine_negatives: true}}"
    sets = [
        f"model.name_or_path={model}",
        f"scaling.engine={engine}",
        "scaling.num_workers=1",
        "scaling.cpus_per_worker=8",
        "scaling.max_failures=0",
        f"output_dir={out}",
        f"scaling.storage_path={out}/ray",
        f"stage1.data.datasets=[{small}]",
        f"stage2.data.datasets=[{small}, {sts}]",
        f"dev={{every: {args.steps}, sts: nvembed/resources/dev/stsbenchmark/dev.jsonl, max_sts_pairs: 200,"
        f" max_length: {args.seq}, batch_size: 64}}",
    ]
    for n in (1, 2):
        sets += [
            f"stage{n}.data.mining.teacher={model}",
            f"stage{n}.data.mining.index=flat",
            f"stage{n}.data.mining.max_length={args.seq}",
            f"stage{n}.run.max_steps={args.steps}",
            f"stage{n}.run.batch_size={args.batch}",
            f"stage{n}.run.chunk_size={args.chunk}",
            f"stage{n}.run.checkpoint_every={args.steps}",
            f"stage{n}.run.query_max_length={args.seq}",
            f"stage{n}.run.doc_max_length={args.seq}",
            f"stage{n}.optim.warmup_steps=1",
        ]
    cmd = [sys.executable, "-m", "nvembed", "train", CONFIG, *(a for s in sets for a in ("--set", s))]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - t0


def summary(out: Path, stage: int, fpt: float, peak_tflops: float) -> dict[str, float]:
    rows = [json.loads(x) for x in (out / f"stage{stage}" / "metrics.jsonl").read_text().splitlines()]
    steady = rows[1:] or rows
    tps = statistics.median(r["tokens_per_s"] for r in steady)
    return {
        "tokens/s": tps,
        "MFU %": 100 * tps * fpt / (peak_tflops * 1e12),
        "peak GB": max(r.get("max_memory_gb", float("nan")) for r in rows),
        "loss": rows[-1]["loss"],
    }


def check_reload(out: Path, stage: int) -> float:
    import numpy as np

    from nvembed import Embedder
    from nvembed.training.driver import PROBE, PROBE_FILE

    emb = Embedder.from_pretrained(out / f"stage{stage}" / "final", device="cuda")
    got = emb.encode(PROBE, show_progress=False)
    return float(np.abs(got - np.load(out / f"stage{stage}" / PROBE_FILE)).max())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32, help="queries per step (x 8 documents)")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=16, help="GradCache chunk rows")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100/H200 SXM: 989)")
    parser.add_argument("--out", default="runs/gpu_check")
    args = parser.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    n_base = build_model(out / "model")
    fpt = flops_per_token(n_base, args.seq)
    print(f"base: {n_base / 1e9:.2f}B matmul parameters, {fpt / 1e9:.1f} GFLOP per token counted")
    lines = ["| engine | stage | wall s | tokens/s | MFU % | peak GB | last loss | reload max abs |", "|---" * 8 + "|"]
    for engine in ("ddp", "deepspeed"):
        wall = train(engine, out / "model", out / engine, args)
        for stage in (1, 2):
            s = summary(out / engine, stage, fpt, args.peak_tflops)
            diff = check_reload(out / engine, stage)
            lines.append(
                f"| {engine} | {stage} | {wall:.0f} | {s['tokens/s']:.0f} | {s['MFU %']:.1f} | {s['peak GB']:.1f} "
                f"| {s['loss']:.4f} | {diff:.2e} |"
            )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
