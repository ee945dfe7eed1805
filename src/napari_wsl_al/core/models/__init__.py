"""Backbones, pooling/CAM heads, the Max-Min and joint models, and checkpoints."""
