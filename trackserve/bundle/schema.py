"""What a bundle is made of: its schema constants, the tensors and interfaces of its
network kinds, a network's entry and the :class:`Bundle` itself."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ..errors import BundleError
from .stages import StageParameters

#: The version of the ``pipeline.json`` schema this module reads and writes.
SCHEMA_VERSION = 1
#: Name of the description file inside a bundle directory.
PIPELINE_FILE = "pipeline.json"
#: Folder of a bundle that holds the per-device engines.
ENGINES_DIR = "engines"

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



#: The ONNX metadata property (``metadata_props``) in which :func:`~trackserve.export.onnx_export.export_network`
#: records what network a file holds (:func:`network_description`), so that a bundle's entry and
#: its file can be checked against each other beyond their interface (files exported before
#: it existed, or by other tools, have none and are not checked).
NETWORK_METADATA_KEY = "trackserve.network"


def network_description(architecture: str | None, config: Mapping) -> str:
    """The value of :data:`NETWORK_METADATA_KEY`: the network's architecture and config as JSON
    (keys sorted; raises ``TypeError`` / ``ValueError`` for a config that is not JSON)."""
    return json.dumps({"architecture": architecture, "config": dict(config)}, sort_keys=True, allow_nan=False)


#: The keys of ``pipeline.json`` (schema version :data:`SCHEMA_VERSION`) and of each network entry.
TOP_LEVEL_KEYS = ("schema_version", "features", "networks", "stages", "provenance")
ENTRY_KEYS = ("kind", "file", "sha256", "inputs", "outputs", "config", "architecture", "weights")

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
            "config": copy.deepcopy(dict(self.config)),
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
    def feature_spec(self):
        """The bundle's features as a :class:`~trackserve.events.features.FeatureSpec` (names and scales)."""
        from ..events.features import FeatureSpec  # (events imports nothing of the bundle's)

        return FeatureSpec(self.feature_names, self.feature_scales)

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
        """The content of ``pipeline.json``: a copy, nested lists and objects included, so that
        changing it leaves the bundle as it is."""
        return {
            "schema_version": self.schema_version,
            "features": copy.deepcopy(dict(self.features)),
            "networks": {name: entry.to_dict() for name, entry in self.networks.items()},
            "stages": self.stages.to_dict(),
            "provenance": copy.deepcopy(dict(self.provenance)),
        }
