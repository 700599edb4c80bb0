"""Stage 5, the work: job runners, the model registry, GPU admission, delivery and retention."""
