"""Training-step throughput: our step vs sentence-transformers' MultipleNegativesRankingLoss, and GradCache vs plain.

Same MiniLM (mean pooling, as the packaged sentence-transformers model), same rows (real WikiQA training
triplets), same batch (queries x (1 positive + K negatives)), same AdamW; in-batch + hard negatives on both sides
(MNRL's loss is our stage-1 loss at scale 20 = 1/τ 0.05). Runs alternate within one process; medians reported.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_step.py [--batch 32] [--negatives 3] [--steps 6] [--bf16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# real public data, not shipped: $NVEMBED_DATA (README "Data"), default ../shared/data beside the checkout
DATA = Path(os.environ.get("NVEMBED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")


def main() -> None:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from nvembed import Embedder
    from nvembed.data.collate import ContrastiveCollator
    from nvembed.data.converters import triplet_examples
    from nvembed.training.engine import TorchEngine
    from nvembed.training.optim import build_optimizer, linear_warmup_decay

    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per contender (after 1 warm-up)")
    parser.add_argument("--chunk", type=int, default=16, help="GradCache chunk rows")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument(
        "--bf16", action="store_true", help="also time our plain step under bf16 autocast (CPUs with AMX/AVX512-BF16)"
    )
    args = parser.parse_args()

    rows = [
        r
        for r in triplet_examples(DATA / "wikiqa/train_triplets.jsonl", "wikiqa", None)
        if len(r.negatives) >= args.negatives
    ]
    batches = [rows[i : i + args.batch] for i in range(0, args.batch * (args.steps + 1), args.batch)]
    path = "packaged:all-MiniLM-L6-v2"

    st = SentenceTransformer(
        str(Embedder.from_pretrained(path, pooling="mean").config.model.name_or_path), device="cpu"
    )
    st.max_seq_length = args.max_length
    mnrl = MultipleNegativesRankingLoss(st, scale=20.0)
    st_opt = torch.optim.AdamW(st.parameters(), lr=1e-5)

    def st_step(batch):
        st.train()
        columns = [[r.query for r in batch], [r.positive for r in batch]]
        columns += [[r.negatives[j] for r in batch] for j in range(args.negatives)]
        features = [st.preprocess(col) for col in columns]
        st_opt.zero_grad()
        loss = mnrl(features, torch.zeros(len(batch)))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(st.parameters(), 1.0)
        st_opt.step()

    def ours(chunk, autocast_dtype=None):
        emb = Embedder.from_pretrained(path, pooling="mean")
        opt = build_optimizer(emb.model, 1e-5)
        engine = TorchEngine(
            emb.model,
            opt,
            linear_warmup_decay(opt, 0, 10_000),
            temperature=0.05,
            chunk_size=chunk,
            grad_clip=1.0,
            autocast_dtype=autocast_dtype,
        )
        collate = ContrastiveCollator(emb.inputs, args.negatives, args.max_length, args.max_length, force_in_batch=True)
        return lambda batch: engine.step(collate(batch))

    contenders = {
        "nvembed (plain)": ours(None),
        f"nvembed (GradCache, chunk {args.chunk})": ours(args.chunk),
        "sentence-transformers MNRL": st_step,
    }
    if args.bf16:
        contenders["nvembed (plain, bf16 autocast)"] = ours(None, torch.bfloat16)
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for fn in contenders.values():
        fn(batches[0])  # warm-up
    for batch in batches[1:]:
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn(batch)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    n = args.batch
    print(
        f"batch {n} queries x (1 + {args.negatives}) docs, max_length {args.max_length}, "
        f"{args.steps} timed steps each, torch threads {torch.get_num_threads()}\n"
    )
    print("| step | median s/step | samples/s |\n|---|---|---|")
    for name, t in med.items():
        print(f"| {name} | {t:.2f} | {n / t:.1f} |")
    st_name = "sentence-transformers MNRL"
    gc_name = f"nvembed (GradCache, chunk {args.chunk})"
    print(
        f"\nnvembed plain vs sentence-transformers: {med[st_name] / med['nvembed (plain)']:.2f}x throughput "
        f"(goal >= 1.0)"
    )
    print(f"GradCache overhead vs plain: {med[gc_name] / med['nvembed (plain)']:.2f}x time (goal <= 1.35)")
    if args.bf16:
        bf16_ratio = med["nvembed (plain)"] / med["nvembed (plain, bf16 autocast)"]
        print(f"bf16 autocast vs fp32, plain step: {bf16_ratio:.2f}x throughput")


if __name__ == "__main__":
    main()
