"""The precision policy (nvembed/training/precision.py): frozen bf16 base, fp32 trainable tensors, autocast forward,
and a bf16 torch-engine step that really updates every trainable tensor."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nvembed.config import ConfigError
from nvembed.training.precision import cast_trainable, check_optimizer_dtypes, native_bf16, resolve_precision

CPU = torch.device("cpu")


def test_resolve_precision_cases():
    bf16_base = resolve_precision("bfloat16", "off", CPU)
    assert (bf16_base.weights, bf16_base.compute) == (torch.bfloat16, torch.bfloat16)  # forced: bf16 weights
    assert bf16_base.deepspeed_mixed and bf16_base.trainable_dtype("deepspeed") == torch.bfloat16
    assert bf16_base.trainable_dtype("ddp") == torch.float32
    fp32 = resolve_precision("float32", "off", CPU)
    assert fp32.compute is None and not fp32.deepspeed_mixed and fp32.trainable_dtype("deepspeed") == torch.float32
    autocast = resolve_precision("float32", "bf16", CPU)
    assert autocast.compute == torch.bfloat16 and not autocast.deepspeed_mixed
    auto = resolve_precision("auto", "auto", CPU)
    assert auto.compute == (torch.bfloat16 if native_bf16(CPU) else None)
    assert ("natively" in auto.reason) == native_bf16(CPU)
    with pytest.raises(ConfigError, match="contradicts model.dtype=bfloat16"):
        resolve_precision("bfloat16", "fp16", CPU)


def test_bf16_torch_engine_updates_every_trainable_tensor(tiny_mistral_embedder):
    """A 2e-5 step on a bf16 weight rounds back to the same value; the policy's fp32 tensors do move."""
    from nvembed.config import TrainConfig, from_dict
    from nvembed.modeling.lora import apply_lora
    from nvembed.training.stage import make_collator, make_engine
    from tests.helpers import toy_rows

    emb = tiny_mistral_embedder
    emb.model.backbone = apply_lora(emb.model.backbone, rank=4, alpha=8, dropout=0.0)
    emb.model.to(torch.bfloat16)  # the shipped 7B shape: everything loaded in bf16
    cfg = from_dict(
        TrainConfig,
        {
            "model": {"dtype": "bfloat16"},
            "optim": {"lr": 2e-5, "head_lr": 2e-5, "warmup_steps": 0},
            "run": {"batch_size": 4, "num_negatives": 2, "query_max_length": 32, "doc_max_length": 32},
        },
    )
    precision = resolve_precision(cfg.model.dtype, cfg.run.autocast, CPU)
    engine = make_engine(cfg, emb.model, precision)
    trainable = {n: p for n, p in emb.model.named_parameters() if p.requires_grad}
    frozen = [p for p in emb.model.parameters() if not p.requires_grad]
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    assert frozen and {p.dtype for p in frozen} == {torch.bfloat16}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    batch = make_collator(cfg, emb)(toy_rows(4, 2))
    loss, norm = engine.step(batch)
    assert loss > 0 and norm > 0
    unchanged = [n for n, p in trainable.items() if torch.equal(p, before[n])]
    assert not unchanged, unchanged
    # the same step on bf16 weights leaves most elements exactly where they were: the trap the policy avoids
    head = emb.model.pooler
    w = next(p for p in head.parameters() if p.ndim == 2)
    assert (w.detach().to(torch.bfloat16) - 2e-5 * torch.sign(w.detach()).to(torch.bfloat16)).eq(
        w.detach().to(torch.bfloat16)
    ).float().mean() > 0.5


def test_optimizer_guard_refuses_low_precision_weights():
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="bfloat16"):
        check_optimizer_dtypes(torch.optim.AdamW([p]))
    model = torch.nn.Linear(2, 2).to(torch.bfloat16)
    model.bias.requires_grad_(False)
    assert cast_trainable(model, torch.float32) == 1
    assert model.weight.dtype == torch.float32 and model.bias.dtype == torch.bfloat16


def _average(rank, world, port, out):
    from nvembed.training.engine import average_gradients

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))]
    params[0].grad = torch.full((3,), float(rank + 1))
    params[1].grad = torch.full((2,), float(rank + 1), dtype=torch.bfloat16)
    average_gradients(params)
    out[rank] = [(p.grad.dtype, p.grad.tolist()) for p in params]
    dist.destroy_process_group()


def test_gradient_average_buckets_by_dtype():
    """Mixed-dtype gradients keep their dtypes and are averaged (torch.cat would promote them)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_average, args=(2, port, out), nprocs=2, join=True)
    for rank in (0, 1):
        assert out[rank] == [(torch.float32, [1.5, 1.5, 1.5]), (torch.bfloat16, [1.5, 1.5])]
