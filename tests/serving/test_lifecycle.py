"""Starting and stopping the server: missing pieces, taken ports, a model that fails, ``trackserve serve`` and signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trackserve.errors import BackendUnavailableError, InputError, ServingError
from trackserve.serving.client import TritonClient
from trackserve.serving.repository import RepositoryOptions, write_repository
from trackserve.serving.server import (ServerSettings, TritonServer, config_parse_errors, find_triton, free_port,
                                       load_failures)

from .conftest import require_triton


@pytest.fixture(scope="module")
def custom_repository(tiny_bundle, tmp_path_factory):
    return write_repository(tiny_bundle, tmp_path_factory.mktemp("custom") / "models",
                            RepositoryOptions(intra_op_threads=1, graph_threads=1))


def test_a_missing_binary_is_named(tmp_path):
    with pytest.raises(BackendUnavailableError, match="tritonserver binary .*/nope/tritonserver does not exist"):
        find_triton(tmp_path / "nope" / "tritonserver")
    fake = tmp_path / "bin" / "tritonserver"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    with pytest.raises(BackendUnavailableError, match="Python backend of .* is incomplete: .* not found \\(a "
                                                      "tritonserver binary sits in <install>/bin beside"):
        find_triton(fake)
    with pytest.raises(BackendUnavailableError, match="tritonserver binary .*/bin is a directory: give the binary itself"):
        find_triton(tmp_path / "bin")
    fake.chmod(0o644)
    with pytest.raises(BackendUnavailableError, match="is not executable"):
        find_triton(fake)


def test_the_environment_puts_this_python_first():
    require_triton()
    installation = find_triton()
    env = installation.environment({"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/lib"})
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    libraries = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert libraries[0].endswith("nvidia_pytriton.libs") and libraries[-1] == "/opt/lib"
    assert installation.stub.parent.name == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_the_environment_holds_the_instances_thread_pools_to_one_unless_set():
    require_triton()
    installation = find_triton()
    env = installation.environment({"PATH": "/usr/bin", "OPENBLAS_NUM_THREADS": "3"})
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    assert env["OPENBLAS_NUM_THREADS"] == "3"


def test_a_taken_port_is_refused_before_starting(custom_repository):
    require_triton()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = TritonServer(custom_repository.path, ServerSettings(http_port=free_port(), grpc_port=port, metrics_port=None))
        with pytest.raises(InputError, match=f"grpc port 127.0.0.1:{port} is already in use.*--grpc-port"):
            server.start()
    assert server.process is None


@pytest.mark.parametrize("settings, message", [
    (dict(http_port=70000), "the http port must be an integer in 1..65535, got 70000"),
    (dict(grpc_port=0), "the grpc port must be an integer in 1..65535, got 0"),
    (dict(metrics_port=-1), "the metrics port must be an integer in 1..65535, got -1"),
    (dict(startup_timeout_s=float("nan")), "startup timeout must be a finite number of seconds > 0, got nan"),
    (dict(startup_timeout_s=-5), "startup timeout must be a finite number of seconds > 0, got -5"),
    (dict(host="::1"), "IPv6 addresses are not supported"),
    (dict(stop_timeout_s=3e9), "stop timeout 3e+09 s is above 2147483647 s"),
    # These went to tritonserver: wrong endpoints printed, or a readiness wait that timed out.
    (dict(extra_args=("--grpc-port=18007",)), "'--grpc-port=18007' sets what serve manages itself: use --grpc-port"),
    (dict(extra_args=("--log-info=false", "--http-port", "5")), "'--http-port' sets what serve manages itself"),
    (dict(extra_args=("--allow-http=false",)), "serve waits for readiness over HTTP"),
    (dict(extra_args=("--model-control-mode=explicit",)), "in explicit mode none is (modes none and poll are"),
    (dict(extra_args=("--model-control-mode", "EXPLICIT")), "in explicit mode none is"),
    (dict(extra_args=("--grpc-p=18007",)), "'--grpc-p=18007' sets what serve manages itself: use --grpc-port"),  # getopt
    (dict(extra_args=("--backend-config=python,shm-region-prefix-name=mine",)), "shared-memory regions to remove"),
])
def test_bad_server_settings_are_named(settings, message):
    with pytest.raises(InputError) as error:
        ServerSettings(**settings)
    assert message in str(error.value)


def test_a_host_that_does_not_resolve_is_named(custom_repository):
    require_triton()
    server = TritonServer(custom_repository.path, ServerSettings(host="no.such.host.invalid", http_port=free_port(),
                                                                  grpc_port=free_port(), metrics_port=None))
    with pytest.raises(InputError, match="cannot bind host 'no.such.host.invalid': the name does not resolve"):
        server.start()
    assert server.process is None


def test_a_python_model_without_its_code_is_refused_before_starting(custom_repository, tmp_path):
    require_triton()
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(custom_repository.path, broken)
    (broken / "exatrkx" / "1" / "model.py").unlink()  # Triton would wait for it until the startup timeout
    server = TritonServer(broken, ServerSettings(http_port=free_port(), grpc_port=free_port(), metrics_port=None))
    with pytest.raises(InputError, match="model exatrkx in .* is a Python-backend model without its <version>/model.py"):
        server.start()
    assert server.process is None


def test_an_option_tritonserver_refuses_is_named_not_its_usage_text(custom_repository):
    require_triton()
    server = TritonServer(custom_repository.path, ServerSettings(http_port=free_port(), grpc_port=free_port(),
                                                                  metrics_port=None, extra_args=("--bogus-flag",)))
    with pytest.raises(ServingError, match="it refused its command line: .*unrecognized option '--bogus-flag'"):
        server.start()
    assert not server.running


def test_not_a_repository_is_refused(tmp_path):
    require_triton()
    with pytest.raises(InputError, match="holds no model folder with a config.pbtxt"):
        TritonServer(tmp_path, ServerSettings(http_port=free_port(), grpc_port=free_port(), metrics_port=None)).start()
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="the model repository .*file is a file, not a directory"):
        TritonServer(tmp_path / "file", ServerSettings(http_port=free_port(), grpc_port=free_port())).start()


def test_a_repository_path_with_whitespace_is_refused_before_starting(custom_repository, tmp_path):
    require_triton()
    import shutil

    spaced = tmp_path / "my repo"
    shutil.copytree(custom_repository.path, spaced)  # Triton's Python stubs could not start from it
    server = TritonServer(spaced, ServerSettings(http_port=free_port(), grpc_port=free_port(), metrics_port=None))
    with pytest.raises(InputError, match="holds whitespace, which Triton's Python backend cannot start models from"):
        server.start()
    assert server.process is None
    shell = tmp_path / "repo$(x)"
    shutil.copytree(custom_repository.path, shell)
    server = TritonServer(shell, ServerSettings(http_port=free_port(), grpc_port=free_port(), metrics_port=None))
    with pytest.raises(InputError, match=r"holds \$ \( \), which Triton's Python backend cannot start models from"):
        server.start()
    assert server.process is None


def test_an_address_this_machine_lacks_is_not_called_a_taken_port():
    from trackserve.serving.server import port_is_free

    with pytest.raises(InputError, match="cannot bind 192.0.2.1: this machine has no such address"):
        port_is_free("192.0.2.1", free_port())  # TEST-NET-1: never a local address


def test_the_environment_puts_this_trackserve_first_on_the_python_path():
    require_triton()
    import trackserve

    env = find_triton().environment({"PATH": "/usr/bin", "PYTHONPATH": "/elsewhere"})
    checkout = str(Path(trackserve.__file__).resolve().parents[1])
    assert env["PYTHONPATH"].split(os.pathsep) == [checkout, "/elsewhere"]


def test_a_model_that_cannot_load_stops_startup_with_its_reason(custom_repository, tmp_path):
    require_triton()
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(custom_repository.path, broken)
    shutil.rmtree(broken / "exatrkx" / "bundle")
    server = TritonServer(broken, ServerSettings(http_port=free_port(), grpc_port=free_port(), metrics_port=None))
    with pytest.raises(ServingError, match="exited with status 1 before it was ready") as error:
        server.start()
    message = str(error.value)
    assert "models that did not load:\n  exatrkx (version 1): BundleError: bundle " in message
    assert "exatrkx/bundle does not exist" in message
    assert "\\n" not in message and "At:" not in message  # newlines restored, the backend's frames left out
    assert not server.running


def test_load_failures_are_read_from_the_log_one_per_model_with_newlines_restored():
    def logged(message):  # as Triton writes a message: quoted, with newlines, quotes and backslashes escaped
        escaped = message.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'E1202 10:02:29.750607 8405 model_lifecycle.cc:642] "{escaped}"'

    reason = 'BundleError: invalid bundle /r/b: 1 problem(s):\n  - networks.gnn.file: "gnn.onnx" in C:\\x'
    frames = "\n\nAt:\n  /work/trackserve/serving/backend.py(160): _repository_copy_advice\n"
    lines = [
        logged(f"ERROR: Failed to create instance: {reason}{frames}"),
        logged(f"failed to load 'exatrkx' version 1: Internal: {reason}{frames}"),
        logged("failed to load 'exatrkx' version 1: Internal: again"),
        logged("failed to load 'embed' version 3: Unavailable: no GPU"),
        logged("something else"),
    ]
    assert "\n" not in "".join(lines)
    assert load_failures(lines) == [
        "  exatrkx (version 1): " + reason.replace("\n", "\n    "),
        "  embed (version 3): Unavailable: no GPU",
    ]
    assert load_failures(lines[-1:]) == []


def _serve(repository, http, grpc, extra=()):
    return subprocess.Popen(
        [sys.executable, "-m", "trackserve.cli", "serve", str(repository), "--http-port", str(http),
         "--grpc-port", str(grpc), "--no-metrics", "--quiet", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_prints_endpoints_and_stops_cleanly_on_a_signal(custom_repository, tiny_pipeline, sample_features, signum):
    require_triton()
    http, grpc = free_port(), free_port()
    process = _serve(custom_repository.path, http, grpc)
    try:
        lines = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not any("stop with Ctrl-C" in line for line in lines):
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
        out = "".join(lines)
        assert "Triton is ready after" in out, out + process.stderr.read()
        assert f"127.0.0.1:{grpc}" in out and f"http://127.0.0.1:{http}" in out
        with TritonClient(f"127.0.0.1:{grpc}") as client:
            assert client.infer(sample_features[:300]).tolist() == tiny_pipeline.run(sample_features[:300]).labels.tolist()
        process.send_signal(signum)
        time.sleep(0.5)
        if process.poll() is None:  # a second signal while stopping is noted, and the stop goes on
            process.send_signal(signum)
        assert process.wait(timeout=60) == 0
        err = process.stderr.read()
        assert f"{signal.Signals(signum).name} received, stopping the server" in err
        assert "Traceback" not in err
        assert "stopped (tritonserver status 0)" in err
        with TritonClient(f"127.0.0.1:{grpc}", timeout_s=5) as client:
            assert not client.is_ready()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("status, killed, ready, code, message", [
    (0, False, True, 0, "stopped (tritonserver status 0)"),
    (-9, True, True, 1, "did not stop within --stop-timeout 2 s and was killed (status -9): requests still in flight "
                        "were dropped"),
    (1, False, True, 1, "tritonserver stopped with status 1: its exit timeout (--stop-timeout 2 s) ran out with "
                        "requests in flight, which may not all have been answered"),
    (-15, False, False, 0, "stopped while the models were loading, before the server was ready (tritonserver status "
                           "-15); no request had been served"),
])
def test_serve_says_when_the_stop_timeout_cut_requests_short(custom_repository, monkeypatch, capsys, status, killed,
                                                             ready, code, message):
    from trackserve.cli import main
    from trackserve.serving.server import TritonServer

    seen = {}

    def start(self):
        seen["stop_timeout"] = self.settings.stop_timeout_s
        if not ready:
            raise KeyboardInterrupt  # Ctrl-C while the models load
        self.startup_seconds = 0.1
        return self

    def wait(self, timeout=None):
        raise KeyboardInterrupt  # Ctrl-C while serving

    def stop(self, timeout_s=None):
        self.killed = killed
        return status

    monkeypatch.setattr(TritonServer, "start", start)
    monkeypatch.setattr(TritonServer, "endpoints", lambda self: {})
    monkeypatch.setattr(TritonServer, "wait", wait)
    monkeypatch.setattr(TritonServer, "stop", stop)
    assert main(["serve", str(custom_repository.path), "--stop-timeout", "2", "--quiet"]) == code
    assert seen["stop_timeout"] == 2.0
    assert message in capsys.readouterr().err


def test_serve_watches_the_model_processes_running_when_the_server_became_ready(custom_repository, monkeypatch,
                                                                               capsys):
    """A stub killed right after readiness is announced (before ``serve`` looked at the model
    processes) must still stop the server: the processes are taken when it becomes ready."""
    from trackserve.cli import main
    from trackserve.serving.server import TritonServer

    waits = []

    def start(self):
        self.startup_seconds = 0.1
        self.ready_model_processes = {101, 102}
        return self

    def wait(self, timeout=None):
        waits.append(timeout)
        if len(waits) > 3:
            raise KeyboardInterrupt  # the stub's death was missed
        return None

    monkeypatch.setattr(TritonServer, "start", start)
    monkeypatch.setattr(TritonServer, "endpoints", lambda self: {})
    monkeypatch.setattr(TritonServer, "model_processes", lambda self: {101})  # 102 died as readiness was announced
    monkeypatch.setattr(TritonServer, "wait", wait)
    stops = []

    def stop(self, timeout_s=None):  # the dead process's model never unloads: the server is killed
        stops.append(timeout_s)
        self.killed = True
        return -9

    monkeypatch.setattr(TritonServer, "stop", stop)
    assert main(["serve", str(custom_repository.path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "a model process of the server died (pid 102;" in err
    # killed after a few seconds, not Triton's whole exit timeout (--stop-timeout, 30 s by default)
    assert stops[0] == 5.0 and "trackserve serve: server stopped (killed after 5 s: the dead process's model never " \
        "unloads)" in err


def _serve_then_kill(repository, choose, stop_timeout: float | None = None) -> tuple[int, str]:
    """Start ``trackserve serve`` (with ``--stop-timeout`` when given), wait until it is ready,
    SIGKILL the process ``choose(serve_pid)`` names, and return the killed pid and serve's
    stderr once it exited with status 1 (within 60 s)."""
    process = _serve(repository, free_port(), free_port(),
                     () if stop_timeout is None else ("--stop-timeout", str(stop_timeout)))
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and "stop with Ctrl-C" not in (line := process.stdout.readline()):
            assert line, process.stderr.read()
        victim = choose(process.pid)
        os.kill(victim, signal.SIGKILL)
        assert process.wait(timeout=60) == 1
        err = process.stderr.read()
        assert "Traceback" not in err
        return victim, err
    finally:
        if process.poll() is None:
            process.kill()


def _first(pids: list[int], what: str) -> int:
    assert pids, what
    return pids[0]


@pytest.mark.slow
def test_serve_stops_with_status_1_when_a_model_process_dies(custom_repository):
    # Triton kept reporting the model ready while every request to it failed
    require_triton()
    stub, err = _serve_then_kill(custom_repository.path, lambda serve: _first(  # as the out-of-memory killer would
        [pid for pid in _children_of_servers(serve) if "stub" in _command(pid)], "the model runs in a stub process"),
        stop_timeout=600)
    assert f"a model process of the server died (pid {stub}, model exatrkx (instance exatrkx_0_0);" in err
    assert "start it again" in err
    assert "trackserve serve: server stopped (" in err  # and how it ended


def test_serve_names_a_killed_tritonserver(custom_repository):
    require_triton()
    _, err = _serve_then_kill(custom_repository.path, lambda serve: _first(
        [pid for pid in _children_of(serve) if "tritonserver" in _command(pid)], "serve runs tritonserver"))
    assert "trackserve serve: tritonserver was killed by SIGKILL, so the server is down" in err


def _children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError):
                continue
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _children_of_servers(serve_pid: int) -> list[int]:
    """The processes whose parent is a tritonserver started by the ``serve`` process ``serve_pid``."""
    servers = [pid for pid in _children_of(serve_pid) if "tritonserver" in _command(pid)]
    return [child for server in servers for child in _children_of(server)]


def test_another_server_that_takes_the_port_first_is_not_taken_for_this_one(custom_repository, monkeypatch):
    """Two servers started at the same instant: the one that loses the port must not see the
    winner's readiness as its own (it fails, naming the other server)."""
    require_triton()
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import trackserve.serving.server as server_module

    class OtherServer(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"name": "triton", "version": "2.51.0"}).encode() if self.path == "/v2" else b""
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    other = ThreadingHTTPServer(("127.0.0.1", 0), OtherServer)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        # the other server took the port after this one checked it (the race)
        monkeypatch.setattr(server_module, "port_is_free", lambda host, port: True)
        server = TritonServer(custom_repository.path, ServerSettings(http_port=other.server_address[1],
                                                                      grpc_port=free_port(), metrics_port=None,
                                                                      startup_timeout_s=60))
        with pytest.raises(ServingError, match="another server \\(id 'triton'\\) answered on 127.0.0.1:"):
            server.start()
        assert not server.running
    finally:
        other.shutdown()
        other.server_close()


def test_this_server_answers_with_its_own_id(custom_repository):
    require_triton()
    import json
    import urllib.request

    with TritonServer(custom_repository.path, ServerSettings(http_port=free_port(), grpc_port=free_port(),
                                                             metrics_port=None)) as server:
        with urllib.request.urlopen(f"http://{server.http_url}/v2", timeout=5) as answer:
            assert json.loads(answer.read())["name"] == server.server_id
        assert server.server_id.startswith("trackserve-")
    given = TritonServer(custom_repository.path, ServerSettings(extra_args=("--id", "mine")))
    assert given.server_id == "mine" and "--id=mine" not in given.command(Path("/b"))
    # tritonserver takes the last --id, an empty one too
    for extra, expected in ((("--id=a", "--id=b"), "b"), (("--id=",), ""), (("--id", "a", "--id=c"), "c")):
        server = TritonServer(custom_repository.path, ServerSettings(extra_args=extra))
        assert server.server_id == expected and not any(arg.startswith("--id=trackserve") for arg in
                                                        server.command(Path("/b")))


def test_a_server_is_not_started_with_numpy_2(custom_repository, monkeypatch):
    require_triton()
    import numpy

    from trackserve.errors import BackendUnavailableError

    monkeypatch.setattr(numpy, "__version__", "2.4.6")  # as the gpu extra's cupy 14 installs it
    server = TritonServer(custom_repository.path, ServerSettings(http_port=free_port(), grpc_port=free_port(),
                                                                 metrics_port=None))
    with pytest.raises(BackendUnavailableError, match="needs numpy < 2"):
        server.start()
    assert server.process is None


def test_free_port_never_hands_out_a_port_twice(monkeypatch):
    """The kernel may give a just-closed port again: two calls for one server's HTTP and gRPC
    ports once agreed (CI: 'the server's ports must differ')."""
    import trackserve.serving.server as server_module

    picks = iter([47001, 47001, 47001, 47002])

    class Socket:
        def __init__(self, *args):
            self.port = None

        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

        def bind(self, address):
            self.port = next(picks)

        def getsockname(self):
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(server_module, "_PORTS_GIVEN", set())
    monkeypatch.setattr(server_module.socket, "socket", Socket)
    assert [free_port(), free_port()] == [47001, 47002]


@pytest.mark.parametrize("extra", [
    ("--model-control-mode=poll", "--repository-poll-secs=5"),  # hot reload of the repository
    ("--model-control-mode", "none"),
    ("--metrics-address=0.0.0.0",),  # metrics for Prometheus elsewhere, HTTP and gRPC on loopback
    ("--backend-config=python,shm-default-byte-size=1048576",),
    ("--log-info=false", "--exit-on-error=false", "--strict-readiness=false"),
])
def test_triton_arguments_serve_does_not_manage_are_passed_on(extra):
    assert ServerSettings(extra_args=extra).extra_args == extra


def test_the_model_control_mode_of_the_extra_arguments():
    from trackserve.serving.server import model_control_mode

    assert model_control_mode([]) == "none"
    assert model_control_mode(["--model-control-mode=poll"]) == "poll"
    assert model_control_mode(["--model-control-mode", "POLL", "--repository-poll-secs=2"]) == "poll"
    assert model_control_mode(["--model-con=poll"]) == "poll"  # getopt's abbreviation
    assert model_control_mode(["--model-control-mode=poll", "--model-control-mode=none"]) == "none"


@pytest.mark.slow
def test_serve_in_poll_mode_keeps_serving_a_model_triton_reloads(custom_repository, tiny_pipeline, sample_features,
                                                                 tmp_path):
    # Triton reloading a changed model ends its old process: serve took that for a death, stopped
    # the server and blamed the memory.
    require_triton()
    import shutil

    repository = tmp_path / "repository"
    shutil.copytree(custom_repository.path, repository)
    grpc = free_port()
    process = _serve(repository, free_port(), grpc,
                     ("--triton-arg=--model-control-mode=poll", "--triton-arg=--repository-poll-secs=1"))
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and "stop with Ctrl-C" not in (line := process.stdout.readline()):
            assert line, process.stderr.read()
        stubs = {pid for pid in _children_of_servers(process.pid) if "stub" in _command(pid)}
        code = next(repository.glob("*/1/model.py"))  # a changed file of a version: Triton reloads the model
        code.write_text(code.read_text() + "\n# changed\n")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and stubs & set(_children_of_servers(process.pid)):
            time.sleep(0.5)  # until the old stub has ended (poll mode also starts short-lived stubs of its own)
        assert not stubs & set(_children_of_servers(process.pid)), "Triton did not reload the model"
        time.sleep(3)  # serve's watch (every second) has seen it
        assert process.poll() is None
        with TritonClient(f"127.0.0.1:{grpc}") as client:
            assert client.infer(sample_features[:300]).tolist() == tiny_pipeline.run(sample_features[:300]).labels.tolist()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        err = process.stderr.read()
        assert "with --model-control-mode=poll Triton reloads changed models" in err and "died" not in err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_config_triton_cannot_read_is_named_with_its_line(tmp_path):
    pytest.importorskip("tritonclient.grpc")
    good, bad = tmp_path / "good" / "config.pbtxt", tmp_path / "bad" / "config.pbtxt"
    for path in (good, bad):
        path.parent.mkdir()
    good.write_text('name: "good"\nbackend: "python"\nmax_batch_size: 0\n')
    bad.write_text('name: "bad"\nbackend: "python"\nmax_batch_sise: 0\n')
    lines = [f'E1202 10:05:27.603492 12801 model_repository_manager.cc:1460] "Poll failed for model directory '
             f"'{path.parent.name}': failed to read text proto from {path}\"" for path in (good, bad)]
    assert config_parse_errors(lines) == [
        f'  {bad} line 3, column 1: Message type "inference.ModelConfig" has no field named "max_batch_sise".']


def test_a_stop_inside_the_http_clients_greenlets_is_not_printed_by_gevent(capfd):
    # QA, 2026-12-02: SIGTERM during `trackserve client --protocol http` printed gevent's traceback
    # and "... failed with Terminated" before the command's one-line report (gRPC did not)
    pytest.importorskip("tritonclient.http")
    import gevent

    from trackserve.cli import Terminated
    from trackserve.serving.client import client_module

    client_module("http")

    def stopped():
        raise Terminated()

    gevent.spawn(stopped)
    with pytest.raises(Terminated):  # still handed on to the main code, which reports it
        gevent.sleep(0.05)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "failed with" not in err, err
