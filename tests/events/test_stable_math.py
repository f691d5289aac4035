"""``stable_math.arctan2`` gives the same bits however its inputs lie in memory."""

from __future__ import annotations

import numpy as np

from trackserve.events.stable_math import arctan2


def test_arctan2_of_strided_columns_is_the_same_in_every_call():
    rng = np.random.default_rng(5)
    vectors = rng.normal(0.0, 3.0, (243, 3))
    expected = np.arctan2(np.ascontiguousarray(vectors[:, 1]), np.ascontiguousarray(vectors[:, 0]))
    for trial in range(400):
        padding = np.empty(int(rng.integers(1, 3000)))  # moves the next allocations around
        copy = np.empty_like(vectors)
        copy[:] = vectors
        np.testing.assert_array_equal(arctan2(copy[:, 1], copy[:, 0]), expected, err_msg=f"trial {trial}")
        del padding


def test_arctan2_keeps_shapes_scalars_and_broadcasting():
    assert arctan2(1.0, 1.0) == np.arctan2(1.0, 1.0)
    grid = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(arctan2(grid[:, ::2], 2.0), np.arctan2(grid[:, ::2], 2.0))
    assert arctan2(grid[:, ::2], 2.0).shape == (3, 2)
