"""Training loops that produce a bundle (needs torch)."""
