"""The ``trackserve`` command: one subcommand per user job.

Each subcommand lives in its own module under :mod:`trackserve.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` to a function
``handler(args) -> int``, and an ``ORDER`` integer that places it in ``--help``.
Modules are discovered, so adding a subcommand is adding a module. Modules import their heavy dependencies (torch, onnx) inside
the handler, so ``trackserve --help`` and the lean jobs stay fast and torch-free.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import signal
import sys
import threading
import warnings

from . import __version__
from .errors import GraphConventionWarning, HitOrderWarning, TrackserveError
from .paths import file_problem


def command_modules() -> list:
    """The subcommand modules of :mod:`trackserve.commands`, ordered by their ``ORDER`` constant."""
    from . import commands

    modules = [
        importlib.import_module(f"trackserve.commands.{info.name}")
        for info in pkgutil.iter_modules(commands.__path__)
        if not info.name.startswith("_")
    ]
    return sorted(modules, key=lambda module: (getattr(module, "ORDER", 100), module.__name__))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``trackserve`` command with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="trackserve",
        description="GNN-based particle tracking as a service: simulate, train, export, run and serve ExaTrkX pipelines.",
    )
    parser.add_argument("--version", action="version", version=f"trackserve {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in command_modules():
        module.register(subparsers)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt, so that a job's
    clean-ups (a half-written bundle removed, servers stopped) run on either."""


def _subcommand_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of the subcommand ``command`` of the ``trackserve`` parser."""
    for action in parser._subparsers._group_actions:  # argparse keeps the subparsers' map here
        if command in action.choices:
            return action.choices[command]
    return parser


class _OutputGuard:
    """Standard output (or error) that drops what is written once its reader has gone (a
    broken pipe) instead of raising, so that the job goes on to its end; ``reader_gone``
    says it happened."""

    def __init__(self, stream):
        self.stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                self._gone()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._gone()

    def _gone(self) -> None:
        self.reader_gone = True
        _discard(self.stream)

    def __getattr__(self, name):  # fileno, isatty, encoding, ... of the stream itself
        return getattr(self.stream, name)


def _discard(stream) -> None:
    """Point ``stream`` (standard output or error) at /dev/null, so that nothing more (Python's
    flush at exit) writes to a pipe whose reader is gone."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
    except (OSError, ValueError, AttributeError):  # a stream without a file descriptor (tests)
        pass


def _noting(command: str, show):
    """A ``warnings.showwarning`` that writes trackserve's own warnings about the input (hits
    out of order, a graph of another convention) as ``trackserve COMMAND: note: ...`` lines,
    as the commands write their notes, and leaves the others to ``show``."""
    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (HitOrderWarning, GraphConventionWarning)):
            print(f"trackserve {command}: note: {message}", file=sys.stderr if file is None else file)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


def _report(line: str) -> None:
    """Print a job's last line (its error, its stop) to stderr; a reader of stderr that has
    gone (`trackserve ... 2>&1 | head -1`) must not turn the job's status into a traceback's 1."""
    try:
        print(line, file=sys.stderr, flush=True)
    except BrokenPipeError:
        _discard(sys.stderr)


#: The stop signals this process received (SIGINT, SIGTERM), in order: an extension module
#: stopped while it loads may fail with an ImportError that does not carry the interrupt.
_received: list[int] = []


def _raise_terminated(signum, frame):
    _received.append(signal.SIGTERM)
    raise Terminated()


def _raise_interrupted(signum, frame):
    _received.append(signal.SIGINT)
    raise KeyboardInterrupt()


#: Options whose value is a comma-separated list that may start with a minus sign.
LIST_OPTIONS = ("--vertex-shifts",)
_NUMBER_LIST = re.compile(r"^-\d|^-\.\d")


def joined_list_values(argv: list[str]) -> list[str]:
    """``argv`` with ``--vertex-shifts -100,0,100`` written as ``--vertex-shifts=-100,0,100``:
    argparse takes a value that starts with ``-`` and is not a plain number for an option."""
    joined: list[str] = []
    arguments = iter(argv)
    for argument in arguments:
        # the option, or a prefix of it that argparse takes for it (--vertex-shift)
        if argument.startswith("--v") and any(option.startswith(argument) for option in LIST_OPTIONS):
            value = next(arguments, None)
            if value is not None and _NUMBER_LIST.match(value):
                joined.append(f"{argument}={value}")
                continue
            joined.append(argument)
            if value is not None:
                joined.append(value)
            continue
        joined.append(argument)
        if argument == "--":
            joined.extend(arguments)
    return joined


def _refuse_empty_values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with a usage error naming the first argument given as an empty string (what an
    unset shell variable gives, ``--bundle "$B"``): no option takes one, and a path would
    otherwise be read as the current directory or as not given at all."""
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        values = value if isinstance(value, list) else [value]
        if any(isinstance(item, str) and not item.strip() for item in values):
            name = "/".join(action.option_strings) or action.metavar or action.dest
            parser.error(f"argument {name}: empty value (an unset shell variable?): give one, or leave the "
                         + ("option" if action.option_strings else "argument") + " out")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``trackserve`` console script; returns the exit status.

    Ctrl-C gives status 130 and SIGTERM 143 (128 + the signal), each after the job's
    clean-ups ran and with one line saying so; also while the command's modules load,
    before it starts (an extension module stopped while it loads fails as an ImportError)."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum, default, handler in ((signal.SIGTERM, signal.SIG_DFL, _raise_terminated),
                                         (signal.SIGINT, signal.default_int_handler, _raise_interrupted)):
            if signal.getsignal(signum) is default:
                previous[signum] = signal.signal(signum, handler)
    del _received[:]
    try:
        return _run(argv)
    except (KeyboardInterrupt, ImportError) as error:  # a stop before the command had started
        stop = _stop_signal(error)
        if stop is None:
            raise
        _report(f"trackserve: {_stopped(stop)}")
        return 128 + stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop_signal(error: BaseException) -> int | None:
    """SIGTERM or SIGINT when ``error`` is (or was raised while handling, or from) a stop by
    that signal, or is an ImportError after one: a module whose loading a signal cut short
    fails so, with or without the interrupt attached."""
    seen, first = set(), error
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, Terminated):
            return signal.SIGTERM
        if isinstance(error, KeyboardInterrupt):
            return signal.SIGINT
        error = error.__cause__ or error.__context__
    return _received[0] if isinstance(first, ImportError) and _received else None


def _stopped(signum: int) -> str:
    return "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"


def _run(argv: list[str] | None) -> int:
    """:func:`main` once its Ctrl-C and SIGTERM handlers are in place."""
    parser = build_parser()
    args, extra = parser.parse_known_args(joined_list_values(sys.argv[1:] if argv is None else list(argv)))
    if getattr(args, "handler", None) is None:
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        parser.print_help()
        return 2
    if extra:  # named by the subcommand's parser, with its usage (argparse names the top level's)
        _subcommand_parser(parser, args.command).error(f"unrecognized arguments: {' '.join(extra)}")
    _refuse_empty_values(_subcommand_parser(parser, args.command), args)
    # A reader of the output that stops early (`trackserve ... | head`) must not cut the job
    # short (a bundle not written, labels lost): what is printed after is dropped, the job
    # finishes, and the status is the one a shell gives a process killed by SIGPIPE.
    guarded = sys.stdout = _OutputGuard(sys.stdout)
    guarded_errors = sys.stderr = _OutputGuard(sys.stderr)  # its notes too (`... 2>&1 | head`)
    shown = warnings.showwarning
    warnings.showwarning = _noting(args.command, shown)
    try:
        status = int(args.handler(args) or 0)
        sys.stdout.flush()
        return 128 + signal.SIGPIPE if guarded.reader_gone or guarded_errors.reader_gone else status
    except BrokenPipeError:  # a write that did not go through the guard
        _discard(sys.stdout)
        return 128 + signal.SIGPIPE
    except TrackserveError as error:
        _report(f"trackserve {args.command}: error: {error}")
        return 2
    except OSError as error:
        if error.filename is None:  # not a file's problem: a bug, shown whole
            raise
        _report(f"trackserve {args.command}: error: {file_problem(error)}")
        return 2
    except (KeyboardInterrupt, ImportError) as error:
        stop = _stop_signal(error)
        if stop is None:
            raise
        _report(f"trackserve {args.command}: {_stopped(stop)}")
        return 128 + stop
    finally:
        warnings.showwarning = shown
        if sys.stdout is guarded:
            sys.stdout = guarded.stream
        if sys.stderr is guarded_errors:
            sys.stderr = guarded_errors.stream


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
