"""Events: TrackML CSV I/O, node features, truth graph, detector simulation, tracking metrics."""
