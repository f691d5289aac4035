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
listing every problem. This package imports only the standard library at import time;
loading needs onnxruntime, and :func:`make_bundle` (which exports torch networks) needs torch.

Its modules: :mod:`~trackserve.bundle.schema` (the constants, the network interfaces,
:class:`NetworkEntry` and :class:`Bundle`), :mod:`~trackserve.bundle.stages` (the stage
parameters and their checks), :mod:`~trackserve.bundle.checks` (networks against their
interfaces, their ONNX files and the features), :mod:`~trackserve.bundle.loading`
(:func:`load_bundle`) and :mod:`~trackserve.bundle.saving` (:func:`save_bundle`,
:func:`make_bundle`, :func:`replace_network`). Everything public is importable from
``trackserve.bundle`` itself.
"""

from ..errors import BundleError  # the error every check here raises, importable with them
from .checks import tensor_problems
from .loading import file_sha256, load_bundle
from .saving import (architecture_name, default_provenance, make_bundle, package_versions, replace_network,
                     save_bundle, save_weights, write_pipeline_json)
from .schema import (DYNAMIC_DIMS, ENGINES_DIR, ENTRY_KEYS, NETWORK_INTERFACES, NETWORK_KINDS, OPTIONAL_NETWORKS,
                     PIPELINE_FILE, REQUIRED_NETWORKS, SCHEMA_VERSION, TOP_LEVEL_KEYS, Bundle, NetworkEntry,
                     NetworkInterface, TensorInfo)
from .stages import (EDGE_DIRECTIONS, JOIN_FIELDS, STAGE_KEYS, TRACK_BUILDING_METHODS, JoinSettings, StageParameters,
                     join_settings_problems)

__all__ = [
    "DYNAMIC_DIMS", "EDGE_DIRECTIONS", "ENGINES_DIR", "ENTRY_KEYS", "JOIN_FIELDS", "NETWORK_INTERFACES", "NETWORK_KINDS",
    "OPTIONAL_NETWORKS", "PIPELINE_FILE", "REQUIRED_NETWORKS", "SCHEMA_VERSION", "STAGE_KEYS", "TOP_LEVEL_KEYS",
    "TRACK_BUILDING_METHODS", "Bundle", "BundleError", "JoinSettings", "NetworkEntry", "NetworkInterface", "StageParameters",
    "TensorInfo", "architecture_name", "default_provenance", "file_sha256", "join_settings_problems", "load_bundle",
    "make_bundle", "package_versions", "replace_network", "save_bundle", "save_weights", "tensor_problems",
    "write_pipeline_json",
]
