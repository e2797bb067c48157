"""The one training driver: the step loop shared by ``nvembed train --local``, the Ray Train worker and Tune trials.

Everything a run does between its first and last step lives here once: resume, per-step metrics (loss averaged
over ranks, throughput of the whole job), ``metrics.jsonl``, console lines, dev evaluation, checkpoints, reports,
the final export and its probe embeddings. What differs between launchers comes in through :class:`RunContext`
(rank, world, device, checkpoint store) and the ``batches`` function; what differs between engines sits behind
:class:`nvembed.training.engine.Engine`. Nothing here imports Ray.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nvembed.data.collate import ContrastiveBatch
from nvembed.progress import show_step, step_bar
from nvembed.training.checkpoint import CheckpointStore, read_checkpoint, write_checkpoint

PROBE = ["the cat sat on the mat", "a question about bank cards", "rain in the city"]
PROBE_FILE = "probe_embeddings.npy"  # the final model's embeddings of PROBE, computed in training


@dataclass
class StepMetrics:
    """One optimizer step of the whole job: ``loss`` is the mean over ranks, samples and tokens their sums."""

    step: int
    loss: float
    lr: float
    grad_norm: float
    samples: int
    tokens: int
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else math.nan

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else math.nan

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "samples_per_s": self.samples_per_s, "tokens_per_s": self.tokens_per_s}


@dataclass
class RunContext:
    """Where the loop runs and where its checkpoints and reports go."""

    store: CheckpointStore
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    step_offset: int = 0  # added to the reported global_step (stage 2 of a sweep continues stage 1's count)
    progress: bool = False  # a step bar in this process (the local launcher; Ray's driver follows metrics.jsonl)


@dataclass
class StageResult:
    history: list[StepMetrics] = field(default_factory=list)
    final_model: Path | None = None
    resumed_from: int = 0


def _job_totals(loss: float, samples: int, tokens: int, device: torch.device) -> tuple[float, int, int]:
    """(mean loss, total samples, total tokens) over ranks: one all-reduce per step, a no-op in one process."""
    from nvembed.distributed import is_distributed, world_size

    if not is_distributed():
        return loss, samples, tokens
    import torch.distributed as dist

    t = torch.tensor([loss, samples, tokens], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t[0]) / world_size(), int(t[1]), int(t[2])


def train_stage(
    cfg: Any,
    emb: Any,
    engine: Any,
    batches: Callable[[int], Iterator[ContrastiveBatch]],
    ctx: RunContext,
    *,
    dev_set: Any = None,
    on_dev: Callable[[int, dict[str, float]], None] | None = None,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
) -> StageResult:
    """Train ``cfg.run.max_steps`` steps of one stage, resuming from the store's latest checkpoint.

    Args:
        cfg: the stage's :class:`~nvembed.config.TrainConfig`.
        emb: the :class:`~nvembed.embedder.Embedder` whose model the engine trains (dev metrics, export).
        engine: an :class:`~nvembed.training.engine.Engine`.
        batches: ``start_step -> iterator`` of this rank's batches for steps ``start_step + 1, ...``.
        ctx: rank, world, device, checkpoint store.
        dev_set: a :class:`~nvembed.dev.DevSet` evaluated every ``dev.every`` steps and at the last step.
        on_dev: called with (step, dev metrics) after the step's checkpoint is written, so a sweep that
            reports them can always resume from that step.
        stop_after: stop (as if killed) once this step is done and checkpointed; tests and smoke runs.
        log: console lines (rank 0 only).
    """
    run = cfg.run
    out = Path(run.output_dir)
    lead = ctx.rank == 0
    say = log if lead else (lambda _: None)
    result = StageResult()
    with ctx.store.latest() as folder:
        if folder is not None:
            result.resumed_from = read_checkpoint(folder, engine, ctx.rank)
            say(f"stage {run.stage}: resumed from step {result.resumed_from}")
    if result.resumed_from >= run.max_steps:
        say(f"stage {run.stage} already complete ({result.resumed_from}/{run.max_steps} steps)")
    last = min(run.max_steps, stop_after) if stop_after else run.max_steps
    metrics_file = (out / "metrics.jsonl").open("a") if lead else None
    tracker = _tracker(cfg) if lead else None
    bar = step_bar(run.stage, run.max_steps, result.resumed_from) if lead and ctx.progress else None
    if bar is not None:
        quiet = say

        def say(line: str) -> None:
            with bar.external_write_mode():
                quiet(line)

    iterator = batches(result.resumed_from)
    t_start = time.perf_counter()
    try:
        for step in range(result.resumed_from + 1, last + 1):
            t0 = time.perf_counter()
            batch = next(iterator).to(ctx.device)
            lr = engine.current_lr()
            loss, norm = engine.step(batch)
            loss, samples, tokens = _job_totals(loss, batch.size, batch.num_tokens(), ctx.device)
            m = StepMetrics(step, loss, lr, norm, samples, tokens, time.perf_counter() - t0)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step}; lower the learning rate or check the data")
            result.history.append(m)
            record = {**m.as_dict(), "stage": run.stage, "world_size": ctx.world}
            record["global_step"] = ctx.step_offset + step
            if ctx.device.type == "cuda":
                record["max_memory_gb"] = torch.cuda.max_memory_allocated(ctx.device) / 2**30
            dev_now = dev_set is not None and (
                step == run.max_steps or bool(cfg.dev.every) and step % cfg.dev.every == 0
            )
            if dev_now and (engine.collective_forward or lead):
                emb.model = engine.unwrapped
                dev = dev_set.evaluate(emb)  # same texts, same order on every rank (ZeRO-3: all ranks forward)
                record.update(dev)
                if lead:
                    with (out / "dev.jsonl").open("a") as fh:
                        fh.write(json.dumps({"step": step, **dev}) + "\n")
                    say(f"stage {run.stage} step {step} dev " + " ".join(f"{k} {v:.2f}" for k, v in dev.items()))
            if lead:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                if tracker is not None:
                    tracker.log_metrics(record, step, f"stage{run.stage}")
                if bar is not None:
                    show_step(bar, step, m.loss, m.samples_per_s)
            due_log = bool(run.log_every) and (step % run.log_every == 0 or step == run.max_steps)
            if due_log:
                say(
                    f"stage {run.stage} step {step}/{run.max_steps} loss {m.loss:.4f} lr {m.lr:.2e} "
                    f"grad_norm {m.grad_norm:.3f} {m.samples_per_s:.1f} samples/s {m.tokens_per_s:.0f} tokens/s"
                )
            every = run.checkpoint_every
            if (every and step % every == 0) or step in (run.max_steps, stop_after) or dev_now:
                ctx.store.save(step, record, lambda f, s=step: write_checkpoint(f, s, engine, ctx.rank))
            elif due_log:
                ctx.store.report(record)
            if dev_now and lead and on_dev is not None:
                on_dev(step, {k: record[k] for k in dev})
    finally:
        if metrics_file is not None:
            metrics_file.close()
        if tracker is not None:
            tracker.close()
        if bar is not None:
            bar.close()
    say(f"stage {run.stage}: {len(result.history)} steps in {time.perf_counter() - t_start:.1f} s")
    if last == run.max_steps:
        result.final_model = save_final(emb, engine, out / "final", ctx.rank)
        if lead:
            plot_losses(out / "metrics.jsonl", out / "loss.png", f"stage {run.stage}")
            say(f"stage {run.stage} final model: {result.final_model}")
    return result


def _tracker(cfg: Any):
    """The job's tracker (None without a ``tracking`` section); the stage's params are logged once."""
    if cfg.tracking is None:
        return None
    from nvembed.config import to_dict
    from nvembed.tracking import Tracker

    tracker = Tracker(cfg.tracking, job_key=str(Path(cfg.run.output_dir).resolve().parent))
    tracker.log_params(to_dict(cfg), f"stage{cfg.run.stage}")
    return tracker


def save_final(emb: Any, engine: Any, folder: Path, rank: int) -> Path:
    """Export the trained model (every rank calls: ZeRO-3 gathers) and, beside it, its embeddings of
    :data:`PROBE` as computed in training, so a reload can be checked against them."""
    emb.model = engine.unwrapped
    probe = emb.encode(PROBE, show_progress=False) if engine.collective_forward or rank == 0 else None
    engine.save_final(emb, folder, rank)
    if rank == 0:
        np.save(folder.parent / PROBE_FILE, probe)
    return folder.resolve()


def plot_losses(metrics: Path, png: Path, title: str) -> None:
    """``loss.png``: loss per step (the last value logged for a step wins after a restart)."""
    try:
        import matplotlib
    except ImportError:  # the eval extra brings it; training does not need it
        return
    if not metrics.is_file():
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_step = {}
    for line in metrics.read_text().splitlines():
        m = json.loads(line)
        by_step[m["step"]] = m["loss"]
    steps = sorted(by_step)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [by_step[s] for s in steps])
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE loss")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
