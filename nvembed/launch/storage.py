"""Storage a multi-node job shares: which paths must be on it, the check that refuses node-local ones, and the
filesystem Ray Train checkpoints go to (a shared mount, or an object store such as S3 or GCS).

Why a check: on one machine every process sees the same disk, so a relative ``output_dir`` or a folder under
``/tmp`` works. On a cluster the driver writes the step plan and the curated rows to *its* disk, and the GPU
workers on other nodes then fail to find them, write ``metrics.jsonl`` and ``final/`` to *their* disks, and the
driver's metrics read, stage 2's ``init_from`` and the evaluation find nothing. That failure surfaces late (after
data preparation, sometimes after hours of training) and far from its cause, so :func:`check_shared_paths` refuses
such a job on the driver before anything starts, naming each offending key.

Only ``scaling.storage_path`` may be an object-store URI (``s3://``, ``gs://``): Ray Train writes checkpoints
through pyarrow filesystems. Everything else is read and written with plain file APIs by the workers, so it needs
a filesystem every node mounts at the same path (a ReadWriteMany volume in KubeRay, NFS/EFS with the cluster
launcher).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nvembed.config import ConfigError, JobConfig, TrainConfig

NODE_LOCAL_PREFIXES = ("/tmp", "/var/tmp", "/dev/shm", "/run")  # each node has its own (Ray's session dir too)

# S3 settings every Ray Train process must agree on. Forwarded to the workers (nvembed/launch/trainer.py
# worker_env); credentials are deliberately not in this list: see object_store_target.
STORAGE_ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


class SharedStorageError(ConfigError):
    """A multi-node job names a path that only one node can see; the message lists every such key."""


@dataclass(frozen=True)
class SharedPath:
    key: str  # dotted config key, as the user writes it
    value: str
    written: bool = True  # False: an input that is only read (a relative one resolves inside the project)
    object_store_ok: bool = False  # True only where the code reads and writes through pyarrow (Ray Train storage)


def is_uri(path: str) -> bool:
    return "://" in path


def looks_like_path(value: str) -> bool:
    """A model reference that is a local folder (``/x``, ``./x``, ``~/x``, or an existing relative path), as
    opposed to a hub name (``org/model``), ``tiny:...`` or ``packaged:...``."""
    if is_uri(value) or value.startswith(("tiny:", "packaged:")):
        return False
    return value.startswith(("/", "./", "../", "~")) or os.path.exists(value)


def shared_paths(job: JobConfig, stages: list[int] | None = None) -> list[SharedPath]:
    """Every path of the job that a process on another node reads or writes.

    Written paths must be on shared storage. Derived ones (``<output_dir>/stageN``, the plan under it, the default
    ``data.cache_dir`` and Ray Train storage, stage 2's default ``init_from``) follow ``output_dir`` and are covered
    by it. Read-only inputs (a local backbone, dev and evaluation data) only need the same path on every node: a
    relative one resolves inside the project, which every node has (the image, or the job's ``working_dir``).
    Dataset files, decontamination sources and the mining teacher are read by ``nvembed prepare``'s tasks and actors
    on any node (an ``s3://`` dataset is copied into ``data.cache_dir`` by the driver, so it may be a URI).
    """
    out = [SharedPath("output_dir", job.output_dir)]
    if job.scaling.storage_path:
        out.append(SharedPath("scaling.storage_path", job.scaling.storage_path, object_store_ok=True))
    if looks_like_path(job.model.name_or_path):
        out.append(SharedPath("model.name_or_path", job.model.name_or_path, written=False))  # workers load the backbone
    for n in stages or job.stages():
        stage = job.stage1 if n == 1 else job.stage2
        if stage is None:
            continue
        if stage.data.cache_dir:  # curated rows: a Tune trial's driver may run on any node
            out.append(SharedPath(f"stage{n}.data.cache_dir", stage.data.cache_dir))
        for i, ds in enumerate(stage.data.datasets):
            out.append(SharedPath(f"stage{n}.data.datasets[{i}].path", ds.path, written=False, object_store_ok=True))
        for i, path in enumerate(stage.data.decontaminate):
            out.append(SharedPath(f"stage{n}.data.decontaminate[{i}]", path, written=False))
        teacher = stage.data.mining.teacher
        if teacher and looks_like_path(teacher):
            out.append(SharedPath(f"stage{n}.data.mining.teacher", teacher, written=False))
        if stage.run.init_from and looks_like_path(stage.run.init_from):
            out.append(SharedPath(f"stage{n}.run.init_from", stage.run.init_from))
    if job.dev is not None:  # every rank reads the dev data
        for key in ("retrieval", "sts"):
            if value := getattr(job.dev, key):
                out.append(SharedPath(f"dev.{key}", value, written=False))
    if job.evaluation is not None:  # evaluation actors read task folders and the models
        for task, folder in job.evaluation.tasks.items():
            if folder:
                out.append(SharedPath(f"evaluation.tasks.{task}", folder, written=False))
        if job.evaluation.baseline and looks_like_path(job.evaluation.baseline):
            out.append(SharedPath("evaluation.baseline", job.evaluation.baseline, written=False))
    return out


def _problem(p: SharedPath, root: Path | None) -> str | None:
    if is_uri(p.value):
        if p.object_store_ok:
            return None
        return (
            f"{p.key}={p.value!r} is an object-store URI: only scaling.storage_path can be one (workers write "
            "this path with file APIs), use a folder on the shared mount"
        )
    path = Path(os.path.expanduser(p.value))
    if not path.is_absolute():
        if not p.written:
            return None
        return f"{p.key}={p.value!r} is relative: it resolves against the driver's working directory, on its node only"
    path = Path(os.path.normpath(path))
    if root is not None and (path == root or root in path.parents):
        return None
    if root is not None and p.written:
        return f"{p.key}={p.value!r} is outside scaling.shared_root={str(root)!r}"
    for prefix in NODE_LOCAL_PREFIXES:
        if path == Path(prefix) or Path(prefix) in path.parents:
            return f"{p.key}={p.value!r} is under {prefix}, which every node has its own copy of"
    return None


def shared_path_problems(job: JobConfig, multi_node: bool, stages: list[int] | None = None) -> list[str]:
    """One line per shared path of ``job`` that another node could not see (empty: the job may run).

    Pure: reads no filesystem, so it also checks a config for a cluster from a machine that lacks its mounts.
    """
    root_value = job.scaling.shared_root
    if not multi_node and root_value is None:
        return []
    root = None
    if root_value is not None:
        if not os.path.isabs(os.path.expanduser(root_value)):
            return [f"scaling.shared_root={root_value!r} must be an absolute path (the mount point)"]
        root = Path(os.path.normpath(os.path.expanduser(root_value)))
    return [msg for p in shared_paths(job, stages) if (msg := _problem(p, root))]


def check_shared_paths(job: JobConfig, cluster_nodes: int | None, stages: list[int] | None = None) -> None:
    """Refuse a multi-node job whose shared paths are node-local, before any data is prepared or trainer created.

    The job counts as multi-node when the connected Ray cluster has more than one alive node (``cluster_nodes``,
    see :func:`alive_nodes`) or when ``scaling.shared_root`` is set: an autoscaling cluster may have only its head
    up when the driver starts, so declaring the shared mount is the way to get the check there too. With
    ``shared_root`` every written path must lie under it (it may be any folder, ``/tmp/...`` included: the user
    says it is shared) and the folder must exist here; without it, relative paths and paths under /tmp, /var/tmp,
    /dev/shm, /run are refused. Read-only inputs may also be relative (inside the project) or anywhere outside
    the node-local folders.

    Raises:
        SharedStorageError: naming every offending key and what to do instead.
    """
    multi_node = (cluster_nodes or 1) > 1
    root_value = job.scaling.shared_root
    problems = shared_path_problems(job, multi_node, stages)
    if not problems and root_value is not None and not Path(os.path.expanduser(root_value)).is_dir():
        problems = [
            f"scaling.shared_root={root_value!r} does not exist on the driver's node: is the shared volume mounted "
            "on this pod/machine?"
        ]
    if not problems:
        return
    where = f"{cluster_nodes} Ray nodes" if multi_node else f"scaling.shared_root={root_value!r}"
    raise SharedStorageError(
        f"this job shares files between nodes ({where}), but these paths are not on storage every node sees:\n"
        + "".join(f"  - {m}\n" for m in problems)
        + "Put them on shared storage: a ReadWriteMany volume or NFS/EFS mount at the same path on every node "
        "(and set scaling.shared_root to its mount point), or an s3:// / gs:// URI for scaling.storage_path "
        "(cluster/README.md, 'Storage')."
    )


def alive_nodes() -> int:
    """Alive nodes of the Ray cluster this process is connected to (``ray.init`` must have run)."""
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


# ----------------------------------------------------------------------------------------- Ray Train storage


def run_folder(job_output_dir: str | Path) -> str:
    """``<name>-<hash of the absolute path>``: one folder per job under an explicit ``scaling.storage_path``.

    Ray Train restores a run from ``<storage_path>/<run name>`` whenever that folder holds a checkpoint snapshot.
    With one ``storage_path`` shared by several jobs (every trial of a Tune sweep inherits the base job's), runs
    named ``stage1`` would restore each other's checkpoints; keyed by the job's output folder, a rerun of the same
    job still resumes and a different job starts fresh.
    """
    path = Path(job_output_dir).resolve()
    return f"{path.name}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


def train_storage(cfg: TrainConfig) -> tuple[str, Any]:
    """``(storage_path, storage_filesystem)`` for Ray Train's ``RunConfig`` of one stage.

    Default: ``<job output_dir>/ray`` (shared whenever ``output_dir`` is). An explicit ``scaling.storage_path`` gets
    one :func:`run_folder` per job; object-store URIs go through :func:`object_store_target`.
    """
    job_out = Path(cfg.run.output_dir).resolve().parent  # run.output_dir is <job output_dir>/stageN
    base = cfg.scaling.storage_path
    if not base:
        return str(job_out / "ray"), None
    if is_uri(base):
        return object_store_target(f"{base.rstrip('/')}/{run_folder(job_out)}")
    return str(Path(os.path.expanduser(base)).resolve() / run_folder(job_out)), None


def object_store_target(uri: str) -> tuple[str, Any]:
    """The storage path and filesystem for an object-store URI.

    With an S3-compatible endpoint in the driver's environment (``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``:
    the variables boto3 and pyarrow >= 16 read), the driver builds the ``S3FileSystem`` itself and Ray Train ships
    it to its controller and workers. Those processes otherwise resolve ``s3://`` from *their own* environment:
    Ray Train's controller actor inherits only Ray Train's variables, so it would talk to AWS instead of the
    endpoint. Static keys in the driver's environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``) travel
    inside that filesystem for the same reason; without an endpoint (AWS itself, GCS), every process uses its own
    default credential chain (an IAM role or workload identity on every node), as pyarrow does by default.
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not uri.startswith("s3://") or not endpoint or "?" in uri:  # a URI with ?endpoint_override=... is explicit
        return uri, None
    import pyarrow.fs

    scheme, _, host = endpoint.rstrip("/").rpartition("://")
    kwargs: dict[str, Any] = {
        "endpoint_override": host,
        "scheme": scheme or "https",
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
    }
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        kwargs.update(access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ["AWS_SECRET_ACCESS_KEY"])
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return uri[len("s3://") :], pyarrow.fs.S3FileSystem(**kwargs)
