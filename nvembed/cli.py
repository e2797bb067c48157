"""The ``nvembed`` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    from nvembed import demo

    parser = argparse.ArgumentParser(prog="nvembed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="encode and score the bundled STS Benchmark test set")
    demo.add_arguments(p)
    p.set_defaults(func=demo.main)

    p = sub.add_parser("train", help="run a training job (stage 1 and/or 2) from a YAML config")
    p.add_argument("config", help="job YAML (e.g. jobs/configs/minilm_recipe.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, repeatable")
    p.add_argument("--stage", type=int, choices=[1, 2], action="append", help="run only this stage (repeatable)")
    p.set_defaults(func=_train)
    return parser


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
        results = run_job_locally(job, args.stage)
    except DataError as err:
        print(f"nvembed train: bad training data: {err}", file=sys.stderr)
        return 2
    for n, result in results.items():
        print(f"stage {n} final model: {result.final_model}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
