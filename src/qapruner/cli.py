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
    from . import parallel

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    try:
        if parallel.wants_launch(args):  # --processes N: N workers through accelerate, each runs ARGV
            return parallel.launch(argv, args)
        parallel.init(args)  # a launched worker joins its process group; the thread count is set
        rc = int(args.func(args) or 0)
        parallel.finish()
        return rc
    except QAPrunerError as exc:
        if not isinstance(exc, parallel.Relayed):
            who = f" (process {parallel.rank()})" if not parallel.is_main() else ""
            print(f"qapruner: error{who}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if parallel.is_main() and not parallel.launched_by_qapruner():  # (then the launcher says it)
            print("qapruner: interrupted; finished items are saved and a rerun resumes.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
