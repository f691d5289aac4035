"""The Triton model repository writer: a bundle in, a directory ``tritonserver`` can serve out.

Layouts:

* ``custom``: one Python-backend model (default name ``exatrkx``) running the whole
  pipeline in-process;
* ``ensemble``: the published service's layout, one Python-backend model per stage
  (``embed``, ``frnn``, ``filter``, ``applyfilter``, ``gnn``, ``wcc``) chained by an
  ``ensemble`` model (default name ``exatrkx_ensemble``);
* ``both``: the two side by side, same answers, for comparison.

Every ``config.pbtxt`` is derived from the bundle (feature count, embedding width) and
from :mod:`trackserve.serving.interface`, never typed by hand. Each model's ``model.py``
is copied from :mod:`trackserve.serving.triton_models`. The bundle is copied into the
repository (``<model>/bundle``, a folder Triton ignores), so the repository is
self-contained; configs name it relative to the repository root.

A repository is written whole or not at all: into a fresh directory beside the output,
which is renamed into place once complete (an old repository there, replaced with
``overwrite``, is renamed aside first and removed last). A failure (a full disk) or an
interruption leaves the output as it was and no temporary directory.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..bundle import PIPELINE_FILE, Bundle, file_sha256, load_bundle
from ..errors import InputError, OutputError
from ..paths import file_problem, signals_deferred
from .interface import (
    DEFAULT_ENSEMBLE_NAME,
    DEFAULT_MODEL_NAME,
    ENSEMBLE_STAGES,
    FEATURES,
    LABELS,
    STAGE_NAMES,
    TensorSpec,
    bundle_tensor_specs,
)
from ..runtime.config import DEVICES
from ..runtime.vertex_shifts import (SHIFT_FEATURES, is_shifted, missing_shift_features, shifts_text,
                                     validate_vertex_shifts)
from .server import check_repository_path
from .backend import (
    KIND_DEVICES,
    PARAM_BUNDLE,
    PARAM_EDGE_CHUNK_SIZE,
    PARAM_FEATURES,
    PARAM_GRAPH_THREADS,
    PARAM_INTRA_OP_THREADS,
    PARAM_MEMORY_LIMIT_BYTES,
    PARAM_PIPELINE_SHA256,
    PARAM_STAGE,
    PARAM_VERTEX_SHIFTS,
)
from .triton_models import PIPELINE_MODEL, STAGE_MODEL

LAYOUTS = ("custom", "ensemble", "both")
#: ``--instance-kind`` values and the ``instance_group`` kind each writes.
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
#: Name of the folder, inside a model's folder, holding its copy of the bundle.
BUNDLE_DIR = "bundle"
#: Name of the config file Triton reads in each model folder.
CONFIG_FILE = "config.pbtxt"
#: The most instances of one model a repository may ask for: each is a process with a pipeline of its own.
MAX_INSTANCES = 256
#: The longest dynamic-batcher queue delay (microseconds): a signed 64-bit integer, as Triton reads it.
MAX_QUEUE_DELAY_US = 2**63 - 1
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: The longest model name: the name of the model's directory, which file systems bound (255 bytes).
MAX_MODEL_NAME = 255


def _kind_device(kind: str) -> str:
    """The runtime device an ``--instance-kind`` runs its pipeline on (``gpu`` -> ``cuda``)."""
    return KIND_DEVICES[INSTANCE_KINDS[kind].removeprefix("KIND_")]


@dataclass(frozen=True)
class RepositoryOptions:
    """How to write the repository.

    ``layout``: one of :data:`LAYOUTS`. ``instance_count`` and ``instance_kind`` (a key of
    :data:`INSTANCE_KINDS`): the ``instance_group`` of every Python-backend model.
    ``dynamic_batching`` adds a ``dynamic_batching`` block with ``max_queue_delay_us``; the
    interface has ``max_batch_size: 0`` (one request = one event), so Triton queues requests
    but hands each ``execute`` call one at a time (measured with tritonserver 2.51).
    ``intra_op_threads``, ``graph_threads``, ``edge_chunk_size``, ``memory_limit_bytes``:
    the runtime settings of every instance (``None``: the runtime's default; for the thread
    counts, the serving machine's cores shared among the model's instances,
    :func:`~trackserve.serving.backend.runtime_config`). ``vertex_shifts``: the custom
    model runs each event once per shift (:mod:`~trackserve.runtime.vertex_shifts`;
    ``None``: one pass); the ensemble runs each stage once, so a layout with it refuses them.
    """

    layout: str = "custom"
    instance_count: int = 1
    instance_kind: str = "cpu"
    dynamic_batching: bool = False
    max_queue_delay_us: int = 0
    model_name: str = DEFAULT_MODEL_NAME
    ensemble_name: str = DEFAULT_ENSEMBLE_NAME
    intra_op_threads: int | None = None
    graph_threads: int | None = None
    edge_chunk_size: int | None = None
    memory_limit_bytes: int | None = None
    vertex_shifts: tuple[float, ...] | None = None

    def __post_init__(self):
        problems = []
        try:
            object.__setattr__(self, "vertex_shifts", validate_vertex_shifts(self.vertex_shifts))
        except InputError as error:
            problems.append(str(error))
        else:
            if is_shifted(self.vertex_shifts) and self.layout != "custom":
                problems.append(f"vertex shifts run the whole pipeline once per shift, which only the custom model does; "
                                f"the ensemble runs each stage once: use layout custom (--layout custom), or no vertex "
                                f"shifts for layout {self.layout}")
        if self.layout not in LAYOUTS:
            problems.append(f"layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if self.instance_kind not in INSTANCE_KINDS:
            problems.append(f"instance kind {self.instance_kind!r} is not one of {', '.join(INSTANCE_KINDS)}")
        elif _kind_device(self.instance_kind) not in DEVICES:
            problems.append(f"instance kind {self.instance_kind!r} needs the runtime's {_kind_device(self.instance_kind)!r} "
                            f"device, which this runtime does not have yet (it runs on {', '.join(DEVICES)}); "
                            "use instance kind cpu")
        if not _positive_int(self.instance_count):
            problems.append(f"instance count must be an integer >= 1, got {self.instance_count!r}")
        elif self.instance_count > MAX_INSTANCES:
            problems.append(f"instance count {self.instance_count} is above {MAX_INSTANCES}: each instance is a process "
                            "with its own pipeline")
        delay = self.max_queue_delay_us
        if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= MAX_QUEUE_DELAY_US:
            problems.append(f"max queue delay must be an integer in 0..{MAX_QUEUE_DELAY_US} microseconds, got {delay!r}")
        elif delay and not self.dynamic_batching:
            problems.append(f"a max queue delay ({delay} us) applies only to the dynamic batcher; turn it on "
                            "(dynamic batching) or drop the delay")
        for what, value in (("intra_op_threads", self.intra_op_threads), ("graph_threads", self.graph_threads),
                            ("edge_chunk_size", self.edge_chunk_size), ("memory_limit_bytes", self.memory_limit_bytes)):
            if value is not None and not _positive_int(value):
                problems.append(f"{what} must be an integer >= 1 or unset, got {value!r}")
        for what, name in (("model name", self.model_name), ("ensemble name", self.ensemble_name)):
            if not isinstance(name, str) or not _MODEL_NAME.match(name):
                problems.append(f"{what} {name!r} must be letters, digits, '_', '-' or '.', starting with a letter or digit")
            elif len(name) > MAX_MODEL_NAME:
                problems.append(f"{what} {name[:20]!r}... has {len(name)} characters; a model's name is its "
                                f"directory's, at most {MAX_MODEL_NAME}")
            elif name in STAGE_NAMES:
                problems.append(f"{what} {name!r} is the name of an ensemble stage model ({', '.join(STAGE_NAMES)})")
        if self.layout == "both" and self.model_name == self.ensemble_name:
            problems.append(f"the custom model and the ensemble both are named {self.model_name!r}; give them different names")
        if problems:
            if len(problems) == 1:
                raise InputError(f"invalid model repository option: {problems[0]}")
            raise InputError("invalid model repository options:\n" + "\n".join(f"  - {p}" for p in problems))

    @property
    def writes_custom(self) -> bool:
        """Whether the custom (whole-pipeline) model is written."""
        return self.layout in ("custom", "both")

    @property
    def writes_ensemble(self) -> bool:
        """Whether the ensemble and its stage models are written."""
        return self.layout in ("ensemble", "both")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass
class WrittenRepository:
    """A repository written by :func:`write_repository`: its path, the model names, the entry points."""

    path: Path
    models: list[str] = field(default_factory=list)
    #: The models a client sends events to: ``{"custom": name, "ensemble": name}`` (those written).
    entry_points: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------ config text


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tensor_block(kind: str, specs: list[TensorSpec]) -> str:
    items = []
    for spec in specs:
        dims = ", ".join(str(d) for d in spec.dims)
        items.append(f"  {{\n    name: {_quote(spec.name)}\n    data_type: {spec.config_dtype}\n    dims: [ {dims} ]\n  }}")
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def _parameters_block(parameters: dict[str, str]) -> str:
    return "".join(
        f"parameters: {{\n  key: {_quote(key)}\n  value: {{ string_value: {_quote(value)} }}\n}}\n"
        for key, value in parameters.items()
    )


def _python_model_config(name: str, inputs, outputs, parameters: dict[str, str], options: RepositoryOptions) -> str:
    text = f"name: {_quote(name)}\nbackend: \"python\"\nmax_batch_size: 0\n"
    text += _tensor_block("input", inputs) + _tensor_block("output", outputs)
    text += (
        f"instance_group [\n  {{\n    count: {options.instance_count}\n"
        f"    kind: {INSTANCE_KINDS[options.instance_kind]}\n  }}\n]\n"
    )
    if options.dynamic_batching:
        text += f"dynamic_batching {{\n  max_queue_delay_microseconds: {options.max_queue_delay_us}\n}}\n"
    return text + _parameters_block(parameters)


def _ensemble_config(name: str, specs: dict[str, TensorSpec]) -> str:
    text = f"name: {_quote(name)}\nplatform: \"ensemble\"\nmax_batch_size: 0\n"
    text += _tensor_block("input", [specs[FEATURES]]) + _tensor_block("output", [specs[LABELS]])
    steps = []
    for stage in ENSEMBLE_STAGES:
        maps = "".join(f"      input_map {{ key: {_quote(t)} value: {_quote(t)} }}\n" for t in stage.inputs)
        maps += "".join(f"      output_map {{ key: {_quote(t)} value: {_quote(t)} }}\n" for t in stage.outputs)
        steps.append(f"    {{\n      model_name: {_quote(stage.name)}\n      model_version: -1\n{maps}    }}")
    return text + "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n"


def _runtime_parameters(options: RepositoryOptions) -> dict[str, str]:
    values = {
        PARAM_INTRA_OP_THREADS: options.intra_op_threads,
        PARAM_GRAPH_THREADS: options.graph_threads,
        PARAM_EDGE_CHUNK_SIZE: options.edge_chunk_size,
        PARAM_MEMORY_LIMIT_BYTES: options.memory_limit_bytes,
    }
    return {key: str(value) for key, value in values.items() if value is not None}


# ------------------------------------------------------------------ writing


def _prepare_output(output: Path, overwrite: bool, bundle_directory: Path) -> None:
    """Check that the repository may be written to ``output``: a new or empty directory, or a model
    repository with ``overwrite`` (never the one that holds the bundle being written, nor through a
    symbolic link). Changes nothing: :func:`_repository_written_to` replaces ``output``."""
    if output.exists() and not output.is_dir():
        raise InputError(f"the repository path {output} is a file; give a directory")
    check_repository_path(output)
    if output.resolve().is_relative_to(bundle_directory.resolve()):
        raise InputError(f"the repository path {output} lies inside the bundle {bundle_directory}, which is copied "
                         "into the repository: write the repository outside the bundle")
    if output.is_dir() and any(output.iterdir()):
        for entry in output.iterdir():
            if not (entry.is_dir() and (entry / CONFIG_FILE).is_file()):
                raise InputError(
                    f"{output} is not empty and not a model repository ({entry.name} is not a model folder with "
                    f"{CONFIG_FILE}); refusing to write into it or replace it: give another path"
                )
        if not overwrite:
            raise InputError(f"{output} already holds a model repository; give --overwrite to replace it, or another "
                             "path")
        if output.is_symlink():
            raise InputError(f"{output} is a symbolic link; give the directory it points to ({output.resolve()})")
        if bundle_directory.resolve().is_relative_to(output.resolve()):
            raise InputError(f"the bundle {bundle_directory} lies inside {output}, which --overwrite would delete "
                             "once the new repository is written; copy the bundle elsewhere first or write another "
                             "repository")


@contextmanager
def _repository_written_to(output: Path) -> Iterator[Path]:
    """A fresh directory to write the repository into, which takes ``output``'s place when the
    ``with`` block ends without an error. On an error or an interruption it is removed and
    ``output`` is left as it was; an :class:`OSError` (a full disk, no permission) is raised as
    :class:`~trackserve.errors.OutputError` naming ``output``.

    The directory lies beside ``output`` (same file system: renamed into place). A directory
    that cannot be renamed (a mount point) or beside which nothing can be made (a read-only
    parent) gets it inside, and its entries are swapped (:func:`_swap_entries`)."""
    target = Path(os.path.realpath(output))  # an empty directory behind a link is written through
    existed = target.is_dir()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"the repository path {output}: cannot create the directory "
                         f"({error.strerror or error})") from None
    if not existed:
        places = [target.parent]
    else:  # a mount point cannot be renamed, nor its entries renamed from beside it
        places = [target] if os.path.ismount(target) else [target.parent, target]
    problems = []
    for place in places:
        partial = place / f".{target.name}.partial-{uuid.uuid4().hex[:12]}"
        try:
            partial.mkdir()  # mkdir's mode (umask), not mkdtemp's private 0700: the server may run as another user
            break
        except OSError as error:
            problems.append(f"{place}: {error.strerror or error}")
    else:
        raise InputError(f"the repository path {output}: cannot create a directory in {'; '.join(problems)}")
    try:
        if existed and partial.parent != target:
            os.chmod(partial, target.stat().st_mode & 0o7777)
        yield partial
        with signals_deferred():  # the old repository or the new one in place, the old one removed after
            if partial.parent == target:
                _swap_entries(partial, target)
            else:
                _rename_into_place(partial, target)
    except BaseException as error:
        shutil.rmtree(partial, ignore_errors=True)
        if not isinstance(error, OSError) or isinstance(error, OutputError):
            raise
        problem = file_problem(error) if error.filename is not None else error.strerror or str(error)
        raise OutputError(f"cannot write the model repository {output} ({problem.replace(str(partial), str(target))}); "
                          + ("it is left as it was" if existed else "nothing was written")) from None


def _rename_into_place(partial: Path, target: Path) -> None:
    """Rename ``partial`` to ``target``; an old ``target`` is renamed aside first, put back if
    ``partial`` cannot take its place, and removed only once it has."""
    if not target.exists():
        partial.rename(target)
        return
    aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:12]}")
    try:
        target.rename(aside)
    except OSError as error:
        if error.errno not in (errno.EBUSY, errno.EXDEV, errno.EPERM, errno.EACCES):
            raise
        # a directory that cannot be renamed though os.path.ismount says it is no mount point
        # (a bind mount within one file system): its entries are swapped instead
        _swap_entries(partial, target)
        return
    try:
        partial.rename(target)
    except BaseException:
        try:
            aside.rename(target)
        except OSError as error:
            raise OutputError(f"the new model repository could not take the place of {target}, nor the old one be put "
                              f"back ({file_problem(error)}): the old one is in {aside}") from None
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _swap_entries(partial: Path, target: Path) -> None:
    """Put the entries of ``partial``, a directory inside ``target`` or beside it on the same
    file system, in place of ``target``'s others, each renamed (the old ones into a directory
    aside, removed last); all undone if one rename fails. For a ``target`` that cannot itself
    be renamed (a mount point, a bind mount)."""
    aside = target / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
    aside.mkdir()
    moves = [(entry, aside / entry.name) for entry in target.iterdir() if entry not in (partial, aside)]
    moves += [(entry, target / entry.name) for entry in partial.iterdir()]
    done = []
    try:
        for source, destination in moves:
            source.rename(destination)
            done.append((source, destination))
    except BaseException:
        for source, destination in reversed(done):
            destination.rename(source)
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)
    partial.rmdir()


def _write_python_model(output: Path, name: str, source: Path, config: str) -> None:
    folder = output / name
    (folder / "1").mkdir(parents=True)
    shutil.copyfile(source, folder / "1" / "model.py")
    (folder / CONFIG_FILE).write_text(config)


def _copy_tree(source: Path, destination: Path) -> None:
    # Not shutil.copytree: it copies on past a failed file (on a full disk, one empty file after
    # another) and gathers the errors as text in one shutil.Error, with no errno to report.
    destination.mkdir(parents=True)
    for entry in Path(source).iterdir():
        if entry.is_dir():
            _copy_tree(entry, destination / entry.name)
        else:
            shutil.copy2(entry, destination / entry.name)
    shutil.copystat(source, destination)


def _copy_bundle(bundle: Bundle, destination: Path) -> str:
    _copy_tree(bundle.directory, destination)
    return destination.relative_to(destination.parent.parent).as_posix()


def write_repository(bundle, output, options: RepositoryOptions | None = None, *, overwrite: bool = False) -> WrittenRepository:
    """Write a Triton model repository serving ``bundle`` (a path or loaded :class:`Bundle`) into ``output``.

    Raises :class:`~trackserve.errors.BundleError` for an invalid bundle,
    :class:`~trackserve.errors.InputError` for bad options or an occupied ``output``
    (replaced only with ``overwrite`` and only when it holds model folders alone), and
    :class:`~trackserve.errors.OutputError` when it cannot be written (a full disk): the
    repository is written whole or not at all, ``output`` left as it was on any failure.
    """
    options = options or RepositoryOptions()
    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if isinstance(bundle, Bundle) and load_bundle(bundle.directory).to_dict() != bundle.to_dict():
        raise InputError(f"the Bundle given differs from its directory {bundle.directory}, which the repository "
                         "copies: save it first (trackserve.bundle.save_bundle) and write the repository from that")
    missing = missing_shift_features(loaded.feature_names)
    if is_shifted(options.vertex_shifts) and missing:
        raise InputError(f"vertex shifts need the features {', '.join(SHIFT_FEATURES)}; the bundle reads "
                         f"{', '.join(loaded.feature_names)} (no {', '.join(missing)}): serve it without them")
    if options.writes_ensemble and loaded.stages.vertex_shifts is not None:
        raise InputError(f"the bundle runs each event at vertex shifts {shifts_text(loaded.stages.vertex_shifts)} mm "
                         "(stages.vertex_shifts), which only the custom model does; the ensemble runs each stage once: "
                         "use --layout custom, or tune a copy of the bundle for one pass (trackserve tune-cut "
                         "--vertex-shifts 0 --write) and serve that")
    output = Path(output)
    _prepare_output(output, overwrite, loaded.directory)
    specs = bundle_tensor_specs(loaded)
    runtime = _runtime_parameters(options)
    written = WrittenRepository(path=output.resolve())

    features = {PARAM_FEATURES: json.dumps({"names": list(loaded.feature_names), "scales": list(loaded.feature_scales)}),
                PARAM_PIPELINE_SHA256: file_sha256(Path(loaded.directory) / PIPELINE_FILE)}
    with _repository_written_to(output) as directory:
        if options.writes_custom:
            name = options.model_name
            bundle_ref = _copy_bundle(loaded, directory / name / BUNDLE_DIR)
            # given: they override the bundle's stages.vertex_shifts (0: one pass); not given: the bundle's
            shifts = {} if options.vertex_shifts is None else {PARAM_VERTEX_SHIFTS: shifts_text(options.vertex_shifts)}
            config = _python_model_config(name, [specs[FEATURES]], [specs[LABELS]],
                                          {PARAM_BUNDLE: bundle_ref, **runtime, **shifts, **features}, options)
            _write_python_model(directory, name, PIPELINE_MODEL, config)
            written.models.append(name)
            written.entry_points["custom"] = name

        if options.writes_ensemble:
            name = options.ensemble_name
            (directory / name / "1").mkdir(parents=True)
            bundle_ref = _copy_bundle(loaded, directory / name / BUNDLE_DIR)
            (directory / name / CONFIG_FILE).write_text(_ensemble_config(name, specs) + _parameters_block(features))
            for stage in ENSEMBLE_STAGES:
                parameters = {PARAM_BUNDLE: bundle_ref, PARAM_STAGE: stage.name, **runtime,
                              PARAM_PIPELINE_SHA256: features[PARAM_PIPELINE_SHA256]}
                config = _python_model_config(
                    stage.name,
                    [specs[t] for t in stage.inputs],
                    [specs[t] for t in stage.outputs],
                    parameters,
                    options,
                )
                _write_python_model(directory, stage.name, STAGE_MODEL, config)
                written.models.append(stage.name)
            written.models.append(name)
            written.entry_points["ensemble"] = name
    return written
