"""The model repository writer and ``trackserve triton-repo`` (no server needed)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from trackserve.bundle import file_sha256, load_bundle
from trackserve.cli import main
from trackserve.errors import InputError, OutputError
from trackserve.serving.interface import STAGE_NAMES
from trackserve.serving.repository import RepositoryOptions, write_repository
from trackserve.serving.triton_models import PIPELINE_MODEL, STAGE_MODEL


def parse_config(path):
    """The config.pbtxt parsed with Triton's own ModelConfig message (proves the syntax)."""
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient is not installed")
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def parameters(config) -> dict:
    return {key: value.string_value for key, value in config.parameters.items()}


def test_custom_layout_is_one_model_derived_from_the_bundle(tiny_bundle, tmp_path):
    written = write_repository(tiny_bundle, tmp_path / "repo")
    assert written.models == ["exatrkx"] and written.entry_points == {"custom": "exatrkx"}
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["exatrkx"]
    config = parse_config(tmp_path / "repo" / "exatrkx" / "config.pbtxt")
    assert (config.name, config.backend, config.max_batch_size) == ("exatrkx", "python", 0)
    assert [(t.name, list(t.dims)) for t in config.input] == [("FEATURES", [-1, load_bundle(tiny_bundle).num_features])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("LABELS", [-1])]
    assert config.input[0].data_type == 11 and config.output[0].data_type == 9  # TYPE_FP32, TYPE_INT64
    assert not config.HasField("dynamic_batching")
    bundle = load_bundle(tiny_bundle)
    features = {"names": list(bundle.feature_names), "scales": list(bundle.feature_scales)}
    # for clients to check: the features, and which bundle (its pipeline.json's sha256)
    assert parameters(config) == {"bundle": "exatrkx/bundle", "features": json.dumps(features),
                                  "pipeline_sha256": file_sha256(tiny_bundle / "pipeline.json")}
    assert (tmp_path / "repo" / "exatrkx" / "1" / "model.py").read_text() == PIPELINE_MODEL.read_text()
    copy = load_bundle(tmp_path / "repo" / "exatrkx" / "bundle")
    assert copy.to_dict()["networks"] == load_bundle(tiny_bundle).to_dict()["networks"]


def test_ensemble_layout_chains_the_stage_models(tiny_bundle, tmp_path):
    options = RepositoryOptions(layout="ensemble", instance_count=3, dynamic_batching=True, max_queue_delay_us=250,
                                intra_op_threads=1, graph_threads=2)
    written = write_repository(tiny_bundle, tmp_path / "repo", options)
    assert written.models == [*STAGE_NAMES, "exatrkx_ensemble"]
    ensemble = parse_config(tmp_path / "repo" / "exatrkx_ensemble" / "config.pbtxt")
    assert ensemble.platform == "ensemble"
    assert (tmp_path / "repo" / "exatrkx_ensemble" / "1").is_dir()
    steps = ensemble.ensemble_scheduling.step
    assert [step.model_name for step in steps] == list(STAGE_NAMES)
    produced = {"FEATURES"}
    for step in steps:
        stage = parse_config(tmp_path / "repo" / step.model_name / "config.pbtxt")
        assert set(step.input_map.values()) <= produced, step.model_name
        assert sorted(step.input_map) == sorted(t.name for t in stage.input)
        assert sorted(step.output_map) == sorted(t.name for t in stage.output)
        produced |= set(step.output_map.values())
        assert parameters(stage) == {"bundle": "exatrkx_ensemble/bundle", "stage": step.model_name,
                                     "intra_op_threads": "1", "graph_threads": "2",
                                     "pipeline_sha256": file_sha256(tiny_bundle / "pipeline.json")}
        assert [(g.count, g.kind) for g in stage.instance_group] == [(3, 2)]  # 2: KIND_CPU
        assert stage.dynamic_batching.max_queue_delay_microseconds == 250
        assert (tmp_path / "repo" / step.model_name / "1" / "model.py").read_text() == STAGE_MODEL.read_text()
    assert "LABELS" in produced
    embed = parse_config(tmp_path / "repo" / "embed" / "config.pbtxt")
    assert list(embed.output[0].dims) == [-1, 4]  # the tiny bundle's embedding width


def test_gpu_instances_are_refused_while_the_runtime_has_no_cuda_device(tiny_bundle, tmp_path):
    with pytest.raises(InputError, match=r"instance kind 'gpu' needs the runtime's 'cuda' device, which this runtime "
                                         r"does not have yet \(it runs on cpu\); use instance kind cpu"):
        write_repository(tiny_bundle, tmp_path / "gpu", RepositoryOptions(instance_kind="gpu"))
    assert not (tmp_path / "gpu").exists()


def test_instance_kind_is_written(tiny_bundle, tmp_path, monkeypatch):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient is not installed")
    import trackserve.serving.repository as repository

    write_repository(tiny_bundle, tmp_path / "cpu", RepositoryOptions(instance_count=2))
    monkeypatch.setattr(repository, "DEVICES", ("cpu", "cuda"))  # a runtime with the GPU issue's device
    write_repository(tiny_bundle, tmp_path / "gpu", RepositoryOptions(instance_kind="gpu"))
    kinds = model_config_pb2.ModelInstanceGroup.Kind
    cpu = parse_config(tmp_path / "cpu" / "exatrkx" / "config.pbtxt").instance_group[0]
    gpu = parse_config(tmp_path / "gpu" / "exatrkx" / "config.pbtxt").instance_group[0]
    assert (cpu.count, cpu.kind) == (2, kinds.Value("KIND_CPU"))
    assert (gpu.count, gpu.kind) == (1, kinds.Value("KIND_GPU"))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(layout="split"), "layout 'split' is not one of custom, ensemble, both"),
        (dict(instance_count=0), "instance count must be an integer >= 1, got 0"),
        (dict(instance_kind="tpu"), "instance kind 'tpu' is not one of cpu, gpu"),
        (dict(max_queue_delay_us=-5), "max queue delay must be an integer in 0..9223372036854775807"),
        (dict(max_queue_delay_us=10**20, dynamic_batching=True), "max queue delay must be an integer in 0.."),
        (dict(max_queue_delay_us=5), "applies only to the dynamic batcher"),
        (dict(instance_count=100_000), "instance count 100000 is above 256"),
        (dict(model_name="gnn"), "is the name of an ensemble stage model"),
        (dict(model_name="a b"), "model name 'a b' must be letters"),
        # QA, 2026-12-02: refused only when its directory could not be made, the long path repeated
        (dict(model_name="a" * 300), "model name 'aaaaaaaaaaaaaaaaaaaa'... has 300 characters; a model's name is its "
                                     "directory's, at most 255"),
        (dict(layout="both", ensemble_name="exatrkx"), "both are named 'exatrkx'"),
        (dict(intra_op_threads=0), "intra_op_threads must be an integer >= 1"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(InputError, match="^invalid model repository option: ") as error:  # one problem: one line
        RepositoryOptions(**options)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_several_bad_options_are_listed_one_a_line():
    with pytest.raises(InputError, match="^invalid model repository options:\n  - layout 'split' .*\n  - instance count"):
        RepositoryOptions(layout="split", instance_count=0)


def test_an_occupied_output_is_refused_unless_it_is_a_repository_and_forced(tiny_bundle, tmp_path):
    write_repository(tiny_bundle, tmp_path / "repo", RepositoryOptions(layout="both"))
    with pytest.raises(InputError, match="already holds a model repository; give --overwrite to replace it"):
        write_repository(tiny_bundle, tmp_path / "repo")
    written = write_repository(tiny_bundle, tmp_path / "repo", overwrite=True)
    assert sorted(p.name for p in written.path.iterdir()) == ["exatrkx"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    for overwrite in (False, True):  # without --overwrite, not advised to give it: it would be refused too
        with pytest.raises(InputError, match="is not empty and not a model repository .*thesis.tex.*give another path$"):
            write_repository(tiny_bundle, other, overwrite=overwrite)
    assert (other / "thesis.tex").read_text() == "keep me"


def test_the_command_writes_a_repository(tiny_bundle, tmp_path, capsys):
    code = main(["triton-repo", str(tmp_path / "repo"), "--bundle", str(tiny_bundle), "--layout", "both",
                 "--instances", "2", "--threads", "1", "--memory-limit-gb", "2", "--dynamic-batching"])
    assert code == 0
    out = capsys.readouterr().out
    assert "send events to 'exatrkx' (custom)" in out and "send events to 'exatrkx_ensemble' (ensemble)" in out
    config = parse_config(tmp_path / "repo" / "exatrkx" / "config.pbtxt")
    assert parameters(config)["memory_limit_bytes"] == str(2 * 2**30)
    assert config.instance_group[0].count == 2 and config.HasField("dynamic_batching")
    assert main(["triton-repo", str(tmp_path / "repo"), "--bundle", str(tiny_bundle)]) == 2
    assert "give --overwrite to replace it" in capsys.readouterr().err
    # --overwrite, as the other writers call it, is the same option
    assert main(["triton-repo", str(tmp_path / "repo"), "--bundle", str(tiny_bundle), "--overwrite"]) == 0


def test_a_bad_bundle_is_refused_before_anything_is_written(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "pipeline.json").write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(Exception, match="invalid bundle"):
        write_repository(bundle, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_force_never_deletes_the_bundle_it_is_asked_to_copy(tiny_bundle, tmp_path):
    written = write_repository(tiny_bundle, tmp_path / "repo")
    inner = written.path / "exatrkx" / "bundle"
    with pytest.raises(InputError, match="lies inside .* which --overwrite would delete"):
        write_repository(inner, tmp_path / "repo", overwrite=True)
    assert (inner / "pipeline.json").is_file()


def test_a_repository_inside_the_bundle_is_refused_before_anything_is_written(tiny_bundle, tmp_path):
    # The bundle is copied into the repository: inside the bundle it would copy itself into itself.
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    before = sorted(p.relative_to(bundle) for p in bundle.rglob("*"))
    for output in (bundle / "triton", bundle, bundle / "a" / "b"):
        with pytest.raises(InputError, match="lies inside the bundle .* write the repository outside the bundle"):
            write_repository(bundle, output)
    assert sorted(p.relative_to(bundle) for p in bundle.rglob("*")) == before


def test_unusable_repository_paths_are_refused_cleanly(tiny_bundle, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    with pytest.raises(InputError, match="cannot create the directory"):
        write_repository(tiny_bundle, afile / "sub")
    written = write_repository(tiny_bundle, tmp_path / "repo")
    link = tmp_path / "link"
    link.symlink_to(written.path)
    with pytest.raises(InputError, match="is a symbolic link; give the directory it points to"):
        write_repository(tiny_bundle, link, overwrite=True)
    assert (written.path / "exatrkx" / "config.pbtxt").is_file()


@pytest.mark.parametrize("options, message", [
    (["--threads", "0"], "--threads must be an integer >= 1, got 0"),
    (["--edge-chunk-size", "-3"], "--edge-chunk-size must be an integer >= 1, got -3"),
    (["--memory-limit-gb", "1e-12"], "--memory-limit-gb 1e-12 is less than one byte"),
    (["--max-queue-delay-us", "5"], "--max-queue-delay-us 5 applies only with --dynamic-batching"),
    (["--max-queue-delay-us", "0"], "--max-queue-delay-us 0 applies only with --dynamic-batching"),
    (["--ensemble-name", "e2"], "--ensemble-name e2 names the ensemble, which --layout custom does not write"),
    (["--layout", "ensemble", "--model-name", "m2"],
     "--model-name m2 names the custom model, which --layout ensemble does not write; drop it or use --layout both"),
])
def test_the_command_names_its_own_options(tiny_bundle, tmp_path, capsys, options, message):
    assert main(["triton-repo", str(tmp_path / "repo"), "--bundle", str(tiny_bundle), *options]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_a_repository_path_with_whitespace_or_shell_characters_is_refused(tiny_bundle, tmp_path):
    with pytest.raises(InputError, match="holds whitespace, which Triton's Python backend cannot start models from"):
        write_repository(tiny_bundle, tmp_path / "my repo")
    with pytest.raises(InputError, match=r"holds \( \), which Triton's Python backend cannot start models from"):
        write_repository(tiny_bundle, tmp_path / "p(x)" / "repo")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def tree(directory) -> dict:
    """Every file and folder under ``directory``: its bytes and mode (a folder: None and mode)."""
    return {path.relative_to(directory).as_posix(): (None if path.is_dir() else path.read_bytes(), path.stat().st_mode)
            for path in sorted(directory.rglob("*"))}


def fail_copies_after(monkeypatch, files: int, error: BaseException) -> None:
    """Make every file copy after the first ``files`` raise ``error``, the failed file left empty as a
    full disk leaves it (shutil.copyfile: what the writer calls, through shutil.copy2 for the bundle)."""
    real = shutil.copyfile
    copied = []

    def copyfile(source, destination, *args, **kwargs):
        if len(copied) >= files:
            Path(destination).write_bytes(b"")
            raise error
        copied.append(destination)
        return real(source, destination, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", copyfile)


def test_a_full_disk_leaves_the_repository_as_it_was_and_a_rerun_succeeds(tiny_bundle, tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    write_repository(tiny_bundle, repo, RepositoryOptions(layout="both"))
    before = tree(repo)
    full = OSError(errno.ENOSPC, "No space left on device")
    for output, more in ((repo, ["--overwrite"]), (tmp_path / "new", [])):
        command = ["triton-repo", str(output), "--bundle", str(tiny_bundle), *more]
        with monkeypatch.context() as patch:
            fail_copies_after(patch, 3, full)
            assert main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"trackserve triton-repo: error: cannot write the model repository {output} (")
        assert "No space left on device" in err and err.count("\n") == 1, err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no temporary directory, no new one
        assert tree(repo) == before
        assert main(command) == 0
        assert sorted(p.name for p in output.iterdir()) == ["exatrkx"]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"repo", output.name})
        before = tree(repo)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), PermissionError(errno.EACCES, "Permission denied")])
def test_an_interrupted_or_failed_write_leaves_the_repository_as_it_was(tiny_bundle, tmp_path, monkeypatch, error):
    repo = tmp_path / "repo"
    write_repository(tiny_bundle, repo)
    before = tree(repo)
    fail_copies_after(monkeypatch, 1, error)
    with pytest.raises(OutputError if isinstance(error, OSError) else KeyboardInterrupt):
        write_repository(tiny_bundle, repo, RepositoryOptions(layout="both"), overwrite=True)
    assert tree(repo) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_a_stop_during_the_swap_ends_it_first(tiny_bundle, tmp_path, monkeypatch):
    # a SIGTERM while the old repository was being removed reported "terminated" with the new one in
    # place and the old one left aside for ever
    import signal

    from trackserve.serving import repository

    repo = tmp_path / "repo"
    write_repository(tiny_bundle, repo)
    rmtree = repository.shutil.rmtree

    def stopped_rmtree(path, *args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C as the old repository is removed
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(repository.shutil, "rmtree", stopped_rmtree)
    with pytest.raises(KeyboardInterrupt):
        write_repository(tiny_bundle, repo, RepositoryOptions(layout="both"), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # nothing left aside
    assert (repo / "exatrkx_ensemble").is_dir()  # the new one, whole


def test_the_old_repository_is_restored_when_the_new_one_cannot_take_its_place(tiny_bundle, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    write_repository(tiny_bundle, repo)
    before = tree(repo)
    rename = os.rename

    def refuse_the_new_one(source, destination, *args, **kwargs):
        if ".partial-" in str(source):
            raise OSError(errno.EIO, "Input/output error", str(source), None, str(destination))
        return rename(source, destination, *args, **kwargs)

    monkeypatch.setattr(os, "rename", refuse_the_new_one)
    with pytest.raises(OutputError, match=f"cannot write the model repository {repo} .*Input/output error"):
        write_repository(tiny_bundle, repo, RepositoryOptions(layout="both"), overwrite=True)
    assert tree(repo) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_a_repository_that_cannot_be_renamed_is_replaced_inside_itself(tiny_bundle, tmp_path, monkeypatch):
    # A mount point (a container's volume, say) cannot be renamed: the new repository is written
    # inside it and takes the old one's place entry by entry, or not at all.
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.setattr(os.path, "ismount", lambda path: os.path.realpath(path) == os.path.realpath(repo))
    write_repository(tiny_bundle, repo, RepositoryOptions(layout="both"))
    before = tree(repo)
    with monkeypatch.context() as patch:
        fail_copies_after(patch, 2, OSError(errno.ENOSPC, "No space left on device"))
        with pytest.raises(OutputError, match="No space left on device"):
            write_repository(tiny_bundle, repo, overwrite=True)
    assert tree(repo) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]
    write_repository(tiny_bundle, repo, overwrite=True)
    assert sorted(p.name for p in repo.iterdir()) == ["exatrkx"]


def test_a_bind_mount_that_ismount_misses_is_replaced_entry_by_entry(tiny_bundle, tmp_path, monkeypatch):
    # A bind mount within one file system looks like no mount point to os.path.ismount, yet
    # cannot be renamed (EBUSY): --overwrite failed where writing into it had worked before.
    repo = tmp_path / "repo"
    write_repository(tiny_bundle, repo, RepositoryOptions(layout="both"))
    real_rename = Path.rename

    def busy(self, target):
        if os.path.realpath(self) == os.path.realpath(repo):
            raise OSError(errno.EBUSY, "Device or resource busy", str(self))
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", busy)
    written = write_repository(tiny_bundle, repo, RepositoryOptions(layout="custom"), overwrite=True)
    assert sorted(p.name for p in repo.iterdir()) == sorted(written.models) == ["exatrkx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def _fake_tritonserver(cwd, *args):
    """A process whose command line reads as a tritonserver's (argv[0] "tritonserver") until killed."""
    import subprocess
    import sys

    return subprocess.Popen(["tritonserver", "-c", "import time; time.sleep(120)", *args], executable=sys.executable,
                            cwd=cwd)


def test_servers_of_a_repository_are_found_with_their_model_control_mode(tmp_path):
    import time

    from trackserve.serving.server import servers_of

    (tmp_path / "repo").mkdir()
    (tmp_path / "other").mkdir()
    polling = _fake_tritonserver(tmp_path, "--model-repository", "repo", "--model-control-mode=poll")
    default = _fake_tritonserver(tmp_path / "other", "--model-repository=../repo")
    elsewhere = _fake_tritonserver(tmp_path, f"--model-repository={tmp_path / 'other'}")
    try:
        deadline = time.monotonic() + 10  # (each process is a tritonserver once it has started)
        while ((len(servers_of(tmp_path / "repo")) < 2 or not servers_of(tmp_path / "other"))
               and time.monotonic() < deadline):
            time.sleep(0.05)
        assert servers_of(tmp_path / "repo") == sorted([(polling.pid, "poll"), (default.pid, "none")])
        assert servers_of(tmp_path / "other") == [(elsewhere.pid, "none")]
        assert servers_of(tmp_path / "nothing") == []
    finally:
        for process in (polling, default, elsewhere):
            process.kill()
            process.wait()


def test_triton_repo_says_when_a_running_server_does_not_take_the_new_models(tiny_bundle, tmp_path, capsys):
    import time

    from trackserve.serving.server import servers_of

    output = tmp_path / "repo"
    assert main(["triton-repo", str(output), "--bundle", str(tiny_bundle)]) == 0
    assert "note" not in capsys.readouterr().err
    server = _fake_tritonserver(tmp_path, f"--model-repository={output}")
    try:
        deadline = time.monotonic() + 10
        while not servers_of(output) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert main(["triton-repo", str(output), "--bundle", str(tiny_bundle), "--overwrite"]) == 0
        err = capsys.readouterr().err
    finally:
        server.kill()
        server.wait()
    assert f"note: a running tritonserver (pid {server.pid}) serves {output}; it does not reload models" in err
    assert "until it is started again" in err
