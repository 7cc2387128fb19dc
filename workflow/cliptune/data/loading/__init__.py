"""Training input: image-caption pairs of a split and the prefetching batch loader."""
