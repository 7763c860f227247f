"""Checkpoint formats other than our own, loaded as models of our kinds."""
