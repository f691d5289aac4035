"""Where the jobs that write a whole bundle (``train``, ``rescale``) put it.

A bundle is never written over another directory unasked, and never left half-written:

* :func:`check_bundle_output`, before any work, refuses an output that is a file, a
  directory holding anything but a bundle, a bundle without ``--overwrite``, or the very
  bundle the job reads, and an output whose directory cannot be created or written;
* :func:`bundle_written_to` gives the job a fresh directory beside the output to write
  into; only when the job succeeds does it take the output's place (the old bundle's
  files removed, so none of them lingers next to the new ones). A job that fails or is
  interrupted leaves the output as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import InputError

PIPELINE_FILE = "pipeline.json"


def check_bundle_output(output: str | Path, *, overwrite: bool, reads: dict[str, str | Path | None] | None = None,
                        option: str = "--output") -> Path:
    """Check that a job may write a bundle to ``output`` (see the module docstring).

    ``reads``: the bundles the job reads, by the option that names them (an output equal
    to one of them is refused even with ``overwrite``). Raises InputError naming ``option``.
    """
    output = Path(output)
    for name, path in (reads or {}).items():
        if path is not None and Path(path).resolve() == output.resolve():
            raise InputError(f"{option} {output} is the bundle given by {name}, which this job reads: "
                             "write the new bundle to another directory")
    if output.exists() and not output.is_dir():
        raise InputError(f"{option} {output}: exists and is not a directory")
    if output.is_dir() and any(output.iterdir()):
        if not (output / PIPELINE_FILE).is_file():
            raise InputError(f"{option} {output} holds files but no bundle ({PIPELINE_FILE}); refusing to replace "
                             "them: give another directory")
        if not overwrite:
            raise InputError(f"{option} {output} already holds a bundle; give --overwrite to replace it, or "
                             "another directory")
    ancestor = output.resolve().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{option} {output}: cannot create the directory ({ancestor} is not a directory)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"{option} {output}: cannot create the directory ({ancestor} is not writable)")
    return output


@contextmanager
def bundle_written_to(output: str | Path) -> Iterator[Path]:
    """A fresh directory beside ``output`` for the job to write its bundle into; when the
    ``with`` block ends without an error it replaces ``output``, otherwise it is removed."""
    output = Path(output)
    parent = output.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the directory {parent} ({error.strerror or error})") from None
    partial = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=parent))
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if output.is_symlink():
        output.unlink()
    elif output.exists():
        shutil.rmtree(output)
    partial.rename(output)
