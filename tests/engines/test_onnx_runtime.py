"""The ONNX Runtime sessions: their options, and outputs that do not depend on the pool size."""

from __future__ import annotations

import numpy as np
import pytest

from trackserve.engines.onnx_runtime import OnnxNetwork, session_options
from trackserve.engines.scatter_split import open_network


def test_session_options_size_the_pools_and_do_not_spin():
    options = session_options(3)
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_outputs_are_the_same_bits_at_one_and_two_threads(tiny_bundle):
    rng = np.random.default_rng(4)
    for name in ("embedding", "filter", "gnn"):
        path = tiny_bundle / f"{name}.onnx"
        one, two = OnnxNetwork(path, intra_op_threads=1), open_network(path, intra_op_threads=2)
        num_features = one.inputs[0].shape[1]
        features = rng.normal(size=(5000, num_features)).astype(np.float32)
        inputs = {"features": features}
        if name != "embedding":
            inputs["edge_index"] = rng.integers(0, 5000, size=(2, 20_000))
        assert np.array_equal(one.run(**inputs), two.run(**inputs))


def test_calls_at_once_each_get_a_session_of_their_own(tiny_bundle):
    """A busy session is never shared: a call that finds none idle opens another, and
    ``reserve`` opens them ahead; every session gives the same outputs."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(5)
    for name in ("filter", "gnn"):
        network = open_network(tiny_bundle / f"{name}.onnx", intra_op_threads=1)
        assert network.session_count == 1
        features = rng.normal(size=(3000, network.inputs[0].shape[1])).astype(np.float32)
        edges = rng.integers(0, 3000, size=(2, 8000))
        expected = network.run(features=features, edge_index=edges)
        busy = network._pool._idle.get()  # as if another thread were running it
        try:
            assert np.array_equal(network.run(features=features, edge_index=edges), expected)
            assert network.session_count == 2
        finally:
            network._pool._idle.put(busy)
        network.reserve(4)
        assert network.session_count == 4
        network.reserve(2)  # never closes sessions
        assert network.session_count == 4
        with ThreadPoolExecutor(6) as pool:
            outputs = list(pool.map(lambda _: network.run(features=features, edge_index=edges), range(24)))
        assert all(np.array_equal(output, expected) for output in outputs)
        assert 4 <= network.session_count <= 6


@pytest.mark.parametrize("threads", [1.7, "2", True])
def test_a_thread_count_of_the_wrong_kind_is_refused_not_coerced(tiny_bundle, threads):
    from trackserve.errors import InputError

    with pytest.raises(InputError, match="intra_op_threads must be an integer >= 1 or None"):
        OnnxNetwork(tiny_bundle / "embedding.onnx", intra_op_threads=threads)


def test_a_bundle_directory_or_a_provider_string_is_named_as_such(tiny_bundle):
    from trackserve.errors import BundleError, InputError

    with pytest.raises(BundleError, match="is a directory; give the network's .onnx file"):
        OnnxNetwork(tiny_bundle)
    with pytest.raises(InputError, match=r"providers must be a sequence of ONNX Runtime provider names, e.g. "
                                         r"\('CPUExecutionProvider',\)"):
        OnnxNetwork(tiny_bundle / "gnn.onnx", providers="CPUExecutionProvider")
