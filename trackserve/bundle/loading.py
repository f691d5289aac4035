"""Reading and validating a bundle: :func:`load_bundle` checks ``pipeline.json`` and the
files it names, and raises one :class:`~trackserve.errors.BundleError` listing every problem."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import BundleError
from ..runtime.vertex_shifts import missing_shift_features
from ..values import shown
from .checks import feature_config_problems, interface_problems, onnx_problems, parse_features
from .schema import (ENTRY_KEYS, NETWORK_KINDS, PIPELINE_FILE, REQUIRED_NETWORKS, SCHEMA_VERSION, TOP_LEVEL_KEYS,
                     Bundle, NetworkEntry, TensorInfo)
from .stages import STAGE_KEYS, JoinSettings, StageParameters, stage_problems, unknown_stage_keys, vertex_shift_problem

def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_error(directory, problems: list[str]) -> BundleError:
    """One BundleError for the bundle in ``directory`` listing every problem, one per line."""
    lines = "\n".join(f"  - {p}" for p in problems)
    return BundleError(f"invalid bundle {directory}: {len(problems)} problem(s):\n{lines}")


def _parse_tensors(value, where: str, problems: list[str]) -> tuple[TensorInfo, ...] | None:
    if not isinstance(value, list):
        problems.append(f"{where}: expected a list of {{name, dtype, dims}} objects, got {type(value).__name__}")
        return None
    tensors = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or set(item) != {"name", "dtype", "dims"}:
            problems.append(f"{where}[{i}]: expected an object with the keys 'name', 'dtype', 'dims' and no other, "
                            f"got {item!r}")
            return None
        dims = item["dims"]
        if not isinstance(dims, list) or not all(
            (isinstance(d, int) and not isinstance(d, bool) and d >= 0) or (isinstance(d, str) and d) for d in dims
        ):
            problems.append(f"{where}[{i}].dims: {dims!r} is not a list of sizes (int >= 0) and dim names (str)")
            return None
        tensors.append(TensorInfo.from_dict(item))
    return tuple(tensors)


def _is_relative_file(file) -> bool:
    return isinstance(file, str) and bool(file) and not Path(file).is_absolute() and ".." not in Path(file).parts


def _is_sha256(text) -> bool:
    return isinstance(text, str) and len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _parse_entry(name: str, value, problems: list[str]) -> NetworkEntry | None:
    where = f"networks.{name}"
    if not isinstance(value, dict):
        problems.append(f"{where}: expected an object, got {type(value).__name__}")
        return None
    missing = [k for k in ("kind", "file", "sha256", "inputs", "outputs") if k not in value]
    if missing:
        problems.append(f"{where}: missing key(s) {', '.join(map(repr, missing))}")
        return None
    unknown = [k for k in value if k not in ENTRY_KEYS]
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (a network entry has "
                        f"{', '.join(ENTRY_KEYS)})")
        return None
    before = len(problems)
    kind, file, sha256 = value["kind"], value["file"], value["sha256"]
    if kind != NETWORK_KINDS[name]:
        problems.append(f"{where}.kind: {kind!r}, the {name} network must be of kind {NETWORK_KINDS[name]!r}")
    if not _is_relative_file(file):
        problems.append(f"{where}.file: {file!r} is not a relative path inside the bundle")
    if not _is_sha256(sha256):
        problems.append(f"{where}.sha256: {sha256!r} is not a 64-character lowercase hex digest")
    config = value.get("config", {})
    if not isinstance(config, dict):
        problems.append(f"{where}.config: expected an object, got {type(config).__name__}")
    architecture = value.get("architecture")
    if architecture is not None and not isinstance(architecture, str):
        problems.append(f"{where}.architecture: expected a string or null, got {architecture!r}")
    weights = value.get("weights")
    if weights is not None and not (
        isinstance(weights, dict)
        and set(weights) == {"file", "sha256"}
        and _is_relative_file(weights.get("file"))
        and _is_sha256(weights.get("sha256"))
    ):
        problems.append(
            f"{where}.weights: {weights!r} is not an object with a relative 'file' and a 64-character hex 'sha256' "
            "(and no other key)"
        )
    inputs = _parse_tensors(value["inputs"], f"{where}.inputs", problems)
    outputs = _parse_tensors(value["outputs"], f"{where}.outputs", problems)
    if len(problems) > before:
        return None
    return NetworkEntry(name, kind, file, sha256, inputs, outputs, dict(config), architecture, weights)


def parse_pipeline_data(data, directory: Path, problems: list[str], *, check_files: bool) -> Bundle | None:
    """Build a Bundle from the decoded ``pipeline.json``, appending every problem found."""
    if not isinstance(data, dict):
        problems.append(f"{PIPELINE_FILE}: expected a JSON object at the top level, got {type(data).__name__}")
        return None
    if "schema_version" not in data:
        problems.append(f"{PIPELINE_FILE}: missing key 'schema_version'")
        return None
    version = data["schema_version"]
    if type(version) is not int:
        problems.append(f"schema_version: {version!r} is not an integer (this trackserve reads schema version "
                        f"{SCHEMA_VERSION}, written as the number {SCHEMA_VERSION})")
        return None
    if version != SCHEMA_VERSION:
        problems.append(
            f"schema_version: {version!r} is not supported: this trackserve reads schema version {SCHEMA_VERSION}; "
            "use the trackserve release that wrote the bundle, or re-create the bundle"
        )
        return None
    missing = [k for k in ("features", "networks", "stages", "provenance") if k not in data]
    if missing:
        problems.append(f"{PIPELINE_FILE}: missing key(s) {', '.join(map(repr, missing))}")
    unknown = [k for k in data if k not in TOP_LEVEL_KEYS]
    if unknown:
        problems.append(f"{PIPELINE_FILE}: unknown key(s) {', '.join(map(repr, unknown))} (schema version "
                        f"{SCHEMA_VERSION} has {', '.join(TOP_LEVEL_KEYS)})")
    if missing or unknown:
        return None

    features = parse_features(data["features"], problems)

    stages = None
    raw_stages = data["stages"]
    if not isinstance(raw_stages, dict):
        problems.append(f"stages: expected an object, got {type(raw_stages).__name__}")
    else:
        keys = STAGE_KEYS[:5]
        absent = [k for k in keys if k not in raw_stages]
        unknown = [k for k in raw_stages if k not in STAGE_KEYS]
        if unknown:
            problems.append(unknown_stage_keys(unknown))
        if absent:
            problems.append(f"stages: missing key(s) {', '.join(map(repr, absent))}")
        else:  # the known keys' problems too when there are unknown keys: every problem at once
            method = raw_stages.get("track_building", "components")
            gap_cut = raw_stages.get("gap_cut")
            join = raw_stages.get("join_pieces")
            prune_cut = raw_stages.get("prune_cut")
            shifts = raw_stages.get("vertex_shifts")
            found = stage_problems(*(raw_stages[k] for k in keys), method, gap_cut, join, prune_cut)
            shift_problem = vertex_shift_problem(shifts)
            if shift_problem:
                found.append(shift_problem)
            if features is not None:
                found.extend(stage_feature_problems(features["names"], method, join,
                                                    None if shift_problem else shifts))
            problems.extend(found)
            if not found:
                stages = StageParameters(*(raw_stages[k] for k in keys), method, gap_cut,
                                         None if join is None else JoinSettings.from_mapping(join), prune_cut,
                                         None if shifts is None else tuple(shifts))

    provenance = data["provenance"]
    if not isinstance(provenance, dict):
        problems.append(f"provenance: expected an object, got {type(provenance).__name__}")
    elif stages is not None:
        problems.extend(_training_direction_problems(stages.edge_direction, provenance))

    networks: dict[str, NetworkEntry] = {}
    raw_networks = data["networks"]
    if not isinstance(raw_networks, dict):
        problems.append(f"networks: expected an object, got {type(raw_networks).__name__}")
    else:
        unknown = [n for n in raw_networks if n not in NETWORK_KINDS]
        if unknown:
            problems.append(f"networks: unknown network(s) {', '.join(map(repr, unknown))}; a bundle has {', '.join(NETWORK_KINDS)}")
        absent = [n for n in REQUIRED_NETWORKS if n not in raw_networks]
        if absent:
            problems.append(f"networks: missing network(s) {', '.join(map(repr, absent))}")
        if isinstance(raw_stages, dict):
            problems.extend(pruner_problems("pruner" in raw_networks, raw_stages.get("prune_cut")))
        num_features = len(features["names"]) if features is not None else None
        for name in NETWORK_KINDS:
            if name not in raw_networks:
                continue
            entry = _parse_entry(name, raw_networks[name], problems)
            if entry is None:
                continue
            networks[name] = entry
            declared = interface_problems(name, entry, num_features)
            problems.extend(declared)
            if features is not None:
                problems.extend(feature_config_problems(name, entry.config, features))
            if check_files:
                problems.extend(_file_problems(name, entry, directory, check_onnx=not declared))

        problems.extend(_shared_file_problems(networks))

    if problems:
        return None
    return Bundle(features, networks, stages, dict(provenance), directory, version)


def stage_feature_problems(feature_names, track_building, join_pieces, vertex_shifts) -> list[str]:
    """The stages that need features the bundle does not read: ``best_edges`` (r and z),
    joining track pieces (r, phi and z), vertex shifts (r and z)."""
    names = list(feature_names)
    problems = []
    if vertex_shifts is not None and missing_shift_features(names):
        problems.append(f"stages.vertex_shifts: the passes move the hits along the beam and merge edges by their "
                        f"r-z intercept, the features {names} lack r or z")
    if track_building == "best_edges" and not {"r", "z"} <= set(names):
        problems.append(f"stages.track_building: 'best_edges' orders hits by r and z, the features {names} lack them")
    if join_pieces is not None and not {"r", "phi", "z"} <= set(names):
        problems.append(f"stages.join_pieces: joining track pieces fits lines in r, phi and z, the features {names} "
                        "lack some of them")
    return problems


def bundle_problems(bundle: Bundle) -> list[str]:
    """What :func:`load_bundle` would find wrong between the parts of ``bundle`` (its stages
    against its features, networks and provenance), for a :class:`Bundle` made or changed in
    memory (``dataclasses.replace``), which no file check has seen: each part is valid on
    its own (the classes check that), not necessarily with the others."""
    stages = bundle.stages
    return (stage_feature_problems(bundle.feature_names, stages.track_building, stages.join_pieces,
                                   stages.vertex_shifts)
            + pruner_problems("pruner" in bundle.networks, stages.prune_cut)
            + _training_direction_problems(stages.edge_direction, bundle.provenance))


def _training_direction_problems(edge_direction: str, provenance: dict) -> list[str]:
    """The stage's edge direction against the one the networks were trained on (trained bundles
    record it in ``provenance.settings``): the filter and GNN score edges in that direction."""
    settings = provenance.get("settings")
    trained = settings.get("edge_direction") if isinstance(settings, dict) else None
    if trained is None or trained == edge_direction:
        return []
    return [f"stages.edge_direction: {edge_direction!r}, but the networks were trained on edges {trained!r} "
            f"(provenance.settings.edge_direction); their scores hold for that direction only: set it back to "
            f"{trained!r}"]


def _shared_file_problems(networks: dict[str, NetworkEntry]) -> list[str]:
    """Two networks naming one file: each network has its own ONNX file (and weights file)."""
    owners: dict[str, str] = {}
    problems = []
    for name, entry in networks.items():
        files = [("file", entry.file)] + ([("weights.file", entry.weights["file"])] if entry.weights else [])
        for key, file in files:
            normal = os.path.normpath(file)
            if normal in owners:
                problems.append(f"networks.{name}.{key} and networks.{owners[normal]}: both name {file}; each "
                                "network has its own: restore the file name (and its sha256) of the entry that was "
                                "edited")
            else:
                owners[normal] = f"{name}.{key}".removesuffix(".file")
    return problems


def pruner_problems(has_pruner: bool, prune_cut) -> list[str]:
    """The pruner network and ``stages.prune_cut`` come together or not at all."""
    if has_pruner and prune_cut is None:
        return ["stages: the bundle has a pruner network but no 'prune_cut' (the cut its scores must pass for an edge "
                "to reach the GNN)"]
    if prune_cut is not None and not has_pruner:
        return [f"stages.prune_cut: {prune_cut!r} is set but the bundle has no pruner network to apply it to"]
    return []


def _file_problems(name: str, entry: NetworkEntry, directory: Path, *, check_onnx: bool) -> list[str]:
    problems = _weights_problems(name, entry, directory)
    return problems + _onnx_file_problems(name, entry, directory, check_onnx=check_onnx)


def _not_a_file_problem(key: str, file: str, path: Path, directory: Path) -> str:
    """The problem of a network file ``path`` (``file`` in pipeline.json's ``key``) that is not a file."""
    if path.is_dir():
        return f"{key}: {file} in {directory} is a directory, not a file: put the network's file in its place"
    if path.is_symlink():
        return f"{key}: {file} in {directory} is a symbolic link to nothing (its target is gone or a loop)"
    return f"{key}: {file} does not exist in {directory}"


def _weights_problems(name: str, entry: NetworkEntry, directory: Path) -> list[str]:
    """Problems of the optional torch weights file (used to rebuild the torch network)."""
    if entry.weights is None:
        return []
    path = directory / entry.weights["file"]
    if not path.is_file():
        return [_not_a_file_problem(f"networks.{name}.weights.file", entry.weights["file"], path, directory)
                + " (the torch weights, for re-export and fine-tuning: restore the file, or remove the entry's "
                "'weights' to run the bundle without them)"]
    actual = file_sha256(path)
    if actual != entry.weights["sha256"]:
        return [
            f"networks.{name}.weights.sha256: {entry.weights['file']} has sha256 {actual}, pipeline.json declares "
            f"{entry.weights['sha256']}: the file changed after the bundle was written"
        ]
    return []


def _onnx_file_problems(name: str, entry: NetworkEntry, directory: Path, *, check_onnx: bool) -> list[str]:
    path = directory / entry.file
    if not path.is_file():
        return [_not_a_file_problem(f"networks.{name}.file", entry.file, path, directory)]
    actual = file_sha256(path)
    if actual != entry.sha256:
        return [
            f"networks.{name}.sha256: {entry.file} has sha256 {actual}, pipeline.json declares {entry.sha256}: "
            "the file changed after the bundle was written; restore it, or re-export the network into the bundle "
            "with `trackserve export --bundle`"
        ]
    return onnx_problems(name, entry, path) if check_onnx else []


def load_bundle(path: str | os.PathLike, *, check_files: bool = True) -> Bundle:
    """Read and validate the bundle in directory ``path`` (or the ``pipeline.json`` file itself).

    Checks the JSON, the schema version, every key, the feature list, the stage
    parameters, each network's declared interface against its kind, that each file
    exists with the declared sha256, and that each ONNX file declares the same inputs
    and outputs (names, dtypes, dims) as ``pipeline.json`` (read from ONNX Runtime's
    session metadata; nothing is run). Raises :class:`~trackserve.errors.BundleError`
    listing every problem found. ``check_files=False`` checks ``pipeline.json`` alone (to
    repair a bundle whose network files changed or are missing, not to run it).
    """
    directory, data = read_pipeline(path)
    problems: list[str] = []
    bundle = parse_pipeline_data(data, directory, problems, check_files=check_files)
    if problems:
        raise bundle_error(directory, problems)
    return bundle


class _DuplicateKey(Exception):
    """A JSON object of ``pipeline.json`` names a key twice (json keeps the last one silently)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """``object_pairs_hook`` of the JSON decoder: a dict, or _DuplicateKey for a key given twice."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


class _NonStandardNumber(ValueError):
    """A NaN, Infinity or -Infinity literal in pipeline.json."""


def _refuse_constant(name: str):
    """``parse_constant`` of the JSON decoder: refuse the non-standard NaN / Infinity literals."""
    raise _NonStandardNumber(name)


class _OverflowingNumber(ValueError):
    """A number of pipeline.json beyond float64's range (its text in ``args[0]``)."""


def _finite_float(text: str) -> float:
    """``parse_float`` of the JSON decoder: a float, refused where it overflows to infinity
    (``1e400`` reads as ``inf``, which the checks after it cannot tell from a computed one)."""
    value = float(text)
    if math.isinf(value):
        raise _OverflowingNumber(text)
    return value


def read_pipeline(path: str | os.PathLike) -> tuple[Path, Any]:
    """The bundle directory of ``path`` and its decoded ``pipeline.json`` (not yet validated)."""
    if not isinstance(path, (str, os.PathLike)):
        raise BundleError(f"a bundle is given by its directory (a path), got {type(path).__name__}")
    if not os.fspath(path):  # Path("") is the current directory: a forgotten value, not a choice
        raise BundleError("the bundle's directory is empty: give its path (\".\" for the current directory)")
    path = Path(path)
    directory = path.parent if path.name == PIPELINE_FILE and path.is_file() else path
    if not directory.is_dir():
        raise BundleError(f"bundle {directory} does not exist or is not a directory")
    pipeline = directory / PIPELINE_FILE
    if pipeline.is_dir():
        raise BundleError(f"{pipeline} is a directory: a bundle's {PIPELINE_FILE} is a file (JSON)")
    if not pipeline.is_file():
        raise BundleError(
            f"{directory} is not a bundle: it has no {PIPELINE_FILE} (a bundle is a directory with {PIPELINE_FILE} "
            "and one ONNX file per network; create one with `trackserve train` or trackserve.bundle.make_bundle)"
        )
    try:
        return directory, json.loads(pipeline.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys,
                                     parse_constant=_refuse_constant, parse_float=_finite_float)
    except _DuplicateKey as error:
        raise BundleError(f"{pipeline}: the key {error.args[0]!r} appears twice in one object; keep one of them") from None
    except _NonStandardNumber as error:
        raise BundleError(f"{pipeline}: {error.args[0]} is not a JSON number (Python's json writes it, standard JSON "
                          "has no such value); write a finite number, or null where the field allows it") from None
    except _OverflowingNumber as error:
        raise BundleError(f"{pipeline}: the number {shown(error.args[0])} is beyond the range of a float64 (about "
                          "1.8e308); write a finite number") from None
    except json.JSONDecodeError as error:
        raise BundleError(
            f"{pipeline} is not valid JSON: line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None
    except UnicodeDecodeError as error:
        raise BundleError(f"{pipeline} is not UTF-8 text: {error}") from None
    except ValueError as error:  # e.g. an integer of more digits than Python converts
        raise BundleError(f"{pipeline} is not a valid pipeline file: {error}") from None
    except RecursionError:
        raise BundleError(f"{pipeline} is not a valid pipeline file: its JSON is nested too deeply to read") from None
