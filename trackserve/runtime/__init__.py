"""The lean pipeline: graph building, track building and the Pipeline (numpy, scipy, onnxruntime only)."""
