"""The ``trackserve`` command itself: unknown options named by the subcommand, a closed pipe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trackserve.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_an_unknown_option_is_named_with_the_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--bogus"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage: trackserve run " in err and "trackserve run: error: unrecognized arguments: --bogus" in err
    with pytest.raises(SystemExit):
        main(["--bogus"])
    assert "trackserve: error: unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize("argv, named", [
    (["run", "x.csv", "--bundle", ""], "--bundle"),  # was the shipped bundle, silently
    (["run", ""], "EVENT"),  # was every CSV of the current directory
    (["run", "x.csv", "-o", " "], "--output/-o"),  # was the current directory
    (["export", "--bundle", "", "--network", "gnn", "--check"], "--bundle"),  # was "needs --bundle DIR"
    (["perf", "x.csv", "--csv", ""], "--csv"),
])
def test_an_empty_value_is_named_as_such(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert f"error: argument {named}: empty value (an unset shell variable?)" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_command_line():
    done = subprocess.run([sys.executable, "-m", "trackserve", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("trackserve ")
    done = subprocess.run([sys.executable, "-m", "trackserve", "run", "no-such-event"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "trackserve run: error: file no-such-event: does not exist" in done.stderr


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path):
    # `trackserve run ... | head -1`: the pipe closes while the table is being written
    code = ("import sys; from trackserve.cli import main; "
            f"sys.exit(main(['run', {str(REPO / 'data' / 'event000000001')!r}, '--no-labels', '--event-workers', '1']))")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=tmp_path)
    process.stdout.close()  # the reader goes away before the command writes (it takes a second to start)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 141, err.decode()
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()


def test_a_reader_that_stops_early_still_gets_the_labels_written(tmp_path, capsys):
    # `trackserve run EVENT... | head`: README, the labels files are still written, each in full
    import numpy as np

    rng = np.random.default_rng(2)  # a second event: 300 hits in the default bundle's scaled units
    np.savetxt(tmp_path / "evt_1.csv", np.stack([rng.uniform(0.03, 0.3, 300), rng.uniform(-1, 1, 300),
                                                 rng.uniform(-2, 2, 300)], axis=1), delimiter=",")
    events = [str(REPO / "data" / "event000000001"), str(tmp_path / "evt_1.csv")]
    names = {"event000000001-labels.csv": 5527, "evt_1-labels.csv": 300}  # labels file: hits
    code = ("import sys; from trackserve.cli import main; "
            f"sys.exit(main(['run', *{events!r}, '--output', 'cut', '--event-workers', '1']))")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=tmp_path)
    process.stdout.close()  # the reader goes away before the command writes
    _, err = process.communicate(timeout=120)
    assert process.returncode == 141, err.decode()
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    # the same run with its reader to the end
    assert main(["run", *events, "--output", str(tmp_path / "full"), "--event-workers", "1"]) == 0
    assert "event000000001" in capsys.readouterr().out
    assert sorted(path.name for path in (tmp_path / "cut").iterdir()) == sorted(names)
    for name, num_hits in names.items():
        full = (tmp_path / "full" / name).read_bytes()
        assert full.startswith(b"event_id,hit_id,track_id\n") and full.count(b"\n") == num_hits + 1  # a line a hit
        assert (tmp_path / "cut" / name).read_bytes() == full, name


def test_a_reader_that_stops_early_does_not_cut_the_job_short(tmp_path):
    # `trackserve tune-cut ... --write | head -1`: the choice is still written
    import json
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "models" / "default", bundle)
    code = ("import sys; from trackserve.cli import main; "
            f"sys.exit(main(['tune-cut', {str(bundle)!r}, '--validation', "
            f"{str(REPO / 'data' / 'event000000001')!r}, '--write']))")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=tmp_path)
    process.stdout.close()
    _, err = process.communicate(timeout=300)
    assert process.returncode == 141, err.decode()
    assert b"Traceback" not in err
    # the shipped bundle's cut is 0.95; on the sample event every cut ties and the rule stores the smallest
    assert json.loads((REPO / "models" / "default" / "pipeline.json").read_text())["stages"]["gnn_cut"] == 0.95
    assert json.loads((bundle / "pipeline.json").read_text())["stages"]["gnn_cut"] == 0.1


@pytest.mark.parametrize("argv", [["train", "--quick", "--random-events", "1", "--output", "b"],
                                  ["rescale", "models/default", "--output", "r"],
                                  ["import", "checkpoint.pt", "--output", "net.onnx"],
                                  ["export", "net.pt", "--output", "net.onnx"]])
def test_jobs_of_the_export_extra_name_it_when_torch_is_missing(argv, monkeypatch, capsys, tmp_path):
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "torch", None)  # as in an install without the export extra
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"trackserve {argv[0]} needs the export extra" in err
    assert 'pip install torch==2.13.0 && pip install -e ".[export]"' in err and "Traceback" not in err


@pytest.mark.parametrize("stop, status, line", [
    (KeyboardInterrupt, 130, "trackserve: interrupted"),
    ("import-after-sigint", 130, "trackserve: interrupted"),
    ("import-after-sigterm", 143, "trackserve: terminated (SIGTERM)"),
])
def test_a_stop_while_the_commands_load_is_one_line_and_its_status(monkeypatch, capsys, stop, status, line):
    # a Ctrl-C or SIGTERM in the first tenth of a second: a traceback, or ImportError("initialization failed", exit 1)
    import signal

    from trackserve import cli

    def interrupted_load():
        if stop is KeyboardInterrupt:
            raise KeyboardInterrupt
        if stop == "import-after-sigint":
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise ImportError("initialization failed")  # an extension module's init, cut short
        cli._received.append(signal.SIGTERM)  # the handler ran, the ImportError does not carry it
        raise ImportError("import numpy failed")

    monkeypatch.setattr(cli, "build_parser", interrupted_load)
    assert main(["bundle-info", "models/default"]) == status
    assert capsys.readouterr().err.strip() == line
    def missing_module():
        raise ImportError("no module named x")

    monkeypatch.setattr(cli, "build_parser", missing_module)
    with pytest.raises(ImportError, match="no module named x"):  # an ImportError of its own is not hidden
        main(["bundle-info", "models/default"])


def test_an_error_line_meeting_a_closed_pipe_keeps_the_status(tmp_path):
    # `trackserve bundle-info X 2>&1 | head -0`: the error line cannot be written; status 2, no traceback's 1
    process = subprocess.Popen([sys.executable, "-m", "trackserve", "bundle-info", str(tmp_path / "none")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    process.stdout.close()
    assert process.wait(timeout=60) == 2


def test_notes_meeting_a_closed_pipe_do_not_cut_the_job_short(tmp_path):
    # `trackserve run ... 2>&1 | head -1`: a note on stderr (an empty input) broke the pipe and no labels were written
    (tmp_path / "empty.csv").write_text("")
    code = ("import sys; from trackserve.cli import main; "
            f"sys.exit(main(['run', {str(tmp_path / 'empty.csv')!r}, {str(REPO / 'data' / 'event000000001')!r}, "
            "'--output', 'out', '--event-workers', '1']))")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               cwd=tmp_path)
    process.stdout.close()
    assert process.wait(timeout=120) == 141
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["empty-labels.csv",
                                                                        "event000000001-labels.csv"]


def test_warnings_about_the_input_are_notes_of_the_command(monkeypatch, capsys):
    # tune-cut on an event renumbered out of the detector's order showed a raw Python warning line
    import warnings

    from trackserve.commands import bundle_info
    from trackserve.errors import HitOrderWarning

    def warns(args):
        warnings.warn(HitOrderWarning("event event000000001: its hit ids do not follow the detector's order"))
        warnings.warn(UserWarning("another library's warning"))
        return 0

    monkeypatch.setattr(bundle_info, "run", warns)
    with pytest.warns(UserWarning, match="another library's warning"):  # others as Python shows them
        assert main(["bundle-info", "models/default"]) == 0
    err = capsys.readouterr().err
    assert "trackserve bundle-info: note: event event000000001: its hit ids do not follow the detector's order\n" in err
    assert "another library" not in err
