"""The precision policy of training, in one place, used by every engine (docs/training.md, "Precision").

* **Frozen base weights** stay in ``model.dtype`` (bf16 for the 7B recipe): they are only read.
* **Everything trainable** (LoRA, pooling head, a fully fine-tuned backbone) is optimised in fp32: a 2e-5 AdamW
  step is below half a bf16 ulp for most weights, so a bf16 weight updated in place silently stops training.
  The torch engine keeps those parameters in fp32 itself; DeepSpeed's bf16 mode wants one dtype per parameter
  group (its ``defragment`` asserts it) and keeps its own fp32 master copies, so under DeepSpeed the trainable
  tensors are handed over in bf16 and the fp32 masters live in DeepSpeed's optimizer.
* **The forward runs under autocast** in the compute dtype: ``run.autocast`` (``auto`` = bf16 where the device
  executes it natively, fp32 otherwise), forced to the weights' dtype when the base is stored in bf16/fp16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nvembed.config import ConfigError

_WEIGHTS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_COMPUTE = {"bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """True when ``device`` executes bf16 matmuls natively (CUDA with bf16, or a CPU with AVX512-BF16 / AMX).

    On a CPU without them bf16 is emulated: the first step of the MiniLM recipe took 344 s instead of ~10 s in
    fp32 on an AMD EPYC without AVX512-BF16 (docs/bugs.md).
    """
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    return False


@dataclass(frozen=True)
class Precision:
    """What a stage computes in: ``weights`` (frozen base), ``compute`` (autocast dtype, None = fp32), and the
    dtype trainable tensors are handed to the engine in (``trainable``; fp32 unless DeepSpeed keeps masters)."""

    weights: torch.dtype | None  # None: the checkpoint's own dtype (model.dtype: auto)
    compute: torch.dtype | None
    reason: str  # one line for the log

    def trainable_dtype(self, engine: str) -> torch.dtype:
        """fp32 for the torch engine; the compute dtype under DeepSpeed's bf16/fp16 mode (it keeps fp32 masters)."""
        if engine == "deepspeed" and self.deepspeed_mixed:
            return self.compute
        return torch.float32

    @property
    def deepspeed_mixed(self) -> bool:
        """DeepSpeed's own bf16/fp16 mode: only when the base weights are stored in that dtype (otherwise the
        fp32 base would be cast down by DeepSpeed and differ from the torch engine)."""
        return self.weights in (torch.bfloat16, torch.float16) and self.compute == self.weights


def resolve_precision(model_dtype: str, autocast: str, device: torch.device) -> Precision:
    """The stage's :class:`Precision` on ``device`` (the worker's device: auto is decided where the work runs).

    Raises:
        ConfigError: an autocast dtype that contradicts the stored weights (fp16 autocast over a bf16 base).
    """
    weights = _WEIGHTS.get(model_dtype)  # None for "auto"
    if autocast in _COMPUTE:
        compute = _COMPUTE[autocast]
        reason = f"run.autocast={autocast}"
    elif autocast == "auto" and native_bf16(device):
        compute, reason = torch.bfloat16, f"run.autocast=auto: bf16, which this {device.type} executes natively"
    else:
        compute = None
        reason = f"run.autocast={autocast}: fp32" + (
            f" (this {device.type} has no native bf16)" if autocast == "auto" else ""
        )
    if weights in (torch.bfloat16, torch.float16):
        if compute not in (None, weights):
            raise ConfigError(f"run.autocast={autocast} contradicts model.dtype={model_dtype}; use the same dtype")
        if compute is None:
            reason = f"model.dtype={model_dtype}: the forward runs under {model_dtype} autocast"
        compute = weights
    return Precision(weights, compute, reason)


def cast_trainable(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Cast every trainable floating-point parameter of ``model`` to ``dtype`` in place; returns how many changed.

    Frozen parameters are left in their stored dtype. Must run before the optimizer is built (it holds references
    to the parameter objects, whose ``.data`` is replaced here).
    """
    changed = 0
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
            changed += 1
    return changed


def check_optimizer_dtypes(optimizer: torch.optim.Optimizer) -> None:
    """Fail loudly if a torch optimizer would step a low-precision weight (the silent no-update trap)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.dtype != torch.float32:
                raise TypeError(
                    f"optimizer would step a {p.dtype} parameter of shape {tuple(p.shape)}; "
                    "trainable tensors must be fp32 (nvembed/training/precision.py)"
                )
