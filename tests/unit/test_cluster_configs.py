"""cluster/: every YAML parses; RayJob entrypoints name real modules and configs; GPU shapes match the training
config's scaling; nothing exposes the dashboard publicly."""

from __future__ import annotations

import pathlib
import shlex

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLUSTER_YAMLS = sorted((ROOT / "cluster").rglob("*.yaml"))
JOB_YAMLS = sorted((ROOT / "jobs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CLUSTER_YAMLS + JOB_YAMLS, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path):
    assert isinstance(yaml.safe_load(path.read_text()), dict)


def _rayjobs():
    return [p for p in CLUSTER_YAMLS if yaml.safe_load(p.read_text()).get("kind") == "RayJob"]


@pytest.mark.parametrize("path", _rayjobs(), ids=lambda p: p.name)
def test_rayjob_entrypoint_names_real_module_and_config(path):
    import argparse

    from nvembed.cli import build_parser

    spec = yaml.safe_load(path.read_text())["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "nvembed"]
    args = build_parser().parse_args(argv[3:])  # a wrong subcommand or flag fails here
    assert isinstance(args, argparse.Namespace)
    if args.command in ("train", "tune"):
        assert (ROOT / args.config).is_file()
    assert spec["shutdownAfterJobFinishes"] is True


def _gpus_per_node(path):
    doc = yaml.safe_load(path.read_text())
    if doc.get("kind") in ("RayJob", "RayCluster"):
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        return [
            int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
            for g in spec["workerGroupSpecs"]
        ]
    return [int(t["resources"]["GPU"]) for t in doc["available_node_types"].values() if t["resources"].get("GPU")]


def test_cluster_gpus_match_the_training_scaling():
    from nvembed.config import JobConfig, load_yaml

    job = load_yaml(str(ROOT / "jobs/configs/nvembed_v2_mistral7b.yaml"), JobConfig)
    assert job.scaling.use_gpu
    for path in [
        ROOT / "cluster/kuberay/rayjob-train.yaml",
        ROOT / "cluster/kuberay/raycluster.yaml",
        ROOT / "cluster/launcher/gpu-8xh100.yaml",
    ]:
        per_node = _gpus_per_node(path)
        assert per_node and all(job.scaling.num_workers % g == 0 or g % job.scaling.num_workers == 0 for g in per_node)
        assert max(per_node) >= job.scaling.num_workers, path  # one node holds all workers (no cross-node ZeRO)


def test_tune_rayjob_has_a_node_per_concurrent_trial():
    from tune.config import load_base_job, load_sweep

    sweep = load_sweep(str(ROOT / "tune/configs/mistral7b_gpu.yaml"))
    job = load_base_job(sweep)
    per_node = _gpus_per_node(ROOT / "cluster/kuberay/rayjob-tune.yaml")
    assert all(g >= job.scaling.num_workers for g in per_node)  # a trial's Train run fits one node
    assert len(per_node) == 1 and sweep.resources.max_concurrent is not None
    replicas = yaml.safe_load((ROOT / "cluster/kuberay/rayjob-tune.yaml").read_text())["spec"]["rayClusterSpec"]
    assert replicas["workerGroupSpecs"][0]["replicas"] == sweep.resources.max_concurrent


def test_dashboard_not_exposed():
    for path in CLUSTER_YAMLS:
        doc = yaml.safe_load(path.read_text())
        spec = doc.get("spec", {})
        head = spec.get("rayClusterSpec", spec).get("headGroupSpec") if spec else None
        if head:
            assert head.get("serviceType", "ClusterIP") == "ClusterIP", path
    launcher = (ROOT / "cluster/launcher/gpu-8xh100.yaml").read_text()
    assert "--dashboard-host=127.0.0.1" in launcher
