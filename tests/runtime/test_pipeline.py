"""The Pipeline against an independent reference: PyTorch networks, brute-force graph, scipy components."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from trackserve.errors import InputError, MemoryLimitError
from trackserve.events.trackml import read_event
from trackserve.runtime.config import AUTOMATIC_MAX_EVENT_WORKERS, RuntimeConfig, automatic_event_workers
from trackserve.runtime.pipeline import STAGES, Pipeline

from ..conftest import SAMPLE_EVENT, LazyEvents, mixed_size_events


@pytest.fixture(scope="module")
def pipeline(tiny_bundle):
    return Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=2, graph_threads=2))


@pytest.fixture(scope="module")
def sample_features(pipeline):
    return pipeline.event_features(read_event(SAMPLE_EVENT, parts=()))


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labellings group the hits the same way (label values may differ)."""
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def _reference_graph(points: np.ndarray, radius: float, max_neighbours: int) -> np.ndarray:
    """Brute force: the pairs i < j closer than ``radius`` of which one end has the other
    among its ``max_neighbours`` nearest such neighbours."""
    distance2 = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    close = distance2 < radius**2
    np.fill_diagonal(close, False)
    nearest = np.zeros_like(close)
    for hit in range(len(points)):
        neighbours = np.flatnonzero(close[hit])
        nearest[hit, neighbours[np.argsort(distance2[hit, neighbours], kind="stable")[:max_neighbours]]] = True
    i, j = np.nonzero(np.triu(nearest | nearest.T, k=1))
    return np.stack([i, j]).astype(np.int64)


def _reference_scores(networks, features, stages) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(graph edges, filtered edges, GNN probabilities)`` from eager PyTorch networks and a
    brute-force graph."""
    import torch

    embedding_net, filter_net, gnn_net = networks
    with torch.no_grad():
        x = torch.from_numpy(features)
        points = embedding_net(x).numpy().astype(np.float64)
        edges = _reference_graph(points, stages.radius, stages.max_neighbours)
        filter_prob = torch.sigmoid(filter_net(x, torch.from_numpy(edges))).numpy()
        kept = edges[:, filter_prob > stages.filter_cut]
        gnn_prob = torch.sigmoid(gnn_net(x, torch.from_numpy(kept))).numpy()
    return edges, kept, gnn_prob


def _reference_labels(networks, features, stages) -> tuple[np.ndarray, int, int, int]:
    """Eager PyTorch networks, brute-force radius graph, scipy connected components: the
    labels and the numbers of graph, filtered and GNN-passing edges."""
    edges, kept, gnn_prob = _reference_scores(networks, features, stages)
    good = kept[:, gnn_prob > stages.gnn_cut]
    n = len(features)
    graph = coo_matrix((np.ones(good.shape[1]), (good[0], good[1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels, edges.shape[1], kept.shape[1], good.shape[1]


def test_run_matches_torch_bruteforce_scipy_reference(pipeline, sample_features, tiny_torch_networks):
    features = sample_features[:1500]
    result = pipeline.run(features)
    reference, graph_edges, filtered_edges, passing = _reference_labels(tiny_torch_networks, features, pipeline.stages)
    assert result.num_edges == {"graph": graph_edges, "filter": filtered_edges, "gnn": passing}
    assert _same_partition(result.labels, reference)
    assert result.labels.dtype == np.int64 and result.labels.shape == (1500,)
    assert set(result.timings) == set(STAGES) | {"total"}
    assert all(seconds >= 0 for seconds in result.timings.values())


def test_run_matches_the_reference_where_the_cap_binds_and_the_gnn_cut_splits_the_edges(
        tiny_bundle, sample_features, tiny_torch_networks, tmp_path):
    """The tiny bundle's random GNN passes every edge and its cap never binds on the sample
    event; here a copy keeps each hit's 6 nearest neighbours and cuts the GNN between the
    two middle scores of the widest gap near the median, so the GNN's scores and the cap
    decide the tracks."""
    from ..conftest import copy_with_stages

    features = sample_features[:1500]
    stages = Pipeline(tiny_bundle).stages
    capped = copy_with_stages(tiny_bundle, tmp_path / "capped", max_neighbours=6)
    edges, kept, gnn_prob = _reference_scores(tiny_torch_networks, features, Pipeline(capped).stages)
    uncapped, _, _ = _reference_scores(tiny_torch_networks, features, stages)
    assert edges.shape[1] < 0.9 * uncapped.shape[1]  # the cap binds
    ranked = np.sort(gnn_prob)
    middle = np.arange(len(ranked) // 3, 2 * len(ranked) // 3)
    widest = middle[np.argmax(ranked[middle + 1] - ranked[middle])]
    cut = float((ranked[widest] + ranked[widest + 1]) / 2)
    bundle = copy_with_stages(tiny_bundle, tmp_path / "split", max_neighbours=6, gnn_cut=cut)
    pipeline = Pipeline(bundle, config=RuntimeConfig(intra_op_threads=2, graph_threads=2))
    result = pipeline.run(features)
    reference, graph_edges, filtered_edges, passing = _reference_labels(tiny_torch_networks, features, pipeline.stages)
    assert result.num_edges == {"graph": graph_edges, "filter": filtered_edges, "gnn": passing}
    assert filtered_edges / 3 <= passing <= 2 * filtered_edges / 3
    assert _same_partition(result.labels, reference)
    uncut, *_ = _reference_labels(tiny_torch_networks, features, Pipeline(capped).stages)
    assert not _same_partition(reference, uncut)  # the GNN's cut changed the tracks


def test_labels_are_compact_and_in_first_hit_order(pipeline, sample_features):
    labels = pipeline.run(sample_features).labels
    _, first = np.unique(labels, return_index=True)
    assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))
    assert np.all(np.diff(first) > 0)


def test_filter_chunking_changes_nothing(tiny_bundle, pipeline, sample_features):
    whole = pipeline.run(sample_features)
    chunked = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1, edge_chunk_size=97))
    result = chunked.run(sample_features)
    assert np.array_equal(result.labels, whole.labels)
    assert result.num_edges == whole.num_edges


def test_each_stage_alone_composes_to_run(pipeline, sample_features):
    embedding = pipeline.embed(sample_features)
    edges = pipeline.build_graph(embedding)
    filtered, filter_logits = pipeline.filter_edges(sample_features, edges)
    assert filter_logits.shape == (edges.shape[1],)
    gnn_logits = pipeline.classify_edges("gnn", sample_features, filtered, chunked=False)
    labels = pipeline.build_tracks(len(sample_features), filtered, gnn_logits)
    assert np.array_equal(labels, pipeline.run(sample_features).labels)


def test_zero_hits_give_empty_labels(pipeline):
    result = pipeline.run(np.zeros((0, 3), dtype=np.float32))
    assert result.labels.shape == (0,) and result.num_tracks == 0
    assert result.num_edges == {"graph": 0, "filter": 0, "gnn": 0}


def test_one_hit_is_one_track(pipeline, sample_features):
    result = pipeline.run(sample_features[:1].copy())
    assert result.labels.tolist() == [0]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda f: f.astype(np.float64), "float32"),
        (lambda f: f[:, :2].copy(), "shape [N, 3]"),
        (lambda f: f[None], "shape [N, 3]"),
        (lambda f: f.tolist(), "numpy array"),
        (lambda f: np.where(np.arange(len(f))[:, None] == 5, np.float32(np.nan), f).astype(np.float32), "hit 5"),
        (lambda f: np.where(np.arange(len(f))[:, None] == 9, np.float32(np.inf), f).astype(np.float32), "hit 9"),
    ],
)
def test_bad_features_are_refused_clearly(pipeline, sample_features, make, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        pipeline.run(make(sample_features[:50]))


def test_big_endian_float32_features_are_the_same_event(pipeline, sample_features):
    # QA, 2026-12-02: refused as "features must be float32, got >f4" (they are float32, in the
    # other byte order), while big-endian embeddings and edges were taken
    native = pipeline.run(sample_features)
    swapped = pipeline.run(sample_features.astype(">f4"))
    assert np.array_equal(swapped.labels, native.labels)
    with pytest.raises(InputError, match="features must be float32, got >f8"):
        pipeline.run(sample_features.astype(">f8"))


def test_masked_arrays_are_read_only_without_masked_values(pipeline, sample_features):
    # QA, 2026-12-02: every stage read a masked array's data as if nothing were masked (a NaN under
    # the mask got past the features check and was blamed on the embedding network)
    features = sample_features[:200].copy()
    features[3, 0] = np.nan
    masked = np.ma.masked_array(features, mask=np.isnan(features))
    with pytest.raises(InputError, match=r"features is a masked array with 1 masked value\(s\)"):
        pipeline.run(masked)
    plain = sample_features[:200]
    unmasked = np.ma.masked_array(plain, mask=False)
    np.testing.assert_array_equal(pipeline.run(unmasked).labels, pipeline.run(plain).labels)
    embedding = pipeline.embed(plain)
    edges = pipeline.build_graph(embedding)
    with pytest.raises(InputError, match="embedding is a masked array with 1 masked value"):
        pipeline.build_graph(np.ma.masked_array(embedding, mask=np.arange(embedding.size).reshape(embedding.shape) == 0))
    with pytest.raises(InputError, match="edge_index is a masked array with 2 masked value"):
        pipeline.filter_edges(plain, np.ma.masked_array(edges, mask=np.arange(edges.size).reshape(edges.shape) < 2))
    logits = np.zeros(edges.shape[1], dtype=np.float32)
    with pytest.raises(InputError, match="scores is a masked array with 3 masked value"):
        pipeline.build_tracks(200, edges, np.ma.masked_array(logits, mask=np.arange(logits.size) < 3), plain)


def test_event_above_memory_limit_is_refused(tiny_bundle, sample_features):
    small = Pipeline(tiny_bundle, config=RuntimeConfig(memory_limit_bytes=100_000))
    with pytest.raises(MemoryLimitError, match="memory limit") as refused:
        small.run(sample_features)
    assert isinstance(refused.value, InputError)
    assert refused.value.limit == 100_000 and refused.value.needed > 100_000


def test_a_dense_event_is_refused_before_its_graph_is_built():
    # A served 5-million-hit event was not refused: its hits fit the limit, and graph building,
    # checked only after it, grew the model's process to twice the limit before anything said so.
    from trackserve.paths import DEFAULT_BUNDLE
    from trackserve.serving.stages import make_stage

    rng = np.random.default_rng(0)
    hits = 60_000
    features = np.stack([rng.uniform(0.03, 1.0, hits), rng.uniform(-1, 1, hits), rng.uniform(-2.9, 2.9, hits)],
                        axis=1).astype(np.float32)
    probe = Pipeline(DEFAULT_BUNDLE)
    limit = probe.memory.hits_bytes(hits) + 10**6  # the hits fit; the search does not
    config = RuntimeConfig(memory_limit_bytes=limit, intra_op_threads=1, graph_threads=1)
    message = f"building the graph of {hits:,} hits \\(at most 48 kept each, about [0-9,]+ neighbours each"
    with pytest.raises(MemoryLimitError, match=message) as refused:
        Pipeline(DEFAULT_BUNDLE, config=config).run(features)
    assert refused.value.limit == limit and refused.value.needed > limit
    stage = make_stage("frnn", probe.bundle, config)  # the ensemble's graph stage says the same
    with pytest.raises(MemoryLimitError, match=message):
        stage({"EMBEDDING": probe.embed(features)})


def _working_memory(pipeline, result) -> float:
    """The largest estimate ``Pipeline.run`` checked for an event that gave ``result``."""
    model, hits = pipeline.memory, result.num_hits
    graph, filtered = result.num_edges["graph"], result.num_edges["filter"]
    return max(hits * model.bytes_per_hit,
               hits * model.bytes_per_hit + graph * model.bytes_per_graph_edge
               + min(graph, pipeline.config.edge_chunk_size) * model.bytes_per_filter_edge,
               hits * (model.bytes_per_hit + model.bytes_per_gnn_hit) + filtered * model.bytes_per_gnn_edge)


def test_run_many_runs_an_event_too_large_for_its_share_alone(tiny_bundle, pipeline, sample_features):
    # The whole sample fits the limit but not half of it; the small events fit half.
    big = sample_features
    needed = _working_memory(pipeline, pipeline.run(big))
    limit = int(needed) + 1
    events = [big[:30], big, big[: len(big) // 3], big[::-1].copy(), big[:1], big[:50], big[:0]]
    expected = [pipeline.run(f).labels for f in events]
    with pytest.raises(MemoryLimitError, match="memory limit"):  # what a worker alone would say
        Pipeline(tiny_bundle, config=RuntimeConfig(memory_limit_bytes=limit // 2)).run(big)
    workers = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1, event_workers=2,
                                                         memory_limit_bytes=limit))
    in_flight = []
    worker_run = workers.run

    def counted_run(features):
        in_flight.append(len(features))
        try:
            if len(features) == len(big) // 3:
                time.sleep(0.3)  # still in flight when the whole event before it is refused
            return worker_run(features)
        finally:
            in_flight.remove(len(features))

    class Alone:
        """The one-worker pipeline, noting how many events were in flight as each of its runs began."""

        def __init__(self):
            self.inner, self.in_flight_at_start = Pipeline(tiny_bundle, config=RuntimeConfig(memory_limit_bytes=limit)), []

        def run(self, features):
            self.in_flight_at_start.append(len(in_flight))
            return self.inner.run(features)

    workers.run, workers._alone = counted_run, Alone()
    got = [r.labels for r in workers.run_many(events)]
    assert len(got) == len(events)
    for a, b in zip(got, expected):
        assert np.array_equal(a, b)
    assert workers._alone.in_flight_at_start == [0, 0]  # both whole events, each alone
    # Over the whole limit it is still refused, in its turn.
    tight = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1, event_workers=2,
                                                       memory_limit_bytes=int(needed) - 1))
    results = tight.run_many([big[:30], big, big[:30]])
    assert next(results).num_hits == 30
    with pytest.raises(MemoryLimitError, match="memory limit"):
        next(results)


@pytest.mark.parametrize("events, cores, expected", [
    (0, 4, 1), (1, 4, 1), (2, 1, 1), (2, 2, 2), (5, 2, 2), (5, 16, AUTOMATIC_MAX_EVENT_WORKERS), (3, 3, 2)])
def test_automatic_event_workers(events, cores, expected):
    assert automatic_event_workers(events, cores) == expected


@pytest.mark.parametrize("events", [-1, 1.5, True, None])
def test_automatic_event_workers_refuses_bad_counts(events):
    with pytest.raises(InputError, match="num_events"):
        automatic_event_workers(events, 2)


def test_unknown_device_is_refused(tiny_bundle):
    with pytest.raises(InputError, match="device 'tpu'"):
        Pipeline(tiny_bundle, device="tpu")


@pytest.mark.parametrize("setting", [{"intra_op_threads": 0}, {"edge_chunk_size": 0}, {"memory_limit_bytes": -1},
                                     {"event_workers": 0}, {"event_workers": True}, {"event_workers": 1.5}])
def test_bad_runtime_settings_are_refused(setting):
    with pytest.raises(InputError):
        RuntimeConfig(**setting)


def test_event_workers_never_oversubscribe(monkeypatch):
    monkeypatch.setattr("trackserve.runtime.config.available_cores", lambda: 4)
    shared = RuntimeConfig(event_workers=2)
    assert (shared.resolved_intra_op_threads, shared.resolved_graph_threads) == (2, 2)
    assert RuntimeConfig(event_workers=4).resolved_intra_op_threads == 1
    # QA, 2026-12-02: more events at once than cores were taken (a thread each, the cores oversubscribed)
    with pytest.raises(InputError, match="event_workers=8 would run more events at once than the 4 cores"):
        RuntimeConfig(event_workers=8)
    # a thread count far beyond any machine opened a session per thread until the memory ran out
    with pytest.raises(InputError, match=r"intra_op_threads must be an integer in 1\.\.1024"):
        RuntimeConfig(intra_op_threads=1_000_000)
    assert RuntimeConfig().resolved_intra_op_threads == 4
    with pytest.raises(InputError, match="event_workers=2 with intra_op_threads=3 would run 6 threads on 4 cores"):
        RuntimeConfig(event_workers=2, intra_op_threads=3)
    with pytest.raises(InputError, match="graph_threads"):
        RuntimeConfig(event_workers=4, graph_threads=2)
    assert RuntimeConfig(event_workers=2, memory_limit_bytes=1000).memory_limit_per_event == 500


def test_run_many_with_event_workers_gives_each_event_its_own_result_in_order(tiny_bundle, pipeline, sample_features):
    events = mixed_size_events(sample_features)
    expected = [pipeline.run(f).labels for f in events]
    workers = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1, event_workers=2))
    lazily = LazyEvents(events)
    results = workers.run_many(lazily)
    first = next(results)
    assert len(lazily.consumed) == 3  # the two workers' events and one handed over ahead, no more
    got = [first.labels] + [r.labels for r in results]
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_run_many_with_event_workers_raises_the_failing_events_error_in_turn(tiny_bundle, sample_features, executor):
    bad = sample_features[:20].copy()
    bad[3, 1] = np.nan
    with Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1, event_workers=2,
                                                    event_executor=executor)) as workers:
        results = workers.run_many([sample_features[:30], bad, sample_features[:30]])
        assert next(results).num_hits == 30
        with pytest.raises(InputError, match="hit 3"):
            next(results)


@pytest.mark.parametrize("workers, executor", [(1, "threads"), (2, "threads"), (2, "processes")])
def test_run_many_yields_a_refused_events_error_in_its_place_and_goes_on(tiny_bundle, sample_features, workers,
                                                                        executor):
    bad = sample_features[:20].copy()
    bad[3, 1] = np.nan
    sizes = [30, 20, 25, 20, 40]
    events = [sample_features[:30], bad, sample_features[:25], bad, sample_features[:40]]
    with Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1, event_workers=workers,
                                                    event_executor=executor)) as pipeline:
        outcomes = list(pipeline.run_many(events, yield_errors=True))
        alone = [pipeline.run(sample_features[:size]).labels for size in (30, 25, 40)]
    assert [type(outcome).__name__ for outcome in outcomes] == ["PipelineResult", "InputError", "PipelineResult",
                                                                "InputError", "PipelineResult"]
    assert [outcome.num_hits for outcome in outcomes[::2]] == sizes[::2]
    assert all("hit 3" in str(outcome) for outcome in outcomes[1::2])
    for outcome, labels in zip(outcomes[::2], alone):
        np.testing.assert_array_equal(outcome.labels, labels)


def _stage_inputs(pipeline, sample_features):
    features = sample_features[:1500]
    kept, _ = pipeline.filter_edges(features, pipeline.build_graph(pipeline.embed(features)))
    assert kept.shape[1] > 10
    return features, kept


@pytest.mark.parametrize("bad_index", [-1, -5, "num_hits", "far"])
@pytest.mark.parametrize("stage", ["filter_edges", "gnn_logits", "classify_gnn"])
def test_each_stage_refuses_edges_outside_the_event(pipeline, sample_features, stage, bad_index):
    # a negative index would count from the end (ONNX Gather), a large one crashed scipy's components at 2 threads
    features, kept = _stage_inputs(pipeline, sample_features)
    num_hits = features.shape[0]
    index = {"num_hits": num_hits, "far": num_hits + 200}.get(bad_index, bad_index)
    edges = kept.copy()
    edges[1, -1] = index
    call = {"filter_edges": lambda: pipeline.filter_edges(features, edges),
            "gnn_logits": lambda: pipeline.gnn_logits(features, edges),
            "classify_gnn": lambda: pipeline.classify_edges("gnn", features, edges, chunked=False)}[stage]
    with pytest.raises(InputError, match=rf"edge {edges.shape[1] - 1} \(\d+ -> {index}\) refers to a hit outside 0\.\."):
        call()


@pytest.mark.parametrize("make, message", [
    (lambda f, e: (f.tolist(), e), "features must be a numpy array"),
    (lambda f, e: (np.where(np.arange(f.shape[0])[:, None] == 3, np.nan, f).astype(np.float32), e), "features of hit 3"),
    (lambda f, e: (f, e.T.copy()), "must have shape [2, M], got"),
    (lambda f, e: (f, e.astype(np.float64)), "must hold integers (hit indices), got dtype float64"),
    (lambda f, e: (f, e.tolist()), "edge_index must be a numpy array of shape [2, M], got list"),
])
def test_each_stage_checks_features_and_edges(pipeline, sample_features, make, message):
    features, kept = _stage_inputs(pipeline, sample_features)
    bad_features, bad_edges = make(features, kept)
    for call in (lambda: pipeline.filter_edges(bad_features, bad_edges),
                 lambda: pipeline.gnn_logits(bad_features, bad_edges),
                 lambda: pipeline.classify_edges("filter", bad_features, bad_edges, chunked=True)):
        with pytest.raises(InputError) as error:
            call()
        assert message in str(error.value)


def test_embed_graph_and_tracks_check_their_inputs(pipeline, sample_features):
    features, kept = _stage_inputs(pipeline, sample_features)
    with pytest.raises(InputError, match="features must be float32"):
        pipeline.embed(features.astype(np.float64))
    embedding = pipeline.embed(features)
    width = embedding.shape[1]
    for wrong in (embedding.T, embedding[:, :-1]):  # a transposed embedding gave no edges without a word
        with pytest.raises(InputError, match=rf"embedding must have shape \[N, {width}\]"):
            pipeline.build_graph(wrong)
    np.testing.assert_array_equal(pipeline.build_graph(np.asfortranarray(embedding)), pipeline.build_graph(embedding))
    logits = pipeline.gnn_logits(features, kept)
    with pytest.raises(InputError, match="features hold 1499 hits but num_hits is 1500"):
        pipeline.build_tracks(1500, kept, logits, features[:-1])
    with pytest.raises(InputError, match="'embedding' is not an edge classifier of this bundle"):
        pipeline.classify_edges("embedding", features, kept, chunked=False)


def test_numpy_integers_are_integer_settings():
    config = RuntimeConfig(intra_op_threads=np.int64(1), graph_threads=np.int32(1), edge_chunk_size=np.int64(10))
    assert (config.intra_op_threads, config.edge_chunk_size) == (1, 10) and type(config.intra_op_threads) is int
    with pytest.raises(InputError, match="intra_op_threads must be an integer in 1"):
        RuntimeConfig(intra_op_threads=np.bool_(True))


def test_features_the_embedding_network_cannot_take_are_named_as_such(sample_features):
    from trackserve.paths import DEFAULT_BUNDLE

    default = Pipeline(DEFAULT_BUNDLE, config=RuntimeConfig(intra_op_threads=1, graph_threads=1))
    features = default.event_features(read_event(SAMPLE_EVENT, parts=()))[:50].copy()
    features[7] = 3e38  # finite float32, but the default embedding overflows on it
    for call in (default.run, default.embed):
        with pytest.raises(InputError, match=r"the embedding network gives NaN or infinite values for hit 7 \(0-based"):
            call(features)


def _features_with_a_gnn_nan(pipeline):
    """``(features, edges, (i, j))``: 200 random hits in the default bundle's scaled units, the
    edges its filter keeps, and an edge (i, j) appended last between two hits no kept edge
    touches, both set to 1e16 (far beyond what the networks take: the GNN gives NaN for it)."""
    rng = np.random.default_rng(2)
    features = np.stack([rng.uniform(0.03, 0.3, 200), rng.uniform(-1, 1, 200), rng.uniform(-2, 2, 200)],
                        axis=1).astype(np.float32)
    kept, _ = pipeline.filter_edges(features, pipeline.build_graph(pipeline.embed(features)))
    assert kept.shape[1] > 0
    first, second = np.setdiff1d(np.arange(200), kept.ravel())[[0, -1]]
    features[[first, second]] = 1e16
    edges = np.concatenate([kept, np.array([[first], [second]])], axis=1).astype(np.int64)
    return features, edges, (int(first), int(second))


def test_a_gnn_logit_that_is_not_a_number_is_named_with_its_edge():
    """README: an edge's GNN logit NaN is an InputError naming the edge and its features, never
    an edge dropped in silence (the filter's and the embedding's are tested above and in
    tests/serving/test_stages.py)."""
    from trackserve.paths import DEFAULT_BUNDLE

    default = Pipeline(DEFAULT_BUNDLE, config=RuntimeConfig(intra_op_threads=1, graph_threads=1))
    features, edges, (first, second) = _features_with_a_gnn_nan(default)
    message = (f"the gnn network gives NaN for 1 edge(s), the first between hits {first} and {second} (0-based; "
               f"features {features[first].tolist()} and {features[second].tolist()}): ")
    for call in (default.gnn_logits, lambda f, e: default.classify_edges("gnn", f, e, chunked=False)):
        with pytest.raises(InputError) as refused:
            call(features, edges)
        assert message in str(refused.value) and "were they divided by the bundle's scales?" in str(refused.value)
    # the same edges without the bad one are scored
    assert np.isfinite(default.gnn_logits(features, edges[:, :-1])).all()


def test_a_config_or_bundle_of_the_wrong_kind_is_named(tiny_bundle):
    with pytest.raises(InputError, match="config must be a RuntimeConfig .* got dict"):
        Pipeline(tiny_bundle, config={"intra_op_threads": 1})
    with pytest.raises(InputError, match="bundle must be a bundle directory .* got NoneType"):
        Pipeline(None)


@pytest.mark.parametrize("event", ["data/event000000001", None, 3])
def test_run_event_names_what_it_takes(pipeline, event):
    with pytest.raises(InputError, match="run_event takes a TrackML Event .*read_event"):
        pipeline.run_event(event)


@pytest.mark.parametrize("make, problem", [
    (lambda e, n: e[::-1].copy(), "edges (i, j) with i > j"),
    (lambda e, n: np.concatenate([e, np.array([[3], [3]])], axis=1), "1 self-loop (i -> i)"),
    (lambda e, n: np.concatenate([e, e[:, :4]], axis=1), "4 repeated edges"),
])
@pytest.mark.parametrize("stage", ["filter_edges", "gnn_logits", "classify_filter", "pruned_edges"])
def test_each_stage_warns_about_edges_its_graph_stage_would_not_build(pipeline, pruned_bundle, sample_features, make,
                                                                       problem, stage):
    from trackserve.errors import GraphConventionWarning

    features, kept = _stage_inputs(pipeline, sample_features)
    if stage == "pruned_edges":
        pipeline = Pipeline(pruned_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1))
    call = {"filter_edges": lambda e: pipeline.filter_edges(features, e),
            "gnn_logits": lambda e: pipeline.gnn_logits(features, e),
            "classify_filter": lambda e: pipeline.classify_edges("filter", features, e, chunked=True),
            "pruned_edges": lambda e: pipeline.pruned_edges(features, e)}[stage]
    with pytest.warns(GraphConventionWarning, match=r"not a graph this bundle's graph stage builds \(each pair once, "
                      r"as edge_index\[:, k\] = \(i, j\) with i < j, no self-loops\): it has .*" + re.escape(problem)) as caught:
        call(make(kept, features.shape[0]))
    assert caught[0].filename == __file__  # pointed at the caller's line


def test_edges_the_graph_stage_built_pass_without_a_warning(pipeline, sample_features):
    import warnings

    features = sample_features[:1500]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept, _ = pipeline.filter_edges(features, pipeline.build_graph(pipeline.embed(features)))
        pipeline.gnn_logits(features, kept)
        pipeline.gnn_logits(features, np.zeros((2, 0), dtype=np.int64))


@pytest.mark.parametrize("direction, edges, problems", [
    ("i<j", [[0, 1, 2], [1, 2, 3]], []),
    ("i>j", [[0, 1, 2], [1, 2, 3]], ["3 edges (i, j) with i < j"]),
    ("i>j", [[1, 2, 2], [0, 1, 1]], ["1 repeated edge"]),
    ("both", [[0, 1, 1, 2], [1, 0, 2, 1]], []),
    ("both", [[0, 1, 1], [1, 0, 2]], []),  # one way of a pair: what the filter often hands on
    ("both", [[0, 1, 4, 0, 2], [1, 0, 4, 1, 3]], ["1 self-loop (i -> i)", "1 repeated edge"]),
])
def test_graph_convention_problems_in_each_direction(direction, edges, problems):
    from trackserve.runtime.inputs import graph_convention_problems

    assert graph_convention_problems(np.array(edges, dtype=np.int64), direction, 5) == problems


def test_classify_edges_refuses_chunks_for_a_message_passing_network(pipeline, sample_features):
    features, kept = _stage_inputs(pipeline, sample_features)
    with pytest.raises(InputError, match="chunked=True cuts the edges into parts scored apart, right only for the "
                                         "filter; the gnn passes messages over the whole graph: call it with "
                                         "chunked=False"):
        pipeline.classify_edges("gnn", features, kept, chunked=True)


def test_classify_edges_takes_chunked_as_a_flag_only(pipeline, sample_features):
    features, kept = _stage_inputs(pipeline, sample_features)
    with pytest.raises(InputError, match="chunked must be True or False; got 'yes'"):
        pipeline.classify_edges("filter", features, kept, chunked="yes")


@pytest.mark.parametrize("given", ["data/event000000001", np.zeros((3, 3), np.float32)])
def test_event_features_names_what_is_not_an_event(pipeline, given):
    """QA, 2026-12-02: AttributeError ('str' object has no attribute 'hit_id_order')."""
    with pytest.raises(InputError, match=r"event_features takes a TrackML Event \(trackserve.events.read_event"):
        pipeline.event_features(given)


@pytest.mark.parametrize("change, message", [
    ({"edge_direction": "i>j"}, "stages.edge_direction: 'i>j', but the networks were trained on edges 'i<j'"),
    ({"prune_cut": None}, "the bundle has a pruner network but no 'prune_cut'"),
])
def test_a_bundle_changed_in_memory_is_checked_as_loading_checks_it(change, message):
    """QA, 2026-12-02: ``Pipeline(dataclasses.replace(bundle, stages=...))`` ran a bundle that
    ``load_bundle`` refuses from disk: edges in the other direction found 68 % of the sample
    event's particles instead of 94 %, without a word, and the GNN scored unpruned edges."""
    import dataclasses

    from trackserve.bundle import load_bundle
    from trackserve.errors import BundleError
    from trackserve.paths import DEFAULT_BUNDLE

    bundle = load_bundle(DEFAULT_BUNDLE)
    with pytest.raises(BundleError) as error:
        Pipeline(dataclasses.replace(bundle, stages=dataclasses.replace(bundle.stages, **change)))
    assert message in str(error.value) and "as changed in memory" in str(error.value)
    # a change every part agrees with runs
    changed = Pipeline(dataclasses.replace(bundle, stages=dataclasses.replace(bundle.stages, gnn_cut=0.9)))
    assert changed.stages.gnn_cut == 0.9


def test_run_and_run_many_name_an_event_or_one_array_given_in_the_wrong_place(pipeline, sample_features):
    event = read_event(SAMPLE_EVENT, parts=())
    with pytest.raises(InputError, match=r"run\(\) takes an event's features array \[N, F\]; for an Event use "
                                         r"run_event\(event\)"):
        pipeline.run(event)
    for given, what in ((sample_features, "2-D array"), (event, "Event")):
        with pytest.raises(InputError, match=f"run_many takes an iterable of events' feature arrays, got one {what}: "
                                             r"use run\(\) for one event's features, run_event\(\) for one Event"):
            pipeline.run_many(given, yield_errors=True)  # refused at the call, not at the first result
    stacked = np.stack([sample_features[:200], sample_features[200:400]])  # events of one size, one per row
    assert [result.num_hits for result in pipeline.run_many(stacked)] == [200, 200]


@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_big_endian_features_are_taken_alike_on_threads_and_in_processes(tiny_bundle, sample_features, executor):
    swapped = sample_features[:20].astype(">f4")
    with Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1, event_workers=2,
                                                    event_executor=executor)) as workers:
        results = list(workers.run_many([sample_features[:30], swapped, sample_features[:25]], yield_errors=True))
        native = workers.run(sample_features[:20])
    assert [r.num_hits for r in results] == [30, 20, 25]
    assert np.array_equal(results[1].labels, native.labels)


def test_a_network_error_is_raised_without_onnx_runtime_logging_it(pipeline, sample_features, capfd):
    features, kept = _stage_inputs(pipeline, sample_features)
    edges = kept.copy()
    edges[1, 0] = features.shape[0] + 5
    capfd.readouterr()
    with pytest.raises(InputError):
        pipeline.networks["filter"].run(features=features, edge_index=edges)
    assert capfd.readouterr().err == ""


def test_a_both_ways_bundle_warns_of_nothing_on_its_own_stages(tiny_bundle, sample_features, tmp_path):
    import json
    import shutil
    import warnings

    both = tmp_path / "both"
    shutil.copytree(tiny_bundle, both)
    data = json.loads((both / "pipeline.json").read_text())
    data["stages"]["edge_direction"] = "both"
    (both / "pipeline.json").write_text(json.dumps(data))
    pipeline = Pipeline(both, config=RuntimeConfig(intra_op_threads=1, graph_threads=1))
    features = sample_features[:1500]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept, _ = pipeline.filter_edges(features, pipeline.build_graph(pipeline.embed(features)))
        forward = kept[0] < kept[1]
        assert forward.any() and (~forward).any()
        pipeline.gnn_logits(features, kept)  # the filter keeps some pairs one way only: no warning


def test_an_event_built_in_another_row_order_runs_in_hit_id_order(tiny_bundle):
    from trackserve.errors import HitOrderWarning
    from trackserve.events.event import Event
    from trackserve.runtime.cut_tuning import ValidationSet

    pipeline = Pipeline(tiny_bundle)
    event = read_event(SAMPLE_EVENT)
    shuffle = np.random.default_rng(0).permutation(event.num_hits)
    shuffled = Event(event.event_id, {k: v[shuffle] for k, v in event.hits.items()},
                     {k: v[shuffle] for k, v in event.truth.items()}, event.particles)
    assert event.hit_id_order() is None and event.in_hit_id_order() is event
    back = shuffled.in_hit_id_order()
    assert all(np.array_equal(back.hits[k], event.hits[k]) for k in event.hits)
    assert all(np.array_equal(back.truth[k], event.truth[k]) for k in event.truth)
    # The same tracks, each hit's label given in the shuffled event's own row order.
    labels, shuffled_labels = pipeline.run_event(event).labels, pipeline.run_event(shuffled).labels
    pairs = set(zip(labels[shuffle].tolist(), shuffled_labels.tolist()))
    assert len(pairs) == len(set(labels.tolist())) == len(set(shuffled_labels.tolist()))
    with pytest.warns(HitOrderWarning, match="its hits are not in hit_id order"):
        pipeline.event_features(shuffled)
    assert ValidationSet(pipeline, [shuffled]).events[0].hit_id_order() is None


def test_repeated_hit_ids_in_order_are_in_hit_id_order():
    from trackserve.events.event import Event

    event = Event(1, {"hit_id": np.array([1, 2, 2, 3]), "x": np.zeros(4), "y": np.zeros(4), "z": np.zeros(4)})
    assert event.hit_id_order() is None and event.in_hit_id_order() is event
    shuffled = Event(1, {name: column[[3, 1, 0, 2]] for name, column in event.hits.items()})
    assert shuffled.in_hit_id_order().hits["hit_id"].tolist() == [1, 2, 2, 3]
