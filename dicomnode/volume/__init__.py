"""Stage 3, the volume: which stored images form a stack, in what order, and their pixels in physical units."""
