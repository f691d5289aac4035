"""The ``trackserve`` command: one subcommand per user job.

Each subcommand lives in its own module under :mod:`trackserve.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` to a function
``handler(args) -> int``. Modules import their heavy dependencies (torch, onnx) inside
the handler, so ``trackserve --help`` and the lean jobs stay fast and torch-free.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import TrackserveError

#: Subcommand modules, in the order ``--help`` lists them.
COMMAND_MODULES = [
    "simulate",
    "evaluate",
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``trackserve`` command with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="trackserve",
        description="GNN-based particle tracking as a service: simulate, train, export, run and serve ExaTrkX pipelines.",
    )
    parser.add_argument("--version", action="version", version=f"trackserve {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"trackserve.commands.{name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``trackserve`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except TrackserveError as error:
        print(f"trackserve {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"trackserve {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
