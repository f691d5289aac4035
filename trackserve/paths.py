"""Where trackserve finds the files it ships: sample data, geometry and the default bundle.

They live next to the package in the repository (``data/`` and ``models/default/``);
the package is meant to be installed from a checkout (``pip install -e .``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import tempfile
import threading
from pathlib import Path

from .errors import InputError, OutputError, TrackserveError

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPOSITORY_ROOT / "data"
DEFAULT_GEOMETRY = DATA_DIR / "detectors.csv"
SAMPLE_EVENT = DATA_DIR / "event000000001"
#: Where ``run`` and ``client`` write labels files when ``--output`` is not given.
DEFAULT_LABELS_DIRECTORY = "trackserve-output"
DEFAULT_BUNDLE = REPOSITORY_ROOT / "models" / "default"


def shipped_path(path: Path, what: str) -> Path:
    """Return ``path`` if it exists, else raise an error naming ``what`` is missing and how to get it."""
    candidates = [path] + [path.with_name(path.name + suffix) for suffix in ("-hits.csv.gz", "-hits.csv")]
    if any(candidate.exists() for candidate in candidates):
        return path
    raise TrackserveError(
        f"the {what} shipped with trackserve is missing ({path}); trackserve looks for it in its "
        "repository checkout: install with `pip install -e .` from a clone, or give the path explicitly"
    )


def output_directory(path: str | Path, option: str) -> Path:
    """Create ``path`` (with its parents) as a job's output directory before the job does any work.

    Raises InputError naming ``option`` (the command-line option that gave the path) when
    the path exists but is not a directory, cannot be created, or cannot be written to, and
    when a path that does not exist yet reads as a file rather than a directory (``-``, a
    name ending ``.csv``, ``.gz``, ``.txt`` or ``.json``): the job writes files into it, so
    it would otherwise make a directory of that name without a word."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path}: exists and is not a directory")
    if not path.exists() and not path.is_symlink() and _looks_like_a_file(path):
        raise InputError(f"{option} {path}: names the directory the files are written into, and "
                         + ("'-' (standard output) is none" if str(path) == "-" else f"{path.name} reads as a file name")
                         + "; give a directory (one of that name that exists already is taken as it is)")
    if path.is_symlink() and not path.exists():
        raise InputError(f"{option} {path}: a symbolic link to {os.readlink(path)}, which does not exist; create that "
                         "directory, or give another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{option} {path}: cannot create the directory ({error.strerror or error})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: the directory is not writable")
    _probe_directory(path, f"{option} {path}")
    return path


#: Endings of a path that reads as a file, not the directory an output option wants.
_FILE_ENDINGS = (".csv", ".gz", ".txt", ".json")


def _looks_like_a_file(path: Path) -> bool:
    """Whether ``path`` reads as a file name (``-``, or one of :data:`_FILE_ENDINGS`)."""
    return str(path) == "-" or path.name.lower().endswith(_FILE_ENDINGS)


def _probe_directory(directory: Path, subject: str) -> None:
    """Create and remove a scratch file in ``directory`` (permission bits alone do not tell:
    root in /sys, a read-only file system); raise InputError naming ``subject`` if it fails."""
    try:
        handle, scratch = tempfile.mkstemp(prefix=".trackserve.", suffix=".probe", dir=directory)
    except OSError as error:
        raise InputError(f"{subject}: cannot create a file in {directory} ({error.strerror or error})") from None
    os.close(handle)
    os.unlink(scratch)


def same_file(first: str | Path, second: str | Path) -> bool:
    """Whether two paths name one file: the same file on disk (hard links and other spellings
    too) when both exist, else the same resolved path (two outputs not written yet)."""
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist (yet)
        return Path(first).resolve() == Path(second).resolve()


def output_file(path: str | Path, option: str) -> Path:
    """Check, before a job does its work, that it will be able to write the file ``path``.

    Raises InputError naming ``option`` when the path is a directory, its directory does
    not exist, the file is not writable, or no file can be created in its directory
    (tried by creating and removing a scratch file there: permission bits alone do not
    tell, e.g. for root in /proc). Leaves nothing behind."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path}: is a directory; give a file name")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"{option} {path}: {parent} is a file, not a directory")
    if not parent.is_dir():
        raise InputError(f"{option} {path}: the directory {parent} does not exist")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{option} {path}: not writable")
    _probe_directory(parent, f"{option} {path}")
    return path


def file_problem(error: OSError) -> str:
    """One line for an operating-system error on a file: the path(s) and what went wrong
    (``data/x.csv: Permission denied``), for a job that met it where no step named it."""
    where = str(error.filename) + (f" -> {error.filename2}" if error.filename2 is not None else "")
    return f"{where}: {error.strerror or error}"


_SPECIAL_FILES = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                  (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def written_path(path: Path) -> Path:
    """The file a write to ``path`` given by the user replaces: a symbolic link is written
    through (its target replaced, the link kept, as ``-o link`` means), any other path is itself."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def special_file(path: Path) -> str | None:
    """What ``path`` is when it exists and is neither a regular file nor a directory
    (``"a character device"``, ...), else ``None``."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return next((name for test, name in _SPECIAL_FILES if test(mode)), None)


#: The signals a user stops a job with, which :func:`signals_deferred` holds back.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_deferred():
    """Hold Ctrl-C and SIGTERM back while the block runs, then, when it ends without an error,
    act on the first one that came (its handler as it was: KeyboardInterrupt, ``Terminated``...),
    so that a few renames that must all happen, or none, are never cut in two; a block that
    fails keeps its own error. Only the main thread can hold signals; elsewhere (where Python
    never runs their handlers anyway) the block runs as it is. Keep the block short: a stop is
    answered only after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous: dict[int, object] = {}
    try:
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, lambda signum, frame: received.append(signum))
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:  # (only after a block that ended well: a failing one raises its own error above)
        act_on_signal(received[0], previous[received[0]])


def act_on_signal(signum: int, handler) -> None:
    """Act on signal ``signum`` now, held back until here, as ``handler`` (what
    ``signal.getsignal`` gave) would have: call a Python handler (KeyboardInterrupt,
    ``Terminated``...), or raise the signal again for the default action; nothing for one ignored."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)


def write_files_atomically(contents: list[tuple[Path, bytes]], *, follow_links: bool = False) -> None:
    """Write each ``(path, bytes)``: all to temporary files beside their paths first, then each
    renamed into place in the order given, so a failure or an interruption (Ctrl-C, SIGTERM)
    while writing leaves every path as it was and no temporary file; :class:`OutputError`
    names the file that could not be written. A path that is a device, FIFO or socket
    (``/dev/stdout``, say) is written into, never replaced by a regular file; a symbolic
    link is replaced by the file, or with ``follow_links`` written through (its target
    replaced, the link kept: for a file the user named, such as ``perf --csv``). A file
    replaced keeps its permission bits."""
    streams, files = [], []
    for path, data in contents:
        path = written_path(path) if follow_links else Path(path)
        (streams if special_file(path) else files).append((path, data))
    contents = files
    temporaries: list[Path] = []
    current = None
    try:
        for path, data in contents:
            current = path
            temporary = path.with_name(path.name + ".partial")
            temporaries.append(temporary)
            temporary.write_bytes(data)
            if path.is_file():  # a file replaced keeps its permissions (a private one stays private)
                os.chmod(temporary, stat.S_IMODE(path.stat().st_mode))
        with signals_deferred():  # every file renamed into place, or (a stop before) none
            for (path, _data), temporary in zip(contents, temporaries):
                current = path
                os.replace(temporary, path)
    except BaseException as error:
        for temporary in temporaries:
            try:
                temporary.unlink(missing_ok=True)
            except OSError:
                pass
        if isinstance(error, OSError):
            raise OutputError(f"cannot write {current}: {error.strerror or error}") from None
        raise
    for path, data in streams:
        try:
            with open(path, "wb") as stream:
                stream.write(data)
        except OSError as error:
            raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
