"""Synthetic DICOM data for tests, benchmarks and demos (never imported by the running node)."""
