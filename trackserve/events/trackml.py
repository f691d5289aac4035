"""TrackML CSV files: read and write events (hits, truth, particles, cells).

Files are named ``<prefix>-<kind>.csv`` or ``<prefix>-<kind>.csv.gz`` where ``kind`` is
one of ``hits``, ``truth``, ``particles``, ``cells`` and ``prefix`` is usually
``event<id zero-padded to 9 digits>`` (any other prefix, such as ``20-density``, is
accepted too). The column schemas live in :mod:`trackserve.events.event`.

Reading conventions, shared by every reader here:

* A table file must start with a header line naming its columns; the columns may come
  in any order. Columns the schema does not know, and unnamed columns (such as a pandas
  index), are ignored: they are not kept in the returned table. A missing required
  column, or a name given twice, is an error naming it.
* A file with a header and no data rows is a valid empty table; a file with no header
  at all (zero bytes or only blank lines, or a first line made only of numbers) is an error.
* Errors are :class:`~trackserve.errors.EventFormatError` naming the file and, where it
  applies, the column and the *row*: data rows are numbered from 1 for the first data
  line after the header; empty lines (and lines of spaces or tabs) are skipped and not counted.
* Float columns must be finite: ``nan`` or ``inf`` is an error naming column and row.
* ``.gz`` files are decompressed; a gzip-compressed file is also recognised by its
  content whatever its name.
"""

from __future__ import annotations

import glob
import gzip
import io
import os
import re
import warnings
import zlib
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from ..errors import EventFormatError, InputError, OutputError
from ..paths import write_files_atomically
from .event import (
    CELLS_COLUMNS,
    HITS_COLUMNS,
    MAX_EVENT_ID,
    PARTICLES_COLUMNS,
    PARTICLES_OPTIONAL_COLUMNS,
    SCHEMAS,
    TRUTH_COLUMNS,
    Event,
    Table,
    empty_table,
    hit_id_row_order,
)

#: The optional parts of an event, read by :func:`read_event` when present.
EVENT_PARTS: tuple[str, ...] = ("truth", "particles", "cells")

_FILE_NAME = re.compile(r"^(?P<prefix>.+)-(?P<kind>hits|truth|particles|cells)\.csv(?:\.gz)?$")
_EVENT_ID = re.compile(r"event[_-]?(\d+)", re.IGNORECASE)
_INTEGER_TEXT = re.compile(r"^[+-]?[0-9]+$")  # ASCII digits (Python's int() also takes others; numpy does not)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: An empty (or blank) line of a headerless feature file, before its last hit.
_BLANK_LINE = re.compile(r"(^|\n)[ \t\r]*\n")
#: A line of a table file holding only spaces or tabs (read as an empty line).
_WHITESPACE_LINE = re.compile(r"^[ \t]+\r?$", re.MULTILINE)
_MAX_LISTED = 5

# --------------------------------------------------------------------------- reading text


def read_text(path: Path) -> str:
    """The whole text of a (possibly gzip-compressed) file, or an error naming the file."""
    if not path.exists():
        raise EventFormatError("the file does not exist", path=path)
    if path.is_dir():
        raise EventFormatError("is a directory, not a CSV file", path=path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b" or path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except EOFError:
            raise EventFormatError("is a gzip file cut short (it ends before its end-of-stream marker): copy or "
                                   "download it again", path=path) from None
        except (OSError, zlib.error) as exc:
            raise EventFormatError(f"is not a valid gzip file ({exc}); recompress it or drop the .gz suffix", path=path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventFormatError(f"is not UTF-8 text (byte {exc.start}): is it really a CSV file?", path=path) from None
    if "\r" in text and "\n" not in text:  # lines ended by CR alone (classic Mac OS)
        text = text.replace("\r", "\n")
    return text


def _data_lines(body: str, first_line: int = 2) -> Iterator[tuple[int, int, str]]:
    """``(row, line, text)`` of each non-empty line of ``body``, whose first line is file line ``first_line``."""
    row = 0
    for offset, text in enumerate(body.split("\n")):
        text = text.rstrip("\r")
        if text.strip(" \t") == "":
            continue
        row += 1
        yield row, offset + first_line, text


def _describe_dtype(dtype) -> str:
    return "an integer" if np.issubdtype(np.dtype(dtype), np.integer) else "a number"


def _field_parses(text: str, dtype) -> bool:
    """Whether ``text`` is a valid value of ``dtype`` (int64 in range, or a float literal in ASCII)."""
    text = text.strip()
    if not text.isascii():  # Python reads other scripts' digits; numpy's reader does not
        return False
    if np.issubdtype(np.dtype(dtype), np.integer):
        return bool(_INTEGER_TEXT.match(text)) and _INT64_MIN <= int(text) <= _INT64_MAX
    if "_" in text or text == "":
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


def _diagnose_table(path: Path, body: str, num_fields: int, selected, reason: str) -> EventFormatError:
    """Find the first bad data line of a table file (slow path, only after the fast parser failed)."""
    for row, line, text in _data_lines(body):
        fields = text.split(",")
        if len(fields) != num_fields:
            return EventFormatError(
                f"line {line} has {len(fields)} fields but the header names {num_fields} columns",
                path=path,
                row=row,
            )
        for name, dtype, index in selected:
            if not _field_parses(fields[index], dtype):
                text = fields[index].strip()
                beyond = (" (it lies beyond the 64-bit integers: -2**63 .. 2**63 - 1)"
                          if _INTEGER_TEXT.match(text) and np.issubdtype(np.dtype(dtype), np.integer) else "")
                return EventFormatError(
                    f"cannot read {text!r} (line {line}) as {_describe_dtype(dtype)}{beyond}",
                    path=path,
                    column=name,
                    row=row,
                )
    return EventFormatError(f"cannot be parsed: {reason}", path=path)


def _fields_agree(body: str, num_fields: int) -> bool:
    """Whether every non-empty line of ``body`` has ``num_fields`` comma-separated fields
    (counted line by line: a line short of a field and another with one more must not pass
    for two right ones; about 12 ms for 150k lines)."""
    data = np.frombuffer(body.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    ends = np.append(np.flatnonzero(data == ord("\n")), data.size)
    commas = np.diff(np.searchsorted(np.flatnonzero(data == ord(",")), ends), prepend=0)
    starts = np.concatenate(([0], ends[:-1] + 1))
    return all(data[starts[line]:ends[line]].tobytes().strip() == b""  # an empty line holds no fields
               for line in np.flatnonzero(commas != num_fields - 1).tolist())


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_header(path: Path, text: str, expected: Iterable[str]) -> tuple[list[str], str]:
    """Split a table file's text into its header names and the body after the header line.

    A first line made only of numbers is data, not a header: the error says so and names
    the ``expected`` columns (before a repeated number could be taken for a repeated name).
    """
    if text.strip() == "":
        raise EventFormatError("the file is empty: a TrackML table needs a header line naming its columns", path=path)
    newline = text.find("\n")
    header, body = (text, "") if newline < 0 else (text[:newline], text[newline + 1 :])
    names = [name.strip() for name in header.lstrip("\ufeff").rstrip("\r").split(",")]
    if all(_looks_numeric(name) for name in names):
        shown = header.strip()
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise EventFormatError(
            f"has no header line: the first line ({shown}) looks like data: TrackML files need a header line "
            f"naming the columns; add one such as {','.join(expected)}",
            path=path,
        )
    seen: set[str] = set()
    for name in names:
        if name == "":
            continue  # an unnamed column (such as a pandas index) is never read
        if name in seen:
            raise EventFormatError("the column appears twice in the header", path=path, column=name)
        seen.add(name)
    return names, body


def read_table(
    path: str | Path,
    schema: Mapping[str, type],
    optional: Mapping[str, type] | None = None,
) -> Table:
    """Read a CSV file with a header into a table of the ``schema``'s columns.

    ``schema`` maps each required column to its dtype (``np.int64`` or ``np.float64``);
    ``optional`` maps columns read when the file has them. The table holds the required
    columns in schema order, then the optional ones present; other columns of the file
    are ignored. Parsing uses numpy's C reader (about 0.1 s for 100k hits); only when it
    fails is the file scanned again line by line to name the bad row and column.

    Raises :class:`EventFormatError` (file, column, row) for a missing file, an empty
    file, a first line of numbers instead of a header, a missing column, a line with the
    wrong number of fields, a value that does not parse, and a non-finite value in a
    float column. A header-only file gives a table with zero rows.
    """
    path = Path(path)
    optional = dict(optional or {})
    names, body = _parse_header(path, read_text(path), schema)
    missing = [name for name in schema if name not in names]
    if missing:
        raise EventFormatError(
            f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
            f"the header has {', '.join(names)}",
            path=path,
            column=missing[0] if len(missing) == 1 else None,
        )
    wanted = dict(schema)
    wanted.update({name: dtype for name, dtype in optional.items() if name in names and name not in schema})
    selected = [(name, np.dtype(dtype), names.index(name)) for name, dtype in wanted.items()]
    if _WHITESPACE_LINE.search(body):  # lines of spaces are empty lines (numpy's reader would fail on them)
        body = _WHITESPACE_LINE.sub("", body)
    if body.strip("\r\n") == "":
        return empty_table(wanted)

    record = np.dtype([(name, dtype) for name, dtype, _ in selected])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            # numpy 1.x reads "4.5" into an integer column with a DeprecationWarning
            # (numpy 2 raises): make it an error on both.
            warnings.simplefilter("error", DeprecationWarning)
            data = np.loadtxt(
                io.StringIO(body),
                dtype=record,
                delimiter=",",
                usecols=[index for _, _, index in selected],
                comments=None,
                ndmin=1,
            )
    except (ValueError, DeprecationWarning) as exc:
        raise _diagnose_table(path, body, len(names), selected, str(exc)) from None
    if not _fields_agree(body, len(names)):
        # usecols lets a line with extra fields through, and one short of a column it does not read.
        raise _diagnose_table(path, body, len(names), selected, "the number of fields varies between lines")

    table: Table = {}
    for name, dtype, _ in selected:
        column = np.ascontiguousarray(data[name])
        if np.issubdtype(dtype, np.floating):
            bad = ~np.isfinite(column)
            if bad.any():
                row = int(np.argmax(bad))
                raise EventFormatError(
                    f"value {column[row]} is not finite (NaN and infinity are not allowed)",
                    path=path,
                    column=name,
                    row=row + 1,
                )
        table[name] = column
    return table


def read_feature_csv(path: str | Path, num_features: int | None = None) -> np.ndarray:
    """Read a headerless numeric CSV of node features (one hit per line) as float32 ``[N, F]``.

    This is the input format of the published ExaTrkX service (e.g. its ``lrt_events``).
    Every line must have the same number of values, each a finite number also in
    float32; empty lines only at the end (the hits are numbered by line). An empty file
    gives ``[0, num_features]`` (``[0, 0]`` when not given). With
    ``num_features`` the width is checked. Errors name the file, row (1-based) and the
    1-based column number.
    """
    path = Path(path)
    text = read_text(path).removeprefix("\ufeff")  # a byte-order mark some editors write first
    if text.strip() == "":
        return np.zeros((0, num_features or 0), dtype=np.float32)
    blank = _BLANK_LINE.search(text.rstrip())
    if blank is not None:
        # Hits are numbered by line: a skipped line would give every later hit the id of the one before.
        line = text.count("\n", 0, blank.start()) + (2 if blank.group(1) else 1)
        raise EventFormatError(
            f"line {line} is empty: a feature file holds one hit per line and numbers the hits by line, "
            "so empty lines are only allowed at the end",
            path=path,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            # (rstrip: blank lines at the end, spaces on them included, hold no hit)
            values = np.loadtxt(io.StringIO(text.rstrip()), dtype=np.float64, delimiter=",", comments=None, ndmin=2)
    except ValueError as exc:
        raise _diagnose_features(path, text, str(exc)) from None
    with np.errstate(over="ignore"):
        features = values.astype(np.float32)
    bad = ~np.isfinite(features)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise EventFormatError(
            f"value {values[row, col]!r} is not a finite float32 (NaN, infinity and |x| > 3.4e38 are not allowed)",
            path=path,
            column=str(col + 1),
            row=row + 1,
        )
    if num_features is not None and features.shape[1] != num_features:
        raise EventFormatError(
            f"has {features.shape[1]} features per hit, expected {num_features}",
            path=path,
        )
    return features


def _diagnose_features(path: Path, text: str, reason: str) -> EventFormatError:
    """Find the first bad line of a headerless feature file (slow path)."""
    width = None
    for row, line, content in _data_lines(text, first_line=1):
        fields = content.split(",")
        if width is None:
            width = len(fields)
        elif len(fields) != width:
            return EventFormatError(
                f"line {line} has {len(fields)} values but the first line has {width}",
                path=path,
                row=row,
            )
        for col, field in enumerate(fields):
            if not _field_parses(field, np.float64):
                if row == 1 and field.strip() == "volume_id" and "module_id" in content:
                    return EventFormatError(
                        "is the TrackML detector geometry (detectors.csv), not an event: `simulate --geometry` "
                        "takes it", path=path)
                if row == 1 and field.strip() in ("hit_id", "particle_id"):
                    kind = "hits, truth or cells" if field.strip() == "hit_id" else "particles"
                    return EventFormatError(
                        f"starts with the header of a TrackML {kind} file, not feature values: TrackML files are "
                        "read by their names, <prefix>-hits.csv[.gz] and so on (e.g. event000000001-hits.csv.gz); "
                        "rename them so",
                        path=path,
                    )
                if not field.strip():
                    where = "ends with a comma" if col == len(fields) - 1 else "has two commas in a row"
                    return EventFormatError(f"line {line} {where}: an empty value where a number belongs",
                                            path=path, column=str(col + 1), row=row)
                hint = " (feature files have no header line)" if row == 1 else ""
                return EventFormatError(
                    f"cannot read {field.strip()!r} (line {line}) as a number{hint}",
                    path=path,
                    column=str(col + 1),
                    row=row,
                )
    return EventFormatError(f"cannot be parsed: {reason}", path=path)


# --------------------------------------------------------------------------- locating events


def event_id_from_prefix(prefix: str | Path) -> int:
    """The event id of a file prefix: the digits after ``event`` in its name, else 0.

    ``.../event000001000`` gives 1000 (so do ``event1000``, ``Event_1000`` and
    ``event-000001000``); a prefix without ``event<digits>`` in its last component (such as
    ``20-density``) gives 0. Only the prefix's own name is looked at,
    not its directory, so that several such events in one directory are not given the
    directory's id.
    """
    match = _EVENT_ID.search(Path(prefix).name)
    return event_id_from_digits(match.group(1), prefix) if match else 0


def _listing_key(prefix: Path) -> tuple[int, str]:
    """Events listed by id then name; one whose id does not fit (named when it is read) last."""
    try:
        return event_id_from_prefix(prefix), prefix.name
    except EventFormatError:
        return MAX_EVENT_ID + 1, prefix.name


def event_id_from_digits(digits: str, path: str | Path) -> int:
    """The event id the ``digits`` in the name of ``path`` give; EventFormatError when it does not
    fit the signed 64-bit integer a TrackML file holds."""
    event_id = int(digits)
    if event_id > MAX_EVENT_ID:
        raise EventFormatError(f"the event id {digits} in the name is above {MAX_EVENT_ID}, the largest a TrackML "
                               "file holds; rename it", path=path)
    return event_id


def event_files(prefix: str | Path) -> list[Path]:
    """Every file of the event ``prefix`` there is (hits, truth, particles, cells; ``.csv`` or
    ``.csv.gz``, both when both exist), sorted by name."""
    prefix = Path(prefix)
    return sorted(path for path in prefix.parent.glob(f"{glob.escape(prefix.name)}-*.csv*")
                  if (match := _FILE_NAME.match(path.name)) and match["prefix"] == prefix.name and path.is_file())


def event_file(prefix: str | Path, kind: str) -> Path | None:
    """The file ``<prefix>-<kind>.csv`` or ``<prefix>-<kind>.csv.gz``, or ``None`` if neither exists.

    Both existing is an error: which one holds the event would be a guess; so is a dangling
    symbolic link or a directory of either name (not the file missing, but one in its way).
    """
    prefix = Path(prefix)
    candidates = [prefix.parent / f"{prefix.name}-{kind}.csv", prefix.parent / f"{prefix.name}-{kind}.csv.gz"]
    for candidate in candidates:  # a name of the event that is no file must not pass for the file missing
        if candidate.is_symlink() and not candidate.exists():
            raise EventFormatError(f"is a symbolic link to {os.readlink(candidate)}, which does not exist", path=candidate)
        if candidate.exists() and not candidate.is_file():
            raise EventFormatError("is a directory or a special file, not a CSV file", path=candidate)
    present = [candidate for candidate in candidates if candidate.is_file()]
    if len(present) == 2:
        raise EventFormatError(  # (named by the plain file: the error is about this part of the event)
            f"both {present[0].name} and {present[1].name} exist; remove one of them", path=present[0]
        )
    return present[0] if present else None


def _what_else_it_holds(directory: Path) -> str:
    """`` (it holds ...)``: the CSV files of a directory without TrackML hits files, by kind
    (files of events without their hits file, labels files, other CSVs such as feature
    files), or ``""`` when it holds none."""
    from .sources import LABELS_SUFFIXES  # (sources reads events with this module)

    names = sorted(child.name for child in directory.iterdir() if child.is_file() and ".csv" in child.name)
    event_parts = [name for name in names if _FILE_NAME.match(name)]
    labels = [name for name in names if name not in event_parts and name.endswith(LABELS_SUFFIXES)]
    others = [name for name in names if name not in event_parts and name not in labels]

    def listed(found: list[str]) -> str:
        return f"{len(found)} {{}}: " + ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")

    held = []
    if event_parts:
        held.append(listed(event_parts).format("file(s) of events without their hits file"))
    if labels:
        held.append(listed(labels).format("labels file(s)"))
    if others:
        held.append(listed(others).format("other CSV file(s)") + " (feature CSVs carry no truth: `trackserve "
                                                                 "run` labels them, nothing can be scored or trained on them)")
    return f" (it holds {'; '.join(held)})" if held else ""


def _has_prefix_files(prefix: Path) -> bool:
    """Whether any file of the folder ``prefix`` names starts with ``<prefix>-`` (an event's other files)."""
    return prefix.parent.is_dir() and any(child.name.startswith(prefix.name + "-") for child in prefix.parent.iterdir())


def find_event_prefixes(path: str | Path) -> list[Path]:
    """The event prefixes that ``path`` designates, sorted by event id then name.

    ``path`` may be a directory (every ``<prefix>-hits.csv[.gz]`` in it is one event;
    files without a hits file, like a lone particles table, are not events), a prefix
    such as ``data/event000000001`` or ``data/20-density``, or any one file of an event
    (``data/event000000001-truth.csv.gz``). Raises :class:`EventFormatError` when no
    event is found.
    """
    path = Path(path)
    if path.is_dir():
        prefixes = set()
        for child in path.iterdir():
            match = _FILE_NAME.match(child.name)
            if match and match["kind"] == "hits" and (child.is_file() or child.is_symlink()):
                prefixes.add(path / match["prefix"])  # (a dangling link is named when its event is read)
        if not prefixes:
            raise EventFormatError(
                "no TrackML event in this directory: no file named <prefix>-hits.csv or <prefix>-hits.csv.gz"
                + _what_else_it_holds(path),
                path=path,
            )
        return sorted(prefixes, key=_listing_key)
    if path.is_file():
        match = _FILE_NAME.match(path.name)
        if not match:
            raise EventFormatError(
                "is not a TrackML event file: expected a name <prefix>-<hits|truth|particles|cells>.csv[.gz]",
                path=path,
            )
        prefix = path.parent / match["prefix"]
    elif (match := _FILE_NAME.match(path.name)) is not None:  # an event file's name, but no such file
        other = path.with_name(path.name.removesuffix(".gz") if path.name.endswith(".gz") else path.name + ".gz")
        found = f"; {other.name} does: give that, or the event prefix {path.parent / match['prefix']}" if other.is_file() else ""
        raise EventFormatError(f"does not exist: no such file{found}", path=path)
    else:
        prefix = path
    if event_file(prefix, "hits") is None:
        if not path.exists() and not _has_prefix_files(prefix):  # a typo or a missing file, not an event prefix
            if path.name.endswith((".csv", ".csv.gz")):  # a feature file's name: no prefix was meant
                raise EventFormatError("does not exist: no such file", path=path)
            raise EventFormatError(
                f"does not exist: no such file or directory, nor an event prefix ({prefix.name}-hits.csv or "
                f"{prefix.name}-hits.csv.gz in {prefix.parent})",
                path=path,
            )
        raise EventFormatError(
            f"no event here: neither {prefix.name}-hits.csv nor {prefix.name}-hits.csv.gz exists in {prefix.parent}",
            path=path,
        )
    return [prefix]


# --------------------------------------------------------------------------- consistency checks


def _listed(values: np.ndarray) -> str:
    shown = ", ".join(str(v) for v in values[:_MAX_LISTED].tolist())
    return shown + (f", ... ({len(values)} in all)" if len(values) > _MAX_LISTED else "")


def _check_unique(values: np.ndarray, path: Path, column: str) -> None:
    """Raise naming the first row whose ``column`` value already appeared in an earlier row."""
    if len(values) < 2:
        return
    order = np.argsort(values, kind="stable")
    repeated = np.flatnonzero(values[order][1:] == values[order][:-1])
    if repeated.size == 0:
        return
    row = int(order[repeated + 1].min())
    value = values[row]
    first = int(np.flatnonzero(values == value)[0])
    raise EventFormatError(
        f"{column} {value} is duplicated (first at row {first + 1}); "
        f"{repeated.size} row{'s' if repeated.size > 1 else ''} repeat an earlier {column}",
        path=path,
        column=column,
        row=row + 1,
    )


def _check_not_negative(values: np.ndarray, path: Path, column: str, rule: str) -> None:
    """Raise naming the first row whose ``column`` value is negative; ``rule`` says what the column holds."""
    negative = values < 0
    if not negative.any():
        return
    row = int(np.argmax(negative))
    count = int(negative.sum())
    raise EventFormatError(
        f"{column} {values[row]} is negative{f' ({count} rows are)' if count > 1 else ''}: {rule}",
        path=path,
        column=column,
        row=row + 1,
    )


def _align_truth(truth: Table, hit_ids: np.ndarray, truth_path: Path, hits_path: Path) -> Table:
    """The truth table with its rows in the order of the hits; error if the hit id sets differ."""
    _check_unique(truth["hit_id"], truth_path, "hit_id")
    truth_ids = truth["hit_id"]
    if np.array_equal(truth_ids, hit_ids):
        return truth
    absent = np.setdiff1d(hit_ids, truth_ids)
    unknown = np.setdiff1d(truth_ids, hit_ids)
    if absent.size or unknown.size:
        parts = []
        if absent.size:
            parts.append(f"{absent.size} hit ids of {hits_path.name} are missing from truth ({_listed(absent)})")
        row = None
        if unknown.size:
            parts.append(f"{unknown.size} truth hit ids are not in {hits_path.name} ({_listed(unknown)})")
            row = int(np.flatnonzero(np.isin(truth_ids, unknown))[0]) + 1
        raise EventFormatError(
            "the truth must have one row per hit: " + "; ".join(parts), path=truth_path, column="hit_id", row=row
        )
    order = np.argsort(truth_ids)
    rows = order[np.searchsorted(truth_ids, hit_ids, sorter=order)]
    return {name: column[rows] for name, column in truth.items()}


def _check_truth_particles(truth: Table, particles: Table, truth_path: Path, particles_path: Path) -> None:
    """Every non-zero truth particle id must be a row of the particles table."""
    particle_ids = truth["particle_id"]
    unknown = (particle_ids != 0) & ~np.isin(particle_ids, particles["particle_id"])
    if unknown.any():
        row = int(np.argmax(unknown))
        missing = np.unique(particle_ids[unknown])
        raise EventFormatError(
            f"particle_id {particle_ids[row]} is not in {particles_path.name} "
            f"({missing.size} unknown particle id{'s' if missing.size > 1 else ''}: {_listed(missing)}); "
            "noise hits have particle_id 0",
            path=truth_path,
            column="particle_id",
            row=row + 1,
        )


def _check_cells(cells: Table, hit_ids: np.ndarray, cells_path: Path, hits_path: Path) -> None:
    """Every cell must belong to a hit of the hits table."""
    unknown = ~np.isin(cells["hit_id"], hit_ids)
    if unknown.any():
        row = int(np.argmax(unknown))
        raise EventFormatError(
            f"hit_id {cells['hit_id'][row]} is not in {hits_path.name} "
            f"({int(unknown.sum())} cell rows name unknown hits)",
            path=cells_path,
            column="hit_id",
            row=row + 1,
        )


# --------------------------------------------------------------------------- events


def read_particles(path: str | Path, *, need_nhits: bool = True) -> Table:
    """Read a particles table (``particle_type`` optional); check its particle ids are unique and ``nhits`` >= 0.

    ``need_nhits=False`` (a table to simulate events from, which recomputes the hits):
    ``nhits`` is read when the file has it, not required."""
    path = Path(path)
    schema = PARTICLES_COLUMNS if need_nhits else {k: v for k, v in PARTICLES_COLUMNS.items() if k != "nhits"}
    optional = PARTICLES_OPTIONAL_COLUMNS if need_nhits else {**PARTICLES_OPTIONAL_COLUMNS, "nhits": np.int64}
    particles = read_table(path, schema, optional=optional)
    _check_unique(particles["particle_id"], path, "particle_id")
    if "nhits" in particles:
        _check_not_negative(particles["nhits"], path, "nhits", "nhits counts the particle's hits, so it is >= 0")
    return particles


def _read_prefix(prefix: Path, parts: Iterable[str]) -> Event:
    """Read and cross-check the event at ``prefix`` (hits always, the ``parts`` present)."""
    hits_path = event_file(prefix, "hits")
    if hits_path is None:
        raise EventFormatError(f"no hits file {prefix.name}-hits.csv[.gz]", path=prefix.parent)
    hits = read_table(hits_path, HITS_COLUMNS)
    _check_not_negative(hits["hit_id"], hits_path, "hit_id", "TrackML hit ids are >= 0; renumber the hits")
    _check_unique(hits["hit_id"], hits_path, "hit_id")
    hits = in_hit_id_order(hits)
    paths = {kind: event_file(prefix, kind) for kind in parts}

    truth = particles = cells = None
    if paths.get("truth") is not None:
        truth = read_table(paths["truth"], TRUTH_COLUMNS)
        _check_not_negative(truth["weight"], paths["truth"], "weight", "truth weights are >= 0 (noise hits weigh 0)")
        truth = _align_truth(truth, hits["hit_id"], paths["truth"], hits_path)
    if paths.get("particles") is not None:
        particles = read_particles(paths["particles"])
    if paths.get("cells") is not None:
        cells = read_table(paths["cells"], CELLS_COLUMNS)
        _check_cells(cells, hits["hit_id"], paths["cells"], hits_path)
    if truth is not None and particles is not None:
        _check_truth_particles(truth, particles, paths["truth"], paths["particles"])
    return Event(
        event_id=event_id_from_prefix(prefix),
        hits=hits,
        truth=truth,
        particles=particles,
        cells=cells,
        source=str(prefix),
    )


def in_hit_id_order(hits: Table) -> Table:
    """``hits`` with its rows in increasing ``hit_id`` order (the table itself when they already are).

    TrackML numbers the hits in the detector's order (volume, layer, module), and a bundle's
    graph stores each pair in a direction that follows the hits' order (its ``edge_direction``,
    ``i<j`` for the shipped one), which its filter and GNN learned on hits in that order: the
    same hits in another row order give other edges and worse tracks. So an event's hits are
    taken in hit id order whatever the order of the file's rows."""
    order = hit_id_row_order(hits["hit_id"])
    return hits if order is None else {name: column[order] for name, column in hits.items()}


def _check_parts(parts: Iterable[str]) -> tuple[str, ...]:
    parts = (parts,) if isinstance(parts, str) else tuple(parts)
    unknown = [part for part in parts if part not in EVENT_PARTS]
    if unknown:
        raise InputError(f"unknown event part(s) {unknown}; choose among {list(EVENT_PARTS)} (hits are always read)")
    return parts


def read_event(path: str | Path, parts: Iterable[str] = EVENT_PARTS) -> Event:
    """Read one TrackML event: its hits, and the ``parts`` (truth, particles, cells) present.

    ``path`` is anything :func:`find_event_prefixes` accepts that designates exactly one
    event. A part that is asked for but has no file is ``None``; a part not asked for is
    not read. The event id is :func:`event_id_from_prefix` of the prefix. The hits come in
    increasing hit id order whatever the file's row order (:func:`in_hit_id_order`), the
    truth in the hits' order.

    Checks, each an :class:`EventFormatError` naming file, column and row: hit ids unique
    and >= 0; truth weights >= 0; truth has exactly the hits' hit ids (rows are reordered
    to the hits' order when only the order differs; otherwise the differing ids are
    listed); particle ids unique and ``nhits`` >= 0; each non-zero truth particle id is in
    the particles table; each cell's hit id is a hit.
    """
    parts = _check_parts(parts)
    return _read_prefix(event_prefix(path), parts)


def event_prefix(path: str | Path) -> Path:
    """The prefix of the one event ``path`` designates (:func:`find_event_prefixes`); an
    :class:`EventFormatError` when it designates several (a directory of events)."""
    prefixes = find_event_prefixes(path)
    if len(prefixes) != 1:
        raise EventFormatError(
            f"holds {len(prefixes)} events ({', '.join(p.name for p in prefixes[:_MAX_LISTED])}"
            f"{', ...' if len(prefixes) > _MAX_LISTED else ''}); give one event's prefix, such as {prefixes[0]} "
            "(in Python, read_events reads them all)",
            path=path,
        )
    return prefixes[0]


def read_events(path: str | Path, parts: Iterable[str] = EVENT_PARTS) -> Iterator[Event]:
    """Read every event that ``path`` designates (see :func:`find_event_prefixes`), one at a time.

    The prefixes are found first (so a path with no event fails at once); each event is
    read and checked as by :func:`read_event` when the iterator reaches it.
    """
    parts = _check_parts(parts)
    prefixes = find_event_prefixes(path)
    return (_read_prefix(prefix, parts) for prefix in prefixes)


# --------------------------------------------------------------------------- writing


def _format_column(values: np.ndarray) -> list[str]:
    """Text of each value of a column: integers exactly, floats with enough digits to round-trip float32 data."""
    if np.issubdtype(values.dtype, np.integer):
        return [str(v) for v in values.tolist()]
    return [f"{v:.9g}" for v in values.tolist()]


def _table_bytes(table: Table, columns: list[str], compress: bool) -> bytes:
    """``table``'s ``columns`` as the bytes of a CSV file with a header (gzip-compressed with ``compress``)."""
    texts = [_format_column(np.asarray(table[name])) for name in columns]
    lines = [",".join(columns)]
    lines.extend(",".join(row) for row in zip(*texts))
    data = ("\n".join(lines) + "\n").encode()
    return gzip.compress(data, compresslevel=4) if compress else data


def write_table(path: str | Path, table: Table, columns: list[str]) -> Path:
    """Write ``table``'s ``columns`` to a CSV file with a header; ``.gz`` paths are gzip-compressed.

    The file is written whole or not at all (a temporary file beside it, then renamed);
    :class:`~trackserve.errors.OutputError` names the file when it cannot be written."""
    path = Path(path)
    write_files_atomically([(path, _table_bytes(table, columns, path.suffix == ".gz"))])
    return path


def write_event(event: Event, directory: str | Path, *, compress: bool = False,
                replace_other_compression: bool = False) -> dict[str, Path]:
    """Write every table the event has as ``<directory>/event<id>-<kind>.csv[.gz]``.

    Returns the written paths by kind. The directory is created if needed. The event is
    written whole or not at all: every file to a temporary one first, then all renamed into
    place (the hits file, by which readers find an event, last), so a failure or an
    interruption (Ctrl-C, SIGTERM) while writing leaves the directory as it was, an earlier
    copy of the event included. Once written, an earlier copy's tables that this event does
    not have (its truth, say) are removed, so that the event reads back as written. An
    earlier copy in the other compression is refused (read_event refuses an event in both),
    or with ``replace_other_compression`` removed once this one is in place.
    """
    if not isinstance(event, Event):
        raise InputError(f"write_event takes an Event (trackserve.events.event.Event), got {type(event).__name__}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InputError(f"cannot write event {event.name} into {directory}: it is a file, not a directory")
    suffix = ".csv.gz" if compress else ".csv"
    other = ".csv" if compress else ".csv.gz"
    clashing = sorted(path.name for kind in SCHEMAS if (path := directory / f"{event.name}-{kind}{other}").exists())
    if clashing and not replace_other_compression:
        raise InputError(f"cannot write event {event.name} as {suffix} files into {directory}: it holds "
                         f"{', '.join(clashing)}, and read_event refuses an event in both compressions; remove "
                         "them or write to another directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the directory {directory}: {error.strerror or error}") from None
    contents: list[tuple[str, Path, bytes]] = []
    for kind in sorted(SCHEMAS, key=lambda kind: kind == "hits"):
        table = getattr(event, kind)
        if table is None:
            continue
        columns = list(SCHEMAS[kind])
        if kind == "particles" and "particle_type" in table:
            columns.insert(1, "particle_type")
        contents.append((kind, directory / f"{event.name}-{kind}{suffix}", _table_bytes(table, columns, compress)))
    write_files_atomically([(path, data) for _kind, path, data in contents])
    written = {kind: path for kind, path, _data in contents}
    # an earlier copy's tables this event lacks would be read back with it, and one in the other
    # compression would make read_event refuse the event
    stale = [directory / f"{event.name}-{kind}{suffix}" for kind in SCHEMAS if kind not in written]
    stale += [directory / name for name in clashing]
    for path in stale:
        if path.is_file():
            try:
                path.unlink()
            except OSError as error:
                raise OutputError(f"cannot remove {path}, a file of an earlier copy of the event just written "
                                  f"(read_event would read it with the new hits): {error.strerror or error}") from None
    return {kind: written[kind] for kind in SCHEMAS if kind in written}
