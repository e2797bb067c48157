"""Weight compression (issue 16): pruning methods against their definitions, weight quantization, the
``nvembed compress`` flow on tiny models (checks before work, card records, reload, the merged-LoRA trap)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from nvembed.compress import compress_embedder, read_calibration_texts
from nvembed.pruning import (
    Sparsity,
    check_prunable,
    prune_magnitude,
    prune_sparsegpt,
    prune_wanda,
    sparsity_of,
)
from nvembed.weight_quant import quantize_weight

TEXTS = [f"sentence number {i} about {w} and other things" for i, w in enumerate("abcdefghijklmnopqrst")]


def test_sparsity_parse():
    s = Sparsity.parse("2:4")
    assert (s.n, s.m, s.ratio, s.label) == (2, 4, 0.5, "2:4")
    assert Sparsity.parse("0.3").ratio == pytest.approx(0.3)
    for bad in ["4:4", "0:4", "a:b", "1.5", "0", "half"]:
        with pytest.raises(ValueError):
            Sparsity.parse(bad)


def test_magnitude_drops_the_smallest_per_row_and_nm_per_group():
    w = torch.randn(8, 16)
    out = prune_magnitude(w, Sparsity.parse("0.25"))
    for row, new in zip(w, out, strict=True):
        dropped = new == 0
        assert int(dropped.sum()) == 4
        assert row.abs()[dropped].max() <= row.abs()[~dropped].min()
    nm = prune_magnitude(w, Sparsity.parse("2:4")).reshape(8, 4, 4)
    assert ((nm == 0).sum(-1) == 2).all()


def test_wanda_weighs_by_input_norm():
    w = torch.ones(4, 8)
    w[:, 0] = 0.1  # small weights on a feature with large inputs: Wanda keeps them, magnitude drops them
    norms = torch.ones(8)
    norms[0] = 1e4
    kept = prune_wanda(w, norms, Sparsity.parse("0.5"))
    assert (kept[:, 0] != 0).all()
    assert (prune_magnitude(w, Sparsity.parse("0.5"))[:, 0] == 0).all()
    # uniform input norms: Wanda is magnitude pruning
    w = torch.randn(6, 8)
    assert torch.equal(
        prune_wanda(w, torch.full((8,), 3.0), Sparsity.parse("2:4")), prune_magnitude(w, Sparsity.parse("2:4"))
    )


@pytest.mark.parametrize("pattern", ["0.5", "2:4"])
def test_sparsegpt_reconstructs_the_layer_output_better(pattern):
    """SparseGPT's point: for the same sparsity, ||X W^T - X W'^T|| is smaller than after magnitude or Wanda."""
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(32, 32, generator=g)
    x = torch.randn(512, 32, generator=g) @ mix  # correlated inputs, as in a real layer
    w = torch.randn(16, 32, generator=g)
    s = Sparsity.parse(pattern)
    h = x.T @ x
    errors = {
        "magnitude": prune_magnitude(w, s),
        "wanda": prune_wanda(w, (x * x).sum(0), s),
        "sparsegpt": prune_sparsegpt(w, h, s, block_size=8),
    }
    for name, new in errors.items():
        assert (new == 0).float().mean().item() == pytest.approx(0.5, abs=0.02), name
    if s.m:
        assert ((errors["sparsegpt"].reshape(16, 8, 4) == 0).sum(-1) == 2).all()
    err = {k: float(torch.linalg.norm(x @ w.T - x @ v.T)) for k, v in errors.items()}
    assert err["sparsegpt"] < 0.9 * min(err["magnitude"], err["wanda"]), err


def test_quantize_weight_rounds_within_half_a_step():
    w = torch.randn(8, 256)
    q8 = quantize_weight(w, 8)
    step = w.abs().amax(1, keepdim=True) / 127
    assert ((q8 - w).abs() <= step / 2 + 1e-6).all()
    assert max(len(torch.unique(row)) for row in q8) <= 255
    q4 = quantize_weight(w, 4, group_size=128)
    for group in q4.reshape(8, 2, 128).reshape(-1, 128):
        assert len(torch.unique(group)) <= 15
    assert float((q4 - w).abs().mean()) > float((q8 - w).abs().mean())


def test_bad_requests_stop_before_any_work(tiny_mistral_embedder):
    emb = tiny_mistral_embedder
    before = {k: v.clone() for k, v in emb.model.state_dict().items()}
    with pytest.raises(ValueError, match="does not divide the input width"):
        compress_embedder(emb, prune_method="magnitude", sparsity="3:5")
    with pytest.raises(ValueError, match="at least 8 calibration texts"):
        compress_embedder(emb, prune_method="wanda", sparsity="2:4", calibration=TEXTS[:3])
    with pytest.raises(ValueError, match="unknown pruning method"):
        compress_embedder(emb, prune_method="obs", sparsity="2:4")
    with pytest.raises(ValueError, match="group_size 48 does not divide"):
        compress_embedder(emb, quantize="int4", group_size=48)
    with pytest.raises(ValueError, match="nothing to do"):
        compress_embedder(emb)
    assert all(torch.equal(before[k], v) for k, v in emb.model.state_dict().items())


def test_unsupported_model_type_is_refused(tiny_mistral_embedder):
    backbone = tiny_mistral_embedder._base_backbone()
    backbone.config.model_type = "t5"
    with pytest.raises(ValueError, match="this backbone is 't5'"):
        check_prunable(backbone, Sparsity.parse("2:4"), "magnitude")


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_compress_tiny_decoder_and_reload(tiny_mistral_embedder, tmp_path, method):
    from nvembed import Embedder

    emb = tiny_mistral_embedder
    dense = emb.encode(TEXTS, show_progress=False)
    steps = compress_embedder(emb, prune_method=method, sparsity="2:4", quantize="int8", calibration=TEXTS)
    assert [s["step"] for s in steps] == ["prune", "quantize"]
    assert sparsity_of(emb._base_backbone()) == pytest.approx(0.5, abs=0.01)
    vectors = emb.encode(TEXTS, show_progress=False)
    assert np.isfinite(vectors).all() and not np.allclose(vectors, dense, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    card = emb.card.__class__() if emb.card else None
    from nvembed.model_card import ModelCard

    card = ModelCard(compression=steps)
    out = emb.save_pretrained(tmp_path / "c", card=card)
    again = Embedder.from_pretrained(str(out))
    np.testing.assert_allclose(again.encode(TEXTS, show_progress=False), vectors, atol=1e-5)
    assert sparsity_of(again._base_backbone()) == pytest.approx(0.5, abs=0.01)
    readme = (out / "README.md").read_text()
    assert "## Compression" in readme and f"method={method}" in readme
    meta = json.loads((out / "nvembed_config.json").read_text())
    assert meta["card"]["compression"][0]["sparsity"] == "2:4"


def test_merged_lora_export_is_not_the_base_model(tmp_path, sp_tokenizer):
    """The trap: a 'merged' export that silently holds the base weights. Compressing a LoRA model merges it, and the
    reloaded export encodes like the adapter model, not like the base."""
    from nvembed import Embedder, PoolingConfig
    from nvembed.compress import compress_model
    from tests.helpers import tiny_decoder

    emb = Embedder.from_model(
        tiny_decoder("mistral", len(sp_tokenizer)), sp_tokenizer, pooling=PoolingConfig(kind="mean"), lora=True
    )
    with torch.no_grad():  # a trained adapter: lora_B is zero at init, so give it weights
        for name, p in emb.model.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    with_adapter = emb.encode(TEXTS, show_progress=False)
    with emb.model.backbone.disable_adapter():
        base = emb.encode(TEXTS, show_progress=False)
    assert np.abs(with_adapter - base).max() > 1e-2
    src = emb.save_pretrained(tmp_path / "lora")
    calib = tmp_path / "calib.jsonl"
    calib.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    out = compress_model(str(src), tmp_path / "int8", calibration_path=calib, quantize="int8")
    again = Embedder.from_pretrained(str(out))
    assert not (out / "adapter").exists()
    got = again.encode(TEXTS, show_progress=False)
    assert np.abs(got - base).max() > 1e-2  # not the base model
    np.testing.assert_allclose(got, with_adapter, atol=0.05)  # the adapter model, up to int8 rounding
    steps = json.loads((out / "nvembed_config.json").read_text())["card"]["compression"]
    assert [s["step"] for s in steps] == ["merge_lora", "quantize"]


def test_calibration_texts_from_files(tmp_path):
    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": str(i), "title": "", "text": t}) + "\n" for i, t in enumerate(TEXTS))
    )
    assert sorted(read_calibration_texts(beir, 100)) == sorted(TEXTS)
    assert len(read_calibration_texts(beir, 5)) == 5
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: invalid JSON"):
        read_calibration_texts(bad, 10)
    with pytest.raises(FileNotFoundError):
        read_calibration_texts(tmp_path / "missing.jsonl", 10)


def test_cli_refuses_bad_pattern_without_writing(tmp_path, tiny_mistral_embedder):
    from nvembed.cli import main

    src = copy.deepcopy(tiny_mistral_embedder).save_pretrained(tmp_path / "m")
    rc = main(["compress", str(src), "--out", str(tmp_path / "out"), "--prune", "magnitude", "--sparsity", "3:5"])
    assert rc == 2 and not (tmp_path / "out").exists()


def test_distillation_pulls_towards_the_teacher_and_keeps_sparsity(tmp_path, tiny_mistral_embedder):
    """Recovery (loss.distill_from): a pruned student trained with a heavily weighted distillation term moves to the
    teacher's embeddings, and its pruned zeros stay zero through AdamW steps."""
    from nvembed import Embedder
    from nvembed.config import TrainConfig, from_dict
    from nvembed.data.collate import ContrastiveCollator
    from nvembed.data.schema import TrainingExample
    from nvembed.model_card import ModelCard
    from nvembed.training.precision import resolve_precision
    from nvembed.training.stage import build_stage_embedder, make_engine

    teacher = tiny_mistral_embedder
    teacher_dir = teacher.save_pretrained(tmp_path / "teacher")
    student = copy.deepcopy(teacher)
    steps = compress_embedder(student, prune_method="magnitude", sparsity="2:4")
    student_dir = student.save_pretrained(tmp_path / "student", card=ModelCard(compression=steps))
    cfg = from_dict(
        TrainConfig,
        {
            "run": {
                "stage": 2,
                "init_from": str(student_dir),
                "max_steps": 8,
                "batch_size": 4,
                "num_negatives": 1,
                "query_max_length": 32,
                "doc_max_length": 32,
            },
            "loss": {"distill_from": str(teacher_dir), "distill_weight": 20.0},
            "optim": {"lr": 1e-3, "warmup_steps": 0},
        },
    )
    emb = build_stage_embedder(cfg)
    engine = make_engine(cfg, emb.model, resolve_precision(cfg.model.dtype, "off", torch.device("cpu")))
    collator = ContrastiveCollator(emb.inputs, num_negatives=1, query_max_length=32, doc_max_length=32)
    rows = [
        TrainingExample(
            query=TEXTS[i],
            positive=TEXTS[i + 1],
            negatives=[TEXTS[i + 2]],
            instruction=None,
            task_type="Retrieval",
            task="toy",
        )
        for i in range(4)
    ]
    target = Embedder.from_pretrained(str(teacher_dir)).encode(TEXTS, show_progress=False)
    gap0 = float(np.abs(emb.encode(TEXTS, show_progress=False) - target).mean())
    for _ in range(8):
        engine.step(collator(rows))
    gap1 = float(np.abs(emb.encode(TEXTS, show_progress=False) - target).mean())
    assert gap1 < gap0
    assert sparsity_of(emb._base_backbone()) == pytest.approx(0.5, abs=0.01)
    assert engine.teacher is not None and not any(p.requires_grad for p in engine.teacher.parameters())
    assert [s["step"] for s in emb.card.compression] == ["prune", "recover"]
