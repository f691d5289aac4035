"""Export a torch network to ONNX and prove, on the spot, that ONNX Runtime computes the same thing.

:func:`export_network` traces the network with the legacy (TorchScript-based) exporter
at the sizes of its kind's :class:`~trackserve.export.specs.ExportSpec`, with dynamic
``num_hits`` / ``num_edges`` axes and the interface's names, then runs
:func:`validate_onnx`, which compares ONNX Runtime with PyTorch:

1. names: the ONNX inputs and outputs are the interface's, in order;
2. shapes: their declared dtypes and dims (fixed sizes equal, dynamic dims left
   dynamic), then, for each validation case, every output's shape;
3. values: for each case (sizes other than the traced ones, down to one hit and up
   to a 50,000-edge power-law graph) and each of ``runs`` runs of one session at
   ONNX Runtime's default threading, every output satisfies

       max|onnx - torch| <= tolerance * max(1, max|torch|)      (tolerance = 1e-4)

   where the maxima run over all elements of that output in that case (a NaN or
   infinity where the other side has a different value counts as an infinite
   difference), and every value is finite on both sides (NaN or infinity agreed on by
   both still fails: a network with NaN weights computes nothing);
4. the graph: :func:`~trackserve.export.graph_scan.scan_graph` finds no scatter
   known to aggregate wrongly.

Every failure is collected, then one :class:`~trackserve.errors.ExportParityError`
lists them all together with every output's difference. Needs torch and onnx.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle import TensorInfo, file_sha256, tensor_problems
from ..errors import ExportError, ExportParityError, InputError
from ..paths import output_directory, output_file, same_file, special_file, written_path
from .graph_scan import GraphHazard, scan_graph
from .specs import ExportSpec, ShapeCase, get_spec

#: The ONNX opset written by default: supported by the legacy exporter, ONNX Runtime
#: 1.17 and later, and TensorRT 8.6 and later; it has ScatterElements(reduction="add").
DEFAULT_OPSET = 17

#: The lowest ONNX opset written: the first with ScatterElements(reduction="add"); below it
#: the legacy exporter writes message passing as overwrite-then-add scatters (wrong sums).
MIN_OPSET = 16

#: The highest opset written when torch does not say which it knows.
_FALLBACK_MAX_OPSET = 20


@dataclass(frozen=True)
class OutputCheck:
    """The comparison of one output in one validation case, over all runs.

    ``torch_nonfinite`` and ``onnx_nonfinite`` count the NaN and infinite values of the
    output (ONNX Runtime: in its worst run) among its ``values``: a network whose outputs
    are not finite fails, even where both sides agree on them.
    """

    case: str
    output: str
    max_abs_diff: float
    bound: float
    reference_scale: float
    run_spread: float
    runs: int
    values: int = 0
    torch_nonfinite: int = 0
    onnx_nonfinite: int = 0

    @property
    def passed(self) -> bool:
        """Whether the difference is within the bound and every value is finite."""
        return self.max_abs_diff <= self.bound and not self.torch_nonfinite and not self.onnx_nonfinite

    def __str__(self) -> str:
        verdict = "ok" if self.passed else "FAIL"
        text = (
            f"{self.case}: '{self.output}' max|onnx - torch| = {self.max_abs_diff:.3g}, "
            f"bound {self.bound:.3g} (max|torch| = {self.reference_scale:.3g}), {self.runs} run(s)"
        )
        nonfinite = [f"{count} of {self.values} values in {side}" for count, side in
                     ((self.torch_nonfinite, "PyTorch"), (self.onnx_nonfinite, "ONNX Runtime")) if count]
        if nonfinite:
            text += ", not finite (NaN or infinity): " + " and ".join(nonfinite)
        text += f": {verdict}"
        if self.run_spread > 0:
            text += f"; runs differ from each other by up to {self.run_spread:.3g} (nondeterministic kernel)"
        return text


@dataclass(frozen=True)
class ValidationReport:
    """What :func:`validate_onnx` compared and found."""

    path: str
    kind: str
    tolerance: float
    runs: int
    providers: tuple[str, ...]
    checks: tuple[OutputCheck, ...]
    hazards: tuple[GraphHazard, ...]
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        """True when nothing failed."""
        return not self.failures

    def summary(self) -> str:
        """Multi-line text: the failures (if any), then every comparison."""
        lines = [
            f"{self.kind} network {self.path}: ONNX Runtime ({', '.join(self.providers)}, default threading) "
            f"vs PyTorch, bound = {self.tolerance:g} * max(1, max|torch|)"
        ]
        if self.failures:
            lines.append(f"{len(self.failures)} failure(s):")
            lines += [f"  - {failure}" for failure in self.failures]
        if self.checks:
            lines.append("comparisons:")
            lines += [f"  {check}" for check in self.checks]
        return "\n".join(lines)


@dataclass(frozen=True)
class ExportReport:
    """The result of :func:`export_network`: the file, its checksum, interface and validation."""

    path: str
    kind: str
    opset: int
    sha256: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    validation: ValidationReport | None
    export_warnings: tuple[str, ...] = ()


def infer_num_features(module, num_features: int | None = None) -> int:
    """The number of input features F of ``module``: ``num_features`` if given, else its config's ``in_channels``."""
    if num_features is None:
        config = getattr(module, "config", None)
        if isinstance(config, dict):
            num_features = config.get("in_channels", config.get("num_features"))
    if num_features is None:
        raise ExportError(
            f"cannot tell how many features {type(module).__name__} takes: it has no config with 'in_channels'; "
            "pass num_features (--num-features on the command line)"
        )
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
        raise ExportError(f"num_features must be an integer >= 1, got {num_features!r}")
    return num_features


def _resolve_kind(module, kind: str | None) -> ExportSpec:
    if kind is None:
        kind = getattr(module, "kind", None)
        if not kind:
            raise ExportError(f"{type(module).__name__} declares no kind: pass kind='embedding' or 'edge_classifier'")
    try:
        return get_spec(kind)
    except ValueError as error:
        raise ExportError(str(error)) from None


def _module_device(module):
    import torch

    for parameter in module.parameters():
        return parameter.device
    return torch.device("cpu")


def torch_outputs(module, spec: ExportSpec, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``module`` (already in eval mode) on ``inputs``; its outputs by name, as numpy arrays.

    Raises ExportError when the forward fails or returns the wrong number of tensors.
    """
    import torch

    device = _module_device(module)
    args = [torch.from_numpy(inputs[name]).to(device) for name in spec.input_names]
    try:
        with torch.no_grad():
            result = module(*args)
    except Exception as error:
        shapes = ", ".join(f"{name} {list(inputs[name].shape)}" for name in spec.input_names)
        raise ExportError(f"the {spec.kind} network's forward fails on {shapes}: {type(error).__name__}: {error}") from error
    results = list(result) if isinstance(result, (tuple, list)) else [result]
    if len(results) != len(spec.output_names) or not all(isinstance(r, torch.Tensor) for r in results):
        raise ExportError(
            f"the {spec.kind} network must return {len(spec.output_names)} tensor(s) ({', '.join(spec.output_names)}), "
            f"it returned {type(result).__name__}"
            + (f" of {len(results)}" if isinstance(result, (tuple, list)) else "")
        )
    return {name: r.detach().cpu().numpy() for name, r in zip(spec.output_names, results)}


def _shape_problem(tensor: TensorInfo, shape: tuple[int, ...], sizes: dict[str, int]) -> str | None:
    """Why ``shape`` does not fit ``tensor.dims`` with dynamic dims ``sizes``, or None."""
    expected = [sizes.get(d, d) if isinstance(d, str) else d for d in tensor.dims]
    if list(shape) != expected:
        return f"has shape {list(shape)}, the interface needs {list(tensor.dims)} = {expected}"
    return None


def max_abs_difference(got: np.ndarray, want: np.ndarray) -> float:
    """``max|got - want|`` over all elements, in float64; 0 for empty arrays.

    A NaN facing a NaN, or an infinity facing the same infinity, counts as equal; any
    other non-finite value counts as an infinite difference.
    """
    if want.size == 0:
        return 0.0
    a, b = got.astype(np.float64), want.astype(np.float64)
    same = (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))
    with np.errstate(invalid="ignore"):
        diff = np.abs(a - b)
    diff[same] = 0.0
    diff[np.isnan(diff)] = np.inf
    return float(diff.max())


def _scale(reference: np.ndarray) -> float:
    finite = np.abs(reference[np.isfinite(reference)]) if reference.size else reference
    return float(finite.max()) if finite.size else 0.0


def _nonfinite_count(values: np.ndarray) -> int:
    """How many elements of ``values`` are NaN or infinite."""
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def _nonfinite_parameters(module) -> list[str]:
    """``name (count of size)`` of each parameter or buffer of ``module`` holding NaN or infinity."""
    import torch

    found = []
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if tensor.is_floating_point():
            count = int(tensor.numel() - torch.isfinite(tensor).sum())
            if count:
                found.append(f"{name} ({count} of {tensor.numel()})")
    return found


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _metadata_failures(session, inputs: tuple[TensorInfo, ...], outputs: tuple[TensorInfo, ...]) -> list[str]:
    """Names, dtypes and declared dims of the session against the resolved interface."""
    failures = []
    for role, declared, actual in (("inputs", inputs, session.get_inputs()), ("outputs", outputs, session.get_outputs())):
        for want, got in zip(declared, actual):
            failures.extend(tensor_problems(
                want, got, subject=f"{role[:-1]} '{want.name}'", reference="the interface needs",
                dynamic_reference="the interface has", dynamic_hint=" (exported without dynamic axes)", fixed_must_match_symbolic=False,
            ))
    return failures


def read_onnx_model(path: str | os.PathLike):
    """The ``onnx.ModelProto`` of the ONNX file ``path`` (external data not loaded).

    Raises :class:`~trackserve.errors.InputError` with one line when the path is missing,
    is a directory, or holds no ONNX model (cut short, damaged, or another kind of file).
    """
    import onnx

    path = Path(path)
    if path.is_dir():
        raise InputError(f"ONNX file {path} is a directory; give the .onnx file")
    if not path.is_file():
        raise InputError(f"ONNX file {path} does not exist")
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and others
        raise InputError(f"ONNX file {path} cannot be read as an ONNX model ({_first_line(error)}): it is cut short, "
                         "damaged or not ONNX; export it again") from None
    if not model.HasField("graph"):
        raise InputError(f"ONNX file {path} holds no ONNX graph (empty or not ONNX); export it again")
    return model


def _check_runs(runs) -> None:
    """``runs`` (ONNX Runtime runs per validation case) must be an integer >= 1."""
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise InputError(f"runs (ONNX Runtime runs per validation case) must be an integer >= 1, got {runs!r}")


def validate_onnx(
    path: str | os.PathLike,
    module,
    kind: str | None = None,
    *,
    num_features: int | None = None,
    runs: int = 3,
    cases: tuple[ShapeCase, ...] | None = None,
    tolerance: float | None = None,
    providers: list[str] | None = None,
    check_graph: bool = True,
    seed: int = 0,
) -> ValidationReport:
    """Check that the ONNX file ``path`` computes what the torch ``module`` computes.

    ``kind``: ``embedding`` or ``edge_classifier`` (or ``filter``/``gnn``; default:
    ``module.kind``). ``cases`` default to the kind's validation cases; each runs
    ``runs`` times in one ONNX Runtime session with default threading on ``providers``
    (default CPU). ``check_graph`` also scans the graph for known-bad scatters. Returns
    the report when everything passes; otherwise raises
    :class:`~trackserve.errors.ExportParityError` listing every failure and comparison
    (the report is its ``report`` attribute). See the module docstring for the bound.
    A path that holds no readable ONNX model raises :class:`~trackserve.errors.InputError`
    (see :func:`read_onnx_model`).
    """
    import onnxruntime as ort

    spec = _resolve_kind(module, kind)
    num_features = infer_num_features(module, num_features)
    tolerance = spec.tolerance if tolerance is None else float(tolerance)
    _check_runs(runs)
    providers = list(providers or ["CPUExecutionProvider"])
    path = Path(path)
    failures: list[str] = []
    checks: list[OutputCheck] = []

    model = read_onnx_model(path)  # a file that is no ONNX model: one clear error, not a failure listing
    hazards = tuple(scan_graph(model)) if check_graph else ()
    try:
        session = ort.InferenceSession(str(path), ort.SessionOptions(), providers=providers)
    except Exception as error:
        failures.append(f"ONNX Runtime cannot load {path}: {_first_line(error)}")
        session = None

    was_training = getattr(module, "training", False)
    if hasattr(module, "eval"):
        module.eval()
    try:
        if session is not None:
            failures += _compare(session, module, spec, num_features, cases or spec.cases, runs, tolerance, seed, checks)
        if any(check.torch_nonfinite for check in checks) and (broken := _nonfinite_parameters(module)):
            listed = ", ".join(broken[:3]) + (f" and {len(broken) - 3} more" if len(broken) > 3 else "")
            failures.append(f"the torch network's weights hold NaN or infinity: {listed}; "
                            "use weights from before the training diverged")
    finally:
        if was_training:
            module.train()
    failures += [f"graph: {hazard}" for hazard in hazards]
    report = ValidationReport(
        str(path), spec.kind, tolerance, runs, tuple(session.get_providers() if session else providers),
        tuple(checks), hazards, tuple(failures),
    )
    if failures:
        error = ExportParityError(report.summary())
        error.report = report
        raise error
    return report


def _compare(session, module, spec, num_features, cases, runs, tolerance, seed, checks) -> list[str]:
    """Names, then shapes, then values; appends to ``checks`` and returns the failures."""
    failures = []
    input_names = [i.name for i in session.get_inputs()]
    output_names = [o.name for o in session.get_outputs()]
    if input_names != spec.input_names:
        failures.append(f"inputs are named {input_names}, the {spec.kind} interface needs {spec.input_names}")
    if output_names != spec.output_names:
        failures.append(f"outputs are named {output_names}, the {spec.kind} interface needs {spec.output_names}")
    if failures:
        return failures

    trace_outputs = torch_outputs(module, spec, spec.make_inputs(spec.trace, num_features, seed))
    inputs_info, outputs_info = spec.resolve(num_features, {k: v.shape for k, v in trace_outputs.items()})
    failures += _metadata_failures(session, inputs_info, outputs_info)

    for index, case in enumerate(cases):
        label = f"case '{case.describe(with_edges='edge_index' in spec.input_names)}'"
        feeds = spec.make_inputs(case, num_features, seed + 1 + index)
        sizes = {"num_hits": case.num_hits, "num_edges": case.num_edges}
        try:
            reference = torch_outputs(module, spec, feeds)
        except ExportError as error:
            failures.append(f"{label}: PyTorch itself fails: {error}")
            continue
        for tensor in outputs_info:
            problem = _shape_problem(tensor, reference[tensor.name].shape, sizes)
            if problem:
                failures.append(f"{label}: PyTorch output '{tensor.name}' {problem}")
        results = []
        for run in range(runs):
            try:
                results.append(dict(zip(spec.output_names, session.run(spec.output_names, feeds))))
            except Exception as error:
                failures.append(f"{label}: ONNX Runtime fails (run {run + 1}): {_first_line(error)}")
                break
        if len(results) < runs:
            continue
        for name in spec.output_names:
            want = reference[name]
            got_shapes = {tuple(r[name].shape) for r in results}
            if got_shapes != {tuple(want.shape)}:
                shapes = " or ".join(str(list(shape)) for shape in sorted(got_shapes))  # one per run when they differ
                failures.append(f"{label}: output '{name}' has shape {shapes} in ONNX Runtime, {list(want.shape)} in "
                                "PyTorch")
                continue
            scale = _scale(want)
            check = OutputCheck(
                case=label,
                output=name,
                max_abs_diff=max(max_abs_difference(r[name], want) for r in results),
                bound=tolerance * max(1.0, scale),
                reference_scale=scale,
                run_spread=max(max_abs_difference(r[name], results[0][name]) for r in results),
                runs=runs,
                values=int(want.size),
                torch_nonfinite=_nonfinite_count(want),
                onnx_nonfinite=max(_nonfinite_count(r[name]) for r in results),
            )
            checks.append(check)
            if not check.passed:
                failures.append(str(check))
    return failures


def supported_opsets() -> range:
    """The ONNX opsets :func:`export_network` writes: :data:`MIN_OPSET` to the highest the
    installed torch's exporter knows."""
    try:
        from torch.onnx import _constants

        highest = int(_constants.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):  # a private module of torch: absent in some versions
        highest = _FALLBACK_MAX_OPSET
    return range(MIN_OPSET, highest + 1)


def check_opset(opset, option: str = "opset") -> int:
    """``opset`` when :func:`export_network` can write it; else InputError naming ``option``
    (``--opset`` on the command line) with the supported range."""
    opsets = supported_opsets()
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in opsets:
        raise InputError(
            f"{option} {opset!r} is not supported: trackserve exports ONNX opsets {opsets.start} to {opsets[-1]} "
            f"({opsets.start} is the first with ScatterElements(reduction='add'), which message passing needs; "
            f"{opsets[-1]} the last the installed torch writes); the default is {DEFAULT_OPSET}"
        )
    return opset


def check_output_path(path: str | os.PathLike, option: str, *, overwrite: bool = False,
                      inputs: tuple = ()) -> Path:
    """Check, before any work, that an export may write the ONNX file ``path`` (given by ``option``).

    Raises InputError naming ``option`` when ``path`` is one of the files ``inputs`` the job
    reads (never written over, even with ``overwrite``), a device, FIFO or socket (even with
    ``overwrite``: the export would put a regular file in its place), an existing file and not
    ``overwrite``, a directory, a symbolic link loop, or a place where no file can be created
    (:func:`~trackserve.paths.output_file`). A symbolic link is checked as the file it points
    to, which the export replaces. A missing parent directory is created, as
    :func:`export_network` would create it.
    """
    path = Path(path)
    for source in inputs:
        if source is not None and path.exists() and Path(source).exists() and same_file(path, source):
            raise InputError(f"{option} {path} is the input file {source}: writing it would destroy the input; "
                             "give another file name")
    target = written_path(path)
    if target.is_symlink():  # realpath stops at a link it cannot follow: a loop
        raise InputError(f"{option} {path} is a symbolic link that leads to no file (a loop); give a file name")
    special = special_file(target)
    if special:
        raise InputError(f"{option} {path} is {special}, not a file: an ONNX network is written to a regular file; "
                         "give a file name")
    if target.exists() and not target.is_dir() and not overwrite:
        raise InputError(f"{option} {path} exists; pass --overwrite to replace it, or give another file name")
    if target.parent.exists() and not target.parent.is_dir():
        raise InputError(f"{option} {path}: {target.parent} is a file, not a directory")
    if not target.parent.exists():
        output_directory(target.parent, option)
    output_file(target, option)  # also tries creating a file there, where the export writes its temporary one
    return path


@contextlib.contextmanager
def _exporter_log_discarded():
    """Send the process's standard output (file descriptor 1) to the null device meanwhile.

    torch's TorchScript-based exporter switches its C++ log on for every export (its
    ``setup_onnx_logging`` tests the function ``_jit_is_onnx_log_enabled`` instead of
    calling it), so an export that fails first prints the whole Torch IR graph, hundreds
    of lines, to standard output; the error itself says what failed.
    """
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no standard output to protect
        yield
        return
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _record_network(path: Path, module) -> None:
    """Write what network the ONNX file at ``path`` holds into its metadata
    (:data:`~trackserve.bundle.schema.NETWORK_METADATA_KEY`: architecture and config, as a
    bundle's entry records them), unless its config is not JSON (then nothing is recorded)."""
    import onnx

    from ..bundle.saving import architecture_name
    from ..bundle.schema import NETWORK_METADATA_KEY, network_description

    try:
        description = network_description(architecture_name(module), getattr(module, "config", None) or {})
    except (TypeError, ValueError):
        return
    model = onnx.load(os.fspath(path))
    kept = [prop for prop in model.metadata_props if prop.key != NETWORK_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=NETWORK_METADATA_KEY, value=description)
    onnx.save(model, os.fspath(path))


def export_network(
    module,
    kind: str | None,
    path: str | os.PathLike,
    *,
    num_features: int | None = None,
    opset: int = DEFAULT_OPSET,
    validate: bool = True,
    runs: int = 3,
    providers: list[str] | None = None,
    follow_link: bool = False,
) -> ExportReport:
    """Export ``module`` to the ONNX file ``path`` and (``validate``) check it against PyTorch.

    ``kind``: ``embedding`` or ``edge_classifier`` (``filter``/``gnn`` accepted; ``None``
    takes ``module.kind``). ``num_features``: F (default: ``module.config["in_channels"]``).
    The file is written next to ``path`` first and moved into place only once it passed
    validation, so a failed export never replaces a good file; a device, FIFO or socket is
    refused. A symbolic link ``path`` is replaced by the file, so a file it points to (another
    bundle's) is left alone, as :func:`~trackserve.bundle.saving.save_weights` does; with
    ``follow_link`` (``--output`` of ``export`` and ``import``) it is written through instead,
    its target replaced and the link kept. The graph written is that of
    :func:`~trackserve.export.inference_forms.inference_form` (a cheaper form of the same
    function for some networks), validated against ``module`` itself; the file records the
    network's architecture and config in its metadata (``trackserve.network``), which a
    bundle's loading compares with the network's entry. Raises
    :class:`~trackserve.errors.ExportError` when the network cannot be exported and
    :class:`~trackserve.errors.ExportParityError` (with the
    :class:`ValidationReport` as its ``report`` attribute) when ONNX Runtime disagrees
    with PyTorch; an ``opset`` outside :func:`supported_opsets` raises
    :class:`~trackserve.errors.InputError`.
    """
    import torch

    from .inference_forms import inference_form

    spec = _resolve_kind(module, kind)
    num_features = infer_num_features(module, num_features)
    check_opset(opset)
    if validate:
        _check_runs(runs)
    path = Path(path)
    target = written_path(path) if follow_link else path
    if target.is_dir():  # checked before any work: the file is moved into place only at the end
        raise InputError(f"{path} is a directory: give the ONNX file to write (for example {path / 'network.onnx'})")
    special = special_file(target)
    if special:  # os.replace would put a regular file in its place (/dev/null, as root)
        raise InputError(f"{path} is {special}, not a file: an ONNX network is written to a regular file")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".partial")

    was_training = getattr(module, "training", False)
    module.eval()
    try:
        trace_inputs = spec.make_inputs(spec.trace, num_features)
        trace_outputs = torch_outputs(module, spec, trace_inputs)
        sizes = {"num_hits": spec.trace.num_hits, "num_edges": spec.trace.num_edges}
        inputs_info, outputs_info = spec.resolve(num_features, {k: v.shape for k, v in trace_outputs.items()})
        for tensor in outputs_info:
            value = trace_outputs[tensor.name]
            problem = _shape_problem(tensor, value.shape, sizes)
            if problem:
                raise ExportError(f"the {spec.kind} network's output '{tensor.name}' {problem}")
            if str(value.dtype) != tensor.dtype:
                raise ExportError(f"the {spec.kind} network's output '{tensor.name}' is {value.dtype}, the interface needs {tensor.dtype}")

        device = _module_device(module)
        args = tuple(torch.from_numpy(trace_inputs[name]).to(device) for name in spec.input_names)
        with warnings.catch_warnings(record=True) as caught, _exporter_log_discarded():
            warnings.simplefilter("always")
            try:
                torch.onnx.export(
                    inference_form(module), args, str(temporary), dynamo=False, opset_version=opset,
                    input_names=spec.input_names, output_names=spec.output_names,
                    dynamic_axes=spec.dynamic_axes(), do_constant_folding=True,
                )
            except Exception as error:
                raise ExportError(f"torch.onnx.export fails on the {spec.kind} network: {_first_line(error)}") from error
        export_warnings = tuple(dict.fromkeys(str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()))
        _record_network(temporary, module)

        validation = None
        if validate:
            try:
                validation = validate_onnx(temporary, module, spec.kind, num_features=num_features, runs=runs, providers=providers)
            except ExportParityError as error:
                report = dataclasses.replace(error.report, path=str(path))
                replaced = ExportParityError(f"export of {path} rejected (nothing written):\n{report.summary()}")
                replaced.report = report
                raise replaced from None
        os.replace(temporary, target)
    except BaseException:  # a refusal, a failure, Ctrl-C or SIGTERM: no half-made file left beside the target
        temporary.unlink(missing_ok=True)
        raise
    finally:
        if was_training:
            module.train()
    if validation is not None:
        validation = dataclasses.replace(validation, path=str(path))
    return ExportReport(str(path), spec.kind, opset, file_sha256(path), inputs_info, outputs_info, validation, export_warnings)
