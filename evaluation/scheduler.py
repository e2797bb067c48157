"""A pool of evaluation actors fed from one priority queue: costliest job first, retries, a live line, error files.

Why our own scheduler: mteb runs tasks one after another in one process and offers no task-level parallelism
(mteb issues #27, #883, #2904), and Ray's ``ActorPool`` has neither priorities, nor locality (a shard's top-k job
should run on the actor that holds its vectors), nor a fresh actor after one dies.

Jobs come from the runner (whole tasks) and from driver threads (:class:`evaluation.sharded.ShardedSearch` of
sharded retrieval tasks) through :meth:`ActorPool.submit`, which is thread-safe and returns a
``concurrent.futures.Future``; :meth:`ActorPool.run` (the main thread) hands jobs to idle actors. A job that fails
is retried ``retries`` times (on a fresh actor when its actor died); after that its future fails with
:class:`ItemFailed` and the whole error, Ray's remote traceback included, is in ``<output>/errors/<job>.txt``.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


class ItemFailed(RuntimeError):
    """A job failed after its retries; ``path`` holds the whole error."""

    def __init__(self, label: str, message: str, path: str) -> None:
        super().__init__(label, message, path)
        self.label, self.message, self.path = label, message, path

    def __str__(self) -> str:
        return f"{self.message} (details: {self.path})"


def error_file(errors_dir: Path, label: str, text: str) -> Path:
    """``<errors_dir>/<label>.txt`` with ``text``; the label made safe as a file name."""
    errors_dir.mkdir(parents=True, exist_ok=True)
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # Ray colours its remote tracebacks
    path = errors_dir / (re.sub(r"[^A-Za-z0-9_.:\[\]-]+", "_", label).replace(":", "_") + ".txt")
    path.write_text(text)
    return path


def short(err: BaseException) -> str:
    """One line for the log and the report: the exception type and the last line of its message."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[-1] if text else ''}"


@dataclass
class _Job:
    label: str
    method: str
    args: tuple
    cost: float
    prefer: int | None
    future: Future
    attempts: int = 0


class ActorPool:
    """See the module docstring.

    Args:
        factory: creates one actor (a ``ray.remote`` class handle's ``.remote(...)``).
        size: actors.
        retries: per job.
        errors_dir: where failed jobs leave their whole error.
        total_cost: planned cost of the run (progress and ETA are in cost units, i.e. the cost table's).
        log: one line per finished whole task and per failure.
    """

    def __init__(
        self,
        factory: Callable[[], Any],
        size: int,
        *,
        retries: int,
        errors_dir: Path,
        total_cost: float,
        log: Callable[[str], None] = print,
    ) -> None:
        self.factory, self.retries, self.errors_dir, self.log = factory, retries, errors_dir, log
        self.actors = [factory() for _ in range(size)]
        self.idle = list(range(size))
        self.queue: list[_Job] = []
        self.running: dict[Any, tuple[int, _Job]] = {}
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.holders: dict[int, int] = {}  # id(future) -> actor index that ran it
        self.done = self.failed = self.texts = 0
        self.bar = tqdm(
            total=max(total_cost, 1e-9),
            desc="evaluate",
            unit="cost",
            dynamic_ncols=True,
            mininterval=1.0,
            bar_format="{desc}: {percentage:3.0f}% [{elapsed}<{remaining}]{postfix}",
        )
        self._state: tuple = ()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------ any thread

    def submit(self, label: str, method: str, args: tuple, *, cost: float, prefer: int | None = None) -> Future:
        future: Future = Future()
        self.inbox.put(_Job(label, method, args, cost, prefer, future))
        return future

    def skip(self, cost: float) -> None:
        """Progress for work found already done (cached shards)."""
        self.inbox.put(("skip", cost))

    def holder(self, future: Future | None) -> int | None:
        """The actor that ran a finished job (it still holds what the job produced), if known."""
        return None if future is None else self.holders.get(id(future))

    # ------------------------------------------------------------------------------ main thread

    def run(self, finished: Callable[[], bool]) -> None:
        """Schedule until ``finished()`` and nothing is queued or running."""
        import ray

        while True:
            self._drain()
            self._dispatch()
            if not self.running:
                if finished() and not self.queue and self.inbox.empty():
                    break
                time.sleep(0.05)
                continue
            ready, _ = ray.wait(list(self.running), num_returns=1, timeout=0.1)
            for ref in ready:
                self._complete(ref)

    def close(self) -> None:
        import ray

        self.bar.close()
        for actor in self.actors:
            ray.kill(actor)

    def _drain(self) -> None:
        while True:
            try:
                job = self.inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(job, tuple):  # ("skip", cost)
                self.bar.update(job[1])
            else:
                self.queue.append(job)
        self._show()

    def _dispatch(self) -> None:
        while self.idle and self.queue:
            actor = self.idle.pop(0)
            # its own jobs (vectors it holds) first, then the costliest job
            own = [j for j in self.queue if j.prefer == actor]
            job = max(own or self.queue, key=lambda j: j.cost)
            self.queue.remove(job)
            ref = getattr(self.actors[actor], job.method).remote(*job.args)
            self.running[ref] = (actor, job)
        self._show()

    def _complete(self, ref) -> None:
        import ray

        actor, job = self.running.pop(ref)
        try:
            payload = ray.get(ref)
        except Exception as err:  # the job raised, or the actor died (RayActorError)
            job.attempts += 1
            if isinstance(err, ray.exceptions.RayActorError):
                self.actors[actor] = self.factory()  # what the dead actor held is on disk
            if job.attempts <= self.retries:
                self.log(f"  {job.label}: failed ({short(err)}); retry {job.attempts}/{self.retries}")
                job.prefer = None
                self.queue.append(job)
            else:
                path = error_file(self.errors_dir, job.label, f"{job.label}: failed {job.attempts} times\n\n{err}\n")
                self.failed += 1
                self.bar.update(job.cost)
                job.future.set_exception(ItemFailed(job.label, short(err), str(path)))
            self.idle.append(actor)
            return
        self.done += 1
        if isinstance(payload, int):  # an encode job: texts embedded
            self.texts += payload
        elif isinstance(payload, dict):  # a whole task
            self.texts += int(payload.get("encoded", 0))
        self.bar.update(job.cost)
        self.holders[id(job.future)] = actor
        self.idle.append(actor)
        job.future.set_result(payload)

    def _show(self) -> None:
        """The live line: items done / running / queued, texts encoded, ETA from the cost table (tqdm's rate)."""
        state = (self.done, len(self.running), len(self.queue), self.failed, self.texts)
        if state == self._state:
            return
        self._state = state
        self.bar.set_postfix_str(
            f"{self.done} done, {len(self.running)} running, {len(self.queue)} queued, "
            f"{self.failed} failed, {self.texts} texts encoded",
            refresh=False,
        )
        self.bar.update(0)  # redraws at most once per mininterval
