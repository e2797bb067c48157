"""Distributed MTEB evaluation: one :class:`~evaluation.request.EvalRequest` in, one mteb results folder out.

The pieces: :mod:`evaluation.planning` (tasks -> costed work items, which retrieval corpora are sharded),
:mod:`evaluation.scheduler` (the actor pool), :mod:`evaluation.workers` (what an actor runs),
:mod:`evaluation.sharded` (retrieval over corpus shards, scored by mteb's evaluator), :mod:`evaluation.results`
(the folder). This module only wires them: identity of the model, what is already done, Ray, and the outcome.

A rerun skips every task (and part) whose result file exists and every corpus shard whose embeddings exist, so
nothing finished is encoded again.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from evaluation.planning import WorkItem, load_cost_rows, plan, resolve_tasks
from evaluation.request import EvalRequest
from evaluation.results import ResultsFolder, combine
from evaluation.scheduler import ActorPool, ItemFailed, error_file, short
from evaluation.workers import ModelSpec


@dataclass
class EvalOutcome:
    scores: dict[str, float] = field(default_factory=dict)  # task -> main score (0-100)
    failed: dict[str, str] = field(default_factory=dict)  # task -> error (with the path of its whole error)
    encoded: dict[str, int] = field(default_factory=dict)  # item key -> texts encoded in this run
    skipped: list[str] = field(default_factory=list)  # tasks found finished on disk
    sharded: dict[str, int] = field(default_factory=dict)  # sharded task -> shards of its corpus
    results_dir: Path | None = None
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------------ model identity


def model_kind(model: str, baseline: bool | None = None) -> tuple[str, str]:
    """``(resolved path, kind)``: ``nvembed`` for our exports and plain backbones, ``st`` for sentence-transformers."""
    from nvembed.modeling.builders import resolve_model_path

    path = resolve_model_path(model)
    folder = Path(path)
    if baseline is None:
        baseline = (folder / "modules.json").is_file() and not (folder / "nvembed_config.json").is_file()
    return path, "st" if baseline else "nvembed"


def identity(model: str, path: str, kind: str) -> tuple[str, str]:
    """(mteb model name, revision) computed without loading the model, so finished tasks are found cheaply."""
    from evaluation.encoder import folder_fingerprint, instruction_fingerprint

    if kind == "st":
        return f"baseline/{Path(model).name.replace(':', '-')}", folder_fingerprint(path)
    template, policy = _instruction_setting(path)
    revision = f"{folder_fingerprint(path)}-{instruction_fingerprint({}, template, policy)}"
    return f"nvembed/{Path(path).name or 'model'}", revision


def _instruction_setting(path: str) -> tuple[str, str]:
    """(instruction template, instruction policy) of a saved model, read without loading it."""
    from nvembed.config import ModelConfig

    default = ModelConfig()
    cfg: Path | None = Path(path) / "nvembed_config.json"
    if not cfg.is_file() and not Path(path).exists():  # a hub name: read the file the actor will read
        try:
            from huggingface_hub import hf_hub_download

            cfg = Path(hf_hub_download(str(path), "nvembed_config.json"))
        except Exception:  # not an nvembed export on the hub (or offline without a cached copy)
            cfg = None
    model = json.loads(cfg.read_text())["config"]["model"] if cfg is not None and cfg.is_file() else {}
    return (
        model.get("instruction_template", default.instruction_template),
        model.get("instruction_policy", default.instruction_policy),
    )


def _has_prompts(path: str) -> bool:
    cfg = Path(path) / "config_sentence_transformers.json"
    return cfg.is_file() and bool(json.loads(cfg.read_text()).get("prompts"))


# ------------------------------------------------------------------------------------------------ Ray


def _start_ray(request: EvalRequest) -> bool:
    """Connect to the cluster (or start a local Ray); True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    res = request.resources
    address = res.address or os.environ.get("RAY_ADDRESS")
    if address:  # a cluster, or inside a Ray job
        ray.init(address=address, log_to_driver=False)
        return True
    ray.init(
        num_cpus=max(os.cpu_count() or 1, math.ceil(res.workers * res.cpus_per_worker) + 1),
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "env_vars": {
                "TOKENIZERS_PARALLELISM": "false",
                "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0"),
                "HF_DATASETS_OFFLINE": os.environ.get("HF_DATASETS_OFFLINE", "0"),
            }
        },
    )
    return True


def _fit_workers(request: EvalRequest, log) -> tuple[int, float]:
    """(workers, GPUs per worker) that the cluster can actually place: GPU by default when it has GPUs."""
    import ray

    from nvembed.launch.storage import NODE_LOCAL_PREFIXES, alive_nodes

    res = request.resources
    output = Path(request.output).resolve()
    nodes = alive_nodes()
    local = [p for p in NODE_LOCAL_PREFIXES if output == Path(p) or Path(p) in output.parents]
    if nodes > 1 and local:
        raise ValueError(
            f"--output {output} is under {local[0]}, which each of the cluster's {nodes} nodes has its own copy of: "
            "actors on other nodes write shard embeddings there and read each other's. Use a folder on shared "
            "storage (cluster/README.md, 'Storage')."
        )
    cluster = ray.cluster_resources()
    gpus_total, cpus_total = cluster.get("GPU", 0.0), cluster.get("CPU", 0.0)
    gpus = res.gpus_per_worker if res.gpus_per_worker is not None else (1.0 if gpus_total >= 1 else 0.0)
    if gpus > gpus_total:
        raise ValueError(f"gpus_per_worker={gpus} but the Ray cluster has {gpus_total:g} GPUs")
    fits = min(
        int(cpus_total // res.cpus_per_worker) if res.cpus_per_worker else res.workers,
        int(gpus_total // gpus) if gpus else res.workers,
    )
    workers = max(1, min(res.workers, fits))
    if workers < res.workers:
        log(
            f"evaluate: the cluster places {workers} of {res.workers} workers ({cpus_total:g} CPUs, {gpus_total:g} GPU)"
        )
    return workers, gpus


# ------------------------------------------------------------------------------------------------ driver


def run_evaluation(request: EvalRequest, log=print) -> EvalOutcome:
    """Evaluate ``request.model`` on the request's tasks with Ray actors; see the module docstring."""
    from mteb.results import TaskResult

    from evaluation.encoder import make_meta

    t_start = time.perf_counter()
    # actors run in their own working directory: hand them absolute paths
    task_data = {k: str(Path(v).resolve()) for k, v in request.task_data.items()}
    model = str(Path(request.model).resolve()) if Path(request.model).exists() else request.model
    task_objs = {t.metadata.name: t for t in resolve_tasks(request.benchmark, request.task_names)}
    from evaluation.suite import LOCAL_TASKS

    no_data = [
        c.metadata.name for c in LOCAL_TASKS if c.metadata.name in task_objs and c.metadata.name not in task_data
    ]
    if no_data:  # they exist only as local folders: an actor would look for them on the Hub
        raise ValueError(f"task(s) {no_data} of evaluation/suite.py need a local folder: --task-data {no_data[0]}=DIR")
    path, kind = model_kind(model, request.baseline)
    name, revision = identity(model, path, kind)
    folder = ResultsFolder(Path(request.output).resolve(), name, revision)
    meta = make_meta(name, revision, None, request.max_length, None)
    outcome = EvalOutcome(results_dir=folder.results)

    finished = {n for n in task_objs if folder.task_file(n).is_file()}
    outcome.skipped = sorted(finished)
    costs = load_cost_rows(request.benchmark)
    todo = [task_objs[n] for n in task_objs if n not in finished]
    items, shard_docs = plan(
        todo, task_data, costs, workers=request.resources.workers, min_shard_docs=request.shard_docs
    )
    multi = {i.task for i in items if i.key != i.task}
    pending = [i for i in items if not (i.task in multi and folder.part_file(i.key).is_file())]
    n_sharded = sum(i.sharded for i in pending)
    log(
        f"evaluate: {len(task_objs)} tasks, {len(finished)} already done, {len(pending)} work items to run "
        f"({n_sharded} retrieval corpora in shards of {shard_docs} documents) -> {folder.results}"
    )

    if pending:
        import ray

        started = _start_ray(request)
        try:
            workers, gpus = _fit_workers(request, log)
            dtype = request.dtype if request.dtype != "auto" else ("bfloat16" if gpus else "stored")
            spec = ModelSpec(
                model, path, kind, name, revision, request.max_length, request.batch_size, request.batch_tokens,
                dtype, request.merge_lora,
            )  # fmt: skip
            _run(pending, spec, workers, gpus, shard_docs, request, folder, meta, task_data, multi, outcome, log)
        finally:
            if started:
                ray.shutdown()

    # combine multi-part tasks whose parts are all present
    for task_name in sorted(multi):
        if task_name in outcome.failed:
            continue
        keys = [i.key for i in plan([task_objs[task_name]], task_data, {}, workers=1, min_shard_docs=1)[0]]
        paths = [folder.part_file(k) for k in keys]
        if all(p.is_file() for p in paths):
            merged = combine(task_objs[task_name], [TaskResult.from_disk(p) for p in paths])
            folder.write_result(merged, folder.task_file(task_name))
    if folder.results.is_dir():
        folder.write_meta(meta)
    for task_name in task_objs:
        result_path = folder.task_file(task_name)
        if result_path.is_file():
            outcome.scores[task_name] = round(100 * float(TaskResult.from_disk(result_path).get_score()), 2)
        elif task_name not in outcome.failed:
            outcome.failed[task_name] = "no result (an earlier part failed?)"
    outcome.seconds = time.perf_counter() - t_start
    return outcome


def _run(pending, spec, workers, gpus, shard_docs, request, folder, meta, task_data, multi, outcome, log) -> None:
    """Start the actors, submit whole items, run sharded items' mteb evaluation in driver threads, wait."""
    import ray
    from mteb.results import TaskResult

    from evaluation.sharded import EmbeddingCache, ShardedSearch, side_identity
    from evaluation.workers import EvalWorker, build_task, run_mteb

    cpus = request.resources.cpus_per_worker
    actor_cls = ray.remote(EvalWorker)

    def new_actor():
        return actor_cls.options(num_cpus=cpus, num_gpus=gpus).remote(spec, int(max(1, cpus)), str(folder.embeddings))

    # sharded items make many jobs; whole items one each
    size = workers if any(i.sharded for i in pending) else min(workers, len(pending))
    pool = ActorPool(
        new_actor,
        size,
        retries=request.resources.retries,
        errors_dir=folder.errors,
        total_cost=sum(i.cost for i in pending),
        log=log,
    )
    lock = threading.Lock()
    work_dir = str(folder.local_data)

    def target_of(item: WorkItem) -> Path:
        return folder.part_file(item.key) if item.task in multi else folder.task_file(item.task)

    def finish(item: WorkItem, result, encoded: int, seconds: float) -> None:
        folder.write_result(result, target_of(item))
        with lock:
            outcome.encoded[item.key] = encoded
        log(f"  {item.key}: {100 * result.get_score():.2f} ({seconds:.1f} s, {encoded} texts)")

    def fail(item: WorkItem, err: BaseException, details: str | None = None) -> None:
        if details is None:
            details = str(error_file(folder.errors, item.key, "".join(traceback.format_exception(err))))
        with lock:
            outcome.failed[item.task] = f"{err.message if isinstance(err, ItemFailed) else short(err)} ({details})"
        log(f"  {item.key}: FAILED: {outcome.failed[item.task]}")

    def on_done(item: WorkItem, future) -> None:
        err = future.exception()
        if err is not None:
            fail(item, err, err.path if isinstance(err, ItemFailed) else None)
            return
        payload = future.result()
        finish(item, TaskResult.from_dict(payload["result"]), int(payload["encoded"]), payload["seconds"])

    cache = EmbeddingCache(folder.embeddings, spec.cache_identity)
    overrides: dict[str, str] = {}
    prompts = spec.kind == "st" and _has_prompts(spec.path)
    policy = _instruction_setting(spec.path)[1] if spec.kind == "nvembed" else "all"

    def side(task_metadata, prompt_type) -> str:
        return side_identity(spec.kind, prompts, task_metadata, prompt_type, overrides, policy)

    def sharded(item: WorkItem) -> None:
        t0 = time.perf_counter()
        search = ShardedSearch(pool, cache, meta, side, shard_docs, item.cost, item.key)
        try:
            result = run_mteb(search, build_task(item, work_dir, request.benchmark), spec.encode_batch)
        except Exception as err:  # a job failed after its retries (ItemFailed, maybe wrapped by mteb), or mteb itself
            cause: BaseException | None = err
            while cause is not None and not isinstance(cause, ItemFailed):
                cause = cause.__cause__ or cause.__context__
            fail(item, cause or err, cause.path if isinstance(cause, ItemFailed) else None)
            return
        with lock:
            outcome.sharded[item.task] = len(search.shards)
        finish(item, result, search.encoded, time.perf_counter() - t0)

    futures = []
    for item in pending:
        if not item.sharded:
            future = pool.submit(item.key, "task", (item, work_dir, request.benchmark), cost=item.cost)
            future.add_done_callback(lambda f, item=item: on_done(item, f))
            futures.append(future)
    threads = [
        threading.Thread(target=sharded, args=(item,), name=f"eval-{item.key}", daemon=True)
        for item in pending
        if item.sharded
    ]
    for thread in threads:
        thread.start()
    try:
        pool.run(lambda: all(f.done() for f in futures) and not any(t.is_alive() for t in threads))
    finally:
        pool.close()
    for thread in threads:
        thread.join()
