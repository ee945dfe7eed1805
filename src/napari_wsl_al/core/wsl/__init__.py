"""Weakly-supervised losses and training loops."""
