"""Events: TrackML CSV I/O, node features, truth graph, detector simulation, tracking metrics.

The functions below can be imported from this package (``from trackserve.events import
read_event``) as well as from their modules; each module is imported only when one of its
names is first used, so importing the package costs nothing.
"""

from __future__ import annotations

import importlib

#: Each public name of the package and the module (under ``trackserve.events``) it lives in.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("Event", "Table"), "event"),
    **dict.fromkeys(("read_event", "read_events", "read_particles", "read_feature_csv", "read_table", "write_event",
                     "find_event_prefixes", "in_hit_id_order"), "trackml"),
    **dict.fromkeys(("FeatureSpec", "feature_spec", "hit_features", "EXATRKX_SERVICE", "TRACKML_1000"), "features"),
    # (``truth_graph`` itself is left to its module of the same name, which the package's
    # attribute of that name is once anything imports that module)
    "truth_edge_labels": "truth_graph",
    **dict.fromkeys(("Geometry", "load_geometry"), "geometry"),
    **dict.fromkeys(("SimulationConfig", "simulate_event"), "simulate"),
    **dict.fromkeys(("edge_metrics", "track_metrics", "trackml_score", "evaluate_event"), "metrics"),
    **dict.fromkeys(("write_submission", "read_submission"), "submission"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """The public ``name`` from its module (imported on first use)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
