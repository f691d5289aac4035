"""The shipped default bundle loads and runs on the sample event shipped with trackserve."""

from __future__ import annotations

import numpy as np
import pytest

from trackserve.bundle import load_bundle
from trackserve.events.metrics import evaluate_event
from trackserve.events.trackml import read_event
from trackserve.paths import DEFAULT_BUNDLE, SAMPLE_EVENT
from trackserve.runtime.config import RuntimeConfig
from trackserve.runtime.pipeline import Pipeline


def test_default_bundle_loads_with_its_provenance():
    bundle = load_bundle(DEFAULT_BUNDLE)
    assert set(bundle.networks) == {"embedding", "filter", "gnn"}
    assert bundle.feature_names == ("r", "phi", "z")
    assert bundle.provenance["trained_by"] == "trackserve train"
    assert bundle.provenance["validation"]["bundle_check"]["track_efficiency"] > 0.5


def test_default_bundle_labels_every_hit_of_the_sample_event():
    event = read_event(SAMPLE_EVENT)
    pipeline = Pipeline(DEFAULT_BUNDLE, config=RuntimeConfig(intra_op_threads=1, graph_threads=1))
    result = pipeline.run_event(event)
    assert result.labels.shape == (event.num_hits,)
    assert result.labels.dtype == np.int64 and result.labels.min() >= 0
    assert 0 < result.num_edges["gnn"] <= result.num_edges["filter"] <= result.num_edges["graph"]
    figures = evaluate_event(event, event.hits["hit_id"], result.labels)
    # a real event at 5 % density: most reconstructable particles are found, few tracks are fakes
    assert figures["efficiency"] > 0.5
    assert figures["fake_rate"] < 0.5
