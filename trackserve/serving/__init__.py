"""Serving in NVIDIA Triton Inference Server: repository writer, launcher, client, load generator."""
