"""What to run: tasks resolved from the benchmark, split into work items, costed, largest first.

Work items (costs from ``mteb_eng_task_cost_estimates.csv``: MiniLM hours on 2 CPUs, per benchmark):

* a plain task is one item, run whole by one actor through ``mteb.evaluate``;
* ``CQADupstackRetrieval`` is 12 items (its subtasks), combined with the aggregate task's ``combine_task_results``;
* a task evaluated on several ``hf_subsets`` is one item per subset, combined with ``TaskResult.merge``;
* a **retrieval task whose corpus holds at least two shards** is a *sharded* item: mteb's own retrieval evaluator
  runs it on the driver against :class:`evaluation.sharded.ShardedSearch`, which turns the corpus into shard-encode
  jobs, a query-encode job and one top-k job per shard, scheduled on the actors with everything else.

The shard size is one number per run (``shard_size``), so two tasks over the same corpus cut it at the same rows and
share every shard's cached embeddings.
"""

from __future__ import annotations

import csv
import heapq
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from evaluation.request import DEFAULT_BENCHMARK

SHARDS_PER_WORKER = 4  # corpus shards per worker in a run: enough to balance, few enough to keep overheads small
# a sharded task's cost is split into its jobs in these proportions (MiniLM measurements: queries are short and few)
CORPUS_SHARE, QUERY_SHARE, SEARCH_SHARE = 0.95, 0.04, 0.01


@dataclass
class WorkItem:
    key: str  # unique: "Task", "Task::subset" or "Aggregate::Subtask"
    task: str  # the benchmark task this item belongs to
    name: str  # the mteb task to run
    subset: str | None = None
    data_dir: str | None = None
    cost: float = 0.0
    sharded: bool = False  # a retrieval corpus split into shards (see the module docstring)
    docs: int = 0  # corpus documents (estimate), for sharded items


def load_costs(benchmark: str = DEFAULT_BENCHMARK) -> dict[str, float]:
    """Task -> estimated MiniLM hours; the benchmark's own rows win over another benchmark's row for the task."""
    return {name: row[0] for name, row in load_cost_rows(benchmark).items()}


def load_cost_rows(benchmark: str = DEFAULT_BENCHMARK) -> dict[str, tuple[float, int, int, str]]:
    """Task -> (hours, texts encoded, tokens, type), this benchmark's rows first."""
    text = resources.files("evaluation").joinpath("mteb_eng_task_cost_estimates.csv").read_text()
    rows: dict[str, tuple[float, int, int, str]] = {}
    for row in csv.DictReader(text.splitlines()):
        value = (float(row["est_hours_minilm_2cpu"]), int(row["texts_encoded"]), int(row["est_tokens"]), row["type"])
        if row["benchmark"] == benchmark or row["task"] not in rows:
            rows[row["task"]] = value
    return rows


def resolve_tasks(benchmark: str, names: list[str] | None) -> list:
    """Task objects: the benchmark's own (its subset/split restrictions, e.g. STS17 en-en) or ``mteb.get_task``
    (which also knows the local tasks of :mod:`evaluation.suite`)."""
    import mteb

    from evaluation.suite import register

    register()

    bench = {t.metadata.name: t for t in mteb.get_benchmark(benchmark).tasks}
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


def corpus_docs(task, data_dir: str | None, texts_estimate: int) -> int:
    """Documents in a retrieval task's corpus: lines of a local ``corpus.jsonl``, else the cost table's estimate."""
    if data_dir:
        path = Path(data_dir) / "corpus.jsonl"
        if path.is_file():
            with open(path, "rb") as fh:
                return sum(1 for line in fh if line.strip())
        return 0
    return texts_estimate


def shard_size(total_docs: int, workers: int, min_docs: int) -> int:
    """Documents per corpus shard: about ``SHARDS_PER_WORKER`` shards per worker over all corpora, >= ``min_docs``."""
    return max(min_docs, math.ceil(total_docs / (workers * SHARDS_PER_WORKER)) if total_docs else min_docs)


def plan(
    tasks: list,
    task_data: dict[str, str],
    costs: dict[str, tuple[float, int, int, str]],
    *,
    workers: int,
    min_shard_docs: int,
) -> tuple[list[WorkItem], int]:
    """Work items, largest first, and the run's shard size (documents)."""
    items: list[WorkItem] = []
    for task in tasks:
        name = task.metadata.name
        cost, texts, *_ = costs.get(name, (0.01, 0, 0, ""))
        # an aggregate task (CQADupstack) lists its subtasks and knows how to combine their results
        sub_tasks = getattr(task.metadata, "tasks", None) if hasattr(task, "combine_task_results") else None
        if sub_tasks:
            for sub in sub_tasks:
                key, data = f"{name}::{sub.metadata.name}", task_data.get(sub.metadata.name)
                items.append(WorkItem(key, name, sub.metadata.name, None, data, cost / len(sub_tasks)))
        elif len(task.hf_subsets) > 1 and name not in task_data:
            for subset in task.hf_subsets:
                items.append(WorkItem(f"{name}::{subset}", name, name, subset, None, cost / len(task.hf_subsets)))
        else:
            item = WorkItem(name, name, name, None, task_data.get(name), cost)
            if task.metadata.type == "Retrieval" and len(task.metadata.eval_splits) == 1:
                item.docs = corpus_docs(task, item.data_dir, texts)
            items.append(item)
    size = shard_size(sum(i.docs for i in items), workers, min_shard_docs)
    for item in items:
        item.sharded = item.docs >= 2 * size
    return sorted(items, key=lambda i: -i.cost), size


# ------------------------------------------------------------------------------------------------ simulation


@dataclass
class Job:
    """A schedulable unit of work in the simulation: cost, and the jobs that must finish first."""

    key: str
    cost: float
    after: tuple[str, ...] = ()


def expand(items: list[WorkItem], size: int, shared: dict[str, str] | None = None) -> list[Job]:
    """The jobs the scheduler runs for these items: whole items, or shard / query / search jobs of sharded ones.

    ``shared`` maps a task to another task whose corpus it uses (FEVER and ClimateFEVER): its shards are not encoded
    again (the embedding cache), only its queries and searches run.
    """
    shared = shared or {}
    jobs: list[Job] = []
    for item in items:
        if not item.sharded:
            jobs.append(Job(item.key, item.cost))
            continue
        n = math.ceil(item.docs / size)
        owner = shared.get(item.task, item.task)
        shard_keys = [f"{owner}::shard{i}" for i in range(n)]
        if owner == item.task:
            jobs += [Job(k, item.cost * CORPUS_SHARE / n) for k in shard_keys]
        query = Job(f"{item.key}::queries", item.cost * QUERY_SHARE)
        jobs.append(query)
        jobs += [
            Job(f"{item.key}::search{i}", item.cost * SEARCH_SHARE / n, (shard_keys[i], query.key)) for i in range(n)
        ]
    return jobs


def simulate(jobs: list[Job], workers: int) -> float:
    """Makespan of the scheduler's policy: whenever a worker is free it takes the costliest job whose inputs exist."""
    done_at: dict[str, float] = {}
    waiting = list(jobs)
    free = [0.0] * workers  # heap of times at which each worker is next free
    heapq.heapify(free)
    while waiting:
        now = heapq.heappop(free)
        ready = [j for j in waiting if all(done_at.get(d, math.inf) <= now for d in j.after)]
        if not ready:  # wait for the earliest dependency to finish
            pending = [done_at[d] for j in waiting for d in j.after if d in done_at and done_at[d] > now]
            heapq.heappush(free, min(pending) if pending else now)
            continue
        job = max(ready, key=lambda j: j.cost)
        waiting.remove(job)
        done_at[job.key] = now + job.cost
        heapq.heappush(free, now + job.cost)
    return max(done_at.values(), default=0.0)
