"""Exceptions of the :mod:`ai` package."""

from __future__ import annotations


class AIError(Exception):
    """Root of all errors raised by :mod:`ai`."""
