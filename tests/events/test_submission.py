"""TrackML submission files: round trips and bad files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from trackserve.errors import EventFormatError, InputError
from trackserve.events.submission import SUBMISSION_COLUMNS, read_submission, write_submission
from trackserve.events.trackml import read_event

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["sub.csv", "sub.csv.gz"])
def test_round_trip_of_the_real_event_truth(tmp_path, name):
    event = read_event(REPO / "data", parts=("truth",))
    hit_ids, particle_ids = event.hits["hit_id"], event.truth["particle_id"]
    path = write_submission(tmp_path / name, event.event_id, hit_ids, particle_ids)
    assert path == tmp_path / name
    raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    assert raw.decode().splitlines()[:2] == ["event_id,hit_id,track_id", f"1,{hit_ids[0]},{particle_ids[0]}"]
    event_ids, hits_back, tracks_back = read_submission(path)
    assert event_ids.dtype == hits_back.dtype == tracks_back.dtype == np.int64
    np.testing.assert_array_equal(event_ids, np.ones(5527, dtype=np.int64))
    np.testing.assert_array_equal(hits_back, hit_ids)
    np.testing.assert_array_equal(tracks_back, particle_ids)  # 64-bit ids survive exactly


def test_several_events_and_per_row_event_ids(tmp_path):
    event_ids = np.array([3, 3, 4, 4, 4], dtype=np.int32)
    hit_ids = np.array([1, 2, 1, 2, 3], dtype=np.uint16)  # the same hit id in two events is fine
    tracks = np.array([-1, 7, 0, 0, 2**40])
    path = write_submission(tmp_path / "s.csv", event_ids, hit_ids, tracks)
    back = read_submission(path)
    for got, want in zip(back, (event_ids, hit_ids, tracks)):
        np.testing.assert_array_equal(got, want)


def test_empty_and_one_row(tmp_path):
    path = write_submission(tmp_path / "e.csv", 9, np.array([], dtype=np.int64), [])
    assert path.read_text() == "event_id,hit_id,track_id\n"
    assert all(len(column) == 0 and column.dtype == np.int64 for column in read_submission(path))
    path = write_submission(tmp_path / "o.csv", np.int64(9), [5], [1])
    assert [column.tolist() for column in read_submission(path)] == [[9], [5], [1]]


def test_columns_in_another_order_and_extra_columns(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("track_id,hit_id,score,event_id\n4,10,0.5,1\n5,11,0.25,1\n")
    assert [column.tolist() for column in read_submission(path)] == [[1, 1], [10, 11], [4, 5]]


@pytest.mark.parametrize(
    "args,fragment",
    [
        ((1, [1, 2], [1]), "2 hit ids but 1 track ids"),
        ((1, [1.0, 2.0], [1, 2]), "hit_ids must hold integers, got dtype float64"),
        ((1, [1, 2], [0.5, 1.0]), "track_ids must hold integers"),
        ((1, [1, 2], np.array([True, False])), "track_ids must hold integers, got dtype bool"),
        ((1, [[1, 2]], [[1, 2]]), "hit_ids must be 1-D"),
        ((1.0, [1, 2], [1, 2]), "event_id must be an integer"),
        ((True, [1, 2], [1, 2]), "event_id must be an integer"),
        (([1, 1, 1], [1, 2], [1, 2]), "3 event ids but 2 hit ids"),
        ((1, [1, 2, 1], [1, 2, 3]), "hit_id 1 of event 1 appears twice (second at index 2)"),
        (([1, 2, 2], [1, 5, 5], [1, 2, 3]), "hit_id 5 of event 2 appears twice"),
        ((1, np.array([2**64 - 1], dtype=np.uint64), [1]), "above the int64 range"),
    ],
)
def test_write_errors(tmp_path, args, fragment):
    with pytest.raises(InputError) as error:
        write_submission(tmp_path / "s.csv", *args)
    assert fragment in str(error.value)
    assert not (tmp_path / "s.csv").exists()


def read_error(path: Path, text: str) -> EventFormatError:
    path.write_text(text)
    with pytest.raises(EventFormatError) as error:
        read_submission(path)
    return error.value


def test_read_errors_name_file_column_row(tmp_path):
    path = tmp_path / "s.csv"
    error = read_error(path, "event_id,hit_id,track_id\n1,1,4\n1,2,4\n1,1,5\n")
    assert (error.path, error.column, error.row) == (str(path), "hit_id", 3)
    assert "hit_id 1 of event 1 is given twice (first at row 1)" in str(error)

    error = read_error(path, "event_id,hit_id,track_id\n1,1,4\n1,2,4.5\n")
    assert (error.column, error.row) == ("track_id", 2)
    assert "'4.5' (line 3) as an integer" in str(error)

    error = read_error(path, "event_id,hit_id\n1,1\n")
    assert error.column == "track_id" and "missing column track_id" in str(error)

    error = read_error(path, "")
    assert "the file is empty" in str(error) and str(path) in str(error)

    error = read_error(path, "event_id,hit_id,track_id\n1,1\n")
    assert error.row == 1 and "has 2 fields" in str(error)

    with pytest.raises(EventFormatError, match="does not exist"):
        read_submission(tmp_path / "missing.csv")
    assert list(SUBMISSION_COLUMNS) == ["event_id", "hit_id", "track_id"]


def test_labels_without_their_header_line_are_named_as_such(tmp_path):
    # `tail -n +2` of a labels file: the first data line's repeated numbers are not a repeated column name.
    written = write_submission(tmp_path / "full.csv", 0, [1, 2, 3], [0, 0, 1])
    path = tmp_path / "s.csv"
    error = read_error(path, "".join(written.read_text().splitlines(keepends=True)[1:]))
    assert (error.path, error.column, error.row) == (str(path), None, None)
    assert "has no header line: the first line (0,1,0) looks like data" in str(error)
    assert "add one such as event_id,hit_id,track_id" in str(error)
    assert "appears twice" not in str(error)


@pytest.mark.parametrize("name", ["sub.csv", "sub.csv.gz"])
def test_a_file_that_cannot_be_written_is_named_and_the_old_one_kept_whole(tmp_path, name, monkeypatch):
    import errno

    import trackserve.paths as paths
    from trackserve.errors import OutputError

    path = tmp_path / name
    write_submission(path, 1, [1, 2], [0, 0])
    before = path.read_bytes()

    def no_space(source, target):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(paths.os, "replace", no_space)
    with pytest.raises(OutputError, match=f"cannot write {path}: No space left on device"):
        write_submission(path, 1, [1, 2, 3], [0, 1, 1])
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [name]
    monkeypatch.undo()
    assert read_submission(path)[1].tolist() == [1, 2]
