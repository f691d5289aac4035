"""Per-device engines: ONNX Runtime sessions (and, with the GPU issue, TensorRT)."""
