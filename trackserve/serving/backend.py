"""What the Triton Python-backend models do, kept out of their thin ``model.py``.

A served model here is a callable with declared input tensors: :class:`PipelineModel`
runs the whole :class:`~trackserve.runtime.pipeline.Pipeline`, :class:`StageModel` one
ensemble stage. Both are built from the ``args`` Triton hands to ``initialize``: the
model's ``config.pbtxt`` (as JSON) names the bundle and the runtime settings in its
``parameters``, and the instance kind (``KIND_CPU``...) selects the device.
:func:`respond` turns a list of requests into exactly one response per request, in
order, each event processed on its own; a bad request gets an error response that says
what is wrong, and the other requests of the same call are not affected.

The ``pb_utils`` module (``triton_python_backend_utils``, which exists only inside the
Triton stub) is passed in, so this module imports and tests without Triton.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from ..errors import BackendUnavailableError, InputError, MemoryLimitError, TrackserveError
from ..events.features import FeatureSpec, beyond_detector
from ..runtime.config import RuntimeConfig, available_cores, require_device
from ..runtime.memory import SERVED_ADVICE, memory_refusal
from ..runtime.vertex_shifts import is_shifted, parse_vertex_shifts, shifts_in_words
from .interface import ENSEMBLE_STAGES, FEATURES, LABELS, TensorSpec, bundle_tensor_specs, stage_spec

#: ``config.pbtxt`` parameter keys the models read.
PARAM_BUNDLE = "bundle"
PARAM_STAGE = "stage"
PARAM_INTRA_OP_THREADS = "intra_op_threads"
PARAM_GRAPH_THREADS = "graph_threads"
PARAM_EDGE_CHUNK_SIZE = "edge_chunk_size"
PARAM_MEMORY_LIMIT_BYTES = "memory_limit_bytes"
#: The custom model's vertex shifts (``-100,-50,0,50,100``; :mod:`trackserve.runtime.vertex_shifts`).
PARAM_VERTEX_SHIFTS = "vertex_shifts"
#: The served bundle's features as JSON ``{"names": [...], "scales": [...]}``: written by
#: ``trackserve triton-repo`` for clients to check the features they compute against (the
#: models themselves read the bundle).
PARAM_FEATURES = "features"
#: The sha256 of the served bundle's ``pipeline.json`` (which names every network file's
#: sha256): written by ``trackserve triton-repo`` so that a client checking labels against
#: a local bundle can tell whether it is the bundle the server serves.
PARAM_PIPELINE_SHA256 = "pipeline_sha256"
_INT_PARAMETERS = {
    PARAM_INTRA_OP_THREADS: "intra_op_threads",
    PARAM_GRAPH_THREADS: "graph_threads",
    PARAM_EDGE_CHUNK_SIZE: "edge_chunk_size",
    PARAM_MEMORY_LIMIT_BYTES: "memory_limit_bytes",
}
#: Triton instance kinds and the runtime device each one runs on.
KIND_DEVICES = {"CPU": "cpu", "GPU": "cuda"}


def model_parameters(model_config: Mapping) -> dict[str, str]:
    """The ``parameters`` of a model config (as Triton passes it, JSON-decoded): key -> string value."""
    return {key: str(value.get("string_value", "")) for key, value in model_config.get("parameters", {}).items()}


def instance_count(model_config: Mapping) -> int:
    """How many instances of the model Triton runs: the ``count`` of each ``instance_group``
    entry (times its GPUs when it names some), summed; 1 for a config without instance
    groups (Triton's default)."""
    total = 0
    for group in model_config.get("instance_group") or [{}]:
        count = group.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InputError(f"instance_group count must be a whole number, got {count!r}")
        total += count * max(1, len(group.get("gpus") or []))
    return max(1, total)


def runtime_config(parameters: Mapping[str, str], instances: int = 1) -> RuntimeConfig:
    """The :class:`RuntimeConfig` the model parameters give. Unset thread counts are the
    cores shared among the model's ``instances`` (each Triton instance is a process of
    its own): ``cores // instances`` each, at least 1, so N instances never run N times
    as many threads as there are cores; with one instance, all the cores (the runtime's
    default). The other unset settings keep the runtime's defaults."""
    settings = {}
    for key, field in _INT_PARAMETERS.items():
        text = parameters.get(key, "").strip()
        if not text:
            continue
        try:
            settings[field] = int(text)
        except ValueError:
            raise InputError(f"model parameter {key!r} must be an integer, got {text!r}") from None
    text = parameters.get(PARAM_VERTEX_SHIFTS, "").strip()
    if text:
        settings["vertex_shifts"] = parse_vertex_shifts(text, f"model parameter {PARAM_VERTEX_SHIFTS!r}")
    if instances > 1:
        share = max(1, available_cores() // instances)
        settings.setdefault("intra_op_threads", share)
        settings.setdefault("graph_threads", share)
    return RuntimeConfig(**settings)


def bundle_path(args: Mapping, parameters: Mapping[str, str]) -> Path:
    """The bundle a model serves: parameter ``bundle``, relative to the model repository's root or absolute."""
    text = parameters.get(PARAM_BUNDLE, "").strip()
    if not text:
        raise InputError(f"the model config has no parameter {PARAM_BUNDLE!r} naming the bundle to serve")
    path = Path(text)
    if not path.is_absolute():
        path = Path(args["model_repository"]).parent / path
    return path


def instance_device(args: Mapping) -> str:
    """The runtime device of the model instance (``KIND_CPU`` -> ``"cpu"``, ``KIND_GPU`` -> ``"cuda"``)."""
    kind = str(args.get("model_instance_kind", "CPU")).upper()
    if kind not in KIND_DEVICES:
        raise InputError(f"instance kind {kind!r} is not supported; use KIND_CPU or KIND_GPU in instance_group")
    return KIND_DEVICES[kind]


def _model_config(args: Mapping) -> dict:
    config = args["model_config"]
    return json.loads(config) if isinstance(config, str) else dict(config)


_AGAIN = "write the repository again from the bundle (trackserve triton-repo ... --overwrite)"


def check_bundle_unchanged(bundle: Path, parameters: Mapping[str, str]) -> None:
    """Refuse, before the bundle is loaded, to serve a bundle (directory, or its ``pipeline.json``)
    whose ``pipeline.json`` changed since ``trackserve triton-repo`` recorded its sha256 (parameter
    ``pipeline_sha256``; a client checking labels would compare with the wrong bundle).
    InputError saying to write the repository again; checked first, so that a change that also
    breaks the bundle is named as the change it is, at every try to load it."""
    from ..bundle import PIPELINE_FILE, file_sha256

    recorded = parameters.get(PARAM_PIPELINE_SHA256, "").strip()
    directory = bundle.parent if bundle.name == PIPELINE_FILE else bundle
    if not recorded or not (directory / PIPELINE_FILE).is_file():
        return  # no record to compare; a missing bundle is named by its loading
    actual = file_sha256(directory / PIPELINE_FILE)
    if actual != recorded:
        raise InputError(f"the bundle {directory} was changed after its model config was written: its "
                         f"{PIPELINE_FILE} has sha256 {actual[:12]}..., the config's parameter "
                         f"{PARAM_PIPELINE_SHA256!r} records {recorded[:12]}...; {_AGAIN}, so that the config "
                         "and the clients checking against it describe the bundle served")


@contextlib.contextmanager
def _repository_copy_advice():
    """A bundle the model cannot load is the model repository's copy: its own advice (restore a
    file, export into the bundle) would mend the copy, not the repository; say what does."""
    from ..errors import BundleError

    try:
        yield
    except BundleError as error:
        raise BundleError(f"{error}; this is the model repository's copy of the bundle, which such a repair would "
                          "set apart from the config written for it: instead, write the repository again from the "
                          "original bundle (trackserve triton-repo ... --overwrite)") from error


def load_checked(args: Mapping, parameters: Mapping[str, str], build: Callable[[Path], "ServedModel"]) -> "ServedModel":
    """``build(bundle)`` for the bundle the config names (:func:`bundle_path`), checked as a
    model repository's copy: unchanged since its config was written (before it is loaded,
    :func:`check_bundle_unchanged`), loadable (else the repository is to be written again), and
    described by its config (:func:`check_config_matches`)."""
    bundle = bundle_path(args, parameters)
    check_bundle_unchanged(bundle, parameters)
    with _repository_copy_advice():
        model = build(bundle)
    check_config_matches(args, model)
    return model


def check_config_matches(args: Mapping, model: "ServedModel") -> None:
    """Refuse to load a model whose ``config.pbtxt`` declares an input or output with other
    dims or dtype than the bundle gives (every request would be refused). InputError saying to
    write the repository again."""
    bundle = model.bundle_directory
    model_config = _model_config(args)
    for kind, specs in (("input", model.inputs), ("output", model.outputs)):
        declared = {str(entry.get("name")): entry for entry in model_config.get(kind) or []}
        if not declared:
            continue  # nothing declared to compare (Triton's own configs always declare them)
        for spec in specs:
            entry = declared.get(spec.name)
            if entry is None:
                raise InputError(f"the model config declares no {kind} {spec.name!r}, which the bundle's model "
                                 f"has ({spec.config_dtype} {list(spec.dims)}); {_AGAIN}")
            try:
                dims = tuple(int(dim) for dim in entry.get("dims") or [])
            except (TypeError, ValueError):
                dims = None
            if dims != spec.dims or entry.get("data_type", spec.config_dtype) != spec.config_dtype:
                raise InputError(f"the model config declares {kind} {spec.name!r} as {entry.get('data_type')} "
                                 f"{list(entry.get('dims') or [])}, but the bundle {bundle} gives {spec.config_dtype} "
                                 f"{list(spec.dims)}; {_AGAIN}")


def _served_settings(args: Mapping) -> tuple[dict[str, str], RuntimeConfig]:
    """The model parameters of an ``initialize``'s ``args`` and the runtime settings they and
    the model's instance count give."""
    check_served_numpy()  # the model fails to load, naming why, rather than answering wrongly
    model_config = _model_config(args)
    parameters = model_parameters(model_config)
    return parameters, runtime_config(parameters, instance_count(model_config))


#: The shortest time between two log lines about requests with hits beyond the detector.
FAR_HITS_LOG_INTERVAL_S = 60.0


class FarHitsLog:
    """Lines in the server's log about answered requests whose hits lie beyond the TrackML
    detector for the bundle's scales (:func:`~trackserve.events.features.beyond_detector`:
    typically features not divided by the scales, or columns in another order), whose
    labels are then mostly wrong although the request succeeds: what ``trackserve run`` and
    ``client`` say on stderr for a feature file, for the clients that do not (a plain
    ``tritonclient`` call). The first such request is logged at once, later ones at most
    once per ``interval_s`` with the count since the last line, so a client sending
    thousands floods nothing. Safe to call from several threads."""

    def __init__(self, spec: FeatureSpec, log: Callable[[str], None], *, interval_s: float = FAR_HITS_LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.spec, self.log, self.interval_s, self.clock = spec, log, interval_s, clock
        self._lock = threading.Lock()
        self._unlogged = 0
        self._next_line = None

    def check(self, features: np.ndarray) -> None:
        """Count ``features [N, F]`` (an answered request's) when its hits lie beyond the
        detector, and write a line when one is due."""
        found = beyond_detector(features, self.spec)
        if found is None:
            return
        with self._lock:
            self._unlogged += 1
            now = self.clock()
            if self._next_line is not None and now < self._next_line:
                return
            count, self._unlogged = self._unlogged, 0
            self._next_line = now + self.interval_s
        since = "" if count == 1 else f" ({count:,} requests like this since the last such line)"
        self.log(f"trackserve: a request's {found}{since}: its labels are most likely wrong; were its features "
                 f"divided by the scales, and in this order? (at most one such line per {self.interval_s:g} s)")


class ServedModel:
    """A callable ``model(arrays) -> outputs`` with the tensor specs of its inputs and outputs."""

    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    #: The directory of the bundle the model serves (as loaded).
    bundle_directory: Path
    #: Where answered requests with hits beyond the detector are logged (:meth:`log_far_hits`).
    far_hits: FarHitsLog | None = None

    def __call__(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Compute the outputs of one request."""
        raise NotImplementedError  # pragma: no cover - subclasses override

    def event_feature_spec(self) -> FeatureSpec | None:
        """The bundle's features when this model takes an event's features as its client sent
        them (the custom model, the ensemble's first stage); None for the others."""
        return None

    def log_far_hits(self, log: Callable[[str], None]) -> None:
        """Write to ``log`` about answered requests with hits beyond the detector
        (:class:`FarHitsLog`), when this model takes the event's features as sent."""
        spec = self.event_feature_spec()
        self.far_hits = None if spec is None else FarHitsLog(spec, log)


class PipelineModel(ServedModel):
    """The whole pipeline of a bundle: ``FEATURES [N, F]`` -> ``LABELS [N]`` (zero hits give zero labels)."""

    def __init__(self, bundle: str | Path, *, device: str = "cpu", config: RuntimeConfig | None = None):
        from ..runtime.pipeline import Pipeline

        self.pipeline = Pipeline(bundle, device=device, config=config)
        self.bundle_directory = Path(self.pipeline.bundle.directory)
        specs = bundle_tensor_specs(self.pipeline.bundle)
        self.inputs = (specs[FEATURES],)
        self.outputs = (specs[LABELS],)

    @classmethod
    def from_args(cls, args: Mapping) -> "PipelineModel":
        """Build from the ``args`` of a Python-backend ``initialize``."""
        parameters, config = _served_settings(args)
        return load_checked(args, parameters, lambda bundle: cls(bundle, device=instance_device(args), config=config))

    def __call__(self, arrays):
        return {LABELS: self.pipeline.run(arrays[FEATURES]).labels}

    def event_feature_spec(self) -> FeatureSpec:
        return self.pipeline.feature_spec


class StageModel(ServedModel):
    """One ensemble stage of a bundle (parameter ``stage``), see :mod:`trackserve.serving.stages`."""

    def __init__(self, bundle: str | Path, stage: str, *, device: str = "cpu", config: RuntimeConfig | None = None):
        from ..bundle import load_bundle
        from .stages import make_stage

        require_device(device)
        loaded = load_bundle(bundle)
        self.bundle_directory = Path(loaded.directory)
        if loaded.stages.vertex_shifts is not None:
            raise InputError(f"the bundle {bundle} runs each event at vertex shifts "
                             f"{shifts_in_words(loaded.stages.vertex_shifts)} "
                             "(stages.vertex_shifts), which only the custom model does; the ensemble's stage models run "
                             "each stage once: serve it as the custom model")
        self.stage = make_stage(stage, loaded, config)
        specs = bundle_tensor_specs(loaded)
        spec = stage_spec(stage)
        self.inputs = tuple(specs[name] for name in spec.inputs)
        self.outputs = tuple(specs[name] for name in spec.outputs)

    @classmethod
    def from_args(cls, args: Mapping) -> "StageModel":
        """Build from the ``args`` of a Python-backend ``initialize``."""
        parameters, config = _served_settings(args)
        stage = parameters.get(PARAM_STAGE, "").strip()
        if not stage:
            raise InputError(f"the stage model config has no parameter {PARAM_STAGE!r} naming its stage")
        if is_shifted(config.vertex_shifts):
            raise InputError(f"the stage model {stage!r} has the parameter {PARAM_VERTEX_SHIFTS!r}: an ensemble runs each "
                             "stage once, and only the custom model runs an event once per vertex shift; remove it")
        return load_checked(args, parameters,
                            lambda bundle: cls(bundle, stage, device=instance_device(args), config=config))

    def __call__(self, arrays):
        return self.stage(arrays)

    def event_feature_spec(self) -> FeatureSpec | None:
        if self.stage.name != ENSEMBLE_STAGES[0].name:
            return None
        return self.stage.bundle.feature_spec


def read_input(pb_utils, request, spec: TensorSpec) -> np.ndarray:
    """The input ``spec.name`` of a request as a numpy array, or InputError: missing, wrong dtype, wrong dims."""
    tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
    if tensor is None:
        raise InputError(f"the request has no input {spec.name!r}: send {spec.name} {spec.wire_dtype} {list(spec.dims)}")
    array = tensor.as_numpy()
    if array.dtype != np.dtype(spec.dtype):
        raise InputError(f"input {spec.name!r} must be {spec.wire_dtype} ({spec.dtype}), got {array.dtype}")
    if array.ndim != len(spec.dims) or any(want not in (-1, got) for want, got in zip(spec.dims, array.shape)):
        raise InputError(f"input {spec.name!r} must have shape {list(spec.dims)}, got {list(array.shape)}")
    return array


def output_tensor(pb_utils, name: str, array: np.ndarray):
    """A ``pb_utils.Tensor`` of a numpy array (numpy 1: see :func:`check_served_numpy`)."""
    return pb_utils.Tensor(name, np.ascontiguousarray(array))


def check_served_numpy(version: str | None = None) -> None:
    """Refuse to serve with numpy 2 or later (``version``: numpy's, default the one imported).

    The Python backend of tritonserver 2.51 (in nvidia-pytriton 0.7.0, which requires
    numpy < 2) passes tensors as numpy 1 arrays: with numpy 2 its outputs arrive empty or
    its DLPack exchange fails, and models have returned wrong labels without an error."""
    version = np.__version__ if version is None else version
    if int(version.split(".")[0]) >= 2:
        raise BackendUnavailableError(
            f"numpy {version} is installed where the models are served, but tritonserver's Python backend "
            "(nvidia-pytriton 0.7.0) needs numpy < 2: with numpy 2 its tensors arrive empty or wrong; "
            "pip install 'numpy<2' (installing another extra after serving, such as cupy's, can upgrade numpy)")


def error_response(pb_utils, message: str, *, invalid_argument: bool):
    """A response that carries only an error: ``INVALID_ARG`` for bad input, ``INTERNAL`` otherwise."""
    code_name = "INVALID_ARG" if invalid_argument else "INTERNAL"
    code = getattr(pb_utils.TritonError, code_name, None)
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def respond_one(pb_utils, request, model: ServedModel, log: Callable[[str], None] | None = None):
    """The response to one request: the model's outputs, or an error response naming what went wrong.

    A request its client gave up on while it waited (a gRPC deadline passed, the call was
    cancelled) is not run: its event would only delay the requests after it."""
    if _cancelled(request):
        code = getattr(pb_utils.TritonError, "CANCELLED", None)
        message = "the request was cancelled by its client (timed out or interrupted) before it ran"
        error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
        return pb_utils.InferenceResponse(output_tensors=[], error=error)
    try:
        arrays = {spec.name: read_input(pb_utils, request, spec) for spec in model.inputs}
        outputs = model(arrays)
        response = pb_utils.InferenceResponse(
            output_tensors=[output_tensor(pb_utils, spec.name, outputs[spec.name]) for spec in model.outputs])
    except MemoryLimitError as error:  # (the client cannot change the model's RuntimeConfig: say what it can do)
        message = memory_refusal(error.subject, error.needed, error.limit, SERVED_ADVICE)
        return error_response(pb_utils, f"bad request: {message}", invalid_argument=True)
    except InputError as error:
        return error_response(pb_utils, f"bad request: {error}", invalid_argument=True)
    except TrackserveError as error:
        return error_response(pb_utils, str(error), invalid_argument=False)
    except Exception as error:  # a bug must fail this request only, never the whole batch
        if log is not None:
            log(traceback.format_exc())
        return error_response(pb_utils, f"internal error: {type(error).__name__}: {error}", invalid_argument=False)
    if model.far_hits is not None:
        try:  # a note about an answered request: it must not cost the answer
            model.far_hits.check(arrays[FEATURES])
        except Exception:
            if log is not None:
                log(traceback.format_exc())
    return response


def _cancelled(request) -> bool:
    """Whether Triton marked ``request`` cancelled (python_backend 23.10 and later; False before)."""
    is_cancelled = getattr(request, "is_cancelled", None)
    try:
        return bool(is_cancelled()) if callable(is_cancelled) else False
    except Exception:  # a backend that cannot tell: run the request
        return False


def respond(pb_utils, requests, model: ServedModel, log: Callable[[str], None] | None = None) -> list:
    """One response per request, in order; each request is one event processed on its own."""
    return [respond_one(pb_utils, request, model, log) for request in requests]


def error_logger(pb_utils) -> Callable[[str], None]:
    """A function that writes to Triton's log at error level (stderr where the stub has no logger)."""
    return _logger(pb_utils, "log_error")


def warning_logger(pb_utils) -> Callable[[str], None]:
    """A function that writes to Triton's log at warning level (stderr where the stub has no logger)."""
    return _logger(pb_utils, "log_warn")


def _logger(pb_utils, level: str) -> Callable[[str], None]:
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None and hasattr(logger, level):
        return getattr(logger, level)

    def to_stderr(message: str) -> None:
        import sys

        print(message, file=sys.stderr, flush=True)

    return to_stderr
