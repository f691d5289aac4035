"""Track labels in the TrackML submission format: ``event_id,hit_id,track_id``.

One row per hit; hits with the same ``(event_id, track_id)`` form one track. A file may
hold several events. ``.csv.gz`` paths are gzip-compressed. Reading follows the
conventions of :mod:`trackserve.events.trackml` (header required, columns in any order,
other columns ignored, errors naming file, column and 1-based data row).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import EventFormatError, InputError
from .trackml import read_table, write_table

#: The submission columns, in file order.
SUBMISSION_COLUMNS: dict[str, type] = {"event_id": np.int64, "hit_id": np.int64, "track_id": np.int64}


def _integer_array(name: str, values) -> np.ndarray:
    """``values`` as a 1-D int64 array, or :class:`InputError` if they are not integers."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise InputError(f"{name} must be 1-D, got shape {array.shape}")
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise InputError(f"{name} must hold integers, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.unsignedinteger) and array.size and array.max() > np.iinfo(np.int64).max:
        raise InputError(f"{name} holds values above the int64 range")
    return array.astype(np.int64, copy=False)


def _duplicated_pair_row(event_ids: np.ndarray, hit_ids: np.ndarray) -> int | None:
    """0-based index of the first row whose (event_id, hit_id) appeared in an earlier row, or None."""
    if len(hit_ids) < 2:
        return None
    order = np.lexsort((np.arange(len(hit_ids)), hit_ids, event_ids))
    same = (hit_ids[order][1:] == hit_ids[order][:-1]) & (event_ids[order][1:] == event_ids[order][:-1])
    if not same.any():
        return None
    return int(order[1:][same].min())


def write_submission(path: str | Path, event_id, hit_ids, track_ids) -> Path:
    """Write one event's (or several events') track labels as a TrackML submission file.

    ``event_id`` is one integer for all rows, or an integer array with one entry per hit.
    ``hit_ids`` and ``track_ids`` are integer arrays of equal length. Raises
    :class:`InputError` for non-integer values, unequal lengths or a hit id given twice
    in the same event. Returns the path written (``.gz`` is compressed).
    """
    hit_ids = _integer_array("hit_ids", hit_ids)
    track_ids = _integer_array("track_ids", track_ids)
    if len(hit_ids) != len(track_ids):
        raise InputError(f"{len(hit_ids)} hit ids but {len(track_ids)} track ids: give one track id per hit")
    if np.ndim(event_id) == 0:
        if isinstance(event_id, (bool, np.bool_)) or not isinstance(event_id, (int, np.integer)):
            raise InputError(f"event_id must be an integer, got {event_id!r}")
        event_ids = np.full(len(hit_ids), int(event_id), dtype=np.int64)
    else:
        event_ids = _integer_array("event_id", event_id)
        if len(event_ids) != len(hit_ids):
            raise InputError(f"{len(event_ids)} event ids but {len(hit_ids)} hit ids")
    duplicate = _duplicated_pair_row(event_ids, hit_ids)
    if duplicate is not None:
        raise InputError(
            f"hit_id {hit_ids[duplicate]} of event {event_ids[duplicate]} appears twice "
            f"(second at index {duplicate}): a hit belongs to one track"
        )
    table = {"event_id": event_ids, "hit_id": hit_ids, "track_id": track_ids}
    return write_table(path, table, list(SUBMISSION_COLUMNS))


def read_submission(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a submission file: ``(event_ids, hit_ids, track_ids)``, int64 arrays in file order.

    Raises :class:`EventFormatError` naming the file, column and row for a missing file
    or column, a non-integer value, or an (event_id, hit_id) pair given twice. A
    header-only file gives three empty arrays.
    """
    path = Path(path)
    table = read_table(path, SUBMISSION_COLUMNS)
    event_ids, hit_ids, track_ids = (table[name] for name in SUBMISSION_COLUMNS)
    duplicate = _duplicated_pair_row(event_ids, hit_ids)
    if duplicate is not None:
        first = int(np.flatnonzero((hit_ids == hit_ids[duplicate]) & (event_ids == event_ids[duplicate]))[0])
        raise EventFormatError(
            f"hit_id {hit_ids[duplicate]} of event {event_ids[duplicate]} is given twice "
            f"(first at row {first + 1}): a hit belongs to one track",
            path=path,
            column="hit_id",
            row=duplicate + 1,
        )
    return event_ids, hit_ids, track_ids
