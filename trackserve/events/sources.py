"""Inputs of the jobs that run a pipeline: TrackML events or headerless feature CSVs.

``trackserve run`` (and the Triton client) accept both forms, files or directories:

* a TrackML event: a prefix (``data/event000000001``), one of its files, or a directory
  of events; features are computed from the hits with the bundle's feature spec, and
  the truth, when present, is kept for evaluation;
* a feature CSV: one hit per line, the bundle's features already computed (the input
  format of the published ExaTrkX service, e.g. its ``lrt_events/evt_12.csv``); its hits
  are numbered 1..N in file order, and its event id is the last number in the file name.

A directory is read as TrackML events when it holds any (a hits file), and as feature CSVs
otherwise; the CSV files it holds that are not read (other files beside TrackML events, the
files of an event without a hits file, CSV files compressed otherwise than with gzip, names
ending in ``.CSV``, links to nothing, and the ``*-labels.csv`` files ``trackserve run``
writes) can be collected with ``skipped``.
Each input has a name (:func:`input_name`), which names its labels file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import EventFormatError
from .event import Event
from .features import FeatureSpec, hit_features
from .trackml import (event_file, event_files, event_id_from_digits, event_id_from_prefix, find_event_prefixes, read_event,
                      read_feature_csv)

_TRACKML_FILE = re.compile(r"-(hits|truth|particles|cells)\.csv(\.gz)?$")
_HITS_FILE = re.compile(r"-hits\.csv(\.gz)?$")
_CSV_SUFFIX = re.compile(r"\.csv(\.gz)?$")
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")
#: The endings of the labels files ``trackserve run`` writes (``<event>-labels.csv``).
LABELS_SUFFIXES = ("-labels.csv", "-labels.csv.gz")


@dataclass
class InputEvent:
    """One event to run: its name, id, hit ids, features and (TrackML input only) the event itself."""

    name: str
    event_id: int
    hit_ids: np.ndarray
    features: np.ndarray
    event: Event | None = None
    #: Why the event's truth or particles table was left out (it does not read, or the two
    #: disagree), so that its metrics are computed without it or not at all; None when both
    #: read or are absent.
    truth_problem: str | None = None

    @property
    def has_truth(self) -> bool:
        """Whether the event carries truth, so that tracking metrics can be computed."""
        return self.event is not None and self.event.truth is not None


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def input_event_id(kind: str, path: Path) -> int:
    """The event id of an input listed by :func:`list_inputs`, from its name (without reading
    it): a feature file's last number, a TrackML prefix's ``event<digits>`` (0 without)."""
    if kind != "features":
        return event_id_from_prefix(path)
    match = _LAST_NUMBER.search(input_name("features", path))
    return event_id_from_digits(match.group(1), path) if match else 0


def input_name(kind: str, path: Path) -> str:
    """The name of an input listed by :func:`list_inputs` (without reading it): a feature
    file's name without its ``.csv`` / ``.csv.gz`` ending (or, named otherwise, without its
    last suffix), a TrackML event's prefix name."""
    if kind != "features":
        return path.name
    name = _CSV_SUFFIX.sub("", path.name)
    if name == path.name:  # named otherwise: without its last suffix (a name that is all dots kept whole)
        name = path.stem if path.stem.strip(".") else path.name
    return name


def read_feature_input(path: Path, num_features: int) -> InputEvent:
    """Read a feature CSV of ``num_features`` features per hit as an input (hits numbered
    1..N in file order, the event id the last number of its name)."""
    return _feature_csv_event(path, num_features)


def _feature_csv_event(path: Path, num_features: int) -> InputEvent:
    features = read_feature_csv(path, num_features)
    event_id = input_event_id("features", path)
    hit_ids = np.arange(1, features.shape[0] + 1, dtype=np.int64)
    return InputEvent(input_name("features", path), event_id, hit_ids, features)


def read_event_with_truth(prefix: Path) -> tuple[Event, EventFormatError | None]:
    """The event at ``prefix`` (one event's prefix) with as much of its truth as reads, and
    the error that left the rest out: a truth or particles table that does not read
    (particles without ``nhits``, truth without ``tpx``...) or that disagree (particles cut
    to high pT) leave the event to run, its metrics computed from the truth alone or not
    at all. The hits must read."""
    try:
        return read_event(prefix, parts=("truth", "particles")), None
    except EventFormatError as error:
        names = {f"{prefix.name}-{kind}.csv{end}" for kind in ("truth", "particles") for end in ("", ".gz")}
        if error.path is None or Path(error.path).parent != prefix.parent or Path(error.path).name not in names:
            raise  # (the hits, which the event needs)
        problem = error
    try:
        return read_event(prefix, parts=("truth",)), problem
    except EventFormatError:
        return read_event(prefix, parts=()), problem


def _trackml_event(prefix: Path, spec: FeatureSpec) -> InputEvent:
    event, problem = read_event_with_truth(prefix)
    truth_problem = None if problem is None else str(problem)
    try:
        features = hit_features(event.hits, spec)
    except EventFormatError as error:  # named by the hits file it comes from
        raise EventFormatError(str(error), path=event_file(prefix, "hits")) from None
    return InputEvent(
        input_name("trackml", prefix),
        event.event_id,
        np.asarray(event.hits["hit_id"], dtype=np.int64),
        features,
        event,
        truth_problem,
    )


def _csv_files(directory: Path) -> list[Path]:
    return sorted((p for p in directory.iterdir() if p.is_file() and p.name.endswith((".csv", ".csv.gz"))),
                  key=_natural_key)


def _unreadable_csvs(directory: Path) -> list[Path]:
    """The entries of ``directory`` named like CSV files that are never read: names ending in
    ``.CSV`` or another case (only ``.csv`` and ``.csv.gz`` are read), and what is no regular
    file (symbolic links to nothing, directories, FIFOs)."""
    return sorted((p for p in directory.iterdir()
                   if p.name.lower().endswith((".csv", ".csv.gz"))
                   and (not p.name.endswith((".csv", ".csv.gz"))
                        # (a TrackML event's file that is none is named when the event is read)
                        or (not p.is_file() and not _TRACKML_FILE.search(p.name)))),
                  key=_natural_key)


def _other_compressed_csvs(directory: Path) -> list[Path]:
    """The files of ``directory`` named like a CSV compressed otherwise than with gzip
    (``.csv.zip``, ``.csv.bz2``, ``.csv.xz``, ...), which are never read."""
    return sorted((p for p in directory.iterdir()
                   if p.is_file() and ".csv." in p.name and not p.name.endswith(".csv.gz")), key=_natural_key)


def _elsewhere(directory: Path) -> str:
    """Where the events of a directory without any may be: files whose names end in ``.CSV``
    (only ``.csv`` and ``.csv.gz`` are read) and subdirectories (not searched), as
    `` (...)``; empty when it holds neither."""
    entries = sorted(directory.iterdir(), key=_natural_key)
    upper = [p.name for p in entries if p.is_file() and p.name.lower().endswith((".csv", ".csv.gz"))]
    folders = [p.name + "/" for p in entries if p.is_dir()]
    hints = []
    if upper:
        hints.append(f"{', '.join(upper[:3])}{', ...' if len(upper) > 3 else ''}: only names ending in .csv or "
                     ".csv.gz are read; rename them")
    if folders:
        hints.append(f"subdirectories {', '.join(folders[:3])}{', ...' if len(folders) > 3 else ''}, which are not "
                     "searched: give them")
    return f" ({'; '.join(hints)})" if hints else ""


def _expand(path: Path, skipped: list[Path]) -> list[tuple[str, Path]]:
    """The inputs ``path`` designates, as (``"trackml"`` or ``"features"``, path) pairs; the
    CSV files of a directory that are not read go to ``skipped``."""
    if path.is_dir():
        csvs = _csv_files(path)
        skipped.extend(_other_compressed_csvs(path))
        skipped.extend(_unreadable_csvs(path))
        if any(_HITS_FILE.search(p.name) for p in csvs):
            prefixes = find_event_prefixes(path)
            names = {prefix.name for prefix in prefixes}
            # other CSV files, and the files of an event without a hits file (a lone particle table)
            skipped.extend(p for p in csvs if not ((match := _TRACKML_FILE.search(p.name))
                                               and p.name[:match.start()] in names))
            return [("trackml", prefix) for prefix in prefixes]
        labels = [p for p in csvs if p.name.endswith(LABELS_SUFFIXES)]
        # the files of TrackML events without a hits file (a lone particles table) are no features
        parts = [p for p in csvs if _TRACKML_FILE.search(p.name)]
        features = [p for p in csvs if p not in labels and p not in parts]
        if parts and not features:
            find_event_prefixes(path)  # raises, naming the event files without their hits files
        skipped.extend(parts)
        # the labels of this directory's own events (a run with --output here) are not worth a note
        own = {f"{input_name('features', p)}-labels.csv" for p in features}
        skipped.extend(p for p in labels if p.name not in own)
        if not features:
            found = f" (only labels files: {', '.join(p.name for p in labels[:3])})" if labels else _elsewhere(path)
            raise EventFormatError(f"holds no TrackML event and no feature CSV file{found}", path=path)
        return [("features", p) for p in features]
    if path.is_file() and not _TRACKML_FILE.search(path.name):
        return [("features", path)]
    if path.exists() and not path.is_file() and not path.is_dir():
        raise EventFormatError("is not a regular file (a FIFO, device or socket): give a CSV file", path=path)
    return [("trackml", prefix) for prefix in find_event_prefixes(path)]


def list_inputs(paths: Iterable[str | Path], skipped: list[Path] | None = None) -> list[tuple[str, Path]]:
    """Every input the given paths designate, in order, without reading them (for progress bars).

    The CSV files of the directories given that are not inputs are appended to ``skipped``
    when it is given: files other than the TrackML events of a directory that holds any,
    and labels files (``*-labels.csv[.gz]``) in a directory of feature CSVs."""
    found: list[tuple[str, Path]] = []
    for path in paths:
        found.extend(_expand(Path(path), [] if skipped is None else skipped))
    return found


def input_files(inputs: Iterable[tuple[str, Path]]) -> list[Path]:
    """Every file the inputs listed by :func:`list_inputs` read: a feature CSV, or each file of a
    TrackML event (what a job's outputs must never be written over)."""
    files: list[Path] = []
    for kind, path in inputs:
        files.extend([path] if kind == "features" else event_files(path))
    return files


def read_input(kind: str, path: Path, spec: FeatureSpec) -> InputEvent:
    """Read one input listed by :func:`list_inputs` with the bundle's feature spec."""
    if kind == "features":
        return _feature_csv_event(path, spec.num_features)
    return _trackml_event(path, spec)


def iter_inputs(paths: Iterable[str | Path], spec: FeatureSpec) -> Iterator[InputEvent]:
    """Read the events the given paths designate, one at a time."""
    for kind, path in list_inputs(paths):
        yield read_input(kind, path, spec)
