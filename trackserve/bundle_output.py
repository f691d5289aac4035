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
import stat
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .bundle import ENGINES_DIR, PIPELINE_FILE
from .errors import InputError
from .paths import signals_deferred



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
        # (a bundle read by its pipeline.json file, as load_bundle reads it, is that file's directory)
        if path is not None and (_target(path).parent if _target(path).is_file() else _target(path)) == target:
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
    if target.is_dir():  # written beside it, or (a read-only parent, a mount point) inside it
        places = [target.parent, target]
    else:
        ancestor = target.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise InputError(f"{option} {output}: cannot create the directory ({ancestor} is not a directory)")
        places = [ancestor]
    problems = []
    for place in places:
        try:  # permission bits do not tell (root, /proc): try making a directory there
            os.rmdir(tempfile.mkdtemp(prefix=".trackserve-probe-", dir=place))
            return output
        except OSError as error:
            problems.append(f"{place}: {error.strerror or error}")
    what = "write the bundle into the directory" if target.is_dir() else "create the directory"
    raise InputError(f"{option} {output}: cannot {what} ({'; '.join(problems)})")


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
    """A fresh directory for the job to write its bundle into; when the ``with`` block ends
    without an error the new bundle replaces the one at ``output`` (whose other files, such as
    a README, are kept unless the new bundle has files of their names), otherwise it is removed
    and ``output`` stays as it was.

    The fresh directory lies beside ``output``, and the old directory is renamed aside before
    the new one takes its name, so the old bundle is removed only once the new one is in
    place. Where ``output`` cannot be renamed (a mount point) or nothing can be created beside
    it (a read-only parent), the fresh directory lies inside ``output`` and the new bundle's
    files replace the old bundle's there, one by one. ``output`` keeps its permissions."""
    target = _target(output)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the directory {target.parent} ({error.strerror or error})") from None
    try:
        # (a long name shortened: the scratch name must fit the file system's 255 bytes)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name[:120]}.partial-", dir=target.parent))
    except OSError:
        if not target.is_dir():
            raise
        partial = Path(tempfile.mkdtemp(prefix=".trackserve.partial-", dir=target))  # written in place at the end
    if target.is_dir():
        mode = stat.S_IMODE(target.stat().st_mode)
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o777 & ~umask  # a directory as mkdir makes it, not mkdtemp's private 0700
    os.chmod(partial, mode)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    try:
        with signals_deferred():  # a stop now would leave neither bundle in place, or both
            if partial.parent == target or not _replace_by_renaming(partial, target):
                _replace_in_place(partial, target)
    except OSError as error:  # the new bundle is whole: leave it where it is and say so
        raise InputError(f"the new bundle is complete in {partial} but could not take the place of {target} "
                         f"({error.strerror or error}); move it there by hand") from None


def _replace_by_renaming(partial: Path, target: Path) -> bool:
    """Put ``partial`` in ``target``'s place by renaming (the old directory aside first, then
    removed), moving the old directory's other files into the new one; False, with nothing
    changed, when ``target`` cannot be renamed (a mount point, another file system)."""
    if not target.exists():
        partial.rename(target)
        return True
    aside = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
    try:
        target.rename(aside)
    except OSError:
        return False
    moved = []
    try:
        own = bundle_files(aside)
        for entry in aside.iterdir():
            if entry.name not in own and not (partial / entry.name).exists():
                entry.rename(partial / entry.name)
                moved.append(entry.name)
        partial.rename(target)
    except OSError:
        for name in moved:  # as it was: the other files back, the old directory back in place
            (partial / name).rename(aside / name)
        aside.rename(target)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return True


def _replace_in_place(partial: Path, target: Path) -> None:
    """Replace the bundle in ``target`` by the one in ``partial`` file by file (each file
    renamed over the old one; the old bundle's files the new one lacks removed), then remove
    ``partial``; for a ``target`` that cannot be renamed."""
    old_own = bundle_files(target) if (target / PIPELINE_FILE).is_file() else set()
    new_names = {entry.name for entry in partial.iterdir()}
    for name in sorted(old_own - new_names):
        stale = target / name
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)
        elif stale.exists() or stale.is_symlink():
            stale.unlink()
    for entry in sorted(partial.iterdir(), key=lambda entry: entry.name == PIPELINE_FILE):  # pipeline.json last
        destination = target / entry.name
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        shutil.move(str(entry), str(destination))
    shutil.rmtree(partial, ignore_errors=True)
