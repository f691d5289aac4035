"""Writing files whole: several files renamed into place together, and stops held back meanwhile."""

from __future__ import annotations

import os
import signal

import pytest

from trackserve import paths
from trackserve.paths import signals_deferred, write_files_atomically


def test_a_stop_during_the_block_is_acted_on_after_it():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            signal.raise_signal(signal.SIGINT)  # Ctrl-C, while the block runs
            done.append("after the signal, still in the block")
    assert done == ["after the signal, still in the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler as it was


def test_sigterm_goes_to_its_own_handler_once_the_block_ends():
    class Stop(Exception):
        pass

    def handler(signum, frame):
        raise Stop(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(Stop):
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGINT)  # only the first stop is acted on
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_stop_between_the_renames_leaves_every_file_new(tmp_path, monkeypatch):
    targets = [tmp_path / name for name in ("a.onnx", "a.pt", "pipeline.json")]
    for target in targets:
        target.write_text("old")
    renamed = []
    replace = os.replace

    def replace_then_stop(source, target):
        replace(source, target)
        renamed.append(target)
        if len(renamed) == 1:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C between the first rename and the second

    monkeypatch.setattr(paths.os, "replace", replace_then_stop)
    with pytest.raises(KeyboardInterrupt):
        write_files_atomically([(target, b"new") for target in targets])
    assert [target.read_text() for target in targets] == ["new", "new", "new"]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(target.name for target in targets)


def test_a_block_that_fails_keeps_its_own_error_when_a_stop_came_too():
    # the new bundle's "complete in X, move it there by hand" was lost behind a bare KeyboardInterrupt
    with pytest.raises(PermissionError, match="the rename failed"):
        with signals_deferred():
            signal.raise_signal(signal.SIGINT)
            raise PermissionError("the rename failed")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
