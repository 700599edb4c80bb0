"""Exceptions of the :mod:`storage` package."""

from __future__ import annotations


class StorageError(Exception):
    """Root of all errors raised by :mod:`storage`."""


class DiskFullError(StorageError):
    """The disk is full, or free space fell below the configured watermark."""


class DatabaseError(StorageError):
    """The database could not be opened, migrated or written."""
