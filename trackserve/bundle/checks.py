"""Checks of a bundle's parts against each other: each network's declared inputs and outputs
against its kind's interface and against what its ONNX file declares, and the features
against the networks' configs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

from ..values import finite_real, shown
from .schema import DYNAMIC_DIMS, NETWORK_INTERFACES, NETWORK_METADATA_KEY, NetworkEntry, TensorInfo, network_description

def interface_problems(name: str, entry: NetworkEntry, num_features: int | None) -> list[str]:
    """Compare the declared inputs/outputs of ``entry`` with the interface of its kind."""
    interface = NETWORK_INTERFACES[entry.kind]
    problems = []
    for role, declared, expected in (("inputs", entry.inputs, interface.inputs), ("outputs", entry.outputs, interface.outputs)):
        names = [t.name for t in declared]
        expected_names = [t.name for t in expected]
        if names != expected_names:
            problems.append(f"networks.{name}.{role}: names {names} differ from the {entry.kind} interface {expected_names}")
            continue
        for got, want in zip(declared, expected):
            where = f"networks.{name}.{role} '{got.name}'"
            if got.dtype != want.dtype:
                problems.append(f"{where}: dtype {got.dtype!r}, the {entry.kind} interface needs {want.dtype!r}")
            if len(got.dims) != len(want.dims):
                problems.append(f"{where}: dims {list(got.dims)} have rank {len(got.dims)}, the interface needs {list(want.dims)}")
                continue
            for axis, (g, w) in enumerate(zip(got.dims, want.dims)):
                if w in DYNAMIC_DIMS:
                    if g != w:
                        problems.append(f"{where}: dim {axis} is {g!r}, it must be the dynamic dim {w!r}")
                elif isinstance(w, int):
                    if g != w:
                        problems.append(f"{where}: dim {axis} is {g!r}, it must be {w}")
                elif not isinstance(g, int) or g < 1:
                    problems.append(f"{where}: dim {axis} ({w}) is {g!r}, it must be a fixed size >= 1")
                elif w == "num_features" and num_features is not None and g != num_features:
                    problems.append(
                        f"{where}: takes {g} features but the bundle declares {num_features} "
                        f"(features.names); every network reads the same feature array"
                    )
    return problems


def tensor_problems(want: TensorInfo, got, *, subject: str, reference: str, dynamic_reference: str,
                    dynamic_hint: str, fixed_must_match_symbolic: bool = True) -> list[str]:
    """What differs between a declared tensor ``want`` and ONNX Runtime's metadata ``got`` (dtype, rank, dims).

    Messages read ``"<subject> has dtype X, <reference> Y"``; a fixed size where a dynamic
    dim is declared reads ``"... where <dynamic_reference> the dynamic dim 'd'<dynamic_hint>"``. With ``fixed_must_match_symbolic`` a
    symbolic dim where a fixed size is declared is also a mismatch.
    """
    problems = []
    dtype = _ORT_DTYPES.get(got.type, got.type)
    if dtype != want.dtype:
        problems.append(f"{subject} has dtype {dtype}, {reference} {want.dtype}")
    shape = list(got.shape)
    if len(shape) != len(want.dims):
        return problems + [f"{subject} has dims {shape}, {reference} {list(want.dims)}"]
    for axis, (w, g) in enumerate(zip(want.dims, shape)):
        if isinstance(w, int) and g != w and (fixed_must_match_symbolic or isinstance(g, int)):
            return problems + [f"{subject} has dims {shape}, {reference} {list(want.dims)} (dim {axis})"]
        if isinstance(w, str) and isinstance(g, int):
            return problems + [f"{subject} has the fixed size {g} at dim {axis} where {dynamic_reference} the dynamic dim {w!r}"
                               + dynamic_hint]
    return problems


def onnx_problems(name: str, entry: NetworkEntry, path: Path) -> list[str]:
    """Compare the inputs and outputs the ONNX file declares with ``entry`` (loads, does not run)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return [f"networks.{name}: {entry.file} cannot be loaded by ONNX Runtime: {first_line}"]
    problems = recorded_network_problems(name, entry, session.get_modelmeta().custom_metadata_map)
    for role, declared, actual in (
        ("inputs", entry.inputs, session.get_inputs()),
        ("outputs", entry.outputs, session.get_outputs()),
    ):
        names = [t.name for t in declared]
        actual_names = [a.name for a in actual]
        if names != actual_names:
            problems.append(f"networks.{name}.{role}: {entry.file} has {role} {actual_names}, pipeline.json declares {names}")
            continue
        for want, got in zip(declared, actual):
            problems.extend(tensor_problems(
                want, got, subject=f"networks.{name}: {role[:-1]} '{want.name}' of {entry.file}",
                reference="pipeline.json declares", dynamic_reference="pipeline.json declares",
                dynamic_hint=": the network was exported without dynamic axes; re-export it with `trackserve export`",
            ))
    return problems


def onnx_metadata(path: Path) -> dict[str, str]:
    """The metadata properties of the ONNX file at ``path`` (empty when it is missing or
    unreadable: a damaged file is what re-exporting repairs). Needs onnx."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # missing or damaged: there is no record
        return {}
    return {prop.key: prop.value for prop in model.metadata_props}


def recorded_network(metadata: Mapping[str, str]) -> tuple[str | None, dict] | None:
    """``(architecture, config)`` an ONNX file's ``metadata`` (:func:`onnx_metadata`) records
    it holds, or None (no readable record)."""
    try:
        held = json.loads(metadata[NETWORK_METADATA_KEY])
        return held["architecture"], dict(held["config"])
    except (KeyError, ValueError, TypeError):
        return None


def recorded_network_problems(name: str, entry: NetworkEntry, metadata: Mapping[str, str]) -> list[str]:
    """The network the ONNX file records it holds (:data:`NETWORK_METADATA_KEY`, written by
    trackserve's export) against the entry's architecture and config: another network's file
    in its place, or a hand-edited config, would otherwise pass every other check."""
    recorded = metadata.get(NETWORK_METADATA_KEY)
    if recorded is None:  # exported before the record existed, or by another tool
        return []
    try:
        held = json.loads(recorded)
        architecture, config = held["architecture"], held["config"]
    except (ValueError, TypeError, KeyError):
        return [f"networks.{name}: {entry.file} has an unreadable '{NETWORK_METADATA_KEY}' record ({recorded[:80]!r}); "
                "re-export the network with `trackserve export --bundle`"]
    try:
        declared = json.loads(network_description(entry.architecture, entry.config))
    except (TypeError, ValueError):
        declared = None
    if declared == {"architecture": architecture, "config": config}:
        return []
    missing = object()
    differ = sorted(key for key in set(config) | set(entry.config)
                    if config.get(key, missing) != entry.config.get(key, missing))

    def value(held: dict, key: str) -> str:
        return repr(held[key]) if key in held else "absent"

    if not entry.config and config:
        what = f"pipeline.json gives no config, the file records {len(config)} keys"
    else:
        shown = "; ".join(f"{key}: the file's {value(config, key)}, the entry's {value(entry.config, key)}"
                          for key in differ[:4]) + (f"; and {len(differ) - 4} more keys" if len(differ) > 4 else "")
        what = f"config keys differ: {shown}" if differ else ""
    if architecture != entry.architecture:
        what += ("; and " if what else "") + f"the file holds the architecture {architecture}"
    return [f"networks.{name}: {entry.file} holds another network than pipeline.json declares ({what}): either "
            "another network's file was put in its place (restore the file; `trackserve export --bundle DIR "
            f"--network {name}` rebuilds it from the bundle's weights) or the entry was edited by hand (restore "
            "the entry to what the file records)"]


_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
}


def parse_features(value, problems: list[str]) -> dict | None:
    """The ``features`` object of ``pipeline.json`` as a dict, or None after appending to
    ``problems`` what is wrong with it (names, scales, unknown keys)."""
    if not isinstance(value, dict):
        problems.append(f"features: expected an object with 'names' and 'scales', got {type(value).__name__}")
        return None
    names, scales = value.get("names"), value.get("scales")
    ok = True
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        problems.append(f"features.names: {names!r} is not a non-empty list of feature names")
        ok = False
    elif len(set(names)) != len(names):
        problems.append(f"features.names: {names!r} repeats a name")
        ok = False
    else:
        from ..events.features import KNOWN_FEATURES

        unknown_names = [n for n in names if n not in KNOWN_FEATURES]
        if unknown_names:
            problems.append(f"features.names: unknown feature name(s) {unknown_names}; the features trackserve "
                            f"computes are {', '.join(KNOWN_FEATURES)} (lower case)")
            ok = False
    if not isinstance(scales, list) or not all(isinstance(s, (int, float)) and finite_real(s) and s > 0 for s in scales):
        problems.append(f"features.scales: {shown(scales)} is not a list of finite positive numbers (each feature is "
                        "its value divided by its scale)")
        ok = False
    unknown = sorted(set(value) - {"names", "scales"})
    if unknown:
        problems.append(f"features: unknown key(s) {', '.join(map(repr, unknown))}; expected 'names' and 'scales'")
        ok = False
    elif ok and len(scales) != len(names):
        problems.append(f"features: {len(names)} names but {len(scales)} scales")
        ok = False
    return dict(value) if ok else None


#: The config keys of a network that name feature columns and their scales (the derived
#: inputs: η from r and z, the edge geometry from r, φ and z).
_DERIVED_CONFIG_KEYS = ("derived_eta", "pair_geometry")


def feature_config_problems(name: str, config: Mapping, features: Mapping) -> list[str]:
    """Where a network's config contradicts the bundle's features: its input count, the
    columns and scales its derived inputs read, its periodic (φ) columns and their period.
    Keys a config does not have are not checked (imported networks record fewer)."""
    names, scales = features["names"], features["scales"]
    where = f"networks.{name}.config"
    problems = []
    channels = config.get("in_channels")
    if channels is not None and (isinstance(channels, bool) or not isinstance(channels, int)):
        problems.append(f"{where}.in_channels: {channels!r} is not an integer (the number of features the network "
                        f"reads: {len(names)} for this bundle's {names})")
    elif channels is not None and channels != len(names):
        problems.append(f"{where}.in_channels: {channels}, but the bundle has {len(names)} features {names}")
    for key in _DERIVED_CONFIG_KEYS:
        spec = config.get(key)
        if spec is None:
            continue
        if not isinstance(spec, dict):
            problems.append(f"{where}.{key}: expected an object of feature columns and scales, got {spec!r}")
            continue
        for feature in ("r", "phi", "z"):
            if feature not in spec:
                continue
            column, scale = spec[feature], spec.get(f"{feature}_scale")
            if isinstance(column, bool) or not isinstance(column, int) or not 0 <= column < len(names):
                problems.append(f"{where}.{key}.{feature}: {column!r} is not a column of the {len(names)} features")
            elif names[column] != feature:
                problems.append(f"{where}.{key}: the network reads {feature} from column {column}, which the "
                                f"bundle's features name {names[column]!r}: features.names {names} is not the order "
                                "the network was trained on")
            elif not isinstance(scale, (int, float)) or not math.isclose(scale, scales[column], rel_tol=1e-9):
                problems.append(f"{where}.{key}.{feature}_scale: {scale!r}, but features.scales gives {feature} the "
                                f"scale {scales[column]!r}: the network was made for other scales (rescale a bundle "
                                "with `trackserve rescale`, never by editing its scales)")
    periodic, period = config.get("periodic_features"), config.get("period")
    if isinstance(periodic, list):
        for column in periodic:
            if isinstance(column, bool) or not isinstance(column, int) or not 0 <= column < len(names):
                problems.append(f"{where}.periodic_features: {column!r} is not a column of the {len(names)} features")
            elif names[column] != "phi":
                problems.append(f"{where}.periodic_features: column {column} is {names[column]!r}, not 'phi' (the "
                                "periodic feature)")
            elif isinstance(period, (int, float)) and not math.isclose(period, 2 * math.pi / scales[column],
                                                                        rel_tol=1e-6):
                problems.append(f"{where}.period: {period!r}, but phi's scale {scales[column]!r} makes its period "
                                f"{2 * math.pi / scales[column]!r}: the network was made for another phi scale")
    return problems
