"""The ONNX Runtime sessions: their options, and outputs that do not depend on the pool size."""

from __future__ import annotations

import numpy as np

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
