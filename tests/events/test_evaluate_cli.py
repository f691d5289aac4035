"""Tests of ``trackserve evaluate`` on the sample event: table, JSON, selections, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from trackserve.cli import main
from trackserve.events.event import HITS_COLUMNS, PARTICLES_COLUMNS, TRUTH_COLUMNS
from trackserve.events.metrics import evaluate_event
from trackserve.events.submission import write_submission
from trackserve.events.trackml import read_event

DATA = Path(__file__).resolve().parents[2] / "data"
PREFIX = DATA / "event000000001"

pytestmark = pytest.mark.skipif(
    not PREFIX.with_name(PREFIX.name + "-truth.csv.gz").exists(), reason=f"the sample event {PREFIX} is absent"
)


@pytest.fixture(scope="module")
def event():
    return read_event(PREFIX)


def _perfect_labels(particle_ids):
    """Particle ids renumbered, each noise hit its own singleton track."""
    _, labels = np.unique(particle_ids, return_inverse=True)
    labels = labels.astype(np.int64) + 1
    noise = particle_ids == 0
    labels[noise] = -np.arange(1, noise.sum() + 1)
    return labels


@pytest.fixture()
def perfect(tmp_path, event):
    return write_submission(tmp_path / "labels.csv", 1, event.hits["hit_id"], _perfect_labels(event.truth["particle_id"]))


def _run(capsys, *argv):
    status = main(["evaluate", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_table_of_perfect_labels(capsys, perfect):
    status, out, err = _run(capsys, PREFIX, perfect)
    assert status == 0 and err == ""
    rows = dict((line[:26].strip(), line[26:].strip()) for line in out.splitlines())
    assert rows["hits"] == "5527 (829 noise)"
    assert rows["track efficiency"] == "1.0000"
    assert rows["fake rate"] == "0.0000" and rows["duplicate rate"] == "0.0000"
    assert rows["TrackML score"] == "1.0000"
    assert rows["particles"] == "468"
    assert rows["selection"].startswith("pT >= 1 GeV, >= 5 hits per particle, >= 5 hits per track")
    # Every value starts in the same column.
    starts = {len(line) - len(line[26:].lstrip()) for line in out.splitlines()}
    assert len(starts) == 1


def test_json_matches_library_and_options(capsys, tmp_path, event):
    rng = np.random.default_rng(5)
    labels = _perfect_labels(event.truth["particle_id"])
    scramble = rng.random(labels.size) < 0.3
    labels[scramble] = rng.integers(0, 50, int(scramble.sum()))
    order = rng.permutation(labels.size)
    path = write_submission(tmp_path / "labels.csv.gz", 1, event.hits["hit_id"][order], labels[order])
    status, out, _ = _run(capsys, PREFIX, path, "--json", "--min-pt", "0.8", "--min-hits", "4",
                          "--min-track-hits", "3", "--include-noise")
    assert status == 0
    result = json.loads(out)
    expected = evaluate_event(event, event.hits["hit_id"], labels, min_pt=0.8, min_hits=4, min_track_hits=3,
                              exclude_noise=False)
    assert result.pop("event") == str(PREFIX) and result.pop("labels") == str(path)
    assert result == pytest.approx(expected)
    assert 0 < result["efficiency"] < 1 and 0 < result["fake_rate"] < 1 and result["exclude_noise"] is False


def test_default_selection_is_one_gev_and_zero_counts_every_particle(capsys, tmp_path, event):
    # The sample event's 468 particles: 53 above 1 GeV with 5 hits or more, many more at any pT.
    labels = _perfect_labels(event.truth["particle_id"])
    labels[: labels.size // 2] = np.arange(labels.size // 2) + labels.max() + 1  # half the hits alone
    path = write_submission(tmp_path / "labels.csv", 1, event.hits["hit_id"], labels)
    status, out, _ = _run(capsys, PREFIX, path, "--json")
    default = json.loads(out)
    assert status == 0 and default["min_pt"] == 1.0
    assert default == pytest.approx({**default, **evaluate_event(event, event.hits["hit_id"], labels, min_pt=1.0)})
    status, out, _ = _run(capsys, PREFIX, path, "--json", "--min-pt", "0")
    every = json.loads(out)
    assert status == 0 and every["min_pt"] == 0.0
    assert every["num_reconstructable"] > default["num_reconstructable"] == 53


@pytest.mark.parametrize("option", [("--min-pt", "-1"), ("--min-pt", "nan"), ("--min-hits", "-2"),
                                    ("--min-track-hits", "-1")])
def test_an_impossible_selection_is_an_error_naming_the_option(capsys, perfect, option):
    status, out, err = _run(capsys, PREFIX, perfect, *option)
    assert status == 2 and out == "" and f"error: {option[0]} must be" in err


def test_json_undefined_ratio_is_null(capsys, tmp_path, event):
    # Singleton tracks with --min-hits 100: no particle is reconstructable, no track is a candidate.
    path = write_submission(tmp_path / "l.csv", 1, event.hits["hit_id"], np.arange(event.num_hits))
    status, out, _ = _run(capsys, PREFIX, path, "--json", "--min-hits", "100")
    result = json.loads(out)
    assert status == 0 and result["efficiency"] is None and result["fake_rate"] is None
    status, out, _ = _run(capsys, PREFIX, path, "--min-hits", "100")
    assert "track efficiency           n/a" in out


def test_labels_missing_hits_and_unknown_ids(capsys, tmp_path, event):
    hit_ids = event.hits["hit_id"].copy()
    labels = np.arange(hit_ids.size)
    path = write_submission(tmp_path / "short.csv", 1, hit_ids[2:], labels[2:])
    status, _, err = _run(capsys, PREFIX, path)
    assert status == 2
    assert f"2 hit(s) of the event not labelled: {hit_ids[0]}, {hit_ids[1]}" in err and "short.csv" in err
    hit_ids[3] = 10**9
    path = write_submission(tmp_path / "unknown.csv", 1, hit_ids, labels)
    status, _, err = _run(capsys, PREFIX, path)
    assert status == 2 and "1 hit id(s) not in the event: 1000000000" in err


def test_labels_of_another_event(capsys, tmp_path, event):
    path = write_submission(tmp_path / "other.csv", 2, event.hits["hit_id"], np.zeros(event.num_hits, np.int64))
    status, _, err = _run(capsys, PREFIX, path)
    assert status == 2 and "no labels for event 1 (the file holds event(s) 2)" in err


def test_event_without_hits_and_labels_without_rows(capsys, tmp_path):
    # What `trackserve run` writes for a zero-hit event: header-only event files and labels.
    for kind, columns in (("hits", HITS_COLUMNS), ("truth", TRUTH_COLUMNS), ("particles", PARTICLES_COLUMNS)):
        (tmp_path / f"event000000000-{kind}.csv").write_text(",".join(columns) + "\n")
    labels = write_submission(tmp_path / "labels.csv", 0, [], [])
    status, out, err = _run(capsys, tmp_path / "event000000000", labels, "--json")
    result = json.loads(out)
    assert status == 0 and err == ""
    assert result["num_hits"] == result["num_particles"] == result["num_reconstructable"] == result["num_tracks"] == 0
    assert result["efficiency"] is None and result["fake_rate"] is None and result["trackml_score"] is None
    # An event that has hits still needs its labels.
    status, _, err = _run(capsys, PREFIX, labels)
    assert status == 2 and "no labels for event 1 (the file holds no rows)" in err


def test_event_without_truth(capsys, tmp_path, perfect):
    shutil.copy(DATA / "event000000001-hits.csv.gz", tmp_path / "event000000001-hits.csv.gz")
    status, _, err = _run(capsys, tmp_path / "event000000001", perfect)
    assert status == 2 and "evaluation needs the event's truth file (event000000001-truth.csv" in err
    # named by the event's own prefix, not by one rebuilt from its id
    shutil.copy(DATA / "event000000001-hits.csv.gz", tmp_path / "event1-hits.csv.gz")
    status, _, err = _run(capsys, tmp_path / "event1", perfect)
    assert status == 2 and "evaluation needs the event's truth file (event1-truth.csv or .csv.gz)" in err


@pytest.mark.parametrize("cut", ["high_pt", "no_nhits"])
def test_a_particles_table_run_leaves_out_is_left_out_here_too(capsys, tmp_path, event, perfect, cut):
    """`run` scores an event whose particles table disagrees with its truth (cut to high pT)
    or does not read (no nhits) from the truth alone; `evaluate` refused the same event."""
    for kind in ("hits", "truth"):
        shutil.copy(DATA / f"event000000001-{kind}.csv.gz", tmp_path / f"event000000001-{kind}.csv.gz")
    particles = event.particles
    columns = [name for name in PARTICLES_COLUMNS if cut != "no_nhits" or name != "nhits"]
    keep = slice(0, 100) if cut == "high_pt" else slice(None)
    lines = [",".join(columns)] + [",".join(str(particles[name][row]) for name in columns)
                                   for row in range(len(particles["particle_id"]))[keep]]
    (tmp_path / "event000000001-particles.csv").write_text("\n".join(lines) + "\n")
    status, out, err = _run(capsys, tmp_path / "event000000001", perfect, "--json")
    assert status == 0 and "note: its particles table left out: " in err and "the truth alone" in err
    whole = json.loads(_run(capsys, PREFIX, perfect, "--json")[1])
    result = json.loads(out)
    assert result["efficiency"] == whole["efficiency"] == 1.0
    assert result["num_reconstructable"] == whole["num_reconstructable"]
    # a truth table that does not read is still an error: there is nothing to score against
    (tmp_path / "event000000001-truth.csv.gz").write_bytes(b"hit_id,particle_id\n")
    status, _, err = _run(capsys, tmp_path / "event000000001", perfect)
    assert status == 2 and "event000000001-truth.csv.gz" in err


def test_listed_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "evaluate" in capsys.readouterr().out


def test_a_directory_of_several_events_asks_for_one(capsys, tmp_path, perfect):
    for name in ("event000000001", "event000000002"):
        shutil.copy(DATA / "event000000001-hits.csv.gz", tmp_path / f"{name}-hits.csv.gz")
    status, _, err = _run(capsys, tmp_path, perfect)
    assert status == 2 and "holds 2 events (event000000001, event000000002); give one event's prefix, such as " in err
