"""Inputs of the jobs that run a pipeline: TrackML events or headerless feature CSVs.

``trackserve run`` (and the Triton client) accept both forms, files or directories:

* a TrackML event: a prefix (``data/event000000001``), one of its files, or a directory
  of events; features are computed from the hits with the bundle's feature spec, and
  the truth, when present, is kept for evaluation;
* a feature CSV: one hit per line, the bundle's features already computed (the input
  format of the published ExaTrkX service, e.g. its ``lrt_events/evt_12.csv``); its hits
  are numbered 1..N in file order, and its event id is the last number in the file name.
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
from .trackml import find_event_prefixes, read_event, read_feature_csv

_TRACKML_FILE = re.compile(r"-(hits|truth|particles|cells)\.csv(\.gz)?$")
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


@dataclass
class InputEvent:
    """One event to run: its name, id, hit ids, features and (TrackML input only) the event itself."""

    name: str
    event_id: int
    hit_ids: np.ndarray
    features: np.ndarray
    event: Event | None = None

    @property
    def has_truth(self) -> bool:
        """Whether the event carries truth, so that tracking metrics can be computed."""
        return self.event is not None and self.event.truth is not None


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _feature_csv_event(path: Path, num_features: int) -> InputEvent:
    features = read_feature_csv(path, num_features)
    match = _LAST_NUMBER.search(path.name.split(".")[0])
    event_id = int(match.group(1)) if match else 0
    hit_ids = np.arange(1, features.shape[0] + 1, dtype=np.int64)
    return InputEvent(path.name.split(".")[0], event_id, hit_ids, features)


def _trackml_event(prefix: Path, spec: FeatureSpec) -> InputEvent:
    event = read_event(prefix, parts=("truth", "particles"))
    return InputEvent(
        event.name if prefix.name.startswith("event") else prefix.name,
        event.event_id,
        np.asarray(event.hits["hit_id"], dtype=np.int64),
        hit_features(event.hits, spec),
        event,
    )


def _expand(path: Path) -> list[tuple[str, Path]]:
    """The inputs ``path`` designates, as (``"trackml"`` or ``"features"``, path) pairs."""
    if path.is_dir():
        has_hits = any(_TRACKML_FILE.search(p.name) for p in path.iterdir() if p.is_file())
        if has_hits:
            return [("trackml", prefix) for prefix in find_event_prefixes(path)]
        csvs = sorted((p for p in path.iterdir() if p.is_file() and p.name.endswith((".csv", ".csv.gz"))), key=_natural_key)
        if not csvs:
            raise EventFormatError("holds no TrackML event and no feature CSV file", path=path)
        return [("features", p) for p in csvs]
    if path.is_file() and not _TRACKML_FILE.search(path.name):
        return [("features", path)]
    return [("trackml", prefix) for prefix in find_event_prefixes(path)]


def list_inputs(paths: Iterable[str | Path]) -> list[tuple[str, Path]]:
    """Every input the given paths designate, in order, without reading them (for progress bars)."""
    found: list[tuple[str, Path]] = []
    for path in paths:
        found.extend(_expand(Path(path)))
    return found


def read_input(kind: str, path: Path, spec: FeatureSpec) -> InputEvent:
    """Read one input listed by :func:`list_inputs` with the bundle's feature spec."""
    if kind == "features":
        return _feature_csv_event(path, spec.num_features)
    return _trackml_event(path, spec)


def iter_inputs(paths: Iterable[str | Path], spec: FeatureSpec) -> Iterator[InputEvent]:
    """Read the events the given paths designate, one at a time."""
    for kind, path in list_inputs(paths):
        yield read_input(kind, path, spec)
