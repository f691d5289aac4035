"""``trackserve run``: the default job, feature CSVs, event workers, bad input."""

from __future__ import annotations

import gzip
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

from ..conftest import EARLIER_LABELS, SAMPLE_EVENT


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


def test_every_json_event_record_has_the_same_keys_metrics_null_without_truth(capsys, tmp_path, feature_csvs):
    """A script reads one schema: an input without truth (a feature file) has ``metrics``
    null, not missing, beside a TrackML event with truth in the same run."""
    report = _json(capsys, str(SAMPLE_EVENT), str(feature_csvs / "evt_2.csv"), "--no-labels", "--threads", "1")
    with_truth, features_only = report["events"]
    assert set(with_truth) == set(features_only)
    assert features_only["event"] == "evt_2" and features_only["metrics"] is None
    assert with_truth["metrics"]["num_reconstructable"] == 53


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
    status = main(["run", str(tmp_path), "--json", "--output", str(tmp_path / "labels"), "--event-workers", workers,
                   "--threads", "1", "--memory-limit-gb", str(limit_gb), "--event-executor", executor])
    assert status == 2
    out, err = capsys.readouterr()
    assert f"event evt_1 ({tmp_path / 'evt_1.csv'}): an event of 20,000 hits needs about" in err
    assert "MiB" in err and "memory limit" in err
    assert "1 of 3 event(s) failed (evt_1; each error above); the others' labels were written" in err
    # the events before and after it still ran and were written
    report = json.loads(out)
    assert [event["event"] for event in report["events"]] == ["evt_0", "evt_2"]
    assert [entry["event"] for entry in report["failed"]] == ["evt_1"] and report["summary"]["num_failed"] == 1
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["evt_0-labels.csv", "evt_2-labels.csv"]


@pytest.mark.parametrize("workers, executor", [("1", "threads"), ("2", "threads"), ("2", "processes")])
def test_an_unreadable_event_is_named_and_the_others_still_run(capsys, tmp_path, feature_csvs, workers, executor):
    for number in range(5):
        (tmp_path / f"evt_{number}.csv").write_text((feature_csvs / f"evt_{number}.csv").read_text())
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "evt_2-labels.csv").write_text(EARLIER_LABELS)
    with (tmp_path / "evt_2.csv").open("a") as broken:
        broken.write("1.0,abc,2.0\n")
    status = main(["run", str(tmp_path), "--json", "--output", str(labels), "--event-workers", workers,
                   "--event-executor", executor, "--threads", "1"])
    assert status == 2
    out, err = capsys.readouterr()
    assert "event evt_2: file " in err and "cannot read 'abc'" in err
    assert f"removed {labels / 'evt_2-labels.csv'}, an earlier run's labels of the event that failed" in err
    report = json.loads(out)
    assert [event["event"] for event in report["events"]] == ["evt_0", "evt_1", "evt_3", "evt_4"]
    assert report["failed"][0]["event"] == "evt_2" and "cannot read 'abc'" in report["failed"][0]["error"]
    assert sorted(p.name for p in labels.iterdir()) == [f"evt_{n}-labels.csv" for n in (0, 1, 3, 4)]


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


def test_an_output_that_cannot_hold_labels_is_refused_before_running(capsys, tmp_path, feature_csvs, monkeypatch):
    event = str(feature_csvs / "evt_1.csv")
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for output, message in [(afile, f"--output {afile}: exists and is not a directory"),
                            (afile / "sub", f"--output {afile / 'sub'}: cannot create the directory")]:
        assert main(["run", event, "--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert afile.read_text() == "keep me"
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")  # was "cannot create the directory (File exists)"
    assert main(["run", event, "--output", str(tmp_path / "dangling")]) == 2
    assert (f"--output {tmp_path / 'dangling'}: a symbolic link to {tmp_path / 'nowhere'}, which does not exist"
            in capsys.readouterr().err)
    (tmp_path / "out" / "evt_1-labels.csv").mkdir(parents=True)
    assert main(["run", event, "--output", str(tmp_path / "out")]) == 2
    assert f"{tmp_path / 'out' / 'evt_1-labels.csv'} is a directory" in capsys.readouterr().err
    # QA, 2026-12-02: a submission-like name made a directory of that name without a word, and '-'
    # a directory called '-'
    for name in ("labels.csv", "labels.csv.gz", "out.JSON"):
        assert main(["run", event, "--output", str(tmp_path / name)]) == 2
        assert f"{name} reads as a file name; give a directory" in capsys.readouterr().err
        assert not (tmp_path / name).exists()
    (tmp_path / "kept.csv").mkdir()  # one that exists is taken as it is
    assert main(["run", event, "--output", str(tmp_path / "kept.csv")]) == 0
    assert (tmp_path / "kept.csv" / "evt_1-labels.csv").is_file()
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert main(["run", event, "--output", "-"]) == 2
    assert "--output -: names the directory the files are written into, and '-' (standard output) is none" in \
        capsys.readouterr().err
    assert not (tmp_path / "-").exists()


def test_labels_of_an_earlier_run_are_replaced_with_a_note(capsys, tmp_path, feature_csvs):
    event = str(feature_csvs / "evt_1.csv")
    assert main(["run", event, "--output", str(tmp_path)]) == 0
    assert "will be replaced" not in capsys.readouterr().err
    (tmp_path / "evt_1-labels.csv").write_text(EARLIER_LABELS)
    assert main(["run", event, "--output", str(tmp_path)]) == 0
    assert (f"note: 1 labels file of an earlier run in {tmp_path} (such as evt_1-labels.csv) will be replaced"
            in capsys.readouterr().err)
    assert (tmp_path / "evt_1-labels.csv").read_text() != EARLIER_LABELS
    assert read_submission(tmp_path / "evt_1-labels.csv")[0].tolist() == [1]


def test_a_file_in_the_way_that_is_no_labels_file_is_refused(capsys, tmp_path, feature_csvs):
    # It was replaced with the note "1 labels file of an earlier run ... will be replaced".
    features = (feature_csvs / "evt_3.csv").read_text()
    (tmp_path / "evt_1-labels.csv").write_text(features)
    assert main(["run", str(feature_csvs / "evt_1.csv"), "--output", str(tmp_path)]) == 2
    assert (f"{tmp_path / 'evt_1-labels.csv'} exists and is not a labels file (its first line does not name the "
            "columns event_id,hit_id,track_id); move it away, or give another --output") in capsys.readouterr().err
    assert (tmp_path / "evt_1-labels.csv").read_text() == features
    (tmp_path / "evt_1-labels.csv").write_text("")  # an empty file holds nothing to lose
    assert main(["run", str(feature_csvs / "evt_1.csv"), "--output", str(tmp_path)]) == 0
    # a labels file as read_submission reads them: columns in any order, others too, quoted
    (tmp_path / "evt_1-labels.csv").write_text('"track_id",hit_id,event_id,score\n0,1,1,0.5\n')
    assert main(["run", str(feature_csvs / "evt_1.csv"), "--output", str(tmp_path)]) == 0


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_a_run_stopped_before_the_end_leaves_no_earlier_labels_among_its_own(capsys, tmp_path, feature_csvs,
                                                                              monkeypatch, stop):
    # Stopped after two events, the directory held two new labels files and three of the earlier
    # run's, nothing telling them apart.
    for number in range(5):
        (tmp_path / f"evt_{number}-labels.csv").write_text(EARLIER_LABELS)
    from trackserve.events import submission

    written = []

    def write_two(path, *args):
        if len(written) == 2:
            raise stop("stopped")
        written.append(path.name)
        return real_write(path, *args)

    real_write = submission.write_submission
    monkeypatch.setattr(submission, "write_submission", write_two)
    arguments = ["run", str(feature_csvs), "--output", str(tmp_path), "--event-workers", "1"]
    if stop is KeyboardInterrupt:
        assert main(arguments) == 130
    else:
        with pytest.raises(RuntimeError):
            main(arguments)
    err = capsys.readouterr().err
    assert (f"removed 3 labels files of an earlier run in {tmp_path} that this run had not replaced yet, so that "
            "none passes for this run's") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(written) == ["evt_0-labels.csv", "evt_1-labels.csv"]
    assert all(p.read_text() != EARLIER_LABELS for p in tmp_path.iterdir())


def test_a_second_stop_while_stopping_still_removes_the_earlier_labels(capsys, tmp_path, feature_csvs, monkeypatch):
    """QA, 2026-12-02: a second Ctrl-C / SIGTERM while the first was honoured (closing the
    worker processes waits for them) skipped the removal: 93 new labels files among 507 of
    an earlier run."""
    for number in range(5):
        (tmp_path / f"evt_{number}-labels.csv").write_text(EARLIER_LABELS)
    from trackserve.events import submission

    written = []

    def write_two(path, *args):
        if len(written) == 2:
            raise KeyboardInterrupt  # the first stop
        written.append(path.name)
        return real_write(path, *args)

    def interrupted_close(self, wait=True):
        real_close(self, wait=wait)
        if not wait:
            raise KeyboardInterrupt  # the second, while the workers are waited for

    real_write, real_close = submission.write_submission, Pipeline.close
    monkeypatch.setattr(submission, "write_submission", write_two)
    monkeypatch.setattr(Pipeline, "close", interrupted_close)
    assert main(["run", str(feature_csvs), "--output", str(tmp_path), "--event-workers", "1"]) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(written)
    assert "removed 3 labels files of an earlier run" in capsys.readouterr().err


def test_a_stop_held_back_while_labels_are_renamed_counts_the_file_as_this_run_s(capsys, tmp_path, feature_csvs,
                                                                                 monkeypatch):
    """QA, 2026-12-02: a Ctrl-C during the rename was acted on after the file was in place but
    before it was counted as this run's, so nothing was removed: one new file and four old."""
    import os
    import signal

    for number in range(5):
        (tmp_path / f"evt_{number}-labels.csv").write_text(EARLIER_LABELS)
    from trackserve.events import submission

    def write_then_stop(path, *args):
        real_write(path, *args)
        os.kill(os.getpid(), signal.SIGINT)  # arrives as the file is in place

    real_write = submission.write_submission
    monkeypatch.setattr(submission, "write_submission", write_then_stop)
    assert main(["run", str(feature_csvs), "--output", str(tmp_path), "--event-workers", "1"]) == 130
    assert [p.name for p in tmp_path.iterdir()] == ["evt_0-labels.csv"]
    assert (tmp_path / "evt_0-labels.csv").read_text() != EARLIER_LABELS


def test_an_earlier_labels_file_that_cannot_be_removed_fails_its_event_only(capsys, tmp_path, feature_csvs,
                                                                             monkeypatch):
    """QA, 2026-12-02: an immutable earlier labels file of an event that failed stopped the
    whole run with a traceback-like second error and no JSON; the other events never ran."""
    import pathlib

    from trackserve.errors import OutputError
    from trackserve.events import submission

    for number in (1, 3):
        (tmp_path / f"evt_{number}-labels.csv").write_text(EARLIER_LABELS)
    stuck = tmp_path / "evt_1-labels.csv"

    def refuse_one(path, *args):
        if path == stuck:
            raise OutputError(f"cannot write {path}: Operation not permitted")
        return real_write(path, *args)

    def unlink(self, missing_ok=False):
        if self == stuck:
            raise PermissionError(1, "Operation not permitted", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    real_write, real_unlink = submission.write_submission, pathlib.Path.unlink
    monkeypatch.setattr(submission, "write_submission", refuse_one)
    monkeypatch.setattr(pathlib.Path, "unlink", unlink)
    status = main(["run", "--json", str(feature_csvs / "evt_1.csv"), str(feature_csvs / "evt_3.csv"),
                   "--output", str(tmp_path), "--event-workers", "1"])
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert status == 2 and [event["event"] for event in report["events"]] == ["evt_3"]
    assert [failure["event"] for failure in report["failed"]] == ["evt_1"]
    assert f"could not remove {stuck}, an earlier run's labels of the event that failed" in err
    assert (tmp_path / "evt_3-labels.csv").read_text() != EARLIER_LABELS


def test_a_run_refused_while_loading_leaves_no_output_directory_made(capsys, tmp_path, feature_csvs):
    target = tmp_path / "new" / "a" / "b"
    assert main(["run", str(feature_csvs / "evt_1.csv"), "--output", str(target), "--bundle",
                 str(tmp_path / "nonexistent")]) == 2
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()  # a directory that was there stays
    assert main(["run", str(feature_csvs / "evt_1.csv"), "--output", str(tmp_path / "kept"), "--bundle",
                 str(tmp_path / "nonexistent")]) == 2
    assert (tmp_path / "kept").is_dir()


@pytest.mark.parametrize("value", ["1e300", "1e12"])
def test_a_memory_limit_beyond_any_memory_is_refused(capsys, value):
    """1e300 raised OverflowError (exit 1); 1e12 GiB was taken and written above int64."""
    assert main(["run", "--no-labels", "--memory-limit-gb", value]) == 2
    assert f"--memory-limit-gb {float(value):g} is more than 8,589,934,592 GiB (2**63 bytes" in capsys.readouterr().err


def test_a_run_stopped_before_it_changed_anything_keeps_the_earlier_run_whole(capsys, tmp_path, feature_csvs,
                                                                              monkeypatch):
    for number in range(5):
        (tmp_path / f"evt_{number}-labels.csv").write_text(EARLIER_LABELS)
    from trackserve.events import submission

    def stop(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(submission, "write_submission", stop)
    assert main(["run", str(feature_csvs), "--output", str(tmp_path), "--event-workers", "1"]) == 130
    assert "removed" not in capsys.readouterr().err
    assert [p.read_text() for p in sorted(tmp_path.iterdir())] == [EARLIER_LABELS] * 5


def test_a_file_the_system_refuses_is_one_line_naming_it(capsys, tmp_path, feature_csvs, monkeypatch):
    # PermissionError and other OSErrors of a path ended in a traceback with status 1.
    from trackserve.events import sources

    def refuse(paths, skipped):
        raise PermissionError(13, "Permission denied", str(paths[0]))

    monkeypatch.setattr(sources, "list_inputs", refuse)
    assert main(["run", str(tmp_path / "up")]) == 2
    assert capsys.readouterr().err == f"trackserve run: error: {tmp_path / 'up'}: Permission denied\n"
    monkeypatch.setattr(sources, "list_inputs", lambda paths, skipped: (_ for _ in ()).throw(OSError("no file")))
    with pytest.raises(OSError, match="no file"):  # not a file's problem: a bug, shown whole
        main(["run", str(tmp_path / "up")])


def test_an_event_the_system_refuses_to_read_is_named_by_its_file(capsys, tmp_path, feature_csvs, monkeypatch):
    from trackserve.events import sources

    real_read = sources.read_input

    def refuse_evt_2(kind, path, spec):
        if path.name == "evt_2.csv":
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(kind, path, spec)

    monkeypatch.setattr(sources, "read_input", refuse_evt_2)
    assert main(["run", str(feature_csvs), "--no-labels", "--event-workers", "1"]) == 2
    assert f"event evt_2: {feature_csvs / 'evt_2.csv'}: Permission denied" in capsys.readouterr().err


def test_an_output_with_no_labels_is_refused(capsys, tmp_path, feature_csvs):
    # --output was ignored without a word: nothing was written there.
    assert main(["run", str(feature_csvs / "evt_1.csv"), "--no-labels", "--output", str(tmp_path / "out")]) == 2
    assert "--no-labels writes no labels files, so --output would receive nothing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_events_that_would_write_one_labels_file_are_refused(capsys, tmp_path, feature_csvs):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "evt_7.csv").write_text((feature_csvs / "evt_1.csv").read_text())
    first, second = str(tmp_path / "a" / "evt_7.csv"), str(tmp_path / "b" / "evt_7.csv")
    output = tmp_path / "labels"
    assert main(["run", first, second, "--output", str(output)]) == 2
    assert f"{first} and {second} have the same name: both would write" in capsys.readouterr().err
    assert main(["run", first, first, "--output", str(output)]) == 2
    assert f"{first} is given twice" in capsys.readouterr().err
    assert not output.exists()  # refused before anything ran or was created
    assert main(["run", first, second, "--no-labels"]) == 0  # nothing written, nothing lost


@pytest.mark.parametrize("option", ["--threads", "--event-workers"])
def test_more_threads_or_events_than_cores_are_refused(capsys, feature_csvs, monkeypatch, option):
    monkeypatch.setattr("trackserve.runtime.config.available_cores", lambda: 2)
    assert main(["run", str(feature_csvs), "--no-labels", option, "3"]) == 2
    assert f"{option} 3 is more than the 2 cores this process may use" in capsys.readouterr().err


def test_labels_files_and_csvs_beside_events_are_not_read_as_events(capsys, tmp_path, feature_csvs):
    directory = tmp_path / "events"
    directory.mkdir()
    for name in ("evt_1.csv", "evt_3.csv"):
        (directory / name).write_text((feature_csvs / name).read_text())
    first = _json(capsys, str(directory), "--output", str(directory))
    assert [event["event"] for event in first["events"]] == ["evt_1", "evt_3"]
    # run again into the same directory: its labels files are not events
    again = _json(capsys, str(directory), "--output", str(directory))
    assert [event["event"] for event in again["events"]] == ["evt_1", "evt_3"]
    assert main(["run", str(directory), "--no-labels"]) == 0
    # the labels of the directory's own events are expected there, not worth a note (one was
    # printed on every run into the input directory); an orphan labels file is named
    assert "not read as events" not in capsys.readouterr().err
    (directory / "evt_1-labels.csv").rename(directory / "evt_9-labels.csv")
    assert main(["run", str(directory), "--no-labels"]) == 0
    err = capsys.readouterr().err
    assert f"note: not read as events: {directory / 'evt_9-labels.csv'} (" in err
    assert "evt_3-labels.csv" not in err
    # a feature CSV beside a TrackML event is named too, and the event runs alone
    for path in SAMPLE_EVENT.parent.glob(SAMPLE_EVENT.name + "-*"):
        (directory / path.name).write_bytes(path.read_bytes())
    assert main(["run", "--json", str(directory), "--no-labels"]) == 0
    out, err = capsys.readouterr()
    assert [event["event"] for event in json.loads(out)["events"]] == [SAMPLE_EVENT.name]
    assert "note: not read as events: " in err and str(directory / "evt_1.csv") in err


def test_a_labels_file_that_is_an_input_is_refused_before_anything_runs(capsys, tmp_path, feature_csvs):
    # `run a.csv a-labels.csv -o DIR`: a's labels would be written over (or removed as stale) the second input
    for name in ("a.csv", "a-labels.csv"):
        (tmp_path / name).write_text((feature_csvs / "evt_4.csv").read_text())
    before = (tmp_path / "a-labels.csv").read_text()
    assert main(["run", str(tmp_path / "a.csv"), str(tmp_path / "a-labels.csv"), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"the labels of {tmp_path / 'a.csv'} would be written over" in err and "which is one of the inputs" in err
    assert (tmp_path / "a-labels.csv").read_text() == before
    # running TrackML events into their own directory again is fine (their labels are no input)
    for path in SAMPLE_EVENT.parent.glob(SAMPLE_EVENT.name + "-*"):
        (tmp_path / "ev").mkdir(exist_ok=True)
        (tmp_path / "ev" / path.name).write_bytes(path.read_bytes())
    assert main(["run", str(tmp_path / "ev"), "-o", str(tmp_path / "ev"), "--event-workers", "1"]) == 0
    assert main(["run", str(tmp_path / "ev"), "-o", str(tmp_path / "ev"), "--event-workers", "1"]) == 0


def test_event_files_that_are_not_read_are_named(capsys, tmp_path):
    # beside the sample event: an event with no hits file, and CSV files compressed otherwise than with gzip
    directory = tmp_path / "events"
    directory.mkdir()
    for path in SAMPLE_EVENT.parent.glob(SAMPLE_EVENT.name + "-*"):
        (directory / path.name).write_bytes(path.read_bytes())
    orphans = ["event000000002-truth.csv.gz", "event000000002-particles.csv.gz", "event000000003-hits.csv.zip",
               "event000000004-hits.csv.bz2"]
    for name in orphans:
        (directory / name).write_bytes(b"")
    assert main(["run", "--json", str(directory), "--no-labels"]) == 0
    out, err = capsys.readouterr()
    assert [event["event"] for event in json.loads(out)["events"]] == [SAMPLE_EVENT.name]
    assert "note: not read as events: " in err and "without a hits file" in err
    # the note names three and counts the rest
    assert sum(str(directory / name) in err for name in orphans) == 3 and "and 1 more" in err, err


def test_a_lone_event_table_beside_feature_csvs_leaves_them_to_run(capsys, tmp_path, feature_csvs):
    """A directory is read as TrackML events when it holds a hits file: a lone particles or
    truth table beside feature CSVs is named in the note and the CSVs run (the directory was
    refused as holding no TrackML event)."""
    for name in ("evt_1.csv", "evt_3.csv"):
        (tmp_path / name).write_text((feature_csvs / name).read_text())
    for name in ("event000001000-particles.csv", "foo-truth.csv"):
        (tmp_path / name).write_text("particle_id\n")
    assert main(["run", "--json", str(tmp_path), "--no-labels"]) == 0
    out, err = capsys.readouterr()
    assert [event["event"] for event in json.loads(out)["events"]] == ["evt_1", "evt_3"]
    assert "note: not read as events: " in err and str(tmp_path / "event000001000-particles.csv") in err
    assert str(tmp_path / "foo-truth.csv") in err
    # with nothing else there, the directory still holds no event, and says why
    for name in ("evt_1.csv", "evt_3.csv"):
        (tmp_path / name).unlink()
    assert main(["run", str(tmp_path), "--no-labels"]) == 2
    assert "no TrackML event in this directory: no file named <prefix>-hits.csv" in capsys.readouterr().err


def test_csv_names_in_another_case_and_links_to_nothing_are_named(capsys, tmp_path, feature_csvs):
    """They were left out without a word (a hint came only when no feature file was found)."""
    for name in ("evt_1.csv", "evt_3.csv"):
        (tmp_path / name).write_text((feature_csvs / name).read_text())
    import os

    (tmp_path / "evt_1.csv").rename(tmp_path / "evt_1.CSV")
    (tmp_path / "evt_9.csv").symlink_to(tmp_path / "nowhere.csv")
    (tmp_path / "evt_10.csv").mkdir()
    os.mkfifo(tmp_path / "evt_11.csv")
    assert main(["run", "--json", str(tmp_path), "--no-labels"]) == 0
    out, err = capsys.readouterr()
    assert [event["event"] for event in json.loads(out)["events"]] == ["evt_3"]
    assert (f"not read as events: {tmp_path / 'evt_1.CSV'}, {tmp_path / 'evt_9.csv'}, {tmp_path / 'evt_10.csv'} "
            "and 1 more (") in err
    assert "names ending in .CSV or another case" in err and "links to nothing and other entries that are no " \
        "regular file" in err
    # given by name, a FIFO is named as such (it was looked for as an event prefix)
    assert main(["run", str(tmp_path / "evt_11.csv"), "--no-labels"]) == 2
    assert "evt_11.csv: is not a regular file (a FIFO, device or socket)" in capsys.readouterr().err


@pytest.mark.parametrize("name,event,event_id", [(".hidden_5.csv", ".hidden_5", 5), ("evt_1.v2.csv", "evt_1.v2", 2),
                                                 ("evt_4.csv.gz", "evt_4", 4), ("run7.txt", "run7", 7)])
def test_a_feature_file_is_named_without_its_csv_ending(capsys, tmp_path, feature_csvs, name, event, event_id):
    """Named up to its first dot, a hidden file's name was empty (labels file ``-labels.csv``,
    event id 0) and ``evt_1.v2.csv`` took id 1, not the name's last number."""
    data = (feature_csvs / "evt_3.csv").read_bytes()
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    report = _json(capsys, str(tmp_path / name), "--output", str(tmp_path / "labels"))
    (record,) = report["events"]
    assert (record["event"], record["event_id"]) == (event, event_id)
    assert set(read_submission(tmp_path / "labels" / f"{event}-labels.csv")[0].tolist()) == {event_id}


def test_a_feature_file_that_does_not_exist_is_named_missing(capsys, tmp_path):
    assert main(["run", str(tmp_path / "nope" / "evt_1.csv"), "--no-labels"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nope' / 'evt_1.csv'}: does not exist: no such file" in err and "-hits.csv" not in err


def test_a_truth_table_in_both_compressions_leaves_the_event_to_run(capsys, tmp_path):
    """As any truth table that does not read: the event is labelled, with a note (the whole
    event failed, the error being named by the directory)."""
    for path in SAMPLE_EVENT.parent.glob(SAMPLE_EVENT.name + "-*"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    truth = tmp_path / f"{SAMPLE_EVENT.name}-truth.csv"
    truth.write_bytes(gzip.decompress((tmp_path / f"{SAMPLE_EVENT.name}-truth.csv.gz").read_bytes()))
    assert main(["run", "--json", str(tmp_path / SAMPLE_EVENT.name), "--no-labels"]) == 0
    out, err = capsys.readouterr()
    (record,) = json.loads(out)["events"]
    assert record["metrics"] is None and record["num_hits"] == 5527
    assert "labelled with no metrics (its truth left out)" in err and "exist; remove one of them" in err


def test_trackml_files_without_a_prefix_are_named_as_such(capsys, tmp_path):
    (tmp_path / "hits.csv.gz").write_bytes((SAMPLE_EVENT.parent / (SAMPLE_EVENT.name + "-hits.csv.gz")).read_bytes())
    assert main(["run", str(tmp_path / "hits.csv.gz"), "--no-labels"]) == 2
    assert "starts with the header of a TrackML hits, truth or cells file" in capsys.readouterr().err


def test_a_feature_csv_with_an_empty_line_is_refused(capsys, tmp_path):
    (tmp_path / "evt_0.csv").write_text("0.1,0.2,0.3\n\n0.1,0.25,0.3\n")
    assert main(["run", str(tmp_path / "evt_0.csv"), "--no-labels"]) == 2
    assert "line 2 is empty: a feature file holds one hit per line" in capsys.readouterr().err


def test_an_event_id_beyond_64_bits_is_refused(capsys, tmp_path, feature_csvs):
    name = "evt_99999999999999999999.csv"
    (tmp_path / name).write_text((feature_csvs / "evt_1.csv").read_text())
    assert main(["run", str(tmp_path / name), "--output", str(tmp_path / "labels")]) == 2
    assert "the event id 99999999999999999999 in the name is above 9223372036854775807" in capsys.readouterr().err


def test_features_far_beyond_the_detector_get_a_note_and_still_run(capsys, tmp_path, feature_csvs):
    # the default bundle's features are r / 3000, phi / pi, z / 400: values in mm and rad are far off
    features = np.loadtxt(feature_csvs / "evt_4.csv", delimiter=",") * [3000.0, np.pi, 400.0]
    np.savetxt(tmp_path / "evt_9.csv", features, delimiter=",")
    assert main(["run", str(tmp_path / "evt_9.csv"), "--no-labels"]) == 0
    err = capsys.readouterr().err
    assert "evt_9.csv: hits outside the TrackML detector: |r| up to" in err and "were the features scaled" in err
    assert main(["run", str(feature_csvs / "evt_4.csv"), "--no-labels"]) == 0
    assert "note" not in capsys.readouterr().err


def test_features_in_another_column_order_get_a_note(capsys, tmp_path, feature_csvs):
    # z, phi, r instead of r, phi, z: the r column holds negative values, which r never has
    features = np.loadtxt(feature_csvs / "evt_4.csv", delimiter=",")[:, ::-1]
    np.savetxt(tmp_path / "evt_9.csv", features, delimiter=",")
    assert main(["run", str(tmp_path / "evt_9.csv"), "--no-labels"]) == 0
    err = capsys.readouterr().err
    assert "evt_9.csv: hits outside the TrackML detector: " in err and "; r down to -" in err
    assert "(it is never negative)" in err
    assert "in this order?" in err


def test_a_feature_csv_with_a_byte_order_mark_is_read(capsys, tmp_path, feature_csvs):
    text = (feature_csvs / "evt_4.csv").read_text()
    (tmp_path / "evt_4.csv").write_bytes("\ufeff".encode() + text.encode())
    assert main(["run", str(tmp_path / "evt_4.csv"), "--output", str(tmp_path / "bom")]) == 0
    assert main(["run", str(feature_csvs / "evt_4.csv"), "--output", str(tmp_path / "plain")]) == 0
    assert (tmp_path / "bom" / "evt_4-labels.csv").read_text() == (tmp_path / "plain" / "evt_4-labels.csv").read_text()


@pytest.mark.parametrize("options, message", [
    (["--threads", "0"], "--threads must be an integer >= 1, got 0"),
    (["--event-workers", "0"], "--event-workers must be an integer >= 1, got 0"),
    (["--edge-chunk-size", "0"], "--edge-chunk-size must be an integer >= 1, got 0"),
    (["--event-workers", "2", "--threads", "2"], "--event-workers 2 with --threads 2 would run 4 threads on 2 cores"),
])
def test_thread_options_are_named_in_their_errors(capsys, feature_csvs, monkeypatch, options, message):
    monkeypatch.setattr("trackserve.runtime.config.available_cores", lambda: 2)
    assert main(["run", str(feature_csvs), "--no-labels", *options]) == 2
    assert message in capsys.readouterr().err


def test_a_run_where_every_event_failed_times_nothing(capsys, tmp_path):
    np.savetxt(tmp_path / "evt_0.csv", np.random.default_rng(0).random((30, 4)), delimiter=",")
    assert main(["run", str(tmp_path / "evt_0.csv")]) == 2
    out, err = capsys.readouterr()
    assert "no event ran to the end: nothing to time" in out and "events/s" not in out
    assert "1 of 1 event(s) failed" in err
    assert main(["run", str(tmp_path / "evt_0.csv"), "--json"]) == 2
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["num_events"] == 0 and summary["events_per_second_wall"] is None


def test_run_json_names_what_its_track_count_counts(capsys):
    assert main(["run", str(SAMPLE_EVENT), "--json", "--no-labels"]) == 0
    report = json.loads(capsys.readouterr().out)
    event = report["events"][0]
    assert "num_tracks" not in event and report["settings"]["min_track_hits"] == 5
    assert event["metrics"]["num_tracks"] >= event["num_tracks_min_hits"] > 0
    # with --min-hits 3 the column and the metrics' candidate tracks use the same size
    assert main(["run", str(SAMPLE_EVENT), "--json", "--no-labels", "--min-hits", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["min_track_hits"] == report["events"][0]["metrics"]["min_track_hits"] == 3
    assert report["events"][0]["num_tracks_min_hits"] > event["num_tracks_min_hits"]


def test_labels_that_cannot_be_written_fail_their_event_and_leave_no_partial_file(capsys, tmp_path, feature_csvs,
                                                                                 monkeypatch):
    import errno
    import os

    import trackserve.paths as paths

    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "evt_1-labels.csv").write_text(EARLIER_LABELS)
    real_replace = os.replace

    def full_disk_for_evt_1(source, target):  # the disk fills up while evt_1's labels are written
        if str(target).endswith("evt_1-labels.csv"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(source, target)

    monkeypatch.setattr(paths.os, "replace", full_disk_for_evt_1)
    status = main(["run", str(feature_csvs), "--json", "--output", str(labels), "--event-workers", "1"])
    assert status == 2
    out, err = capsys.readouterr()
    assert f"event evt_1 ({feature_csvs / 'evt_1.csv'}): cannot write {labels / 'evt_1-labels.csv'}: " \
           "No space left on device" in err
    report = json.loads(out)
    assert [event["event"] for event in report["events"]] == ["evt_0", "evt_2", "evt_3", "evt_4"]
    assert "No space left on device" in report["failed"][0]["error"]
    assert report["summary"]["num_hits"] == sum(event["num_hits"] for event in report["events"])
    # Neither a truncated file nor the earlier run's labels of that event are left.
    assert sorted(p.name for p in labels.iterdir()) == [f"evt_{n}-labels.csv" for n in (0, 2, 3, 4)]


def test_events_lost_with_a_dead_worker_are_named_and_the_others_still_run(capsys, tmp_path, feature_csvs, monkeypatch):
    from trackserve.errors import WorkerError

    real_run_many = Pipeline.run_many
    calls = []

    def worker_dies_once(self, events, *, yield_errors=False):
        calls.append(1)
        results = real_run_many(self, events, yield_errors=yield_errors)
        if len(calls) > 1:
            return results

        def dying():
            yield next(results)
            next(iter(events))  # one more event handed over, in flight when the worker dies
            raise WorkerError("an event worker process stopped unexpectedly (killed); the events in flight were lost")
        return dying()

    monkeypatch.setattr(Pipeline, "run_many", worker_dies_once)
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "evt_1-labels.csv").write_text(EARLIER_LABELS)
    assert main(["run", str(feature_csvs), "--json", "--output", str(labels), "--event-workers", "1"]) == 2
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert len(calls) == 2
    assert [event["event"] for event in report["events"]] == ["evt_0", "evt_2", "evt_3", "evt_4"]
    assert report["failed"][0]["event"] == "evt_1" and "the events in flight were lost" in report["failed"][0]["error"]
    assert sorted(p.name for p in labels.iterdir()) == [f"evt_{n}-labels.csv" for n in (0, 2, 3, 4)]


def test_processes_asked_for_with_one_event_at_a_time_get_a_note(capsys, feature_csvs):
    assert main(["run", str(feature_csvs / "evt_1.csv"), "--event-executor", "processes", "--no-labels"]) == 0
    assert ("--event-executor processes runs the events in flight in worker processes; this run takes one event at a "
            "time (one event given), so every event runs in this process") in capsys.readouterr().err


def test_the_text_report_names_the_events_that_failed(capsys, tmp_path, feature_csvs):
    for number in range(3):
        (tmp_path / f"evt_{number}.csv").write_text((feature_csvs / f"evt_{number}.csv").read_text())
    (tmp_path / "evt_9.csv").write_text("1.0,abc,2.0\n")
    assert main(["run", str(tmp_path), "--no-labels", "--event-workers", "1"]) == 2
    out = capsys.readouterr().out
    assert "1 event(s) failed, not in the tables: evt_9 (their errors on stderr)" in out
    assert "3 event(s), " in out
