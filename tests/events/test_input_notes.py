"""What `run` says about TrackML events that run but whose tracks are doubtful: hits not
numbered as TrackML numbers them, positions far beyond the detector, and a hit whose
features overflow (named by its file and hit_id)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from trackserve.cli import main
from trackserve.errors import HitOrderWarning
from trackserve.events.event import Event, hit_numbering_problem
from trackserve.events.trackml import read_event, write_event

SAMPLE = Path(__file__).resolve().parents[2] / "data"


@pytest.fixture(scope="module")
def sample():
    return read_event(SAMPLE / "event000000001")


def _written(event: Event, directory: Path, **hits) -> Path:
    write_event(Event(event.event_id, {**event.hits, **hits}, event.truth, event.particles, event.cells), directory)
    return directory / f"event{event.event_id:09d}"


def _renumbered(event: Event, seed: int = 3) -> Event:
    """The event with its hit ids permuted at random, consistently in hits, truth and cells."""
    ids = np.asarray(event.hits["hit_id"])
    new = np.random.default_rng(seed).permutation(len(ids)) + 1
    renumber = dict(zip(ids.tolist(), new.tolist()))

    def renumbered(table):
        return {**table, "hit_id": np.array([renumber[int(i)] for i in table["hit_id"]], dtype=np.int64)}

    return Event(event.event_id, renumbered(event.hits), renumbered(event.truth), event.particles,
                 renumbered(event.cells))


def test_hit_ids_out_of_the_detector_s_order_are_noted_by_run_and_warned_by_the_pipeline(sample, tmp_path, capsys):
    from trackserve.runtime.pipeline import Pipeline

    assert hit_numbering_problem(sample.hits) is None
    renumbered = _renumbered(sample)
    problem = hit_numbering_problem(renumbered.hits)
    assert problem is not None and "steps along the hit ids go back" in problem
    write_event(renumbered, tmp_path / "renumbered")
    write_event(sample, tmp_path / "sample")
    assert main(["run", str(tmp_path / "renumbered"), "--no-labels"]) == 0
    assert "its hit ids do not follow the detector's order (volume, layer, module)" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "sample"), "--no-labels"]) == 0
    assert "note" not in capsys.readouterr().err
    pipeline = Pipeline(SAMPLE.parent / "models" / "default")
    reread = read_event(tmp_path / "renumbered" / "event000000001")
    for call in (pipeline.event_features, pipeline.run_event):
        with pytest.warns(HitOrderWarning, match="do not follow the detector's order"):
            call(reread)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipeline.run_event(sample)


def test_a_table_without_the_detector_columns_cannot_be_told_and_is_not_blamed(sample):
    hits = {name: sample.hits[name] for name in ("hit_id", "x", "y", "z")}
    assert hit_numbering_problem(hits) is None
    one = {name: np.asarray(column)[:1] for name, column in _renumbered(sample).hits.items()}
    assert hit_numbering_problem(one) is None


def test_trackml_positions_far_beyond_the_detector_are_noted(sample, tmp_path, capsys):
    prefix = _written(sample, tmp_path / "micrometres", x=np.asarray(sample.hits["x"]) * 1000.0,
                      y=np.asarray(sample.hits["y"]) * 1000.0, z=np.asarray(sample.hits["z"]) * 1000.0)
    assert main(["run", str(prefix), "--no-labels"]) == 0
    err = capsys.readouterr().err
    assert f"note: {prefix}: hits outside the TrackML detector: |r| up to" in err and "are x, y and z in mm?" in err


def test_a_hit_whose_features_overflow_is_named_by_its_file_and_hit_id(sample, tmp_path, capsys):
    x = np.asarray(sample.hits["x"], dtype=np.float64).copy()
    x[9] = 1e300
    prefix = _written(sample, tmp_path / "huge", x=x)
    assert main(["run", str(prefix), "--no-labels"]) == 2
    err = capsys.readouterr().err
    hit_id = int(np.asarray(sample.hits["hit_id"])[9])
    assert f"file {prefix}-hits.csv: the hit with hit_id {hit_id}: feature r is inf (from x=1e+300" in err
    assert "column 'r'" not in err


@pytest.mark.parametrize("case", ["particles without nhits", "particles cut to high pT", "truth without momenta"])
def test_an_unreadable_truth_or_particles_table_leaves_the_event_labelled(sample, tmp_path, capsys, case):
    import json

    from trackserve.events.trackml import write_table

    directory = tmp_path / "event"
    truth, particles = sample.truth, sample.particles
    if case == "particles cut to high pT":
        keep = np.hypot(particles["px"], particles["py"]) >= 1.0
        particles = {name: np.asarray(column)[keep] for name, column in particles.items()}
    write_event(Event(sample.event_id, sample.hits, truth, particles, sample.cells), directory)
    if case == "particles without nhits":
        slim = {name: column for name, column in particles.items() if name != "nhits"}
        write_table(directory / "event000000001-particles.csv", slim, list(slim))
    if case == "truth without momenta":
        slim = {name: truth[name] for name in ("hit_id", "particle_id", "weight")}
        write_table(directory / "event000000001-truth.csv", slim, list(slim))
    capsys.readouterr()
    assert main(["run", str(directory), "--output", str(tmp_path / "labels"), "--json"]) == 0
    captured = capsys.readouterr()
    (record,) = json.loads(captured.out)["events"]
    assert (tmp_path / "labels" / "event000000001-labels.csv").is_file()
    if case == "truth without momenta":
        assert "labelled with no metrics (its truth left out): file" in captured.err and "missing columns tx" in captured.err
        assert record["metrics"] is None
    else:
        assert "labelled with its particles table left out: file" in captured.err
        assert record["metrics"]["efficiency"] == pytest.approx(50 / 53)  # the truth alone gives the same figures


def test_inputs_whose_names_give_one_event_id_are_noted_when_labels_are_written(tmp_path, capsys):
    import shutil

    for name in ("event1", "event000000001", "event000000002"):
        shutil.copy(SAMPLE / "event000000001-hits.csv.gz", tmp_path / f"{name}-hits.csv.gz")
    assert main(["run", str(tmp_path), "--output", str(tmp_path / "labels")]) == 0
    err = capsys.readouterr().err
    assert "note: event000000001, event1 have event id 1, from their names: their labels files carry the same" in err
    assert "event id 2" not in err
    assert main(["run", str(tmp_path), "--no-labels"]) == 0
    assert "have event id" not in capsys.readouterr().err


def test_an_input_without_hits_runs_as_an_empty_event_with_a_note(sample, tmp_path, capsys):
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "evt_1.csv").write_text("")
    empty = Event(sample.event_id, {name: np.asarray(column)[:0] for name, column in sample.hits.items()})
    header_only = _written(empty, tmp_path / "trackml")  # a hits file with its header alone
    for path in (tmp_path / "features" / "evt_1.csv", header_only):
        assert main(["run", str(path), "--output", str(tmp_path / "labels")]) == 0
        assert f"note: {path}: holds no hits (an event of zero hits" in capsys.readouterr().err
    assert (tmp_path / "labels" / "evt_1-labels.csv").read_text() == "event_id,hit_id,track_id\n"


def test_a_directory_without_events_says_where_they_may_be(tmp_path, capsys):
    import shutil

    (tmp_path / "nested" / "run2").mkdir(parents=True)
    shutil.copy(SAMPLE / "event000000001-hits.csv.gz", tmp_path / "nested" / "run2")
    (tmp_path / "upper").mkdir()
    (tmp_path / "upper" / "EVT_1.CSV").write_text("0.1,0.2,0.3\n")
    assert main(["run", str(tmp_path / "nested"), "--no-labels"]) == 2
    assert "holds no TrackML event and no feature CSV file (subdirectories run2/, which are not searched: give them)" \
        in capsys.readouterr().err
    assert main(["run", str(tmp_path / "upper"), "--no-labels"]) == 2
    assert "(EVT_1.CSV: only names ending in .csv or .csv.gz are read; rename them)" in capsys.readouterr().err


def test_the_geometry_file_given_as_an_event_is_recognised(capsys):
    detectors = SAMPLE / "detectors.csv"
    assert main(["run", str(detectors), "--no-labels"]) == 2
    assert f"file {detectors}: is the TrackML detector geometry (detectors.csv), not an event" in capsys.readouterr().err


def test_a_dangling_link_in_place_of_the_particles_leaves_the_event_labelled(sample, tmp_path, capsys):
    directory = tmp_path / "event"
    write_event(Event(sample.event_id, sample.hits, sample.truth, None, sample.cells), directory)
    (directory / "event000000001-particles.csv").symlink_to(tmp_path / "gone.csv")
    assert main(["run", str(directory), "--output", str(tmp_path / "labels")]) == 0
    err = capsys.readouterr().err
    assert "labelled with its particles table left out: file" in err and "is a symbolic link to" in err
    assert (tmp_path / "labels" / "event000000001-labels.csv").is_file()


def test_the_empty_input_note_needs_no_feature_spec(tmp_path, capsys):
    from trackserve.events.sources import read_feature_input
    from trackserve.labels_output import note_input_problems

    (tmp_path / "evt_1.csv").write_text("")
    note_input_problems("client", "features", tmp_path / "evt_1.csv", read_feature_input(tmp_path / "evt_1.csv", 3), None)
    # (a server that does not describe its features: client's case)
    assert f"trackserve client: note: {tmp_path / 'evt_1.csv'}: holds no hits" in capsys.readouterr().err
