"""One evaluation request, shared by ``nvembed evaluate``, a job config's ``evaluation:`` section and the final
evaluation of a training job (``nvembed/launch/evaluate_job.py``).

Everything the planner, the actors and the results writer need is here, typed; nothing downstream reads argparse
namespaces or string-keyed dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_BENCHMARK = "MTEB(eng, v1)"


@dataclass
class Resources:
    """Where the work runs.

    ``gpus_per_worker=None`` means: one GPU per actor when the cluster has GPUs, none otherwise (an actor without a
    GPU never touches CUDA: Ray leaves ``CUDA_VISIBLE_DEVICES`` unset for it, so ``.to("cuda")`` would land every
    such actor on GPU 0). Torch threads per actor = ``cpus_per_worker``.
    """

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None
    address: str | None = None  # a Ray cluster; default: RAY_ADDRESS, else a local Ray started for the run
    retries: int = 1  # per failing work item, on a fresh actor when the actor died

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")


@dataclass
class EvalRequest:
    """What to evaluate, on what, with what.

    Args:
        model: an nvembed export, a sentence-transformers folder, a hub name or ``packaged:NAME``.
        output: results folder: ``results/`` (mteb ``ResultCache`` layout), ``embeddings/`` (the shard cache),
            ``errors/`` (one traceback per failed item) and the report.
        tasks: mteb task names; ``None``: the whole benchmark (or only ``task_data``'s tasks when that is given).
        benchmark: the mteb benchmark whose task objects (subset/split restrictions) are used.
        task_data: task -> local folder (README "Data").
        baseline: treat ``model`` as a plain sentence-transformers model (``None``: decide from the folder).
        max_length: token cap at evaluation (NV-Embed evaluated at 512).
        batch_size: texts per forward pass; ``None``: chosen by ``batch_tokens``.
        batch_tokens: padded tokens per forward pass when ``batch_size`` is None (short texts batch wider).
        dtype: ``auto`` (bf16 on a GPU actor, the stored dtype on CPU), ``float32``, ``bfloat16``, ``float16``.
        merge_lora: fold LoRA into the backbone before encoding (one matmul per linear layer instead of three).
        shard_docs: smallest corpus shard; a retrieval corpus smaller than two shards stays one whole task.
    """

    model: str
    output: str | Path
    tasks: list[str] | None = None
    benchmark: str = DEFAULT_BENCHMARK
    task_data: dict[str, str] = field(default_factory=dict)
    baseline: bool | None = None
    max_length: int = 512
    batch_size: int | None = None
    batch_tokens: int = 16384
    dtype: str = "auto"
    merge_lora: bool = True
    shard_docs: int = 1000
    resources: Resources = field(default_factory=Resources)

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.batch_tokens < self.max_length:
            raise ValueError(f"batch_tokens ({self.batch_tokens}) must hold one text of max_length ({self.max_length})")
        if self.shard_docs < 1:
            raise ValueError(f"shard_docs must be >= 1, got {self.shard_docs}")

    @property
    def task_names(self) -> list[str] | None:
        """The asked tasks plus the local ones; ``None`` = the whole benchmark."""
        if self.tasks is None:
            return list(self.task_data) or None
        return list(self.tasks) + [n for n in self.task_data if n not in self.tasks]

    @classmethod
    def from_config(cls, ev, model: str | Path, output: str | Path, address: str | None = None) -> EvalRequest:
        """A job config's ``evaluation:`` section (:class:`nvembed.config.EvaluationConfig`) for ``model``."""
        return cls(
            model=str(model),
            output=output,
            tasks=list(ev.tasks),
            benchmark=ev.benchmark,
            task_data={k: v for k, v in ev.tasks.items() if v},
            max_length=ev.max_length,
            batch_size=ev.batch_size,
            batch_tokens=ev.batch_tokens,
            shard_docs=ev.shard_docs,
            resources=Resources(
                workers=ev.workers,
                cpus_per_worker=ev.cpus_per_worker,
                gpus_per_worker=ev.gpus_per_worker,
                address=address,
            ),
        )
