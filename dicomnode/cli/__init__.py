"""Stage 6, the ``dicomnode`` command line.  Logging is configured here and nowhere else."""

from __future__ import annotations

from dicomnode.cli.main import main

__all__ = ["main"]
