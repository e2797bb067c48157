"""Distributed MTEB evaluation: tasks split over Ray actors, results merged into one mteb results folder.

Why our own scheduler: mteb runs tasks one after another in one process and offers no task-level parallelism
(mteb issues #27, #883, #2904). Each actor loads the model once and evaluates whole work items with
``mteb.evaluate``; the driver alone writes results (mteb's own writes are not atomic, MTEB_OFFLINE.md §5.3).

Work items, largest first by the cost table (``mteb_eng_task_cost_estimates.csv``, MiniLM hours on 2 CPUs):

* a plain task is one item;
* ``CQADupstackRetrieval`` is 12 items (its subtasks), combined with the aggregate task's ``combine_task_results``;
* a task evaluated on several ``hf_subsets`` is one item per subset, combined with ``TaskResult.merge``.

Output (an mteb ``ResultCache`` folder): ``<out>/results/<org__model>/<revision>/<Task>.json`` + ``model_meta.json``;
parts of split tasks under ``<out>/parts/...``. Every file is written to a temporary name and renamed. A rerun skips
every task (and part) whose file exists, so nothing finished is encoded again. A failing item is retried
``retries`` times (on a fresh actor if the actor died) and then reported as failed with its error.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any


@dataclass
class WorkItem:
    key: str  # unique: "Task", "Task::subset" or "Aggregate::Subtask"
    task: str  # the benchmark task this item belongs to
    name: str  # the mteb task to run
    subset: str | None = None
    data_dir: str | None = None
    cost: float = 0.0


@dataclass
class EvalOutcome:
    scores: dict[str, float] = field(default_factory=dict)  # task -> main score (0-100)
    failed: dict[str, str] = field(default_factory=dict)  # task -> error
    encoded: dict[str, int] = field(default_factory=dict)  # item key -> texts encoded in this run
    skipped: list[str] = field(default_factory=list)  # tasks found finished on disk
    results_dir: Path | None = None
    seconds: float = 0.0


def load_costs() -> dict[str, float]:
    text = resources.files("evaluation").joinpath("mteb_eng_task_cost_estimates.csv").read_text()
    return {row["task"]: float(row["est_hours_minilm_2cpu"]) for row in csv.DictReader(text.splitlines())}


def resolve_tasks(benchmark: str | None, names: list[str] | None) -> list:
    """Task objects: the benchmark's own (its subset/split restrictions, e.g. STS17 en-en) or ``mteb.get_task``."""
    import mteb

    bench_name = benchmark or "MTEB(eng, v1)"
    bench = {t.metadata.name: t for t in mteb.get_benchmark(bench_name).tasks}
    if not names:
        return list(bench.values())
    out = []
    for name in names:
        if name in bench:
            out.append(bench[name])
        else:
            try:
                out.append(mteb.get_task(name))
            except KeyError as err:
                raise ValueError(f"unknown mteb task {name!r}") from err
    return out


def plan(tasks: list, task_data: dict[str, str], costs: dict[str, float]) -> list[WorkItem]:
    """Split tasks into work items, largest first."""
    items = []
    for task in tasks:
        name = task.metadata.name
        cost = costs.get(name, 0.01)
        # an aggregate task (CQADupstack) lists its subtasks and knows how to combine their results
        sub_tasks = getattr(task.metadata, "tasks", None) if hasattr(task, "combine_task_results") else None
        if sub_tasks:
            for sub in sub_tasks:
                items.append(
                    WorkItem(
                        f"{name}::{sub.metadata.name}",
                        name,
                        sub.metadata.name,
                        None,
                        task_data.get(sub.metadata.name),
                        cost / len(sub_tasks),
                    )
                )
        elif len(task.hf_subsets) > 1 and name not in task_data:
            for subset in task.hf_subsets:
                items.append(WorkItem(f"{name}::{subset}", name, name, subset, None, cost / len(task.hf_subsets)))
        else:
            items.append(WorkItem(name, name, name, None, task_data.get(name), cost))
    return sorted(items, key=lambda i: -i.cost)


# ------------------------------------------------------------------------------------------------ model specs


def model_identity(model: str, baseline: bool | None = None) -> dict[str, Any]:
    """``{"path", "kind"}``: ``nvembed`` for our exports and plain backbones, ``st`` for sentence-transformers."""
    from nvembed.modeling.builders import resolve_model_path

    path = resolve_model_path(model)
    folder = Path(path)
    if baseline is None:
        baseline = (folder / "modules.json").is_file() and not (folder / "nvembed_config.json").is_file()
    return {"model": model, "path": path, "kind": "st" if baseline else "nvembed"}


def build_encoder(spec: dict[str, Any]):
    """The mteb model object for a spec (runs inside each actor)."""
    if spec["kind"] == "st":
        import mteb
        from sentence_transformers import SentenceTransformer

        from evaluation.encoder import folder_fingerprint, make_meta

        st = SentenceTransformer(spec["path"], device="cpu" if not _has_cuda() else "cuda")
        wrapper = mteb.SentenceTransformerEncoderWrapper(st)
        name = spec.get("name") or f"baseline/{Path(spec['model']).name.replace(':', '-')}"
        wrapper.mteb_model_meta = make_meta(
            name,
            folder_fingerprint(spec["path"]),
            st.get_embedding_dimension(),
            st.max_seq_length,
            sum(p.numel() for p in st.parameters()),
        )
        return wrapper
    from evaluation.encoder import NVEmbedEncoder
    from nvembed import Embedder

    emb = Embedder.from_pretrained(spec["path"], **spec.get("options", {}))
    if _has_cuda():
        emb.to("cuda")
    return NVEmbedEncoder(emb, name=spec.get("name"), max_length=spec.get("max_length", 512), source=spec["path"])


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def build_task(item: WorkItem, work_dir: str):
    import mteb

    from evaluation.local import local_task

    if item.subset is not None:
        base = mteb.get_task(item.name)
        task = mteb.get_task(item.name, eval_splits=base.metadata.eval_splits, hf_subsets=[item.subset])
    else:
        bench = {t.metadata.name: t for t in mteb.get_benchmark("MTEB(eng, v1)").tasks}
        task = bench.get(item.name) or mteb.get_task(item.name)
    if item.data_dir:
        task = local_task(task, item.data_dir, work_dir)
    return task


def evaluate_item(encoder, item: WorkItem, work_dir: str, batch_size: int) -> dict[str, Any]:
    """Run one work item; returns the TaskResult as a dict and how many texts were encoded."""
    import mteb

    before = sum(n for *_, n in getattr(encoder, "calls", []))
    task = build_task(item, work_dir)
    t0 = time.perf_counter()
    res = mteb.evaluate(
        encoder,
        [task],
        cache=None,
        overwrite_strategy="always",
        show_progress_bar=False,
        encode_kwargs={"batch_size": batch_size},
        raise_error=True,
    )
    encoded = sum(n for *_, n in getattr(encoder, "calls", [])) - before
    return {"result": res.task_results[0].to_dict(), "encoded": encoded, "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------------ writing


def _atomic_write_result(result, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    result.to_disk(tmp)
    os.replace(tmp, path)


def _atomic_write_text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def combine(task, parts: list):
    """Merge the parts of one task: the aggregate's own combination, or TaskResult.merge over subsets."""
    if hasattr(task, "combine_task_results") and getattr(task.metadata, "tasks", None):
        return task.combine_task_results(parts)
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    return merged


# ------------------------------------------------------------------------------------------------ driver


def identity(spec: dict[str, Any]) -> tuple[str, str]:
    """(mteb model name, revision) computed without loading the model, so finished tasks are found cheaply."""
    from evaluation.encoder import folder_fingerprint, instruction_fingerprint

    if spec.get("name") and spec.get("revision"):
        return spec["name"], spec["revision"]
    if spec["kind"] == "st":
        return f"baseline/{Path(spec['model']).name.replace(':', '-')}", folder_fingerprint(spec["path"])
    return (
        f"nvembed/{Path(spec['path']).name or 'model'}",
        f"{folder_fingerprint(spec['path'])}-{instruction_fingerprint({}, _template(spec['path']))}",
    )


def _template(path: str) -> str:
    cfg = Path(path) / "nvembed_config.json"
    if cfg.is_file():
        return json.loads(cfg.read_text())["config"]["model"]["instruction_template"]
    from nvembed.config import ModelConfig

    return ModelConfig().instruction_template


def run_evaluation(
    model: str,
    output: str | Path,
    tasks: list[str] | None = None,
    benchmark: str | None = None,
    task_data: dict[str, str] | None = None,
    workers: int = 1,
    address: str | None = None,
    retries: int = 1,
    batch_size: int = 32,
    max_length: int = 512,
    cpus_per_worker: float = 1,
    gpus_per_worker: float = 0,
    baseline: bool | None = None,
    log=print,
) -> EvalOutcome:
    """Evaluate ``model`` on the tasks with ``workers`` Ray actors; see the module docstring."""
    import ray
    from mteb.results import TaskResult

    t_start = time.perf_counter()
    # actors run in their own working directory: hand them absolute paths
    task_data = {k: str(Path(v).resolve()) for k, v in (task_data or {}).items()}
    if Path(model).exists():
        model = str(Path(model).resolve())
    names = list(tasks or [])
    names += [n for n in task_data if n not in names and tasks is not None]
    if tasks is None and task_data:
        names = list(task_data)  # only local tasks were asked for
    task_objs = {t.metadata.name: t for t in resolve_tasks(benchmark, names or None)}
    spec = {**model_identity(model, baseline), "max_length": max_length}
    spec["name"], spec["revision"] = identity(spec)
    out = Path(output).resolve()
    key = spec["name"].replace("/", "__")
    results_dir = out / "results" / key / spec["revision"]
    parts_dir = out / "parts" / key / spec["revision"]
    work_dir = str(out / "local-data")
    outcome = EvalOutcome(results_dir=results_dir)

    finished = {n for n in task_objs if (results_dir / f"{n}.json").is_file()}
    outcome.skipped = sorted(finished)
    items = [i for i in plan([task_objs[n] for n in task_objs if n not in finished], task_data, load_costs())]
    multi = {i.task for i in items if i.key != i.task}
    pending = [i for i in items if not (i.task in multi and (parts_dir / f"{i.key}.json").is_file())]
    log(
        f"evaluate: {len(task_objs)} tasks, {len(finished)} already done, {len(pending)} work items to run "
        f"on {min(workers, len(pending)) if pending else 0} workers -> {results_dir}"
    )

    if pending:
        started_ray = False
        if not ray.is_initialized():
            if address or os.environ.get("RAY_ADDRESS"):  # a cluster, or inside a Ray job
                ray.init(address=address or os.environ["RAY_ADDRESS"], log_to_driver=False)
            else:
                ray.init(
                    num_cpus=max(os.cpu_count() or 1, int(workers * cpus_per_worker) + 1),
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
            started_ray = True
        try:
            _schedule(
                pending,
                spec,
                workers,
                retries,
                batch_size,
                cpus_per_worker,
                gpus_per_worker,
                work_dir,
                results_dir,
                parts_dir,
                multi,
                outcome,
                log,
            )
        finally:
            if started_ray:
                ray.shutdown()

    # combine multi-part tasks whose parts are all present
    for name in sorted(multi):
        if name in outcome.failed:
            continue
        keys = [i.key for i in plan([task_objs[name]], task_data, {})]
        paths = [parts_dir / f"{k}.json" for k in keys]
        if all(p.is_file() for p in paths):
            merged = combine(task_objs[name], [TaskResult.from_disk(p) for p in paths])
            _atomic_write_result(merged, results_dir / f"{name}.json")
    if not (results_dir / "model_meta.json").is_file() and (results_dir.is_dir()):
        _atomic_write_text(
            json.dumps({"name": spec["name"], "revision": spec["revision"], "source": spec["path"]}, indent=2),
            results_dir / "model_meta.json",
        )
    for name in task_objs:
        path = results_dir / f"{name}.json"
        if path.is_file():
            outcome.scores[name] = round(100 * TaskResult.from_disk(path).get_score(), 2)
        elif name not in outcome.failed:
            outcome.failed[name] = "no result (an earlier part failed?)"
    outcome.seconds = time.perf_counter() - t_start
    return outcome


def _schedule(
    pending, spec, workers, retries, batch_size, cpus, gpus, work_dir, results_dir, parts_dir, multi, outcome, log
) -> None:
    import ray
    from mteb.results import TaskResult

    @ray.remote
    class EvalWorker:
        def __init__(self, spec: dict[str, Any], threads: int) -> None:
            import torch

            torch.set_num_threads(max(1, threads))
            self.encoder = build_encoder(spec)

        def run(self, item: WorkItem) -> dict[str, Any]:
            return evaluate_item(self.encoder, item, work_dir, batch_size)

    def new_actor():
        return EvalWorker.options(num_cpus=cpus, num_gpus=gpus).remote(spec, int(max(1, cpus)))

    queue = list(pending)
    attempts: dict[str, int] = {}
    actors = [new_actor() for _ in range(min(workers, len(queue)))]
    running: dict[Any, tuple[Any, WorkItem]] = {}
    total, done = len(queue), 0
    idle = list(actors)
    while queue or running:
        while idle and queue:
            actor, item = idle.pop(), queue.pop(0)
            running[actor.run.remote(item)] = (actor, item)
        ready, _ = ray.wait(list(running), num_returns=1)
        ref = ready[0]
        actor, item = running.pop(ref)
        try:
            payload = ray.get(ref)
        except Exception as err:  # task error, or the actor died (RayActorError)
            attempts[item.key] = attempts.get(item.key, 0) + 1
            dead = isinstance(err, ray.exceptions.RayActorError)
            message = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
            if attempts[item.key] <= retries:
                log(f"  {item.key}: failed ({message}); retry {attempts[item.key]}/{retries}")
                queue.insert(0, item)
            else:
                done += 1
                outcome.failed[item.task] = message
                log(f"[{done}/{total}] {item.key}: FAILED after {attempts[item.key]} attempts: {message}")
            idle.append(new_actor() if dead else actor)
            continue
        result = TaskResult.from_dict(payload["result"])
        target = parts_dir / f"{item.key}.json" if item.task in multi else results_dir / f"{item.task}.json"
        _atomic_write_result(result, target)
        outcome.encoded[item.key] = int(payload["encoded"])
        done += 1
        log(
            f"[{done}/{total}] {item.key}: {100 * result.get_score():.2f} ({payload['seconds']:.1f} s, "
            f"{payload['encoded']} texts)"
        )
        idle.append(actor)
