"""Run a two-stage job in this process (no Ray): rows -> stage 1 -> stage 2, each saving its final model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nvembed.config import JobConfig, TrainConfig
from nvembed.data.build import build_training_rows
from nvembed.training.stage import StageResult, run_stage


def make_teacher(cfg: TrainConfig):
    """Lazy teacher for mining: ``data.mining.teacher`` (default: the packaged MiniLM)."""

    def load():
        from nvembed.embedder import Embedder

        name = cfg.data.mining.teacher or "packaged:all-MiniLM-L6-v2"
        mining = cfg.data.mining
        return Embedder.from_pretrained(
            name, pooling=mining.teacher_pooling, bidirectional=mining.teacher_bidirectional
        )

    return load


def stage_rows(cfg: TrainConfig, base: str | Path | None = None, log: Callable[[str], None] = print):
    cache = cfg.data.cache_dir or str(Path(cfg.run.output_dir) / "data")
    return build_training_rows(cfg.data, cfg.run.num_negatives, cache, base, make_teacher(cfg), cfg.run.seed, log)


def run_job_locally(
    job: JobConfig, stages: list[int] | None = None, base: str | Path | None = None, log: Callable[[str], None] = print
) -> dict[int, StageResult]:
    """Run the requested stages (default: all the job has) one after the other."""
    results = {}
    for n in stages or job.stages():
        cfg = job.stage_config(n)
        log(
            f"== stage {n}: {cfg.run.max_steps} steps, batch {cfg.run.batch_size}, "
            f"in-batch negatives {'on' if cfg.in_batch_negatives else 'off'}"
        )
        results[n] = run_stage(cfg, stage_rows(cfg, base, log), log=log)
    return results
