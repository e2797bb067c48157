"""The ``nvembed`` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from nvembed import demo

    parser = argparse.ArgumentParser(prog="nvembed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="encode and score the bundled STS Benchmark test set")
    demo.add_arguments(p)
    p.set_defaults(func=demo.main)

    p = sub.add_parser("train", help="run a training job (stage 1 and/or 2) from a YAML config")
    _job_arguments(p, "run only this stage (repeatable)", "single process, no Ray (one CPU/GPU; scaling ignored)")
    p.set_defaults(func=_train)

    p = sub.add_parser("prepare", help="curate a job's training data (convert, mine, decontaminate) on Ray Data")
    _job_arguments(p, "only this stage's data (repeatable)", "curate in this process (no Ray)")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("tune", help="Ray Tune sweep over dotted config keys (e.g. lora.rank x pooling.num_latents)")
    p.add_argument("config", help="sweep YAML (e.g. tune/configs/smoke.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a sweep key, repeatable")
    p.add_argument("--address", default=None, help="Ray cluster address (default: an embedded local Ray)")
    p.add_argument("--fresh", action="store_true", help="discard an interrupted sweep in output_dir and start over")
    p.set_defaults(func=_tune)

    p = sub.add_parser("submit", help="submit a command as a Ray job (Jobs API), stream its logs, return its status")
    p.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://HEAD:8265")
    p.add_argument("--runtime-env", default="cluster/runtime_env.yaml", help="runtime_env YAML (working_dir, pip, env)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    p.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- then the command, e.g. -- nvembed train CONFIG")
    p.set_defaults(func=_submit)

    p = sub.add_parser("evaluate", help="MTEB evaluation over Ray workers, one leaderboard table")
    p.add_argument("--model", required=True, help="nvembed export, sentence-transformers folder, hub name or packaged:")
    p.add_argument("--benchmark", default=None, help='mteb benchmark (default "MTEB(eng, v1)")')
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: the whole benchmark)")
    p.add_argument("--task-data", action="append", default=[], metavar="TASK=DIR", help="run TASK on a local folder")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--address", default=None, help="Ray address (default: start a local Ray)")
    p.add_argument("--output", required=True, help="results folder (mteb layout), embedding cache, errors, report")
    p.add_argument("--retries", type=int, default=1, help="retries per failing work item")
    p.add_argument("--batch-size", type=int, default=None, help="texts per forward pass (default: by --batch-tokens)")
    p.add_argument("--batch-tokens", type=int, default=16384, help="padded tokens per forward pass")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU actors, as stored on CPU) | float32 | bfloat16")
    p.add_argument("--no-merge-lora", action="store_true", help="encode with LoRA unmerged (default: merged)")
    p.add_argument("--shard-docs", type=int, default=1000, help="smallest retrieval-corpus shard, in documents")
    p.add_argument("--cpus-per-worker", type=float, default=1, help="logical CPUs (= torch threads) per actor")
    p.add_argument("--gpus-per-worker", type=float, default=None, help="default: 1 when the cluster has GPUs, else 0")
    p.add_argument("--baseline", action="store_true", help="treat --model as a plain sentence-transformers model")
    p.add_argument("--compare", action="append", default=[], metavar="LABEL=DIR", help="another mteb results folder")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("compress", help="prune and/or quantize a trained model's weights into a new export")
    p.add_argument("model", help="nvembed export (or any folder Embedder.from_pretrained loads)")
    p.add_argument("--out", required=True, help="the compressed export's folder")
    p.add_argument("--prune", default=None, help="magnitude | wanda | sparsegpt")
    p.add_argument("--sparsity", default=None, help="unstructured fraction per layer (0.5) or N:M kept (2:4)")
    p.add_argument("--quantize", default=None, help="weight-only: int8 (per channel) | int4 (per group)")
    p.add_argument("--group-size", type=int, default=None, help="int4 group width (default 128 where it divides)")
    p.add_argument("--calibration", default=None, help="texts for wanda/sparsegpt: JSONL, text file or BEIR folder")
    p.add_argument("--calibration-texts", type=int, default=128, help="how many calibration texts to sample")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_compress)
    return parser


def _compress(args: argparse.Namespace) -> int:
    from nvembed.compress import compress_model

    try:
        out = compress_model(
            args.model,
            args.out,
            calibration_path=args.calibration,
            calibration_texts=args.calibration_texts,
            seed=args.seed,
            prune_method=args.prune,
            sparsity=args.sparsity,
            quantize=args.quantize,
            group_size=args.group_size,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"nvembed compress: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            raise SystemExit(f"nvembed: {flag} expects NAME=VALUE, got {v!r}")
        k, val = v.split("=", 1)
        out[k.strip()] = val.strip()
    return out


def _evaluate(args: argparse.Namespace) -> int:
    from evaluation.local import LocalDataError
    from evaluation.report import write_report
    from evaluation.request import EvalRequest, Resources
    from evaluation.runner import resolve_tasks, run_evaluation

    task_data = _pairs(args.task_data, "--task-data")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    try:
        request = EvalRequest(
            model=args.model,
            output=args.output,
            tasks=tasks,
            benchmark=args.benchmark or "MTEB(eng, v1)",
            task_data=task_data,
            baseline=True if args.baseline else None,
            max_length=args.max_length,
            batch_size=args.batch_size,
            batch_tokens=args.batch_tokens,
            dtype=args.dtype,
            merge_lora=not args.no_merge_lora,
            shard_docs=args.shard_docs,
            resources=Resources(
                workers=args.workers,
                cpus_per_worker=args.cpus_per_worker,
                gpus_per_worker=args.gpus_per_worker,
                address=args.address,
                retries=args.retries,
            ),
        )
        outcome = run_evaluation(request)
    except (LocalDataError, ValueError) as err:
        print(f"nvembed evaluate: {err}", file=sys.stderr)
        return 2
    types = {t.metadata.name: t.metadata.type for t in resolve_tasks(request.benchmark, request.task_names)}
    name = outcome.results_dir.parent.name if outcome.results_dir else args.model
    paths = write_report(args.output, name, outcome.scores, types, outcome.failed, _pairs(args.compare, "--compare"))
    print(paths["md"].read_text())
    print(f"results: {outcome.results_dir}\nreport: {paths['md']} {paths['csv']} {paths['png']}")
    print(f"{len(outcome.scores)} tasks scored, {len(outcome.failed)} failed, {outcome.seconds:.1f} s")
    return 1 if outcome.failed else 0


def _job_arguments(p: argparse.ArgumentParser, stage_help: str, local_help: str) -> None:
    """The arguments every command that runs a job config takes (``train``, ``prepare``)."""
    p.add_argument("config", help="job YAML (e.g. jobs/configs/minilm_recipe.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, repeatable")
    p.add_argument("--stage", type=int, choices=[1, 2], action="append", help=stage_help)
    p.add_argument("--address", default=None, help="Ray cluster address (default: an embedded local Ray)")
    p.add_argument("--local", action="store_true", help=local_help)


def _train(args: argparse.Namespace) -> int:
    from nvembed.config import ConfigError, JobConfig, load_yaml
    from nvembed.data.readers import DataError
    from nvembed.training.job import run_job_locally

    try:
        job = load_yaml(args.config, JobConfig, args.set)
    except ConfigError as err:
        print(f"nvembed train: {err}", file=sys.stderr)
        return 2
    try:
        if args.local:
            finals = {n: r.final_model for n, r in run_job_locally(job, args.stage).items()}
        else:
            from nvembed.launch.trainer import run_job_on_ray

            finals = run_job_on_ray(job, args.stage, args.address)
    except DataError as err:
        print(f"nvembed train: bad training data (no worker was started): {err}", file=sys.stderr)
        return 2
    except ConfigError as err:  # found on the driver before any worker started (precision, instructions, ...)
        print(f"nvembed train: {err}", file=sys.stderr)
        return 2
    if job.evaluation is not None and finals:
        from nvembed.launch.evaluate_job import evaluate_final

        last = max(finals)
        _, scores = evaluate_final(Path(finals[last]), job.evaluation, Path(job.output_dir), args.address)
        if job.tracking is not None:  # the final scores join the job's MLflow run / TensorBoard
            from nvembed.tracking import Tracker

            tracker = Tracker(job.resolved_tracking(), job_key=str(Path(job.output_dir).resolve()))
            tracker.log_metrics(scores, step=0, prefix="eval")
            tracker.close()
    for n, final in finals.items():
        print(f"stage {n} final model: {Path(final).resolve()}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from nvembed.config import ConfigError, JobConfig, load_yaml
    from nvembed.data.readers import DataError

    try:
        job = load_yaml(args.config, JobConfig, args.set)
        if args.local:
            from nvembed.training.job import stage_rows

            for n in args.stage or job.stages():
                stage_rows(job.stage_config(n))
        else:
            from nvembed.launch.prepare import prepare_job

            prepare_job(job, args.stage, args.address)
    except DataError as err:
        print(f"nvembed prepare: bad training data: {err}", file=sys.stderr)
        return 2
    except ConfigError as err:
        print(f"nvembed prepare: {err}", file=sys.stderr)
        return 2
    return 0


def _tune(args: argparse.Namespace) -> int:
    from nvembed.config import ConfigError
    from nvembed.data.readers import DataError

    try:
        from tune.config import load_sweep
        from tune.sweep import run_sweep

        sweep = load_sweep(args.config, args.set)
        outcome = run_sweep(sweep, args.address, fresh=args.fresh)
    except (ConfigError, DataError) as err:
        print(f"nvembed tune: {err}", file=sys.stderr)
        return 2
    print(outcome.files["md"].read_text())
    print("report: " + " ".join(str(p) for p in outcome.files.values()))
    if outcome.best_yaml is not None:
        print(f"best configuration: {outcome.best_yaml}\n  train it: nvembed train {outcome.best_yaml}")
    errors = [r for r in outcome.rows if r["status"].startswith("error")]
    print(f"{len(outcome.rows)} trials ({len(errors)} failed) in {outcome.seconds:.1f} s")
    return 1 if errors or outcome.best_yaml is None else 0


def _submit(args: argparse.Namespace) -> int:
    from nvembed.launch.submit import submit

    entry = args.entrypoint[1:] if args.entrypoint[:1] == ["--"] else args.entrypoint
    if not entry:
        print(
            "nvembed submit: give the command after --, e.g. -- nvembed train jobs/configs/quickstart.yaml",
            file=sys.stderr,
        )
        return 2
    return submit(args.address, entry, args.runtime_env, wait=not args.no_wait)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
