"""trackserve: GNN-based particle tracking (ExaTrkX-style pipelines) as a service.

The package is split by concept (see DESIGN.md):

* :mod:`trackserve.events`  TrackML CSV I/O, node features, truth graph, simulation, metrics
* :mod:`trackserve.export`  torch network definitions, checkpoint import, ONNX export with parity
* :mod:`trackserve.bundle`  the bundle (``pipeline.json`` + ONNX files): load, validate, save
* :mod:`trackserve.runtime` the lean pipeline (numpy, scipy, onnxruntime only)
"""

__version__ = "0.1.0"
