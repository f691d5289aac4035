"""The bundle: one trained pipeline as a directory, ``pipeline.json`` plus one ONNX file per network.

Layout::

    <bundle>/
      pipeline.json        what this module reads and writes
      embedding.onnx       one file per network, named in pipeline.json
      filter.onnx
      gnn.onnx
      pruner.onnx          (optional: a first GNN whose low cut prunes the GNN's edges)
      engines/<device>/    engines built for one GPU (written by trackserve.engines)

``pipeline.json`` (schema version 1) holds:

* ``schema_version``: the integer :data:`SCHEMA_VERSION`;
* ``features``: ``names`` and ``scales`` of the node features, in column order (a
  feature is the raw quantity divided by its scale), as ``FeatureSpec.to_dict`` writes them;
* ``networks``: for each of ``embedding``, ``filter`` and ``gnn`` (and the optional
  ``pruner``, see :data:`OPTIONAL_NETWORKS`) its ``kind``, ``file``
  (relative to the bundle), ``sha256``, ``inputs`` and ``outputs`` (name, dtype, dims;
  a dynamic dim is a name such as ``"num_hits"``), the torch ``config`` that rebuilds
  it and its ``architecture`` (the torch class), and optionally ``weights`` (``file`` and
  ``sha256`` of the torch ``state_dict``, to rebuild the exact torch network);
* ``stages``: ``radius`` and ``max_neighbours`` of the graph, ``filter_cut`` and
  ``gnn_cut`` (probabilities, applied after the sigmoid), ``edge_direction``
  (see :data:`EDGE_DIRECTIONS`), optionally ``track_building`` (see
  :data:`TRACK_BUILDING_METHODS`; ``"components"`` when absent) and, for ``best_edges``,
  ``gap_cut`` (a lower cut whose edges fill the gaps the GNN cut leaves; absent: none)
  and ``join_pieces`` (the settings for joining track pieces that fit one trajectory,
  see :class:`JoinSettings`; absent: none), and ``prune_cut`` exactly when the bundle
  has a ``pruner`` (the GNN scores only the edges whose pruner score passes it).
  Any other key is refused, so a bundle that needs a newer trackserve says so;
* ``provenance``: free-form record of the data, training settings, package versions
  and creation date.

:func:`load_bundle` checks all of it, including the files' sha256 and the inputs and
outputs the ONNX files really declare, and raises one :class:`~trackserve.errors.BundleError`
listing every problem. This module imports only the standard library at import time;
loading needs onnxruntime, and :func:`make_bundle` (which exports torch networks) needs torch.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import BundleError

#: The version of the ``pipeline.json`` schema this module reads and writes.
SCHEMA_VERSION = 1
#: Name of the description file inside a bundle directory.
PIPELINE_FILE = "pipeline.json"
#: Folder of a bundle that holds the per-device engines.
ENGINES_DIR = "engines"

#: Edge direction conventions of the graph stage: how each neighbouring pair ``{i, j}`` is stored.
EDGE_DIRECTIONS: dict[str, str] = {
    "i<j": "each pair once, as edge_index[:, k] = (i, j) with i < j",
    "i>j": "each pair once, as edge_index[:, k] = (i, j) with i > j",
    "both": "each pair twice, as (i, j) and (j, i)",
}

#: Dims that vary from event to event; every other dim of a network is fixed.
DYNAMIC_DIMS = ("num_hits", "num_edges")


@dataclass(frozen=True)
class TensorInfo:
    """Name, dtype (numpy name, e.g. ``"float32"``) and dims of one network input or output.

    A dim is an ``int`` (fixed) or a ``str``: a dynamic dim such as ``"num_hits"`` or, in
    :data:`NETWORK_INTERFACES`, a fixed size not yet known (``"num_features"``).
    """

    name: str
    dtype: str
    dims: tuple[int | str, ...]

    def to_dict(self) -> dict:
        """The JSON form: ``{"name", "dtype", "dims"}``."""
        return {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "TensorInfo":
        """Inverse of :meth:`to_dict` (no validation: see :func:`load_bundle`)."""
        return cls(str(data["name"]), str(data["dtype"]), tuple(data["dims"]))

    def resolve(self, sizes: Mapping[str, int]) -> "TensorInfo":
        """The same tensor with each dim named in ``sizes`` replaced by its size."""
        return TensorInfo(self.name, self.dtype, tuple(sizes.get(d, d) if isinstance(d, str) else d for d in self.dims))


@dataclass(frozen=True)
class NetworkInterface:
    """The inputs and outputs every network of one kind has (the runtime feeds them by name)."""

    kind: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    def resolve(self, sizes: Mapping[str, int]) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
        """Inputs and outputs with the fixed sizes (``num_features``, ``embedding_dim``) filled in."""
        return tuple(t.resolve(sizes) for t in self.inputs), tuple(t.resolve(sizes) for t in self.outputs)


_FEATURES = TensorInfo("features", "float32", ("num_hits", "num_features"))

#: The interface of each network kind. ``embedding``: features -> embedding;
#: ``edge_classifier`` (the filter and the GNN): features, edge_index -> scores (logits).
NETWORK_INTERFACES: dict[str, NetworkInterface] = {
    "embedding": NetworkInterface(
        "embedding",
        inputs=(_FEATURES,),
        outputs=(TensorInfo("embedding", "float32", ("num_hits", "embedding_dim")),),
    ),
    "edge_classifier": NetworkInterface(
        "edge_classifier",
        inputs=(_FEATURES, TensorInfo("edge_index", "int64", (2, "num_edges"))),
        outputs=(TensorInfo("scores", "float32", ("num_edges",)),),
    ),
}

#: The networks of a bundle and the kind of each, in pipeline order.
NETWORK_KINDS: dict[str, str] = {"embedding": "embedding", "filter": "edge_classifier", "pruner": "edge_classifier",
                                 "gnn": "edge_classifier"}
#: The networks a bundle may leave out. ``pruner``: a first GNN run on the filtered edges;
#: the GNN then sees only the edges whose pruner score passes ``stages.prune_cut`` (a graph
#: of higher purity, which it tells apart better), and a pruned edge keeps the pruner's
#: logit as its score (below the cut, so no later cut passes it).
OPTIONAL_NETWORKS = ("pruner",)
#: The networks every bundle has.
REQUIRED_NETWORKS = tuple(name for name in NETWORK_KINDS if name not in OPTIONAL_NETWORKS)


#: Track building methods (``stages.track_building``; see :mod:`trackserve.runtime.track_building`).
#: ``best_edges`` orders hits by their distance from the origin, so it needs r and z features.
TRACK_BUILDING_METHODS = ("components", "best_edges")


#: The keys of ``pipeline.json`` (schema version :data:`SCHEMA_VERSION`) and of each network entry.
TOP_LEVEL_KEYS = ("schema_version", "features", "networks", "stages", "provenance")
ENTRY_KEYS = ("kind", "file", "sha256", "inputs", "outputs", "config", "architecture", "weights")
#: The keys of ``stages`` in ``pipeline.json``; the last four are optional.
STAGE_KEYS = ("radius", "max_neighbours", "filter_cut", "gnn_cut", "edge_direction", "track_building", "gap_cut",
              "join_pieces", "prune_cut")


#: float32's smallest normal number and its largest finite one (graph building squares the radius in float32).
_FLOAT32_TINY, _FLOAT32_MAX = 2.0**-126, 3.4028234663852886e38


def _stage_problems(radius, max_neighbours, filter_cut, gnn_cut, edge_direction,
                    track_building="components", gap_cut=None, join_pieces=None, prune_cut=None) -> list[str]:
    problems = []
    join_settings = join_pieces.to_dict() if isinstance(join_pieces, JoinSettings) else join_pieces
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not math.isfinite(radius) or radius <= 0:
        problems.append(f"stages.radius: {radius!r} is not a positive finite number (the graph radius in embedding space)")
    elif not _FLOAT32_TINY < float(radius) * float(radius) < _FLOAT32_MAX:  # inf beyond, no OverflowError
        problems.append(f"stages.radius: {radius!r} is out of range: graph building compares float32 squared "
                        "distances, so the radius must lie between about 1.1e-19 and 1.8e19")
    if isinstance(max_neighbours, bool) or not isinstance(max_neighbours, int) or max_neighbours < 1:
        problems.append(f"stages.max_neighbours: {max_neighbours!r} is not an integer >= 1")
    for name, cut in (("filter_cut", filter_cut), ("gnn_cut", gnn_cut)):
        if isinstance(cut, bool) or not isinstance(cut, (int, float)) or not (0.0 <= cut <= 1.0):
            problems.append(
                f"stages.{name}: {cut!r} is outside [0, 1] (cuts are probabilities, applied after the sigmoid of the logits)"
            )
        elif cut == 1.0:
            problems.append(f"stages.{name}: 1 keeps no edge (an edge passes when the sigmoid of its logit is above the "
                            "cut, and no sigmoid is); use a cut below 1")
    if edge_direction not in EDGE_DIRECTIONS:
        problems.append(f"stages.edge_direction: {edge_direction!r} is not one of {', '.join(map(repr, EDGE_DIRECTIONS))}")
    if track_building not in TRACK_BUILDING_METHODS:
        problems.append(
            f"stages.track_building: {track_building!r} is not one of {', '.join(map(repr, TRACK_BUILDING_METHODS))}"
        )
    if gap_cut is not None:
        if isinstance(gap_cut, bool) or not isinstance(gap_cut, (int, float)) or not (0.0 <= gap_cut <= 1.0):
            problems.append(f"stages.gap_cut: {gap_cut!r} is outside [0, 1] (a probability, like gnn_cut)")
        elif isinstance(gnn_cut, (int, float)) and not isinstance(gnn_cut, bool) and gap_cut > gnn_cut:
            problems.append(f"stages.gap_cut: {gap_cut!r} is above gnn_cut {gnn_cut!r} (it fills the gaps that cut leaves)")
        if track_building != "best_edges":
            problems.append(f"stages.gap_cut: gap filling needs track_building 'best_edges', not {track_building!r}")
    if prune_cut is not None:
        if isinstance(prune_cut, bool) or not isinstance(prune_cut, (int, float)) or not (0.0 <= prune_cut < 1.0):
            problems.append(f"stages.prune_cut: {prune_cut!r} is outside [0, 1) (a probability, like gnn_cut)")
        else:
            join_score = join_settings.get("min_score") if isinstance(join_settings, dict) else None
            for name, cut in (("gnn_cut", gnn_cut), ("gap_cut", gap_cut), ("join_pieces.min_score", join_score)):
                if isinstance(cut, (int, float)) and not isinstance(cut, bool) and prune_cut > cut:
                    problems.append(f"stages.prune_cut: {prune_cut!r} is above {name} {cut!r} (a pruned edge keeps the "
                                    f"pruner's score, so the pruning cut must not be above a later cut)")
    if join_pieces is not None:
        problems.extend(f"stages.join_pieces: {problem}" for problem in join_settings_problems(join_settings))
        if track_building != "best_edges":
            problems.append(f"stages.join_pieces: joining track pieces needs track_building 'best_edges', "
                            f"not {track_building!r}")
    return problems


#: The fields of ``stages.join_pieces`` (:class:`JoinSettings`).
JOIN_FIELDS = ("min_score", "transverse_mm", "z_mm", "single_hit_scale", "rounds")


@dataclass(frozen=True)
class JoinSettings:
    """How track pieces are joined (:func:`trackserve.runtime.piece_joining.join_pieces`).

    ``min_score``: the probability a candidate edge's score must pass (``sigmoid(score) >
    min_score`` for logits), in ``[0, 1]``; ``transverse_mm`` and ``z_mm``: the tolerances
    (> 0, mm); ``single_hit_scale``: in ``[0, 1]``, the tolerances' factor for attaching a
    lone hit (0: never); ``rounds``: an integer >= 1. Invalid values raise BundleError
    naming each.
    """

    min_score: float
    transverse_mm: float
    z_mm: float
    single_hit_scale: float
    rounds: int

    def __post_init__(self):
        problems = join_settings_problems(asdict(self))
        if problems:
            raise BundleError("invalid piece-joining settings: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, data) -> "JoinSettings":
        """Settings from a mapping with exactly the five fields (a bundle's ``stages.join_pieces``)."""
        problems = join_settings_problems(data)
        if problems:
            raise BundleError("invalid piece-joining settings: " + "; ".join(problems))
        return cls(**{name: data[name] for name in JOIN_FIELDS})

    def to_dict(self) -> dict:
        """The five fields as a plain dict (as written in a bundle)."""
        return asdict(self)

    def describe(self) -> str:
        """One line for tables and messages."""
        return (f"join above {self.min_score:g} within {self.transverse_mm:g} mm / {self.z_mm:g} mm, "
                f"lone hits x{self.single_hit_scale:g}, {self.rounds} round{'s' if self.rounds != 1 else ''}")


def join_settings_problems(data) -> list[str]:
    """What is wrong with a mapping of piece-joining settings (empty when nothing is)."""
    if not isinstance(data, Mapping):
        return [f"expected an object with {', '.join(JOIN_FIELDS)}; got {data!r}"]
    problems = []
    missing = [name for name in JOIN_FIELDS if name not in data]
    unknown = [name for name in data if name not in JOIN_FIELDS]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unknown:
        problems.append(f"unknown {', '.join(map(str, unknown))} (the fields are {', '.join(JOIN_FIELDS)})")

    def real(name):
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            problems.append(f"{name} must be a finite number; got {value!r}")
            return None
        return float(value)

    if "min_score" in data and (value := real("min_score")) is not None and not 0.0 <= value <= 1.0:
        problems.append(f"min_score {value!r} is outside [0, 1] (a probability, like the cuts)")
    for name in ("transverse_mm", "z_mm"):
        if name in data and (value := real(name)) is not None and value <= 0.0:
            problems.append(f"{name} must be above 0 mm; got {value!r}")
    if "single_hit_scale" in data and (value := real("single_hit_scale")) is not None and not 0.0 <= value <= 1.0:
        problems.append(f"single_hit_scale {value!r} is outside [0, 1]")
    if "rounds" in data:
        rounds = data["rounds"]
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            problems.append(f"rounds must be an integer >= 1; got {rounds!r}")
    return problems


@dataclass(frozen=True)
class StageParameters:
    """The parameters of the non-network stages.

    ``radius`` and ``max_neighbours``: the graph keeps pairs closer than ``radius`` in the
    embedding, at most ``max_neighbours`` per hit. ``filter_cut`` and ``gnn_cut``: an edge is
    kept when ``sigmoid(logit) > cut``. ``edge_direction``: one of :data:`EDGE_DIRECTIONS`.
    ``track_building``: one of :data:`TRACK_BUILDING_METHODS` (default ``"components"``,
    also for bundles written before the key existed). ``gap_cut``: for ``best_edges``, a
    cut in ``[0, gnn_cut]`` whose edges fill the gaps ``gnn_cut`` leaves
    (:func:`~trackserve.runtime.track_building.gap_edges`); None (default): no gap filling.
    ``join_pieces``: for ``best_edges``, :class:`JoinSettings` for joining the track pieces
    that fit one trajectory (:mod:`trackserve.runtime.piece_joining`; it needs the features
    r, phi and z); None (default): no joining. ``prune_cut``: set exactly when the bundle
    has a ``pruner`` network (:data:`OPTIONAL_NETWORKS`): the GNN scores only the filtered
    edges whose pruner score passes it, in ``[0, gnn_cut]`` and not above ``gap_cut`` or
    the joining's ``min_score``.
    Invalid values raise :class:`~trackserve.errors.BundleError` naming each.
    """

    radius: float
    max_neighbours: int
    filter_cut: float
    gnn_cut: float
    edge_direction: str
    track_building: str = "components"
    gap_cut: float | None = None
    join_pieces: JoinSettings | None = None
    prune_cut: float | None = None

    def __post_init__(self):
        problems = _stage_problems(self.radius, self.max_neighbours, self.filter_cut, self.gnn_cut, self.edge_direction,
                                   self.track_building, self.gap_cut, self.join_pieces, self.prune_cut)
        if problems:
            raise BundleError("invalid stage parameters:\n" + "\n".join(f"  - {p}" for p in problems))
        if self.join_pieces is not None and not isinstance(self.join_pieces, JoinSettings):
            raise BundleError(f"invalid stage parameters: join_pieces must be JoinSettings or None; got {self.join_pieces!r}")

    def to_dict(self) -> dict:
        """The JSON form (the ``stages`` object of ``pipeline.json``)."""
        return {
            "radius": self.radius,
            "max_neighbours": self.max_neighbours,
            "filter_cut": self.filter_cut,
            "gnn_cut": self.gnn_cut,
            "edge_direction": self.edge_direction,
            "track_building": self.track_building,
            **({} if self.gap_cut is None else {"gap_cut": self.gap_cut}),
            **({} if self.join_pieces is None else {"join_pieces": self.join_pieces.to_dict()}),
            **({} if self.prune_cut is None else {"prune_cut": self.prune_cut}),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "StageParameters":
        """Inverse of :meth:`to_dict`; missing or unknown keys or invalid values raise BundleError."""
        missing = [k for k in STAGE_KEYS[:5] if k not in data]
        if missing:
            raise BundleError(f"stages: missing key(s) {', '.join(map(repr, missing))}")
        unknown = [k for k in data if k not in STAGE_KEYS]
        if unknown:
            raise BundleError(_unknown_stage_keys(unknown))
        join = data.get("join_pieces")
        if join is not None and not join_settings_problems(join):
            join = JoinSettings.from_mapping(join)  # a faulty mapping is refused by __post_init__, naming each problem
        return cls(data["radius"], data["max_neighbours"], data["filter_cut"], data["gnn_cut"], data["edge_direction"],
                   data.get("track_building", "components"), data.get("gap_cut"), join, data.get("prune_cut"))


def _unknown_stage_keys(unknown: list) -> str:
    return (f"stages: unknown key(s) {', '.join(map(repr, unknown))} (this trackserve knows "
            f"{', '.join(STAGE_KEYS)}; a bundle written by a newer trackserve needs that version)")


@dataclass(frozen=True)
class NetworkEntry:
    """One network of a bundle: its ONNX file (relative to the bundle), checksum and interface."""

    name: str
    kind: str
    file: str
    sha256: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    config: dict = field(default_factory=dict, hash=False)
    architecture: str | None = None
    weights: dict | None = field(default=None, hash=False)

    def to_dict(self) -> dict:
        """The JSON form (one value of the ``networks`` object of ``pipeline.json``)."""
        data = {
            "kind": self.kind,
            "file": self.file,
            "sha256": self.sha256,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "config": dict(self.config),
            "architecture": self.architecture,
        }
        if self.weights is not None:
            data["weights"] = dict(self.weights)
        return data


@dataclass
class Bundle:
    """A pipeline: features, networks, stage parameters and provenance.

    ``directory`` is where the network files live (``None`` for a bundle built in memory
    and not yet saved).
    """

    features: dict
    networks: dict[str, NetworkEntry]
    stages: StageParameters
    provenance: dict = field(default_factory=dict)
    directory: Path | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the node features, in column order."""
        return tuple(self.features["names"])

    @property
    def feature_scales(self) -> tuple[float, ...]:
        """Scale of each feature (feature = raw value / scale)."""
        return tuple(float(s) for s in self.features["scales"])

    @property
    def num_features(self) -> int:
        """Number of node features F (the second dim of every network's ``features`` input)."""
        return len(self.features["names"])

    def network_path(self, name: str) -> Path:
        """Path of the ONNX file of network ``name`` (``embedding``, ``filter`` or ``gnn``)."""
        if name not in self.networks:
            raise BundleError(f"the bundle has no network {name!r}; it has {', '.join(map(repr, self.networks))}")
        if self.directory is None:
            raise BundleError("this bundle has no directory yet: save it with save_bundle first")
        return Path(self.directory) / self.networks[name].file

    def engine_directory(self, device_key: str) -> Path:
        """Folder ``engines/<device_key>`` of this bundle (not created here)."""
        if self.directory is None:
            raise BundleError("this bundle has no directory yet: save it with save_bundle first")
        if not device_key or "/" in device_key or device_key in (".", ".."):
            raise BundleError(f"invalid device key {device_key!r}: it must be a non-empty name without '/'")
        return Path(self.directory) / ENGINES_DIR / device_key

    def to_dict(self) -> dict:
        """The content of ``pipeline.json``."""
        return {
            "schema_version": self.schema_version,
            "features": dict(self.features),
            "networks": {name: entry.to_dict() for name, entry in self.networks.items()},
            "stages": self.stages.to_dict(),
            "provenance": dict(self.provenance),
        }


# --------------------------------------------------------------------------- loading


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _bundle_error(directory, problems: list[str]) -> BundleError:
    lines = "\n".join(f"  - {p}" for p in problems)
    return BundleError(f"invalid bundle {directory}: {len(problems)} problem(s):\n{lines}")


def _parse_tensors(value, where: str, problems: list[str]) -> tuple[TensorInfo, ...] | None:
    if not isinstance(value, list):
        problems.append(f"{where}: expected a list of {{name, dtype, dims}} objects, got {type(value).__name__}")
        return None
    tensors = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not {"name", "dtype", "dims"} <= item.keys():
            problems.append(f"{where}[{i}]: expected an object with keys 'name', 'dtype', 'dims', got {item!r}")
            return None
        dims = item["dims"]
        if not isinstance(dims, list) or not all(
            (isinstance(d, int) and not isinstance(d, bool) and d >= 0) or (isinstance(d, str) and d) for d in dims
        ):
            problems.append(f"{where}[{i}].dims: {dims!r} is not a list of sizes (int >= 0) and dim names (str)")
            return None
        tensors.append(TensorInfo.from_dict(item))
    return tuple(tensors)


def _interface_problems(name: str, entry: NetworkEntry, num_features: int | None) -> list[str]:
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


def _onnx_problems(name: str, entry: NetworkEntry, path: Path) -> list[str]:
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
    problems = []
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


_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
}


def _parse_features(value, problems: list[str]) -> dict | None:
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
        from .events.features import KNOWN_FEATURES

        unknown_names = [n for n in names if n not in KNOWN_FEATURES]
        if unknown_names:
            problems.append(f"features.names: unknown feature name(s) {unknown_names}; the features trackserve "
                            f"computes are {', '.join(KNOWN_FEATURES)} (lower case)")
            ok = False
    if not isinstance(scales, list) or not all(
        isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0 for s in scales
    ):
        problems.append(f"features.scales: {scales!r} is not a list of finite positive numbers (each feature is "
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


def _feature_config_problems(name: str, config: Mapping, features: Mapping) -> list[str]:
    """Where a network's config contradicts the bundle's features: its input count, the
    columns and scales its derived inputs read, its periodic (φ) columns and their period.
    Keys a config does not have are not checked (imported networks record fewer)."""
    names, scales = features["names"], features["scales"]
    where = f"networks.{name}.config"
    problems = []
    channels = config.get("in_channels")
    if isinstance(channels, int) and not isinstance(channels, bool) and channels != len(names):
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
        and _is_relative_file(weights.get("file"))
        and _is_sha256(weights.get("sha256"))
    ):
        problems.append(
            f"{where}.weights: {weights!r} is not an object with a relative 'file' and a 64-character hex 'sha256'"
        )
    inputs = _parse_tensors(value["inputs"], f"{where}.inputs", problems)
    outputs = _parse_tensors(value["outputs"], f"{where}.outputs", problems)
    if len(problems) > before:
        return None
    return NetworkEntry(name, kind, file, sha256, inputs, outputs, dict(config), architecture, weights)


def _parse(data, directory: Path, problems: list[str], *, check_files: bool) -> Bundle | None:
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

    features = _parse_features(data["features"], problems)

    stages = None
    raw_stages = data["stages"]
    if not isinstance(raw_stages, dict):
        problems.append(f"stages: expected an object, got {type(raw_stages).__name__}")
    else:
        keys = STAGE_KEYS[:5]
        absent = [k for k in keys if k not in raw_stages]
        unknown = [k for k in raw_stages if k not in STAGE_KEYS]
        if unknown:
            problems.append(_unknown_stage_keys(unknown))
        if absent:
            problems.append(f"stages: missing key(s) {', '.join(map(repr, absent))}")
        else:  # the known keys' problems too when there are unknown keys: every problem at once
            method = raw_stages.get("track_building", "components")
            gap_cut = raw_stages.get("gap_cut")
            join = raw_stages.get("join_pieces")
            prune_cut = raw_stages.get("prune_cut")
            stage_problems = _stage_problems(*(raw_stages[k] for k in keys), method, gap_cut, join, prune_cut)
            if method == "best_edges" and features is not None and not {"r", "z"} <= set(features["names"]):
                stage_problems.append(
                    f"stages.track_building: 'best_edges' orders hits by r and z, the features {features['names']} lack them"
                )
            if join is not None and features is not None and not {"r", "phi", "z"} <= set(features["names"]):
                stage_problems.append(
                    f"stages.join_pieces: joining track pieces fits lines in r, phi and z, the features "
                    f"{features['names']} lack some of them"
                )
            problems.extend(stage_problems)
            if not stage_problems:
                stages = StageParameters(*(raw_stages[k] for k in keys), method, gap_cut,
                                         None if join is None else JoinSettings.from_mapping(join), prune_cut)

    provenance = data["provenance"]
    if not isinstance(provenance, dict):
        problems.append(f"provenance: expected an object, got {type(provenance).__name__}")

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
            problems.extend(_pruner_problems("pruner" in raw_networks, raw_stages.get("prune_cut")))
        num_features = len(features["names"]) if features is not None else None
        for name in NETWORK_KINDS:
            if name not in raw_networks:
                continue
            entry = _parse_entry(name, raw_networks[name], problems)
            if entry is None:
                continue
            networks[name] = entry
            interface_problems = _interface_problems(name, entry, num_features)
            problems.extend(interface_problems)
            if features is not None:
                problems.extend(_feature_config_problems(name, entry.config, features))
            if check_files:
                problems.extend(_file_problems(name, entry, directory, check_onnx=not interface_problems))

    if problems:
        return None
    return Bundle(features, networks, stages, dict(provenance), directory, version)


def _pruner_problems(has_pruner: bool, prune_cut) -> list[str]:
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
    return f"{key}: {file} does not exist in {directory}"


def _weights_problems(name: str, entry: NetworkEntry, directory: Path) -> list[str]:
    """Problems of the optional torch weights file (used to rebuild the torch network)."""
    if entry.weights is None:
        return []
    path = directory / entry.weights["file"]
    if not path.is_file():
        return [_not_a_file_problem(f"networks.{name}.weights.file", entry.weights["file"], path, directory)]
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
    return _onnx_problems(name, entry, path) if check_onnx else []


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
    directory, data = _read_pipeline(path)
    problems: list[str] = []
    bundle = _parse(data, directory, problems, check_files=check_files)
    if problems:
        raise _bundle_error(directory, problems)
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


def _read_pipeline(path: str | os.PathLike) -> tuple[Path, Any]:
    """The bundle directory of ``path`` and its decoded ``pipeline.json`` (not yet validated)."""
    if not isinstance(path, (str, os.PathLike)):
        raise BundleError(f"a bundle is given by its directory (a path), got {type(path).__name__}")
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
        return directory, json.loads(pipeline.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as error:
        raise BundleError(f"{pipeline}: the key {error.args[0]!r} appears twice in one object; keep one of them") from None
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


# --------------------------------------------------------------------------- saving


def save_bundle(bundle: Bundle, directory: str | os.PathLike) -> Bundle:
    """Write ``bundle`` to ``directory`` and return it as loaded back from there.

    Network files (ONNX and torch weights) are copied from ``bundle.directory`` when it is another directory;
    ``pipeline.json`` is written last, atomically. The result is checked by
    :func:`load_bundle`, so a bundle that saves is a bundle that loads.
    """
    directory = Path(directory)
    data = bundle.to_dict()
    problems: list[str] = []
    _parse(json.loads(json.dumps(data)), directory, problems, check_files=False)
    if problems:
        raise _bundle_error(directory, problems)
    directory.mkdir(parents=True, exist_ok=True)
    if bundle.directory is not None and Path(bundle.directory).resolve() != directory.resolve():
        for entry in bundle.networks.values():
            files = [entry.file] + ([entry.weights["file"]] if entry.weights is not None else [])
            for file in files:
                target = directory / file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(bundle.directory) / file, target)
    write_pipeline_json(data, directory)
    return load_bundle(directory)


def write_pipeline_json(data: Mapping, directory: str | os.PathLike) -> Path:
    """Write ``data`` as ``directory/pipeline.json`` atomically (temporary file, then rename)."""
    target = Path(directory) / PIPELINE_FILE
    temporary = target.with_name(target.name + ".tmp")
    try:
        text = json.dumps(data, indent=2, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise BundleError(
            f"cannot write {target}: {error} (every value, network configs and provenance included, "
            "must be JSON: str, finite number, bool, null, list, object)"
        ) from None
    try:
        temporary.write_text(text + "\n", encoding="utf-8")
        os.replace(temporary, target)
    except OSError as error:
        try:
            temporary.unlink(missing_ok=True)  # no stray file left in the bundle
        except OSError:
            pass
        raise BundleError(f"cannot write {target}: {error.strerror or error}") from None
    return target


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a bundle (those installed), for the provenance record."""
    from importlib import metadata

    from . import __version__

    versions = {"trackserve": __version__, "python": platform.python_version()}
    for package in ("torch", "onnx", "onnxruntime", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def default_provenance(**record: Any) -> dict:
    """A provenance record: creation date (UTC, ISO 8601), package versions, and ``record``."""
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    return {"created": created, "packages": package_versions(), **record}


def _features_dict(features) -> dict:
    if hasattr(features, "to_dict"):
        features = features.to_dict()
    elif hasattr(features, "names") and hasattr(features, "scales"):
        features = {"names": features.names, "scales": features.scales}
    if not isinstance(features, Mapping):
        raise BundleError(f"features: expected a FeatureSpec or a mapping with 'names' and 'scales', got {features!r}")
    result = dict(features)
    if isinstance(result.get("names"), (list, tuple)):
        result["names"] = list(result["names"])
    if isinstance(result.get("scales"), (list, tuple)):
        result["scales"] = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in result["scales"]]
    return result


def make_bundle(
    directory: str | os.PathLike,
    networks: Mapping[str, Any],
    *,
    features,
    stages: StageParameters,
    provenance: Mapping | None = None,
    opset: int | None = None,
) -> Bundle:
    """Export torch networks to ONNX (each validated against PyTorch) and write a bundle.

    ``networks`` maps ``embedding``, ``filter`` and ``gnn`` (and optionally ``pruner``,
    with ``stages.prune_cut``) to a torch module or a ``(module, kind)`` pair; ``features`` is a FeatureSpec (or a mapping) with ``names``
    and ``scales``; ``provenance`` is merged into :func:`default_provenance`. Each
    network is written to ``<directory>/<name>.onnx`` by
    :func:`trackserve.export.onnx_export.export_network`, which raises
    :class:`~trackserve.errors.ExportParityError` if ONNX Runtime disagrees with PyTorch.
    Needs torch.
    """
    from .export.onnx_export import DEFAULT_OPSET, export_network
    from .export.specs import KIND_ALIASES

    directory = Path(directory)
    features = _features_dict(features)
    problems: list[str] = []
    if _parse_features(features, problems) is None:
        raise _bundle_error(directory, problems)
    unknown = [n for n in networks if n not in NETWORK_KINDS]
    absent = [n for n in REQUIRED_NETWORKS if n not in networks]
    if unknown or absent:
        raise BundleError(
            f"make_bundle needs the networks {', '.join(REQUIRED_NETWORKS)} (optionally {', '.join(OPTIONAL_NETWORKS)}); "
            + (f"unknown: {', '.join(unknown)}; " if unknown else "")
            + (f"missing: {', '.join(absent)}" if absent else "")
        )
    if not isinstance(stages, StageParameters):
        stages = StageParameters.from_dict(stages)
    pruner_problems = _pruner_problems("pruner" in networks, stages.prune_cut)
    if pruner_problems:
        raise BundleError("make_bundle: " + "; ".join(pruner_problems))
    modules = {}
    for name, value in networks.items():
        module, kind = value if isinstance(value, tuple) else (value, NETWORK_KINDS[name])
        if KIND_ALIASES.get(kind, kind) != NETWORK_KINDS[name]:
            raise BundleError(f"networks.{name}: kind {kind!r}, the {name} network must be of kind {NETWORK_KINDS[name]!r}")
        modules[name] = module
    directory.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name in (name for name in NETWORK_KINDS if name in modules):
        module, kind = modules[name], NETWORK_KINDS[name]
        report = export_network(
            module, kind, directory / f"{name}.onnx", num_features=len(features["names"]),
            opset=opset or DEFAULT_OPSET, validate=True,
        )
        entries[name] = NetworkEntry(
            name=name,
            kind=kind,
            file=f"{name}.onnx",
            sha256=report.sha256,
            inputs=report.inputs,
            outputs=report.outputs,
            config=dict(getattr(module, "config", None) or {}),
            architecture=architecture_name(module),
            weights=save_weights(module, directory / f"{name}.pt"),
        )
    record = default_provenance(**dict(provenance or {}))
    record.setdefault("export", {"opset": opset or DEFAULT_OPSET, "exporter": "torch.onnx (TorchScript-based, dynamo=False)"})
    bundle = Bundle(features, entries, stages, record, directory)
    write_pipeline_json(bundle.to_dict(), directory)
    return load_bundle(directory)


def save_weights(module, path: Path) -> dict:
    """Save a torch network's ``state_dict`` to ``path``; return its ``weights`` entry (file, sha256).

    The weights let :func:`trackserve.export.bundle_networks.load_torch_network` rebuild
    the exact torch network of a bundle (for fine-tuning, re-export, or the eager
    PyTorch baseline of the benchmarks). Needs torch.
    """
    import torch

    torch.save({key: value.detach().cpu() for key, value in module.state_dict().items()}, path)
    return {"file": path.name, "sha256": file_sha256(path)}


def architecture_name(module) -> str:
    """What a bundle records as a network's architecture: the registry name of a trackserve
    network (``"ResAGNN"``...; see :func:`trackserve.export.networks.build_network`), else the
    qualified class name."""
    name = getattr(type(module), "architecture", None)
    if isinstance(name, str) and name:
        return name
    return f"{type(module).__module__}.{type(module).__qualname__}"


def replace_network(
    directory: str | os.PathLike,
    name: str,
    module,
    *,
    opset: int | None = None,
    runs: int = 3,
) -> tuple[Bundle, Any]:
    """Export ``module`` (validated against PyTorch) as network ``name`` of the bundle in ``directory``.

    The network's file is overwritten only once the export passed validation; its
    sha256, inputs, outputs, config and architecture are updated in ``pipeline.json``,
    the export is recorded in the provenance's ``exported_again`` list (network, opset,
    date, and whether it replaced the network by another: then the bundle's cuts and
    recorded figures describe the old one), and the whole bundle is loaded back (and so
    checked). The rest of ``pipeline.json``
    must be valid, but the old network file may be missing or damaged: this is how a
    bundle whose file changed is repaired. Returns the loaded bundle and the
    :class:`~trackserve.export.onnx_export.ExportReport`. Needs torch.
    """
    from .export.onnx_export import DEFAULT_OPSET, export_network

    directory, data = _read_pipeline(directory)
    problems: list[str] = []
    bundle = _parse(data, directory, problems, check_files=False)
    if problems:
        raise _bundle_error(directory, problems)
    if name not in bundle.networks:
        raise BundleError(f"unknown network {name!r}: this bundle has {', '.join(bundle.networks)}")
    entry = bundle.networks[name]
    config = getattr(module, "config", None)
    takes = config.get("in_channels") if isinstance(config, dict) else None
    if takes is not None and takes != bundle.num_features:
        raise BundleError(
            f"the new {name} network takes {takes} features but the bundle's features are "
            f"{list(bundle.feature_names)} ({bundle.num_features}); every network reads the same feature array"
        )
    report = export_network(
        module, entry.kind, directory / entry.file, num_features=bundle.num_features,
        opset=opset or DEFAULT_OPSET, runs=runs,
    )
    new_config, new_architecture = dict(getattr(module, "config", None) or {}), architecture_name(module)
    bundle.networks[name] = NetworkEntry(
        name, entry.kind, entry.file, report.sha256, report.inputs, report.outputs, new_config, new_architecture,
        save_weights(module, directory / Path(entry.file).with_suffix(".pt").name),
    )
    # What was exported when, so that the provenance does not describe only the first export
    # (and says when the network is another than the one the cuts were chosen with).
    replaced = new_architecture != entry.architecture or new_config != entry.config
    bundle.provenance.setdefault("exported_again", []).append({
        "network": name, "opset": report.opset,
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "architecture": new_architecture,
        "replaced": replaced,
        **({"replaced_architecture": entry.architecture, "note": "another network than the one the bundle was "
            "trained and tuned with: its cuts and the provenance's settings and figures describe that one"}
           if replaced else {}),
    })
    write_pipeline_json(bundle.to_dict(), directory)
    return load_bundle(directory), report
