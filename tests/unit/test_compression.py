"""Embedding-level compression (nvembed/compression.py): truncation renormalises, int8 calibration refuses what
would silently collapse, binary codes search by Hamming distance, and ``encode(dimensions=)`` truncates."""

from __future__ import annotations

import numpy as np
import pytest

from nvembed.compression import Int8Calibration, build_index, bytes_per_vector, quantize, search, truncate


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_truncation_renormalises_and_checks_width():
    x = _unit(50, 64)
    t = truncate(x, 16)
    assert t.shape == (50, 16)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(t, x[:, :16] / np.linalg.norm(x[:, :16], axis=1, keepdims=True), rtol=1e-6)
    with pytest.raises(ValueError, match="1..64"):
        truncate(x, 65)
    with pytest.raises(ValueError, match="all zeros"):
        truncate(np.concatenate([np.zeros((1, 64), np.float32), x]), 8)


def test_int8_calibration_refuses_too_few_vectors_and_zero_ranges(tmp_path):
    x = _unit(2000, 32)
    with pytest.raises(ValueError, match="at least 1000 vectors, got 10"):
        Int8Calibration.from_vectors(x[:10])
    flat = x.copy()
    flat[:, 3] = 0.25
    with pytest.raises(ValueError, match=r"dimension\(s\) \[3\] have a zero range"):
        Int8Calibration.from_vectors(flat)
    cal = Int8Calibration.from_vectors(x)
    cal.save(tmp_path / "ranges.npy")
    np.testing.assert_array_equal(Int8Calibration.load(tmp_path / "ranges.npy").ranges, cal.ranges)
    codes = quantize(x[:100], "int8", cal)
    assert codes.dtype == np.int8 and codes.shape == (100, 32) and len(np.unique(codes)) > 100
    with pytest.raises(ValueError, match="needs an Int8Calibration"):
        quantize(x, "int8")


def test_quantized_search_finds_what_float_search_finds():
    docs = _unit(1500, 64, seed=1)
    queries = docs[:40] + 0.05 * _unit(40, 64, seed=2)  # each query next to its document
    cal = Int8Calibration.from_vectors(docs)
    for precision in ("float32", "int8", "binary"):
        q = quantize(queries, precision, cal)
        index = build_index(quantize(docs, precision, cal), precision)
        _, ids = search(index, q, 1, precision)
        assert (ids[:, 0] == np.arange(40)).mean() >= 0.95, precision
    assert quantize(docs, "binary").shape == (1500, 8)
    assert [bytes_per_vector(64, p) for p in ("float32", "int8", "binary")] == [256, 64, 8]
    with pytest.raises(ValueError, match="multiple"):
        quantize(docs[:, :60], "binary")


def test_encode_dimensions(minilm):
    from nvembed import Embedder

    emb = Embedder.from_pretrained(minilm, pooling="mean")
    texts = ["a cat sits on the mat", "stock markets fell sharply", "the recipe needs two eggs"]
    full = emb.encode(texts, show_progress=False)
    half = emb.encode(texts, show_progress=False, dimensions=192)
    np.testing.assert_allclose(half, truncate(full, 192), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(half, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="dimensions must be in 1..384"):
        emb.encode(texts, dimensions=385)


def test_matryoshka_loss_averages_full_and_renormalised_prefixes():
    import torch
    import torch.nn.functional as F

    from nvembed.config import ConfigError, LossConfig
    from nvembed.losses import contrastive_loss, matryoshka_loss

    g = torch.Generator().manual_seed(0)
    b, k, d = 4, 2, 32
    q = F.normalize(torch.randn(b, d, generator=g), dim=1)
    docs = F.normalize(torch.randn(b * (1 + k), d, generator=g), dim=1)
    mask, inb = torch.ones(b, k, dtype=torch.bool), torch.ones(b, dtype=torch.bool)
    full = contrastive_loss(q, docs, mask, inb, 0.05)
    assert torch.allclose(matryoshka_loss(q, docs, mask, inb, 0.05, ()), full)
    parts = [full] + [
        contrastive_loss(F.normalize(q[:, :m], dim=1), F.normalize(docs[:, :m], dim=1), mask, inb, 0.05)
        for m in (8, 16)
    ]
    assert torch.allclose(matryoshka_loss(q, docs, mask, inb, 0.05, (8, 16)), torch.stack(parts).mean())
    with pytest.raises(ValueError, match="1..31"):
        matryoshka_loss(q, docs, mask, inb, 0.05, (32,))
    with pytest.raises(ConfigError, match="matryoshka_dims"):
        LossConfig(matryoshka_dims=[0])


def test_matryoshka_training_step_runs_on_both_gradient_paths(minilm):
    """The Matryoshka loss through the training step, plain and GradCache: the same gradients."""
    import torch

    from nvembed import Embedder
    from nvembed.data.collate import ContrastiveCollator
    from nvembed.training.step import contrastive_backward
    from tests.helpers import toy_rows

    emb = Embedder.from_pretrained(minilm, pooling="mean")
    batch = ContrastiveCollator(emb.inputs, num_negatives=2, query_max_length=16, doc_max_length=16)(toy_rows(8, 2))
    grads = []
    for chunk in (None, 4):
        emb.model.zero_grad(set_to_none=True)
        contrastive_backward(emb.model, batch, 0.05, chunk_size=chunk, matryoshka_dims=(96, 192))
        grads.append(torch.cat([p.grad.flatten() for p in emb.model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_mteb_encoder_scores_quantised_vectors(minilm, tmp_path):
    """int8 and binary through mteb's STS evaluator: close to float32 on sentences the calibration did not see."""
    import mteb
    from datasets import Dataset, DatasetDict

    from evaluation.encoder import NVEmbedEncoder
    from nvembed import Embedder

    emb = Embedder.from_pretrained(minilm, pooling="mean")
    words = "cat dog car tree house river city music food sport rain sun child king road ship".split()
    calib = [f"{a} and {b} near the {c}" for a in words for b in words for c in words[:4]]  # 1,024 texts
    cal = Int8Calibration.from_vectors(emb.encode(calib, show_progress=False))
    pairs = [(f"a {a} in the {b}", f"the {a} sits in a {b}", 4.5) for a, b in zip(words, words[1:], strict=False)]
    pairs += [
        (f"a {a} in the {b}", f"the {c} is far from here", 0.5)
        for a, b, c in zip(words, words[1:], words[2:], strict=False)
    ]
    scores = {}
    for precision in ("float32", "int8", "binary"):
        task = mteb.get_task("STSBenchmark")
        task.dataset = DatasetDict(
            {"test": Dataset.from_list([{"sentence1": a, "sentence2": b, "score": s} for a, b, s in pairs])}
        )
        task.data_loaded = True
        enc = NVEmbedEncoder(emb, max_length=32, source=minilm, precision=precision, calibration=cal)
        res = mteb.evaluate(enc, [task], cache=None, overwrite_strategy="always", show_progress_bar=False)
        scores[precision] = float(res.task_results[0].get_score())
    assert scores["float32"] > 0.8
    assert abs(scores["int8"] - scores["float32"]) < 0.02 and abs(scores["binary"] - scores["float32"]) < 0.1, scores
    with pytest.raises(ValueError, match="needs calibration"):
        NVEmbedEncoder(emb, precision="int8")


def test_review_guards(minilm, tmp_path):
    """Options that would fail deep inside an evaluation or at a worker's first step fail where they are given."""
    from evaluation.encoder import NVEmbedEncoder
    from nvembed import Embedder
    from nvembed.config import ConfigError, JobConfig, LossConfig, load_yaml
    from nvembed.training.preflight import check_matryoshka_dims

    emb = Embedder.from_pretrained(minilm, pooling="mean")
    cal = Int8Calibration.from_vectors(_unit(1000, 384))
    with pytest.raises(ValueError, match="same dimensions="):
        NVEmbedEncoder(emb, dimensions=192, precision="int8", calibration=cal)
    with pytest.raises(ValueError, match="multiple of 8"):
        NVEmbedEncoder(emb, dimensions=100, precision="binary")
    with pytest.raises(ValueError, match="1..384"):
        NVEmbedEncoder(emb, dimensions=500)
    # the compression suffix follows an explicit revision too; int8 revisions name their calibration
    assert NVEmbedEncoder(emb, revision="r", dimensions=96).mteb_model_meta.revision == "r-d96"
    rev = NVEmbedEncoder(emb, revision="r", precision="int8", calibration=cal).mteb_model_meta.revision
    assert rev == f"r-int8-{cal.fingerprint()}"
    # calibration files round-trip with or without the suffix
    assert Int8Calibration.load(cal.save(tmp_path / "ranges")).fingerprint() == cal.fingerprint()
    with pytest.raises(ConfigError, match="distinct"):
        LossConfig(matryoshka_dims=[96, 96])
    job = load_yaml("jobs/configs/quickstart.yaml", JobConfig, ["stage1.loss.matryoshka_dims=[16, 4096]"])
    with pytest.raises(ConfigError, match=r"\[4096\] not below the embedding width"):
        check_matryoshka_dims(job.stage_config(1))
