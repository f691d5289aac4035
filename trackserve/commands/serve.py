"""``trackserve serve``: run a real Triton Inference Server on a model repository.

Starts ``tritonserver`` (the one bundled in nvidia-pytriton, or ``--tritonserver``),
waits until every model is ready, prints the endpoints, forwards the server's log and
stops it cleanly on Ctrl-C or SIGTERM. See :mod:`trackserve.serving.server`.
"""

from __future__ import annotations

import argparse
import signal
import sys

ORDER = 61


def register(subparsers) -> None:
    """Add the ``serve`` subcommand."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a model repository with Triton Inference Server",
        description=(
            "Start Triton Inference Server on a model repository written by `trackserve triton-repo`, "
            "wait until it is ready, print its endpoints and forward its log; Ctrl-C or SIGTERM stops it "
            "cleanly (requests in flight are finished first, for at most --stop-timeout seconds; exit 1 if that time ran "
            "out with requests in flight). The repository's path may not hold whitespace or shell characters such as "
            "( or $ (Triton's Python backend cannot start models from it)."
        ),
    )
    parser.add_argument("repository", metavar="REPOSITORY", help="model repository directory")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: %(default)s, loopback only; 0.0.0.0 for every interface)")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP port (default: %(default)s)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default: %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default: %(default)s)")
    parser.add_argument("--no-metrics", action="store_true", help="do not serve metrics")
    parser.add_argument("--tritonserver", default=None, metavar="PATH",
                        help="tritonserver binary to run (default: the one in the nvidia-pytriton wheel)")
    parser.add_argument("--startup-timeout", type=float, default=120.0, metavar="S",
                        help="seconds to wait for the server to be ready (default: %(default)s)")
    parser.add_argument("--stop-timeout", type=float, default=30.0, metavar="S",
                        help="on Ctrl-C or SIGTERM, seconds the requests in flight have to finish before the server "
                             "is killed (default: %(default)s)")
    parser.add_argument("--log-verbose", type=int, default=0, metavar="N", help="Triton's --log-verbose level")
    parser.add_argument("--quiet", action="store_true", help="do not forward the server's log")
    parser.add_argument("--triton-arg", action="append", default=[], metavar="ARG",
                        help="extra tritonserver argument, e.g. --triton-arg=--log-info=false (repeatable); to serve the "
                             "models that load while others fail, give both --triton-arg=--exit-on-error=false and "
                             "--triton-arg=--strict-readiness=false (readiness otherwise waits for every model)")
    parser.set_defaults(handler=run)


#: How often (seconds) ``serve`` checks that the server and its model processes are alive.
MODEL_CHECK_SECONDS = 1.0
#: How long a server whose model process died may take to stop before it is killed. Triton
#: waits its whole exit timeout (--stop-timeout) for the dead process's model, which never
#: unloads; the requests other models still answer get this long.
MODEL_DEATH_STOP_SECONDS = 5.0


class _Stop(Exception):
    """Raised in the main thread by the SIGTERM and SIGINT handler."""


def _raise_stop(signum, frame):
    raise _Stop(signal.Signals(signum).name)


def _already_stopping(signum, frame):
    print(f"trackserve serve: {signal.Signals(signum).name} received, already stopping the server",
          file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; 0 after a clean stop, 1 if the server died on its own or had to be killed."""
    from ..serving.server import ServerSettings, TritonServer, model_control_mode, model_process_name

    settings = ServerSettings(
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=None if args.no_metrics else args.metrics_port,
        log_verbose=args.log_verbose,
        startup_timeout_s=args.startup_timeout,
        stop_timeout_s=args.stop_timeout,
        extra_args=tuple(args.triton_arg),
    )

    def forward(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    server = TritonServer(args.repository, settings, binary=args.tritonserver, log=None if args.quiet else forward)
    # Both signals are handled explicitly: a process started with SIGINT ignored (as a child
    # of a shell or test runner that ignores it) would otherwise never see Ctrl-C.
    previous = {signum: signal.signal(signum, _raise_stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        print(f"trackserve serve: Triton is ready after {server.startup_seconds:.1f} s, serving {server.repository}",
              flush=True)
        for name, url in server.endpoints().items():
            print(f"  {name:8s} {url}", flush=True)
        print("  stop with Ctrl-C or SIGTERM", flush=True)
        models = server.ready_model_processes
        served_by = {pid: model_process_name(pid) for pid in models}  # (a dead process's command line is gone)
        watching = model_control_mode(settings.extra_args) != "poll"
        if not watching:  # Triton replaces a changed model's processes itself: one ending is no death
            print("trackserve serve: note: with --model-control-mode=poll Triton reloads changed models and ends "
                  "their old processes itself, so serve does not watch the model processes: one that dies (killed, "
                  "out of memory) leaves its model refusing requests until it is reloaded", file=sys.stderr, flush=True)
        while (code := server.wait(timeout=MODEL_CHECK_SECONDS)) is None:
            lost = models - server.model_processes() if watching else set()
            if lost:
                # Triton keeps reporting the model ready, but every request to it now fails:
                # stop, so that whatever supervises this command starts it again.
                died = ", ".join(f"pid {pid}" + (f", model {served_by[pid]}" if served_by.get(pid) else "")
                                 for pid in sorted(lost))
                print(f"trackserve serve: a model process of the server died ({died}; "
                      "killed, or out of memory): its model answers no more requests, so the server is stopped; "
                      "start it again (with a lower --memory-limit-gb in the repository if memory ran out)",
                      file=sys.stderr, flush=True)
                grace = min(args.stop_timeout, MODEL_DEATH_STOP_SECONDS)
                code = server.stop(timeout_s=grace)
                ended = (f"killed after {grace:g} s: the dead process's model never unloads" if server.killed
                         else f"tritonserver status {code}")
                print(f"trackserve serve: server stopped ({ended})", file=sys.stderr, flush=True)
                return 1
        how = (f"was killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals()
               else f"exited on its own with status {code}")
        print(f"trackserve serve: tritonserver {how}, so the server is down; " + server.failure_report(),
              file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, _Stop) as reason:
        name = "SIGINT" if isinstance(reason, KeyboardInterrupt) else str(reason)
        print(f"trackserve serve: {name} received, stopping the server", file=sys.stderr, flush=True)
        for signum in previous:  # a second Ctrl-C or SIGTERM must not cut the clean stop short
            signal.signal(signum, _already_stopping)
        was_ready = server.startup_seconds is not None
        code = server.stop()
        if not was_ready:  # nothing was served yet: no request can have been lost
            print(f"trackserve serve: stopped while the models were loading, before the server was ready "
                  f"(tritonserver status {code}); no request had been served", file=sys.stderr, flush=True)
            return 0
        if server.killed:
            print(f"trackserve serve: tritonserver did not stop within --stop-timeout {args.stop_timeout:g} s and "
                  f"was killed (status {code}): requests still in flight were dropped; give a longer --stop-timeout",
                  file=sys.stderr, flush=True)
            return 1
        if code != 0:  # Triton's own exit timeout ran out (or it failed while stopping)
            print(f"trackserve serve: tritonserver stopped with status {code}: its exit timeout (--stop-timeout "
                  f"{args.stop_timeout:g} s) ran out with requests in flight, which may not all have been answered; "
                  "give a longer --stop-timeout", file=sys.stderr, flush=True)
            return 1
        print(f"trackserve serve: stopped (tritonserver status {code})", file=sys.stderr, flush=True)
        return 0
    finally:
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
