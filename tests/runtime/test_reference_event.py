"""The published ExaTrkX service's reference event, stage by stage, through the runtime.

From the service's own embedding the radius graph (r = 1.6) must give exactly its
2,334 edges; its filter logits cut at 0.21 exactly its 584 edges; the service GNN,
imported from its TorchScript checkpoint, exported to ONNX and run by ONNX Runtime,
its GNN logits within 1e-3; and track building at 0.75 the same partition of hits
into its tracks.
"""

from __future__ import annotations

import numpy as np
import pytest

from trackserve.engines.onnx_runtime import OnnxNetwork
from trackserve.runtime.cuts import logit_threshold
from trackserve.runtime.graph_building import build_graph
from trackserve.runtime.track_building import build_tracks


def _load(folder, name, dtype=np.float64):
    return np.loadtxt(folder / name, delimiter=",", dtype=dtype)


@pytest.fixture(scope="module")
def reference(shared_data):
    folder = shared_data / "exatrkx_service" / "reference_event"
    return {
        "features": _load(folder, "in_e1000.csv").astype(np.float32),
        "embedding": _load(folder, "embed_output_OUTPUT__0.csv").astype(np.float32),
        "graph": _load(folder, "frnn_output_OUTPUT0.csv").astype(np.int64),
        "filter_logits": _load(folder, "filter_output_OUTPUT__0.csv").astype(np.float32),
        "filtered": _load(folder, "applyfilter_output_EDGE_LIST_AFTER_FILTER.csv").astype(np.int64),
        "gnn_logits": _load(folder, "gnn_output_OUTPUT__0.csv").astype(np.float32),
        "labels": _load(folder, "exatrkx_output_LABELS.csv").astype(np.int64),
    }


@pytest.fixture(scope="module")
def service_gnn_onnx(shared_data, tmp_path_factory):
    pytest.importorskip("torch")
    from trackserve.export.checkpoint_import import import_checkpoint
    from trackserve.export.onnx_export import export_network

    models = shared_data / "exatrkx_service" / "models"
    network = import_checkpoint(models / "gnn.pt", hparams=models / "hparams_GNN.yaml")
    path = tmp_path_factory.mktemp("service_gnn") / "gnn.onnx"
    export_network(network, "edge_classifier", path)
    return OnnxNetwork(path, name="service gnn")


def _pairs(edges: np.ndarray) -> set[tuple[int, int]]:
    return set(map(tuple, edges.T.tolist()))


def test_graph_from_reference_embedding_is_exactly_the_service_graph(reference):
    edges = build_graph(reference["embedding"], 1.6, 500, direction="i>j")
    assert edges.shape == (2, 2334)
    assert _pairs(edges) == _pairs(reference["graph"])


def test_filter_cut_keeps_exactly_the_service_edges(reference):
    kept = reference["filter_logits"] > logit_threshold(0.21)
    assert int(kept.sum()) == 584
    assert np.array_equal(reference["graph"][:, kept], reference["filtered"])


def test_imported_service_gnn_in_onnx_runtime_reproduces_its_logits(reference, service_gnn_onnx):
    logits = service_gnn_onnx.run(features=reference["features"], edge_index=reference["filtered"])
    assert logits.shape == (584,)
    assert np.max(np.abs(logits - reference["gnn_logits"])) < 1e-3


def test_track_building_gives_the_service_partition(reference, service_gnn_onnx):
    logits = service_gnn_onnx.run(features=reference["features"], edge_index=reference["filtered"])
    labels = build_tracks(314, reference["filtered"], logits, 0.75)
    expected = reference["labels"]  # the file lacks the last hit's label
    ours = labels[: expected.size]
    pairs = np.unique(np.stack([ours, expected]), axis=1)
    assert pairs.shape[1] == len(np.unique(ours)) == len(np.unique(expected))
    assert len(np.unique(expected)) == 37
