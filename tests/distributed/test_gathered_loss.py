"""Two gloo processes with gathered negatives == one process on the whole batch (hard negatives present)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nvembed.losses import contrastive_loss

B, K, D_IN, D = 4, 2, 6, 5


def _data():
    g = torch.Generator().manual_seed(0)
    q_feat = torch.randn(B, D_IN, generator=g)
    pos_feat = torch.randn(B, D_IN, generator=g)
    neg_feat = torch.randn(B, K, D_IN, generator=g)
    neg_mask = torch.tensor([[True, True], [True, False], [True, True], [False, False]])
    weight = torch.randn(D, D_IN, generator=g)
    return q_feat, pos_feat, neg_feat, neg_mask, weight


def _loss(weight, q_feat, pos_feat, neg_feat, neg_mask, in_batch):
    embed = lambda x: torch.nn.functional.normalize(x @ weight.T, dim=-1)  # noqa: E731
    b = q_feat.shape[0]
    docs = torch.cat([embed(pos_feat), embed(neg_feat.reshape(b * K, D_IN))])
    return contrastive_loss(embed(q_feat), docs, neg_mask, torch.full((b,), in_batch), temperature=0.05)


def _worker(rank, world, port, in_batch, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    q_feat, pos_feat, neg_feat, neg_mask, weight = _data()
    rows = slice(rank * B // world, (rank + 1) * B // world)
    weight = weight.clone().requires_grad_()
    loss = _loss(weight, q_feat[rows], pos_feat[rows], neg_feat[rows], neg_mask[rows], in_batch)
    loss.backward()
    grad = weight.grad.clone()
    dist.all_reduce(grad)
    grad /= world  # what DDP does
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world
    if rank == 0:
        torch.save((mean_loss.item(), grad), out)
    dist.barrier()
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("in_batch", [True, False], ids=["stage1", "stage2"])
def test_two_ranks_equal_one_process(in_batch, tmp_path):
    q_feat, pos_feat, neg_feat, neg_mask, weight = _data()
    weight = weight.clone().requires_grad_()
    full = _loss(weight, q_feat, pos_feat, neg_feat, neg_mask, in_batch)
    full.backward()

    out = str(tmp_path / "rank0.pt")
    mp.start_processes(_worker, args=(2, _free_port(), in_batch, out), nprocs=2, start_method="spawn", join=True)
    loss, grad = torch.load(out)
    assert abs(loss - full.item()) <= 1e-5
    assert (grad - weight.grad).abs().max() <= 1e-5
    if in_batch:  # the gather matters: without other ranks' documents the loss would differ
        alone = _loss(weight.detach(), q_feat[:2], pos_feat[:2], neg_feat[:2], neg_mask[:2], True)
        assert abs(alone.item() - full.item()) > 1e-3
