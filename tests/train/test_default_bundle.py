"""The shipped default bundle loads and runs on the sample event shipped with trackserve.

Its tracking quality is measured by ``benchmarks/bench_default_bundle.py`` (section
``default_bundle`` of ``benchmarks/RESULTS.md``), not asserted here.
"""

from __future__ import annotations

import numpy as np

from trackserve.bundle import load_bundle
from trackserve.events.trackml import read_event
from trackserve.paths import DEFAULT_BUNDLE, SAMPLE_EVENT
from trackserve.runtime.config import RuntimeConfig
from trackserve.runtime.pipeline import Pipeline


def test_default_bundle_loads_with_its_training_record():
    bundle = load_bundle(DEFAULT_BUNDLE)
    assert set(bundle.networks) == {"embedding", "filter", "gnn"}
    assert bundle.feature_names == ("r", "phi", "z", "eta")
    assert bundle.networks["gnn"].architecture == "InteractionGNN"
    provenance = bundle.provenance
    assert provenance["trained_by"] == "trackserve train"
    assert set(provenance["validation"]) >= {"graph", "filter", "gnn"}
    assert provenance["settings"]["max_neighbours"] == bundle.stages.max_neighbours


def test_default_bundle_labels_every_hit_of_the_sample_event():
    event = read_event(SAMPLE_EVENT)
    pipeline = Pipeline(DEFAULT_BUNDLE, config=RuntimeConfig(intra_op_threads=1, graph_threads=1))
    result = pipeline.run_event(event)
    assert result.labels.shape == (event.num_hits,)
    assert result.labels.dtype == np.int64
    assert np.array_equal(np.unique(result.labels), np.arange(result.num_tracks))
    assert 0 < result.num_edges["filter"] <= result.num_edges["graph"]
    assert result.num_edges["gnn"] <= result.num_edges["filter"]
