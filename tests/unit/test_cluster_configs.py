"""cluster/: what a user applies first, checked without a cluster.

Every YAML parses; every pod runs the project's image (built by cluster/Dockerfile on a published rayproject/ray
base, never the discontinued ray-ml) and mounts the shared volume and a memory-backed /dev/shm; the image pins the
versions the tests run with and nothing installs at pod start; every RayJob entrypoint parses with our CLI, names
shipped configs and keeps every path it shares on the shared volume, train -> evaluate included; GPU and CPU shapes
match the job configs; nothing exposes the dashboard publicly.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import pathlib
import re
import shlex
import tomllib

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
CLUSTER_YAMLS = sorted(CLUSTER.rglob("*.yaml"))
JOB_YAMLS = sorted((ROOT / "jobs").rglob("*.yaml"))
LAUNCHER = CLUSTER / "launcher" / "gpu-8xh100.yaml"
SHARED = "/mnt/shared"
PROJECT_IN_IMAGE = "/home/ray/nvembed"  # WORKDIR of cluster/Dockerfile
TRAIN_CONFIG = "jobs/configs/nvembed_v2_mistral7b.yaml"


def _load(path: pathlib.Path) -> dict:
    return yaml.safe_load(path.read_text())


def _project_image() -> str:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return f"ghcr.io/YOUR_ORG/nvembed:{version}"  # the placeholder cluster/README.md tells users to replace


def _kuberay(kind: str | None = None) -> list[pathlib.Path]:
    kinds = (kind,) if kind else ("RayJob", "RayCluster")
    return [p for p in CLUSTER_YAMLS if _load(p).get("kind") in kinds]


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"].get("rayClusterSpec", doc["spec"])


def _pod_groups(path: pathlib.Path) -> list[tuple[str, dict]]:
    spec = _cluster_spec(_load(path))
    groups = [("head", spec["headGroupSpec"])]
    groups += [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    return groups


def _entrypoint_commands(path: pathlib.Path) -> list[list[str]]:
    """A RayJob entrypoint, ``cd /home/ray/nvembed && python -m nvembed ... [&& python -m nvembed ...]``, as argv
    lists of its ``nvembed`` commands (the ``cd`` checked and dropped)."""
    parts = [shlex.split(p) for p in _load(path)["spec"]["entrypoint"].split("&&")]
    assert parts[0] == ["cd", PROJECT_IN_IMAGE], f"{path.name}: start with `cd {PROJECT_IN_IMAGE} &&`"
    for argv in parts[1:]:
        assert argv[:3] == ["python", "-m", "nvembed"], argv
    return [argv[3:] for argv in parts[1:]]


def _job_env(path: pathlib.Path) -> dict[str, str]:
    runtime = yaml.safe_load(_load(path)["spec"].get("runtimeEnvYAML") or "{}") or {}
    return {k: str(v) for k, v in (runtime.get("env_vars") or {}).items()}


# ----------------------------------------------------------------------------------------------- parsing, images


@pytest.mark.parametrize("path", CLUSTER_YAMLS + JOB_YAMLS, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path):
    # ${VAR} / ${VAR:-default} are expanded before parsing, as nvembed.config.load_yaml does
    text = re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: m.group(2) or "/placeholder", path.read_text())
    assert isinstance(yaml.safe_load(text), dict)


def test_no_ray_ml_image_anywhere():
    """rayproject/ray-ml stopped at 2.49 (newer tags do not exist): a pod on it sits in ImagePullBackOff."""
    for path in [*CLUSTER.rglob("*"), ROOT / "README.md"]:
        if path.is_file():
            assert not re.search(r"ray-ml:\S", path.read_text()), path  # an image reference, not a mention


def test_every_pod_and_node_runs_the_project_image():
    image = _project_image()
    for path in _kuberay():
        for name, group in _pod_groups(path):
            containers = group["template"]["spec"]["containers"]
            assert [c["image"] for c in containers] == [image], (path.name, name)
    for path in CLUSTER_YAMLS:  # plain pods too (the shell that copies data on and off the volume)
        doc = _load(path)
        if doc.get("kind") == "Pod":
            assert [c["image"] for c in doc["spec"]["containers"]] == [image], path
            claims = [v["persistentVolumeClaim"]["claimName"] for v in doc["spec"]["volumes"]]
            assert claims == ["nvembed-shared"], path
    assert _load(LAUNCHER)["docker"]["image"] == image


def test_dockerfile_builds_on_a_published_ray_cuda_base_with_the_tested_ray():
    text = (CLUSTER / "Dockerfile").read_text()
    ray_version = importlib.metadata.version("ray")
    assert re.search(rf"^ARG RAY_VERSION={re.escape(ray_version)}$", text, re.M)
    cuda = re.search(r"^ARG CUDA_TAG=(cu12\d)$", text, re.M)
    assert cuda, "the base must be a CUDA 12 build of rayproject/ray"
    assert "FROM rayproject/ray:${RAY_VERSION}-py311-${CUDA_TAG}" in text
    assert f"download.pytorch.org/whl/{cuda.group(1)}" in text  # torch built for the base's CUDA
    assert re.search(r'pip install -c cluster/constraints.txt -e "\.\[ray,deepspeed,eval\]"', text)
    assert f"WORKDIR {PROJECT_IN_IMAGE}" in text
    for path in _kuberay():  # KubeRay's rayVersion must be the image's Ray
        assert str(_cluster_spec(_load(path))["rayVersion"]) == ray_version, path


def _pins() -> dict[str, str]:
    pins = {}
    for line in (CLUSTER / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    return pins


def test_image_pins_the_versions_the_tests_run_with():
    pins = _pins()
    for name in ("torch", "ray", "transformers", "peft", "deepspeed", "mteb", "sentence-transformers", "faiss-cpu"):
        assert name in pins, f"cluster/constraints.txt must pin {name}"
    for name, version in pins.items():
        installed = importlib.metadata.version(name).split("+")[0]  # torch 2.13.0+cpu here, +cu128 in the image
        assert installed == version, f"{name}: tests run {installed}, the image pins {version}"


def test_nothing_installs_at_pod_or_job_start():
    """Packages come from the image: a runtime pip install can fail on one node only (deepspeed needs torch first),
    and `|| true` would hide it."""
    for path in CLUSTER_YAMLS:
        assert "|| true" not in path.read_text(), path
    launcher = _load(LAUNCHER)
    for command in launcher.get("setup_commands", []) + launcher.get("initialization_commands", []):
        assert "pip install" not in command, command
    runtime_envs = [_load(CLUSTER / "runtime_env.yaml")]
    runtime_envs += [yaml.safe_load(_load(p)["spec"].get("runtimeEnvYAML") or "{}") or {} for p in _kuberay("RayJob")]
    for env in runtime_envs:
        assert not {"pip", "conda", "uv"} & set(env), env
        assert "example.com" not in str(env.get("working_dir", ""))  # the project is in the image


# ------------------------------------------------------------------------------------------------------ storage


def test_every_pod_mounts_the_shared_volume_and_a_memory_backed_dev_shm():
    pvc = _load(CLUSTER / "kuberay" / "storage.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for path in _kuberay():
        for name, group in _pod_groups(path):
            spec = group["template"]["spec"]
            volumes = {v["name"]: v for v in spec["volumes"]}
            for container in spec["containers"]:
                mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                shared, shm = volumes[mounts[SHARED]], volumes[mounts["/dev/shm"]]
                assert shared["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"], (path.name, name)
                assert shm["emptyDir"]["medium"] == "Memory", (path.name, name)
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                assert env["HF_HOME"].startswith(SHARED + "/"), (path.name, name)  # one model download for all


def test_launcher_mounts_shared_storage_on_every_node():
    doc = _load(LAUNCHER)
    options = " ".join(doc["docker"]["run_options"])
    assert f"-v {SHARED}:{SHARED}" in options and "--shm-size=" in options
    init = " ".join(doc["initialization_commands"])  # on the host of every node, before the container
    assert "mount -t nfs" in init and SHARED in init
    assert any(f"test -w {SHARED}" in c for c in doc["setup_commands"])  # a missing mount fails `ray up`


def _train_job(overrides: list[str]):
    from nvembed.config import JobConfig, load_yaml

    return load_yaml(str(ROOT / TRAIN_CONFIG), JobConfig, overrides)


@pytest.mark.parametrize("path", _kuberay("RayJob"), ids=lambda p: p.name)
def test_rayjob_entrypoint_parses_names_shipped_configs_and_keeps_shared_paths_shared(path, monkeypatch):
    from nvembed.cli import build_parser
    from nvembed.launch.storage import shared_path_problems

    spec = _load(path)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["submissionMode"] == "HTTPMode"  # K8sJobMode would run what follows `&&` in the submitter pod
    for key, value in _job_env(path).items():
        monkeypatch.setenv(key, value)  # what ${NVEMBED_DATA} etc. expand to on the cluster
    monkeypatch.chdir(ROOT)
    for argv in _entrypoint_commands(path):
        args = build_parser().parse_args(argv)  # a wrong subcommand or flag fails here
        assert isinstance(args, argparse.Namespace)
        if args.command == "train":
            assert (ROOT / args.config).is_file()
            job = _train_job(args.set)
            assert shared_path_problems(job, multi_node=True) == []  # what the driver checks before it starts
            assert job.scaling.shared_root == SHARED
        elif args.command == "tune":
            from tune.config import load_base_job, load_sweep

            assert (ROOT / args.config).is_file()
            sweep = load_sweep(str(ROOT / args.config), args.set)
            assert sweep.output_dir.startswith(SHARED + "/")  # Tune state and trials: resumable from any node
            base = load_base_job(sweep)
            assert shared_path_problems(base, multi_node=True) == []
            for key in ("retrieval", "sts"):  # every trial's workers read the dev data
                assert getattr(base.dev, key).startswith(SHARED + "/"), key
        elif args.command == "evaluate":
            assert args.model.startswith(SHARED + "/") and args.output.startswith(SHARED + "/")
        else:
            pytest.fail(f"unexpected command {args.command}")


def test_evaluation_reads_the_model_that_training_writes():
    """train -> evaluate on the same storage: the evaluated folder is the training job's final model, by an
    absolute path on the shared volume (the evaluation RayJob's fresh cluster has nothing else)."""
    train = _entrypoint_commands(CLUSTER / "kuberay" / "rayjob-train.yaml")
    from nvembed.cli import build_parser

    parsed = [build_parser().parse_args(argv) for argv in train]
    assert [a.command for a in parsed] == ["train", "evaluate"]
    job = _train_job(parsed[0].set)
    final = f"{job.output_dir}/stage{max(job.stages())}/final"
    assert parsed[1].model == final
    (evaluate,) = _entrypoint_commands(CLUSTER / "kuberay" / "rayjob-eval.yaml")
    assert build_parser().parse_args(evaluate).model == final


def test_readme_commands_use_absolute_shared_paths():
    text = (CLUSTER / "README.md").read_text()
    for model in re.findall(r"--model (\S+)", text):
        assert model.startswith(SHARED + "/"), model


# ---------------------------------------------------------------------------------------------------- resources


def _node_shapes(path: pathlib.Path) -> list[tuple[int, float]]:
    """(GPUs, CPUs) of each GPU worker type."""
    doc = _load(path)
    if doc.get("kind") in ("RayJob", "RayCluster"):
        shapes = []
        for g in _cluster_spec(doc)["workerGroupSpecs"]:
            limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
            shapes.append((int(limits["nvidia.com/gpu"]), float(limits["cpu"])))
        return shapes
    types = doc["available_node_types"].values()
    return [(int(t["resources"]["GPU"]), float(t["resources"]["CPU"])) for t in types if t["resources"].get("GPU")]


def test_cluster_gpus_and_cpus_match_the_training_scaling():
    job = _train_job([])
    assert job.scaling.use_gpu
    for path in [CLUSTER / "kuberay/rayjob-train.yaml", CLUSTER / "kuberay/raycluster.yaml", LAUNCHER]:
        shapes = _node_shapes(path)
        assert shapes, path
        for gpus, cpus in shapes:
            assert gpus >= job.scaling.num_workers, path  # one node holds all workers (no cross-node ZeRO)
            assert cpus >= job.scaling.num_workers * job.scaling.cpus_per_worker, path


def test_evaluation_actors_fit_the_gpu_nodes():
    from nvembed.cli import build_parser

    for path in (CLUSTER / "kuberay/rayjob-train.yaml", CLUSTER / "kuberay/rayjob-eval.yaml"):
        (gpus, cpus), *_ = _node_shapes(path)
        for argv in _entrypoint_commands(path):
            args = build_parser().parse_args(argv)
            if args.command == "evaluate":
                per_worker = 1 if args.gpus_per_worker is None else args.gpus_per_worker  # default: 1 on a GPU cluster
                assert args.workers * per_worker <= gpus, path
                assert args.workers * args.cpus_per_worker <= cpus, path


def test_tune_rayjob_has_a_node_per_concurrent_trial(monkeypatch):
    from tune.config import load_base_job, load_sweep

    path = CLUSTER / "kuberay/rayjob-tune.yaml"
    for key, value in _job_env(path).items():
        monkeypatch.setenv(key, value)
    sweep = load_sweep(str(ROOT / "tune/configs/mistral7b_gpu.yaml"))
    job = load_base_job(sweep)
    shapes = _node_shapes(path)
    assert all(g >= job.scaling.num_workers for g, _ in shapes)  # a trial's Train run fits one node
    assert len(shapes) == 1 and sweep.resources.max_concurrent is not None
    group = _cluster_spec(_load(path))["workerGroupSpecs"][0]
    assert group["replicas"] == sweep.resources.max_concurrent


def test_head_keeps_its_cpus_for_the_driver():
    """The driver prepares all data on the head: Ray tasks must not compete for it, and it needs the memory."""
    for path in _kuberay():
        head = _cluster_spec(_load(path))["headGroupSpec"]
        assert str(head["rayStartParams"]["num-cpus"]) == "0", path
    head = _load(CLUSTER / "kuberay/rayjob-train.yaml")["spec"]["rayClusterSpec"]["headGroupSpec"]
    limits = head["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert float(limits["cpu"]) >= 16 and limits["memory"].endswith("Gi") and int(limits["memory"][:-2]) >= 128
    assert _load(LAUNCHER)["available_node_types"]["head"]["resources"] == {"CPU": 0}


def test_token_auth_on_every_kuberay_cluster():
    """Ray >= 2.59 refuses unauthenticated clients by default; KubeRay creates the token and hands it to the pods
    and to its own job submission."""
    for path in _kuberay():
        assert _cluster_spec(_load(path)).get("authOptions") == {"mode": "token"}, path


def test_dashboard_not_exposed():
    for path in _kuberay():
        head = _cluster_spec(_load(path))["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", path
    assert "--dashboard-host=127.0.0.1" in LAUNCHER.read_text()
