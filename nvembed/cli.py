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
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
