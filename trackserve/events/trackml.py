"""TrackML CSV files: read and write events (hits, truth, particles, cells).

Files are named ``<prefix>-<kind>.csv`` or ``<prefix>-<kind>.csv.gz`` where ``kind`` is
one of ``hits``, ``truth``, ``particles``, ``cells`` and ``prefix`` is usually
``event<id zero-padded to 9 digits>``. The column schemas live in
:mod:`trackserve.events.event`.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np

from .event import SCHEMAS, Event, Table, table_length


def _format_column(values: np.ndarray) -> list[str]:
    """Text of each value of a column: integers exactly, floats with enough digits to round-trip float32 data."""
    if np.issubdtype(values.dtype, np.integer):
        return [str(v) for v in values.tolist()]
    return [f"{v:.9g}" for v in values.tolist()]


def write_table(path: str | Path, table: Table, columns: list[str]) -> Path:
    """Write ``table``'s ``columns`` to a CSV file with a header; ``.gz`` paths are gzip-compressed."""
    path = Path(path)
    texts = [_format_column(np.asarray(table[name])) for name in columns]
    lines = [",".join(columns)]
    lines.extend(",".join(row) for row in zip(*texts))
    data = ("\n".join(lines) + "\n").encode()
    if path.suffix == ".gz":
        with gzip.open(path, "wb", compresslevel=4) as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    return path


def write_event(event: Event, directory: str | Path, *, compress: bool = False) -> dict[str, Path]:
    """Write every table the event has as ``<directory>/event<id>-<kind>.csv[.gz]``.

    Returns the written paths by kind. The directory is created if needed.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".csv.gz" if compress else ".csv"
    written: dict[str, Path] = {}
    for kind, schema in SCHEMAS.items():
        table = getattr(event, kind)
        if table is None:
            continue
        columns = list(schema)
        if kind == "particles" and "particle_type" in table:
            columns.insert(1, "particle_type")
        written[kind] = write_table(directory / f"{event.name}-{kind}{suffix}", table, columns)
    return written
