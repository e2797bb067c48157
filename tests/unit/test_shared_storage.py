"""nvembed/launch/storage.py: a multi-node job with node-local shared paths is refused with every offending key;
Ray Train storage gets one run folder per job, and an S3-compatible endpoint travels inside the filesystem object."""

from __future__ import annotations

import pytest

from nvembed.config import ConfigError, JobConfig, apply_overrides, from_dict
from nvembed.launch.storage import (
    SharedStorageError,
    check_shared_paths,
    object_store_target,
    run_folder,
    shared_path_problems,
    train_storage,
)


def _job(**overrides) -> JobConfig:
    base = from_dict(JobConfig, {"model": {"name_or_path": "tiny:mistral"}, "stage1": {}, "stage2": {}})
    return apply_overrides(base, {"output_dir": "/mnt/shared/runs/x", **overrides})


def _problems(job: JobConfig) -> str:
    return "\n".join(shared_path_problems(job, multi_node=True))


def test_one_node_accepts_anything():
    job = _job(output_dir="runs/x", **{"scaling.storage_path": "/tmp/ray"})
    check_shared_paths(job, cluster_nodes=1)
    check_shared_paths(job, cluster_nodes=None)  # not connected: nothing to compare with


def test_multi_node_refuses_relative_and_node_local_written_paths():
    job = _job(
        output_dir="runs/x",
        **{"scaling.storage_path": "/tmp/ray", "stage1.data.cache_dir": "/var/tmp/rows"},
    )
    with pytest.raises(SharedStorageError) as err:
        check_shared_paths(job, cluster_nodes=3)
    text = str(err.value)
    assert "3 Ray nodes" in text
    assert "output_dir='runs/x' is relative" in text
    assert "scaling.storage_path='/tmp/ray' is under /tmp" in text
    assert "stage1.data.cache_dir='/var/tmp/rows' is under /var/tmp" in text
    assert "cluster/README.md" in text
    assert isinstance(err.value, ConfigError)


def test_object_store_only_for_ray_train_storage():
    assert _problems(_job(**{"scaling.storage_path": "s3://bucket/ray"})) == ""
    assert _problems(_job(**{"scaling.storage_path": "gs://bucket/ray"})) == ""
    assert "output_dir='s3://bucket/runs' is an object-store URI" in _problems(_job(output_dir="s3://bucket/runs"))


def test_stage_two_init_from_and_derived_paths():
    assert _problems(_job()) == ""  # init_from defaults to <output_dir>/stage1/final: covered by output_dir
    problems = _problems(_job(**{"stage2.run.init_from": "/tmp/stage1/final"}))
    assert "stage2.run.init_from='/tmp/stage1/final' is under /tmp" in problems


def test_read_only_inputs_may_be_relative_but_not_node_local():
    job = _job(dev={"sts": "nvembed/resources/dev/stsbenchmark/dev.jsonl"})  # inside the project: on every node
    assert _problems(job) == ""
    assert "dev.sts='/tmp/dev.jsonl' is under /tmp" in _problems(_job(dev={"sts": "/tmp/dev.jsonl"}))
    assert _problems(_job(**{"model.name_or_path": "mistralai/Mistral-7B-v0.1"})) == ""  # a hub name
    assert "model.name_or_path='/tmp/tiny'" in _problems(_job(**{"model.name_or_path": "/tmp/tiny"}))


def test_shared_root_declares_the_mount(tmp_path):
    root = tmp_path / "shared"  # under /tmp, but declared shared: accepted
    root.mkdir()
    inside = _job(output_dir=f"{root}/runs/x", **{"scaling.shared_root": str(root), "model.name_or_path": "/opt/m"})
    check_shared_paths(inside, cluster_nodes=1)  # enforced without counting nodes (autoscaling from the head)
    outside = apply_overrides(inside, {"scaling.storage_path": "/data/ray"})
    with pytest.raises(SharedStorageError, match=r"scaling.storage_path='/data/ray' is outside scaling.shared_root"):
        check_shared_paths(outside, cluster_nodes=1)
    missing = apply_overrides(inside, {"scaling.shared_root": str(tmp_path / "not-mounted")})
    missing = apply_overrides(missing, {"output_dir": f"{tmp_path}/not-mounted/runs"})
    with pytest.raises(SharedStorageError, match="does not exist on the driver's node"):
        check_shared_paths(missing, cluster_nodes=2)
    assert "must be an absolute path" in _problems(_job(**{"scaling.shared_root": "shared"}))


def test_worker_resources_cannot_override_cpu_or_gpu():
    with pytest.raises(ConfigError, match="cpus_per_worker and use_gpu"):
        _job(**{"scaling.worker_resources": {"GPU": 1}})
    assert _job(**{"scaling.worker_resources": {"nvembed_worker": 1}}).scaling.worker_resources == {
        "nvembed_worker": 1.0
    }


def test_ray_train_storage_has_one_run_folder_per_job(tmp_path):
    default = _job(output_dir=str(tmp_path / "a")).stage_config(1)
    assert train_storage(default) == (str(tmp_path / "a" / "ray"), None)  # unchanged default
    a, b = (_job(output_dir=str(tmp_path / n), **{"scaling.storage_path": "/mnt/ckpt"}) for n in "ab")
    path_a, path_b = (train_storage(j.stage_config(1))[0] for j in (a, b))
    assert path_a != path_b and path_a.startswith("/mnt/ckpt/a-") and path_b.startswith("/mnt/ckpt/b-")
    assert train_storage(a.stage_config(2))[0] == path_a  # both stages of a job (run names stage1, stage2)
    assert run_folder(tmp_path / "a") == run_folder(str(tmp_path / "a" / "." / ""))  # stable across spellings


def test_s3_endpoint_travels_in_the_filesystem(monkeypatch):
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key, raising=False)
    assert object_store_target("s3://bucket/ray/x") == ("s3://bucket/ray/x", None)  # AWS: each process resolves
    assert object_store_target("gs://bucket/ray/x") == ("gs://bucket/ray/x", None)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.storage:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    path, fs = object_store_target("s3://bucket/ray/x")
    assert path == "bucket/ray/x"
    options = fs.__reduce__()[1][0]  # what Ray pickles to the controller and the workers
    assert options["endpoint_override"] == "minio.storage:9000" and options["scheme"] == "http"
    assert options["access_key"] == "key" and options["secret_key"] == "secret"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://s3.example.internal")  # the S3-specific one wins
    assert object_store_target("s3://bucket/x")[1].__reduce__()[1][0]["endpoint_override"] == "s3.example.internal"


def test_workers_get_the_endpoint_not_the_secret(monkeypatch):
    from nvembed.launch.trainer import worker_env

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    env = worker_env()
    assert env["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:9000"
    assert "AWS_SECRET_ACCESS_KEY" not in env  # runtime envs are visible in the dashboard
