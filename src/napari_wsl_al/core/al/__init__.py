"""Active learning: superpixels, acquisition, label store, region losses, rounds."""
