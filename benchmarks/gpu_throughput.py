"""GPU training throughput: tokens/s and MFU of one training step on a ~1B-parameter Mistral-shaped model.

Random weights (no download), bf16, LoRA r16 on all linear layers, latent-attention head (512 latents, 8 heads of
the hidden size), bidirectional SDPA attention, GradCache; batch 128 queries x (1 + 7) documents at 512 tokens
would not fit one GPU at once, so it is embedded in GradCache chunks. Needs CUDA; never part of the tests.

    python benchmarks/gpu_throughput.py [--steps 6] [--chunk 32] [--batch 64] [--seq 512]

MFU = achieved FLOP/s / peak bf16 FLOP/s (``--peak-tflops``, 989 for an H100/H200 SXM dense). Training FLOPs are
estimated as 6 x trainable-path parameters x tokens for the forward+backward, plus one extra forward (2 x N x T)
for GradCache's no-grad pass; LoRA's frozen base still costs its forward and backward-to-input (4 x N x T), so we
count 8 x N_base x T + 6 x N_head x T. Attention FLOPs are added from the sequence length.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    import torch
    from transformers import AutoModel, MistralConfig

    from nvembed.data.collate import ContrastiveBatch
    from nvembed.modeling.bidirectional import make_bidirectional
    from nvembed.modeling.embedder import NVEmbedModel
    from nvembed.modeling.latent_attention import LatentAttentionPooling
    from nvembed.modeling.lora import apply_lora
    from nvembed.training.engine import TorchEngine
    from nvembed.training.optim import build_optimizer, linear_warmup_decay

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64, help="queries per step")
    parser.add_argument("--negatives", type=int, default=7)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_throughput.py needs a CUDA device")
    dev = torch.device("cuda")
    cfg = MistralConfig(
        hidden_size=2048,
        intermediate_size=7168,
        num_hidden_layers=16,
        num_attention_heads=16,
        num_key_value_heads=8,
        vocab_size=32000,
        max_position_embeddings=4096,
        sliding_window=None,
    )
    cfg._attn_implementation = "sdpa"
    backbone = AutoModel.from_config(cfg, dtype=torch.bfloat16)
    make_bidirectional(backbone)
    backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    n_base = sum(p.numel() for p in backbone.parameters())
    pooler = LatentAttentionPooling(cfg.hidden_size, num_latents=512, num_heads=8).to(torch.bfloat16)
    n_head = sum(p.numel() for p in pooler.parameters())
    model = NVEmbedModel(apply_lora(backbone, 16, 32, 0.1), pooler).to(dev)
    opt = build_optimizer(model, 2e-5, 1e-4)
    engine = TorchEngine(model, opt, linear_warmup_decay(opt, 10, 1000), 0.02, args.chunk, 1.0, torch.bfloat16)

    def batch():
        def feats(n):
            ids = torch.randint(3, cfg.vocab_size, (n, args.seq), device=dev)
            mask = torch.ones_like(ids)
            return {"input_ids": ids, "attention_mask": mask, "pool_mask": mask}

        b, k = args.batch, args.negatives
        return ContrastiveBatch(
            feats(b),
            feats(b * (1 + k)),
            torch.ones(b, k, dtype=torch.bool, device=dev),
            torch.ones(b, dtype=torch.bool, device=dev),
        )

    data = batch()
    tokens = data.num_tokens()
    engine.step(data)  # warm-up
    torch.cuda.synchronize()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        engine.step(data)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    layers, h, s = cfg.num_hidden_layers, cfg.hidden_size, args.seq
    attn = 4 * layers * s * h * 3  # QK^T and AV, forward + backward, per token
    flops = tokens * (8 * n_base + 6 * n_head + attn)
    print(f"device: {torch.cuda.get_device_name()}  backbone {n_base / 1e9:.2f}B + head {n_head / 1e6:.0f}M params")
    print(
        f"batch {args.batch} x (1 + {args.negatives}) x {s} tokens = {tokens} tokens/step, GradCache chunk {args.chunk}"
    )
    print(f"median step {t:.2f} s  ->  {tokens / t:,.0f} tokens/s  MFU {flops / t / (args.peak_tflops * 1e12):.1%}")
    print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
