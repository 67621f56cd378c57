"""The ``qapruner`` command line. Each subcommand lives in ``qapruner.commands.<name>`` and exposes
``add_parser(subparsers)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import sys

from .commands import compare, generate, perplexity, quantize, train
from .commands import eval as evaluate
from .errors import QAPrunerError

COMMANDS = (evaluate, compare, quantize, generate, train, perplexity)  # each has add_parser(subparsers) and run(args) -> int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qapruner", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except QAPrunerError as exc:
        print(f"qapruner: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qapruner: interrupted; finished items are saved and a rerun resumes.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
