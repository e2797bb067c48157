"""The evaluation planner on MTEB(eng, v1) for a 7B model: planned makespan vs the perfect-balance lower bound and
vs the task-per-worker plan the previous runner used, for 8 and 64 workers.

Costs: ``evaluation/mteb_eng_task_cost_estimates.csv`` gives tokens per task; a 7B model (Mistral-7B, 7.1e9
parameters) spends ``2 * 7.1e9`` FLOPs per token forward, and one H100 sustains 40% of 989 bf16 TFLOP/s, so a task
costs ``2 * 7.1e9 * tokens / (0.4 * 989e12)`` GPU-seconds. MSMARCO comes out at ~7 GPU-hours, as the issue says.

The planner is the real one (:func:`evaluation.planning.plan` on mteb's task objects of the benchmark, shard size
from the same rule as a run); the schedule is :func:`evaluation.planning.simulate`, which follows the actor pool's
rule (a free worker takes the costliest job whose inputs exist; a shard's top-k waits for its shard and its task's
queries). ClimateFEVER's corpus is FEVER's (the same 5.4M Wikipedia passages): with the embedding cache its shards
are encoded once, so our plan does less work; the lower bound is computed over the work our plan does.

    .venv/bin/python benchmarks/mteb_makespan.py
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PARAMS_7B = 7.1e9
H100_FLOPS = 0.4 * 989e12  # 40% MFU, bf16
SHARED_CORPUS = {"ClimateFEVER": "FEVER"}


def main() -> None:
    from evaluation.planning import expand, load_cost_rows, plan, resolve_tasks, simulate

    benchmark = "MTEB(eng, v1)"
    rows = load_cost_rows(benchmark)
    tasks = resolve_tasks(benchmark, None)
    hours = {name: 2 * PARAMS_7B * row[2] / H100_FLOPS / 3600 for name, row in rows.items()}
    costs = {name: (hours[name], *row[1:]) for name, row in rows.items()}
    print(f"{benchmark}: {len(tasks)} tasks, {sum(hours[t.metadata.name] for t in tasks):.1f} GPU-hours for a 7B model")
    big = ", ".join(f"{t} {hours[t]:.2f} h" for t in ("MSMARCO", "FEVER", "ClimateFEVER"))
    print(f"  ({big})")
    print()
    print(f"{'workers':>7} {'shard docs':>10} {'jobs':>5} {'ours h':>8} {'bound h':>8} {'ours/bound':>10} "
          f"{'task/worker h':>13} {'task/worker / ours':>18}")  # fmt: skip
    for workers in (8, 64):
        items, size = plan(tasks, {}, costs, workers=workers, min_shard_docs=1000)
        jobs = expand(items, size, SHARED_CORPUS)
        ours = simulate(jobs, workers)
        bound = max(sum(j.cost for j in jobs) / workers, max(j.cost for j in jobs))
        for item in items:  # the previous runner: every item whole, on one worker
            item.sharded = False
        old = simulate(expand(items, size), workers)
        print(f"{workers:>7} {size:>10} {len(jobs):>5} {ours:>8.2f} {bound:>8.2f} {ours / bound:>10.3f} "
              f"{old:>13.2f} {old / ours:>18.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
