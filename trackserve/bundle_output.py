"""Where the jobs that write a whole bundle (``train``, ``rescale``) put it.

A bundle is never written over another directory unasked, and never left half-written:

* :func:`check_bundle_output`, before any work, refuses an output that is a file, a
  directory holding anything but a bundle, a bundle without ``--overwrite``, or the very
  bundle the job reads, and an output whose directory cannot be created or written;
* :func:`bundle_written_to` gives the job a fresh directory beside the output to write
  into; only when the job succeeds does it take the output's place (the old bundle's
  own files removed, so none of them lingers next to the new ones; other files there,
  such as a README, kept). A job that fails or is interrupted leaves the output as it
  was. A symbolic link is written through (its target replaced).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .bundle import ENGINES_DIR, PIPELINE_FILE
from .errors import InputError



def _target(output: str | Path) -> Path:
    """The directory ``output`` names, absolute, through any symbolic link (a link is written through)."""
    return Path(os.path.realpath(Path(output)))


def check_bundle_output(output: str | Path, *, overwrite: bool, reads: dict[str, str | Path | None] | None = None,
                        option: str = "--output") -> Path:
    """Check that a job may write a bundle to ``output`` (see the module docstring).

    ``reads``: the bundles the job reads, by the option that names them (an output equal
    to one of them is refused even with ``overwrite``). Raises InputError naming ``option``.
    """
    output = Path(output)
    target = _target(output)
    for name, path in (reads or {}).items():
        if path is not None and _target(path) == target:
            raise InputError(f"{option} {output} is the bundle given by {name}, which this job reads: "
                             "write the new bundle to another directory")
    if target == _target(Path.cwd()) or target in _target(Path.cwd()).parents:
        raise InputError(f"{option} {output} is the current directory (or holds it): the new bundle replaces the "
                         "directory it goes to; run from outside it, or give another directory")
    if target.exists() and not target.is_dir():
        raise InputError(f"{option} {output}: exists and is not a directory")
    if target.is_dir() and any(target.iterdir()):
        if not (target / PIPELINE_FILE).is_file():
            raise InputError(f"{option} {output} holds files but no bundle ({PIPELINE_FILE}); refusing to replace "
                             "them: give another directory")
        if not overwrite:
            raise InputError(f"{option} {output} already holds a bundle; give --overwrite to replace it, or "
                             "another directory")
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{option} {output}: cannot create the directory ({ancestor} is not a directory)")
    try:  # permission bits do not tell (root, /proc): try making a directory there
        os.rmdir(tempfile.mkdtemp(prefix=".trackserve-probe-", dir=ancestor))
    except OSError as error:
        raise InputError(f"{option} {output}: cannot create the directory ({ancestor}: "
                         f"{error.strerror or error})") from None
    return output


def bundle_files(directory: Path) -> set[str]:
    """The top-level names a bundle's ``pipeline.json`` makes its own: itself, its networks'
    files and weights, and ``engines/`` (other files, such as a README, are not the bundle's)."""
    names = {PIPELINE_FILE, ENGINES_DIR}
    try:
        networks = json.loads((directory / PIPELINE_FILE).read_text(encoding="utf-8")).get("networks", {})
    except (OSError, ValueError, AttributeError):
        return names
    for entry in networks.values() if isinstance(networks, dict) else ():
        if isinstance(entry, dict):
            for file in (entry.get("file"), (entry.get("weights") or {}).get("file")):
                if isinstance(file, str) and file:
                    names.add(Path(file).parts[0])
    return names


@contextmanager
def bundle_written_to(output: str | Path) -> Iterator[Path]:
    """A fresh directory beside ``output`` for the job to write its bundle into; when the
    ``with`` block ends without an error it replaces the bundle at ``output`` (whose other
    files, such as a README, move into the new one unless it has files of their names),
    otherwise it is removed and ``output`` stays as it was."""
    target = _target(output)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the directory {target.parent} ({error.strerror or error})") from None
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(partial, 0o777 & ~umask)  # a directory as mkdir makes it, not mkdtemp's private 0700
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    try:
        if target.is_dir():
            own = bundle_files(target)
            for entry in target.iterdir():
                if entry.name not in own and not (partial / entry.name).exists():
                    entry.rename(partial / entry.name)
            shutil.rmtree(target)
        partial.rename(target)
    except OSError as error:  # the new bundle is whole: leave it where it is and say so
        raise InputError(f"the new bundle is complete in {partial} but could not take the place of {target} "
                         f"({error.strerror or error}); move it there by hand") from None
