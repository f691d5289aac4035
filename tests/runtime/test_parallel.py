"""Parts of one event on several cores: slices, component groups, the part runner, and the pipeline with them."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from trackserve.errors import InputError
from trackserve.runtime.config import RuntimeConfig
from trackserve.runtime.network_steps import EMBED_BLOCK_ROWS
from trackserve.runtime import parallel
from trackserve.engines import scatter_split
from trackserve.runtime.parallel import HaloSplit, PartRunner, component_groups, row_parts
from trackserve.runtime.pipeline import Pipeline
from trackserve.runtime.subgraph import halo_hops



@pytest.mark.parametrize("rows, parts, min_rows, expected", [
    (0, 4, 256, 1), (1, 2, 256, 1), (511, 2, 256, 1), (512, 2, 256, 2), (10_000, 3, 256, 3), (1000, 16, 256, 3),
    (7, 7, 1, 7),
])
def test_row_parts_cover_every_row_once_in_order(rows, parts, min_rows, expected):
    slices = row_parts(rows, parts, min_rows)
    assert len(slices) == expected
    covered = np.concatenate([np.arange(rows)[s] for s in slices])
    assert np.array_equal(covered, np.arange(rows))
    lengths = [s.stop - s.start for s in slices]
    assert max(lengths) - min(lengths) <= 1
    if len(slices) > 1:
        assert min(lengths) >= min_rows


@pytest.mark.parametrize("args", [(-1, 2, 1), (10, 0, 1), (10, 2, 0)])
def test_row_parts_refuses_bad_arguments(args):
    with pytest.raises(InputError, match="row_parts needs"):
        row_parts(*args)


def _chains(num_chains: int, length: int, rng) -> tuple[int, np.ndarray]:
    """Edges of ``num_chains`` separate chains of hits (shuffled hit numbers, shuffled edge
    order, each edge also repeated and reversed once), plus isolated hits."""
    num_hits = num_chains * length + 50
    hits = rng.permutation(num_hits)
    edges = []
    for chain in range(num_chains):
        members = hits[chain * length:(chain + 1) * length]
        edges.append(np.stack([members[:-1], members[1:]]))
    edges = np.concatenate(edges, axis=1)
    edges = np.concatenate([edges, edges[::-1], edges[:, : edges.shape[1] // 3]], axis=1)
    return num_hits, edges[:, rng.permutation(edges.shape[1])].astype(np.int64)


def _component_of(num_hits: int, edges: np.ndarray) -> np.ndarray:
    graph = coo_matrix((np.ones(edges.shape[1]), (edges[0], edges[1])), shape=(num_hits, num_hits))
    return connected_components(graph, directed=False)[1]


@pytest.mark.parametrize("parts", [2, 3, 8])
def test_component_groups_keep_components_whole_and_balance_the_work(parts):
    rng = np.random.default_rng(parts)
    # chains of very different lengths: a few long ones, many short ones
    num_hits, long_edges = _chains(6, 60, rng)
    short_hits, short_edges = _chains(200, 5, rng)
    edges = np.concatenate([long_edges, short_edges + num_hits], axis=1)
    num_hits += short_hits
    groups = component_groups(num_hits, edges, parts, min_edges=16)
    assert groups is not None and len(groups) == parts
    every = np.concatenate(groups)
    assert np.array_equal(np.sort(every), np.arange(edges.shape[1]))
    assert all(np.all(np.diff(group) > 0) for group in groups)
    component = _component_of(num_hits, edges)[edges[0]]
    owners = [set(component[group]) for group in groups]
    assert all(not (owners[a] & owners[b]) for a in range(parts) for b in range(a + 1, parts))
    work = [_work(edges[:, group]) for group in groups]
    assert max(work) <= sum(work) / parts * 1.15


def _work(edges: np.ndarray) -> int:
    """What component_groups balances: a group's edges plus the hits they touch."""
    return edges.shape[1] + np.unique(edges).size


def test_component_groups_balance_edges_and_touched_hits_not_edges_alone():
    """Dense components (few hits, many repeated edges) and sparse ones (two hits, one edge):
    equal edge counts would give one group far more hits, and a GNN's node networks run on those."""
    rng = np.random.default_rng(4)
    dense = [np.stack([rng.integers(0, 8, 60), rng.integers(0, 8, 60)]) + 8 * k for k in range(40)]
    dense = np.concatenate(dense, axis=1)
    dense = dense[:, dense[0] != dense[1]]
    base = 8 * 40
    sparse = np.stack([base + 2 * np.arange(2000), base + 2 * np.arange(2000) + 1])
    edges = np.concatenate([dense, sparse], axis=1)
    edges = edges[:, rng.permutation(edges.shape[1])].astype(np.int64)
    groups = component_groups(base + 4000, edges, 2, min_edges=16)
    work = [_work(edges[:, group]) for group in groups]
    assert max(work) <= sum(work) / 2 * 1.05
    # Balanced by edges alone the groups would differ by far more than that in work.
    sizes = [group.size for group in groups]
    assert max(sizes) > 1.2 * min(sizes)


def test_component_groups_decline_when_splitting_does_not_pay():
    rng = np.random.default_rng(0)
    num_hits, edges = _chains(40, 10, rng)
    assert component_groups(num_hits, edges, 1, min_edges=16) is None  # one thread
    assert component_groups(num_hits, edges, 2, min_edges=edges.shape[1]) is None  # too few edges
    # one component holding nearly everything
    giant = np.stack([np.arange(999), np.arange(1, 1000)])
    small = np.array([[1000, 1002], [1001, 1003]])
    assert component_groups(1004, np.concatenate([giant, small], axis=1), 2, min_edges=16) is None
    # empty graph and a graph of self-loops on one hit
    assert component_groups(5, np.zeros((2, 0), dtype=np.int64), 2, min_edges=1) is None
    assert component_groups(1, np.zeros((2, 600), dtype=np.int64), 2, min_edges=16) is None


def test_part_runner_returns_results_in_order_on_several_threads():
    runner = PartRunner(3)
    seen = set()

    def work(part):
        seen.add(threading.current_thread().name)
        return part * 10

    assert runner.map(work, [1, 2, 3]) == [10, 20, 30]
    assert runner.map(work, [4]) == [40]
    assert len(seen) >= 2
    with pytest.raises(InputError, match="4 parts for 3 threads"):
        runner.map(work, [1, 2, 3, 4])
    runner.close()
    assert PartRunner(1).map(work, [5]) == [50]


def test_part_runner_raises_a_parts_error_after_every_part_has_finished():
    runner = PartRunner(2)
    finished = []

    def work(part):
        if part == "bad":
            raise InputError("part failed")
        finished.append(part)
        return part

    with pytest.raises(InputError, match="part failed"):
        runner.map(work, ["bad", "good"])
    assert finished == ["good"]
    with pytest.raises(InputError, match="part failed"):
        runner.map(work, ["good", "bad"])
    with pytest.raises(InputError, match="threads >= 1"):
        PartRunner(0)


@pytest.mark.parametrize("threads", [2, 4])
def test_pipeline_on_parts_gives_the_one_thread_results(tiny_bundle, sample_features, monkeypatch, threads):
    single = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1))
    split = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=threads, graph_threads=1, edge_chunk_size=5000))
    calls = []
    original = PartRunner.map

    def counting(self, function, parts):
        calls.append(len(parts))
        return original(self, function, parts)

    monkeypatch.setattr(PartRunner, "map", counting)
    features = sample_features
    embedding = split.embed(features)
    assert np.allclose(embedding, single.embed(features), rtol=0, atol=1e-4 * np.abs(embedding).max())
    edges = single.build_graph(single.embed(features))
    filter_scores = split.classify_edges("filter", features, edges, chunked=True)
    reference = single.classify_edges("filter", features, edges, chunked=True)
    assert np.allclose(filter_scores, reference, rtol=0, atol=1e-4 * max(1.0, np.abs(reference).max()))
    filtered, _ = single.filter_edges(features, edges)
    # a GNN call on each group of components: the same logits as one call on the whole graph
    before = len(calls)
    grouped = split.gnn_logits(features, filtered)
    assert any(count > 1 for count in calls[before:]), "the GNN never ran on component groups"
    assert split._steps.last_gnn_layout == f"{threads} component groups"
    whole = single.gnn_logits(features, filtered)
    # the same function; each group a call of its own size, whose last rows ONNX Runtime rounds its own way
    assert grouped.dtype == whole.dtype
    assert np.allclose(grouped, whole, rtol=0, atol=1e-4 * max(1.0, np.abs(whole).max()))
    assert np.array_equal(split.run(features).labels, single.run(features).labels)
    assert max(calls) == threads


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("num_hits", [1, EMBED_BLOCK_ROWS, EMBED_BLOCK_ROWS + 1, 2 * EMBED_BLOCK_ROWS + 513])
def test_embedding_in_blocks_fills_every_row_as_one_call(tiny_bundle, sample_features, threads, num_hits):
    pipeline = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=threads, graph_threads=1))
    # rows repeated from the sample event up to the size wanted, the last ones distinct from the first
    features = np.ascontiguousarray(np.resize(sample_features[::-1], (num_hits, sample_features.shape[1])))
    whole = pipeline._steps.networks["embedding"].run(features=features)
    blocked = pipeline.embed(features)
    assert blocked.shape == whole.shape and blocked.dtype == np.float32
    assert np.allclose(blocked, whole, rtol=0, atol=1e-5 * max(1.0, np.abs(whole).max()))


def _phi_ring_graph(features: np.ndarray, phi_column: int, neighbours: int) -> np.ndarray:
    """Each hit joined to the next ``neighbours`` hits in azimuth (cyclic): one component,
    local in azimuth like a dense event's filtered graph; some edges repeated and reversed."""
    order = np.argsort(features[:, phi_column], kind="stable")
    n = order.size
    first = np.repeat(order, neighbours)
    second = order[(np.repeat(np.arange(n), neighbours) + np.tile(np.arange(1, neighbours + 1), n)) % n]
    edges = np.stack([first, second])
    edges = np.concatenate([edges, edges[::-1, :: 7], edges[:, :: 11]], axis=1)
    return edges[:, np.random.default_rng(3).permutation(edges.shape[1])].astype(np.int64)


def test_halo_split_owns_every_edge_once_and_computes_its_neighbourhood():
    rng = np.random.default_rng(1)
    phi = rng.uniform(-np.pi, np.pi, 3000)
    edges = _phi_ring_graph(phi[:, None], 0, 6)
    split = HaloSplit(phi.size, edges, 3, 2, phi)
    owners = np.zeros(edges.shape[1], dtype=np.int64)
    for part in split.parts:
        columns, own = split.part(part)
        assert np.all(np.diff(columns) > 0)
        owners[columns[own]] += 1
        # every edge touching a hit of the part's own edges is computed (one hop of halo at least)
        hits = np.zeros(phi.size, dtype=bool)
        hits[edges[:, columns[own]].ravel()] = True
        touching = np.flatnonzero(hits[edges[0]] | hits[edges[1]])
        assert np.isin(touching, columns).all()
        assert own.sum() < columns.size < edges.shape[1]
    assert np.all(owners == 1)
    assert split.parts == [0, 1, 2]
    with pytest.raises(InputError, match="HaloSplit needs"):
        HaloSplit(phi.size, edges, 0, 2, phi)


# The ring graphs repeat and reverse some edges on purpose (the exact sums under test must
# hold for any graph), which the Pipeline's stages warn about.
@pytest.mark.filterwarnings("ignore::trackserve.errors.GraphConventionWarning")
# 3 and 4 threads: the layout of machines with more cores than this project's (oversubscribed here).
@pytest.mark.parametrize("threads", [2, 3, 4])
def test_dense_graph_gnn_in_blocks_of_rows_is_the_one_call_bit_for_bit(tiny_bundle, sample_features, monkeypatch,
                                                                       threads):
    single = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1))
    split = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=threads, graph_threads=1))
    edges = _phi_ring_graph(sample_features, split._steps.phi_column, 8)
    assert component_groups(sample_features.shape[0], edges, threads) is None  # one component
    whole = single.gnn_logits(sample_features, edges)
    assert single._steps.last_gnn_layout == "one call"  # too few edges for blocks on one thread
    np.testing.assert_array_equal(split.gnn_logits(sample_features, edges), whole)
    assert split._steps.last_gnn_layout == f"blocks of rows on {threads} threads"
    # on one thread a call runs in blocks from BLOCKED_MIN_EDGES edges: the same bits
    monkeypatch.setattr(scatter_split, "BLOCKED_MIN_EDGES", edges.shape[1])
    np.testing.assert_array_equal(single.gnn_logits(sample_features, edges), whole)
    assert single._steps.last_gnn_layout == "one call in blocks of rows"


# The ring graphs repeat and reverse some edges on purpose (the exact sums under test must
# hold for any graph), which the Pipeline's stages warn about.
@pytest.mark.filterwarnings("ignore::trackserve.errors.GraphConventionWarning")
def test_dense_graph_gnn_on_halo_parts_is_the_whole_graphs(tiny_bundle, sample_features, monkeypatch):
    single = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1))
    split = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=2, graph_threads=1))
    steps = split._steps
    # halo slices are what a network without a blocked form of rows runs as
    monkeypatch.setattr(steps.networks["gnn"], "runs_in_blocks", lambda num_edges, threads: False)
    assert steps.halo_hops == {"gnn": 1}  # two steps of the interaction network reach one hop (halo_hops)
    edges = _phi_ring_graph(sample_features, steps.phi_column, 8)
    assert edges.shape[1] >= parallel.HALO_MIN_EDGES
    assert component_groups(sample_features.shape[0], edges, 2) is None  # one component: halo parts
    whole = single.gnn_logits(sample_features, edges)
    np.testing.assert_allclose(split.gnn_logits(sample_features, edges), whole, rtol=0,
                               atol=1e-5 * max(1.0, np.abs(whole).max()))
    assert steps.last_gnn_layout == "2 halo slices (1 hops)"
    assert single._steps.last_gnn_layout == "one call"
    # too small a halo changes the scores near the parts' borders: the hops matter
    steps.halo_hops["gnn"] = 0
    try:
        near = split.gnn_logits(sample_features, edges)
    finally:
        steps.halo_hops["gnn"] = 1
    assert np.abs(near - whole).max() > 1e-3


def _torch_gnn(architecture: str, iterations: int, new_nodes: bool):
    import torch

    from trackserve.export.interaction_gnn import InteractionGNN
    from trackserve.export.resagnn import ResAGNN

    torch.manual_seed(iterations)
    if architecture == "ResAGNN":
        network = ResAGNN(in_channels=3, hidden=8, n_graph_iters=iterations, nb_node_layer=2, nb_edge_layer=2)
    else:
        network = InteractionGNN(in_channels=3, hidden=8, n_graph_iters=iterations, nb_node_layer=1, nb_edge_layer=1,
                                 bidirectional_messages=True, edge_update_uses_new_nodes=new_nodes)
    return network.eval()


@pytest.mark.parametrize("architecture, iterations, new_nodes", [
    ("InteractionGNN", 1, False), ("InteractionGNN", 3, False), ("InteractionGNN", 6, False),
    ("InteractionGNN", 3, True), ("ResAGNN", 1, False), ("ResAGNN", 3, False),
])
def test_halo_hops_are_exactly_what_each_gnn_needs(architecture, iterations, new_nodes):
    torch = pytest.importorskip("torch")
    network = _torch_gnn(architecture, iterations, new_nodes)
    hops = halo_hops(architecture, dict(network.config))
    rng = np.random.default_rng(iterations)
    features = rng.normal(size=(600, 3)).astype(np.float32)
    edges = _phi_ring_graph(features, 0, 3)

    def scores(edge_columns):
        with torch.no_grad():
            return network(torch.from_numpy(features), torch.from_numpy(edges[:, edge_columns])).numpy()

    whole = scores(np.arange(edges.shape[1]))
    worst = {}
    for used in (hops, hops - 1):
        if used < 0:
            continue
        split = HaloSplit(features.shape[0], edges, 4, used, features[:, 0])
        worst[used] = max(np.abs(scores(columns)[own] - whole[columns[own]]).max()
                          for columns, own in map(split.part, split.parts))
    assert worst[hops] <= 1e-5
    if hops >= 1:
        assert worst[hops - 1] > 1e-4, "one hop less should change some scores"
