"""Torch definitions of the networks, checkpoint import, ONNX export with a parity check (needs torch)."""
