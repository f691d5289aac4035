"""The shipped bundle (``models/default``) loads and runs on the sample event shipped
with trackserve and on the published service's events.

Its tracking quality on the held-out events is measured by ``benchmarks/bench_default_bundle.py``
(section ``default_bundle`` of ``benchmarks/RESULTS.md``), not asserted here; the figures the
README quotes for the sample event are.
"""

from __future__ import annotations

import numpy as np
import pytest

from trackserve.bundle import load_bundle
from trackserve.events.trackml import read_event
from trackserve.paths import DEFAULT_BUNDLE, SAMPLE_EVENT
from trackserve.runtime.config import RuntimeConfig
from trackserve.runtime.pipeline import Pipeline

SAMPLE_FEATURES = DEFAULT_BUNDLE.parents[1].parent / "shared" / "data" / "exatrkx_service" / "lrt_events" / "evt_0.csv"
#: Each shipped bundle with the widths of its first GNN (the pruner) and its second (the GNN).
#: The default bundle's networks with cuts tuned for five vertex shifts, which it carries.
VERTEX_SHIFTS_BUNDLE = DEFAULT_BUNDLE.parent / "default-vertex-shifts"
SHIPPED = [pytest.param(DEFAULT_BUNDLE, 32, 48, id="default"),
           pytest.param(VERTEX_SHIFTS_BUNDLE, 32, 48, id="default-vertex-shifts")]
SHIPPED_PATHS = [pytest.param(DEFAULT_BUNDLE, id="default"), pytest.param(VERTEX_SHIFTS_BUNDLE, id="default-vertex-shifts")]


def provenance_rescaled(bundle) -> dict:
    """The record `trackserve rescale` wrote: the bundle was trained on r, phi, z, eta and rescaled."""
    record = bundle.provenance["rescaled"]
    differences, allowed = record["max_output_difference_on_check_event"], record["allowed_difference_on_check_event"]
    assert set(differences) == set(allowed) == set(bundle.networks)
    assert all(differences[name] <= allowed[name] for name in differences)
    return record


@pytest.mark.parametrize("path, pruner_hidden, gnn_hidden", SHIPPED)
def test_shipped_bundle_loads_with_its_training_record(path, pruner_hidden, gnn_hidden):
    bundle = load_bundle(path)
    # a pruner (the first GNN) before the GNN, which scores only the edges passing its cut
    assert set(bundle.networks) == {"embedding", "filter", "pruner", "gnn"}
    assert 0 < bundle.stages.prune_cut <= bundle.stages.gap_cut <= bundle.stages.gnn_cut
    # the published service's three features, eta derived inside the networks; best-edge track building
    assert bundle.feature_names == ("r", "phi", "z") and bundle.feature_scales == (3000.0, float(np.pi), 400.0)
    assert all(entry.config["derived_eta"] is not None for entry in bundle.networks.values())
    assert bundle.stages.track_building == "best_edges"
    assert bundle.networks["gnn"].architecture == "InteractionGNN"
    # the second GNN of its own width (it scores a sixth of the edges), the first as trained in step 1
    assert (bundle.networks["pruner"].config["hidden"], bundle.networks["gnn"].config["hidden"]) == (pruner_hidden, gnn_hidden)
    assert provenance_rescaled(bundle)["from_features"]["names"] == ["r", "phi", "z", "eta"]
    provenance = bundle.provenance
    assert provenance["trained_by"] == "trackserve train"
    # trained here, within the hour's budget (with the run it started from, when it did)
    assert provenance["seconds"].get("training_total", provenance["seconds"]["training"]) < 3600
    assert set(provenance["validation"]) >= {"graph", "filter", "gnn"}
    assert provenance["settings"]["max_neighbours"] == bundle.stages.max_neighbours
    assert provenance["settings"]["gnn"]["hidden"] == pruner_hidden
    assert provenance["settings"]["pruned_gnn_hidden"] == gnn_hidden
    assert provenance["settings"]["prune_cut"] == bundle.stages.prune_cut
    assert provenance["started_from"]["settings"]["max_neighbours"] == bundle.stages.max_neighbours


@pytest.mark.parametrize("path", SHIPPED_PATHS)
def test_shipped_bundle_labels_every_hit_of_the_sample_event(path):
    event = read_event(SAMPLE_EVENT)
    pipeline = Pipeline(path, config=RuntimeConfig(intra_op_threads=1, graph_threads=1))
    result = pipeline.run_event(event)
    assert result.labels.shape == (event.num_hits,)
    assert result.labels.dtype == np.int64
    assert np.array_equal(np.unique(result.labels), np.arange(result.num_tracks))
    assert 0 < result.num_edges["filter"] <= result.num_edges["graph"]
    assert result.num_edges["gnn"] <= result.num_edges["filter"]


@pytest.mark.parametrize("path, found", [pytest.param(DEFAULT_BUNDLE, 50, id="default"),
                                          pytest.param(VERTEX_SHIFTS_BUNDLE, 53, id="default-vertex-shifts")])
def test_shipped_bundle_finds_the_readme_s_particles_of_the_sample_event(capsys, path, found):
    """README ("Vertex shifts", "Known limits"): on the sample event `trackserve run` finds 50 of
    the 53 counted particles (pT >= 1 GeV, >= 5 hits; 94.3 %) with ``models/default`` in one
    pass and 53 of 53 with ``models/default-vertex-shifts``, with no fake track."""
    import json

    from trackserve.cli import main

    assert main(["run", "--json", "--no-labels", "--bundle", str(path)]) == 0
    (event,) = json.loads(capsys.readouterr().out)["events"]
    metrics = event["metrics"]
    assert (metrics["min_pt"], metrics["min_hits"]) == (1.0, 5)  # the selection the README's figures are for
    assert (metrics["num_matched"], metrics["num_reconstructable"]) == (found, 53)
    assert metrics["efficiency"] == pytest.approx(found / 53)
    assert metrics["num_fake_tracks"] == 0 and metrics["fake_rate"] == 0.0


@pytest.mark.parametrize("path", SHIPPED_PATHS)
def test_shipped_bundle_runs_the_published_service_events(path):
    from trackserve.events.trackml import read_feature_csv

    if not SAMPLE_FEATURES.exists():
        pytest.skip(f"{SAMPLE_FEATURES} not found (the published service's events live in ../shared/data)")
    features = read_feature_csv(SAMPLE_FEATURES, 3)
    result = Pipeline(path, config=RuntimeConfig(intra_op_threads=1, graph_threads=1)).run(features)
    assert result.labels.shape == (features.shape[0],) and result.num_edges["graph"] > 0


def test_the_vertex_shift_bundle_is_the_default_networks_tuned_for_its_shifts():
    default, shifted = load_bundle(DEFAULT_BUNDLE), load_bundle(VERTEX_SHIFTS_BUNDLE)
    assert {name: entry.sha256 for name, entry in shifted.networks.items()} == \
        {name: entry.sha256 for name, entry in default.networks.items()}
    assert default.stages.vertex_shifts is None
    assert shifted.stages.vertex_shifts == (-100.0, -50.0, 0.0, 50.0, 100.0)
    tuned = shifted.provenance["gnn_cut_tuned"]
    assert tuned["vertex_shifts"] == list(shifted.stages.vertex_shifts) and tuned["previous"]["vertex_shifts"] is None
    assert tuned["stages"]["gnn_cut"] == shifted.stages.gnn_cut and tuned["stages"]["gap_cut"] == shifted.stages.gap_cut
    # the same radius, cap and filter cut: only the track-building cuts were tuned again
    for key in ("radius", "max_neighbours", "filter_cut", "prune_cut", "edge_direction", "track_building"):
        assert getattr(shifted.stages, key) == getattr(default.stages, key)
    event = read_event(SAMPLE_EVENT)
    result = Pipeline(VERTEX_SHIFTS_BUNDLE, config=RuntimeConfig(intra_op_threads=1, graph_threads=1)).run_event(event)
    assert result.num_edges["merged"] < result.num_edges["filter"]  # five passes, merged
