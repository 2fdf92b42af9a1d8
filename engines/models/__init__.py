"""PyTorch definitions of the anchor's neural models (weights are loaded separately)."""
