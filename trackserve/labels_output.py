"""Where the jobs that run events (``run``, ``client``) write each event's labels, and their notes on the inputs.

Everything that could stop a labels file from being written is checked before the first
event runs: the output directory (created if missing), and every event's file name,
``<output>/<name>-labels.csv``. Two inputs of the same name (the same file given twice,
or ``a/evt_1.csv`` and ``b/evt_1.csv``) would write one file, the second over the first,
so they are refused up front instead of losing the first event's labels.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import InputError, OutputError
from .events.sources import input_files, input_name
from .events.submission import SUBMISSION_COLUMNS
from .paths import DEFAULT_LABELS_DIRECTORY, output_directory, signals_deferred

#: How many skipped files a note names before it only counts them.
_NAMED = 3


def chosen_output(output: str | None, no_labels: bool) -> Path | None:
    """The labels directory of ``--output`` (default :data:`~trackserve.paths.DEFAULT_LABELS_DIRECTORY`),
    None with ``--no-labels``; both given is an InputError (the directory would receive nothing)."""
    if no_labels:
        if output is not None:
            raise InputError("--no-labels writes no labels files, so --output would receive nothing: leave one of "
                             "them out")
        return None
    return Path(DEFAULT_LABELS_DIRECTORY if output is None else output)


class EarlierLabels:
    """The labels files an earlier run left where this run writes (``files``, None: no labels),
    so that none passes for this run's result: said on stderr at the start, each replaced as
    this run writes its event's labels (:meth:`replaced`), removed when its event fails now
    (:meth:`remove`), and, once this run changed any, the ones not yet replaced removed when
    it stops before the end (:meth:`remove_unreplaced`: Ctrl-C, SIGTERM, an error)."""

    def __init__(self, command: str, files: list[Path] | None):
        self.command = command
        existing = [path for path in files or () if path.is_file()]
        self.left = set(existing)
        self.changed = False  # whether this run replaced or removed one of them yet
        if existing:
            print(f"trackserve {command}: note: {len(existing)} labels file{'s' if len(existing) > 1 else ''} of an "
                  f"earlier run in {existing[0].parent} (such as {existing[0].name}) will be replaced", file=sys.stderr)

    def replaced(self, path: Path) -> None:
        """This run wrote ``path``: it is no longer an earlier run's."""
        self.changed = self.changed or path in self.left
        self.left.discard(path)

    def write(self, path: Path, event_id: int, hit_ids, labels) -> OutputError | None:
        """Write this run's labels of one event to ``path`` (:func:`~trackserve.events.submission.write_submission`)
        and count the file as this run's, both or neither: a Ctrl-C or SIGTERM meanwhile is held
        back until both are done. The :class:`OutputError` that kept it from being written
        (no space left, say), else None."""
        from .events import submission  # (looked up at each call: tests stand in for it)

        with signals_deferred():
            try:
                submission.write_submission(path, event_id, hit_ids, labels)
            except OutputError as error:
                return error
            self.replaced(path)
        return None

    def remove(self, path: Path) -> bool:
        """Remove the earlier run's labels at ``path`` of an event that failed now (it would have
        been replaced) and say so on stderr; whether there was one."""
        self.left.discard(path)
        if not path.is_file():
            return False
        try:
            path.unlink()
        except OSError as error:  # the event is reported failed; the others still run
            print(f"trackserve {self.command}: note: could not remove {path}, an earlier run's labels of the event "
                  f"that failed ({error.strerror or error}): it is not this run's", file=sys.stderr)
            return False
        self.changed = True
        print(f"trackserve {self.command}: note: removed {path}, an earlier run's labels of the event that failed",
              file=sys.stderr)
        return True

    def remove_unreplaced(self) -> int:
        """Remove the earlier run's labels files this run has not replaced, when it stops before its
        last event having changed some (otherwise the directory still holds one whole earlier
        run, left as it is), and say so on stderr; how many were removed. A file that cannot be
        removed is named, not raised: the run's own reason for stopping is what it reports. A
        second Ctrl-C or SIGTERM meanwhile is held back until they are all removed."""
        with signals_deferred():
            return self._remove_unreplaced()

    def _remove_unreplaced(self) -> int:
        if not self.changed:
            return 0
        removed = 0
        for path in sorted(self.left):
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as error:
                print(f"trackserve {self.command}: note: could not remove {path}, an earlier run's labels "
                      f"({error.strerror or error})", file=sys.stderr)
        if removed:
            print(f"trackserve {self.command}: note: stopped before the end: removed {removed} labels "
                  f"file{'s' if removed > 1 else ''} of an earlier run in {sorted(self.left)[0].parent} that this run "
                  "had not replaced yet, so that none passes for this run's", file=sys.stderr)
        self.left.clear()
        return removed


def missing_directories(output: Path | None) -> list[Path]:
    """The directories writing into ``output`` would create (it and its missing parents),
    deepest first: what :func:`remove_created` removes again when the run is refused after."""
    if output is None:
        return []
    missing, directory = [], Path(output).absolute()
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    return missing


def remove_created(directories: list[Path]) -> None:
    """Remove the ``directories`` (:func:`missing_directories`, deepest first) that are still
    empty: a run refused once it made the output directory (its bundle would not load, a
    Ctrl-C while loading) leaves nothing behind."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:  # not empty (something else wrote there), or gone
            return


def labels_files(output: Path | None, inputs: list[tuple[str, Path]]) -> list[Path] | None:
    """The labels file of each input listed by :func:`~trackserve.events.sources.list_inputs`,
    with the output directory created (None: no labels written).

    Raises InputError when the directory cannot be used, when two inputs have the same
    name (so the same labels file), or when a labels file's path is a directory, one of
    the inputs' files, or a file that is not a labels file (it would be written over, or
    removed as stale)."""
    if output is None:
        return None
    first_of: dict[str, Path] = {}
    for kind, path in inputs:  # before the directory is created: a refused run leaves nothing behind
        name = input_name(kind, path)
        if name in first_of:
            same = f"{path} is given twice" if first_of[name].resolve() == path.resolve() else (
                f"{first_of[name]} and {path} have the same name")
            raise InputError(f"{same}: both would write {Path(output) / (name + '-labels.csv')}; "
                             "give each event once, and events of the same name in separate runs (--output)")
        first_of[name] = path
    # (the checks below fail only on what the directory already holds: none of them leaves it created)
    return _checked_labels_files(output_directory(output, "--output"), inputs)


def _checked_labels_files(directory: Path, inputs: list[tuple[str, Path]]) -> list[Path]:
    """The labels files of inputs of distinct names in ``directory``; InputError as :func:`labels_files` says."""
    files = []
    # every file an input reads (a TrackML prefix's files too): none may be written over
    read = {file.resolve() for file in input_files(inputs)}
    for kind, path in inputs:
        name = input_name(kind, path)
        target = directory / f"{name}-labels.csv"
        if target.is_dir():
            raise InputError(f"cannot write the labels of {path}: {target} is a directory")
        if target.resolve() in read:
            raise InputError(f"the labels of {path} would be written over {target}, which is one of the inputs; "
                             "give another --output, or rename that input")
        if target.exists() and not _is_labels_file(target):
            raise InputError(f"cannot write the labels of {path}: {target} exists and is not a labels file "
                             f"(its first line does not name the columns {','.join(SUBMISSION_COLUMNS)}); move it "
                             "away, or give another --output")
        files.append(target)
    return files


def _is_labels_file(path: Path) -> bool:
    """Whether ``path`` is a regular file that a run may replace: empty, or with a labels file's
    header (the submission columns, in any order, others allowed)."""
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as stream:
            first = stream.readline(4096)
    except OSError:
        return False
    if not first:
        return True
    columns = {column.strip().strip('"') for column in first.decode("utf-8", "replace").lstrip("\ufeff").split(",")}
    return set(SUBMISSION_COLUMNS) <= columns  # in any order, with others too, as read_submission reads them


def note_repeated_event_ids(command: str, inputs: list[tuple[str, Path]]) -> None:
    """Say on stderr which inputs listed by :func:`~trackserve.events.sources.list_inputs` get
    the same event id from their names (``event1`` and ``event000000001``; ``20-density``
    and ``30-density``, both 0): their labels files carry one ``event_id``, which a
    combined TrackML submission cannot tell apart."""
    from .errors import EventFormatError
    from .events.sources import input_event_id, input_name

    names_of: dict[int, list[str]] = {}
    for kind, path in inputs:
        try:
            names_of.setdefault(input_event_id(kind, path), []).append(input_name(kind, path))
        except EventFormatError:  # an id too large: named when the event is read
            continue
    repeated = [(event_id, names) for event_id, names in names_of.items() if len(names) > 1]
    if not repeated:
        return
    shown = "; ".join(f"{', '.join(names[:_NAMED])}{' ...' if len(names) > _NAMED else ''} have event id {event_id}"
                      for event_id, names in repeated[:_NAMED])
    more = f" (and {len(repeated) - _NAMED} more ids)" if len(repeated) > _NAMED else ""
    print(f"trackserve {command}: note: {shown}{more}, from their names: their labels files carry the same event_id, "
          "which one TrackML submission made of them cannot tell apart", file=sys.stderr)


def note_skipped(command: str, skipped: list[Path]) -> None:
    """Say on stderr which CSV files of the directories given were not read as events."""
    if not skipped:
        return
    named = ", ".join(str(path) for path in skipped[:_NAMED])
    more = f" and {len(skipped) - _NAMED} more" if len(skipped) > _NAMED else ""
    print(f"trackserve {command}: note: not read as events: {named}{more} (CSV files beside TrackML events, "
          "the files of an event without a hits file, CSV files compressed otherwise than with gzip, names ending "
          "in .CSV or another case (rename them .csv), links to nothing and other entries that are no regular "
          "file, and labels files; give a feature CSV by "
          "its file name to run it)", file=sys.stderr)


def note_input_problems(command: str, kind: str, path: Path, item, spec) -> None:
    """Say on stderr what makes an input's tracks doubtful although it runs: no hits at all;
    hits beyond the detector for the bundle's scales (:func:`~trackserve.events.features.beyond_detector`;
    for a feature file, features not scaled or in another order; for a TrackML event,
    positions not in mm) and a TrackML event's hits not numbered as TrackML numbers them
    (:func:`~trackserve.events.event.hit_numbering_problem`); and a TrackML event's truth or
    particles table left out because it does not read. ``kind``: ``"features"`` or
    ``"trackml"``; ``item``: the input as read (its ``features``, and ``event`` for TrackML);
    ``spec``: the bundle's features, None when unknown (then hits beyond the detector go unsaid)."""
    from .events.features import beyond_detector

    if item.features.shape[0] == 0:  # valid, but a file cut short or written empty reads the same
        print(f"trackserve {command}: note: {path}: holds no hits (an event of zero hits, labelled as such)",
              file=sys.stderr)
    found = None if spec is None else beyond_detector(item.features, spec)
    if found is not None:
        hint = "were the features scaled, and in this order?" if kind == "features" else "are x, y and z in mm?"
        print(f"trackserve {command}: note: {path}: {found}; {hint}", file=sys.stderr)
    numbering = item.event.hit_numbering_problem() if kind == "trackml" else None
    if numbering is not None:
        print(f"trackserve {command}: note: {path}: {numbering}", file=sys.stderr)
    if item.truth_problem is not None:
        left_out = "its particles table left out" if item.has_truth else "no metrics (its truth left out)"
        print(f"trackserve {command}: note: {path}: labelled with {left_out}: {item.truth_problem}", file=sys.stderr)
