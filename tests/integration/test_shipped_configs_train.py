"""Every shipped config trains in its own shape, through the command a user runs.

Each YAML under ``jobs/configs/`` and ``tune/configs/`` is loaded unchanged; a run overrides only model size (a tiny
model), data (small files the repository ships), step counts and scaling (2 CPU workers). Everything else (dtype,
engine, ZeRO stage, LoRA, GradCache, dev settings) is the config's own. ``IN_SHAPE`` names the test that runs each
config; a new YAML without an entry fails ``test_every_shipped_config_runs_in_shape``. Two of the runs (the
quickstart's and the 7B sweep's) are ``slow`` to keep the default run near 15 minutes on 2 cores.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
TRAIN = "nvembed/resources/train"
DEV_STS = "nvembed/resources/dev/stsbenchmark/dev.jsonl"  # STS-B validation slice (never its test split)
SHIPPED = sorted(str(p.relative_to(ROOT)) for d in ("jobs/configs", "tune/configs") for p in (ROOT / d).glob("*.yaml"))

# config -> the test that runs it in shape (module::function)
IN_SHAPE = {
    "jobs/configs/nvembed_v2_mistral7b.yaml": "test_shipped_configs_train.py::test_mistral7b_recipe_ddp_and_zero3_bf16",
    "jobs/configs/smoke_cpu.yaml": "test_shipped_configs_train.py::test_smoke_cpu_ray_path_equals_local_path",
    "jobs/configs/quickstart.yaml": "test_shipped_configs_train.py::test_quickstart_in_shape",
    "jobs/configs/minilm_recipe.yaml": "test_shipped_configs_train.py::test_minilm_recipe_in_shape",
    "tune/configs/mistral7b_gpu.yaml": "test_shipped_configs_train.py::test_mistral7b_sweep_in_shape",
    "tune/configs/smoke.yaml": "test_tune_ray.py::test_smoke_sweep_from_the_cli_then_train_the_best",
    "tune/configs/smoke_job.yaml": "test_tune_ray.py::test_smoke_sweep_from_the_cli_then_train_the_best",  # its base
}


def test_every_shipped_config_runs_in_shape():
    assert set(IN_SHAPE) == set(SHIPPED), "add an in-shape run for every shipped config (see the module docstring)"
    for where in set(IN_SHAPE.values()):
        module, name = where.split("::")
        assert f"def {name}(" in (Path(__file__).parent / module).read_text(), where


def _train(config: str, *overrides: str, local: bool = False) -> None:
    """``nvembed train CONFIG --set ...`` in this process (the session's local Ray cluster)."""
    from nvembed.cli import main

    os.chdir(ROOT)  # shipped configs name their files relative to the project root
    args = ["train", config, *(a for o in overrides for a in ("--set", o))] + (["--local"] if local else [])
    assert main(args) == 0


def _losses(out: Path, stage: int) -> list[float]:
    by_step = {}
    for line in (out / f"stage{stage}" / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        by_step[row["step"]] = row["loss"]
    return [by_step[s] for s in sorted(by_step)]


def _check_reload(out: Path, stage: int, atol: float) -> None:
    """The exported model reloads to the embeddings it had at the end of training."""
    from nvembed import Embedder
    from nvembed.training.driver import PROBE, PROBE_FILE

    reloaded = Embedder.from_pretrained(out / f"stage{stage}" / "final").encode(PROBE, show_progress=False)
    expected = np.load(out / f"stage{stage}" / PROBE_FILE)
    assert np.abs(reloaded - expected).max() <= atol, np.abs(reloaded - expected).max()


def _checkpoint(storage: Path, stage: int, step: int) -> Path:
    """Ray Train's checkpoint folder of ``step`` (the driver's format: state.json, rng-rank*.pt, engine/)."""
    for state in glob.glob(str(storage / "**" / f"stage{stage}" / "checkpoint_*" / "state.json"), recursive=True):
        if json.loads(Path(state).read_text())["step"] == step:
            return Path(state).parent
    raise AssertionError(f"no checkpoint of stage {stage} step {step} under {storage}")


def _initial_trainable(config: str, overrides: list[str], stage: int = 1) -> dict:
    """The trainable tensors a worker starts from (same seed, same builder)."""
    from nvembed.config import JobConfig, load_yaml
    from nvembed.training.stage import build_stage_embedder, seed_everything

    cfg = load_yaml(str(ROOT / config), JobConfig, overrides).stage_config(stage)
    seed_everything(cfg.run.seed)
    model = build_stage_embedder(cfg).model
    return {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}


def _mistral7b_overrides(out: Path, engine: str, dev: bool = True) -> list[str]:
    small = f"{{name: snli, format: triplets, path: {TRAIN}/snli_triplets.jsonl, max_rows: 200}}"
    sts = f"{{name: stsbenchmark, format: sts, path: {TRAIN}/stsb_train.jsonl, max_rows: 200, mine_negatives: true}}"
    ov = [
        # model size
        "model.name_or_path=tiny:mistral",
        "pooling.num_latents=8",
        "pooling.head_dim=16",
        # scaling
        "scaling.use_gpu=false",
        "scaling.num_workers=2",
        "scaling.cpus_per_worker=1",
        "scaling.max_failures=0",
        f"scaling.engine={engine}",
        "deepspeed.param_persistence_threshold=0",  # tiny tensors would otherwise all stay unpartitioned
        f"output_dir={out}",
        f"scaling.storage_path={out}/ray",
        # data (the teacher is a model size: the shipped one is e5-mistral-7b)
        f"stage1.data.datasets=[{small}]",
        f"stage2.data.datasets=[{small}, {sts}]",
    ]
    if dev:  # dev metrics between steps: under ZeRO-3 every rank's forward takes part (tiny STS-B dev slice)
        ov.append(f"dev={{every: 2, sts: {DEV_STS}, max_sts_pairs: 16, max_length: 64, batch_size: 16}}")
    for n in (1, 2):
        ov += [
            f"stage{n}.data.mining.teacher=tiny:mistral",
            f"stage{n}.data.mining.index=flat",  # an IVF index needs more texts than the small data has
            f"stage{n}.run.max_steps=3",
            f"stage{n}.run.batch_size=8",
            f"stage{n}.run.checkpoint_every=1",
            f"stage{n}.optim.warmup_steps=1",
            f"stage{n}.run.query_max_length=64",
            f"stage{n}.run.doc_max_length=64",
        ]
    return ov


def test_mistral7b_recipe_ddp_and_zero3_bf16(tmp_path):
    """The 7B recipe as shipped (bf16 base, LoRA, latent head, gradient checkpointing, ZeRO-3 and DDP), both stages."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file

    config = "jobs/configs/nvembed_v2_mistral7b.yaml"
    runs = {engine: tmp_path / engine for engine in ("deepspeed", "ddp")}
    for engine, out in runs.items():
        _train(config, *_mistral7b_overrides(out, engine))
    initial = _initial_trainable(config, _mistral7b_overrides(runs["ddp"], "ddp"))

    # after one step every trainable tensor has changed and is fp32 (DeepSpeed: its fp32 masters)
    ddp_step1 = load_file(str(_checkpoint(runs["ddp"] / "ray", 1, 1) / "engine" / "trainable.safetensors"))
    ds_folder = _checkpoint(runs["deepspeed"] / "ray", 1, 1) / "engine"
    ds_step1 = get_fp32_state_dict_from_zero_checkpoint(str(ds_folder), tag="ds", exclude_frozen_parameters=True)
    assert set(ddp_step1) == set(ds_step1) == set(initial) and any("lora_A" in n for n in initial)
    for name, start in initial.items():
        for step1 in (ddp_step1[name], ds_step1[name]):
            assert step1.dtype == torch.float32
            assert not torch.equal(step1, start), name  # lora_A at step 1: by weight decay only (B = 0)
        # both engines took the same step: Adam's first update is -lr * sign(grad) (+ weight decay), so compare its
        # direction; bf16 noise flips the sign of a few near-zero gradient elements
        ddp_update = (ddp_step1[name] - start).flatten()
        ds_update = (ds_step1[name].detach() - start).flatten()
        agree = torch.nn.functional.cosine_similarity(ddp_update, ds_update, dim=0)
        assert agree > 0.9, (name, float(agree))

    for stage in (1, 2):
        ddp, ds = _losses(runs["ddp"], stage), _losses(runs["deepspeed"], stage)
        assert len(ddp) == len(ds) == 3
        for a, b in zip(ddp, ds, strict=True):
            assert abs(a - b) <= 0.02 * max(1.0, abs(a)), (stage, ddp, ds)  # bf16 tolerance
        _check_reload(runs["ddp"], stage, atol=1e-5)  # the export holds exactly the trained fp32 tensors
        _check_reload(runs["deepspeed"], stage, atol=1e-2)  # fp32 masters vs the bf16 working copies
        final = runs["deepspeed"] / f"stage{stage}" / "final"
        assert (final / "adapter").is_dir() and not (final / "model.safetensors").exists()  # base never gathered
        part = json.loads((runs["deepspeed"] / f"stage{stage}" / "zero_partition.json").read_text())
        assert part["local_numel"] < part["full_numel"] / 1.5, part  # ZeRO-3 really partitions (about half each)
        for run in runs.values():  # dev metrics at step 2 (between steps) and at the last step, on both engines
            dev = [json.loads(x) for x in (run / f"stage{stage}" / "dev.jsonl").read_text().splitlines()]
            assert [d["step"] for d in dev] == [2, 3] and all(-100 <= d["sts_spearman"] <= 100 for d in dev), dev


def test_smoke_cpu_ray_path_equals_local_path(tmp_path, monkeypatch):
    """Same config, same seed, fp32: 2 Ray Train workers (gathered negatives, averaged gradients) give the losses
    of one local process, on both stages."""
    from tests.helpers import save_tiny_backbone

    monkeypatch.setenv("NVEMBED_TINY_MODEL", save_tiny_backbone(tmp_path / "tiny"))
    fp32 = ["lora.dropout=0.0", "stage1.run.autocast=off", "stage2.run.autocast=off"]  # no RNG or rounding apart
    _train("jobs/configs/smoke_cpu.yaml", f"output_dir={tmp_path / 'ray'}", *fp32)
    _train("jobs/configs/smoke_cpu.yaml", f"output_dir={tmp_path / 'local'}", *fp32, local=True)
    for stage in (1, 2):
        ray_losses, local_losses = _losses(tmp_path / "ray", stage), _losses(tmp_path / "local", stage)
        assert len(ray_losses) == len(local_losses) > 1 and len(set(local_losses)) > 1
        assert ray_losses == pytest.approx(local_losses, abs=1e-5), (ray_losses, local_losses)
        for run in ("ray", "local"):
            _check_reload(tmp_path / run, stage, atol=1e-5)
    stage2 = json.loads((tmp_path / "ray" / "stage2" / "final" / "nvembed_config.json").read_text())
    assert stage2["config"]["lora"]["enabled"]


@pytest.mark.slow  # 2 min; keeps the default run near 15 min (make test-slow runs it)
def test_quickstart_in_shape(tmp_path):
    """The quickstart (MiniLM, latent head, 2 DDP workers, both stages, then evaluation) on fewer steps and rows,
    evaluated on a tiny local STS task."""
    from tests.integration.local_tasks import make_local_tasks

    tasks = make_local_tasks(tmp_path / "tasks")
    data = {
        1: f"[{{name: snli, format: triplets, path: {TRAIN}/snli_triplets.jsonl, max_rows: 300}}]",
        2: f"[{{name: stsbenchmark, format: sts, path: {TRAIN}/stsb_train.jsonl, mine_negatives: true, max_rows: 300}},"
        f" {{name: banking77, format: classification, path: {TRAIN}/banking77_train.jsonl, max_rows: 300}}]",
    }
    steps = [f"stage{n}.{k}" for n in (1, 2) for k in ("run.max_steps=3", "run.checkpoint_every=0")]
    evaluation = [f"evaluation.tasks={{STSBenchmark: {tasks['STSBenchmark']}}}", "evaluation.workers=1"]
    _train(
        "jobs/configs/quickstart.yaml",
        f"output_dir={tmp_path / 'run'}",
        f"stage1.data.datasets={data[1]}",
        f"stage2.data.datasets={data[2]}",
        *steps,
        *evaluation,
    )
    for stage in (1, 2):
        assert len(_losses(tmp_path / "run", stage)) == 3
        _check_reload(tmp_path / "run", stage, atol=1e-5)
    report = next((tmp_path / "run").rglob("report.md")).read_text()
    assert "STSBenchmark" in report


def test_minilm_recipe_in_shape(tmp_path):
    """The real-data recipe's own settings (bf16 autocast, full fine-tuning, latent head, mining, decontamination)
    on bundled slices instead of ``$NVEMBED_DATA``, with ``nvembed train --local`` (one process: its scaling is one
    worker, and its benchmark runs it so)."""
    stage1 = f"[{{name: snli, format: triplets, path: {TRAIN}/snli_triplets.jsonl, max_rows: 300}}]"
    stage2 = (
        f"[{{name: stsbenchmark, format: sts, path: {TRAIN}/stsb_train.jsonl, mine_negatives: true, max_rows: 300}},"
        f" {{name: banking77, format: classification, path: {TRAIN}/banking77_train.jsonl, max_rows: 300}}]"
    )
    evaluation_texts = "[nvembed/resources/eval/stsbenchmark/test.jsonl]"
    overrides = [f"output_dir={tmp_path / 'run'}", f"stage1.data.datasets={stage1}", f"stage2.data.datasets={stage2}"]
    for n in (1, 2):
        overrides += [
            f"stage{n}.data.decontaminate={evaluation_texts}",
            f"stage{n}.run.max_steps=2",
            f"stage{n}.run.batch_size=8",
            f"stage{n}.run.checkpoint_every=0",
        ]
    _train("jobs/configs/minilm_recipe.yaml", *overrides, local=True)  # as benchmarks/minilm_recipe.py runs it
    for stage in (1, 2):
        assert len(_losses(tmp_path / "run", stage)) == 2
        _check_reload(tmp_path / "run", stage, atol=1e-5)


@pytest.mark.slow  # 1.2 min; keeps the default run near 15 min (make test-slow runs it)
def test_mistral7b_sweep_in_shape(tmp_path):
    """``nvembed tune tune/configs/mistral7b_gpu.yaml``: Ray-Train trials of the 7B job (ZeRO-3, bf16, LoRA) with
    dev metrics as the objective; one point of the space, 2 CPU workers, 3 steps."""
    job = _mistral7b_overrides(tmp_path / "job", "deepspeed", dev=False)
    sets = [f"set.{o}" for o in job if not o.startswith("stage2")]
    sets += [
        "set.stage1.run.checkpoint_every=3",
        f"set.dev={{every: 3, sts: {DEV_STS}, retrieval_weight: 0, max_sts_pairs: 32, max_length: 64, batch_size: 16}}",
    ]
    args = [
        "tune",
        "tune/configs/mistral7b_gpu.yaml",
        "--set",
        f"output_dir={tmp_path / 'sweep'}",
        "--set",
        "space={lora.rank: {grid: [8]}, pooling.num_latents: {grid: [8]}}",
        "--set",
        "scheduler.grace_period=1",
        *(a for s in sets for a in ("--set", s)),
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore", DS_ACCELERATOR="cpu")
    run = subprocess.run(
        [sys.executable, "-m", "nvembed", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=800
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = json.loads((tmp_path / "sweep" / "trials.json").read_text())
    assert len(rows) == 1 and rows[0]["status"] == "completed", rows
    assert -100 <= rows[0]["objective"] <= 100
