"""The in-memory event: TrackML tables as columns of numpy arrays.

A *table* is a ``dict`` mapping a column name to a 1-D numpy array; all columns of one
table have the same length. The column names and dtypes follow the TrackML challenge
files (https://www.kaggle.com/c/trackml-particle-identification/data). The schemas below
are the single place where they are written down: the reader, the writer and the
simulation all use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

import numpy as np

from ..errors import EventFormatError, InputError

Table = Dict[str, np.ndarray]

#: Required columns of each TrackML file kind, in file order, with their dtype.
HITS_COLUMNS: dict[str, type] = {
    "hit_id": np.int64,
    "x": np.float64,
    "y": np.float64,
    "z": np.float64,
    "volume_id": np.int64,
    "layer_id": np.int64,
    "module_id": np.int64,
}
TRUTH_COLUMNS: dict[str, type] = {
    "hit_id": np.int64,
    "particle_id": np.int64,
    "tx": np.float64,
    "ty": np.float64,
    "tz": np.float64,
    "tpx": np.float64,
    "tpy": np.float64,
    "tpz": np.float64,
    "weight": np.float64,
}
PARTICLES_COLUMNS: dict[str, type] = {
    "particle_id": np.int64,
    "vx": np.float64,
    "vy": np.float64,
    "vz": np.float64,
    "px": np.float64,
    "py": np.float64,
    "pz": np.float64,
    "q": np.int64,
    "nhits": np.int64,
}
#: Columns a particles file may carry in addition (the challenge files have it, some
#: public full-event tables do not).
PARTICLES_OPTIONAL_COLUMNS: dict[str, type] = {"particle_type": np.int64}
CELLS_COLUMNS: dict[str, type] = {
    "hit_id": np.int64,
    "ch0": np.int64,
    "ch1": np.int64,
    "value": np.float64,
}

#: File kinds and their schemas, as in ``event<id>-<kind>.csv[.gz]``.
SCHEMAS: dict[str, dict[str, type]] = {
    "hits": HITS_COLUMNS,
    "truth": TRUTH_COLUMNS,
    "particles": PARTICLES_COLUMNS,
    "cells": CELLS_COLUMNS,
}


def hit_id_row_order(hit_ids) -> np.ndarray | None:
    """The (stable) row order that puts ``hit_ids`` in increasing order, or None when they
    already are (repeated ids next to each other count as in order)."""
    ids = np.asarray(hit_ids)
    if ids.size < 2 or bool(np.all(ids[1:] >= ids[:-1])):
        return None
    return np.argsort(ids, kind="stable")


#: The columns that place a hit in the detector, in the order TrackML numbers its hits by.
DETECTOR_ORDER_COLUMNS = ("volume_id", "layer_id", "module_id")


def hit_numbering_problem(hits: Table) -> str | None:
    """Why the ``hit_id`` s of a TrackML hits table are not TrackML's numbering, or None.

    TrackML numbers an event's hits in the detector's order (volume, layer, then module:
    every real and simulated event here has no step back along its hit ids), and a bundle's
    networks and edge direction (``i<j`` by hit index) were trained on that numbering: an
    event renumbered otherwise runs, but finds far fewer tracks (the sample event's
    efficiency went from 0.94 to 0.68 under a random renumbering). None too for a table
    without the detector columns, where it cannot be told."""
    if any(name not in hits for name in DETECTOR_ORDER_COLUMNS) or "hit_id" not in hits:
        return None
    order = hit_id_row_order(hits["hit_id"])  # (None for hits read by read_event: already in that order)
    volume, layer, module = (np.asarray(hits[name], dtype=np.int64) if order is None
                             else np.asarray(hits[name], dtype=np.int64)[order] for name in DETECTOR_ORDER_COLUMNS)
    if volume.size < 2:
        return None
    same_volume, same_layer = volume[1:] == volume[:-1], layer[1:] == layer[:-1]
    back = ((volume[1:] < volume[:-1]) | (same_volume & (layer[1:] < layer[:-1]))
            | (same_volume & same_layer & (module[1:] < module[:-1])))
    steps = int(np.count_nonzero(back))
    if steps == 0:
        return None
    return (f"its hit ids do not follow the detector's order (volume, layer, module), as TrackML numbers hits: "
            f"{steps:,} of {volume.size - 1:,} steps along the hit ids go back; the bundle's networks and edge direction "
            "were trained on TrackML's numbering, so the tracks found are worse (number the hits in that order)")


def table_length(table: Table) -> int:
    """Number of rows of a table (0 for a table with no columns); a pandas DataFrame counts too."""
    if hasattr(table, "columns") and hasattr(table, "index"):  # a DataFrame: .values is its array, not a method
        return int(len(table.index))
    for name, column in table.items():
        shape = np.shape(column)
        if not shape:
            raise InputError(f"column {name!r} of a table is a single value ({column!r:.40}), not a column: give a "
                             "1-D array with one value per row")
        return int(shape[0])
    return 0


#: How many offending ids an error message lists before summarising the rest.
SHOWN_IDS = 5


def id_listing(ids: np.ndarray) -> str:
    """The first few ids of an array as text, with a count of the rest."""
    shown = ", ".join(str(v) for v in ids[:SHOWN_IDS].tolist())
    rest = len(ids) - SHOWN_IDS
    return shown + (f" and {rest} more" if rest > 0 else "")


def empty_table(schema: dict[str, type]) -> Table:
    """A table with the schema's columns and no rows."""
    return {name: np.zeros(0, dtype=dtype) for name, dtype in schema.items()}


#: The largest event id a TrackML file holds (event ids are signed 64-bit integers).
MAX_EVENT_ID = 2**63 - 1


def event_name(event_id: int) -> str:
    """The TrackML file prefix of event ``event_id``: ``event<id zero-padded to 9>``."""
    return f"event{event_id:09d}"


@dataclass
class Event:
    """One TrackML event.

    ``hits`` is always present; ``truth``, ``particles`` and ``cells`` are ``None`` when
    the corresponding file was not read or does not exist. ``source`` records where the
    event came from (a path prefix), for error messages.
    """

    event_id: int
    hits: Table
    truth: Table | None = None
    particles: Table | None = None
    cells: Table | None = None
    source: str | None = field(default=None, compare=False)

    @property
    def num_hits(self) -> int:
        """Number of hits in the event."""
        return table_length(self.hits)

    @property
    def name(self) -> str:
        """The TrackML file prefix of this event, ``event<id zero-padded to 9>``."""
        return event_name(self.event_id)

    def hit_id_order(self) -> np.ndarray | None:
        """The row order that puts the hits in increasing ``hit_id`` order, or None when they
        already are (as :func:`~trackserve.events.trackml.read_event` reads them)."""
        return hit_id_row_order(self.hits["hit_id"])

    def hit_numbering_problem(self) -> str | None:
        """What is wrong with the event's hit numbering for a bundle (:func:`hit_numbering_problem`), or None."""
        return hit_numbering_problem(self.hits)

    def in_hit_id_order(self) -> "Event":
        """This event with its hits (and the truth rows that follow them) in increasing
        ``hit_id`` order: the order a bundle's networks and edge direction were trained on
        (an event built in memory from rows in another order gives other edges and worse
        tracks). The event itself when its hits already are in that order."""
        order = self.hit_id_order()
        if order is None:
            return self
        truth = self.truth
        if truth is not None and table_length(truth) == len(order):
            truth = {name: np.asarray(column)[order] for name, column in truth.items()}
        hits = {name: np.asarray(column)[order] for name, column in self.hits.items()}
        return Event(self.event_id, hits, truth, self.particles, self.cells, self.source)


def truth_by_hit(event: Event) -> dict[str, np.ndarray]:
    """The event's truth columns as arrays in the row order of ``event.hits`` (matched by
    ``hit_id``): truth row ``k`` of the result belongs to hit row ``k``, whatever order the
    truth table was built in. An :class:`~trackserve.errors.EventFormatError` when the event
    has no truth, or when its truth does not hold exactly one row per hit."""
    truth = event.truth
    if truth is None:
        raise EventFormatError("the event has no truth table: read it with the 'truth' part and its -truth.csv file",
                               path=event.source)
    hit_ids = np.asarray(event.hits["hit_id"], dtype=np.int64)
    truth_ids = np.asarray(truth["hit_id"], dtype=np.int64)
    if np.array_equal(truth_ids, hit_ids):
        return {name: np.asarray(column) for name, column in truth.items()}
    truth_order, hit_order = np.argsort(truth_ids), np.argsort(hit_ids)
    repeated = hit_ids[hit_order][1:][hit_ids[hit_order][1:] == hit_ids[hit_order][:-1]]
    if repeated.size:  # which truth row is whose could not be told
        raise EventFormatError(f"the hits' ids repeat ({id_listing(np.unique(repeated))}), and the truth is in "
                               "another order: its rows cannot be matched to the hits", path=event.source,
                               column="hit_id")
    if truth_ids.size != hit_ids.size or not np.array_equal(truth_ids[truth_order], hit_ids[hit_order]):
        absent = np.setdiff1d(hit_ids, truth_ids)
        unknown = np.setdiff1d(truth_ids, hit_ids)
        raise EventFormatError(
            "the truth must have exactly one row per hit: "
            f"{absent.size} hit(s) without truth ({id_listing(absent)}), "
            f"{unknown.size} truth row(s) for unknown hits ({id_listing(unknown)}), "
            f"{truth_ids.size} truth rows for {hit_ids.size} hits",
            path=event.source,
            column="hit_id",
        )
    rows = np.empty_like(hit_order)
    rows[hit_order] = truth_order  # hits row k <- truth row with the same hit id
    return {name: np.asarray(column)[rows] for name, column in truth.items()}
