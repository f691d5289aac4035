"""Start, watch and stop a real ``tritonserver`` on a model repository.

:func:`find_triton` locates the server: the binary bundled in the ``nvidia-pytriton``
wheel (``pytriton/tritonserver/bin/tritonserver``, its libraries in
``nvidia_pytriton.libs``) or one given by path, and the Python-backend stub built for
this interpreter's minor version. :class:`TritonServer` prepares a private backend
folder (``libtriton_python.so``, ``triton_python_backend_utils.py`` and the stub), sets
``LD_LIBRARY_PATH`` (the server's libraries and this interpreter's ``LIBDIR``, so the stub
loads the right libpython) and ``PATH`` (this environment's ``bin/`` first, so the stub's
``python3`` can ``import trackserve``) and ``PYTHONPATH`` (the folder of the trackserve
package that starts the server first, so the models run that same code), checks that the
ports are free, starts the
server in its own process group, forwards its log lines, waits until it is ready and
stops it with SIGTERM (Triton then finishes the requests in flight), SIGKILL as a last
resort.
"""

from __future__ import annotations

import collections
import errno
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..errors import BackendUnavailableError, InputError, ServingError

#: Lines of the server's log kept for error messages.
LOG_TAIL_LINES = 60
#: Error lines (``E<date> ...``) of the server's log kept for error messages, the harmless CUDA ones excepted.
ERROR_LINES = 20
_ERROR_LINE = re.compile(r"^E\d{4} ")
#: The line in which tritonserver says why it refused its command line (then prints its usage).
_USAGE_ERROR = re.compile(r"(unrecognized option|requires an argument|invalid argument|Unexpected argument|Bad option)")
#: How long stopping waits for the killed model processes to be gone (seconds).
GROUP_EXIT_WAIT_S = 5.0
#: The longest stop timeout: tritonserver reads --exit-timeout-secs as a 32-bit signed integer.
MAX_STOP_TIMEOUT_S = 2**31 - 1
_HARMLESS = ("CudaDriverHelper", "CUDA driver", "pinned memory", "cuda")
#: Triton's log line for a model that did not load: the model, its version and the reason,
#: a quoted string with its newlines escaped.
_LOAD_FAILURE = re.compile(r"""failed to load '(?P<model>[^']+)' version (?P<version>\d+): (?P<reason>.*?)"?$""")
#: Triton's log line for a model config it could not parse (it names no line).
_CONFIG_UNREADABLE = re.compile(r"""failed to read text proto from (?P<path>.+?)"?$""")
#: The Python backend's frames after an exception's message ("\n\nAt:\n  file(line): function").
_BACKEND_FRAMES = re.compile(r"\n+At:\n.*$", re.DOTALL)
_ESCAPE = re.compile(r"\\(.)")
_ESCAPED = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}
#: The Python backend's error line for each instance that did not start (its reason is the
#: failed load's, which :func:`load_failures` gives).
_INSTANCE_FAILURE = "Failed to create instance"
#: Files of the bundled Python backend copied into the private backend folder.
_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
_STUB = "triton_python_backend_stub"


#: Thread-pool variables the server's model instances get at 1 unless the environment sets
#: them: every instance is a process of its own whose parallel work runs on the threads its
#: repository options give (``intra_op_threads``, ``graph_threads``); a BLAS or OpenMP pool
#: sized to the machine in each of them would only add threads the options do not count.
ONE_THREAD_POOLS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class TritonInstallation:
    """Where the server's pieces are: the binary, its library folders, the Python backend and its stub."""

    binary: Path
    library_dirs: tuple[Path, ...]
    python_backend_dir: Path
    stub: Path

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment the server runs in: library path and ``PATH`` set as the module docstring
        says, and the thread pools of numpy's BLAS and of OpenMP at one thread unless ``base``
        sets them (:data:`ONE_THREAD_POOLS`)."""
        env = dict(os.environ if base is None else base)
        for variable in ONE_THREAD_POOLS:
            env.setdefault(variable, "1")
        libdir = sysconfig.get_config_var("LIBDIR")
        dirs = [str(d) for d in self.library_dirs] + ([libdir] if libdir else [])
        if env.get("LD_LIBRARY_PATH"):
            dirs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(dirs)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        # The models' stubs import the trackserve that starts the server (a checkout run with
        # PYTHONPATH, say), not whichever one the interpreter would find first.
        checkout = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([checkout] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        return env


def _pytriton_root() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def find_triton(binary: str | os.PathLike | None = None) -> TritonInstallation:
    """Locate ``tritonserver``, its libraries, the Python backend and the stub for this Python.

    ``binary``: a ``tritonserver`` executable to use instead of the one bundled in the
    ``nvidia-pytriton`` wheel; its backends are then looked for in ``../backends/python``
    next to it (the layout of Triton's own installs). Raises
    :class:`~trackserve.errors.BackendUnavailableError` naming what is missing and how to get it.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    root = _pytriton_root()
    if binary is None:
        if root is None:
            raise BackendUnavailableError(
                "tritonserver is not installed: install the serving extra (`pip install -e \".[serving]\"`, "
                "which brings the nvidia-pytriton wheel and its tritonserver) or give a tritonserver binary "
                "with --tritonserver"
            )
        server_dir = root / "tritonserver"
        binary_path = server_dir / "bin" / "tritonserver"
        library_dirs = (root.parent / "nvidia_pytriton.libs",)
        stub = server_dir / "python_backend_stubs" / version / _STUB
    else:
        binary_path = Path(binary).expanduser().resolve()
        server_dir = binary_path.parent.parent
        library_dirs = (server_dir / "lib",) + ((root.parent / "nvidia_pytriton.libs",) if root else ())
        stub = server_dir / "backends" / "python" / _STUB
        if root is not None and not stub.is_file():
            stub = root / "tritonserver" / "python_backend_stubs" / version / _STUB
    python_backend_dir = server_dir / "backends" / "python"
    if binary_path.is_dir():
        raise BackendUnavailableError(f"the tritonserver binary {binary_path} is a directory: give the binary itself "
                                      "(for a Triton install, <install>/bin/tritonserver)")
    if not binary_path.is_file():
        raise BackendUnavailableError(f"the tritonserver binary {binary_path} does not exist")
    if not os.access(binary_path, os.X_OK):
        raise BackendUnavailableError(f"the tritonserver binary {binary_path} is not executable (chmod +x it, if it "
                                      "is a tritonserver)")
    missing = [python_backend_dir / name for name in _BACKEND_FILES if not (python_backend_dir / name).is_file()]
    if missing:
        raise BackendUnavailableError(
            f"the Python backend of {binary_path} is incomplete: {', '.join(map(str, missing))} not found (a "
            "tritonserver binary sits in <install>/bin beside <install>/backends/python)"
        )
    if not stub.is_file():
        raise BackendUnavailableError(
            f"no Python-backend stub for Python {version} ({stub} not found): run trackserve with a Python "
            "version the nvidia-pytriton wheel ships a stub for (3.8 to 3.13)"
        )
    existing = tuple(d for d in library_dirs if d.is_dir())
    if not existing and binary is None:
        raise BackendUnavailableError(
            f"the libraries of tritonserver ({library_dirs[0]}) are missing: reinstall nvidia-pytriton"
        )
    return TritonInstallation(binary_path, existing, python_backend_dir, stub)


#: Characters a shell reads as more than part of a word: Triton's Python backend starts each
#: model's stub through ``bash -c`` with the model's path unquoted.
_SHELL_CHARACTERS = set("'\"`$&;|<>()[]{}*?\\")


def check_repository_path(path: Path) -> None:
    """Refuse a model repository whose absolute path holds whitespace or a character the shell
    treats specially (``( ) ' " $ & ;`` ...): the Python backend starts each model's stub
    through ``bash -c`` with the path unquoted, so every stub fails to start (and the server
    never becomes ready)."""
    absolute = str(Path(path).resolve())
    if any(character.isspace() for character in absolute):
        raise InputError(f"the model repository path {absolute!r} holds whitespace, which Triton's Python backend "
                         "cannot start models from; move the repository (or write it) to a path without spaces")
    special = sorted({character for character in absolute if character in _SHELL_CHARACTERS})
    if special:
        raise InputError(f"the model repository path {absolute!r} holds {' '.join(special)}, which Triton's Python "
                         "backend cannot start models from (it passes the path through a shell unquoted); move the "
                         "repository (or write it) to a path of letters, digits and / . _ - only")


def port_is_free(host: str, port: int) -> bool:
    """Whether a TCP server could bind ``host:port`` now (False when it is taken; an address this
    machine does not have raises :class:`~trackserve.errors.InputError`)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRNOTAVAIL:
                raise InputError(f"cannot bind {host}: this machine has no such address (bind 127.0.0.1 for this "
                                 "machine only, 0.0.0.0 for every interface, or one of its own addresses)") from None
            return False
    return True


#: The ports :func:`free_port` has handed out in this process.
_PORTS_GIVEN: set[int] = set()
_PORTS_LOCK = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free now (the kernel picks it) and that no earlier call
    in this process returned: the kernel may pick a port it just gave again once its socket
    is closed, so two calls for one server's HTTP and gRPC ports could otherwise agree."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with _PORTS_LOCK:
        for _attempt in range(1000):
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if port not in _PORTS_GIVEN:
                _PORTS_GIVEN.add(port)
                return port
    raise ServingError(f"no free TCP port on {host} that this process has not handed out already")


def _client_host(host: str) -> str:
    """The address a local client uses to reach a server bound to ``host``."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _check_python_models(repository: Path) -> None:
    """Refuse a Python-backend model folder without its ``model.py`` (Triton would wait forever on it)."""
    for folder in sorted(entry for entry in repository.iterdir() if (entry / "config.pbtxt").is_file()):
        config = (folder / "config.pbtxt").read_text(encoding="utf-8", errors="replace")
        if re.search(r'backend:\s*"python"', config) and not any(folder.glob("[0-9]*/model.py")):
            raise InputError(f"model {folder.name} in {repository} is a Python-backend model without its "
                             f"<version>/model.py; write the repository again with `trackserve triton-repo`")


def _remove_shared_memory(prefix: str) -> None:
    """Remove the shared-memory regions named ``prefix...`` (left behind when a server is killed)."""
    for region in Path("/dev/shm").glob(prefix + "*"):
        try:
            region.unlink()
        except OSError:  # gone already, or not ours to remove
            pass


@dataclass
class ServerSettings:
    """Where and how the server listens: host, ports (``metrics_port`` ``None``: metrics off), logging, timeouts."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int | None = 8002
    log_verbose: int = 0
    startup_timeout_s: float = 120.0
    stop_timeout_s: float = 30.0
    extra_args: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self):
        if not isinstance(self.host, str) or not self.host:
            raise InputError(f"the host to bind must be an address or a name, got {self.host!r}")
        if ":" in self.host:
            raise InputError(f"host {self.host!r}: IPv6 addresses are not supported; bind an IPv4 address "
                             "(127.0.0.1 for this machine only, 0.0.0.0 for every interface)")
        for name, port in self.ports().items():
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise InputError(f"the {name} port must be an integer in 1..65535, got {port!r}")
        for name in ("startup_timeout_s", "stop_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                raise InputError(f"{name.replace('_s', '').replace('_', ' ')} must be a finite number of seconds > 0, "
                                 f"got {value!r}")
        _refuse_managed_arguments(self.extra_args)
        if self.stop_timeout_s > MAX_STOP_TIMEOUT_S:
            raise InputError(f"stop timeout {self.stop_timeout_s:g} s is above {MAX_STOP_TIMEOUT_S} s, the longest "
                             "exit timeout tritonserver takes (--exit-timeout-secs, a 32-bit integer)")

    def ports(self) -> dict[str, int]:
        """The ports the server binds, by endpoint."""
        ports = {"http": self.http_port, "grpc": self.grpc_port}
        if self.metrics_port is not None:
            ports["metrics"] = self.metrics_port
        return ports


def config_parse_errors(lines: Sequence[str]) -> list[str]:
    """Where each ``config.pbtxt`` that Triton's log ``lines`` say it could not read goes
    wrong, as ``"  PATH line L, column C: WHAT"`` (Triton names the file only): the file
    parsed again with the protobuf text format and tritonclient's ``ModelConfig``. Files
    that parse, cannot be read, or with tritonclient not installed, are left out."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return []
    found = []
    for line in lines:
        match = _CONFIG_UNREADABLE.search(line)
        if match is None:
            continue
        path = Path(match["path"])
        try:
            text_format.Parse(path.read_text(encoding="utf-8", errors="replace"), model_config_pb2.ModelConfig())
        except text_format.ParseError as error:  # "3:1 : Message type ... has no field named ..."
            what = str(error).split(" : ", 1)[-1]
            place = f" line {error.GetLine()}, column {error.GetColumn()}" if error.GetLine() is not None else ""
            found.append(f"  {path}{place}: {what}")
        except (OSError, ValueError):
            continue
    return found


def load_failures(lines: Sequence[str]) -> list[str]:
    """Each model that Triton's log ``lines`` say did not load, as ``"  NAME (version V):
    REASON"`` with the reason's escaped newlines restored and the Python backend's frames
    ("At: file(line): function") left out; in the order of the log, each model once."""
    found: dict[tuple[str, str], str] = {}
    for line in lines:
        match = _LOAD_FAILURE.search(line)
        if match is None or (match["model"], match["version"]) in found:
            continue
        reason = _ESCAPE.sub(lambda escape: _ESCAPED.get(escape[1], escape[0]), match["reason"])
        reason = _BACKEND_FRAMES.sub("", reason).strip()
        reason = reason.removeprefix("Internal: ")
        found[match["model"], match["version"]] = f"  {match['model']} (version {match['version']}): " + reason.replace(
            "\n", "\n    ")
    return list(found.values())


class TritonServer:
    """One ``tritonserver`` process serving a model repository.

    ``TritonServer(repository, settings, binary=None, log=None)``; :meth:`start` launches it
    and returns once it is ready (or raises :class:`~trackserve.errors.ServingError` with
    the end of its log); :meth:`stop` ends it cleanly. Each log line of the server goes to
    ``log`` (a callable; ``None``: kept only for error messages). Usable as a context manager.
    """

    def __init__(self, repository, settings: ServerSettings | None = None, *, binary=None,
                 log: Callable[[str], None] | None = None):
        self.repository = Path(repository).resolve()
        self.settings = settings or ServerSettings()
        self.installation = find_triton(binary)
        self.log = log
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        #: Whether :meth:`stop` had to kill the server (it did not end within the stop timeout).
        self.killed = False
        #: The model processes (Python-backend stubs) running when the server became ready;
        #: one missing later has died (see ``trackserve serve``).
        self.ready_model_processes: set[int] = set()
        self._tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self._errors: collections.deque[str] = collections.deque(maxlen=ERROR_LINES)
        self._workdir: tempfile.TemporaryDirectory | None = None
        self._reader: threading.Thread | None = None
        self._usage_error: str | None = None
        # The Python backend's shared-memory regions are named with this prefix, so that
        # those a killed server leaves behind can be removed (see _finish).
        self._shm_prefix = f"trackserve_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        # The id this server answers with in its metadata, so that the readiness check knows
        # its own server from another one that took the port first (``--id`` in extra_args
        # is used as given).
        given = _given_server_id(self.settings.extra_args)
        self.server_id = given if given is not None else f"trackserve-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._foreign_server: str | None = None

    # -- endpoints --------------------------------------------------------------------
    @property
    def client_host(self) -> str:
        """The host a client on this machine connects to."""
        return _client_host(self.settings.host)

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP endpoint (what tritonclient.http takes)."""
        return f"{_url_host(self.client_host)}:{self.settings.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint (what tritonclient.grpc takes)."""
        return f"{_url_host(self.client_host)}:{self.settings.grpc_port}"

    def url(self, protocol: str) -> str:
        """The ``host:port`` of ``protocol`` (``"grpc"`` or ``"http"``)."""
        return {"grpc": self.grpc_url, "http": self.http_url}[protocol]

    def endpoints(self) -> dict[str, str]:
        """Human-readable endpoints: gRPC, HTTP and (when enabled) metrics."""
        host = _url_host(self.settings.host)
        found = {"grpc": f"{host}:{self.settings.grpc_port}", "http": f"http://{host}:{self.settings.http_port}"}
        if self.settings.metrics_port is not None:
            found["metrics"] = f"http://{host}:{self.settings.metrics_port}/metrics"
        return found

    @property
    def log_tail(self) -> str:
        """The last lines the server logged."""
        return "\n".join(self._tail)

    def failure_report(self) -> str:
        """What the log says went wrong: the models that did not load and why (as the model
        said it, on lines of their own), or else its error lines; then its last lines."""
        last = "\n".join(list(self._tail)[-8:])
        if self._usage_error is not None:  # a bad command-line option: its usage text followed the reason
            return f"it refused its command line: {self._usage_error.strip()}"
        if self._foreign_server is not None:
            last = (f"another server ({self._foreign_server}) answered on {self.http_url} while this one started: "
                    f"it took a port between the check and the start\n{last}")
        unparsed = config_parse_errors(self._errors)
        if unparsed:
            return ("model configs it could not read:\n" + "\n".join(unparsed) + "\nits log's errors:\n"
                    + "\n".join(self._errors) + f"\nthe end of its log:\n{last}")
        failures = load_failures(self._errors)
        if failures:
            report = "models that did not load:\n" + "\n".join(failures)
            others = [line for line in self._errors if not _LOAD_FAILURE.search(line) and _INSTANCE_FAILURE not in line]
            if others:
                report += "\nits log's other errors:\n" + "\n".join(others)
            return report + f"\nthe end of its log:\n{last}"
        if not self._errors:
            return f"the end of its log:\n{last}"
        return "its log's errors:\n" + "\n".join(self._errors) + f"\nthe end of its log:\n{last}"

    # -- lifecycle --------------------------------------------------------------------
    def command(self, backend_dir: Path) -> list[str]:
        """The ``tritonserver`` command line."""
        s = self.settings
        shm_prefix = self._shm_prefix
        command = [
            str(self.installation.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_dir}",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
            f"--http-address={s.host}", f"--http-port={s.http_port}",
            f"--grpc-address={s.host}", f"--grpc-port={s.grpc_port}",
            f"--log-verbose={s.log_verbose}",
            "--exit-timeout-secs=" + str(max(1, int(s.stop_timeout_s))),
        ]
        if _given_server_id(s.extra_args) is None:
            command.append(f"--id={self.server_id}")
        if s.metrics_port is None:
            command.append("--allow-metrics=false")
        else:
            command += [f"--metrics-address={s.host}", f"--metrics-port={s.metrics_port}", "--allow-gpu-metrics=false"]
        return command + list(s.extra_args)

    def _check_before_start(self) -> None:
        from .backend import check_served_numpy

        check_served_numpy()  # the models run in this environment (PATH, PYTHONPATH above)
        if self.repository.exists() and not self.repository.is_dir():
            raise InputError(f"the model repository {self.repository} is a file, not a directory; give the directory "
                             "`trackserve triton-repo` wrote")
        if not (self.repository / "").is_dir():
            raise InputError(f"the model repository {self.repository} does not exist; write one with `trackserve triton-repo`")
        check_repository_path(self.repository)
        if not any((entry / "config.pbtxt").is_file() for entry in self.repository.iterdir() if entry.is_dir()):
            raise InputError(f"{self.repository} holds no model folder with a config.pbtxt; write one with `trackserve triton-repo`")
        _check_python_models(self.repository)
        ports = self.settings.ports()
        if len(set(ports.values())) != len(ports):
            raise InputError(f"the server's ports must differ, got {ports}")
        try:
            socket.getaddrinfo(self.settings.host, None, socket.AF_INET)
        except socket.gaierror as error:
            raise InputError(f"cannot bind host {self.settings.host!r}: the name does not resolve to an IPv4 "
                             f"address ({error.strerror})") from None
        for name, port in ports.items():
            if not port_is_free(self.settings.host, port):
                raise InputError(
                    f"the {name} port {self.settings.host}:{port} is already in use (another Triton server?); "
                    f"stop that process or choose another port with --{name}-port"
                )

    def _prepare_backends(self) -> Path:
        self._workdir = tempfile.TemporaryDirectory(prefix="trackserve-triton-")
        backend_dir = Path(self._workdir.name) / "backends"
        python_dir = backend_dir / "python"
        python_dir.mkdir(parents=True)
        for name in _BACKEND_FILES:
            shutil.copy2(self.installation.python_backend_dir / name, python_dir / name)
        shutil.copy2(self.installation.stub, python_dir / _STUB)
        return backend_dir

    def _forward_logs(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            self._tail.append(line)
            if _ERROR_LINE.match(line) and not any(word in line for word in _HARMLESS):
                self._errors.append(line)
            if self._usage_error is None and _USAGE_ERROR.search(line):
                self._usage_error = line
            if self.log is not None:
                self.log(line)

    def start(self) -> "TritonServer":
        """Launch the server and wait until it is ready; raises ServingError if it exits or times out first."""
        if self.running:
            raise ServingError(f"the server on {self.grpc_url} is already running")
        self._check_before_start()
        backend_dir = self._prepare_backends()
        started = time.perf_counter()
        self._tail.clear()
        self._errors.clear()
        self._usage_error = None
        self._foreign_server = None
        self.process = subprocess.Popen(
            self.command(backend_dir),
            env=self.installation.environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._reader = threading.Thread(target=self._forward_logs, name="tritonserver-log", daemon=True)
        self._reader.start()
        try:
            self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.perf_counter() - started
        # Taken here, before start() returns and the caller announces the server: a stub
        # that dies after that announcement is then always among these.
        self.ready_model_processes = self.model_processes()
        return self

    def _wait_ready(self, started: float) -> None:
        url = f"http://{self.http_url}/v2/health/ready"
        deadline = started + self.settings.startup_timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                self._reader.join(timeout=5)
                raise ServingError(
                    f"tritonserver exited with status {code} before it was ready, serving {self.repository}; "
                    + self.failure_report()
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status == 200 and self._is_this_server():
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.perf_counter() > deadline:
                raise ServingError(
                    f"tritonserver was not ready after {self.settings.startup_timeout_s:g} s serving {self.repository}; "
                    + self.failure_report()
                )
            time.sleep(0.05)

    def _is_this_server(self) -> bool:
        """Whether the server answering on the HTTP port is this one (its metadata names
        :attr:`server_id`); another one is remembered for the failure report."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2", timeout=1) as answer:
                name = json.loads(answer.read().decode("utf-8", errors="replace")).get("name")
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError, AttributeError):
            return False
        if name == self.server_id:
            return True
        self._foreign_server = f"id {name!r}"
        return False

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the server to exit (at most ``timeout`` seconds); its exit status, ``None`` if still running."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def model_processes(self) -> set[int]:
        """The process ids of the server's model processes (Python-backend stubs: the live
        members of its process group other than the server itself); empty when it is not running."""
        if not self.running:
            return set()
        return process_group_members(self.process.pid) - {self.process.pid}

    def stop(self, timeout_s: float | None = None) -> int | None:
        """Stop the server: SIGTERM, then SIGKILL after ``timeout_s`` (default: Triton's own exit
        timeout, ``stop_timeout_s``, and 5 s more); returns its exit status (:attr:`killed` then
        says whether it had to be killed)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.settings.stop_timeout_s + 5 if timeout_s is None else timeout_s)
            except subprocess.TimeoutExpired:
                self.killed = True
                self._kill_group()
                self.process.wait()
        return self._finish()

    def kill(self) -> int | None:
        """End the server and its model processes at once with SIGKILL (a crash, to clients); returns its exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self._kill_group()
            self.process.wait()
        return self._finish()

    def _kill_group(self) -> None:
        """SIGKILL what is left of the server's process group (Python-backend stubs outlive a killed server)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _finish(self) -> int | None:
        code = self.process.returncode
        # Model stubs can outlive a server that died on its own (killed, crashed) and hold its
        # log pipe open: end them, so that they leave no process behind and the log ends.
        self._kill_group()
        deadline = time.monotonic() + GROUP_EXIT_WAIT_S  # SIGKILL is not instant on a loaded machine
        while process_group_members(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.process.stdout is not None and (self._reader is None or not self._reader.is_alive()):
            self.process.stdout.close()  # (a reader still blocked on it would block the close)
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
        _remove_shared_memory(self._shm_prefix)
        return code

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


#: tritonserver options that ``serve`` sets itself, and what to do instead of giving one as an
#: extra argument: tritonserver would take the later value while ``serve`` printed, watched and
#: waited on its own (wrong endpoints printed, a readiness wait that times out).
MANAGED_ARGUMENTS = {
    "--model-repository": "give the repository as the REPOSITORY argument",
    "--model-store": "give the repository as the REPOSITORY argument",
    "--http-address": "use --host", "--grpc-address": "use --host",
    "--http-port": "use --http-port", "--grpc-port": "use --grpc-port", "--metrics-port": "use --metrics-port",
    "--allow-metrics": "use --no-metrics",
    "--allow-http": "serve waits for readiness over HTTP and prints both endpoints, so both stay on",
    "--allow-grpc": "serve waits for readiness over HTTP and prints both endpoints, so both stay on",
    "--model-control-mode=explicit": "serve reports ready once the repository's models are loaded, and in explicit "
                                     "mode none is (modes none and poll are accepted)",
    "--log-verbose": "use --log-verbose", "--exit-timeout-secs": "use --stop-timeout",
    "--backend-directory": "use --tritonserver (the backends are found beside the binary)",
}


#: The least an abbreviation must spell out (after ``--``) to be taken for a managed option:
#: tritonserver parses its options with ``getopt_long``, which takes unambiguous prefixes.
_MIN_ABBREVIATION = 4


def _refuse_managed_arguments(extra_args: Sequence[str]) -> None:
    """InputError naming the first extra argument that sets an option of :data:`MANAGED_ARGUMENTS`
    (also abbreviated, as tritonserver takes it; ``--model-control-mode`` only with ``explicit``,
    also given as the next argument), or that changes the Python backend's shared-memory prefix,
    by which ``serve`` removes a killed server's regions."""
    args = list(extra_args)
    for index, arg in enumerate(args):
        if not isinstance(arg, str):
            raise InputError(f"extra tritonserver arguments must be strings, got {arg!r}")
        name, has_value, value = arg.partition("=")
        if not has_value and index + 1 < len(args) and isinstance(args[index + 1], str):
            value = args[index + 1]
        full = next((option.split("=", 1)[0] for option in MANAGED_ARGUMENTS
                     if name.startswith("--") and len(name) >= 2 + _MIN_ABBREVIATION
                     and option.split("=", 1)[0].startswith(name)), None)
        if full is None:
            if name.startswith("--backend-config") and "shm-region-prefix-name" in value:
                raise InputError(f"the tritonserver argument {arg!r} sets what serve manages itself: serve names the "
                                 "Python backend's shared-memory regions to remove them with a killed server")
            continue
        key = full if full in MANAGED_ARGUMENTS else f"{full}={value.strip().lower()}"
        if key in MANAGED_ARGUMENTS:
            raise InputError(f"the tritonserver argument {arg!r} sets what serve manages itself: "
                             f"{MANAGED_ARGUMENTS[key]}")


def model_control_mode(extra_args: Sequence[str]) -> str:
    """The model control mode the extra tritonserver arguments set (``--model-control-mode=M`` or
    ``--model-control-mode M``, abbreviated as tritonserver takes it; the last one), else
    ``"none"``, tritonserver's default."""
    args, mode = list(extra_args), "none"
    option = "--model-control-mode"
    for index, arg in enumerate(args):
        name, has_value, value = arg.partition("=")
        if not (name.startswith("--") and len(name) >= 2 + _MIN_ABBREVIATION and option.startswith(name)):
            continue
        if not has_value:
            value = args[index + 1] if index + 1 < len(args) else ""
        mode = value.strip().lower() or mode
    return mode


def _given_server_id(extra_args: Sequence[str]) -> str | None:
    """The server id the ``--id`` options among ``extra_args`` set (``--id=X`` or ``--id X``; the
    last one, as tritonserver takes it; an empty one too), or None when there is none."""
    args = list(extra_args)
    found = None
    for index, arg in enumerate(args):
        if arg.startswith("--id="):
            found = arg[len("--id="):]
        elif arg == "--id" and index + 1 < len(args):
            found = args[index + 1]
    return found


def process_group_members(group: int) -> set[int]:
    """The live processes (not zombies) of the process group ``group``, read from ``/proc``."""
    members = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if fields[0] != "Z" and int(fields[2]) == group:
            members.add(int(entry.name))
    return members


def _command_line(process: Path) -> list[str]:
    """The arguments of the process whose ``/proc`` entry is ``process`` (OSError when it is gone)."""
    return [arg.decode("utf-8", "replace") for arg in (process / "cmdline").read_bytes().split(b"\0")[:-1]]


def model_process_name(pid: int) -> str | None:
    """Which model a Python-backend stub process serves, as ``"MODEL (instance NAME)"``, from
    its command line (the model's ``model.py`` path, then the instance name); None when it
    is gone or no stub. Read it while the process lives: a dead one's is gone."""
    try:
        argv = _command_line(Path(f"/proc/{pid}"))
    except OSError:
        return None
    if len(argv) < 2 or not argv[0].endswith(_STUB):
        return None
    model = Path(argv[1]).parent.parent.name  # <repository>/<model>/<version>/model.py
    instance = next((arg for arg in argv[2:] if arg.startswith(model + "_")), None)
    return model + (f" (instance {instance})" if instance else "")


def servers_of(repository: str | Path) -> list[tuple[int, str]]:
    """``(pid, model control mode)`` of each running ``tritonserver`` of this machine whose
    model repository is ``repository`` (its ``--model-repository`` resolved from that
    process's working directory), read from ``/proc``; processes it may not read are left out."""
    wanted = Path(repository).resolve()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = _command_line(entry)
            if not argv or Path(argv[0]).name != "tritonserver":
                continue
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:  # gone meanwhile, or another user's
            continue
        for index, arg in enumerate(argv[1:], start=1):
            name, has_value, value = arg.partition("=")
            if name not in ("--model-repository", "--model-store"):
                continue
            value = value if has_value else (argv[index + 1] if index + 1 < len(argv) else "")
            if value and (cwd / value).resolve() == wanted:
                found.append((int(entry.name), model_control_mode(argv[1:])))
                break
    return sorted(found)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to send SIGTERM to the server if trackserve dies without stopping it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
