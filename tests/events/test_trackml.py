"""TrackML CSV reading and writing: real events, round trips, and every kind of bad file."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest

from trackserve.errors import EventFormatError, InputError
from trackserve.events.event import (
    CELLS_COLUMNS,
    HITS_COLUMNS,
    PARTICLES_COLUMNS,
    SCHEMAS,
    TRUTH_COLUMNS,
    Event,
    empty_table,
)
from trackserve.events.trackml import (
    event_file,
    event_id_from_prefix,
    find_event_prefixes,
    read_event,
    read_events,
    read_feature_csv,
    read_particles,
    in_hit_id_order,
    read_table,
    write_event,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data"
SHARED = REPO / ".." / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data folder {SHARED} is absent")

HITS_HEADER = ",".join(HITS_COLUMNS)
TRUTH_HEADER = ",".join(TRUTH_COLUMNS)
PARTICLES_HEADER = ",".join(PARTICLES_COLUMNS)
CELLS_HEADER = ",".join(CELLS_COLUMNS)


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path``, gzip-compressed when the name ends in .gz."""
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def tiny_event_files(directory: Path, *, hits=None, truth=None, particles=None, cells=None, prefix="event000000007"):
    """A small consistent event (3 hits, 1 particle, 1 noise hit) with any file's text replaced."""
    files = {
        "hits": hits
        if hits is not None
        else f"{HITS_HEADER}\n1,30.5,1.5,-10.25,8,2,1\n2,70.5,3.5,-20.5,8,4,2\n3,100,-50,5,8,6,3\n",
        "truth": truth
        if truth is not None
        else f"{TRUTH_HEADER}\n1,42,30.5,1.5,-10.25,1,0.1,0.2,0.5\n2,42,70.5,3.5,-20.5,1,0.1,0.2,0.5\n3,0,100,-50,5,0,0,0,0\n",
        "particles": particles if particles is not None else f"{PARTICLES_HEADER}\n42,0,0,0,1,0.1,0.2,1,2\n",
        "cells": cells if cells is not None else f"{CELLS_HEADER}\n1,10,20,0.5\n1,11,20,0.25\n3,5,6,1\n",
    }
    for kind, text in files.items():
        write_text(directory / f"{prefix}-{kind}.csv", text)
    return directory / prefix


def synthetic_event(event_id: int, num_hits: int, seed: int) -> Event:
    """A random, internally consistent event with full-precision floats and 64-bit particle ids."""
    rng = np.random.default_rng(seed)
    hit_ids = rng.permutation(np.arange(1, 3 * num_hits + 1))[:num_hits].astype(np.int64)
    particle_ids = np.array([4503668346847232 + 7 * i for i in range(max(num_hits // 4, 1))], dtype=np.int64)
    owner = np.where(rng.random(num_hits) < 0.2, 0, rng.choice(particle_ids, num_hits))
    hits = {
        "hit_id": hit_ids,
        "x": rng.normal(0, 300, num_hits),
        "y": rng.normal(0, 300, num_hits),
        "z": rng.normal(0, 1000, num_hits),
        "volume_id": rng.integers(7, 19, num_hits),
        "layer_id": rng.integers(2, 15, num_hits),
        "module_id": rng.integers(1, 3000, num_hits),
    }
    truth = {"hit_id": hit_ids.copy(), "particle_id": owner.astype(np.int64)}
    for name in ("tx", "ty", "tz", "tpx", "tpy", "tpz", "weight"):
        truth[name] = rng.normal(0, 10, num_hits)
    truth["weight"] = np.abs(truth["weight"])  # TrackML weights are >= 0
    particles = {"particle_id": particle_ids, "particle_type": rng.choice([-211, 211, 11, -13], len(particle_ids))}
    for name in ("vx", "vy", "vz", "px", "py", "pz"):
        particles[name] = rng.normal(0, 1, len(particle_ids))
    particles["q"] = rng.choice([-1, 1], len(particle_ids))
    particles["nhits"] = rng.integers(0, 20, len(particle_ids))
    cell_owner = rng.choice(hit_ids, 3 * num_hits)
    cells = {
        "hit_id": cell_owner.astype(np.int64),
        "ch0": rng.integers(0, 1000, 3 * num_hits),
        "ch1": rng.integers(0, 1000, 3 * num_hits),
        "value": rng.random(3 * num_hits),
    }
    return Event(event_id, hits, truth, particles, cells)


def assert_tables_match(read, written, schema):
    """Integer columns equal exactly, float columns to the writer's 9 significant digits."""
    assert set(read) == set(written)
    for name, column in written.items():
        assert read[name].dtype == np.dtype(schema.get(name, np.int64)), name
        if np.issubdtype(read[name].dtype, np.integer):
            np.testing.assert_array_equal(read[name], column, err_msg=name)
        else:
            np.testing.assert_allclose(read[name], column, rtol=1e-8, atol=0, err_msg=name)


# ---------------------------------------------------------------------- real data


def test_sample_event_counts():
    event = read_event(SAMPLE)
    assert event.event_id == 1
    assert event.num_hits == 5527
    assert int((event.truth["particle_id"] == 0).sum()) == 829
    assert len(event.particles["particle_id"]) == 548
    assert len(event.cells["hit_id"]) == 18564
    assert "particle_type" in event.particles
    np.testing.assert_array_equal(event.truth["hit_id"], event.hits["hit_id"])
    for table, schema in ((event.hits, HITS_COLUMNS), (event.truth, TRUTH_COLUMNS), (event.cells, CELLS_COLUMNS)):
        assert list(table) == list(schema)
        for name, dtype in schema.items():
            assert table[name].dtype == np.dtype(dtype)
    # One hit checked against the first data line of the file (hit 6 at -76.566,-11.3673,-1502.5).
    assert event.hits["hit_id"][0] == 6
    np.testing.assert_array_equal([event.hits[c][0] for c in "xyz"], [-76.566, -11.3673, -1502.5])
    assert event.truth["particle_id"][0] == 27028813309280256
    assert Path(event.source).name == "event000000001"


@pytest.mark.parametrize(
    "target",
    ["data", "data/event000000001", "data/event000000001-truth.csv.gz", "data/event000000001-hits.csv.gz"],
)
def test_every_way_to_name_the_sample_event(target):
    assert find_event_prefixes(REPO / target) == [SAMPLE / "event000000001"]
    assert read_event(REPO / target, parts=()).num_hits == 5527


def test_a_path_that_does_not_exist_is_named_as_missing(tmp_path):
    with pytest.raises(EventFormatError, match="does not exist: no such file or directory") as error:
        find_event_prefixes(tmp_path / "nosuch" / "evt")
    assert "evt-hits.csv" in str(error.value)
    # a file name no prefix is meant by (a feature CSV's) is missing, without a prefix's files to look for
    for name in ("evt.csv", "evt.csv.gz"):
        with pytest.raises(EventFormatError) as error:
            find_event_prefixes(tmp_path / "nosuch" / name)
        assert str(error.value).endswith(f"{name}: does not exist: no such file"), str(error.value)
    # an existing folder without the prefix's hits file is not "missing"
    (tmp_path / "event000000002-truth.csv").write_text("hit_id\n")
    with pytest.raises(EventFormatError, match="no event here"):
        find_event_prefixes(tmp_path / "event000000002")


def test_parts_not_asked_for_are_not_read():
    event = read_event(SAMPLE, parts=("truth",))
    assert event.truth is not None and event.particles is None and event.cells is None
    assert read_event(SAMPLE, parts="cells").cells is not None


@needs_shared
def test_shared_directory_ignores_lone_particle_tables():
    # trackml/ holds one full event plus two particles-only tables, which are not events.
    assert find_event_prefixes(SHARED / "trackml") == [(SHARED / "trackml" / "event000000001")]


@needs_shared
def test_barrel_subset_general_prefix():
    directory = SHARED / "trackml" / "barrel_subset_event000001000"
    assert find_event_prefixes(directory) == [directory / "20-density"]
    for target in (directory, directory / "20-density", directory / "20-density-particles.csv"):
        event = read_event(target)
        assert event.event_id == 0  # no event<digits> in the prefix "20-density"
        assert event.num_hits == 11382
        assert int((event.truth["particle_id"] == 0).sum()) == 2607
        assert len(event.particles["particle_id"]) == 1637
        assert "particle_type" not in event.particles
        assert event.cells is None


@needs_shared
@pytest.mark.parametrize(
    "name,count,extra",
    [("event000001000-particles.csv", 12263, []), ("event000021139-particles.csv", 13971, ["particle_type"])],
)
def test_full_particle_tables(name, count, extra):
    particles = read_particles(SHARED / "trackml" / name)
    assert len(particles["particle_id"]) == count
    assert list(particles) == list(PARTICLES_COLUMNS) + extra
    assert len(np.unique(particles["particle_id"])) == count


@needs_shared
def test_lrt_feature_files():
    sizes = []
    for index in range(100):
        features = read_feature_csv(SHARED / "exatrkx_service" / "lrt_events" / f"evt_{index}.csv", num_features=3)
        assert features.dtype == np.float32 and features.shape[1] == 3
        sizes.append(len(features))
    assert min(sizes) == 105 and max(sizes) == 3292
    assert abs(np.mean(sizes) - 1321) < 1
    first = read_feature_csv(SHARED / "exatrkx_service" / "lrt_events" / "evt_0.csv")
    np.testing.assert_allclose(first[0], [0.03195400047302246, -0.4040672369997751, -0.17279953002929688], rtol=1e-7)


def test_event_id_from_prefix():
    assert event_id_from_prefix("a/b/event000001000") == 1000
    assert event_id_from_prefix("event7") == 7
    assert event_id_from_prefix("barrel_subset_event000001000/20-density") == 0
    assert event_id_from_prefix("run-event12-hits") == 12
    for name in ("Event000000003", "event_000000003", "EVENT-3", "event000000003"):  # as users name them
        assert event_id_from_prefix(name) == 3
    assert event_id_from_prefix("evt3") == 0 and event_id_from_prefix("events") == 0


def test_an_event_id_too_large_is_named_when_read_not_when_listed(tmp_path):
    import shutil

    for name in ("event000000001", "event99999999999999999999"):
        shutil.copy(SAMPLE / "event000000001-hits.csv.gz", tmp_path / f"{name}-hits.csv.gz")
    assert [prefix.name for prefix in find_event_prefixes(tmp_path)] == ["event000000001", "event99999999999999999999"]
    with pytest.raises(EventFormatError, match="the event id 99999999999999999999 in the name is above"):
        read_event(tmp_path / "event99999999999999999999")


# ---------------------------------------------------------------------- round trips


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_synthetic(tmp_path, compress):
    event = synthetic_event(12, 200, seed=3)
    paths = write_event(event, tmp_path, compress=compress)
    assert paths["hits"].name == ("event000000012-hits.csv.gz" if compress else "event000000012-hits.csv")
    back = read_event(tmp_path)
    assert back.event_id == 12
    # the synthetic hit ids are shuffled: read back in hit id order, the truth with them
    order = np.argsort(event.hits["hit_id"])
    assert_tables_match(back.hits, {name: column[order] for name, column in event.hits.items()}, HITS_COLUMNS)
    assert_tables_match(back.truth, {name: column[order] for name, column in event.truth.items()}, TRUTH_COLUMNS)
    assert_tables_match(back.particles, event.particles, {**PARTICLES_COLUMNS, "particle_type": np.int64})
    assert_tables_match(back.cells, event.cells, CELLS_COLUMNS)


@pytest.mark.parametrize("compress", [False, True])
def test_an_event_interrupted_while_written_leaves_no_file(tmp_path, compress, monkeypatch):
    import trackserve.events.trackml as trackml

    event = synthetic_event(12, 200, seed=3)
    real_write_bytes = Path.write_bytes
    calls = []

    def interrupted_at_the_third_file(self, data):  # Ctrl-C while the third table is written
        calls.append(self.name)
        if len(calls) == 3:
            real_write_bytes(self, data[: len(data) // 2])
            raise KeyboardInterrupt
        return real_write_bytes(self, data)

    monkeypatch.setattr(trackml.Path, "write_bytes", interrupted_at_the_third_file)
    with pytest.raises(KeyboardInterrupt):
        write_event(event, tmp_path, compress=compress)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    written = write_event(event, tmp_path, compress=compress)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written.values())
    assert list(written) == list(SCHEMAS)  # by kind, in the usual order, though the hits went last


def test_round_trip_real_event(tmp_path):
    event = read_event(SAMPLE)
    write_event(event, tmp_path, compress=True)
    back = read_event(tmp_path / "event000000001")
    for kind in SCHEMAS:
        assert_tables_match(getattr(back, kind), getattr(event, kind), {**SCHEMAS[kind], "particle_type": np.int64})


def test_hits_in_any_row_order_read_in_hit_id_order(tmp_path):
    # The networks' edge direction follows the hit order: a file whose rows are shuffled
    # must give the same event as the file in TrackML's order.
    event = read_event(SAMPLE)
    shuffle = np.random.default_rng(5).permutation(event.num_hits)
    shuffled = Event(event.event_id, {name: column[shuffle] for name, column in event.hits.items()},
                     {name: column[shuffle] for name, column in event.truth.items()}, event.particles, event.cells)
    write_event(shuffled, tmp_path)
    text = (tmp_path / "event000000001-hits.csv").read_text().splitlines()
    assert text[1].split(",")[0] != "1"  # the file's rows really are shuffled
    back = read_event(tmp_path / "event000000001")
    assert_tables_match(back.hits, event.hits, HITS_COLUMNS)
    assert_tables_match(back.truth, event.truth, TRUTH_COLUMNS)


def test_in_hit_id_order_keeps_sorted_tables_and_sorts_others():
    hits = {"hit_id": np.array([3, 1, 2]), "x": np.array([30.0, 10.0, 20.0])}
    assert in_hit_id_order(hits)["x"].tolist() == [10.0, 20.0, 30.0]
    ordered = {"hit_id": np.array([1, 5, 9]), "x": np.zeros(3)}
    assert in_hit_id_order(ordered) is ordered
    one = {"hit_id": np.array([7]), "x": np.zeros(1)}
    assert in_hit_id_order(one) is one


def test_read_events_sorted_by_id(tmp_path):
    for event_id in (30, 4, 100):
        write_event(synthetic_event(event_id, 20, seed=event_id), tmp_path)
    events = read_events(tmp_path)
    assert [event.event_id for event in events] == [4, 30, 100]
    with pytest.raises(EventFormatError, match="holds 3 events"):
        read_event(tmp_path)


def test_read_events_needs_an_event(tmp_path):
    with pytest.raises(EventFormatError, match="no TrackML event in this directory") as error:
        read_events(tmp_path)
    assert error.value.path == str(tmp_path)


def test_empty_event(tmp_path):
    event = Event(5, empty_table(HITS_COLUMNS), empty_table(TRUTH_COLUMNS), empty_table(PARTICLES_COLUMNS), empty_table(CELLS_COLUMNS))
    write_event(event, tmp_path)
    assert (tmp_path / "event000000005-hits.csv").read_text() == HITS_HEADER + "\n"
    back = read_event(tmp_path)
    assert back.num_hits == 0
    for kind, schema in SCHEMAS.items():
        table = getattr(back, kind)
        assert list(table) == list(schema)
        assert all(len(column) == 0 and column.dtype == np.dtype(schema[name]) for name, column in table.items())


def test_one_hit_event(tmp_path):
    prefix = tiny_event_files(
        tmp_path,
        hits=f"{HITS_HEADER}\n9,1,2,3,8,2,1\n",
        truth=f"{TRUTH_HEADER}\n9,42,1,2,3,0,0,0,1\n",
        cells=f"{CELLS_HEADER}\n9,1,1,0.5\n",
    )
    event = read_event(prefix)
    assert event.num_hits == 1 and event.hits["hit_id"].tolist() == [9]
    assert event.truth["particle_id"].tolist() == [42]


# ---------------------------------------------------------------------- read_table


def test_columns_in_any_order_extra_ignored_optional_kept(tmp_path):
    path = write_text(tmp_path / "t.csv", "extra,b,a,opt\nfoo,1.5,3,7\nbar,2.5,-4,8\n")
    table = read_table(path, {"a": np.int64, "b": np.float64}, optional={"opt": np.int64, "absent": np.int64})
    assert list(table) == ["a", "b", "opt"]
    assert table["a"].tolist() == [3, -4] and table["a"].dtype == np.int64
    assert table["b"].tolist() == [1.5, 2.5]
    assert table["opt"].tolist() == [7, 8]


def test_crlf_whitespace_and_compressed_content(tmp_path):
    text = "a, b\r\n1, 2.5\r\n\r\n3 ,4\r\n"
    plain = read_table(write_text(tmp_path / "t.csv", text), {"a": np.int64, "b": np.float64})
    # gzip content is recognised whatever the file name
    (tmp_path / "u.csv").write_bytes(gzip.compress(text.encode()))
    packed = read_table(tmp_path / "u.csv", {"a": np.int64, "b": np.float64})
    (tmp_path / "mac.csv").write_bytes(text.replace("\r\n", "\r").encode())  # lines ended by CR alone
    old_mac = read_table(tmp_path / "mac.csv", {"a": np.int64, "b": np.float64})
    for table in (plain, packed, old_mac):
        assert table["a"].tolist() == [1, 3] and table["b"].tolist() == [2.5, 4.0]
    (tmp_path / "cut.csv.gz").write_bytes(gzip.compress(text.encode() * 100)[:30])
    with pytest.raises(EventFormatError, match="is a gzip file cut short .*: copy or download it again"):
        read_table(tmp_path / "cut.csv.gz", {"a": np.int64, "b": np.float64})


def test_large_int64_ids_are_exact(tmp_path):
    path = write_text(tmp_path / "t.csv", "id\n9223372036854775807\n-9223372036854775808\n4503668346847233\n")
    assert read_table(path, {"id": np.int64})["id"].tolist() == [2**63 - 1, -(2**63), 4503668346847233]


def test_an_integer_beyond_int64_is_named_as_such(tmp_path):
    path = write_text(tmp_path / "t.csv", "id\n1\n9223372036854775808\n")
    with pytest.raises(EventFormatError, match=r"cannot read '9223372036854775808' \(line 3\) as an integer \(it lies "
                                               r"beyond the 64-bit integers"):
        read_table(path, {"id": np.int64})
    with pytest.raises(EventFormatError, match=r"\(line 2\) as an integer$"):  # not an integer at all: no such remark
        read_table(write_text(tmp_path / "u.csv", "id\n1.5\n"), {"id": np.int64})


def test_header_only_is_an_empty_table(tmp_path):
    table = read_table(write_text(tmp_path / "t.csv.gz", "a,b\n"), {"a": np.int64, "b": np.float64})
    assert table["a"].dtype == np.int64 and table["b"].dtype == np.float64
    assert len(table["a"]) == 0 and len(table["b"]) == 0


@pytest.mark.parametrize("text", ["", "\n\n"])
def test_empty_file_is_an_error(tmp_path, text):
    path = write_text(tmp_path / "t.csv", text)
    with pytest.raises(EventFormatError, match="the file is empty") as error:
        read_table(path, {"a": np.int64})
    assert error.value.path == str(path)


def check_error(error, path, column, row, *fragments):
    """The error names the file, the column and the row, and says what is wrong."""
    assert error.value.path == str(path)
    assert error.value.column == column
    assert error.value.row == row
    message = str(error.value)
    assert str(path) in message
    if column is not None:
        assert f"column '{column}'" in message
    if row is not None:
        assert f"row {row}" in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    "body,column,row,fragment",
    [
        ("1,2.5\n3,x\n", "b", 2, "'x' (line 3) as a number"),
        ("1,2.5\n3.5,1\n", "a", 2, "'3.5' (line 3) as an integer"),
        ("1,2.5\n99999999999999999999,1\n", "a", 2, "as an integer"),
        ("1,2.5\n,1\n", "a", 2, "'' (line 3)"),
        ("1,2.5\n\n2,1e5\n3,1_0\n", "b", 3, "'1_0' (line 5)"),
        ("1,nan\n", "b", 1, "not finite"),
        ("1,2\n2,3\n3,-inf\n", "b", 3, "not finite"),
        ("1,1e400\n", "b", 1, "not finite"),
    ],
)
def test_bad_values_name_column_and_row(tmp_path, body, column, row, fragment):
    for name in ("t.csv", "t.csv.gz"):
        path = write_text(tmp_path / name, "a,b\n" + body)
        with pytest.raises(EventFormatError) as error:
            read_table(path, {"a": np.int64, "b": np.float64})
        check_error(error, path, column, row, fragment)


@pytest.mark.parametrize(
    "body,row,fields",
    [("1,2,3\n4,5\n", 2, 2), ("1,2,3\n4,5,6,7\n", 2, 4), ("1,2,3,4\n", 1, 4), ("1,2,3\n 4 \n", 2, 1)],
)
def test_ragged_lines(tmp_path, body, row, fields):
    path = write_text(tmp_path / "t.csv", "a,b,c\n" + body)
    with pytest.raises(EventFormatError) as error:
        # only a and c are read: extra fields must be caught even outside the read columns
        read_table(path, {"a": np.int64, "c": np.int64})
    check_error(error, path, None, row, f"has {fields} fields but the header names 3 columns")


def test_a_short_line_and_a_long_one_do_not_pass_for_two_right_ones(tmp_path):
    """Counted over the whole file, a line without the unread column c and a line with one
    field more added up right, and the long line's values were read one column off."""
    path = write_text(tmp_path / "t.csv", "a,b,c\n1,2\n3,4,5,6\n7,8,9\n")
    with pytest.raises(EventFormatError) as error:
        read_table(path, {"a": np.int64, "b": np.int64})
    check_error(error, path, None, 1, "line 2 has 2 fields but the header names 3 columns")


def test_lines_of_spaces_are_empty_lines(tmp_path):
    """A line holding only spaces or tabs, anywhere, is skipped as an empty line is (numpy's
    reader failed on it, and the error called it a line of one field)."""
    path = write_text(tmp_path / "t.csv", "a,b\n1,2\n  \n\t\r\n3,4.5\n \n   ")
    table = read_table(path, {"a": np.int64, "b": np.float64})
    assert table["a"].tolist() == [1, 3] and table["b"].tolist() == [2.0, 4.5]
    # rows are still counted without them
    path = write_text(tmp_path / "u.csv", "a,b\n1,2\n  \n3,x\n")
    with pytest.raises(EventFormatError) as error:
        read_table(path, {"a": np.int64, "b": np.float64})
    check_error(error, path, "b", 2, "cannot read 'x' (line 4) as a number")


@pytest.mark.parametrize("column,text", [("a", "\u0663\u0663"), ("b", "\u0663"), ("b", "\uff11.5")])
def test_digits_of_other_scripts_are_named(tmp_path, column, text):
    """Python's int() and float() read Arabic-Indic or full-width digits, numpy's reader does
    not: the file was refused with numpy's message (no column, a row off by one)."""
    values = {"a": "1", "b": "2"}
    values[column] = text
    path = write_text(tmp_path / "t.csv", f"a,b\n5,6\n{values['a']},{values['b']}\n")
    with pytest.raises(EventFormatError) as error:
        read_table(path, {"a": np.int64, "b": np.float64})
    check_error(error, path, column, 2, f"cannot read {text!r} (line 3)")


def test_missing_columns_are_named(tmp_path):
    path = write_text(tmp_path / "event000000001-hits.csv", "hit_id,x,y,volume_id,layer_id\n1,2,3,4,5\n")
    with pytest.raises(EventFormatError) as error:
        read_table(path, HITS_COLUMNS)
    check_error(error, path, None, None, "missing columns z, module_id", "the header has hit_id, x, y, volume_id, layer_id")
    path = write_text(tmp_path / "one.csv", "a\n1\n")
    with pytest.raises(EventFormatError) as error:
        read_table(path, {"a": np.int64, "b": np.float64})
    check_error(error, path, "b", None, "missing column b")


def test_headerless_file_gets_a_hint(tmp_path):
    path = write_text(tmp_path / "t.csv", "1,2.5\n3,4\n")
    with pytest.raises(EventFormatError, match="looks like data: TrackML files need a header line"):
        read_table(path, {"a": np.int64, "b": np.float64})


def test_headerless_file_with_repeated_numbers_says_it_has_no_header(tmp_path):
    path = write_text(tmp_path / "event000000001-hits.csv", "1,2,2,1,8,2,1\n2,3,3,1,8,2,1\n")
    with pytest.raises(EventFormatError) as error:
        read_table(path, HITS_COLUMNS)
    check_error(error, path, None, None, "has no header line: the first line (1,2,2,1,8,2,1) looks like data",
                f"add one such as {HITS_HEADER}")


def test_bad_headers(tmp_path):
    path = write_text(tmp_path / "t.csv", "a,b,a\n1,2,3\n")
    with pytest.raises(EventFormatError) as error:
        read_table(path, {"a": np.int64})
    check_error(error, path, "a", None, "appears twice")
    # An unnamed column (a pandas index) is ignored like any unknown column.
    path = write_text(tmp_path / "u.csv", ",a,b\n0,1,2\n1,3,4\n")
    table = read_table(path, {"b": np.int64, "a": np.int64})
    assert list(table) == ["b", "a"] and table["a"].tolist() == [1, 3] and table["b"].tolist() == [2, 4]


def test_missing_file_directory_bad_gzip_and_binary(tmp_path):
    with pytest.raises(EventFormatError, match="does not exist") as error:
        read_table(tmp_path / "nope.csv", {"a": np.int64})
    assert error.value.path == str(tmp_path / "nope.csv")
    with pytest.raises(EventFormatError, match="is a directory"):
        read_table(tmp_path, {"a": np.int64})
    (tmp_path / "t.csv.gz").write_bytes(b"a\n1\n")
    with pytest.raises(EventFormatError, match="not a valid gzip file"):
        read_table(tmp_path / "t.csv.gz", {"a": np.int64})
    (tmp_path / "b.csv").write_bytes(b"a\n\xff\xfe\n")
    with pytest.raises(EventFormatError, match="not UTF-8"):
        read_table(tmp_path / "b.csv", {"a": np.int64})


# ---------------------------------------------------------------------- event consistency


def test_tiny_event_is_valid(tmp_path):
    event = read_event(tiny_event_files(tmp_path))
    assert event.event_id == 7 and event.num_hits == 3
    assert event.truth["particle_id"].tolist() == [42, 42, 0]
    assert event.cells["hit_id"].tolist() == [1, 1, 3]


def test_duplicated_hit_ids(tmp_path):
    prefix = tiny_event_files(tmp_path, hits=f"{HITS_HEADER}\n1,1,1,1,8,2,1\n2,1,1,1,8,2,1\n1,1,1,1,8,2,1\n")
    with pytest.raises(EventFormatError) as error:
        read_event(prefix)
    check_error(error, tmp_path / "event000000007-hits.csv", "hit_id", 3, "hit_id 1 is duplicated (first at row 1)")


def test_negative_hit_ids_are_refused(tmp_path):
    prefix = tiny_event_files(tmp_path, hits=f"{HITS_HEADER}\n1,1,1,1,8,2,1\n-5,1,1,1,8,2,1\n3,1,1,1,8,2,1\n")
    with pytest.raises(EventFormatError) as error:
        read_event(prefix, parts=())
    check_error(error, tmp_path / "event000000007-hits.csv", "hit_id", 2, "hit_id -5 is negative", "hit ids are >= 0")
    # 0 is not negative: only the negative ids are refused.
    event = read_event(tiny_event_files(tmp_path, hits=f"{HITS_HEADER}\n0,1,1,1,8,2,1\n"), parts=())
    assert event.hits["hit_id"].tolist() == [0]


def test_negative_truth_weight_names_the_truth_file_and_its_row(tmp_path):
    # The truth rows are in another order than the hits: the row named is the file's row.
    truth = f"{TRUTH_HEADER}\n3,0,100,-50,5,0,0,0,0\n1,42,30.5,1.5,-10.25,1,0.1,0.2,0.5\n2,42,70.5,3.5,-20.5,1,0.1,0.2,-0.5\n"
    with pytest.raises(EventFormatError) as error:
        read_event(tiny_event_files(tmp_path, truth=truth), parts=("truth",))
    check_error(error, tmp_path / "event000000007-truth.csv", "weight", 3, "weight -0.5 is negative", "weights are >= 0")


def test_negative_nhits_is_refused(tmp_path):
    particles = f"{PARTICLES_HEADER}\n42,0,0,0,1,0.1,0.2,1,-2\n"
    with pytest.raises(EventFormatError) as error:
        read_event(tiny_event_files(tmp_path, particles=particles))
    check_error(error, tmp_path / "event000000007-particles.csv", "nhits", 1, "nhits -2 is negative")


def test_truth_in_another_order_is_aligned_to_hits(tmp_path):
    truth = f"{TRUTH_HEADER}\n3,0,100,-50,5,0,0,0,0\n1,42,30.5,1.5,-10.25,1,0.1,0.2,0.5\n2,42,70.5,3.5,-20.5,1,0.1,0.2,0.9\n"
    event = read_event(tiny_event_files(tmp_path, truth=truth))
    assert event.truth["hit_id"].tolist() == [1, 2, 3]
    assert event.truth["particle_id"].tolist() == [42, 42, 0]
    assert event.truth["weight"].tolist() == [0.5, 0.9, 0.0]


def test_truth_hit_ids_differ(tmp_path):
    truth = f"{TRUTH_HEADER}\n1,42,0,0,0,0,0,0,0\n5,42,0,0,0,0,0,0,0\n3,0,0,0,0,0,0,0,0\n"
    with pytest.raises(EventFormatError) as error:
        read_event(tiny_event_files(tmp_path, truth=truth))
    check_error(
        error,
        tmp_path / "event000000007-truth.csv",
        "hit_id",
        2,
        "1 hit ids of event000000007-hits.csv are missing from truth (2)",
        "1 truth hit ids are not in event000000007-hits.csv (5)",
    )
    truth = f"{TRUTH_HEADER}\n1,42,0,0,0,0,0,0,0\n2,42,0,0,0,0,0,0,0\n"
    with pytest.raises(EventFormatError, match=r"missing from truth \(3\)"):
        read_event(tiny_event_files(tmp_path, truth=truth))


def test_duplicated_truth_hit_ids(tmp_path):
    truth = f"{TRUTH_HEADER}\n1,42,0,0,0,0,0,0,0\n2,42,0,0,0,0,0,0,0\n2,0,0,0,0,0,0,0,0\n3,0,0,0,0,0,0,0,0\n"
    with pytest.raises(EventFormatError) as error:
        read_event(tiny_event_files(tmp_path, truth=truth))
    check_error(error, tmp_path / "event000000007-truth.csv", "hit_id", 3, "hit_id 2 is duplicated (first at row 2)")


def test_duplicated_particle_ids(tmp_path):
    particles = f"{PARTICLES_HEADER}\n42,0,0,0,1,0,0,1,2\n43,0,0,0,1,0,0,1,2\n42,0,0,0,1,0,0,1,2\n"
    with pytest.raises(EventFormatError) as error:
        read_event(tiny_event_files(tmp_path, particles=particles))
    check_error(error, tmp_path / "event000000007-particles.csv", "particle_id", 3, "particle_id 42 is duplicated")


def test_truth_particle_not_in_particles(tmp_path):
    particles = f"{PARTICLES_HEADER}\n41,0,0,0,1,0,0,1,2\n"
    with pytest.raises(EventFormatError) as error:
        read_event(tiny_event_files(tmp_path, particles=particles))
    check_error(
        error,
        tmp_path / "event000000007-truth.csv",
        "particle_id",
        1,
        "particle_id 42 is not in event000000007-particles.csv",
    )
    # Without the particles part, the truth alone is accepted.
    assert read_event(tmp_path / "event000000007", parts=("truth",)).truth is not None


def test_cells_of_unknown_hits(tmp_path):
    cells = f"{CELLS_HEADER}\n1,1,1,0.5\n3,1,1,0.5\n8,1,1,0.5\n"
    with pytest.raises(EventFormatError) as error:
        read_event(tiny_event_files(tmp_path, cells=cells))
    check_error(error, tmp_path / "event000000007-cells.csv", "hit_id", 3, "hit_id 8 is not in event000000007-hits.csv")


def test_bad_file_inside_an_event_is_named(tmp_path):
    truth = f"{TRUTH_HEADER}\n1,42,0,0,0,0,0,0,0\n2,x42,0,0,0,0,0,0,0\n3,0,0,0,0,0,0,0,0\n"
    with pytest.raises(EventFormatError) as error:
        read_event(tiny_event_files(tmp_path, truth=truth))
    check_error(error, tmp_path / "event000000007-truth.csv", "particle_id", 2, "'x42'")


def test_missing_optional_parts_are_none(tmp_path):
    prefix = tiny_event_files(tmp_path)
    (tmp_path / "event000000007-cells.csv").unlink()
    (tmp_path / "event000000007-particles.csv").unlink()
    event = read_event(prefix)
    assert event.truth is not None and event.particles is None and event.cells is None


def test_plain_and_gz_of_the_same_kind_is_ambiguous(tmp_path):
    prefix = tiny_event_files(tmp_path)
    write_text(tmp_path / "event000000007-hits.csv.gz", f"{HITS_HEADER}\n")
    with pytest.raises(EventFormatError, match="both event000000007-hits.csv and event000000007-hits.csv.gz exist") as error:
        read_event(prefix)
    # named by the part's file, so that a truth table in both leaves the event to run (`run`)
    assert error.value.path == str(tmp_path / "event000000007-hits.csv")
    assert event_file(prefix, "truth") == tmp_path / "event000000007-truth.csv"


def test_paths_that_are_not_events(tmp_path):
    tiny_event_files(tmp_path)
    # a prefix with no file at all does not exist
    with pytest.raises(EventFormatError, match="does not exist.*event000000008-hits.csv or event000000008-hits.csv.gz"):
        read_event(tmp_path / "event000000008")
    write_text(tmp_path / "notes.txt", "hello")
    with pytest.raises(EventFormatError, match="is not a TrackML event file"):
        read_event(tmp_path / "notes.txt")
    (tmp_path / "event000000007-hits.csv").unlink()
    with pytest.raises(EventFormatError, match="neither event000000007-hits.csv"):
        read_event(tmp_path / "event000000007-truth.csv")
    with pytest.raises(ValueError, match="unknown event part"):
        read_event(tmp_path, parts=("hits",))


# ---------------------------------------------------------------------- feature files


def test_feature_csv_values(tmp_path):
    path = write_text(tmp_path / "f.csv", "0.5,-1,2e-3\n1.5,0,3\n")
    features = read_feature_csv(path)
    assert features.dtype == np.float32
    np.testing.assert_array_equal(features, np.array([[0.5, -1, 2e-3], [1.5, 0, 3]], dtype=np.float32))
    single = read_feature_csv(write_text(tmp_path / "g.csv.gz", "1,2,3\n"))
    assert single.shape == (1, 3)


def test_feature_csv_empty(tmp_path):
    path = write_text(tmp_path / "f.csv", "")
    assert read_feature_csv(path).shape == (0, 0)
    assert read_feature_csv(path, num_features=3).shape == (0, 3)


@pytest.mark.parametrize(
    "text,row,column,fragment",
    [
        ("1,2,3\n4,nan,6\n", 2, "2", "not a finite float32"),
        ("1,2,3\n4,5,inf\n", 2, "3", "not a finite float32"),
        ("1,2,3\n4,5,1e39\n", 2, "3", "not a finite float32"),
        ("1,2,3\n4,5\n", 2, None, "line 2 has 2 values but the first line has 3"),
        ("1,2,3\n4,5,6,7\n", 2, None, "line 2 has 4 values"),
        ("1,2,3\n4,y,6\n", 2, "2", "cannot read 'y' (line 2) as a number"),
        ("r,phi,z\n1,2,3\n", 1, "1", "feature files have no header line"),
    ],
)
def test_feature_csv_errors(tmp_path, text, row, column, fragment):
    path = write_text(tmp_path / "f.csv", text)
    with pytest.raises(EventFormatError) as error:
        read_feature_csv(path)
    check_error(error, path, column, row, fragment)


def test_feature_csv_lines_of_spaces_at_the_end_hold_no_hit(tmp_path):
    path = write_text(tmp_path / "f.csv", "1,2,3\n4,5,6\n  \n\t\n")
    assert read_feature_csv(path).tolist() == [[1, 2, 3], [4, 5, 6]]
    with pytest.raises(EventFormatError, match="line 2 is empty"):  # before a hit they still number it wrong
        read_feature_csv(write_text(tmp_path / "g.csv", "1,2,3\n  \n4,5,6\n"))


def test_feature_csv_width_is_checked(tmp_path):
    path = write_text(tmp_path / "f.csv", "1,2\n")
    with pytest.raises(EventFormatError, match="has 2 features per hit, expected 3"):
        read_feature_csv(path, num_features=3)


def test_a_directory_of_feature_csvs_is_named_a_directory_holding_no_truth(tmp_path):
    (tmp_path / "evt_0.csv").write_text("r,phi,z\n0.1,0.2,0.3\n")
    with pytest.raises(EventFormatError) as error:
        read_events(tmp_path)
    message = str(error.value)
    assert message.startswith(f"directory {tmp_path}: no TrackML event in this directory")
    assert "it holds 1 other CSV file(s): evt_0.csv (feature CSVs carry no truth" in message
    (tmp_path / "evt_0.csv").unlink()
    (tmp_path / "event000000001-truth.csv").write_text("hit_id\n")
    (tmp_path / "event000000001-labels.csv").write_text("event_id,hit_id,track_id\n")
    with pytest.raises(EventFormatError) as error:
        read_events(tmp_path)
    assert str(error.value).endswith("(it holds 1 file(s) of events without their hits file: "
                                     "event000000001-truth.csv; 1 labels file(s): event000000001-labels.csv)")


def test_write_event_refuses_what_read_event_could_not_read_back(tmp_path):
    event = synthetic_event(12, 50, seed=3)
    write_event(event, tmp_path)
    with pytest.raises(InputError, match=r"cannot write event event000000012 as .csv.gz files into .*: it holds "
                                         r"event000000012-cells.csv, event000000012-hits.csv"):
        write_event(event, tmp_path, compress=True)
    assert read_event(tmp_path).event_id == 12  # the event there is left as it was, readable
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="it is a file, not a directory"):
        write_event(event, tmp_path / "file")
    with pytest.raises(InputError, match="write_event takes an Event"):
        write_event({"hits": event.hits}, tmp_path / "other")


def test_an_event_written_again_over_itself_is_kept_whole_when_the_writing_fails(tmp_path, monkeypatch):
    import errno

    import trackserve.events.trackml as trackml
    from trackserve.errors import OutputError

    event = synthetic_event(12, 50, seed=3)
    write_event(event, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_write_bytes = Path.write_bytes
    calls = []

    def disk_full_at_the_third_file(self, data):
        calls.append(self.name)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_bytes(self, data)

    monkeypatch.setattr(trackml.Path, "write_bytes", disk_full_at_the_third_file)
    with pytest.raises(OutputError, match="No space left on device"):
        write_event(synthetic_event(12, 60, seed=4), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_an_event_written_over_a_copy_with_more_tables_reads_back_as_written(tmp_path):
    from trackserve.events.event import Event

    event = synthetic_event(12, 50, seed=3)
    write_event(event, tmp_path)
    moved = dict(event.hits)
    moved["x"] = moved["x"] + 1.0
    write_event(Event(event.event_id, moved), tmp_path)  # hits only: the old truth is not this event's
    back = read_event(tmp_path)
    assert back.truth is None and back.particles is None and back.cells is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["event000000012-hits.csv"]


def test_a_dangling_link_or_a_directory_in_an_event_file_s_place_is_named(tmp_path):
    import shutil

    for part in ("hits", "truth", "particles", "cells"):
        shutil.copy(SAMPLE / f"event000000001-{part}.csv.gz", tmp_path)
    (tmp_path / "event000000002-hits.csv").symlink_to(tmp_path / "gone.csv")
    # the dangling hits link is an event of the directory, named when it is read (not skipped in silence)
    assert [prefix.name for prefix in find_event_prefixes(tmp_path)] == ["event000000001", "event000000002"]
    with pytest.raises(EventFormatError, match=r"event000000002-hits\.csv: is a symbolic link to .*gone\.csv, which "
                                               "does not exist"):
        read_event(tmp_path / "event000000002")
    # a dangling truth link is not an event without truth
    (tmp_path / "event000000001-truth.csv").symlink_to(tmp_path / "gone-truth.csv")
    with pytest.raises(EventFormatError, match=r"event000000001-truth\.csv: is a symbolic link"):
        read_event(tmp_path / "event000000001")
    (tmp_path / "event000000001-truth.csv").unlink()
    (tmp_path / "event000000001-particles.csv").mkdir()
    with pytest.raises(EventFormatError, match=r"event000000001-particles\.csv: is a directory or a special file"):
        read_event(tmp_path / "event000000001")
    (tmp_path / "event000000001-particles.csv").rmdir()
    assert read_event(tmp_path / "event000000001").truth is not None


def test_an_event_file_named_without_its_gz_says_which_file_exists(tmp_path):
    import shutil

    shutil.copy(SAMPLE / "event000000001-hits.csv.gz", tmp_path)
    with pytest.raises(EventFormatError, match=r"event000000001-hits\.csv: does not exist: no such file; "
                                               r"event000000001-hits\.csv\.gz does: give that, or the event prefix"):
        find_event_prefixes(tmp_path / "event000000001-hits.csv")
    with pytest.raises(EventFormatError, match=r"event000000001-truth\.csv\.gz: does not exist: no such file$"):
        find_event_prefixes(tmp_path / "event000000001-truth.csv.gz")


@pytest.mark.parametrize("text, message", [
    ("0.1,0.2,0.3,\n0.1,0.2,0.3,\n", "column '4', row 1: line 1 ends with a comma: an empty value where a number belongs"),
    ("0.1,0.2,0.3\n0.1,,0.3\n", "column '2', row 2: line 2 has two commas in a row: an empty value"),
])
def test_an_empty_value_in_a_feature_file_is_named_as_such(tmp_path, text, message):
    (tmp_path / "evt_1.csv").write_text(text)
    with pytest.raises(EventFormatError, match=re.escape(message)):
        read_feature_csv(tmp_path / "evt_1.csv")
