"""Tables given as pandas DataFrames (or anything with their interface) work as dicts of arrays do.

A DataFrame's ``.values`` is its array, not a method, so code that called ``table.values()``
failed with "'numpy.ndarray' object is not callable" on every DataFrame table. pandas is not a
dependency: :class:`FrameLike` has just the parts of the DataFrame interface the package may
rely on (columns, index, ``[]``, ``in``, ``items()``, ``.values`` as an array); the same test
passed on real DataFrames (pandas 2.3.3) when this was written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trackserve.events import EXATRKX_SERVICE, Event, evaluate_event, hit_features
from trackserve.events.trackml import read_event
from trackserve.events.truth_graph import truth_graph
from trackserve.runtime.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[2]


class FrameLike:
    """The parts of a pandas DataFrame's interface a table may be read through."""

    def __init__(self, columns: dict):
        self._columns = {name: np.asarray(column) for name, column in columns.items()}
        self.columns = list(self._columns)
        self.index = np.arange(len(next(iter(self._columns.values()))))

    def __getitem__(self, name):
        return self._columns[name]

    def __contains__(self, name):
        return name in self._columns

    def __iter__(self):
        return iter(self._columns)

    def __len__(self):
        return len(self.index)

    def items(self):
        return self._columns.items()

    def keys(self):
        return self._columns.keys()

    @property
    def values(self) -> np.ndarray:
        return np.stack(list(self._columns.values()), axis=1)


@pytest.fixture(scope="module")
def event() -> Event:
    return read_event(REPO / "data")


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline(REPO / "models" / "default")


def test_dataframe_tables_give_what_dict_tables_give(event, pipeline):
    frame = FrameLike
    order = np.random.default_rng(0).permutation(event.num_hits)  # truth rows in another order than the hits
    framed = Event(event.event_id, frame(event.hits), frame({name: np.asarray(column)[order]
                                                             for name, column in event.truth.items()}),
                   frame(event.particles))
    assert framed.num_hits == event.num_hits
    np.testing.assert_array_equal(hit_features(framed.hits, EXATRKX_SERVICE), hit_features(event.hits, EXATRKX_SERVICE))
    np.testing.assert_array_equal(truth_graph(framed, min_pt=1.0), truth_graph(event, min_pt=1.0))
    labels = pipeline.run_event(framed).labels
    np.testing.assert_array_equal(labels, pipeline.run_event(event).labels)
    assert evaluate_event(framed, framed.hits["hit_id"], labels, min_pt=1.0) == \
        evaluate_event(event, event.hits["hit_id"], labels, min_pt=1.0)
