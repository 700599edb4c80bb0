"""Stage 2, receiving: durable ingest of each instance, and deciding when a series is complete.

No torch, no models, no outputs here: this is the receiver's hot path.
"""
