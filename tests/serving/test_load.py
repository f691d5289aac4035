"""The server under load: 16 concurrent clients, and a server killed in the middle of it."""

from __future__ import annotations

import threading
from pathlib import Path
import time

import numpy as np
import pytest

from trackserve.errors import ServingError
from trackserve.serving.client import TritonClient
from trackserve.serving.server import ServerSettings, TritonServer, free_port, process_group_members

from ..conftest import SAMPLE_EVENT
from .conftest import require_triton

CLIENTS = 16
LOAD_SECONDS = 30.0


def _events(sample_features, tiny_pipeline):
    slices = [np.ascontiguousarray(sample_features[i * 300 : i * 300 + 200 + 50 * (i % 5)]) for i in range(12)]
    return [(features, tiny_pipeline.run(features).labels) for features in slices]


def _client_loop(url, model, events, stop, outcomes, index, failed=None):
    """Send events until ``stop``; record ("ok", labels right?) or ("error", message) per request."""
    with TritonClient(url, model=model, timeout_s=60) as client:
        k = index
        while not stop.is_set():
            features, expected = events[k % len(events)]
            k += 1
            try:
                labels = client.infer(features, request_id=f"{index}-{k}")
            except ServingError as error:
                outcomes.append(("error", str(error)))
                if failed is not None:
                    failed.set()
                time.sleep(0.05)  # a dead server refuses at once: do not spin
                continue
            except Exception as error:  # anything but ServingError is a client bug
                outcomes.append(("unexpected", repr(error)))
                continue
            outcomes.append(("ok", bool(np.array_equal(labels, expected))))


@pytest.mark.slow
def test_sixteen_clients_for_thirty_seconds_all_answered(triton_server, tiny_pipeline, sample_features):
    events = _events(sample_features, tiny_pipeline)
    stop = threading.Event()
    outcomes: list[list] = [[] for _ in range(CLIENTS)]
    threads = [
        threading.Thread(target=_client_loop,
                         args=(triton_server.grpc_url, ("exatrkx", "exatrkx_ensemble")[i % 2], events, stop, outcomes[i], i))
        for i in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    time.sleep(LOAD_SECONDS)
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a client is still waiting for an answer"
    everything = [outcome for per_client in outcomes for outcome in per_client]
    assert all(per_client for per_client in outcomes), "every client got answers"
    failures = [o for o in everything if o != ("ok", True)]
    assert not failures, failures[:5]
    assert len(everything) >= CLIENTS


@pytest.mark.slow
def test_a_killed_server_gives_a_clear_error_per_request_and_a_restart_serves(served_repository, tiny_pipeline,
                                                                               sample_features):
    require_triton()
    events = _events(sample_features, tiny_pipeline)
    settings = ServerSettings(http_port=free_port(), grpc_port=free_port(), metrics_port=None, startup_timeout_s=240)
    server = TritonServer(served_repository.path, settings).start()
    stop = threading.Event()
    outcomes: list[list] = [[] for _ in range(CLIENTS)]
    failed = [threading.Event() for _ in range(CLIENTS)]
    threads = [
        threading.Thread(target=_client_loop, args=(server.grpc_url, "exatrkx", events, stop, outcomes[i], i, failed[i]))
        for i in range(CLIENTS)
    ]
    try:
        for thread in threads:
            thread.start()
        time.sleep(3)
        server.kill()
        # the killed instances' shared-memory regions are removed with them
        assert not list(Path("/dev/shm").glob(server._shm_prefix + "*"))
        for event in failed:
            event.wait(timeout=60)
        stop.set()
        for thread in threads:
            thread.join(timeout=90)
        assert not any(thread.is_alive() for thread in threads), "a request hung after the server died"
        everything = [outcome for per_client in outcomes for outcome in per_client]
        assert [o for o in everything if o[0] == "unexpected"] == []
        assert ("ok", False) not in everything
        assert any(o == ("ok", True) for o in everything), "requests were answered before the kill"
        errors = [o[1] for o in everything if o[0] == "error"]
        assert len(errors) >= CLIENTS, "every client saw the server go"
        for message in errors:
            assert f"the server at {server.grpc_url} did not answer" in message, message

        server.start()
        with TritonClient(server.grpc_url) as client:
            features, expected = events[0]
            np.testing.assert_array_equal(client.infer(features), expected)
    finally:
        stop.set()
        server.stop()


@pytest.mark.parametrize("text", ["timed out", "Deadline Exceeded", "read timeout=3"])
def test_a_request_that_ran_out_of_time_is_not_called_a_refusal(text):
    from trackserve.serving.client import describe_failure

    assert describe_failure(RuntimeError(text), "127.0.0.1:8000", "exatrkx") == \
        f"the server at 127.0.0.1:8000 did not answer in time ({text})"
    assert "refused the request" in describe_failure(RuntimeError("bad input"), "127.0.0.1:8000", "exatrkx")


@pytest.mark.parametrize("text", ["[StatusCode.NOT_FOUND] Request for unknown model: 'exatrkx' has no available versions",
                                  "Request for unknown model: 'exatrkx' is not ready"])
def test_a_model_being_unloaded_is_not_called_a_refusal(text):
    # a stopping server (or a reload in poll mode) answered so, reported as the model refusing the request
    from trackserve.serving.client import describe_failure

    assert describe_failure(RuntimeError(text), "127.0.0.1:8001", "exatrkx") == (
        "model 'exatrkx' at 127.0.0.1:8001 is not available: the server is stopping, or the model is being unloaded "
        f"or reloaded ({text})")


class _CancelledByTheServer(Exception):
    """What tritonclient.grpc raises for a request in flight when the server stops."""

    def message(self):
        return "CANCELLED"

    def status(self):
        return "StatusCode.CANCELLED"


def test_a_request_the_stopping_server_cancelled_is_not_called_a_refusal():
    # QA, 2026-12-02: "model 'exatrkx' ... refused the request: [StatusCode.CANCELLED] CANCELLED"
    from trackserve.serving.client import describe_failure

    assert describe_failure(_CancelledByTheServer(), "127.0.0.1:8001", "exatrkx") == (
        "the server at 127.0.0.1:8001 cancelled the request: is it stopping? (CANCELLED)")
    assert describe_failure(RuntimeError("[StatusCode.CANCELLED] CANCELLED"), "127.0.0.1:8001", "exatrkx").startswith(
        "the server at 127.0.0.1:8001 cancelled the request")
    # a message that merely holds the word is the model's own answer
    assert "refused the request" in describe_failure(RuntimeError("cancelled hits are not allowed"), "127.0.0.1:8001",
                                                     "exatrkx")


def test_the_async_http_clients_lost_connections_are_not_called_refusals():
    # aiohttp's own errors (the asynchronous HTTP client's) name no connection in their text
    from trackserve.serving.client import describe_failure

    class ClientConnectionError(Exception):  # the aiohttp hierarchy, by name
        pass

    class ServerDisconnectedError(ClientConnectionError):
        pass

    class ClientOSError(ClientConnectionError, OSError):
        pass

    for error in (ServerDisconnectedError("Server disconnected"),
                  ClientOSError(None, "Can not write request body for http://127.0.0.1:8000/v2/models/exatrkx/infer"),
                  ConnectionResetError("peer gone")):
        described = describe_failure(error, "127.0.0.1:8000", "exatrkx", "http")
        assert described.startswith("the server at 127.0.0.1:8000 did not answer (") and "is it running?" in described
    aiohttp = pytest.importorskip("aiohttp")
    assert "did not answer" in describe_failure(aiohttp.ServerDisconnectedError(), "127.0.0.1:8000", "exatrkx", "http")


def test_a_host_that_does_not_resolve_or_a_metrics_port_is_not_called_a_refusal():
    # Both were "model 'exatrkx' ... refused the request" (the texts are tritonclient's, gRPC and HTTP).
    from trackserve.serving.client import describe_failure

    class GrpcError(Exception):
        def message(self):
            return "errors resolving nosuchhost.invalid:8001: Domain name not found"

        def status(self):
            return "StatusCode.UNAVAILABLE"

    assert describe_failure(GrpcError(), "nosuchhost.invalid:8001", "exatrkx", "grpc").startswith(
        "the host of nosuchhost.invalid:8001 does not resolve (errors resolving")
    assert describe_failure(OSError(-2, "Name or service not known"), "nosuchhost.invalid:8000", "exatrkx",
                            "http").endswith("): check the address")
    described = describe_failure(RuntimeError("Parse error at offset 0: The document is empty."), "127.0.0.1:8002",
                                 "exatrkx", "http")
    assert described.startswith("the server at 127.0.0.1:8002 does not answer as a Triton HTTP endpoint")
    assert "metrics port (8002 by default)? give its HTTP port" in described


def test_stubs_that_outlive_a_killed_server_are_ended_and_stop_returns(served_repository):
    # A model stub stuck when the server dies (here: stopped) kept its log pipe open: stop()
    # blocked for ever closing it, and the stub lived on as an orphan.
    import os
    import signal

    require_triton()
    settings = ServerSettings(http_port=free_port(), grpc_port=free_port(), metrics_port=None, startup_timeout_s=240)
    server = TritonServer(served_repository.path, settings).start()
    try:
        stubs = sorted(server.model_processes())
        assert stubs, "the server runs its models in stub processes of its group"
        for pid in stubs:
            os.kill(pid, signal.SIGSTOP)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=30)
        finished = threading.Event()
        threading.Thread(target=lambda: (server.stop(), finished.set()), daemon=True).start()
        assert finished.wait(timeout=60), "stop() hung on the orphaned stubs"
        assert process_group_members(server.process.pid) == set()
        assert not list(Path("/dev/shm").glob(server._shm_prefix + "*"))
    finally:
        for pid in process_group_members(server.process.pid):
            os.kill(pid, signal.SIGKILL)


def test_a_grpc_client_at_an_http_port_is_told_so():
    from trackserve.serving.client import describe_failure

    # what grpcio says when the port answers HTTP/1 (Triton's HTTP port, say)
    text = ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:8000: Failed parsing HTTP/2 "
            "(Expected SETTINGS frame as the first frame, got frame type 79)")
    described = describe_failure(RuntimeError(text), "127.0.0.1:8000", "exatrkx")
    assert described.startswith("the server at 127.0.0.1:8000 answers HTTP, not gRPC")
    assert "give its gRPC port (8001 by default) or use --protocol http" in described


def test_an_http_client_at_a_grpc_port_and_a_closed_connection_are_told_so():
    from trackserve.serving.client import describe_failure

    # what geventhttpclient says when the port answers HTTP/2 (Triton's gRPC port, say)
    described = describe_failure(RuntimeError("('Expected HTTP/, RTSP/ or ICE/', 8)"), "127.0.0.1:8001", "exatrkx",
                                 protocol="http")
    assert described.startswith("the server at 127.0.0.1:8001 does not answer HTTP: that is a gRPC port")
    # a server killed while the request was in flight: not a refusal by the model
    assert describe_failure(RuntimeError("connection closed."), "127.0.0.1:8000", "exatrkx", protocol="http") == \
        "the server at 127.0.0.1:8000 did not answer (connection closed.): is it running?"


def test_a_grpc_client_at_tritons_http_port_is_told_so(triton_server, capsys):
    """Triton's HTTP server closes a gRPC connection ("Socket closed"): the port is probed."""
    from trackserve.cli import main

    http_address = triton_server.http_url
    assert main(["client", str(SAMPLE_EVENT), "--url", http_address, "--protocol", "grpc", "--no-labels"]) != 0
    assert f"the server at {http_address} answers HTTP, not gRPC" in capsys.readouterr().err


def test_aiohttps_cannot_connect_is_called_a_server_that_did_not_answer():
    from trackserve.serving.client import describe_failure

    text = "Cannot connect to host 127.0.0.1:18299 ssl:default [Connect call failed ('127.0.0.1', 18299)]"
    assert describe_failure(RuntimeError(text), "127.0.0.1:18299", "exatrkx").startswith(
        "the server at 127.0.0.1:18299 did not answer")
