"""Send events to a served trackserve model and get their track labels back, over gRPC or HTTP.

The pieces are separate so that a load generator can reuse them: :func:`make_inputs`
builds the request of one event for a protocol, :func:`labels_from_result` checks and
extracts the answer, :func:`describe_failure` turns a tritonclient exception into a clear
message. :class:`TritonClient` holds one connection (use one per thread) and combines them:
``TritonClient(url, protocol="grpc", model="exatrkx").infer(features) -> labels``.
"""

from __future__ import annotations

import json
import math

import numpy as np

from ..errors import BackendUnavailableError, InputError, ServingError
from ..runtime.vertex_shifts import parse_vertex_shifts
from .backend import PARAM_FEATURES, PARAM_PIPELINE_SHA256, PARAM_VERTEX_SHIFTS
from .interface import DEFAULT_MODEL_NAME, FEATURES, LABELS, WIRE_DTYPES

#: Supported protocols, with the default port of each.
PROTOCOLS = {"grpc": 8001, "http": 8000}


def client_module(protocol: str, *, asyncio: bool = False):
    """``tritonclient.grpc`` or ``tritonclient.http`` (their ``.aio`` variants with ``asyncio``);
    BackendUnavailableError when tritonclient is missing."""
    import importlib

    if protocol not in PROTOCOLS:
        raise InputError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    name = f"tritonclient.{protocol}" + (".aio" if asyncio else "")
    try:
        module = importlib.import_module(name)
    except ImportError as error:
        raise BackendUnavailableError(
            f"{name} is not importable ({error}); install the serving extra: pip install -e \".[serving]\""
        ) from error
    if protocol == "http" and not asyncio:
        _quiet_gevent_stops()
    return module


def _quiet_gevent_stops() -> None:
    """Let a stop (Ctrl-C, SIGTERM: KeyboardInterrupt and its subclasses) that comes while
    ``tritonclient.http`` waits in one of gevent's greenlets reach the main code without gevent
    printing it first as a failed greenlet (a traceback and a time-stamped line before the
    command's own one-line report). gevent passes such an exception on to the main greenlet
    either way; this thread's hub just no longer reports it as an error."""
    import gevent

    hub = gevent.get_hub()
    if not issubclass(KeyboardInterrupt, tuple(hub.NOT_ERROR)):
        hub.NOT_ERROR = tuple(hub.NOT_ERROR) + (KeyboardInterrupt,)


def make_inputs(module, features: np.ndarray, *, name: str = FEATURES) -> list:
    """The input list of one event's request: ``FEATURES`` with the array's shape and wire dtype.

    The array is sent as it is (a wrong dtype or shape reaches the server, which refuses it
    with a clear message); only dtypes with no wire name are refused here.
    """
    array = np.ascontiguousarray(features)
    wire = WIRE_DTYPES.get(array.dtype.name)
    if wire is None:
        from tritonclient.utils import np_to_triton_dtype

        wire = np_to_triton_dtype(array.dtype)
        if wire is None:
            raise InputError(f"features of dtype {array.dtype} cannot be sent; send float32")
    tensor = module.InferInput(name, list(array.shape), wire)
    tensor.set_data_from_numpy(array)
    return [tensor]


def make_outputs(module, *, name: str = LABELS) -> list:
    """The requested outputs of one event's request: ``LABELS``."""
    return [module.InferRequestedOutput(name)]


def labels_from_result(result, num_hits: int, *, name: str = LABELS) -> np.ndarray:
    """The labels of a response, checked: int64, one per hit; ServingError otherwise.

    An answer with fewer labels than hits (python_backend with numpy 2 sends empty
    tensors) is refused here rather than passed on.
    """
    labels = result.as_numpy(name)
    if labels is None:
        raise ServingError(f"the response has no output {name!r}")
    if labels.dtype != np.int64 or labels.shape != (num_hits,):
        raise ServingError(
            f"the response's {name} has dtype {labels.dtype} and shape {list(labels.shape)}; "
            f"expected int64 [{num_hits}] (one label per hit)"
        )
    return labels


def describe_failure(error: Exception, url: str, model: str, protocol: str | None = None) -> str:
    """A one-line account of why a request to ``model`` at ``url`` failed. With ``protocol``
    ``"grpc"``, a connection that failed is checked for an HTTP server on that port (Triton's
    HTTP port given for its gRPC one), which is then named."""
    message = getattr(error, "message", None)
    text = message() if callable(message) else str(error)
    status = getattr(error, "status", None)
    status = status() if callable(status) else status
    lowered = text.lower()
    wrong_port = (f"the server at {url} answers HTTP, not gRPC: that is an HTTP port (Triton's is 8000 by default); "
                  "give its gRPC port (8001 by default) or use --protocol http")
    if "failed parsing http/2" in lowered or "http1.x server" in lowered:
        return f"{wrong_port} ({text.strip()})"
    if protocol == "http" and "expected http/" in lowered:  # an HTTP client answered in HTTP/2 frames
        return (f"the server at {url} does not answer HTTP: that is a gRPC port (Triton's is 8001 by default); give its "
                f"HTTP port (8000 by default) or use --protocol grpc ({text.strip()})")
    if any(words in lowered for words in ("errors resolving", "name or service not known", "name resolution",
                                          "nodename nor servname", "no address associated", "dns resolution")):
        return f"the host of {url} does not resolve ({text.strip()}): check the address"
    if protocol == "http" and ("parse error at offset" in lowered or "document is empty" in lowered):
        return (f"the server at {url} does not answer as a Triton HTTP endpoint ({text.strip()}): is that its "
                "metrics port (8002 by default)? give its HTTP port (8000 by default)")
    if "unavailable" in str(status).lower() or _lost_connection(error) or any(word in lowered for word in (
            "unavailable", "connection refused", "failed to connect", "connection reset", "broken pipe",
            "socket closed", "connection aborted", "eof", "cannot connect", "connection closed",
            "server disconnected", "can not write request body")):
        if protocol == "grpc" and answers_http(url):
            return f"{wrong_port} ({text.strip()})"
        return f"the server at {url} did not answer ({text.strip()}): is it running?"
    if "timeout" in lowered or "timed out" in lowered or "deadline" in lowered:
        return f"the server at {url} did not answer in time ({text.strip()})"
    if "cancelled" in str(status).lower() or lowered.strip() == "cancelled" or "statuscode.cancelled" in lowered:
        # gRPC's answer for a request in flight when the server (or its connection) went away
        return f"the server at {url} cancelled the request: is it stopping? ({text.strip()})"
    if "has no available versions" in lowered or ("is not ready" in lowered and "model" in lowered):
        # Triton's answer for a model it unloads (a server stopping, a reload in poll mode): the
        # model refused nothing, it is not there to ask
        return (f"model {model!r} at {url} is not available: the server is stopping, or the model is being "
                f"unloaded or reloaded ({text.strip()})")
    prefix = f"[{status}] " if status and str(status) not in text else ""
    return f"model {model!r} at {url} refused the request: {prefix}{text.strip()}"


#: Exception classes (by name, so that aiohttp need not be imported) of a connection lost or
#: never made: the asynchronous HTTP client raises aiohttp's own, whose texts ("Server
#: disconnected", "Can not write request body for ...") name no connection.
_CONNECTION_ERRORS = ("ConnectionError", "ClientConnectionError", "ServerDisconnectedError", "ClientOSError")


def _lost_connection(error: Exception) -> bool:
    """Whether ``error`` is of a class that means the connection to the server failed."""
    return any(cls.__name__ in _CONNECTION_ERRORS for cls in type(error).__mro__)


def answers_http(url: str, timeout_s: float = 1.0) -> bool:
    """Whether an HTTP server answers at ``url`` (``host:port``): any HTTP status counts."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{url}/v2/health/live", timeout=timeout_s):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def check_url(url: str) -> None:
    """Refuse a server address that is not ``host:port`` (a scheme, no port, a port outside 1..65535)."""
    text = str(url)
    if "://" in text:
        raise InputError(f"server address {text!r}: give host:port without a scheme, e.g. 127.0.0.1:8001")
    host, _, port = text.rpartition(":")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise InputError(f"server address {text!r}: write an IPv6 address in brackets, e.g. [::1]:8001")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InputError(f"server address {text!r}: give host:port with a port in 1..65535, e.g. 127.0.0.1:8001")


def check_served_features(served, names, scales, where: str, bundle_description: str) -> None:
    """Raise ServingError when the features a served bundle reads (``served``: ``(names,
    scales)``, or None when the server does not say) differ from ``names``/``scales``, those
    of the bundle the caller computes features with (``bundle_description``): the server
    would label hits from features at the wrong scales without a word."""
    if served is None:
        return
    mine = (tuple(names), tuple(float(scale) for scale in scales))
    if served[0] != mine[0] or not np.allclose(served[1], mine[1], rtol=1e-9, atol=0):
        raise ServingError(
            f"{where} serves a bundle that reads the features {_describe(served)}, but {bundle_description} "
            f"computes {_describe(mine)}: the labels would be wrong; give --bundle the bundle the server serves"
        )


def _describe(spec) -> str:
    names, scales = spec
    return ", ".join(f"{name}/{scale:g}" for name, scale in zip(names, scales))


def check_timeout(timeout_s, name: str = "the request timeout") -> None:
    """Refuse a request timeout that is not a finite number of seconds > 0, calling it ``name``."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not (
            math.isfinite(timeout_s) and timeout_s > 0):
        raise InputError(f"{name} must be a finite number of seconds > 0, got {timeout_s!r}")


class TritonClient:
    """One connection to a Triton server serving a trackserve model (not shared between threads).

    ``url`` is ``host:port``; ``timeout_s`` bounds each request, so a dead server gives an
    error, never a hang.
    """

    def __init__(self, url: str, *, protocol: str = "grpc", model: str = DEFAULT_MODEL_NAME, timeout_s: float = 120.0):
        check_url(url)
        check_timeout(timeout_s)
        self.module = client_module(protocol)
        self.protocol = protocol
        self.url = url
        self.model = model
        self.timeout_s = float(timeout_s)
        try:
            if protocol == "grpc":
                self.connection = self.module.InferenceServerClient(url)
            else:
                self.connection = self.module.InferenceServerClient(
                    url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
                )
        except Exception as error:  # tritonclient raises its own types for a malformed url
            raise ServingError(f"cannot connect to {url} over {protocol}: {error}") from error

    def _call(self, what: str, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as error:  # tritonclient and its transports raise many types
            raise ServingError(f"{what}: {describe_failure(error, self.url, self.model, self.protocol)}") from error

    def is_ready(self) -> bool:
        """Whether the server and the model answer as ready (False when unreachable)."""
        try:
            return bool(self.connection.is_server_ready() and self.connection.is_model_ready(self.model))
        except Exception:  # unreachable: not ready
            return False

    def num_features(self) -> int:
        """The feature count F of the model's ``FEATURES [-1, F]`` input, read from the server."""
        if self.protocol == "grpc":
            metadata = self._call("model metadata", self.connection.get_model_metadata, self.model, as_json=True)
        else:
            metadata = self._call("model metadata", self.connection.get_model_metadata, self.model)
        if not any(tensor.get("name") == LABELS for tensor in metadata.get("outputs", [])):
            raise ServingError(f"model {self.model!r} at {self.url} has no output {LABELS!r}: it is not a model that "
                               "labels whole events (a stage of the ensemble?); send to the custom model or the ensemble")
        others = [str(tensor.get("name")) for tensor in metadata.get("inputs", []) if tensor.get("name") != FEATURES]
        if others:  # the ensemble's last stage (wcc) outputs LABELS too, from edges and scores
            raise ServingError(f"model {self.model!r} at {self.url} takes the inputs {', '.join(others)} besides "
                               f"{FEATURES}: it is not a model that labels whole events from their features (a stage "
                               "of the ensemble?); send to the custom model or the ensemble")
        for tensor in metadata.get("inputs", []):
            if tensor.get("name") == FEATURES:
                return int(tensor["shape"][-1])
        raise ServingError(f"model {self.model!r} at {self.url} has no input {FEATURES!r}: it is not a trackserve model")

    def _config_parameter(self, key: str) -> str | None:
        """The string value of parameter ``key`` in the served model's config, or None."""
        if self.protocol == "grpc":
            config = self._call("model config", self.connection.get_model_config, self.model, as_json=True)
            config = config.get("config", config)
        else:
            config = self._call("model config", self.connection.get_model_config, self.model)
        return (config.get("parameters", {}).get(key) or {}).get("string_value") or None

    def served_pipeline_sha256(self) -> str | None:
        """The sha256 of the served bundle's ``pipeline.json`` (``trackserve triton-repo`` writes
        it into the model config); None when the config has none (a repository written by hand
        or by an older trackserve)."""
        return self._config_parameter(PARAM_PIPELINE_SHA256)

    def served_features(self) -> tuple[tuple[str, ...], tuple[float, ...]] | None:
        """``(names, scales)`` of the features the served bundle reads, from the model config's
        ``features`` parameter (``trackserve triton-repo`` writes it); None when the config has
        none (a repository written by hand or by an older trackserve)."""
        text = self._config_parameter(PARAM_FEATURES)
        if not text:
            return None
        try:
            spec = json.loads(text)
            return tuple(spec["names"]), tuple(float(scale) for scale in spec["scales"])
        except (ValueError, KeyError, TypeError):
            return None

    def served_vertex_shifts(self) -> tuple[float, ...] | None:
        """The vertex shifts the served model runs each event at (its config's ``vertex_shifts``
        parameter, which ``trackserve triton-repo --vertex-shifts`` writes); None for one pass."""
        text = self._config_parameter(PARAM_VERTEX_SHIFTS)
        if not text:
            return None
        return parse_vertex_shifts(text, f"model {self.model!r}'s parameter {PARAM_VERTEX_SHIFTS!r}")

    def check_features(self, names, scales, bundle_description: str) -> None:
        """Refuse to send features computed for ``names``/``scales`` (the bundle the caller uses,
        described as ``bundle_description``) to a model whose bundle reads others
        (:func:`check_served_features`)."""
        check_served_features(self.served_features(), names, scales, f"model {self.model!r} at {self.url}",
                              bundle_description)

    def infer(self, features: np.ndarray, *, request_id: str = "") -> np.ndarray:
        """Send one event's features ``[N, F]`` and return its labels ``[N]`` int64; ServingError on any failure."""
        return self.send(make_inputs(self.module, features), int(np.shape(features)[0]), request_id=request_id)

    def send(self, inputs: list, num_hits: int, *, request_id: str = "") -> np.ndarray:
        """Send prebuilt inputs (:func:`make_inputs`, reusable across requests) and return the checked labels."""
        outputs = make_outputs(self.module)
        what = f"request {request_id!r}" if request_id else "request"
        if self.protocol == "grpc":
            result = self._call(what, self.connection.infer, self.model, inputs, outputs=outputs,
                                request_id=request_id, client_timeout=self.timeout_s)
        else:
            result = self._call(what, self.connection.infer, self.model, inputs, outputs=outputs, request_id=request_id)
        return labels_from_result(result, num_hits)

    def close(self) -> None:
        """Close the connection."""
        try:
            self.connection.close()
        except Exception:  # closing a broken connection may fail; nothing is left to release
            pass

    def __enter__(self) -> "TritonClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
