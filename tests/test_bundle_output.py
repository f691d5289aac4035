"""Where the jobs that write a whole bundle put it: the old bundle is never removed before the new one is in place."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

import pytest

from trackserve.bundle_output import bundle_written_to, check_bundle_output


def _old_bundle(directory: Path) -> None:
    directory.mkdir(parents=True)
    (directory / "pipeline.json").write_text('{"networks": {"gnn": {"file": "gnn.onnx"}}}')
    (directory / "gnn.onnx").write_text("old network")
    (directory / "README.md").write_text("how it was made")


def _write_new(directory: Path) -> None:
    (directory / "pipeline.json").write_text('{"networks": {"gnn": {"file": "gnn2.onnx"}}}')
    (directory / "gnn2.onnx").write_text("new network")


def test_the_new_bundle_takes_the_old_ones_place_keeping_other_files_and_permissions(tmp_path):
    target = tmp_path / "bundle"
    _old_bundle(target)
    os.chmod(target, 0o700)
    with bundle_written_to(target) as partial:
        _write_new(partial)
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "gnn2.onnx", "pipeline.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # nothing left beside it


def test_a_directory_that_cannot_be_renamed_is_written_in_place(tmp_path, monkeypatch):
    # a mount point: renaming it fails (EBUSY); the old bundle must not be removed before that is known
    target = tmp_path / "bundle"
    _old_bundle(target)
    real_rename = Path.rename

    def busy(self, destination):
        if self == target:
            raise OSError(errno.EBUSY, "Device or resource busy")
        return real_rename(self, destination)

    monkeypatch.setattr(Path, "rename", busy)
    with bundle_written_to(target) as partial:
        _write_new(partial)
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "gnn2.onnx", "pipeline.json"]
    assert (target / "gnn2.onnx").read_text() == "new network"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_an_existing_directory_under_a_parent_that_cannot_be_written_is_written_in_place(tmp_path, monkeypatch):
    target = tmp_path / "bundle"
    _old_bundle(target)
    real_mkdtemp = tempfile.mkdtemp

    def read_only_parent(*args, dir=None, **kwargs):
        if Path(dir) == tmp_path:
            raise OSError(errno.EPERM, "Operation not permitted")
        return real_mkdtemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", read_only_parent)
    check_bundle_output(target, overwrite=True)
    with bundle_written_to(target) as partial:
        assert partial.parent == target
        _write_new(partial)
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "gnn2.onnx", "pipeline.json"]


def test_a_failed_job_leaves_the_old_bundle_as_it_was(tmp_path):
    target = tmp_path / "bundle"
    _old_bundle(target)
    before = {p.name: p.read_text() for p in target.iterdir()}
    with pytest.raises(RuntimeError):
        with bundle_written_to(target) as partial:
            _write_new(partial)
            raise RuntimeError("the export failed")
    assert {p.name: p.read_text() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


@pytest.mark.parametrize("when", ["renaming the old bundle aside", "removing the old bundle"])
def test_a_stop_during_the_swap_leaves_the_new_bundle_whole_in_place(tmp_path, monkeypatch, when):
    # a SIGTERM in the swap left --output missing (the old bundle aside, the new one beside it)
    import shutil
    import signal

    from trackserve import bundle_output

    target = tmp_path / "bundle"
    _old_bundle(target)
    if when == "removing the old bundle":
        rmtree = shutil.rmtree

        def stopped(path, *args, **kwargs):
            signal.raise_signal(signal.SIGTERM)
            return rmtree(path, *args, **kwargs)

        monkeypatch.setattr(bundle_output.shutil, "rmtree", stopped)
    else:
        rename = Path.rename

        def stopped(self, destination):
            if self == target:
                signal.raise_signal(signal.SIGTERM)
            return rename(self, destination)

        monkeypatch.setattr(Path, "rename", stopped)

    class Terminated(Exception):
        pass

    def terminate(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        with pytest.raises(Terminated):
            with bundle_written_to(target) as partial:
                _write_new(partial)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "gnn2.onnx", "pipeline.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
