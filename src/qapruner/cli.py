"""The ``qapruner`` command line. Each subcommand lives in ``qapruner.commands.<name>`` and exposes
``add_parser(subparsers)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import signal
import sys
from contextlib import contextmanager

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


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``, a job scheduler, a session that ends) stops a run like Ctrl-C: the ``finally``
    blocks run, so finished items are saved and compare writes its checkpoint (docs/compare.md)."""

    exit_code = 128 + signal.SIGTERM


@contextmanager
def _sigterm_stops_cleanly():
    def stop(signum, frame):
        raise Terminated()

    try:
        old = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str] | None = None) -> int:
    from . import parallel

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    try:
        if parallel.wants_launch(args):  # --processes N: N workers through accelerate, each runs ARGV
            return parallel.launch(argv, args)
        parallel.init(args)  # a launched worker joins its process group; the thread count is set
        with _sigterm_stops_cleanly():
            rc = int(args.func(args) or 0)
        parallel.finish()
        return rc
    except QAPrunerError as exc:
        if not isinstance(exc, parallel.Relayed):
            who = f" (process {parallel.rank()})" if not parallel.is_main() else ""
            print(f"qapruner: error{who}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if parallel.is_main() and not parallel.launched_by_qapruner():  # (then the launcher says it)
            how = "terminated" if isinstance(exc, Terminated) else "interrupted"
            print(f"qapruner: {how}; finished items are saved and a rerun resumes.", file=sys.stderr)
        return getattr(exc, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
