"""AdamW with a separate learning rate for the new pooling head, and linear warm-up + linear decay (spec §2.2)."""

from __future__ import annotations

import torch


def build_optimizer(
    model: torch.nn.Module,
    lr: float,
    head_lr: float | None = None,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over trainable parameters; biases and norms get no weight decay; ``pooler.*`` may use ``head_lr``.

    A freshly initialised latent-attention head on a pretrained backbone adapts much faster at a higher rate
    (measured in our calibration runs on MiniLM); ``head_lr=None`` uses ``lr`` for everything.
    """
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = name.startswith("pooler.") or ".pooler." in name
        no_decay = p.ndim < 2 or "norm" in name.lower()
        groups.setdefault((is_head, no_decay), []).append(p)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    param_groups = [
        {
            "params": params,
            "lr": (head_lr if head_lr is not None else lr) if is_head else lr,
            "weight_decay": 0.0 if no_decay else weight_decay,
        }
        for (is_head, no_decay), params in sorted(groups.items())
    ]
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=eps)


def linear_warmup_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """LR factor rises linearly over ``warmup_steps`` then decays linearly to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        remaining = max(total_steps - step, 0)
        return remaining / max(total_steps - warmup_steps, 1)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
