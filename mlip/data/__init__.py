"""Data layer: structure files → labelled structures → neighbour graphs → batches."""
