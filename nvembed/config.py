"""The typed configuration tree.

One dataclass per section; each field has a one-line doc (the comment on its line). Only builders
(``nvembed.modeling.builders``) read these objects; modules take explicit numbers (DESIGN.md §5 rules 2-3).

``from_dict`` rejects unknown keys with their dotted path, and ``apply_overrides`` takes the same dotted
``a.b=c`` strings that the CLI's ``--set`` and Tune search spaces use.

Config files and ``--set`` values are read with :func:`load_config_yaml`: YAML with the YAML 1.2 core schema's
booleans (only ``true``/``false``), so ``autocast: off`` and ``--set stage1.run.autocast=off`` give the string
``"off"`` instead of PyYAML's YAML 1.1 ``False``; bool fields still accept yes/no/on/off.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names its dotted path."""


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose booleans are YAML 1.2's (``true``/``false`` in three casings) only.

    PyYAML implements YAML 1.1, where ``off``, ``on``, ``no``, ``yes``, ``y``, ``n`` are booleans too. A string
    field whose valid values include such a word (``run.autocast: off``) then received ``False`` and was rejected
    (``expected str, got False``), and converting back is ambiguous (``no``, ``off`` and ``false`` all give
    False). Keeping the word as written fixes it at the source; the bool fields accept the words themselves
    (see ``_coerce``), so ``use_gpu: yes`` keeps working.
    """


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

# YAML 1.1 boolean words: what a bool field accepts as a string now that the loader keeps them as written.
_BOOL_WORDS = {
    **dict.fromkeys(("yes", "y", "on", "true"), True),
    **dict.fromkeys(("no", "n", "off", "false"), False),
}


def load_config_yaml(text: str) -> Any:
    """Parse config YAML (a file or one ``--set`` value) with :class:`ConfigLoader`."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - ConfigLoader is a SafeLoader


@dataclass
class ModelConfig:
    """The backbone and how it is run."""

    name_or_path: str = "mistralai/Mistral-7B-v0.1"  # HF hub name or local folder (AutoModel)
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16: backbone weights
    attn_implementation: str | None = "sdpa"  # eager | sdpa | flash_attention_2 | None (transformers default)
    bidirectional: bool = True  # remove the causal mask of decoder-only backbones (NV-Embed §3.1)
    max_length: int = 512  # token cap per text, specials included (NV-Embed trains at 512)
    instruction_template: str = "Instruct: {instruction}\nQuery: "  # query prefix (NV-Embed eq. 2)
    # which task types get instructions, in training and evaluation: all (NV-Embed) | asymmetric (retrieval and
    # reranking queries only: for a backbone pretrained without instructions) | none (nvembed/data/instructions.py)
    instruction_policy: str = "all"
    gradient_checkpointing: bool = False  # non-reentrant activation checkpointing in the backbone

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"model.dtype must be auto|float32|bfloat16|float16, got {self.dtype!r}")
        if self.max_length < 4:
            raise ConfigError(f"model.max_length must be >= 4, got {self.max_length}")
        if "{instruction}" not in self.instruction_template:
            raise ConfigError("model.instruction_template must contain '{instruction}'")
        if self.instruction_policy not in ("all", "asymmetric", "none"):
            raise ConfigError(f"model.instruction_policy must be all|asymmetric|none, got {self.instruction_policy!r}")


@dataclass
class PoolingConfig:
    """How token states become one embedding (NV-Embed §3.2; ablations in Table 2)."""

    kind: str = "latent"  # latent | mean | last | cls (cls: first token, for CLS-trained encoders)
    num_latents: int = 512  # r, rows of the latent array
    num_heads: int = 8  # h, cross-attention heads
    head_dim: int | None = None  # d_head; None = backbone hidden size (4096 for Mistral-7B, as released)
    ff_mult: int = 4  # GEGLU expansion
    normalize: bool = True  # L2-normalise the output
    zero_init_residual: bool = False  # start the latent block as identity (= mean pooling); see CALIBRATION.md

    def __post_init__(self) -> None:
        if self.kind not in ("latent", "mean", "last", "cls"):
            raise ConfigError(f"pooling.kind must be latent|mean|last|cls, got {self.kind!r}")
        for name in ("num_latents", "num_heads", "ff_mult"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pooling.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class LoraConfig:
    """LoRA on the backbone through peft; the pooling head is always trained fully (spec pitfall 15)."""

    enabled: bool = False  # wrap the backbone with LoRA adapters
    rank: int = 16  # r
    alpha: int = 32  # scaling numerator (alpha / r)
    dropout: float = 0.1  # dropout on the adapter input
    target_modules: list[str] | str = "all-linear"  # peft target; "all-linear" = every Linear of the LLM

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"lora.rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class EmbedderConfig:
    """Everything needed to build an embedder: backbone, pooling, LoRA."""

    model: ModelConfig = field(default_factory=ModelConfig)
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DatasetConfig:
    """One training dataset and how to turn it into (query, positive, negatives) rows."""

    name: str  # dataset key (blend weights, logs); default instruction key
    format: str  # beir | triplets | sts | classification | clustering | pair | reranking
    path: str  # file (JSONL/Parquet) or BEIR folder; relative paths resolve against the config file's folder
    split: str = "train"  # qrels split for beir
    task: str | None = None  # instruction registry key (nvembed/data/instructions.py); None = name
    weight: float = 1.0  # blend weight (NV-Embed's are unpublished; ours are recorded here)
    max_rows: int | None = None  # keep the first N converted rows (after a seeded shuffle)
    mine_negatives: bool = False  # mine hard negatives with data.mining (beir, sts, pair, triplets)
    num_negatives: int | None = None  # negatives per row for example-based / reranking; None = run.num_negatives
    label_texts: dict[str, str] | None = None  # binary classification: label -> text used as document
    min_score: float = 4.0  # sts: keep pairs scoring at least this on a 0-5 scale
    max_score: float = 5.0  # sts: the file's scale maximum
    instruction: str | None = None  # query instruction of this dataset; None = the registry's entry for `task`
    doc_instruction: str | None = None  # also put on documents (symmetric data); None = the format's default

    def __post_init__(self) -> None:
        formats = ("beir", "triplets", "sts", "classification", "clustering", "pair", "reranking")
        if self.format not in formats:
            raise ConfigError(
                f"data.datasets[{self.name}].format must be one of {'|'.join(formats)}, got {self.format!r}"
            )
        if self.weight < 0:
            raise ConfigError(f"data.datasets[{self.name}].weight must be >= 0")


@dataclass
class MiningConfig:
    """Positive-aware hard-negative mining (TopK-PercPos, spec §2.3)."""

    teacher: str | None = None  # embedder folder or hub name; None = the packaged MiniLM
    teacher_pooling: str = "mean"  # pooling used when the teacher is a plain backbone
    teacher_bidirectional: bool = True  # False for causal teachers such as e5-mistral-7b-instruct
    use_instructions: bool = False  # apply task instructions on the teacher's query side
    k: int = 7  # negatives kept per (query, positive)
    margin: float = 0.95  # drop candidates scoring above margin x positive score
    depth: int = 100  # candidates retrieved per query before filtering
    sample_from_top: int | None = None  # sample k from the top-n survivors instead of the top k
    index: str = "flat"  # faiss index: flat | ivf | hnsw
    batch_size: int = 64  # teacher encode batch
    max_length: int = 256  # teacher token cap
    shard_size: int = 50000  # corpus texts encoded per shard


@dataclass
class CurationConfig:
    """How `nvembed prepare` spreads curation over a Ray cluster (nvembed/launch/prepare.py)."""

    workers: int | None = None  # teacher actors (encode + search); None = scaling.num_workers
    cpus_per_worker: float = 1.0  # CPUs per actor (its torch / faiss threads)
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0 (CPU actors)
    part_bytes: int = 8_000_000  # a corpus / query file is cut into parts of about this many bytes
    pairs_per_part: int = 4096  # (query, positive) pairs searched per task


@dataclass
class DataConfig:
    """Where training rows come from."""

    datasets: list[DatasetConfig] = field(default_factory=list)  # blended in every batch
    on_error: str = "raise"  # raise: stop at the first bad row (file:line: reason) | skip: count and go on
    decontaminate: list[str] = field(default_factory=list)  # eval files/BEIR folders whose texts are removed
    near_duplicate_threshold: float | None = None  # also drop word-3-gram Jaccard >= this (None: exact only)
    mining: MiningConfig = field(default_factory=MiningConfig)
    cache_dir: str | None = None  # where curated rows are kept (default: <output_dir>/data, shared by both stages)
    curation: CurationConfig = field(default_factory=CurationConfig)

    def __post_init__(self) -> None:
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"data.on_error must be raise|skip, got {self.on_error!r}")


@dataclass
class LossConfig:
    """InfoNCE (spec §2.1)."""

    temperature: float = 0.02  # tau; not published for NV-Embed (GritLM/E5 use 0.02)
    in_batch_negatives: bool | None = None  # None = stage default (stage 1 on, stage 2 off: pitfall 9)
    # Matryoshka: also train these leading slices of the embedding (renormalised) with the same loss, averaged
    # with the full one, so `encode(dimensions=...)` truncation is learned, not only applied; None = off
    matryoshka_dims: list[int] | None = None
    # distillation from a frozen teacher (recovery after `nvembed compress`, issue 16): the loss adds
    # distill_weight * (1 - cos) (or MSE) between each query / document embedding and the teacher's; None = off
    distill_from: str | None = None  # the teacher's export folder (e.g. the uncompressed model)
    distill_weight: float = 1.0
    distill_kind: str = "cosine"  # cosine | mse

    def __post_init__(self) -> None:
        if self.distill_weight < 0:
            raise ConfigError(f"loss.distill_weight must be >= 0, got {self.distill_weight}")
        if self.distill_kind not in ("cosine", "mse"):
            raise ConfigError(f"loss.distill_kind must be cosine or mse, got {self.distill_kind!r}")
        if self.temperature <= 0:
            raise ConfigError(f"loss.temperature must be > 0, got {self.temperature}")
        if self.matryoshka_dims is not None and (
            not self.matryoshka_dims
            or any(int(m) < 1 for m in self.matryoshka_dims)
            or len(set(self.matryoshka_dims)) != len(self.matryoshka_dims)
        ):
            raise ConfigError(f"loss.matryoshka_dims must be distinct positive widths, got {self.matryoshka_dims}")


@dataclass
class OptimConfig:
    """AdamW + linear warm-up and decay (spec §2.2: lr 2e-5 / 1.5e-5, warm-up 500, wd 0.03; all [R])."""

    lr: float = 2e-5  # backbone / adapter learning rate
    head_lr: float | None = None  # pooling-head learning rate (None = lr)
    weight_decay: float = 0.03  # not applied to biases and norms
    warmup_steps: int = 500  # linear warm-up
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam betas
    eps: float = 1e-8  # Adam epsilon
    grad_clip: float | None = 1.0  # max global gradient norm (None: off)


@dataclass
class RunConfig:
    """One training stage: length, batch, checkpoints, output."""

    stage: int = 1  # 1: retrieval, in-batch + hard negatives; 2: blend, hard negatives only
    max_steps: int = 20000  # optimizer steps (spec: 20k stage 1, 18k stage 2 [R])
    batch_size: int = 128  # global queries per step (split evenly over workers)
    num_negatives: int = 7  # hard negatives per query
    chunk_size: int | None = None  # GradCache chunk rows per worker; None = plain loss
    query_max_length: int = 512  # query token cap
    doc_max_length: int = 512  # document token cap
    seed: int = 42  # model init, data order, dropout
    checkpoint_every: int = 500  # steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2  # step-N folders kept
    log_every: int = 10  # steps between console lines
    output_dir: str = "runs/nvembed"  # checkpoints, metrics.jsonl, resolved config, final model
    init_from: str | None = None  # stage 2: the stage-1 run's final model folder
    autocast: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ConfigError(f"run.stage must be 1 or 2, got {self.stage}")
        if self.max_steps < 1 or self.batch_size < 1:
            raise ConfigError("run.max_steps and run.batch_size must be >= 1")
        if self.autocast not in ("auto", "bf16", "fp16", "off"):
            raise ConfigError(f"run.autocast must be auto|bf16|fp16|off, got {self.autocast!r}")


@dataclass
class ScalingConfig:
    """Where a stage runs (Ray Train ``ScalingConfig``); CPU workers here, one GPU per worker on a cluster."""

    num_workers: int = 1  # data-parallel workers (ranks)
    use_gpu: bool = False  # one GPU per worker
    cpus_per_worker: float = 1.0  # logical CPUs reserved per worker (fractional is fine on small machines)
    engine: str = "ddp"  # ddp: plain torch, gradients averaged across ranks | deepspeed: ZeRO (see deepspeed)
    max_failures: int = 0  # worker failures tolerated (restart from the last checkpoint)
    storage_path: str | None = None  # Ray Train storage (default: <output_dir>/ray); shared path or s3:// / gs://
    shared_root: str | None = None  # the mount every node sees (e.g. /mnt/shared): shared paths must lie under it
    worker_resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources each worker requires

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"scaling.num_workers must be >= 1, got {self.num_workers}")
        if self.engine not in ("ddp", "deepspeed"):
            raise ConfigError(f"scaling.engine must be ddp|deepspeed, got {self.engine!r}")
        if {"CPU", "GPU"} & set(self.worker_resources):
            raise ConfigError("scaling.worker_resources: set CPU and GPU with cpus_per_worker and use_gpu")


@dataclass
class DeepSpeedConfig:
    """DeepSpeed ZeRO settings, merged over the section file ``config`` (jobs/configs/deepspeed/zero3.yaml)."""

    config: str = "jobs/configs/deepspeed/zero3.yaml"  # base ZeRO section (YAML or JSON)
    stage: int = 3  # ZeRO stage
    param_persistence_threshold: int | None = None  # stage3_param_persistence_threshold (0 = partition everything)
    bf16: bool | None = None  # None: on with GPUs, off on CPU
    offload_optimizer: bool = False  # optimizer states on CPU (DeepSpeedCPUAdam; JIT-compiled on first use)


@dataclass
class DevConfig:
    """Held-out dev metrics during training (``nvembed/dev.py``) and the Ray Tune objective (``tune/``).

    Never an evaluation task's test split: a dev check that peeks at the test set makes every sweep overfit it.
    """

    every: int = 0  # steps between dev evaluations (0: only at the end of each stage)
    retrieval: str | None = None  # BEIR folder of the retrieval dev slice (e.g. nvembed/resources/dev/snli)
    retrieval_split: str = "dev"  # its qrels split (qrels/<split>.tsv)
    retrieval_task: str | None = None  # instruction registry key for its queries; None = the folder name
    max_queries: int | None = 100  # seeded sample of dev queries (None: all)
    max_corpus: int | None = 1000  # corpus cap: every judged document + a seeded sample of the others (None: all)
    sts: str | None = None  # STS dev file {sentence1, sentence2, score} (e.g. stsbenchmark/dev.jsonl)
    sts_task: str = "STSBenchmark"  # instruction registry key for the STS pairs
    max_sts_pairs: int | None = 500  # seeded sample of pairs (None: all)
    retrieval_weight: float = 0.5  # objective = weighted mean of nDCG@10 and Spearman (both 0-100)
    sts_weight: float = 0.5  # weight of STS Spearman in the objective
    batch_size: int = 64  # encode batch
    max_length: int = 256  # token cap of dev texts
    on_error: str = "raise"  # raise: stop at a bad dev row (file:line: reason) | skip: count and leave it out

    def __post_init__(self) -> None:
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"dev.on_error must be raise|skip, got {self.on_error!r}")
        if self.every < 0:
            raise ConfigError(f"dev.every must be >= 0, got {self.every}")
        if self.retrieval_weight < 0 or self.sts_weight < 0:
            raise ConfigError("dev.retrieval_weight and dev.sts_weight must be >= 0")


@dataclass
class TrackingConfig:
    """Experiment tracking (nvembed/tracking.py): MLflow and TensorBoard, written by rank 0; ``track`` extra."""

    mlflow: bool = True  # params, per-step and dev metrics, final evaluation scores
    mlflow_uri: str | None = None  # tracking URI; None = sqlite:///<output_dir>/mlflow.db (a local file)
    experiment: str = "nvembed"  # MLflow experiment name
    run_name: str | None = None  # None = the job's output folder name
    tensorboard: bool = True  # event files under tensorboard_dir
    tensorboard_dir: str | None = None  # None = <output_dir>/tensorboard


@dataclass
class TrainConfig:
    """A training stage: embedder + data + loss + optimiser + run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    dev: DevConfig | None = None  # dev metrics every dev.every steps (None: off)
    tracking: TrackingConfig | None = None  # MLflow / TensorBoard (None: off); paths resolved by the job

    def __post_init__(self) -> None:
        if self.run.batch_size % self.scaling.num_workers:
            workers = self.scaling.num_workers
            raise ConfigError(
                f"run.batch_size={self.run.batch_size} must be divisible by scaling.num_workers={workers}"
            )
        if self.run.stage == 2 and not self.run.init_from:
            raise ConfigError("run.init_from is required for stage 2 (the stage-1 final model folder)")
        if self.loss.distill_from and self.scaling.engine == "deepspeed":
            raise ConfigError(
                "loss.distill_from runs a full teacher replica on every rank: use scaling.engine=ddp (ZeRO-3 "
                "partitioning of the teacher is not implemented)"
            )

    def embedder_config(self) -> EmbedderConfig:
        return EmbedderConfig(model=self.model, pooling=self.pooling, lora=self.lora)

    @property
    def in_batch_negatives(self) -> bool:
        return self.run.stage == 1 if self.loss.in_batch_negatives is None else self.loss.in_batch_negatives


@dataclass
class StageConfig:
    """What differs between the two stages: data, loss, optimiser, run length."""

    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


@dataclass
class EvaluationConfig:
    """MTEB evaluation of the job's final model (``nvembed evaluate`` with these settings)."""

    tasks: dict[str, str] = field(default_factory=dict)  # mteb task -> local data folder ("" = the task's Hub data)
    benchmark: str = "MTEB(eng, v1)"  # whose task objects (subset/split restrictions) are used
    workers: int = 2  # Ray actors
    cpus_per_worker: float = 1.0  # logical CPUs per actor (= its torch threads)
    gpus_per_worker: float | None = None  # None: 1 per actor when the cluster has GPUs, else 0
    max_length: int = 512  # token cap
    batch_size: int | None = None  # texts per forward pass; None: by batch_tokens
    batch_tokens: int = 16384  # padded tokens per forward pass when batch_size is None
    shard_docs: int = 1000  # smallest retrieval-corpus shard (a corpus under two shards is one whole task)
    baseline: str | None = None  # also evaluate this model (e.g. the untrained backbone) for comparison


@dataclass
class JobConfig:
    """A training job: one embedder, stage 1 then stage 2 (initialised from stage 1's final model)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    stage1: StageConfig | None = None  # retrieval, in-batch + hard negatives (None: skip)
    stage2: StageConfig | None = None  # blend, hard negatives only (None: skip)
    evaluation: EvaluationConfig | None = None  # after the last stage (None: skip)
    dev: DevConfig | None = None  # held-out dev metrics during both stages; the Tune objective (None: off)
    tracking: TrackingConfig | None = None  # MLflow + TensorBoard of both stages (None: off)
    output_dir: str = "runs/nvembed"  # stage N writes <output_dir>/stageN/

    def __post_init__(self) -> None:
        if self.stage1 is None and self.stage2 is None:
            raise ConfigError("a job needs stage1 and/or stage2")

    def stages(self) -> list[int]:
        return [n for n, s in ((1, self.stage1), (2, self.stage2)) if s is not None]

    def stage_config(self, n: int) -> TrainConfig:
        """The full config of stage ``n``; stage 2 starts from ``<output_dir>/stage1/final`` unless told otherwise."""
        stage = self.stage1 if n == 1 else self.stage2
        if stage is None:
            raise ConfigError(f"this job has no stage{n} section")
        run = dataclasses.replace(stage.run, stage=n, output_dir=f"{self.output_dir}/stage{n}")
        if n == 2 and not run.init_from:
            run.init_from = f"{self.output_dir}/stage1/final"
        data = stage.data
        if data.cache_dir is None:  # one cache for both stages: rows mined for stage 1 are reused by stage 2
            data = dataclasses.replace(data, cache_dir=f"{self.output_dir}/data")
        return TrainConfig(
            self.model,
            self.pooling,
            self.lora,
            data,
            stage.loss,
            stage.optim,
            run,
            self.scaling,
            self.deepspeed,
            self.dev,
            self.resolved_tracking(),
        )

    def resolved_tracking(self) -> TrackingConfig | None:
        """``tracking`` with its defaults made concrete (absolute paths: Ray workers run elsewhere)."""
        if self.tracking is None:
            return None
        root = os.path.abspath(self.output_dir)
        t = self.tracking
        return dataclasses.replace(
            t,
            mlflow_uri=t.mlflow_uri or f"sqlite:///{root}/mlflow.db",
            run_name=t.run_name or os.path.basename(root),
            tensorboard_dir=(os.path.abspath(t.tensorboard_dir or f"{root}/tensorboard") if t.tensorboard else None),
        )


# --------------------------------------------------------------------------------------------- generic tree code


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check/convert a YAML value against a field type (dataclass, Optional, list, primitive)."""
    if _is_dataclass_type(tp):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, path)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{path}: {value!r} matches none of {tp}: {'; '.join(errors)}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        _, val_tp = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and isinstance(value, str) and value.lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.lower()]  # yes/no/on/off, YAML 1.1 booleans, kept as words by ConfigLoader
    if tp is str and isinstance(value, bool):
        raise ConfigError(
            f"{path}: expected str, got {value!r} (write the word as a string, e.g. 'off', if that is what is meant)"
        )
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads "1e-5" as a string
        except ValueError as err:
            raise ConfigError(f"{path}: expected float, got {value!r}") from err
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys raise :class:`ConfigError` naming their path."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = path or cls.__name__
        raise ConfigError(
            f"unknown key {(path + '.' if path else '') + unknown[0]!r} in {where} (valid: {', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path or cls.__name__}: {err}") from err


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict view (what gets saved next to a run and shipped to Ray workers)."""
    return dataclasses.asdict(cfg)


def parse_override(text: str) -> tuple[str, Any]:
    """``"lora.rank=32"`` -> ``("lora.rank", 32)``; the value is parsed as YAML (numbers, lists, null).

    Only ``true``/``false`` are booleans (:class:`ConfigLoader`): ``run.autocast=off`` gives ``"off"``.
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    if not raw.strip():
        return key.strip(), ""
    try:
        return key.strip(), load_config_yaml(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: invalid YAML value: {err}") from err


def apply_overrides(cfg: Any, overrides: dict[str, Any] | list[str]) -> Any:
    """Return a new config with dotted overrides applied and validated (shared by the CLI and Tune).

    List items are addressed by position or by name: ``stage2.data.datasets[stsbenchmark].weight=3``.
    """
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    data = to_dict(cfg)
    for dotted, value in overrides.items():
        node: Any = data
        parts = [p for part in dotted.split(".") for p in _split_index(part)]
        for i, part in enumerate(parts):
            where = "".join(f"[{p[1]}]" if isinstance(p, tuple) else f".{p}" for p in parts[: i + 1]).lstrip(".")
            if isinstance(part, tuple):  # datasets[2] or datasets[snli]: an item of a list
                node = _list_item(node, part[1], where, f"{dotted}={value!r}")
                continue
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"unknown key {where!r} in override {dotted}={value!r}")
            if i == len(parts) - 1:
                node[part] = value
            else:
                node = node[part]
    return from_dict(type(cfg), data)


def _split_index(part: str) -> list[Any]:
    """``"datasets[3]"`` -> ``["datasets", ("[]", "3")]``; other parts unchanged."""
    match = re.fullmatch(r"(\w+)\[([^\]]+)\]", part)
    return [match.group(1), ("[]", match.group(2))] if match else [part]


def _list_item(node: Any, key: str, where: str, override: str) -> Any:
    """A list item by position (``[0]``) or, for lists of named sections, by ``name`` (``[stsbenchmark]``)."""
    if not isinstance(node, list):
        raise ConfigError(f"{where!r} in override {override}: not a list")
    if key.isdigit() and int(key) < len(node):
        return node[int(key)]
    named = [item for item in node if isinstance(item, dict) and item.get("name") == key]
    if len(named) == 1:
        return named[0]
    names = [item.get("name") for item in node if isinstance(item, dict)]
    raise ConfigError(f"{where!r} in override {override}: no item {key!r} (0..{len(node) - 1} or one of {names})")


def load_yaml(path: str, cls: type, overrides: list[str] | None = None) -> Any:
    """Read a YAML file into ``cls`` and apply ``--set`` overrides; errors name the file."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    unresolved: list[str] = []

    def expand(match: re.Match) -> str:  # ${VAR} or ${VAR:-default}, e.g. a model folder made by a test
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        unresolved.append(name)
        return match.group(0)

    text = re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", expand, text)
    if unresolved:
        raise ConfigError(f"{path}: environment variable(s) not set: {', '.join(sorted(set(unresolved)))}")
    try:
        data = load_config_yaml(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    try:
        cfg = from_dict(cls, data)
        return apply_overrides(cfg, overrides or [])
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
