"""``trackserve run``: the default job, feature CSVs, event workers, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trackserve.bundle import load_bundle
from trackserve.cli import main
from trackserve.events.submission import read_submission
from trackserve.events.trackml import read_event
from trackserve.paths import DEFAULT_BUNDLE
from trackserve.runtime.memory import MemoryModel
from trackserve.runtime.pipeline import STAGES, Pipeline

from ..conftest import SAMPLE_EVENT


def _json(capsys, *argv) -> dict:
    assert main(["run", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_default_job_on_the_sample_event(capsys, tmp_path):
    report = _json(capsys, "--output", str(tmp_path))
    (event,) = report["events"]
    hits = read_event(SAMPLE_EVENT, parts=()).hits
    assert event["num_hits"] == len(hits["hit_id"])
    assert set(event["timings_ms"]) == {*STAGES, "total"}
    assert 0 <= event["metrics"]["efficiency"] <= 1  # the sample event has truth
    # Particles counted as the targets are quoted: pT >= 1 GeV, >= 5 hits (53 on the sample event).
    assert report["settings"]["min_pt"] == 1.0 and event["metrics"]["num_reconstructable"] == 53
    event_id, hit_ids, labels = read_submission(tmp_path / f"{event['event']}-labels.csv")
    assert sorted(hit_ids.tolist()) == sorted(hits["hit_id"].tolist()) and labels.shape == hit_ids.shape
    summary = report["summary"]
    assert summary["num_events"] == 1 and summary["wall_seconds"] >= summary["seconds"] > 0
    assert report["settings"]["event_workers"] == 1


@pytest.mark.parametrize("option", [("--min-pt", "-1"), ("--min-pt", "inf"), ("--min-hits", "-1")])
def test_an_impossible_metrics_selection_is_refused_before_running(capsys, tmp_path, option):
    assert main(["run", "--output", str(tmp_path / "labels"), *option]) == 2
    assert f"error: {option[0]} must be" in capsys.readouterr().err
    assert not (tmp_path / "labels").exists()  # refused before any event ran


@pytest.fixture(scope="module")
def feature_csvs(tmp_path_factory):
    """Feature CSVs of the default bundle cut from the sample event: sizes 0.. a whole event."""
    pipeline = Pipeline(DEFAULT_BUNDLE)
    features = pipeline.event_features(read_event(SAMPLE_EVENT, parts=()))
    directory = tmp_path_factory.mktemp("features")
    for number, size in enumerate([len(features), 1, 700, 2, len(features) // 2]):
        np.savetxt(directory / f"evt_{number}.csv", features[:size], delimiter=",", fmt="%.9g")
    return directory


def test_event_workers_write_the_same_labels_as_one_event_at_a_time(capsys, tmp_path, feature_csvs, monkeypatch):
    monkeypatch.setattr("trackserve.runtime.config.available_cores", lambda: 2)
    one = _json(capsys, str(feature_csvs), "--output", str(tmp_path / "one"), "--event-workers", "1")
    two = _json(capsys, str(feature_csvs), "--output", str(tmp_path / "two"), "--event-workers", "2", "--threads", "1")
    auto = _json(capsys, str(feature_csvs), "--output", str(tmp_path / "auto"))
    procs = _json(capsys, str(feature_csvs), "--output", str(tmp_path / "procs"), "--event-executor", "processes")
    assert (auto["settings"]["event_executor"], procs["settings"]["event_executor"]) == ("threads", "processes")
    assert one["settings"]["event_executor"] is None  # one event at a time: no executor
    assert (one["settings"]["event_workers"], one["settings"]["intra_op_threads"]) == (1, 2)
    assert two["settings"]["event_workers"] == 2 and two["settings"]["intra_op_threads"] == 1
    # several events and neither option: one event in flight per core, each on one core
    assert (auto["settings"]["event_workers"], auto["settings"]["intra_op_threads"]) == (2, 1)
    assert auto["settings"]["event_workers_chosen"] == "automatically"
    assert two["settings"]["event_workers_chosen"] == "by --event-workers"
    names = [f"evt_{i}" for i in range(5)]
    assert [e["event"] for e in two["events"]] == [e["event"] for e in auto["events"]] == [e["event"] for e in one["events"]] == names
    for event in one["events"]:
        _, ids_one, labels_one = read_submission(tmp_path / "one" / f"{event['event']}-labels.csv")
        for other in ("two", "auto", "procs"):
            _, ids_other, labels_other = read_submission(tmp_path / other / f"{event['event']}-labels.csv")
            assert np.array_equal(ids_one, ids_other) and np.array_equal(labels_one, labels_other)
        assert len(ids_one) == event["num_hits"]


@pytest.mark.parametrize("cores, options, expected", [
    (2, [], (2, 1)),                      # several events: in flight, one core each
    (1, [], (1, 1)),                      # one core: one event at a time
    (8, [], (2, 4)),                      # at most 2 in flight; the cores shared between them
    (2, ["--threads", "1"], (1, 1)),      # threads given: one event at a time with them
    (2, ["--threads", "2"], (1, 2)),
])
def test_events_in_flight_are_chosen_from_the_cores_unless_set(capsys, feature_csvs, monkeypatch, cores, options, expected):
    monkeypatch.setattr("trackserve.runtime.config.available_cores", lambda: cores)
    report = _json(capsys, str(feature_csvs / "evt_1.csv"), str(feature_csvs / "evt_3.csv"), "--no-labels", *options)
    assert (report["settings"]["event_workers"], report["settings"]["intra_op_threads"]) == expected
    chosen = "automatically" if not options else "one, as --threads was given"
    assert report["settings"]["event_workers_chosen"] == chosen


def test_a_single_event_keeps_every_core(capsys, feature_csvs, monkeypatch):
    monkeypatch.setattr("trackserve.runtime.config.available_cores", lambda: 2)
    report = _json(capsys, str(feature_csvs / "evt_1.csv"), "--no-labels")
    assert (report["settings"]["event_workers"], report["settings"]["intra_op_threads"]) == (1, 2)


def test_oversubscribed_workers_are_refused(capsys, feature_csvs, monkeypatch):
    monkeypatch.setattr("trackserve.runtime.config.available_cores", lambda: 2)
    assert main(["run", str(feature_csvs), "--no-labels", "--event-workers", "2", "--threads", "2"]) == 2
    assert "would run 4 threads on 2 cores" in capsys.readouterr().err


@pytest.mark.parametrize("workers, executor", [("1", "threads"), ("2", "threads"), ("2", "processes")])
def test_an_event_the_pipeline_refuses_is_named(capsys, tmp_path, workers, executor, monkeypatch):
    monkeypatch.setattr("trackserve.runtime.config.available_cores", lambda: 2)
    rng = np.random.default_rng(0)
    for number in range(3):
        np.savetxt(tmp_path / f"evt_{number}.csv", rng.random((50 if number != 1 else 20_000, 3)), delimiter=",")
    per_hit = MemoryModel.for_bundle(load_bundle(DEFAULT_BUNDLE)).bytes_per_hit
    limit_gb = 3000 * per_hit * int(workers) / 2**30  # each event in flight gets limit / workers: 3000 hits
    status = main(["run", str(tmp_path), "--no-labels", "--event-workers", workers, "--threads", "1",
                   "--memory-limit-gb", str(limit_gb), "--event-executor", executor])
    assert status == 2
    err = capsys.readouterr().err
    assert "event evt_1: an event of 20,000 hits needs about" in err and "MiB" in err and "memory limit" in err


def test_a_feature_csv_with_nan_is_refused_with_its_place(capsys, tmp_path):
    np.savetxt(tmp_path / "evt_0.csv", [[0.1, 0.2, 0.3], [0.1, np.nan, 0.3]], delimiter=",")
    assert main(["run", str(tmp_path / "evt_0.csv"), "--no-labels"]) == 2
    err = capsys.readouterr().err
    assert "evt_0.csv" in err and "not a finite float32" in err


@pytest.mark.parametrize("threshold, executor", [(6, "threads"), (5, "processes")])
def test_events_in_flight_run_in_processes_from_many_events(capsys, feature_csvs, monkeypatch, threshold, executor):
    monkeypatch.setattr("trackserve.runtime.config.available_cores", lambda: 2)
    monkeypatch.setattr("trackserve.commands.run.PROCESSES_MIN_EVENTS", threshold)
    report = _json(capsys, str(feature_csvs), "--no-labels")  # 5 events
    assert (report["settings"]["event_workers"], report["settings"]["event_executor"]) == (2, executor)
    forced = _json(capsys, str(feature_csvs), "--no-labels", "--event-executor", "threads")
    assert forced["settings"]["event_executor"] == "threads"
