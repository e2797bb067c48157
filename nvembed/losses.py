"""InfoNCE for NV-Embed's two stages (spec §2.1, pitfalls 8-9).

Similarity is the dot product of L2-normalised embeddings (cosine) divided by the temperature τ (not published
for NV-Embed; 0.02 as GritLM and E5-Mistral, configurable). Each query's candidates are:

* its own positive and its own hard negatives, always;
* when the row allows in-batch negatives (stage 1, retrieval): every other row's positive and hard negatives,
  across ranks when distributed (gathered with gradient; labels offset by rank);
* in stage 2 the flag is off for every row, so a row never sees another row's documents (classification rows
  sharing a class would otherwise be false negatives).

The flag is per row, so one batch may mix both kinds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nvembed.distributed import all_gather_no_grad, all_gather_with_grad, rank


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Mean distance of ``[n, D]`` student embeddings to the frozen teacher's: ``1 - cos`` or squared error."""
    if student.shape != teacher.shape:
        raise ValueError(f"student embeddings {tuple(student.shape)} and teacher's {tuple(teacher.shape)} differ")
    if kind == "mse":
        return F.mse_loss(student, teacher)
    return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()


def contrastive_loss(
    queries: torch.Tensor,
    docs: torch.Tensor,
    neg_mask: torch.Tensor,
    in_batch: torch.Tensor,
    temperature: float = 0.02,
) -> torch.Tensor:
    """Mean InfoNCE over the local queries.

    Args:
        queries: ``[B, D]`` query embeddings (normalised by the model).
        docs: ``[B * (1 + K), D]``: the B positives first (row i's positive at i), then the negatives row-major
            (row i's j-th negative at ``B + i * K + j``).
        neg_mask: ``[B, K]`` bool, True where a negative is real (rows may have fewer than K).
        in_batch: ``[B]`` bool, whether row i may use other rows' documents as negatives.
        temperature: τ; logits are ``cos / τ``.

    Returns:
        Scalar loss (mean over local rows). Across ranks, average the gradients as DDP does.
    """
    b, k = neg_mask.shape
    n_local = b * (1 + k)
    if docs.shape[0] != n_local:
        raise ValueError(f"docs has {docs.shape[0]} rows, expected B*(1+K) = {n_local}")
    device = queries.device
    rows = torch.arange(b, device=device)
    owner = torch.cat([rows, rows.repeat_interleave(k)])  # [B(1+K)] local row that owns each doc
    valid = torch.cat([torch.ones(b, dtype=torch.bool, device=device), neg_mask.reshape(-1)])  # [B(1+K)]
    offset = rank() * b
    owner = owner + offset  # global row ids

    all_docs = all_gather_with_grad(docs)  # [W*B(1+K), D]
    all_owner = all_gather_no_grad(owner)  # [W*B(1+K)]
    all_valid = all_gather_no_grad(valid)  # [W*B(1+K)]

    logits = queries @ all_docs.T / temperature  # [B, W*B(1+K)]
    global_rows = (rows + offset).unsqueeze(1)  # [B, 1]
    own = all_owner.unsqueeze(0) == global_rows  # [B, N]
    allowed = all_valid.unsqueeze(0) & (own | in_batch.to(device).unsqueeze(1))  # [B, N]
    logits = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)
    labels = rows + rank() * n_local  # positive of row i sits at i within its rank's block
    return F.cross_entropy(logits, labels)


def matryoshka_loss(
    queries: torch.Tensor,
    docs: torch.Tensor,
    neg_mask: torch.Tensor,
    in_batch: torch.Tensor,
    temperature: float,
    dims: tuple[int, ...],
) -> torch.Tensor:
    """InfoNCE on the full embeddings and on each leading slice of ``dims`` components (renormalised), averaged
    (Matryoshka representation learning, Kusupati et al., 2022): truncating the trained model's vectors to one of
    ``dims`` then loses little, because the loss has trained each prefix to be an embedding on its own.

    Shapes as :func:`contrastive_loss`; ``dims`` each < D (the full width is always included).
    """
    width = queries.shape[1]
    losses = [contrastive_loss(queries, docs, neg_mask, in_batch, temperature)]
    for m in dims:
        if not 0 < m < width:
            raise ValueError(f"matryoshka dims must be in 1..{width - 1}, got {m}")
        q = F.normalize(queries[:, :m], dim=1)  # [B, m]
        d = F.normalize(docs[:, :m], dim=1)  # [B(1+K), m]
        losses.append(contrastive_loss(q, d, neg_mask, in_batch, temperature))
    return torch.stack(losses).mean()
