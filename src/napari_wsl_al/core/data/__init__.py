"""Patch data sets, the synthetic H&E generator, tiling and tissue masks."""
